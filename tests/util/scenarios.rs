//! Checks that run the same way behind nginx + php-fpm, `php -S` and Apache + mod_php.
//!
//! Each takes a started [`Stack`] and panics with a precise message on the first difference;
//! the stack prints its logs when that happens.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{
    raw_request, response_from, sha256_bytes, split_head, urlencode, Config, Kind, SilentManager,
    Stack, MIB,
};

/// The sizes every server must deliver byte-exact.
pub const SIZES: [u64; 4] = [0, 1, MIB, 100 * MIB];

/// GETs `data/<name>` through download.php and checks status, length and sha256; returns
/// what the script recorded as send_file()'s return value.
pub fn download_exact(
    stack: &Stack,
    name: &str,
    sha: &str,
    size: u64,
    extra_query: &str,
) -> String {
    let tag: String = extra_query
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let result = format!("{name}{tag}.result");
    let response = stack.get(
        &format!("{name}{tag}"),
        &format!("/download.php?f={name}&result={result}{extra_query}"),
    );
    assert_eq!(
        response.status, 200,
        "status for {name}:\n{}",
        response.head_text
    );
    assert_eq!(
        response.header("Content-Length"),
        Some(size.to_string().as_str()),
        "Content-Length for {name}:\n{}",
        response.head_text
    );
    assert_eq!(
        response.body_len(),
        size,
        "body length of {name} ({extra_query})"
    );
    assert_eq!(
        response.body_sha(),
        sha,
        "body sha256 of {name} ({extra_query})"
    );
    stack.wait_result(&result)
}

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

/// Test 2: the script's status, cookie and header survive the handoff; Content-Type comes
/// from the extension, the option, or falls back to octet-stream; `filename` makes an
/// RFC 6266 attachment header.
pub fn script_headers_reach_client(stack: &Stack) {
    let sha = stack.data_file("foo.pdf", 200_000, 7);
    stack.data_file("foo.unknownext", 1000, 8);

    let r = stack.get("headers", "/download.php?f=foo.pdf&headers=1");
    assert_eq!(r.status, 203, "http_response_code(203):\n{}", r.head_text);
    assert!(
        r.headers_named("Set-Cookie")
            .iter()
            .any(|c| c.starts_with("handoff_test=cookie-value")),
        "setcookie():\n{}",
        r.head_text
    );
    assert_eq!(
        r.header("X-Test"),
        Some("kept-by-handoff"),
        "{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("application/pdf"),
        "{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Length"),
        Some("200000"),
        "{}",
        r.head_text
    );
    assert_eq!(r.body_sha(), sha, "body of foo.pdf with script headers");

    let r = stack.get(
        "script-type-and-length",
        "/download.php?f=foo.pdf&type_header=image%2Fpng&bogus_length=1",
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("image/png"),
        "the script's own Content-Type header wins over the extension:\n{}",
        r.head_text
    );
    assert_eq!(
        r.headers_named("Content-Length"),
        vec!["200000"],
        "the script's Content-Length is replaced by the file's:\n{}",
        r.head_text
    );
    assert_eq!(r.body_sha(), sha, "body with the script's own headers");

    let r = stack.get("unknown", "/download.php?f=foo.unknownext");
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{}",
        r.head_text
    );

    let r = stack.get(
        "content-type-option",
        &format!(
            "/download.php?f=foo.pdf&content_type={}",
            urlencode("text/plain; charset=utf-8")
        ),
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; charset=utf-8"),
        "the content_type option wins over the extension:\n{}",
        r.head_text
    );

    let r = stack.get(
        "filename",
        &format!(
            "/download.php?f=foo.pdf&filename={}",
            urlencode("Résumé 2024.pdf")
        ),
    );
    let disposition = r
        .header("Content-Disposition")
        .unwrap_or_else(|| panic!("no Content-Disposition:\n{}", r.head_text));
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "Content-Disposition: {disposition}"
    );
    assert!(
        disposition.ends_with("; filename*=UTF-8''R%C3%A9sum%C3%A9%202024.pdf"),
        "Content-Disposition: {disposition}"
    );
    assert!(
        disposition.is_ascii(),
        "the header must be ASCII: {disposition}"
    );
    assert_eq!(r.body_sha(), sha, "body with the filename option");

    let r = stack.get(
        "inline",
        "/download.php?f=foo.pdf&inline=1&filename=report.pdf",
    );
    let disposition = r.header("Content-Disposition").unwrap_or_default();
    assert!(
        disposition.starts_with("inline"),
        "inline => true: Content-Disposition: {disposition:?}\n{}",
        r.head_text
    );
}

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

