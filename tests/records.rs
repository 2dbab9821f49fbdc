//! Downloads as business events: the `tag` option in the access log, `/status`
//! and completion records; completion records POSTed to a local endpoint
//! (`--on-complete`), joined across range requests; `rate_group` shared bandwidth.
//! Everything runs through real nginx + php-fpm and the real manager.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::faults::RestartableManager;
use crate::util::{free_local_addr, read_lossy, wait_until, Config, Kind, Stack, MIB};

/// nginx + php-fpm (two workers) and a manager started with the flags `args` gives for
/// the stack's directory.
pub(crate) fn stack_with(args: impl FnOnce(&Path) -> Vec<String>) -> (Stack, RestartableManager) {
    let stack = Stack::start(Config::new(Kind::Fpm).without_manager().children(2));
    let args = args(stack.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let manager = RestartableManager::started_for(&stack, &args);
    (stack, manager)
}

/// One GET to the manager's metrics listener; the body, or "" if it does not answer.
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The tag reaches `/status`, `handoff-manager status` while the download runs, and the
/// JSON access log when it is over; a download without a tag logs `"tag": null`.
#[test]
fn tag_reaches_status_and_access_log() {
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|dir| {
        let log = dir.join("handoff-access.log").display().to_string();
        vec![
            "--metrics".into(),
            metrics.clone(),
            "--access-log".into(),
            log,
        ]
    });
    let size = MIB;
    stack.data_file("tagged.bin", size, 14);
    // 512 KiB/s: about two seconds, long enough to be seen running.
    let (proc, _, body) = stack
        .curl(
            "tagged",
            "/download.php?f=tagged.bin&rate=524288&tag=order:17/user:5",
        )
        .spawn(stack.path().join("curl-tagged.log"));
    let curl = stack.adopt(proc);
    let status = || http_get(&metrics, "/status");
    wait_until(
        "the tagged download in /status",
        Duration::from_secs(10),
        || status().contains("\"tag\":\"order:17/user:5\""),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n/status: {}\n{}", status(), manager.report()));
    let out = crate::util::manager_cli("status", &metrics);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tagged.bin  tag=order:17/user:5\n"),
        "handoff-manager status:\n{text}"
    );
    stack
        .adopted(curl)
        .wait_exit(Duration::from_secs(30))
        .expect("curl finishes");
    assert_eq!(std::fs::metadata(&body).map(|m| m.len()).ok(), Some(size));
    stack.data_file("plain.bin", 1000, 15);
    stack.get("plain", "/download.php?f=plain.bin");
    let log = stack.path().join("handoff-access.log");
    // The manager logs to its own log before the access log: wait for both lines.
    wait_until(
        "two access log lines",
        Duration::from_secs(20),
        || read_lossy(&log).matches("}\n").count() >= 2,
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", read_lossy(&log)));
    let lines: Vec<serde_json::Value> = read_lossy(&log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let tagged = lines
        .iter()
        .find(|v| {
            v["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("tagged.bin"))
        })
        .unwrap_or_else(|| panic!("no access log line for tagged.bin: {lines:?}"));
    assert_eq!(tagged["tag"], "order:17/user:5");
    assert_eq!(tagged["outcome"], "complete");
    let plain = lines
        .iter()
        .find(|v| v["file"].as_str().is_some_and(|f| f.ends_with("plain.bin")))
        .unwrap_or_else(|| panic!("no access log line for plain.bin: {lines:?}"));
    assert!(plain["tag"].is_null(), "{plain}");
}

/// A local HTTP endpoint for completion records: a `TcpListener` on 127.0.0.1 whose thread
/// stores every POST body (answering 204) until dropped.
struct Receiver {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("receiver address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(v) = read_post(conn) {
                            b.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver {
            addr,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/records", self.addr)
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for a record whose `file` ends with `file` and whose `tag` is `tag`.
    fn wait_for(&self, file: &str, tag: Option<&str>, count: usize) -> Vec<serde_json::Value> {
        let matching = || -> Vec<serde_json::Value> {
            self.records()
                .into_iter()
                .filter(|v| v["file"].as_str().is_some_and(|f| f.ends_with(file)))
                .filter(|v| v["tag"].as_str() == tag)
                .collect()
        };
        wait_until(
            &format!("{count} completion record(s) for {file} tag {tag:?}"),
            Duration::from_secs(20),
            || matching().len() >= count,
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}; received: {:#?}", self.records()));
        matching()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request with a `Content-Length` body, answers 204, returns the body as
/// JSON (with the `Handoff-Record-Id` header as `"_header_id"`).
fn read_post(mut conn: TcpStream) -> Option<serde_json::Value> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while data.len() < head_end + length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    let mut v: serde_json::Value = serde_json::from_slice(&data[head_end..]).ok()?;
    assert!(head.starts_with("POST /records HTTP/1.1\r\n"), "{head}");
    v["_header_id"] = header("handoff-record-id").into();
    Some(v)
}

/// A tagged download's completion record reaches a local endpoint with every field; an
/// aborted download is reported as aborted; ids are unique.
#[test]
fn completion_records_reach_a_local_endpoint() {
    let receiver = Receiver::start();
    let (stack, _manager) = stack_with(|_| vec!["--on-complete".into(), receiver.url()]);
    let size = 300 * 1024;
    stack.data_file("rec.bin", size, 21);
    let response = stack.get("rec", "/download.php?f=rec.bin&tag=order:17/user:5");
    assert_eq!(response.body_len(), size);
    let r = receiver.wait_for("rec.bin", Some("order:17/user:5"), 1)[0].clone();
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["outcome"], "complete", "{r}");
    assert_eq!(r["bytes_planned"], size, "{r}");
    assert_eq!(r["bytes_sent"], size, "{r}");
    assert_eq!(r["ranges"], serde_json::json!([[0, size - 1]]), "{r}");
    assert!(
        r["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("/data/rec.bin")),
        "{r}"
    );
    assert!(r["client"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
    assert!(r["start"].as_str().is_some_and(|s| s.ends_with('Z')), "{r}");
    assert!(r["duration_ms"].is_u64(), "{r}");
    assert!(r["id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert_eq!(r["id"], r["_header_id"], "{r}");
    // A client that goes away after the first bytes: reported as aborted.
    stack.data_file("cut.bin", 16 * MIB, 22);
    let (mut cut, _, _) = stack
        .curl("cut", "/download.php?f=cut.bin&tag=cut:1&rate=1048576")
        .args(&["--max-filesize", "1"])
        .spawn(stack.path().join("curl-cut.log"));
    cut.wait_exit(Duration::from_secs(10))
        .expect("curl gives up at once");
    let aborted = receiver.wait_for("cut.bin", Some("cut:1"), 1)[0].clone();
    assert_eq!(aborted["outcome"], "aborted", "{aborted}");
    assert!(aborted["bytes_sent"].as_u64() < Some(16 * MIB), "{aborted}");
    let ids: std::collections::HashSet<String> = receiver
        .records()
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), receiver.records().len(), "ids are unique");
}

/// A dead endpoint (a closed port) never slows a download; its records are counted as
/// retried and dropped in /metrics.
#[test]
fn a_dead_endpoint_does_not_slow_downloads() {
    let dead = free_local_addr();
    let metrics = free_local_addr().to_string();
    let (stack, manager) = stack_with(|_| {
        vec![
            "--on-complete".into(),
            format!("http://{dead}/records"),
            "--on-complete-queue".into(),
            "2".into(),
            "--metrics".into(),
            metrics.clone(),
        ]
    });
    let size = 256 * 1024;
    let sha = stack.data_file("fast.bin", size, 23);
    let start = Instant::now();
    for i in 0..10 {
        let got = crate::util::scenarios::download_exact(
            &stack,
            "fast.bin",
            &sha,
            size,
            &format!("&tag=t:{i}"),
        );
        assert_eq!(got, "true", "download {i} is handed off");
    }
    let took = start.elapsed();
    // Each record's delivery takes about 1.5 s of back-off before it is given up; ten
    // downloads waiting for that would take 15 s.
    assert!(
        took < Duration::from_secs(8),
        "ten downloads took {took:?} with a dead endpoint"
    );
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or(0)
    };
    wait_until(
        "the dead endpoint's records counted",
        Duration::from_secs(20),
        || {
            let text = http_get(&metrics, "/metrics");
            value(&text, "handoff_records_dropped_total") >= 8
                && value(&text, "handoff_records_retried_total") >= 1
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n/metrics:\n{}\n{}",
            http_get(&metrics, "/metrics"),
            manager.report()
        )
    });
    let text = http_get(&metrics, "/metrics");
    assert_eq!(value(&text, "handoff_records_delivered_total"), 0, "{text}");
    assert!(
        manager.log().contains("dropped: the queue is full"),
        "{}",
        manager.log()
    );
}

/// A non-local or non-http endpoint is refused at start-up with a clear error.
#[test]
fn a_remote_endpoint_is_refused_at_start_up() {
    for (url, want) in [
        ("http://192.0.2.1/records", "not a loopback address"),
        ("https://127.0.0.1/records", "only http:// URLs"),
    ] {
        let out = std::process::Command::new(crate::util::manager_binary())
            .args([
                "--socket",
                "/nonexistent/handoff.sock",
                "--on-complete",
                url,
            ])
            .output()
            .expect("run handoff-manager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} accepted:\n{err}");
        assert!(err.contains(want), "{url}:\n{err}");
    }
}

/// Two range requests under one tag that together cover a file produce a record with
/// `file_complete: true`; the first alone, or a range under another tag, does not. A
/// whole download without a tag is complete by itself.
#[test]
fn range_requests_under_one_tag_join_into_a_complete_file() {
    let receiver = Receiver::start();
    let (stack, _manager) = stack_with(|_| vec!["--on-complete".into(), receiver.url()]);
    let size: u64 = 200_000;
    stack.data_file("joined.bin", size, 31);
    let range = |name: &str, tag: &str, range: &str| {
        let r = stack
            .curl(name, &format!("/download.php?f=joined.bin&tag={tag}"))
            .args(&["-r", range])
            .run();
        assert_eq!(r.status, 206, "{}", r.head_text);
    };
    range("first", "user:1", "0-119999");
    let first = receiver.wait_for("joined.bin", Some("user:1"), 1)[0].clone();
    assert_eq!(first["file_complete"], false, "{first}");
    assert_eq!(first["joined_bytes"], 120_000, "{first}");
    assert_eq!(first["file_size"], size, "{first}");
    assert_eq!(first["range"], "bytes 0-119999/200000", "{first}");
    // The rest under another tag: that user did not get the first part.
    range("other", "user:2", "100000-199999");
    let other = receiver.wait_for("joined.bin", Some("user:2"), 1)[0].clone();
    assert_eq!(other["file_complete"], false, "{other}");
    assert_eq!(other["joined_bytes"], 100_000, "{other}");
    range("second", "user:1", "100000-199999");
    let both = receiver.wait_for("joined.bin", Some("user:1"), 2);
    let second = both
        .iter()
        .find(|v| v["ranges"] == serde_json::json!([[100_000, 199_999]]))
        .unwrap_or_else(|| panic!("no record of the second range: {both:#?}"));
    assert_eq!(second["file_complete"], true, "{second}");
    assert_eq!(second["joined_bytes"], size, "{second}");
    let whole = stack.get("whole", "/download.php?f=joined.bin");
    assert_eq!(whole.body_len(), size);
    let plain = receiver.wait_for("joined.bin", None, 1)[0].clone();
    assert_eq!(plain["file_complete"], true, "{plain}");
}

/// Two concurrent downloads in one `rate_group` at 1 MiB/s share that rate: 2 MiB each take
/// about 4 s together, where one alone, or two in different groups, take about 2 s. The
/// group is alive (gauge) while they run, and freed after.
#[test]
fn downloads_in_one_rate_group_share_its_rate() {
    let _heavy = crate::util::heavy_lock();
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|_| vec!["--metrics".into(), metrics.clone()]);
    let size = 2 * MIB;
    let sha = stack.data_file("grouped.bin", size, 41);
    let gauge = || {
        http_get(&metrics, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("handoff_rate_groups ")?.parse::<u64>().ok())
    };
    // Runs one curl per group name at once; returns how long until all were done.
    let mut run = |label: &str, groups: &[&str]| -> Duration {
        let start = Instant::now();
        let procs: Vec<usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let name = format!("{label}{i}");
                let (proc, _, _) = stack
                    .curl(
                        &name,
                        &format!("/download.php?f=grouped.bin&rate=1048576&rate_group={g}"),
                    )
                    .spawn(stack.path().join(format!("curl-{name}.log")));
                stack.adopt(proc)
            })
            .collect();
        if groups.len() == 2 && groups[0] == groups[1] {
            wait_until(
                "one live rate group",
                Duration::from_secs(5),
                || gauge() == Some(1),
                || Ok(()),
            )
            .unwrap_or_else(|e| panic!("{e}: gauge {:?}", gauge()));
        }
        for index in procs {
            let status = stack
                .adopted(index)
                .wait_exit(Duration::from_secs(30))
                .expect("curl finishes");
            assert!(status.success(), "curl {label}: {status}");
        }
        start.elapsed()
    };
    let alone = run("alone", &["user:1"]);
    let apart = run("apart", &["user:2", "user:3"]);
    let together = run("together", &["user:4", "user:4"]);
    for name in ["alone0", "apart0", "apart1", "together0", "together1"] {
        let got = crate::util::sha256_file(&stack.client_dir().join(format!("{name}.body")));
        assert_eq!(got, sha, "{name}: the body is byte-exact");
    }
    let times = format!("alone {alone:?}, two groups {apart:?}, one group {together:?}");
    // 4 MiB at 1 MiB/s after a 128 KiB burst: at least 3.875 s.
    assert!(together >= Duration::from_millis(3500), "{times}");
    // 2 MiB at 1 MiB/s: about 1.9 s each, alone or side by side.
    assert!(alone < Duration::from_millis(3400), "{times}");
    assert!(apart < Duration::from_millis(3400), "{times}");
    wait_until(
        "the groups freed",
        Duration::from_secs(10),
        || gauge() == Some(0),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}: gauge {:?}\n{}", gauge(), manager.report()));
    eprintln!("{times}");
}
