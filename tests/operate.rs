//! Operating the manager: what `handoff-manager status` prints, how it refuses a
//! completion endpoint it cannot parse, and its metrics while bytes flow, scraped by a
//! real Prometheus.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::records::{http_get, stack_with};
use crate::util::{
    free_local_addr, manager_binary, manager_cli, read_lossy, repo_root, spawn_manager_with,
    urlencode, wait_until, Proc, MIB,
};

/// The Grafana dashboard shipped for the manager's metrics.
const DASHBOARD: &str = "deploy/grafana/handoff-dashboard.json";

/// A Prometheus of its own (Debian's `prometheus`) on a free loopback port, with its
/// config and storage in `dir`, scraping `target` every 250 ms; ready when it returns.
fn start_prometheus(dir: &Path, target: &str) -> (Proc, String) {
    let addr = free_local_addr().to_string();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n\
             scrape_configs:\n  - job_name: handoff\n    static_configs:\n\
             \x20     - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let mut proc = Proc::spawn(
        "prometheus",
        cmd,
        dir.join("prometheus.log"),
        Signal::SIGTERM,
    );
    wait_until(
        "prometheus is ready",
        Duration::from_secs(60),
        || http_get(&addr, "/-/ready").contains("Ready"),
        || proc.check_alive(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.log_text()));
    (proc, addr)
}

/// The value of instant query `query` at Prometheus `addr`, if it has exactly one sample.
fn prometheus_value(addr: &str, query: &str) -> Option<f64> {
    let body = http_get(addr, &format!("/api/v1/query?query={}", urlencode(query)));
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Metric names (`handoff_*`, `process_*`) named in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        if word.starts_with("handoff_") || word.starts_with("process_") {
            names.insert(word.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let path = repo_root().join(DASHBOARD);
    let v: serde_json::Value = serde_json::from_str(&read_lossy(&path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exprs = Vec::new();
    for panel in v["panels"].as_array().expect("the dashboard has panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_string());
            }
        }
    }
    exprs
}

/// The series names a `/metrics` text exports (a histogram's `_bucket`, `_sum` and
/// `_count` included).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

/// A file name with a newline and a terminal escape sequence cannot forge a status line
/// or colour the operator's terminal: `status` escapes it as the log does.
#[test]
fn status_escapes_control_characters_in_file_names() {
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|_| vec!["--metrics".into(), metrics.clone()]);
    let name = "evil\n200 [####################] 100.0% \u{1b}[31mforged.bin";
    stack.data_file(name, MIB, 24);
    // 256 KiB/s: about four seconds, long enough to be seen running.
    let (proc, _, _) = stack
        .curl(
            "evil",
            &format!("/download.php?f={}&rate=262144", urlencode(name)),
        )
        .spawn(stack.path().join("curl-evil.log"));
    stack.adopt(proc);
    wait_until(
        "the download in /status",
        Duration::from_secs(10),
        || http_get(&metrics, "/status").contains("forged.bin"),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.report()));
    let out = manager_cli("status", &metrics);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}'),
        "raw escape sequence in handoff-manager status:\n{text:?}"
    );
    assert_eq!(
        text.lines().count(),
        2,
        "one summary line and one line for the download:\n{text}"
    );
    assert!(
        text.contains("evil\\n200 [####################] 100.0% \\u{1b}[31mforged.bin\n"),
        "the name, escaped:\n{text}"
    );
}