/// Test 4, manager side: after a handed-off send_file() the worker writes nothing to the
/// connection: an `echo` and `flush()` after it, a shutdown function that echoes, sets a
/// header and flushes, and the end of the request never reach the client (bodies
/// byte-exact, one head, no `X-Late`).
pub fn output_after_handoff_is_dropped(stack: &Stack) {
    for (seed, size) in [1, 100_000, 5 * MIB].into_iter().enumerate() {
        let name = format!("garbage-{size}.bin");
        let sha = stack.data_file(&name, size, seed as u64 + 30);
        for extra in ["&garbage=1", "&garbage=1&shutdown=1"] {
            let returned = download_exact(stack, &name, &sha, size, extra);
            assert_eq!(
                returned, "true",
                "send_file() with the manager up, {size} bytes ({extra})"
            );
        }
        let r = stack.get(
            &format!("late-{size}"),
            &format!("/download.php?f={name}&shutdown=1&garbage=1"),
        );
        assert!(
            r.header("X-Late").is_none() && r.head_text.matches("HTTP/").count() == 1,
            "a late header or a second head reached the client:\n{}",
            r.head_text
        );
        assert_eq!(
            r.body_sha(),
            sha,
            "body with a shutdown function, {size} bytes"
        );
    }
}

/// Test 5: a missing file leaves the response to the script, which sends its own 404; the
/// client never sees where the files live.
pub fn missing_file_gives_script_page(stack: &Stack) {
    let r = stack.get("missing", "/missing.php");
    assert_eq!(r.status, 404, "{}", r.head_text);
    let body = r.body();
    assert_eq!(
        sha256_bytes(&body),
        sha256_bytes(b"<h1>not found page</h1>\n"),
        "not the script's own page: {} bytes starting {:?}",
        body.len(),
        String::from_utf8_lossy(&body[..body.len().min(80)])
    );
    let secret = stack.path().display().to_string();
    assert!(
        !r.head_text.contains(&secret),
        "the head leaks the temp dir:\n{}",
        r.head_text
    );
    assert!(
        !String::from_utf8_lossy(&body).contains(&secret),
        "the body leaks the temp dir"
    );
    assert!(
        r.header("Content-Disposition").is_none(),
        "nothing of send_file()'s response may remain:\n{}",
        r.head_text
    );
}

