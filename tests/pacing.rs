//! Relay pacing (`manager/src/pacing.rs`): behind a FastCGI web server, after a first
//! window, downloads get bytes as fast as their connections drain, and all of them together
//! at most a little more than the web server relayed just before (`--relay-start-rate` is
//! only that budget's floor); raw HTTP downloads (`php -S`) are never paced; `--max-rate`
//! holds through all of it, and under it no download starves.

use std::time::{Duration, Instant};

use crate::util::faults::RestartableManager;
use crate::util::{heavy_lock, Config, Kind, Stack, MIB};

const SIZE: u64 = 2 * MIB;
const DOWNLOADS: usize = 3;
/// One download loop, a budget floor of 1 MiB/s.
const PACED: &[&str] = &["--threads", "1", "--relay-start-rate", "1048576"];

/// A stack of `kind` whose manager runs with `args`.
fn stack_with(kind: Kind, args: &[&str]) -> (Stack, RestartableManager) {
    let stack = Stack::start(Config::new(kind).without_manager().children(4));
    let manager = RestartableManager::started_for(&stack, args);
    (stack, manager)
}

/// Waits for the adopted curls `procs` (index, name) to exit, each successfully, then
/// checks every body against `sha`; `report` says what to print on failure.
fn assert_all_whole(
    stack: &mut Stack,
    procs: &[(usize, String)],
    sha: &str,
    report: impl Fn(&Stack) -> String,
) {
    for (index, name) in procs {
        let status = stack
            .adopted(*index)
            .wait_exit(Duration::from_secs(60))
            .expect("curl finishes");
        assert!(status.success(), "curl {name}: {status}\n{}", report(stack));
    }
    for (_, name) in procs {
        let got = crate::util::sha256_file(&stack.client_dir().join(format!("{name}.body")));
        assert_eq!(
            got,
            sha,
            "{name}: the body is byte-exact\n{}",
            report(stack)
        );
    }
}

/// Fetches the file with `DOWNLOADS` curls at once; checks every body byte for byte and
/// the manager's log for complete handoffs; returns how long they took together.
fn fetch_together(
    stack: &mut Stack,
    manager: &RestartableManager,
    label: &str,
    sha: &str,
) -> Duration {
    let before = manager.outcome_count("complete", SIZE);
    let start = Instant::now();
    let procs: Vec<(usize, String)> = (0..DOWNLOADS)
        .map(|i| {
            let name = format!("{label}{i}");
            let (proc, _, _) = stack
                .curl(&name, "/download.php?f=paced.bin")
                .spawn(stack.path().join(format!("curl-{name}.log")));
            (stack.adopt(proc), name)
        })
        .collect();
    assert_all_whole(stack, &procs, sha, |_| manager.report());
    let took = start.elapsed();
    manager.wait_outcome("complete", SIZE, before + DOWNLOADS);
    took
}

/// Through nginx + php-fpm, the budget follows what the web server drains, not the
/// floor: three 2 MiB downloads with a floor of 1 MiB/s arrive whole in far less than the
/// 5.8 s the floor alone would take (a fixed start rate of 1 MiB/s for the first 1 MiB
/// took at least 2.8 s), and as fast as with pacing off, within a wide margin.
#[test]
fn relayed_downloads_follow_the_drain_not_the_floor() {
    let _heavy = heavy_lock();
    let (mut stack, mut manager) = stack_with(Kind::Fpm, PACED);
    let sha = stack.data_file("paced.bin", SIZE, 77);
    let paced = fetch_together(&mut stack, &manager, "paced", &sha);
    manager.kill();
    let logs = stack.path().join("unpaced");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut off = RestartableManager::new(&stack.manager_socket, &logs).with_args(&[
        "--threads",
        "1",
        "--relay-start-rate",
        "0",
    ]);
    off.start();
    let unpaced = fetch_together(&mut stack, &off, "unpaced", &sha);
    assert!(
        paced < Duration::from_secs(2).max(unpaced * 4),
        "paced {paced:?} against unpaced {unpaced:?}\n{}",
        manager.report()
    );
}

/// Under `php -S` the manager writes HTTP to the client's own socket: nothing relays it,
/// and relay pacing does not apply.
#[test]
fn raw_http_downloads_are_not_paced() {
    let _heavy = heavy_lock();
    let (mut stack, manager) = stack_with(Kind::CliServer, PACED);
    let sha = stack.data_file("paced.bin", SIZE, 78);
    let took = fetch_together(&mut stack, &manager, "direct", &sha);
    assert!(
        took < Duration::from_millis(1500),
        "php -S: {took:?}\n{}",
        manager.report()
    );
}

/// `--max-rate 4 MiB/s` on one download loop.
const CAPPED: &[&str] = &[
    "--threads",
    "1",
    "--max-rate",
    "4194304",
    "--relay-start-rate",
    "67108864",
];
const CAP: u64 = 4 * MIB;
/// What the cap may let through beyond `rate × elapsed`: its bucket (1/20 s of the rate,
/// at least 64 KiB), one write that overshoots it (a FastCGI record: 64 KiB) and the
/// response heads, with a wide margin.
const CAP_SLACK: u64 = 512 << 10;

