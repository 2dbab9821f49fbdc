//! The PHP built-in web server (`php -S`) with the extension loaded: the manager writes raw
//! HTTP/1.1 on the handed-off TCP connection.

use crate::util::scenarios;
use crate::util::{heavy_lock, Config, Kind, Stack};

#[test]
fn byte_exact_downloads_through_manager() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::byte_exact_through_manager(&stack);
}

#[test]
fn script_headers_reach_client() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::script_headers_reach_client(&stack);
}

#[test]
fn fallback_without_manager_streams_in_process() {
    let stack = Stack::start(Config::new(Kind::CliServer).without_manager());
    scenarios::fallback_streams_in_process(&stack);
}

#[test]
fn output_after_handoff_is_dropped() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::output_after_handoff_is_dropped(&stack);
}

#[test]
fn send_file_after_flush_throws() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::flushed_headers_throw(&stack);
}

#[test]
fn missing_file_gives_script_404() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::missing_file_gives_script_page(&stack);
}

/// `php -S` serves one request at a time: only a handoff lets it answer others during a slow
/// download.
#[test]
fn server_free_during_slow_download() {
    let _heavy = heavy_lock();
    let mut stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::server_free_during_slow_download(&mut stack);
}

#[test]
fn aborted_download_is_logged() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::aborted_download_is_logged(&stack);
}

#[test]
fn hung_manager_falls_back_after_timeout() {
    let stack = Stack::start(
        Config::new(Kind::CliServer)
            .without_manager()
            .ini("handoff.timeout_ms", "300"),
    );
    scenarios::hung_manager_falls_back_after_timeout(&stack);
}

#[test]
fn ranges_and_conditionals_through_manager() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::ranges_and_conditionals(&stack);
    assert_eq!(
        stack.outcome_count("complete", 100),
        1,
        "the 100-byte range was not sent by the manager"
    );
}

#[test]
fn ranges_and_conditionals_without_manager() {
    let stack = Stack::start(Config::new(Kind::CliServer).without_manager());
    scenarios::ranges_and_conditionals(&stack);
}

#[test]
fn rate_option_limits_speed() {
    scenarios::on_both_paths(Kind::CliServer, scenarios::rate_option_limits_speed);
}

#[test]
fn download_answering_unread_post() {
    scenarios::on_both_paths(Kind::CliServer, scenarios::download_answering_unread_post);
}

/// A script cannot point `handoff.socket` (set with `-d`) elsewhere with `ini_set()`.
#[test]
fn script_cannot_redirect_handoff_socket() {
    let stack = Stack::start(Config::new(Kind::CliServer));
    scenarios::script_cannot_redirect_handoff_socket(&stack);
}

/// `header('Status: 404')`: `php -S` does not take a status from it (it sends it as an
/// ordinary field), so both paths answer the script's 200, with identical heads.
#[test]
fn status_header_is_answered_alike_on_both_paths() {
    scenarios::status_header_same_on_both_paths(Kind::CliServer, &[("404", "HTTP/1.1 200 OK")]);
}

#[test]
fn raw_header_bytes_are_kept_on_both_paths() {
    scenarios::raw_header_bytes_same_on_both_paths(Kind::CliServer);
}

/// The manager at capacity answers a one-way handoff with its own 503 on the raw
/// connection (HTTP/1.1).
#[test]
fn at_capacity_the_manager_answers_503() {
    let stack = Stack::start(Config::new(Kind::CliServer).without_manager());
    let manager = crate::util::faults::RestartableManager::started_for(
        &stack,
        &["--max-downloads", "1", "--max-waiting", "0"],
    );
    scenarios::at_capacity_the_manager_answers_503(&stack, || manager.log());
}
