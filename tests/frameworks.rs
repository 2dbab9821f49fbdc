//! The Composer package's framework integrations (php/src) under real nginx + php-fpm,
//! against Debian's packages loaded by their own autoloaders: Symfony HttpFoundation and
//! HttpKernel (5.4 on Debian 12, 6.4 in the Debian 13 root, 7.4 in the sid root) and
//! Laravel (8.83, 10.48, 13; scripts/php-root.sh runs this module in the two roots).
//! - `Handoff\Symfony\HandoffFileResponse` (php/tests/www/symfony.php) and the
//!   `HandoffSubscriber` that turns an application's BinaryFileResponses into it, in the real
//!   HttpKernel (php/tests/www/symfony_kernel.php);
//! - Laravel's `response()->handoff()`, and the `handoff.downloads` switch under which
//!   `response()->download()`, `response()->file()` and `Storage::disk('local')->download()`
//!   hand off, in a minimal booted application (php/tests/www/laravel.php).
//!
//! Each download is byte-exact and handed off (the manager's access log has it complete, with
//! its status, size and tag), Range requests included; and without the extension the same
//! applications send the same bytes in-process.

use crate::util::{sha256_bytes, Config, Kind, Stack, MIB};

fn skip_without(path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return false;
    }
    eprintln!("skipped: {path} is missing (scripts/setup.sh installs it)");
    true
}

/// A stack for the framework tests: the manager keeps its JSON access log, which shows each
/// handed-off download's status, size and tag.
fn framework_stack(kind: Kind) -> Stack {
    Stack::start(Config::new(kind).with_access_log())
}

/// Complete downloads of `data/<name>` with `status` and `bytes` (and `tag`, if given) in
/// the manager's access log.
fn handed_off(stack: &Stack, name: &str, status: u16, bytes: u64, tag: Option<&str>) -> usize {
    let file = format!("/data/{name}");
    stack
        .access_log()
        .iter()
        .filter(|e| {
            e["file"].as_str().is_some_and(|f| f.ends_with(&file))
                && e["status"] == status
                && e["bytes_sent"] == bytes
                && e["outcome"] == "complete"
                && tag.is_none_or(|t| e["tag"] == t)
        })
        .count()
}

fn wait_handed_off(stack: &Stack, name: &str, status: u16, bytes: u64) {
    wait_handed_off_n(stack, name, status, bytes, None, 1);
}

fn wait_handed_off_n(
    stack: &Stack,
    name: &str,
    status: u16,
    bytes: u64,
    tag: Option<&str>,
    count: usize,
) {
    stack.wait_manager(
        &format!("access log: {count}x {name} status={status} bytes={bytes} tag={tag:?} complete"),
        |s| handed_off(s, name, status, bytes, tag) >= count,
    );
}

const HANDOFF_FILE_RESPONSE: &str = "Handoff\\Symfony\\HandoffFileResponse";

const SYMFONY: &str = "/usr/share/php/Symfony/Component/HttpFoundation/autoload.php";

#[test]
fn symfony_handoff_file_response() {
    if skip_without(SYMFONY) {
        return;
    }
    let stack = framework_stack(Kind::Fpm);
    symfony_scenario(&stack);
    stack.assert_clean_logs();
}

/// The same under `php -S`, where the manager writes raw HTTP.
#[test]
fn symfony_handoff_file_response_cli_server() {
    if skip_without(SYMFONY) {
        return;
    }
    let stack = framework_stack(Kind::CliServer);
    symfony_scenario(&stack);
}

/// Without the extension the class is BinaryFileResponse: php/tests/frameworks/
/// symfony_without_extension.php compares the two on ranges, HEAD, If-Range, a 404 and
/// deleteFileAfterSend(), in a php that does not load the extension.
#[test]
fn symfony_without_extension_is_binary_file_response() {
    if skip_without(SYMFONY) {
        return;
    }
    run_without_extension("symfony_without_extension.php");
}