/// Once the script has flushed output, send_file() must throw and write nothing: the
/// client sees the early output and what the script printed after catching.
pub fn flushed_headers_throw(stack: &Stack) {
    stack.data_file("flushed.bin", 10_000, 9);
    let r = stack.get("flushed", "/flushed.php?f=flushed.bin");
    assert_eq!(r.status, 200, "{}", r.head_text);
    let body = r.body();
    let expected = b"early output\ncaught HandoffException\n";
    assert!(
        body == expected,
        "send_file() after flush(): got {} bytes starting {:?}",
        body.len(),
        String::from_utf8_lossy(&body[..body.len().min(80)])
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

/// Ranges and conditional requests, end to end: one range, a suffix, several ranges
/// (multipart), an unsatisfiable one, `If-Range` with a stale validator, and 304 for
/// `If-None-Match` / `If-Modified-Since`. The same plan serves the manager and the
/// in-process fallback, so this runs on both.
pub fn ranges_and_conditionals(stack: &Stack) {
    let size: usize = 1_000_000;
    stack.data_file("ranged.bin", size as u64, 61);
    let data = std::fs::read(stack.data().join("ranged.bin")).expect("read ranged.bin");
    let url = "/download.php?f=ranged.bin";

    let full = stack.get("ranged-full", url);
    assert_eq!(full.status, 200, "{}", full.head_text);
    assert_eq!(full.body_sha(), sha256_bytes(&data));
    let etag = full
        .header("ETag")
        .unwrap_or_else(|| panic!("no ETag:\n{}", full.head_text))
        .to_string();
    let last_modified = full
        .header("Last-Modified")
        .unwrap_or_else(|| panic!("no Last-Modified:\n{}", full.head_text))
        .to_string();

    let ranged = |name: &str, range: &str| {
        stack
            .curl(name, url)
            .args(&["-H", &format!("Range: {range}")])
            .run()
    };

    let r = ranged("range-middle", "bytes=100-199");
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(
        r.header("Content-Range"),
        Some("bytes 100-199/1000000"),
        "{}",
        r.head_text
    );
    assert_eq!(r.header("Content-Length"), Some("100"), "{}", r.head_text);
    assert!(r.body() == data[100..200], "bytes 100-199 differ");

    let r = ranged("range-suffix", "bytes=-500");
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(
        r.header("Content-Range"),
        Some("bytes 999500-999999/1000000"),
        "{}",
        r.head_text
    );
    assert!(r.body() == data[size - 500..], "the last 500 bytes differ");

    let r = ranged("range-multi", "bytes=0-9,500000-500009");
    assert_eq!(r.status, 206, "{}", r.head_text);
    let content_type = r.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/byteranges; boundary="),
        "{}",
        r.head_text
    );
    let body = r.body();
    for (from, to) in [(0usize, 9usize), (500_000, 500_009)] {
        let part_head = format!("Content-Range: bytes {from}-{to}/1000000\r\n\r\n");
        let at = body
            .windows(part_head.len())
            .position(|w| w == part_head.as_bytes())
            .unwrap_or_else(|| panic!("no part for {from}-{to} in the multipart body"));
        let start = at + part_head.len();
        assert!(
            body[start..start + 10] == data[from..=to],
            "bytes {from}-{to} of the multipart body differ"
        );
    }
    assert_eq!(
        r.header("Content-Length"),
        Some(body.len().to_string().as_str()),
        "Content-Length of the multipart body"
    );

    let r = ranged("range-unsatisfiable", "bytes=2000000-");
    assert_eq!(r.status, 416, "{}", r.head_text);
    assert_eq!(
        r.header("Content-Range"),
        Some("bytes */1000000"),
        "{}",
        r.head_text
    );

    let r = stack
        .curl("if-range-stale", url)
        .args(&["-H", "Range: bytes=0-99", "-H", "If-Range: \"stale\""])
        .run();
    assert_eq!(
        r.status, 200,
        "a stale If-Range means the whole file:\n{}",
        r.head_text
    );
    assert_eq!(r.body_sha(), sha256_bytes(&data));

    for (name, header) in [
        ("if-none-match", format!("If-None-Match: {etag}")),
        (
            "if-modified-since",
            format!("If-Modified-Since: {last_modified}"),
        ),
    ] {
        let r = stack.curl(name, url).args(&["-H", &header]).run();
        assert_eq!(r.status, 304, "{header}:\n{}", r.head_text);
        assert_eq!(r.body_len(), 0, "a 304 has no body ({header})");
    }
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
        super::write_random_file(&upload, post_size, 92 + i as u64);
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

/// A script cannot send its clients' connections to a socket of its own: `handoff.socket`
/// is PHP_INI_SYSTEM|PHP_INI_PERDIR, so `ini_set()` fails, and the download still goes to
/// the manager the server's configuration names.
pub fn script_cannot_redirect_handoff_socket(stack: &Stack) {
    let size = 200_000;
    let sha = stack.data_file("r.bin", size, 81);
    let returned = download_exact(stack, "r.bin", &sha, size, "&redirect_socket=1");
    assert_eq!(
        stack.wait_result("r.bin_redirect_socket_1.result.ini_set"),
        "false",
        "ini_set('handoff.socket') from a script"
    );
    assert_eq!(returned, "true", "send_file() after the refused ini_set()");
    stack.wait_outcome("complete", size, 1);
}

/// Runs `scenario` on a stack with the manager, where send_file() must return `"true"`, and
/// on one without it (the in-process fallback, `"false"`); behind nginx the logs must stay
/// clean on both.
pub fn on_both_paths(kind: Kind, scenario: impl Fn(&Stack, &str)) {
    for (manager, returned) in [(true, "true"), (false, "false")] {
        let config = Config::new(kind);
        let stack = Stack::start(if manager {
            config
        } else {
            config.without_manager()
        });
        scenario(&stack, returned);
        if kind != Kind::CliServer {
            stack.assert_clean_logs();
        }
    }
}

/// The old CGI idiom `header('Status: 404')` before send_file(): the handoff and the
/// fallback answer with the same status line and the same header fields in the same order
/// (the `Date` value aside), and the status is the one PHP's SAPI gives such a script: the
/// Status field's under php-fpm, which passes it to the web server as the CGI status; the
/// script's response code under `php -S`, which sends it as an ordinary field. One stack
/// and one file for both paths (the same ETag): the manager runs for the first round and is
/// killed for the second.
///
/// `php -S` writes the request's `Host` field into every response head it sends itself,
/// which the manager does not: that line is left out of the comparison.
pub fn status_header_same_on_both_paths(kind: Kind, expected: &[(&str, &str)]) {
    let stack = Stack::start(Config::new(kind).without_manager());
    let mut manager = super::faults::RestartableManager::new(&stack.manager_socket, stack.path());
    let size = 100_000;
    let sha = stack.data_file("status.bin", size, 131);
    let mut heads: Vec<Vec<String>> = Vec::new();
    for (round, handed_off) in [(0, true), (1, false)] {
        if handed_off {
            manager.start();
        } else {
            manager.kill();
        }
        let mut round_heads = Vec::new();
        for (i, (value, status_line)) in expected.iter().enumerate() {
            let result = format!("status-{round}-{i}.result");
            let raw = raw_request(
                &stack.endpoint,
                &format!(
                    "GET /download.php?f=status.bin&result={result}&status_header={} \
                     HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    urlencode(value)
                ),
            );
            let (head, body) = split_head(&raw);
            assert_eq!(
                head.lines().next(),
                Some(*status_line),
                "Status: {value} (handed off: {handed_off}):\n{head}"
            );
            assert_eq!(sha256_bytes(body), sha, "Status: {value}: body");
            assert_eq!(
                stack.wait_result(&result),
                if handed_off { "true" } else { "false" },
                "Status: {value} (handed off: {handed_off}): send_file()"
            );
            round_heads.extend(
                head.lines()
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        let php_s_host = kind == Kind::CliServer && l.starts_with("host:");
                        !(l.starts_with("date:") || php_s_host)
                    })
                    .map(str::to_string),
            );
        }
        heads.push(round_heads);
    }
    assert_eq!(
        heads[0], heads[1],
        "the handoff (left) and the fallback (right) answer differently"
    );
    if kind == Kind::Fpm {
        stack.assert_clean_logs();
    }
}

