//! nginx in front of php-fpm with the extension loaded: what only this stack has (php-fpm over
//! TCP, nginx's FastCGI keep-alive pool and client keep-alive, `handoff.fallback=off`,
//! `handoff.inline_below`, many clients at once). The checks every SAPI runs are in the
//! matrix (`matrix.rs`, `matrix::fpm::*`).

use std::time::Duration;

use crate::util::scenarios::{self, download_exact};
use crate::util::{
    heavy_lock, raw_request, sha256_bytes, split_head, split_responses, Config, Kind, Stack, MIB,
};

/// php-fpm on 127.0.0.1 instead of a Unix socket (`fastcgi_pass 127.0.0.1:9000`, common in
/// containers): the worker finds and hands off a TCP FastCGI connection the same way.
#[test]
fn byte_exact_downloads_with_fpm_over_tcp() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::Fpm).fpm_over_tcp());
    scenarios::byte_exact_through_manager(&stack);
    stack.assert_clean_logs();
}

/// nginx with `fastcgi_keep_conn on` and an upstream keepalive pool, a common tuning: the
/// manager ends each handed-off request and closes the connection, nginx drops it from its
/// pool instead of reusing it, and handed-off downloads, inline ones (under the default
/// `handoff.inline_below`) and plain pages interleave on the same two workers without an
/// error.
#[test]
fn handoffs_with_fastcgi_keep_conn() {
    let _heavy = heavy_lock();
    let stack = Stack::start(
        Config::new(Kind::Fpm)
            .fpm_keepalive()
            .ini("handoff.inline_below", "65536"),
    );
    let big_size = 300 * 1024;
    let big = stack.data_file("keep-big.bin", big_size, 41);
    let small = stack.data_file("keep-small.bin", 1000, 42);
    for i in 0..60 {
        let tag = format!("&i={i}");
        let handed = download_exact(&stack, "keep-big.bin", &big, big_size, &tag);
        assert_eq!(handed, "true", "#{i}: the large file is handed off");
        let inline = download_exact(&stack, "keep-small.bin", &small, 1000, &tag);
        assert_eq!(inline, "false", "#{i}: the small file is streamed inline");
        let page = stack.get(&format!("hello{i}"), "/hello.php");
        assert_eq!(page.status, 200, "#{i}:\n{}", page.head_text);
        assert_eq!(page.body(), b"hello from php\n", "#{i}: the plain page");
    }
    stack.wait_outcome("complete", big_size, 60);
    stack.assert_clean_logs();
}

/// With `fastcgi_keep_conn on`, nginx must never put a handed-off connection into its pool:
/// the manager closes it after the response, and a request that nginx sends on it in the
/// meantime reads an end-of-file, which nginx retries for a GET but turns into a 502 for a
/// POST. A rate-limited download ends with a short rate wait between the last record and
/// the manager's half-close (the end records overshoot the bucket), a window in which a
/// POST sent the moment the download is complete found the pooled connection.
#[test]
fn a_post_right_after_a_handoff_never_meets_its_closed_connection() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::Fpm).fpm_keepalive());
    let size = 16 * 1024 + 300;
    let data = stack.data_file("keep-rated.bin", size, 43);
    let endpoint = stack.endpoint.clone();
    for i in 0..8 {
        let get = format!(
            "GET /download.php?f=keep-rated.bin&rate=1024&i={i} HTTP/1.1\r\n\
             Host: localhost\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_request(&endpoint, &get);
        let (head, body) = split_head(&raw);
        assert!(head.starts_with("HTTP/1.1 200"), "#{i}: {head}");
        assert_eq!(sha256_bytes(body), data, "#{i}: the rate-limited download");
        let post = "POST /hello.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\nx=1";
        let raw = raw_request(&endpoint, post);
        let responses = split_responses(&raw).unwrap_or_else(|e| panic!("#{i}: {e}"));
        let [(head, body)] = &responses[..] else {
            panic!("#{i}: {} responses to the POST", responses.len());
        };
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "#{i}: the POST after it:\n{head}"
        );
        assert_eq!(body, b"hello from php\n", "#{i}: the POST's page");
    }
    stack.wait_outcome("complete", size, 8);
    stack.assert_clean_logs();
}