/// Another library's global `send_file()` is not the extension: without the extension
/// HandoffFileResponse stays BinaryFileResponse (php/tests/frameworks/
/// symfony_foreign_send_file.php).
#[test]
fn symfony_foreign_send_file_is_not_the_extension() {
    if skip_without(SYMFONY) {
        return;
    }
    run_without_extension("symfony_foreign_send_file.php");
}

/// Runs `php/tests/frameworks/<script>` in a php that does not load the extension; it
/// must exit 0 and print PASS and no FAIL.
fn run_without_extension(script: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = crate::util::repo_root()
        .join("php/tests/frameworks")
        .join(script);
    let out = std::process::Command::new("php")
        .args(["-d", "display_errors=stderr"])
        .arg(&script)
        .env("HANDOFF_TEST_DIR", dir.path())
        .output()
        .expect("run php");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "php {}\nexit: {}\nstdout:\n{stdout}\nstderr:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        stdout.contains("PASS") && !stdout.contains("FAIL"),
        "{report}"
    );
}

/// deleteFileAfterSend() when send_file() throws after it opened and unlinked the file
/// (php/tests/www/symfony_replaced.php: the header callback that send_file() runs puts a
/// new file at the path and throws): the file now at the path is not the one sent, and
/// HandoffFileResponse must leave it.
#[test]
fn symfony_never_deletes_a_file_that_replaced_the_sent_one() {
    if skip_without(SYMFONY) {
        return;
    }
    let stack = Stack::start(Config::new(Kind::Fpm));
    stack.data_file("replaced.bin", 100_000, 52);
    let r = stack.get(
        "replaced",
        "/symfony_replaced.php?f=replaced.bin&result=replaced",
    );
    assert_eq!(
        r.body_len(),
        0,
        "nothing of the file was sent:\n{}",
        r.head_text
    );
    assert_eq!(
        stack.wait_result("replaced"),
        "threw exists=true content=true",
        "the replacement must still be at the path"
    );
}

