//! What the script says reaches the client: its headers (raw bytes, `Status:`), its page
//! when the file is missing or headers were flushed, nothing after the handoff, and no
//! `handoff.socket` of its own.

use super::download_exact;
use crate::util::{raw_request, sha256_bytes, split_head, urlencode, Config, Kind, Stack, MIB};

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
    let mut manager =
        crate::util::faults::RestartableManager::new(&stack.manager_socket, stack.path());
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
    let mut manager =
        crate::util::faults::RestartableManager::new(&stack.manager_socket, stack.path());
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
