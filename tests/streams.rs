//! send_file() with an open stream instead of a path (php/tests/www/stream.php): a
//! `tmpfile()` or `fopen()` stream is handed off through its own descriptor, `php://temp`
//! and `php://memory` through an anonymous copy; the body is always the whole stream from
//! offset 0, and ranges, conditionals and HEAD work as for a path. Behind nginx + php-fpm
//! and under `php -S`, with the manager (handed off, as its log shows) and without it (the
//! in-process fallback).

use crate::util::{raw_request, sha256_bytes, split_head, Config, Kind, Stack, MIB};

/// Manager log lines of complete downloads of a stream (`file="stream ..."`) with exactly
/// `bytes` sent and `copied` telling whether the stream was copied into memory.
fn stream_downloads(stack: &Stack, bytes: u64, copied: bool) -> usize {
    let bytes = format!(" bytes={bytes} ");
    stack
        .manager_log()
        .lines()
        .filter(|l| {
            l.contains("file=\"stream ")
                && l.contains(&bytes)
                && l.contains("outcome=complete")
                && l.contains("(copied)\"") == copied
        })
        .count()
}

fn wait_stream_download(stack: &Stack, bytes: u64, copied: bool, count: usize) {
    stack.wait_manager(
        &format!("{count} complete stream download(s) of {bytes} bytes (copied: {copied})"),
        |s| stream_downloads(s, bytes, copied) >= count,
    );
}

/// GETs stream.php for `data/<name>` sent as a `kind` stream; checks a 200 with the whole
/// file byte-exact; returns the response and what send_file() returned.
fn get_whole(
    stack: &Stack,
    tag: &str,
    name: &str,
    kind: &str,
    extra: &str,
    data: &[u8],
) -> (crate::util::Response, String) {
    let result = format!("{tag}.result");
    let r = stack.get(
        tag,
        &format!("/stream.php?f={name}&kind={kind}&result={result}{extra}"),
    );
    assert_eq!(r.status, 200, "{tag}:\n{}", r.head_text);
    assert_eq!(
        r.header("Content-Length"),
        Some(data.len().to_string().as_str()),
        "{tag}:\n{}",
        r.head_text
    );
    assert_eq!(r.body_len(), data.len() as u64, "{tag}: body length");
    assert_eq!(r.body_sha(), sha256_bytes(data), "{tag}: body sha256");
    let returned = stack.wait_result(&result);
    (r, returned)
}