/// Fifty simultaneous downloads through four workers all arrive intact while another client
/// walks away in the middle of a large file; the manager logs that one as aborted.
#[test]
fn concurrent_downloads_and_an_aborting_client() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::Fpm).children(4));
    let size = 4 * MIB;
    let shas: Vec<String> = (0..5)
        .map(|i| stack.data_file(&format!("c{i}.bin"), size, 100 + i))
        .collect();
    let big_size = 64 * MIB;
    stack.data_file("abort.bin", big_size, 99);

    let mut clients = Vec::new();
    for n in 0..50 {
        let file = n % 5;
        let (proc, head, body) = stack
            .curl(&format!("c{n}"), &format!("/download.php?f=c{file}.bin"))
            .spawn(stack.client_dir().join(format!("c{n}.curl.log")));
        clients.push((proc, head, body, file));
    }

    scenarios::read_part_then_close(&stack, "/download.php?f=abort.bin", MIB as usize);

    for (n, (proc, head, body, file)) in clients.iter_mut().enumerate() {
        let status = proc
            .wait_exit(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("download #{n} did not finish within 120 s"));
        assert!(status.success(), "curl #{n}: {status}\n{}", proc.log_text());
        let r = crate::util::response_from(head, body);
        assert_eq!(r.status, 200, "download #{n}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), shas[*file], "download #{n} (c{file}.bin)");
    }
    stack.wait_outcome("complete", size, 50);
    stack.wait_manager("a manager log line outcome=aborted for abort.bin", |s| {
        s.outcome_bytes("aborted").iter().any(|&b| b < big_size)
    });
    assert_eq!(
        stack.outcome_count("complete", big_size),
        0,
        "the aborted download was logged as complete"
    );

    // The stack still serves after all that.
    let after = stack.get("after", "/hello.php");
    assert_eq!(after.body(), b"hello from php\n", "{}", after.head_text);
    stack.assert_clean_logs();
}

/// `handoff.fallback=off`: without a manager send_file() throws instead of streaming, and the
/// script's own error page is all the client gets.
#[test]
fn fallback_off_throws_without_manager() {
    // Written the way php.ini and docs/configuration.md write it: unquoted, so PHP's ini parser turns
    // it into "" (the boolean false), which the extension has to read as off.
    let stack = Stack::start(
        Config::new(Kind::Fpm)
            .without_manager()
            .ini("handoff.fallback", "off"),
    );
    stack.data_file("strict.bin", 100_000, 5);
    let r = stack.get("strict", "/strict.php?f=strict.bin");
    assert_eq!(r.status, 503, "{}", r.head_text);
    assert_eq!(r.body(), b"<h1>try again later</h1>\n");
    stack.assert_clean_logs();
}

/// `handoff.inline_below`: a file smaller than the threshold is served by the worker itself
/// (send_file() returns false, the manager sees nothing); a larger one is still handed off.
#[test]
fn small_files_below_inline_threshold_stay_in_the_worker() {
    let stack = Stack::start(Config::new(Kind::Fpm).ini("handoff.inline_below", "65536"));
    let small = stack.data_file("small.bin", 10_000, 71);
    let large = stack.data_file("large.bin", MIB, 72);

    let returned = scenarios::download_exact(&stack, "small.bin", &small, 10_000, "");
    assert_eq!(returned, "false", "a 10 kB file with inline_below=65536");
    let returned = scenarios::download_exact(&stack, "large.bin", &large, MIB, "");
    assert_eq!(returned, "true", "a 1 MiB file with inline_below=65536");
    stack.wait_outcome("complete", MIB, 1);
    assert_eq!(
        stack.outcome_count("complete", 10_000),
        0,
        "the small file went through the manager"
    );
    stack.assert_clean_logs();
}

/// The in-process fallback also keeps nginx from spooling a slow download to disk (nginx
/// logs "buffered to a temporary file" when it does, which assert_clean_logs rejects).
#[test]
fn fallback_slow_download_is_not_spooled() {
    let _heavy = heavy_lock();
    let stack = Stack::start(Config::new(Kind::Fpm).without_manager());
    let size = 40 * MIB;
    let sha = stack.data_file("slow.bin", size, 12);
    let r = stack
        .curl("slow", "/download.php?f=slow.bin")
        .args(&["--limit-rate", "20M"])
        .run();
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha, "the slow download without a manager");
    stack.assert_clean_logs();
}

/// After a handed-off download nginx keeps the client's connection: a second download on the
/// same connection arrives intact (nginx only does that if the manager ended the FastCGI
/// request properly).
#[test]
fn client_connection_is_reused_after_handoff() {
    let stack = Stack::start(Config::new(Kind::Fpm));
    let first = stack.data_file("first.bin", 3 * MIB, 21);
    let second = stack.data_file("second.bin", MIB + 3, 22);
    let dir = stack.client_dir();
    let crate::util::Endpoint::Unix(sock) = &stack.endpoint else {
        unreachable!("nginx listens on a Unix socket")
    };
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(sock)
        .args(["-w", "%{num_connects}\\n", "-o"])
        .arg(dir.join("first.body"))
        .arg("http://localhost/download.php?f=first.bin")
        .arg("-o")
        .arg(dir.join("second.body"))
        .arg("http://localhost/download.php?f=second.bin")
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["1", "0"],
        "the second download must reuse the first one's connection"
    );
    assert_eq!(crate::util::sha256_file(&dir.join("first.body")), first);
    assert_eq!(crate::util::sha256_file(&dir.join("second.body")), second);
    stack.wait_outcome("complete", 3 * MIB, 1);
    stack.wait_outcome("complete", MIB + 3, 1);
    stack.assert_clean_logs();
}