/// A URL that does not parse is refused at start-up with a message that names it, never
/// read as something else (`http://[::1]8080/x` was once taken for port 80).
#[test]
fn on_complete_url_that_does_not_parse_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("manager.sock");
    for bad in ["http://[::1]8080/x", "http://127.0.0.1:8o/x"] {
        let mut child = Command::new(manager_binary())
            .args([
                "--socket",
                &socket.display().to_string(),
                "--on-complete",
                bad,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start handoff-manager");
        let exited = wait_until(
            &format!("handoff-manager --on-complete {bad} exits"),
            Duration::from_secs(10),
            || matches!(child.try_wait(), Ok(Some(_))),
            || Ok(()),
        );
        if exited.is_err() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("collect handoff-manager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited.is_ok() && !out.status.success(),
            "{bad} was accepted: {err}"
        );
        assert!(err.contains(bad) && err.contains("is not a URL"), "{err}");
        assert!(!socket.exists(), "no socket is made for a bad command line");
    }
}

/// A real Prometheus scraping the manager sees `handoff_bytes_sent_total` rise twice while
/// one slow download runs (bytes are counted as they are written, not when a download
/// ends); afterwards it has every byte, and the handoff, first-byte and duration
/// histograms have one observation each. Every query of the shipped Grafana dashboard is
/// accepted by that Prometheus.
#[test]
fn prometheus_sees_bytes_while_a_download_runs() {
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|_| vec!["--metrics".into(), metrics.clone()]);
    let (prometheus, prom) = start_prometheus(stack.path(), &metrics);
    stack.adopt(prometheus);
    let size = 3 * MIB;
    let sha = stack.data_file("slow.bin", size, 24);
    // 512 KiB/s: six seconds, about 24 scrapes.
    let (proc, head, body) = stack
        .curl("slow", "/download.php?f=slow.bin&rate=524288")
        .spawn(stack.path().join("curl-slow.log"));
    let curl = stack.adopt(proc);
    let prometheus_log = stack.path().join("prometheus.log");
    let report = |what: &str| {
        format!(
            "{what}\n{}\nprometheus log:\n{}",
            manager.report(),
            read_lossy(&prometheus_log)
        )
    };
    let sent = || prometheus_value(&prom, "handoff_bytes_sent_total").unwrap_or(0.0);
    let mut first = 0.0;
    wait_until(
        "Prometheus sees the first bytes",
        Duration::from_secs(20),
        || {
            first = sent();
            first > 0.0
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{}", report(&e)));
    let mut second = 0.0;
    wait_until(
        "Prometheus sees more bytes",
        Duration::from_secs(20),
        || {
            second = sent();
            second > first
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{}", report(&e)));
    assert!(
        second < size as f64,
        "the second sample ({second}) must come before the download's end ({size})"
    );
    assert!(
        stack.adopted(curl).is_running(),
        "the download ran on while Prometheus saw {first} then {second} bytes"
    );
    stack
        .adopted(curl)
        .wait_exit(Duration::from_secs(60))
        .expect("curl finishes");
    let got = crate::util::response_from(&head, &body);
    assert_eq!(got.body_sha(), sha, "the download is byte-exact");
    wait_until(
        "Prometheus sees the whole download",
        Duration::from_secs(20),
        || {
            sent() == size as f64
                && prometheus_value(&prom, "handoff_download_seconds_count") == Some(1.0)
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{}", report(&e)));
    for (query, want) in [
        ("handoff_handoff_seconds_count", 1.0),
        ("handoff_first_byte_seconds_count", 1.0),
        ("handoff_downloads_complete_total", 1.0),
        ("sum(handoff_downloads_failed_total)", 0.0),
        ("handoff_build_info", 1.0),
    ] {
        assert_eq!(prometheus_value(&prom, query), Some(want), "{query}");
    }
    // About six seconds at the rate: the duration lands in the (5, 10] bucket.
    assert_eq!(
        prometheus_value(&prom, "handoff_download_seconds_bucket{le=\"5\"}"),
        Some(0.0)
    );
    assert!(prometheus_value(&prom, "process_open_fds").is_some_and(|n| n > 3.0));
    for expr in dashboard_exprs() {
        let expr = expr.replace("$__rate_interval", "1m");
        let body = http_get(&prom, &format!("/api/v1/query?query={}", urlencode(&expr)));
        assert!(
            body.contains("\"status\":\"success\""),
            "Prometheus rejects the dashboard's {expr:?}: {body}"
        );
    }
}

/// Every query of the Grafana dashboard names only metrics the manager exports, and
/// every exported metric family appears on the dashboard; `/healthz` answers `ok`.
#[test]
fn grafana_dashboard_queries_name_exported_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = free_local_addr().to_string();
    let socket = dir.path().join("manager.sock");
    let mut manager = spawn_manager_with(
        &socket,
        &dir.path().join("manager.log"),
        &["--metrics", &metrics],
    );
    let text = || http_get(&metrics, "/metrics");
    wait_until(
        "the metrics endpoint answers",
        Duration::from_secs(10),
        || text().contains("handoff_build_info"),
        || manager.check_alive(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.log_text()));
    assert_eq!(http_get(&metrics, "/healthz"), "ok\n");
    let exported = exported_names(&text());
    let exprs = dashboard_exprs();
    assert!(!exprs.is_empty(), "the dashboard has queries");
    let mut shown = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr:?} names no metric of the manager");
        for name in names {
            assert!(
                exported.contains(&name),
                "{expr:?} names {name}, which the manager does not export: {exported:?}"
            );
            shown.insert(name);
        }
    }
    for family in exported
        .iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
    {
        let on_dashboard = shown.iter().any(|s| s.starts_with(family.as_str()));
        assert!(on_dashboard, "{family} is not on the dashboard");
    }
}

/// HMAC-SHA256 of `TIMESTAMP.BODY` under `key`, as `sha256=HEX`, computed by `openssl`
/// (independently of the manager and of PHP).
fn openssl_sign(key: &str, timestamp: u64, body: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{timestamp}.{body}").as_bytes())
            .expect("feed openssl");
    }
    let out = child.wait_with_output().expect("openssl output");
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256={}", text.split_whitespace().next().unwrap_or(""))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signed completion records travel over a Unix socket (`unix:/path|/request`, as through
/// a volume shared by two containers) to the PHP receiver example behind nginx + php-fpm,
/// which stores the genuine record, and refuses the same delivery played again, a record
/// whose body was changed, one signed with another key, one without a signature and a
/// correctly signed but stale one; a fresh, correctly signed record is accepted (so the
/// refusals are the checks at work, not a receiver that refuses everything).
#[test]
fn signed_records_reach_the_php_receiver_which_refuses_forged_and_replayed_ones() {
    const KEY: &str = "test-key-0123456789abcdef";
    let (stack, manager) = stack_with(|dir| {
        std::fs::write(dir.join("record.key"), format!("{KEY}\n")).expect("write the key");
        vec![
            "--on-complete".into(),
            format!(
                "unix:{}|/handoff-done.php",
                dir.join("nginx.sock").display()
            ),
            "--on-complete-secret".into(),
            dir.join("record.key").display().to_string(),
        ]
    });
    let size = 100_000;
    stack.data_file("paid.bin", size, 24);
    let got = stack.get("paid", "/download.php?f=paid.bin&tag=order:24");
    assert_eq!((got.status, got.body_len()), (200, size));
    let records = stack.path().join("records");
    let stored = || -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&records).into_iter().flatten().flatten() {
            if let Ok(v) = serde_json::from_str(&read_lossy(&entry.path())) {
                out.push(v);
            }
        }
        out
    };
    wait_until(
        "the receiver stores the record",
        Duration::from_secs(20),
        || stored().len() == 1,
        || Ok(()),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            manager.report(),
            read_lossy(&stack.path().join("fpm.log"))
        )
    });
    let genuine = stored().remove(0);
    let body = genuine["body"].as_str().expect("body").to_string();
    let timestamp = genuine["timestamp"]
        .as_str()
        .expect("timestamp")
        .to_string();
    let signature = genuine["signature"]
        .as_str()
        .expect("signature")
        .to_string();
    let record: serde_json::Value = serde_json::from_str(&body).expect("the record is JSON");
    assert_eq!(record["tag"], "order:24");
    assert_eq!(record["outcome"], "complete");
    assert_eq!(record["bytes_sent"], size);
    let ts: u64 = timestamp.parse().expect("a numeric timestamp");
    assert!(unix_now().abs_diff(ts) < 60, "timestamp {ts}");
    assert_eq!(
        signature,
        openssl_sign(KEY, ts, &body),
        "the manager's signature"
    );

    let post = |name: &str, body: &str, headers: &[String]| -> u16 {
        let mut curl = stack.curl(name, "/handoff-done.php").args(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
        for h in headers {
            curl = curl.args(&["-H", h]);
        }
        curl.run().status
    };
    let signed = |ts: u64, sig: &str| {
        vec![
            format!("Handoff-Timestamp: {ts}"),
            format!("Handoff-Signature: {sig}"),
        ]
    };
    let forged_body = body.replace(&format!("\"bytes_sent\":{size}"), "\"bytes_sent\":1");
    assert_ne!(forged_body, body);
    let other_id = body.replace(
        record["id"].as_str().expect("id"),
        "forged-but-correctly-signed",
    );
    let now = unix_now();
    for (name, payload, headers, want) in [
        ("replayed", &body, signed(ts, &signature), 409),
        ("changed", &forged_body, signed(ts, &signature), 401),
        (
            "other-key",
            &body,
            signed(now, &openssl_sign("another-key-0123456789", now, &body)),
            401,
        ),
        ("unsigned", &other_id, Vec::new(), 401),
        (
            "stale",
            &other_id,
            signed(now - 3600, &openssl_sign(KEY, now - 3600, &other_id)),
            401,
        ),
    ] {
        assert_eq!(
            post(name, payload, &headers),
            want,
            "{name}: {}",
            read_lossy(&stack.path().join("fpm.log"))
        );
        assert_eq!(stored().len(), 1, "{name} was stored");
    }
    assert_eq!(
        post(
            "fresh",
            &other_id,
            &signed(now, &openssl_sign(KEY, now, &other_id))
        ),
        204
    );
    assert_eq!(stored().len(), 2, "the fresh, signed record is stored");
}