/// The whole check, on a stack with (`handed_off`) or without a manager.
fn streams_like_files(stack: &Stack, handed_off: bool) {
    let expect = if handed_off { "true" } else { "false" };
    let size = MIB as usize;
    stack.data_file("s.bin", size as u64, 131);
    let data = std::fs::read(stack.data().join("s.bin")).expect("read s.bin");

    // Generated content in tmpfile(), left at its end by the writes: the descriptor goes
    // to the manager; no name, so no Content-Disposition and application/octet-stream.
    let (r, returned) = get_whole(stack, "tmpfile", "s.bin", "tmpfile", "", &data);
    assert_eq!(returned, expect, "send_file(tmpfile())");
    assert!(
        r.header("Content-Disposition").is_none(),
        "no filename option, no Content-Disposition:\n{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{}",
        r.head_text
    );
    assert!(r.header("Last-Modified").is_some(), "{}", r.head_text);

    // fopen() of the data file, positioned in the middle: still the whole file.
    let (_, returned) = get_whole(stack, "fopen", "s.bin", "fopen", "&seek=1000", &data);
    assert_eq!(returned, expect, "send_file(fopen())");

    // Read from before the call, so PHP holds read-ahead in the stream's buffer: taking
    // the descriptor must not print PHP's "buffered data lost" warning (display_errors is
    // on and output_buffering off: it would become the start of the response).
    let (_, returned) = get_whole(stack, "fopen-read", "s.bin", "fopen", "&read=5", &data);
    assert_eq!(returned, expect, "send_file(fopen()) after fread()");
    // php://temp past its 2 MiB memory limit lives in a temp file: its descriptor is
    // handed off (the warning would come from that inner file).
    let big = 3 * MIB;
    stack.data_file("t.bin", big, 132);
    let big_data = std::fs::read(stack.data().join("t.bin")).expect("read t.bin");
    let (_, returned) = get_whole(stack, "temp-spilled", "t.bin", "temp", "&read=5", &big_data);
    assert_eq!(returned, expect, "send_file(php://temp in a temp file)");

    // php://temp under its 2 MiB memory limit and php://memory: copied; the filename
    // option names the download and its type.
    let named = "&filename=report.pdf&seek=77";
    let (r, returned) = get_whole(stack, "temp", "s.bin", "temp", named, &data);
    assert_eq!(returned, expect, "send_file(php://temp)");
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"report.pdf\""),
        "{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("application/pdf"),
        "{}",
        r.head_text
    );
    assert!(
        r.header("Last-Modified").is_none(),
        "a copy made for this request has no date of its own:\n{}",
        r.head_text
    );
    let etag = r
        .header("ETag")
        .unwrap_or_else(|| panic!("no ETag:\n{}", r.head_text))
        .to_string();
    let (r, returned) = get_whole(stack, "memory", "s.bin", "memory", "", &data);
    assert_eq!(returned, expect, "send_file(php://memory)");
    assert_eq!(
        r.header("ETag"),
        Some(etag.as_str()),
        "the same content copied again has the same ETag"
    );
    // A filtered stream has a descriptor, but its bytes are what the filters give.
    let (_, returned) = get_whole(stack, "filter", "s.bin", "filter", "", &data);
    assert_eq!(returned, expect, "send_file(filtered stream)");

    // Ranges and conditionals on a copied stream.
    let url = "/stream.php?f=s.bin&kind=temp";
    let ranged = stack
        .curl("temp-range", url)
        .args(&["-H", "Range: bytes=100-199"])
        .run();
    assert_eq!(ranged.status, 206, "{}", ranged.head_text);
    assert_eq!(
        ranged.header("Content-Range"),
        Some(format!("bytes 100-199/{size}").as_str()),
        "{}",
        ranged.head_text
    );
    assert_eq!(ranged.body(), &data[100..200], "the range's bytes");
    let resumed = stack
        .curl("temp-if-range", url)
        .args(&[
            "-H",
            "Range: bytes=-1000",
            "-H",
            &format!("If-Range: {etag}"),
        ])
        .run();
    assert_eq!(resumed.status, 206, "{}", resumed.head_text);
    assert_eq!(resumed.body(), &data[size - 1000..], "the suffix range");
    let cached = stack
        .curl("temp-304", url)
        .args(&["-H", &format!("If-None-Match: {etag}")])
        .run();
    assert_eq!(cached.status, 304, "{}", cached.head_text);
    assert_eq!(cached.body_len(), 0);
    let changed = stack
        .curl("temp-if-range-stale", url)
        .args(&["-H", "Range: bytes=0-9", "-H", "If-Range: \"c0-0\""])
        .run();
    assert_eq!(changed.status, 200, "{}", changed.head_text);
    assert_eq!(changed.body_sha(), sha256_bytes(&data));

    // HEAD: the head of the whole stream, no body.
    let raw = raw_request(
        &stack.endpoint,
        "HEAD /stream.php?f=s.bin&kind=tmpfile HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = split_head(&raw);
    assert!(head.contains(" 200 "), "HEAD:\n{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("content-length: {size}"))),
        "HEAD announces the stream's length:\n{head}"
    );
    assert!(body.is_empty(), "HEAD carried {} body bytes", body.len());

    // 'delete' applies to paths only: thrown before a byte, no path shown.
    let refused = stack.get(
        "delete-stream",
        "/stream.php?f=s.bin&kind=tmpfile&delete=1&result=delete-stream.result",
    );
    assert_eq!(refused.status, 500, "{}", refused.head_text);
    assert_eq!(refused.body(), b"refused\n");
    let message = stack.wait_result("delete-stream.result");
    assert!(
        message.contains("HandoffException") && message.contains("\"delete\""),
        "{message}"
    );

    if handed_off {
        // tmpfile, fopen twice, the spilled php://temp: through the stream's own descriptor.
        wait_stream_download(stack, size as u64, false, 3);
        wait_stream_download(stack, big, false, 1);
        // temp, memory and the filtered stream whole, the stale If-Range.
        wait_stream_download(stack, size as u64, true, 4);
        wait_stream_download(stack, 100, true, 1);
        wait_stream_download(stack, 1000, true, 1);
    }
}

/// Even the small ranges and the HEAD go through the manager, so its log shows them all.
fn all_handed_off(kind: Kind) -> Config {
    Config::new(kind)
        .ini("handoff.inline_below", "0")
        .ini("display_errors", "1")
        .ini("output_buffering", "0")
}

/// The same stack with nobody listening on `handoff.socket`: every download falls back.
fn no_manager(kind: Kind) -> Config {
    Config::new(kind)
        .without_manager()
        .ini("display_errors", "1")
        .ini("output_buffering", "0")
}

#[test]
fn fpm_streams_handed_off() {
    let stack = Stack::start(all_handed_off(Kind::Fpm));
    streams_like_files(&stack, true);
    stack.assert_clean_logs();
}

