//! Start pacing (issue 10, `manager/src/pacing.rs`): behind a FastCGI web server the first
//! `--relay-start-bytes` of the downloads share `--relay-start-rate`, and the rest goes as
//! fast as the web server takes it; raw HTTP downloads (`php -S`) are never paced. Slow
//! settings make the pacing visible in wall time: it can only make the paced run slower,
//! so the paced bound is a lower one, and the unpaced runs have a wide margin.

use std::time::{Duration, Instant};

use crate::util::faults::RestartableManager;
use crate::util::{heavy_lock, Config, Kind, Stack, MIB};

const SIZE: u64 = 2 * MIB;
const DOWNLOADS: usize = 3;
/// One download loop, 1 MiB/s for the first 1 MiB of every download: three downloads'
/// start phases take about 2.8 s.
const PACED: &[&str] = &[
    "--threads",
    "1",
    "--relay-start-rate",
    "1048576",
    "--relay-start-bytes",
    "1048576",
];

/// A stack of `kind` whose manager runs with `args`.
fn stack_with(kind: Kind, args: &[&str]) -> (Stack, RestartableManager) {
    let stack = Stack::start(Config::new(kind).without_manager().children(4));
    let manager = RestartableManager::started_for(&stack, args);
    (stack, manager)
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
    for (index, name) in &procs {
        let status = stack
            .adopted(*index)
            .wait_exit(Duration::from_secs(60))
            .expect("curl finishes");
        assert!(
            status.success(),
            "curl {name}: {status}\n{}",
            manager.report()
        );
    }
    let took = start.elapsed();
    for (_, name) in &procs {
        let got = crate::util::sha256_file(&stack.client_dir().join(format!("{name}.body")));
        assert_eq!(
            got,
            sha,
            "{name}: the body is byte-exact\n{}",
            manager.report()
        );
    }
    manager.wait_outcome("complete", SIZE, before + DOWNLOADS);
    took
}

/// Through nginx + php-fpm, the start phases share the start rate: three downloads whose
/// first 1 MiB share 1 MiB/s take at least about 2.8 s, and arrive whole. The same downloads
/// with pacing off (`--relay-start-rate 0`) take a fraction of that.
#[test]
fn relayed_downloads_share_the_start_rate_and_arrive_whole() {
    let _heavy = heavy_lock();
    let (mut stack, mut manager) = stack_with(Kind::Fpm, PACED);
    let sha = stack.data_file("paced.bin", SIZE, 77);
    let paced = fetch_together(&mut stack, &manager, "paced", &sha);
    // The first 64 KiB of each download go out at once; the other 3 x 960 KiB at 1 MiB/s
    // take about 2.8 s.
    assert!(
        paced >= Duration::from_millis(2500),
        "paced: {paced:?}\n{}",
        manager.report()
    );
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
        unpaced < paced / 2,
        "unpaced {unpaced:?} against paced {paced:?}\n{}",
        off.report()
    );
}

/// Under `php -S` the manager writes HTTP to the client's own socket: nothing relays it,
/// and the same slow start settings do not apply.
#[test]
fn raw_http_downloads_are_not_paced() {
    let _heavy = heavy_lock();
    let (mut stack, manager) = stack_with(Kind::CliServer, PACED);
    let sha = stack.data_file("paced.bin", SIZE, 78);
    let took = fetch_together(&mut stack, &manager, "direct", &sha);
    assert!(
        took < Duration::from_millis(1500),
        "php -S: {took:?} (paced, it would take about 3 s)\n{}",
        manager.report()
    );
}