/// `handoff-manager health` (the probe of the Kubernetes manifest and the compose file)
/// exits 0 while the manager takes handoffs; after SIGTERM, while a download still runs
/// to its end, it exits 1 with `draining`, and the download completes byte-exact.
#[test]
fn health_says_draining_after_sigterm_while_the_download_finishes() {
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|_| vec!["--metrics".into(), metrics.clone()]);
    let health = || {
        let out = manager_cli("health", &metrics);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    wait_until(
        "the manager is healthy",
        Duration::from_secs(10),
        || health() == (Some(0), "ok\n".into()),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", health(), manager.report()));
    let size = 2 * MIB;
    let sha = stack.data_file("drain.bin", size, 24);
    let (proc, head, body) = stack
        .curl("drain", "/download.php?f=drain.bin&rate=1048576")
        .spawn(stack.path().join("curl-drain.log"));
    let curl = stack.adopt(proc);
    wait_until(
        "the download runs",
        Duration::from_secs(10),
        || http_get(&metrics, "/status").contains("drain.bin"),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.report()));
    manager.signal(Signal::SIGTERM);
    wait_until(
        "health says draining",
        Duration::from_secs(10),
        || health() == (Some(1), "draining\n".into()),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", health(), manager.report()));
    stack
        .adopted(curl)
        .wait_exit(Duration::from_secs(30))
        .expect("curl finishes");
    let got = crate::util::response_from(&head, &body);
    assert_eq!(
        got.body_sha(),
        sha,
        "the download finished during the drain"
    );
}
