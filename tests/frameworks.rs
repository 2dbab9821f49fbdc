//! The Composer package's framework integrations (php/src) under real nginx + php-fpm,
//! against Debian 12's packages loaded by their own autoloaders: Symfony HttpFoundation
//! 5.4 (`Handoff\Symfony\HandoffFileResponse`, php/tests/www/symfony.php) and Laravel
//! 8.83 (`response()->handoff()` from `Handoff\Laravel\HandoffServiceProvider`, in a
//! minimal booted application, php/tests/www/laravel.php). Each download is byte-exact and
//! handed off: the manager logs it complete, with the status and range it sent.

use crate::util::{sha256_bytes, Config, Kind, Stack, MIB};

fn skip_without(path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return false;
    }
    eprintln!("skipped: {path} is missing (scripts/setup.sh installs it)");
    true
}

/// Manager log lines of complete downloads of `data/<name>` with `status` and `bytes`.
fn handed_off(stack: &Stack, name: &str, status: u16, bytes: u64) -> usize {
    let file = format!("/data/{name}\"");
    let status = format!(" status={status} ");
    let bytes = format!(" bytes={bytes} ");
    stack
        .manager_log()
        .lines()
        .filter(|l| {
            l.contains(&file)
                && l.contains(&status)
                && l.contains(&bytes)
                && l.contains("outcome=complete")
        })
        .count()
}

fn wait_handed_off(stack: &Stack, name: &str, status: u16, bytes: u64) {
    stack.wait_manager(
        &format!("manager log: {name} status={status} bytes={bytes} complete"),
        |s| handed_off(s, name, status, bytes) >= 1,
    );
}

const SYMFONY: &str = "/usr/share/php/Symfony/Component/HttpFoundation/autoload.php";

#[test]
fn symfony_handoff_file_response() {
    if skip_without(SYMFONY) {
        return;
    }
    let stack = Stack::start(Config::new(Kind::Fpm));
    symfony_scenario(&stack);
    stack.assert_clean_logs();
}

/// The same under `php -S`, where the manager writes raw HTTP.
#[test]
fn symfony_handoff_file_response_cli_server() {
    if skip_without(SYMFONY) {
        return;
    }
    let stack = Stack::start(Config::new(Kind::CliServer));
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
    stack.wait_manager(
        "two more whole downloads of sf.bin (SplFileObject, SplFileInfo)",
        |s| handed_off(s, "sf.bin", 200, size as u64) >= 3,
    );

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
    let stack = Stack::start(Config::new(Kind::Fpm));
    let size = 3 * MIB;
    let sha = stack.data_file("lv.bin", size, 61);
    let r = stack.get(
        "lv-full",
        "/laravel.php?f=lv.bin&name=r%C3%A9sum%C3%A9.bin&result=lv-full",
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
    assert_eq!(stack.wait_result("lv-full"), "sent");
    wait_handed_off(&stack, "lv.bin", 200, size);

    let r = stack
        .curl("lv-range", "/laravel.php?f=lv.bin")
        .args(&["-H", "Range: bytes=1048576-"])
        .run();
    assert_eq!(r.status, 206, "{}", r.head_text);
    assert_eq!(r.body_len(), size - MIB);
    wait_handed_off(&stack, "lv.bin", 206, size - MIB);

    // ->deleteFileAfterSend() on the macro's response.
    let sha = stack.data_file("lv-temp.bin", MIB, 62);
    let r = stack.get(
        "lv-delete",
        "/laravel.php?f=lv-temp.bin&delete=1&result=lv-delete",
    );
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha);
    assert_eq!(stack.wait_result("lv-delete"), "sent");
    assert!(
        !stack.data().join("lv-temp.bin").exists(),
        "deleted after send"
    );
    wait_handed_off(&stack, "lv-temp.bin", 200, MIB);
    stack.assert_clean_logs();
}
