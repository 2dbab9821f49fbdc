//! Apache 2.4 (prefork) with mod_php: the manager writes raw HTTP/1.1 on the client's own
//! TCP connection, taken from Apache's `conn_rec`. Every test also checks that no Apache
//! child died of a signal (a crash in the extension takes the child down). The checks every
//! SAPI runs are in the matrix (`matrix.rs`, `matrix::apache::*`); here is what only mod_php
//! has (the next connection on the same child, mod_ssl, pipelining).

use std::io::{Read, Write};

use crate::util::scenarios;
use crate::util::{
    raw_request, sha256_bytes, split_head, split_responses, Config, Kind, Stack, MIB,
};

fn apache() -> Config {
    Config::new(Kind::Apache)
}

/// The child that handed a connection off serves the next connection normally, whatever
/// Apache still did with the old one (its head went to /dev/null, its keep-alive read saw
/// EOF); an HTTP/1.0 request is handed off too.
#[test]
fn next_request_after_handoff_is_served() {
    let stack = Stack::start(apache().children(1));
    let sha = stack.data_file("next.bin", 300_000, 71);
    for i in 0..3 {
        let result = format!("next-{i}.result");
        let r = stack.get(
            &format!("next-{i}"),
            &format!("/download.php?f=next.bin&result={result}"),
        );
        assert_eq!(r.status, 200, "download #{i}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "download #{i}");
        assert_eq!(stack.wait_result(&result), "true", "download #{i}");
        let r = stack.get(&format!("hello-after-{i}"), "/hello.php");
        assert_eq!(r.status, 200, "hello after download #{i}:\n{}", r.head_text);
        assert_eq!(r.body(), b"hello from php\n", "hello after download #{i}");
    }
    stack.wait_outcome("complete", 300_000, 3);

    let raw = raw_request(
        &stack.endpoint,
        "GET /download.php?f=next.bin&result=http10.result HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    let (head, body) = split_head(&raw);
    assert!(head.contains(" 200 "), "HTTP/1.0 request:\n{head}");
    assert_eq!(
        sha256_bytes(body),
        sha,
        "body of the HTTP/1.0 download:\n{head}"
    );
    assert_eq!(
        stack.wait_result("http10.result"),
        "true",
        "HTTP/1.0 request"
    );
    stack.wait_outcome("complete", 300_000, 4);
    stack.assert_clean_logs();
}

/// Under mod_ssl the socket carries TLS: handing it off would put plain HTTP/1.1 into the
/// TLS stream. So an HTTPS request is streamed by PHP (send_file() returns false) and
/// arrives intact, while a plain HTTP/1.1 request to the same server, same manager, is
/// handed off.
#[test]
fn https_streams_in_process() {
    let stack = Stack::start(apache().with_tls());
    let size = 2 * MIB;
    let sha = stack.data_file("tls.bin", size, 111);
    let r = stack
        .curl_tls("https", "/download.php?f=tls.bin&result=https.result")
        .run();
    assert_eq!(r.status, 200, "HTTPS:\n{}", r.head_text);
    assert_eq!(r.body_len(), size, "HTTPS: body length");
    assert_eq!(r.body_sha(), sha, "HTTPS: body");
    assert_eq!(
        stack.wait_result("https.result"),
        "false",
        "HTTPS: send_file()"
    );
    assert_eq!(
        stack.outcome_count("complete", size),
        0,
        "the manager sent an HTTPS download"
    );
    let returned = scenarios::download_exact(&stack, "tls.bin", &sha, size, "&plain=1");
    assert_eq!(returned, "true", "plain HTTP/1.1 beside HTTPS");
    stack.wait_outcome("complete", size, 1);
    stack.assert_clean_logs();
}

/// HTTP pipelining: requests written in one go on one connection are answered in order and
/// byte-exact. Apache keeps a small response while the next request is already buffered,
/// and runs a buffered request after the current one, so a download with either next to
/// it stays with Apache (send_file() returns false); alone on its connection, or after an
/// earlier keep-alive response that has fully arrived, it is handed off.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let stack = Stack::start(apache().children(1));
    let size = 300_000;
    let sha = stack.data_file("pipe.bin", size, 121);
    let get = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{close}\r\n")
    };
    let download = |result: &str| format!("/download.php?f=pipe.bin&result={result}");
    let cases = [
        // The download behind a response that Apache still holds, and before another.
        (
            "behind",
            vec![
                get("/hello.php", false),
                get(&download("behind.result"), false),
                get("/hello.php", true),
            ],
            "false",
        ),
        // The download first, with a request queued behind it.
        (
            "ahead",
            vec![
                get(&download("ahead.result"), false),
                get("/hello.php", true),
            ],
            "false",
        ),
        // Alone on its connection: handed off.
        ("alone", vec![get(&download("alone.result"), true)], "true"),
    ];
    for (name, requests, returned) in cases {
        let raw = raw_request(&stack.endpoint, &requests.concat());
        let responses = split_responses(&raw).unwrap_or_else(|e| {
            panic!(
                "{name}: {e}\nreceived:\n{}",
                String::from_utf8_lossy(&raw[..raw.len().min(2000)])
            )
        });
        let heads: Vec<&str> = responses.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            responses.len(),
            requests.len(),
            "{name}: responses received:\n{heads:#?}"
        );
        for ((head, body), request) in responses.iter().zip(&requests) {
            assert!(
                head.starts_with("HTTP/1.1 200 "),
                "{name}: {request}\n{head}"
            );
            if request.contains("/hello.php") {
                assert_eq!(
                    body.as_slice(),
                    b"hello from php\n",
                    "{name}: out of order?\n{heads:#?}"
                );
            } else {
                assert_eq!(
                    sha256_bytes(body),
                    sha,
                    "{name}: download body ({} bytes)\n{heads:#?}",
                    body.len()
                );
            }
        }
        assert_eq!(
            stack.wait_result(&format!("{name}.result")),
            returned,
            "{name}: send_file()"
        );
    }
    // Keep-alive without pipelining: the download is sent only after the first response
    // has arrived, so Apache holds nothing and it is handed off.
    let mut conn = stack.endpoint.connect().expect("connect");
    conn.set_read_timeout(std::time::Duration::from_secs(30));
    conn.write_all(get("/hello.php", false).as_bytes())
        .expect("send the first request");
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    // Incomplete responses do not parse; a complete one does.
    while split_responses(&first).map_or(true, |r| r.is_empty()) {
        let n = conn.read(&mut buf).expect("read the first response");
        assert!(n > 0, "keep-alive: connection closed after {first:?}");
        first.extend_from_slice(&buf[..n]);
    }
    conn.write_all(get(&download("keepalive.result"), true).as_bytes())
        .expect("send the download request");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("read the download");
    let responses = split_responses(&[first, rest].concat()).expect("two responses");
    assert_eq!(responses.len(), 2, "keep-alive: two responses");
    assert_eq!(responses[0].1, b"hello from php\n", "keep-alive: first");
    assert_eq!(sha256_bytes(&responses[1].1), sha, "keep-alive: download");
    assert_eq!(
        stack.wait_result("keepalive.result"),
        "true",
        "keep-alive without pipelining: send_file()"
    );
    stack.wait_outcome("complete", size, 2);
    stack.assert_clean_logs();
}
