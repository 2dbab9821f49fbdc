//! The script's own code running inside `send_file()` (php/tests/www/user_code.php): output
//! handlers, `header_register_callback()` callbacks and user stream wrappers, behind nginx
//! + php-fpm with the manager (handoff) and without it (in-process fallback).
//!
//! - A fatal error in any of them ends the request, and the worker keeps no descriptor of
//!   the file or of the stream's memory copy: counted in `/proc/PID/fd` of the pool's only
//!   worker after repeated requests.

use std::fs;
use std::path::Path;
use std::time::Duration;

use handoff_stack::wait_until;

use crate::util::faults::only_fpm_worker;
use crate::util::{Config, Kind, Stack};

/// Requests per fatal error: each one that leaked would leave one descriptor more.
const FATAL_ROUNDS: usize = 3;

/// One worker, so that every request runs in the process whose descriptors are counted;
/// `display_errors` on and no output buffering, as in a development set-up where printed
/// warnings would become part of the response.
fn one_worker(manager: bool) -> Stack {
    let config = Config::new(Kind::Fpm)
        .children(1)
        .ini("display_errors", "1")
        .ini("output_buffering", "0");
    Stack::start(if manager {
        config
    } else {
        config.without_manager()
    })
}

/// The descriptors of `pid` that are a file deleted from `data` (a leaked `'delete' =>
/// true` file) or the memory copy of a stream.
fn leaked_fds(pid: i32, data: &Path) -> Vec<String> {
    let data = data.display().to_string();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .map(|target| target.display().to_string())
                .filter(|t| {
                    t.contains("memfd:handoff-stream")
                        || (t.starts_with(&data) && t.ends_with("(deleted)"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every `fatal` mode [`FATAL_ROUNDS`] times and checks that the worker survived
/// them all and holds none of the files.
fn fatal_errors_leak_nothing(manager: bool, modes: &[&str]) {
    let stack = one_worker(manager);
    stack.data_file("fatal.bin", 300_000, 191);
    let worker = only_fpm_worker(stack.path());
    for mode in modes {
        for round in 0..FATAL_ROUNDS {
            let name = format!("fatal-{mode}-{round}");
            let r = stack.get(&name, &format!("/user_code.php?f=fatal.bin&fatal={mode}"));
            assert!(
                r.status == 200 || r.status == 500,
                "{name}: status {}:\n{}",
                r.status,
                r.head_text
            );
        }
        assert_eq!(
            only_fpm_worker(stack.path()),
            worker,
            "fatal={mode}: the worker must survive a fatal error"
        );
        // The client's answer can arrive before the worker has finished the request (the
        // manager answers a handed-off one while the worker still runs the failing handler),
        // so wait for the worker to let go; a leaked descriptor is never let go.
        let mut leaked = Vec::new();
        let settled = wait_until(
            &format!("fatal={mode}: the worker closing its files"),
            Duration::from_secs(5),
            || {
                leaked = leaked_fds(worker, &stack.data());
                leaked.is_empty()
            },
            || Ok(()),
        );
        assert!(
            settled.is_ok(),
            "fatal={mode} (manager: {manager}): after {FATAL_ROUNDS} requests the worker \
             still holds {leaked:?}"
        );
    }
}

/// An output handler that fails fatally when send_file() discards the script's buffers
/// (after the handoff, and before streaming in-process), and a user stream wrapper whose
/// `stream_seek` fails fatally while send_file() copies the stream.
#[test]
fn fatal_error_in_user_code_leaks_no_file_handed_off() {
    fatal_errors_leak_nothing(true, &["seek", "ob", "callback"]);
}

/// The same without a manager, where the fallback also sends the head: a
/// `header_register_callback()` callback that fails fatally too.
#[test]
fn fatal_error_in_user_code_leaks_no_file_in_process() {
    fatal_errors_leak_nothing(false, &["seek", "ob", "callback"]);
}

/// Output while send_file() copies a user stream: the extension's own seek back to the
/// start of a wrapper without `stream_seek` prints nothing (PHP would warn, and with
/// `display_errors` the warning would commit a head before the file), and a wrapper that
/// echoes makes send_file() throw before any byte of the file.
fn output_during_the_copy(manager: bool) {
    let stack = one_worker(manager);
    let sha = stack.data_file("wrapped.bin", 200_000, 192);
    let data = fs::read(stack.data().join("wrapped.bin")).expect("read wrapped.bin");
    let expect = if manager { "true" } else { "false" };

    let r = stack.get(
        "noseek",
        "/user_code.php?f=wrapped.bin&wrapper=noseek&result=noseek",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha, "wrapper without stream_seek: body");
    assert_eq!(stack.wait_result("noseek"), expect, "send_file()");

    let r = stack.get(
        "echo",
        "/user_code.php?f=wrapped.bin&wrapper=echo&result=echo",
    );
    let returned = stack.wait_result("echo");
    assert!(
        returned.starts_with("HandoffException: ") && returned.contains("printed output"),
        "a wrapper that echoes: {returned}"
    );
    let body = r.body();
    let printed = String::from_utf8_lossy(&body);
    assert!(
        printed.lines().all(|l| l == "output of the wrapper"),
        "only the wrapper's own output, no byte of the file ({} bytes):\n{}",
        body.len(),
        printed.chars().take(300).collect::<String>()
    );
    assert!(body.len() < data.len());
    if manager {
        stack.wait_outcome("complete", data.len() as u64, 1);
        assert_eq!(stack.outcome_count("complete", data.len() as u64), 1);
    }
}

#[test]
fn output_during_the_copy_handed_off() {
    output_during_the_copy(true);
}

#[test]
fn output_during_the_copy_in_process() {
    output_during_the_copy(false);
}

/// A header set by a `header_register_callback()` callback is in the head the manager sends
/// as in the one PHP sends, and the callback runs once.
fn header_callback_on_both_paths(kind: Kind) {
    crate::util::scenarios::on_both_paths(kind, |stack, returned| {
        let sha = stack.data_file("cb.bin", 150_000, 193);
        let r = stack.get("cb", "/user_code.php?f=cb.bin&callback=1&result=cb");
        assert_eq!(r.status, 200, "{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "body");
        assert_eq!(
            r.headers_named("X-Callback"),
            vec!["ran"],
            "send_file() returned {returned}:\n{}",
            r.head_text
        );
        assert_eq!(stack.wait_result("cb"), returned);
    });
}

#[test]
fn header_callback_headers_on_both_paths_fpm() {
    header_callback_on_both_paths(Kind::Fpm);
}

#[test]
fn header_callback_headers_on_both_paths_cli_server() {
    header_callback_on_both_paths(Kind::CliServer);
}
