//! The other FastCGI front ends before php-fpm, each from Debian 12's package and configured
//! from its shared file in `deploy/`: lighttpd 1.4 (mod_fastcgi with
//! `server.stream-response-body = 2`), Caddy 2.6 (`php_fastcgi`) and Apache 2.4 event with
//! mod_proxy_fcgi. The manager streams FastCGI records to each, as it does to nginx.
//!
//! Every front end runs the same checks: byte-exact downloads through the manager, ranges
//! and conditionals, the single php-fpm worker free during a slow download, the fallback
//! when no manager listens, and the manager killed mid-download (the client keeps a clean
//! prefix and sees its connection closed).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::faults::RestartableManager;
use crate::util::scenarios::{self, download_exact};
use crate::util::{heavy_lock, response_from, wait_until, Config, Kind, Stack, MIB};

fn byte_exact_downloads(kind: Kind) {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(kind));
    scenarios::byte_exact_through_manager(&stack);
    stack.assert_clean_logs();
}

fn ranges_through_manager(kind: Kind) {
    let stack = Stack::start(Config::new(kind));
    scenarios::ranges_and_conditionals(&stack);
    assert_eq!(
        stack.outcome_count("complete", 100),
        1,
        "the 100-byte range was not sent by the manager"
    );
    stack.assert_clean_logs();
}

fn script_headers(kind: Kind) {
    let stack = Stack::start(Config::new(kind));
    scenarios::script_headers_reach_client(&stack);
    stack.assert_clean_logs();
}

/// One php-fpm worker: only a handoff lets it serve others during a slow download.
fn worker_free(kind: Kind) {
    let _heavy = heavy_lock();
    let mut stack = Stack::start(Config::new(kind).children(1));
    scenarios::server_free_during_slow_download(&mut stack);
    stack.assert_clean_logs();
}

fn fallback(kind: Kind) {
    let stack = Stack::start(Config::new(kind).without_manager());
    scenarios::fallback_streams_in_process(&stack);
    scenarios::ranges_and_conditionals(&stack);
    stack.assert_clean_logs();
}

/// How long the front end may take to close the client's connection after the manager
/// died. Apache's mod_proxy_fcgi takes about ten seconds; lighttpd and Caddy under one.
const CLOSE_AFTER_KILL: Duration = Duration::from_secs(30);

fn body_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The manager is killed while two rate-limited clients download 64 MiB through it. Each
/// must hold a clean prefix of the file under one head, and curl must report a short
/// transfer (exit 18): the front end closed the connection instead of finishing it or
/// leaving it open. (lighttpd without `server.stream-response-body = 2` fails this: it has
/// the whole file from the manager within a second and delivers all of it.) Then PHP serves
/// with the manager down, and a new manager takes handoffs again.
fn killed_mid_stream(kind: Kind) {
    let _heavy = heavy_lock();
    let stack = Stack::start(
        Config::new(kind)
            .without_manager()
            .children(2)
            .ini("handoff.timeout_ms", "10000"),
    );
    let mut manager = RestartableManager::new(&stack.manager_socket, stack.path());
    let size = 64 * MIB;
    stack.data_file("big.bin", size, 5);
    let content = fs::read(stack.data().join("big.bin")).expect("read big.bin");
    let small = 100_000;
    let small_sha = stack.data_file("small.bin", small, 6);
    let enough = 256 * 1024;
    manager.start();
    let mut clients: Vec<_> = (0..2)
        .map(|i| {
            let name = format!("cut{i}");
            let (curl, head, body) = stack
                .curl(&name, &format!("/download.php?f=big.bin&result={name}"))
                .args(&["--limit-rate", "8M"])
                .spawn(stack.client_dir().join(format!("{name}.curl.log")));
            (name, curl, head, body)
        })
        .collect();
    for (name, curl, _, body) in &mut clients {
        assert_eq!(stack.wait_result(name), "true", "{name}: handed off");
        wait_until(
            &format!("{name}: {enough} bytes at the client"),
            Duration::from_secs(30),
            || body_len(body) >= enough,
            || curl.check_alive(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", curl.log_text()));
    }
    manager.kill();
    let killed = Instant::now();
    for (name, curl, head, body) in &mut clients {
        let left = CLOSE_AFTER_KILL.saturating_sub(killed.elapsed());
        let status = curl.wait_exit(left);
        let r = response_from(head, body);
        assert_eq!(
            r.head_text.matches("HTTP/").count(),
            1,
            "{name}: {}",
            r.head_text
        );
        assert_eq!(r.status, 200, "{name}:\n{}", r.head_text);
        let got = r.body();
        assert!(
            (got.len() as u64) >= enough && (got.len() as u64) < size,
            "{name}: {} body bytes of {size} (the front end delivered {})",
            got.len(),
            if got.len() as u64 == size {
                "the whole file: it had buffered it"
            } else {
                "less than before the kill"
            }
        );
        if let Some(at) = got.iter().zip(&content).position(|(a, b)| a != b) {
            panic!(
                "{name}: byte {at} of {} differs from the file: not a clean prefix",
                got.len()
            );
        }
        assert!(
            status.is_some_and(|s| s.code() == Some(18)),
            "{name}: curl {status:?} {:?} after the manager died with {} of {size} bytes: \
             the connection must be closed (curl exit 18)\n{}",
            killed.elapsed(),
            got.len(),
            curl.log_text()
        );
    }
    eprintln!(
        "{kind:?}: both clients closed {:?} after the manager died",
        killed.elapsed()
    );
    let down = download_exact(&stack, "small.bin", &small_sha, small, "&down=1");
    assert_eq!(down, "false", "send_file() with the manager down");
    manager.start();
    let up = download_exact(&stack, "small.bin", &small_sha, small, "&up=1");
    assert_eq!(up, "true", "send_file() after the manager's restart");
    manager.wait_outcome("complete", small, 1);
    stack.assert_clean_logs();
}

/// The same tests for each front end, one module each.
macro_rules! front_end {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn byte_exact_downloads_through_manager() {
                byte_exact_downloads($kind);
            }

            #[test]
            fn ranges_and_conditionals_through_manager() {
                ranges_through_manager($kind);
            }

            #[test]
            fn script_headers_reach_client() {
                script_headers($kind);
            }

            #[test]
            fn worker_free_during_slow_download() {
                worker_free($kind);
            }

            #[test]
            fn fallback_without_manager_streams_in_process() {
                fallback($kind);
            }

            #[test]
            fn manager_killed_mid_stream_closes_client() {
                killed_mid_stream($kind);
            }
        }
    };
}

front_end!(lighttpd, Kind::Lighttpd);
front_end!(caddy, Kind::Caddy);
front_end!(apache_fcgi, Kind::ApacheFcgi);