fn symfony_scenario(stack: &Stack) {
    let size = MIB as usize;
    stack.data_file("sf.bin", size as u64, 51);
    let data = std::fs::read(stack.data().join("sf.bin")).expect("read sf.bin");

    // The whole file, named by setContentDisposition(); the response's own header kept.
    let r = stack.get(
        "sf-full",
        "/symfony.php?f=sf.bin&name=report%202024.bin&result=sf-full",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha256_bytes(&data), "full body");
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"report 2024.bin\""),
        "{}",
        r.head_text
    );
    assert_eq!(r.header("X-Framework"), Some("symfony"), "{}", r.head_text);
    assert!(
        r.header("Last-Modified").is_some(),
        "setAutoLastModified() is the default"
    );
    assert_eq!(stack.wait_result("sf-full"), "sent");
    wait_handed_off(stack, "sf.bin", 200, size as u64);

    // A Range request: prepare() left it to send_file(), which answers 206 once (not a
    // range of a range).
    let r = stack
        .curl("sf-range", "/symfony.php?f=sf.bin")
        .args(&["-H", "Range: bytes=1000-600999"])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 1000-600999/{size}").as_str()),
        "{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Length"),
        Some("600000"),
        "{}",
        r.head_text
    );
    assert_eq!(r.body(), &data[1000..601000], "the range's bytes");
    wait_handed_off(stack, "sf.bin", 206, 600_000);

    // Two ranges: multipart/byteranges (BinaryFileResponse itself only does the first).
    let r = stack
        .curl("sf-multi", "/symfony.php?f=sf.bin")
        .args(&["-H", "Range: bytes=0-99999,200000-299999"])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("multipart/byteranges")),
        "{}",
        r.head_text
    );

    // HEAD: the head of the whole file, no body.
    let raw = crate::util::raw_request(
        &stack.endpoint,
        "HEAD /symfony.php?f=sf.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = crate::util::split_head(&raw);
    assert!(head.contains(" 200 "), "HEAD:\n{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("content-length: {size}"))),
        "HEAD announces the file's length:\n{head}"
    );
    assert!(body.is_empty(), "HEAD carried {} body bytes", body.len());

    // setAutoEtag(): its ETag is the validator send_file() uses.
    let r = stack.get("sf-etag", "/symfony.php?f=sf.bin&etag=1");
    let etag = r
        .header("ETag")
        .unwrap_or_else(|| panic!("no ETag:\n{}", r.head_text))
        .to_string();
    let r = stack
        .curl("sf-304", "/symfony.php?f=sf.bin&etag=1")
        .args(&["-H", &format!("If-None-Match: {etag}")])
        .run();
    assert_eq!(r.status, 304, "{}", r.head_text);
    assert_eq!(r.body_len(), 0);
    let r = stack
        .curl("sf-if-range", "/symfony.php?f=sf.bin&etag=1")
        .args(&[
            "-H",
            "Range: bytes=-100000",
            "-H",
            &format!("If-Range: {etag}"),
        ])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(r.body(), &data[size - 100_000..]);

    // An SplFileObject or SplFileInfo in place of the path, as BinaryFileResponse takes
    // them: the file at its path, with ranges.
    for input in ["spl", "splinfo"] {
        let r = stack.get(
            &format!("sf-{input}"),
            &format!("/symfony.php?f=sf.bin&input={input}"),
        );
        assert_eq!(r.status, 200, "{input}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), sha256_bytes(&data), "{input}: full body");
        let r = stack
            .curl(
                &format!("sf-{input}-range"),
                &format!("/symfony.php?f=sf.bin&input={input}"),
            )
            .args(&["-H", "Range: bytes=5-104"])
            .run();
        assert_eq!(r.status, 206, "{input}:\n{}", r.head_text);
        assert_eq!(r.body(), &data[5..105], "{input}: the range's bytes");
    }
    wait_handed_off(stack, "sf.bin", 206, 100);
    // Two more whole downloads of sf.bin (SplFileObject, SplFileInfo).
    wait_handed_off_n(stack, "sf.bin", 200, size as u64, None, 3);

    // deleteFileAfterSend(): handed off, and the file is gone.
    let sha = stack.data_file("sf-temp.bin", 2 * MIB, 52);
    let r = stack.get(
        "sf-delete",
        "/symfony.php?f=sf-temp.bin&delete=1&result=sf-delete",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha);
    assert_eq!(stack.wait_result("sf-delete"), "sent");
    assert!(
        !stack.data().join("sf-temp.bin").exists(),
        "deleted after send"
    );
    wait_handed_off(stack, "sf-temp.bin", 200, 2 * MIB);
}

#[test]
fn laravel_response_handoff() {
    if skip_without("/usr/share/php/Illuminate/autoload.php") {
        return;
    }
    let stack = framework_stack(Kind::Fpm);
    let size = 3 * MIB;
    let sha = stack.data_file("lv.bin", size, 61);
    let r = stack.get(
        "lv-full",
        "/laravel.php?f=lv.bin&name=r%C3%A9sum%C3%A9.bin&tag=invoice:7&result=lv-full",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha, "full body");
    assert_eq!(r.header("X-Framework"), Some("laravel"), "{}", r.head_text);
    let disposition = r.header("Content-Disposition").unwrap_or_default();
    assert!(
        disposition.starts_with("attachment; filename=resume.bin")
            && disposition.contains("filename*=utf-8''r%C3%A9sum%C3%A9.bin"),
        "Laravel's download() disposition, ASCII fallback included:\n{}",
        r.head_text
    );
    assert_eq!(
        stack.wait_result("lv-full"),
        format!("sent {HANDOFF_FILE_RESPONSE}")
    );
    wait_handed_off_n(&stack, "lv.bin", 200, size, Some("invoice:7"), 1);

    let r = stack
        .curl("lv-range", "/laravel.php?f=lv.bin")
        .args(&["-H", "Range: bytes=1048576-"])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(r.body_len(), size - MIB);
    wait_handed_off(&stack, "lv.bin", 206, size - MIB);

    // ->deleteFileAfterSend() on the macro's response, and its 'delete' option.
    for (n, how) in ["1", "option"].into_iter().enumerate() {
        let name = format!("lv-temp-{how}.bin");
        let sha = stack.data_file(&name, MIB, 62 + n as u64);
        let r = stack.get(
            &format!("lv-delete-{how}"),
            &format!("/laravel.php?f={name}&delete={how}&result=lv-delete-{how}"),
        );
        assert_eq!(r.status, 200, "{}", r.head_text);
        assert_eq!(r.body_sha(), sha);
        assert_eq!(
            stack.wait_result(&format!("lv-delete-{how}")),
            format!("sent {HANDOFF_FILE_RESPONSE}")
        );
        assert!(
            !stack.data().join(&name).exists(),
            "{name}: deleted after send"
        );
        wait_handed_off(&stack, &name, 200, MIB);
    }
    stack.assert_clean_logs();
}

const SYMFONY_KERNEL: &str = "/usr/share/php/Symfony/Component/HttpKernel/autoload.php";
const BINARY_FILE_RESPONSE: &str = "Symfony\\Component\\HttpFoundation\\BinaryFileResponse";

/// `HandoffSubscriber` in the real HttpKernel: the controller's plain BinaryFileResponse is
/// handed off with its status, headers, cookie, content disposition and
/// deleteFileAfterSend(), Range answered once, and the subscriber's tag.
#[test]
fn symfony_subscriber_hands_off_binary_file_responses() {
    if skip_without(SYMFONY_KERNEL) {
        return;
    }
    let stack = framework_stack(Kind::Fpm);
    let size = 2 * MIB;
    let sha = stack.data_file("kernel.bin", size, 81);
    let data = std::fs::read(stack.data().join("kernel.bin")).expect("read kernel.bin");

    let r = stack.get(
        "k-full",
        "/symfony_kernel.php?f=kernel.bin&name=a%20b.bin&tag=sf:1&result=k-full",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha, "full body");
    assert_eq!(
        r.header("X-Framework"),
        Some("symfony-kernel"),
        "{}",
        r.head_text
    );
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"a b.bin\""),
        "{}",
        r.head_text
    );
    assert!(
        r.header("Set-Cookie")
            .is_some_and(|c| c.starts_with("session=abc")),
        "{}",
        r.head_text
    );
    assert_eq!(stack.wait_result("k-full"), HANDOFF_FILE_RESPONSE);
    wait_handed_off_n(&stack, "kernel.bin", 200, size, Some("sf:1"), 1);

    let r = stack
        .curl("k-range", "/symfony_kernel.php?f=kernel.bin")
        .args(&["-H", "Range: bytes=100-199999"])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(r.body(), &data[100..200_000], "the range's bytes");
    wait_handed_off(&stack, "kernel.bin", 206, 199_900);

    // The controller's own status.
    let r = stack.get("k-203", "/symfony_kernel.php?f=kernel.bin&status=203");
    assert_eq!(r.status, 203, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha);
    wait_handed_off(&stack, "kernel.bin", 203, size);

    let sha = stack.data_file("kernel-temp.bin", MIB, 82);
    let r = stack.get(
        "k-delete",
        "/symfony_kernel.php?f=kernel-temp.bin&delete=1&result=k-delete",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha);
    assert_eq!(stack.wait_result("k-delete"), HANDOFF_FILE_RESPONSE);
    assert!(
        !stack.data().join("kernel-temp.bin").exists(),
        "deleted after send"
    );
    wait_handed_off(&stack, "kernel-temp.bin", 200, MIB);
    stack.assert_clean_logs();
}

