//! The in-process fallback: no manager, or one that hangs.

use std::time::{Duration, Instant};

use super::download_exact;
use crate::util::{raw_request, split_head, SilentManager, Stack, MIB};

/// Test 4: with the manager unreachable the script streams in-process, send_file() returns
/// false, and an `echo` after it does not reach the client.
pub fn fallback_streams_in_process(stack: &Stack) {
    for (seed, size) in [0, 1, MIB, 20 * MIB].into_iter().enumerate() {
        let name = format!("fallback-{size}.bin");
        let sha = stack.data_file(&name, size, seed as u64 + 20);
        let returned = download_exact(stack, &name, &sha, size, "");
        assert_eq!(
            returned, "false",
            "send_file() without a manager, {size} bytes"
        );
        let returned = download_exact(stack, &name, &sha, size, "&garbage=1");
        assert_eq!(
            returned, "false",
            "send_file() without a manager, {size} bytes"
        );
    }
    let raw = raw_request(
        &stack.endpoint,
        "HEAD /download.php?f=fallback-1048576.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = split_head(&raw);
    assert!(
        head.contains(" 200 "),
        "HEAD status without a manager:\n{head}"
    );
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("content-length: 1048576")),
        "HEAD without a manager must announce the file's length:\n{head}"
    );
    assert!(
        body.is_empty(),
        "HEAD without a manager carried {} body bytes",
        body.len()
    );
}

/// A manager that accepts but never answers: after `handoff.timeout_ms` (the stack must set
/// it to 300) the worker streams the file itself, byte-exact, and send_file() returns false.
pub fn hung_manager_falls_back_after_timeout(stack: &Stack) {
    let silent = SilentManager::bind(&stack.manager_socket);
    let size = 3 * MIB;
    let sha = stack.data_file("hung.bin", size, 50);
    let started = Instant::now();
    let returned = download_exact(stack, "hung.bin", &sha, size, "");
    let took = started.elapsed();
    assert_eq!(
        returned, "false",
        "send_file() with a manager that never answers"
    );
    assert!(
        silent.accepted() >= 1,
        "the worker never connected to the manager socket"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "with handoff.timeout_ms=300 the download took {took:?}"
    );
}
