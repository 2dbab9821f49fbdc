//! Ranges and conditional requests, the same through the manager and the fallback.

use crate::util::{sha256_bytes, Stack};

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