/// `handoff.downloads`: the application's own response()->download(), response()->file()
/// and Storage::disk('local')->download() hand off, with the configured tag; Range too.
#[test]
fn laravel_downloads_switch_hands_off_stock_downloads() {
    if skip_without("/usr/share/php/Illuminate/autoload.php") {
        return;
    }
    let stack = framework_stack(Kind::Fpm);
    let size = 2 * MIB;
    let sha = stack.data_file("sw.bin", size, 91);
    let data = std::fs::read(stack.data().join("sw.bin")).expect("read sw.bin");
    for (n, via) in ["download", "file", "storage"].into_iter().enumerate() {
        let tag = format!("lv:{via}");
        let name = format!("sw-{via}");
        let r = stack.get(
            &name,
            &format!("/laravel.php?f=sw.bin&via={via}&downloads=1&tag={tag}&result={name}"),
        );
        assert_eq!(r.status, 200, "{via}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "{via}: full body");
        assert_eq!(r.header("X-Framework"), Some("laravel"), "{}", r.head_text);
        if via != "file" {
            assert!(
                r.header("Content-Disposition")
                    .is_some_and(|d| d.starts_with("attachment; filename=sw.bin")),
                "{via}:\n{}",
                r.head_text
            );
        }
        assert!(
            stack.wait_result(&name).starts_with("sent "),
            "{via}: the route ran"
        );
        wait_handed_off_n(&stack, "sw.bin", 200, size, Some(&tag), 1);

        let r = stack
            .curl(
                &format!("{name}-range"),
                &format!("/laravel.php?f=sw.bin&via={via}&downloads=1"),
            )
            .args(&["-H", "Range: bytes=1000-"])
            .run();
        assert_eq!(r.status, 206, "{via}:\n{}", r.head_text);
        assert_eq!(r.body(), &data[1000..], "{via}: the range's bytes");
        wait_handed_off_n(&stack, "sw.bin", 206, size - 1000, None, n + 1);
    }
    stack.assert_clean_logs();
}

/// Without the extension (php-fpm does not load it) the same applications answer with the
/// same bytes, sent in-process by Symfony's and Laravel's own code; nothing reaches the
/// manager.
#[test]
fn frameworks_without_extension_send_in_process() {
    if skip_without(SYMFONY_KERNEL) || skip_without("/usr/share/php/Illuminate/autoload.php") {
        return;
    }
    let stack = Stack::start(Config::new(Kind::Fpm).without_extension().with_access_log());
    let size = MIB;
    let sha = stack.data_file("plain.bin", size, 95);
    let data = std::fs::read(stack.data().join("plain.bin")).expect("read plain.bin");
    let urls = [
        ("symfony", "/symfony.php?f=plain.bin".to_string()),
        (
            "kernel",
            "/symfony_kernel.php?f=plain.bin&result=kernel".to_string(),
        ),
        ("handoff", "/laravel.php?f=plain.bin".to_string()),
        (
            "download",
            "/laravel.php?f=plain.bin&via=download&downloads=1".to_string(),
        ),
        (
            "storage",
            "/laravel.php?f=plain.bin&via=storage&downloads=1".to_string(),
        ),
    ];
    for (what, url) in &urls {
        let r = stack.get(what, url);
        assert_eq!(r.status, 200, "{what}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "{what}: full body");
        let r = stack
            .curl(&format!("{what}-range"), url)
            .args(&["-H", "Range: bytes=10-109"])
            .run();
        if *what == "storage" {
            // Laravel's streamed disk response has no Range support of its own.
            assert_eq!(r.status, 200, "{what}:\n{}", r.head_text);
            assert_eq!(r.body_sha(), sha, "{what}: whole body");
        } else {
            assert_eq!(r.status, 206, "{what}:\n{}", r.head_text);
            assert_eq!(r.body(), &data[10..110], "{what}: the range's bytes");
        }
    }
    assert_eq!(
        stack.wait_result("kernel"),
        BINARY_FILE_RESPONSE,
        "the subscriber leaves responses alone without the extension"
    );
    assert!(
        stack.access_log().is_empty(),
        "nothing was handed off: {:?}",
        stack.access_log()
    );
    // No assert_clean_logs(): nginx spools these in-process responses to a temporary file,
    // as it does for any large PHP response (only the manager's head turns that off).
}
