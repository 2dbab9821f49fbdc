//! Downloads themselves: byte-exact at every size, the server free while one runs, a client
//! that walks away, `handoff.rate`, a download answering an unread POST body, and the
//! manager's 503 at capacity.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{download_exact, SIZES};
use crate::util::{raw_request, response_from, split_head, Stack, MIB};

/// Test 1: 0 B, 1 B, 1 MiB and 100 MiB arrive byte-exact, each handed to the manager (the
/// script saw `true` and the manager logged a complete download of exactly that size), with
/// Last-Modified and Accept-Ranges; HEAD gets the head and no body.
pub fn byte_exact_through_manager(stack: &Stack) {
    for (seed, size) in SIZES.into_iter().enumerate() {
        let name = format!("exact-{size}.bin");
        let sha = stack.data_file(&name, size, seed as u64 + 1);
        let before = stack.outcome_count("complete", size);
        let returned = download_exact(stack, &name, &sha, size, "");
        assert_eq!(
            returned, "true",
            "send_file() return value for {size} bytes"
        );
        stack.wait_outcome("complete", size, before + 1);
    }

    let response = stack.get("exact-head-check", "/download.php?f=exact-1048576.bin");
    assert_eq!(
        response.header("Accept-Ranges"),
        Some("bytes"),
        "{}",
        response.head_text
    );
    let last_modified = response
        .header("Last-Modified")
        .unwrap_or_else(|| panic!("no Last-Modified:\n{}", response.head_text));
    assert!(
        last_modified.ends_with(" GMT"),
        "Last-Modified is not an HTTP date: {last_modified}"
    );
    assert_eq!(
        response.header("Content-Type"),
        Some("application/octet-stream"),
        "a .bin file"
    );

    let raw = raw_request(
        &stack.endpoint,
        "HEAD /download.php?f=exact-1048576.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = split_head(&raw);
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "HEAD status:\n{head}"
    );
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("content-length: 1048576")),
        "HEAD must announce the file's length:\n{head}"
    );
    assert!(
        body.is_empty(),
        "HEAD response carried {} body bytes",
        body.len()
    );
}