#[test]
fn fpm_streams_without_manager() {
    let stack = Stack::start(no_manager(Kind::Fpm));
    streams_like_files(&stack, false);
    stack.assert_clean_logs();
}

#[test]
fn cli_server_streams_handed_off() {
    let stack = Stack::start(all_handed_off(Kind::CliServer));
    streams_like_files(&stack, true);
}

/// An `SplFileObject` is its stream: a file's is handed off through its own descriptor
/// (whatever its position), an `SplTempFileObject` in memory is copied, one that lives in
/// a temp file goes by descriptor; objects without a stream of their own (a subclass that
/// skipped or swallowed the parent constructor, one whose stream PHP's shutdown already
/// closed, a bare SplFileInfo) throw before a byte.
fn spl_file_objects(stack: &Stack, handed_off: bool) {
    let expect = if handed_off { "true" } else { "false" };
    // A size no other request of this stack sends, so the log lines are ours.
    let size = MIB + 4099;
    stack.data_file("spl.bin", size, 133);
    let data = std::fs::read(stack.data().join("spl.bin")).expect("read spl.bin");

    let (r, returned) = get_whole(stack, "spl", "spl.bin", "spl", "&seek=1000&read=5", &data);
    assert_eq!(returned, expect, "send_file(new SplFileObject())");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{}",
        r.head_text
    );
    assert!(r.header("Content-Disposition").is_none(), "{}", r.head_text);
    assert!(r.header("Last-Modified").is_some(), "{}", r.head_text);

    let ranged = stack
        .curl("spl-range", "/stream.php?f=spl.bin&kind=spl&seek=9")
        .args(&["-H", "Range: bytes=100-199"])
        .run();
    assert_eq!(ranged.status, 206, "{}", ranged.head_text);
    assert_eq!(
        ranged.header("Content-Range"),
        Some(format!("bytes 100-199/{size}").as_str()),
        "{}",
        ranged.head_text
    );
    assert_eq!(ranged.body(), &data[100..200], "the range's bytes");

    let named = "&filename=report.pdf";
    let (r, returned) = get_whole(stack, "spltemp", "spl.bin", "spltemp", named, &data);
    assert_eq!(returned, expect, "send_file(new SplTempFileObject())");
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"report.pdf\""),
        "{}",
        r.head_text
    );
    assert!(
        r.header("Last-Modified").is_none() && r.header("ETag").is_some(),
        "a copy: content ETag, no date:\n{}",
        r.head_text
    );
    let (_, returned) = get_whole(stack, "spltemp0", "spl.bin", "spltemp0", "", &data);
    assert_eq!(returned, expect, "send_file(new SplTempFileObject(0))");

    for (name, query, says) in [
        ("spl-noctor", "kind=spl-noctor", "no open stream"),
        ("spl-failctor", "kind=spl-failctor", "no open stream"),
        ("spl-closed", "kind=spl-closed", "no open stream"),
        ("splinfo", "kind=splinfo", "an SplFileObject"),
        ("spl-delete", "kind=spl&delete=1", "\"delete\""),
    ] {
        let kind = name;
        let result = format!("{name}.result");
        let refused = stack.get(
            name,
            &format!("/stream.php?f=spl.bin&{query}&result={result}"),
        );
        assert_eq!(refused.status, 500, "{kind}:\n{}", refused.head_text);
        assert_eq!(
            refused.body(),
            b"refused\n",
            "{kind}: nothing sent before the throw"
        );
        let message = stack.wait_result(&result);
        assert!(
            message.starts_with("HandoffException: ") && message.contains(says),
            "{kind}: {message}"
        );
        assert!(
            !message.contains("/data/"),
            "{kind}: no path shown: {message}"
        );
    }

    if handed_off {
        // SplFileObject and SplTempFileObject(0): their own descriptor; the range too.
        wait_stream_download(stack, size, false, 2);
        wait_stream_download(stack, 100, false, 1);
        // SplTempFileObject() in memory: copied.
        wait_stream_download(stack, size, true, 1);
    }
}

#[test]
fn fpm_spl_file_objects_handed_off() {
    let stack = Stack::start(all_handed_off(Kind::Fpm));
    spl_file_objects(&stack, true);
    stack.assert_clean_logs();
}

#[test]
fn fpm_spl_file_objects_without_manager() {
    let stack = Stack::start(no_manager(Kind::Fpm));
    spl_file_objects(&stack, false);
    stack.assert_clean_logs();
}

#[test]
fn cli_server_spl_file_objects_handed_off() {
    let stack = Stack::start(all_handed_off(Kind::CliServer));
    spl_file_objects(&stack, true);
}