/// A header the script set with bytes that are not UTF-8 (Latin-1 text, say) reaches the
/// client byte for byte, on the handoff and on the fallback alike.
pub fn raw_header_bytes_same_on_both_paths(kind: Kind) {
    let stack = Stack::start(Config::new(kind).without_manager());
    let mut manager = super::faults::RestartableManager::new(&stack.manager_socket, stack.path());
    let sha = stack.data_file("raw.bin", 100_000, 137);
    // "Grüße ÿ" in Latin-1, a lone continuation byte and a 0x7f.
    let value: &[u8] = b"Gr\xfc\xdfe \xff \x80\x7f end";
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    let mut want = b"\r\nX-Raw: ".to_vec();
    want.extend_from_slice(value);
    want.extend_from_slice(b"\r\n");
    for (round, handed_off) in [(0, true), (1, false)] {
        if handed_off {
            manager.start();
        } else {
            manager.kill();
        }
        let result = format!("raw-{round}.result");
        let raw = raw_request(
            &stack.endpoint,
            &format!(
                "GET /download.php?f=raw.bin&result={result}&raw_header={hex} \
                 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            ),
        );
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head")
            + 2;
        let head = &raw[..end];
        assert!(
            head.windows(want.len()).any(|w| w == want.as_slice()),
            "handed off: {handed_off}: the X-Raw bytes changed:\n{}",
            String::from_utf8_lossy(head).escape_debug()
        );
        assert_eq!(sha256_bytes(&raw[end + 2..]), sha, "body");
        assert_eq!(
            stack.wait_result(&result),
            if handed_off { "true" } else { "false" },
            "handed off: {handed_off}: send_file()"
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
    super::wait_until(
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