/// While a rate-limited 100 MiB download runs through the manager, twenty other requests are
/// served (each within 5 s) before it ends; then it completes byte-exact. Behind php-fpm run
/// this with one worker: only a handoff frees it.
pub fn server_free_during_slow_download(stack: &mut Stack) {
    let size = 100 * MIB;
    let sha = stack.data_file("big.bin", size, 3);

    let (proc, head, body) = stack
        .curl("big", "/download.php?f=big.bin")
        .args(&["--limit-rate", "20M"])
        .spawn(stack.client_dir().join("big.curl.log"));
    let big = stack.adopt(proc);
    let started = Instant::now();
    while std::fs::metadata(&body).map(|m| m.len()).unwrap_or(0) == 0 {
        if let Err(e) = stack.adopted(big).check_alive() {
            panic!("the slow download ended before its first byte: {e}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the slow download sent no byte in 15 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    for i in 0..20 {
        let r = stack
            .curl(&format!("hello-{i}"), "/hello.php")
            .args(&["--max-time", "5"])
            .run();
        assert_eq!(r.status, 200, "hello #{i}:\n{}", r.head_text);
        assert_eq!(r.body(), b"hello from php\n", "hello #{i}");
    }
    assert!(
        stack.adopted(big).is_running(),
        "the 100 MiB download finished before the other requests did: the check proves nothing"
    );

    let status = stack
        .adopted(big)
        .wait_exit(Duration::from_secs(120))
        .expect("the slow download did not finish within 120 s");
    assert!(status.success(), "curl for the slow download: {status}");
    let r = response_from(&head, &body);
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_len(), size);
    assert_eq!(r.body_sha(), sha, "the slow 100 MiB download");
    stack.wait_outcome("complete", size, 1);
}

/// A client that GETs `path_and_query`, reads `limit` bytes of the response and closes.
pub fn read_part_then_close(stack: &Stack, path_and_query: &str, limit: usize) {
    let mut conn = stack
        .endpoint
        .connect()
        .expect("connect the aborting client");
    conn.set_read_timeout(Duration::from_secs(30));
    conn.write_all(format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .expect("send request");
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < limit {
        let n = conn.read(&mut buf).expect("read the start of the response");
        assert!(n > 0, "{path_and_query} ended after {got} bytes");
        got += n;
    }
}

/// A client that walks away in the middle of a large download is logged as aborted (not
/// complete), and the server goes on serving.
pub fn aborted_download_is_logged(stack: &Stack) {
    let size = 64 * MIB;
    let sha = stack.data_file("abort.bin", size, 99);
    read_part_then_close(stack, "/download.php?f=abort.bin", MIB as usize);
    stack.wait_manager("a manager log line outcome=aborted for abort.bin", |s| {
        s.outcome_bytes("aborted").iter().any(|&b| b < size)
    });
    assert_eq!(
        stack.outcome_count("complete", size),
        0,
        "the aborted download was logged as complete"
    );
    let returned = download_exact(stack, "abort.bin", &sha, size, "");
    assert_eq!(returned, "true", "the same file right after the abort");
}

/// The `rate` option caps the download: 1 MiB at 400 000 bytes/s cannot arrive in less
/// than ~2.6 s (checked with margin for an initial burst), and arrives intact.
pub fn rate_option_limits_speed(stack: &Stack, expect_returned: &str) {
    let size = MIB;
    let sha = stack.data_file("rated.bin", size, 81);
    let started = Instant::now();
    let returned = download_exact(stack, "rated.bin", &sha, size, "&rate=400000");
    let took = started.elapsed();
    assert_eq!(
        returned, expect_returned,
        "send_file() with the rate option"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(30),
        "1 MiB at 400000 bytes/s took {took:?}"
    );
}

/// A POST whose body the script never reads (2 MiB of octet-stream, and 20 MiB, over
/// php.ini's post_max_size): the download still arrives whole. Behind nginx the unread
/// body is still on the FastCGI connection the manager took over.
pub fn download_answering_unread_post(stack: &Stack, expect_returned: &str) {
    let size = 3 * MIB;
    let sha = stack.data_file("posted.bin", size, 91);
    for (i, post_size) in [2 * MIB, 20 * MIB].into_iter().enumerate() {
        let upload = stack.path().join(format!("upload-{i}.bin"));
        crate::util::write_random_file(&upload, post_size, 92 + i as u64);
        let result = format!("posted-{i}.result");
        let r = stack
            .curl(
                &format!("posted-{i}"),
                &format!("/download.php?f=posted.bin&result={result}"),
            )
            .args(&[
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(&format!("@{}", upload.display()))
            .run();
        assert_eq!(r.status, 200, "POST of {post_size} bytes:\n{}", r.head_text);
        assert_eq!(
            r.body_sha(),
            sha,
            "download answering a POST of {post_size} bytes"
        );
        assert_eq!(
            stack.wait_result(&result),
            expect_returned,
            "send_file() answering a POST of {post_size} bytes"
        );
    }
}

/// At `--max-downloads` (1 here, `--max-waiting 0`) a one-way handoff cannot wait: its
/// client gets the manager's own complete `503` with `Retry-After`, through the real web
/// server, while the running download completes byte-exact; `send_file()` returned `true`
/// (the manager owned the request). Needs a stack whose manager runs with those flags;
/// `manager_log` reads that manager's log.
pub fn at_capacity_the_manager_answers_503(stack: &Stack, manager_log: impl Fn() -> String) {
    let size = 64 * MIB;
    let sha = stack.data_file("busy.bin", size, 11);
    stack.data_file("second.bin", 200_000, 12);
    let (mut slow, head, body) = stack
        .curl("busy", "/download.php?f=busy.bin")
        .args(&["--limit-rate", "8M"])
        .spawn(stack.client_dir().join("busy.curl.log"));
    crate::util::wait_until(
        "the slow download running",
        Duration::from_secs(20),
        || manager_log().contains("one-way handoff of"),
        || slow.check_alive(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = stack.get("second", "/download.php?f=second.bin&result=second");
    assert_eq!(r.status, 503, "at capacity:\n{}", r.head_text);
    assert!(r.header("Retry-After").is_some(), "{}", r.head_text);
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body().len().to_string().as_str()),
        "{}",
        r.head_text
    );
    let secret = stack.path().display().to_string();
    assert!(
        !String::from_utf8_lossy(&r.body()).contains(&secret) && !r.head_text.contains(&secret),
        "the 503 names a path"
    );
    assert_eq!(stack.wait_result("second"), "true", "the manager owned it");
    let status = slow
        .wait_exit(Duration::from_secs(120))
        .expect("the slow download did not finish within 120 s");
    assert!(status.success(), "curl for the slow download: {status}");
    let r = response_from(&head, &body);
    assert_eq!(r.body_sha(), sha, "the running download");
}
