//! The features of the SAPI × feature matrix (`matrix.rs`): each starts the stack its check
//! needs for the given [`Kind`], runs the check from `util::scenarios` and, behind a web
//! server or php-fpm, asserts that their logs show no rejected FastCGI response and no
//! crashed worker (for `php -S` there is no such log and the check is a no-op).

use std::fs;
use std::time::{Duration, Instant};

// The faults (the manager killed or crashing at each point of a handoff) live with the
// other fault tests.
pub use crate::faults::{
    failed_go_keeps_close_on_exec, manager_crashing_after_confirming,
    manager_killed_before_confirming, manager_killed_mid_stream,
    manager_killed_with_handoffs_queued,
};
use crate::util::faults::RestartableManager;
use crate::util::scenarios::{self, download_exact};
use crate::util::{heavy_lock, received_len, response_from, wait_until, Config, Kind, Stack, MIB};

/// Starts the stack `config` describes, runs `check` on it, then asserts that the servers'
/// logs are clean.
fn on_stack(config: Config, check: impl FnOnce(&mut Stack)) {
    let mut stack = Stack::start(config);
    check(&mut stack);
    stack.assert_clean_logs();
}

/// Every size in `scenarios::SIZES` downloaded through the manager, byte for byte.
pub fn byte_exact_downloads_through_manager(kind: Kind) {
    let _heavy = heavy_lock();
    on_stack(Config::new(kind), |s| {
        scenarios::byte_exact_through_manager(s)
    });
}

/// Ranges and conditionals answered by the manager; the 100-byte range is its download.
pub fn ranges_and_conditionals_through_manager(kind: Kind) {
    on_stack(Config::new(kind), |s| {
        scenarios::ranges_and_conditionals(s);
        assert_eq!(
            s.outcome_count("complete", 100),
            1,
            "the 100-byte range was not sent by the manager"
        );
    });
}

/// The same ranges and conditionals answered by the in-process fallback.
pub fn ranges_and_conditionals_without_manager(kind: Kind) {
    on_stack(Config::new(kind).without_manager(), |s| {
        scenarios::ranges_and_conditionals(s)
    });
}

pub fn script_headers_reach_client(kind: Kind) {
    on_stack(Config::new(kind), |s| {
        scenarios::script_headers_reach_client(s)
    });
}

pub fn fallback_without_manager_streams_in_process(kind: Kind) {
    on_stack(Config::new(kind).without_manager(), |s| {
        scenarios::fallback_streams_in_process(s)
    });
}

pub fn output_after_handoff_is_dropped(kind: Kind) {
    on_stack(Config::new(kind), |s| {
        scenarios::output_after_handoff_is_dropped(s)
    });
}

pub fn send_file_after_flush_throws(kind: Kind) {
    on_stack(Config::new(kind), |s| scenarios::flushed_headers_throw(s));
}

pub fn missing_file_gives_script_404(kind: Kind) {
    on_stack(Config::new(kind), |s| {
        scenarios::missing_file_gives_script_page(s)
    });
}

/// One worker (one php-fpm child, one prefork child; `php -S` serves one request at a time
/// anyway): a slow 100 MiB download must not hold it, only a handoff lets it answer others
/// meanwhile, and the download then completes intact.
pub fn worker_free_during_slow_download(kind: Kind) {
    let _heavy = heavy_lock();
    on_stack(Config::new(kind).children(1), |s| {
        scenarios::server_free_during_slow_download(s)
    });
}

pub fn aborted_download_is_logged(kind: Kind) {
    let _heavy = heavy_lock();
    on_stack(Config::new(kind), |s| {
        scenarios::aborted_download_is_logged(s)
    });
}

pub fn hung_manager_falls_back_after_timeout(kind: Kind) {
    let config = Config::new(kind)
        .without_manager()
        .ini("handoff.timeout_ms", "300");
    on_stack(config, |s| {
        scenarios::hung_manager_falls_back_after_timeout(s)
    });
}

pub fn rate_option_limits_speed(kind: Kind) {
    scenarios::on_both_paths(kind, scenarios::rate_option_limits_speed);
}

pub fn download_answering_unread_post(kind: Kind) {
    scenarios::on_both_paths(kind, scenarios::download_answering_unread_post);
}

/// A script cannot point `handoff.socket` elsewhere with `ini_set()` (set with `-d` under
/// `php -S`; behind php-fpm the pool's php_admin_value also locks it,
/// deploy/php-fpm-pool.conf).
pub fn script_cannot_redirect_handoff_socket(kind: Kind) {
    on_stack(Config::new(kind), |s| {
        scenarios::script_cannot_redirect_handoff_socket(s)
    });
}

/// `header('Status: 404')`, answered alike by the handoff and the fallback. php-fpm passes
/// the field to the web server as the CGI status, so both paths answer 404 (and a reason
/// given with it); `php -S` does not take a status from it (it sends it as an ordinary
/// field), so both paths answer the script's 200.
pub fn status_header_same_on_both_paths(kind: Kind) {
    let expected: &[(&str, &str)] = match kind {
        Kind::Fpm => &[
            ("404", "HTTP/1.1 404 Not Found"),
            ("410 Gone Fishing", "HTTP/1.1 410 Gone Fishing"),
        ],
        Kind::CliServer => &[("404", "HTTP/1.1 200 OK")],
        other => panic!("no expected status lines for {other:?}: add them here"),
    };
    scenarios::status_header_same_on_both_paths(kind, expected);
}

pub fn raw_header_bytes_are_kept_on_both_paths(kind: Kind) {
    scenarios::raw_header_bytes_same_on_both_paths(kind);
}

/// The manager at capacity answers a one-way handoff with its own 503, in FastCGI records
/// through the web server or as HTTP/1.1 on the raw connection.
pub fn at_capacity_the_manager_answers_503(kind: Kind) {
    let stack = Stack::start(Config::new(kind).children(2).without_manager());
    let manager =
        RestartableManager::started_for(&stack, &["--max-downloads", "1", "--max-waiting", "0"]);
    scenarios::at_capacity_the_manager_answers_503(&stack, || manager.log());
    stack.assert_clean_logs();
}

/// How long the front end may take to close the client's connection after the manager
/// died. Apache's mod_proxy_fcgi takes about ten seconds; lighttpd and Caddy under one.
const CLOSE_AFTER_KILL: Duration = Duration::from_secs(30);

/// The manager is killed while two rate-limited clients download 64 MiB through it. Each
/// must hold a clean prefix of the file under one head, and curl must report a short
/// transfer (exit 18): the front end closed the connection instead of finishing it or
/// leaving it open. (lighttpd without `server.stream-response-body = 2` fails this: it has
/// the whole file from the manager within a second and delivers all of it.) Then PHP serves
/// with the manager down, and a new manager takes handoffs again.
pub fn manager_killed_mid_stream_closes_client(kind: Kind) {
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
            || received_len(body) >= enough,
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