/// Bytes curl has written to `name`'s body file so far.
fn received(stack: &Stack, name: &str) -> u64 {
    std::fs::metadata(stack.client_dir().join(format!("{name}.body")))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Starts a curl of `path` named `name`, kept by the stack.
fn start_curl(stack: &mut Stack, name: &str, path: &str) -> usize {
    let (proc, _, _) = stack
        .curl(name, path)
        .spawn(stack.path().join(format!("curl-{name}.log")));
    stack.adopt(proc)
}

/// Through nginx + php-fpm (FastCGI framing, relay pacing on), downloads
/// starting together never get past `--max-rate`: at every moment the clients together
/// have at most `rate × elapsed` plus the cap's burst. Eight 4 MiB downloads at 4 MiB/s
/// (the start phase used to write before asking the cap: 8 MiB arrived in under 100 ms).
#[test]
fn start_pacing_never_bypasses_the_global_cap() {
    let _heavy = heavy_lock();
    let (mut stack, manager) = stack_with(Kind::Fpm, CAPPED);
    let size = 4 * MIB;
    let sha = stack.data_file("capped.bin", size, 79);
    let names: Vec<String> = (0..8).map(|i| format!("capped{i}")).collect();
    let start = Instant::now();
    let procs: Vec<usize> = names
        .iter()
        .map(|n| start_curl(&mut stack, n, "/download.php?f=capped.bin"))
        .collect();
    let total = size * names.len() as u64;
    let mut samples = Vec::new();
    loop {
        let got: u64 = names.iter().map(|n| received(&stack, n)).sum();
        // Measured after reading the sizes: the manager has run at most this long.
        let elapsed = start.elapsed();
        samples.push((elapsed, got));
        let allowed = (CAP as f64 * elapsed.as_secs_f64()) as u64 + CAP_SLACK;
        assert!(
            got <= allowed,
            "{got} bytes after {elapsed:?}: more than --max-rate allows ({allowed})\n\
             samples: {samples:?}\n{}",
            manager.report()
        );
        if got >= total || elapsed > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let procs: Vec<(usize, String)> = procs.into_iter().zip(names).collect();
    assert_all_whole(&mut stack, &procs, &sha, |_| manager.report());
}

/// Under `--max-rate`, a running download keeps its share while new, shorter downloads
/// keep arriving (shortest-remaining-first would otherwise serve only the newcomers): a
/// 64 MiB download gets a fair part of the cap while 2 MiB downloads arrive at 8 per
/// second for 3 s (it used to get 0.01 MiB in 6 s).
#[test]
fn a_running_download_is_not_starved_by_new_arrivals_under_the_cap() {
    let _heavy = heavy_lock();
    let (mut stack, manager) = stack_with(Kind::Fpm, CAPPED);
    stack.data_file("big.bin", 64 * MIB, 80);
    stack.data_file("small.bin", 2 * MIB, 81);
    start_curl(&mut stack, "big", "/download.php?f=big.bin");
    crate::util::wait_until(
        "the big download's first bytes",
        Duration::from_secs(20),
        || received(&stack, "big") > 0,
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.report()));
    let before = received(&stack, "big");
    let start = Instant::now();
    for i in 0..24u32 {
        let due = start + Duration::from_millis(125) * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        start_curl(
            &mut stack,
            &format!("small{i}"),
            "/download.php?f=small.bin",
        );
    }
    let during = received(&stack, "big") - before;
    let smalls: u64 = (0..24)
        .map(|i| received(&stack, &format!("small{i}")))
        .sum();
    // 24 newcomers and the big one share 4 MiB/s for 3 s; round robin alone would give the
    // big one 1/25 of it (0.5 MiB), half the cap shared fairly at least 1/50.
    assert!(
        during >= 192 << 10,
        "the running download got {during} bytes in {:?} while the newcomers got {smalls}\n{}",
        start.elapsed(),
        manager.report()
    );
}

/// Through nginx with its default FastCGI buffers (4k/8k: a site without the template's
/// `fastcgi_buffer_*` lines), which relays 4 KiB per read, slow and fast downloads at once
/// all arrive whole, with the manager's defaults: sixteen clients at 1 MiB/s and
/// two unlimited ones, 4 MiB each.
#[test]
fn downloads_arrive_whole_through_nginx_default_fastcgi_buffers() {
    let _heavy = heavy_lock();
    let mut stack = Stack::start(Config::new(Kind::Fpm).nginx_default_buffers().children(4));
    let size = 4 * MIB;
    let sha = stack.data_file("default-buffers.bin", size, 82);
    let mut procs = Vec::new();
    for i in 0..18 {
        let name = format!("defaults{i}");
        let mut curl = stack.curl(&name, "/download.php?f=default-buffers.bin");
        if i < 16 {
            curl = curl.args(&["--limit-rate", "1M"]);
        }
        let (proc, _, _) = curl.spawn(stack.path().join(format!("curl-{name}.log")));
        procs.push((stack.adopt(proc), name));
    }
    assert_all_whole(&mut stack, &procs, &sha, Stack::report);
    stack.wait_outcome("complete", size, procs.len());
    stack.assert_clean_logs();
}
