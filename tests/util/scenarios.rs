//! Checks that run the same way behind nginx + php-fpm and behind `php -S`.
//!
//! Each takes a started [`Stack`] and panics with a precise message on the first difference;
//! the stack prints its logs when that happens.

use super::{raw_request, sha256_bytes, split_head, urlencode, Stack, MIB};

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
}

/// Test 4, manager side: an `echo` after a handed-off send_file() never reaches the client.
pub fn output_after_handoff_is_dropped(stack: &Stack) {
    for (seed, size) in [1, 100_000, 5 * MIB].into_iter().enumerate() {
        let name = format!("garbage-{size}.bin");
        let sha = stack.data_file(&name, size, seed as u64 + 30);
        let returned = download_exact(stack, &name, &sha, size, "&garbage=1");
        assert_eq!(
            returned, "true",
            "send_file() with the manager up, {size} bytes"
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
