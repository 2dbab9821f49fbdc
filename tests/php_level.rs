//! PHP-level behaviour in the CLI SAPI, where send_file() cannot hand off and streams to
//! stdout: the scripts in `php/tests/cli` assert and print PASS/FAIL lines.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::{extension, repo_root, sha256_bytes, start_manager, write_random_file, MIB};

/// Runs `php/tests/cli/<script>` with the extension and `envs`.
fn run_php(script: &str, envs: &[(&str, &Path)]) -> (String, Output) {
    run_php_ini(script, envs, &[])
}

/// Like [`run_php`], with extra `-d` settings.
fn run_php_ini(script: &str, envs: &[(&str, &Path)], ini: &[String]) -> (String, Output) {
    let mut cmd = Command::new("php");
    cmd.arg("-d")
        .arg(format!("extension={}", extension().display()))
        .args(["-d", "display_errors=stderr"]);
    for setting in ini {
        cmd.arg("-d").arg(setting);
    }
    cmd.arg(repo_root().join("php/tests/cli").join(script));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let cmdline = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmdline}: {e}"));
    (cmdline, out)
}

/// The stderr of a script whose stdout is a file's bytes, and a report that shows the
/// command, its exit status, how many bytes it wrote and its stderr.
fn binary_stdout_report(cmdline: &str, out: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = format!(
        "{cmdline}\nexit: {}\nstdout: {} bytes\nstderr:\n{stderr}",
        out.status,
        out.stdout.len()
    );
    (stderr, report)
}

#[test]
fn errors_throw_handoff_exception() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cmdline, out) = run_php("errors.php", &[("HANDOFF_TEST_DIR", dir.path())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{cmdline}\nexit: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(stdout.contains("PASS"), "{report}");
    assert!(!stdout.contains("FAIL"), "{report}");
}

#[test]
fn cli_streams_file_to_stdout_and_returns_false() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("payload.bin");
    let sha = write_random_file(&file, 3 * MIB + 17, 42);
    // The path, and the same bytes as a php://memory stream (copied into a memfd).
    for script in ["stream.php", "send_stream.php"] {
        let (cmdline, out) = run_php(script, &[("HANDOFF_TEST_FILE", &file)]);
        let (stderr, report) = binary_stdout_report(&cmdline, &out);
        assert!(out.status.success(), "{report}");
        assert_eq!(out.stdout.len() as u64, 3 * MIB + 17, "{report}");
        assert_eq!(sha256_bytes(&out.stdout), sha, "{report}");
        assert!(stderr.contains("returned=false"), "{report}");
    }
}

#[test]
fn handoff_available_tells_whether_the_manager_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("manager.sock");
    let setting = format!("handoff.socket={}", socket.display());
    let available = |expected: &str| {
        let (cmdline, out) = run_php_ini("available.php", &[], std::slice::from_ref(&setting));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == format!("available={expected}"),
            "{cmdline}\nexit: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    available("false");
    {
        // A manager that does not allow this peer refuses its hello: no handoff possible.
        let other = (nix::unistd::getuid().as_raw() + 4242).to_string();
        let proc = crate::util::manager::spawn_manager_with(
            &socket,
            &dir.path().join("manager-strict.log"),
            &["--allow-uid", &other],
        );
        let _strict = handoff_stack::start_manager(proc, &socket);
        available("false");
    }
    let _manager = start_manager(&socket, &dir.path().join("manager.log"));
    available("true");
}

/// A bailout while send_file() streams (stdout closed, so PHP aborts the "connection" on
/// its first write) is resumed: send_file() never returns and shutdown functions run.
#[test]
fn bailout_while_streaming_is_resumed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("payload.bin");
    write_random_file(&file, 2 * MIB, 45);
    let (cmdline, out) = run_php("bailout.php", &[("HANDOFF_TEST_FILE", &file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("{cmdline}\nexit: {}\nstderr:\n{stderr}", out.status);
    // The CLI's exit status after an aborted connection.
    assert_eq!(out.status.code(), Some(255), "{report}");
    assert!(stderr.contains("PASS bailout resumed"), "{report}");
    assert!(!stderr.contains("FAIL"), "{report}");
}

/// `handoff.socket` is set by `-d` (as by php.ini or php_admin_value) and cannot be changed
/// by `ini_set()` from a script.
#[test]
fn handoff_socket_is_not_settable_from_scripts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("manager.sock");
    let (cmdline, out) = run_php_ini(
        "ini_socket.php",
        &[("HANDOFF_EXPECT_SOCKET", &socket)],
        &[format!("handoff.socket={}", socket.display())],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{cmdline}\nexit: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        stdout.contains("PASS: -d handoff.socket applies"),
        "{report}"
    );
    assert!(!stdout.contains("FAIL"), "{report}");
}

/// `handoff.max_copy_bytes` (1 MiB, set by the script with `ini_set()`): a stream to be
/// copied into memory that is larger throws before a byte is written and leaves no memory
/// copy open; one of exactly that size is sent.
#[test]
fn stream_copy_is_limited_by_max_copy_bytes() {
    let (cmdline, out) = run_php("copy_limit.php", &[]);
    let (stderr, report) = binary_stdout_report(&cmdline, &out);
    assert!(out.status.success(), "{report}");
    assert_eq!(stderr.matches("PASS").count(), 2, "{report}");
    assert!(!stderr.contains("FAIL"), "{report}");
    assert!(stderr.contains("sent the limit"), "{report}");
    // Only the last stream: the limit's 1 MiB of 'm' (output is off after it).
    assert!(out.stdout == vec![b'm'; 1 << 20], "{report}");
}

/// `handoff.global_functions = Off` leaves the global names `send_file()` and
/// `handoff_available()` to a script that declares its own (Moodle does), which then sends
/// through `Handoff\send_file()`; with the default the same script cannot even be compiled.
#[test]
fn global_functions_off_frees_the_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("payload.bin");
    let sha = write_random_file(&file, MIB + 5, 46);
    let envs = [("HANDOFF_TEST_FILE", file.as_path())];
    for off in ["Off", "0"] {
        let (cmdline, out) = run_php_ini(
            "own_send_file.php",
            &envs,
            &[format!("handoff.global_functions={off}")],
        );
        let (stderr, report) = binary_stdout_report(&cmdline, &out);
        assert!(out.status.success(), "{report}");
        assert_eq!(sha256_bytes(&out.stdout), sha, "{report}");
        assert_eq!(stderr.matches("PASS").count(), 6, "{report}");
        assert!(!stderr.contains("FAIL"), "{report}");
    }

    let (cmdline, out) = run_php("own_send_file.php", &envs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Cannot redeclare"),
        "with the default the global names are the extension's:\n{cmdline}\nexit: {}\nstderr:\n{stderr}",
        out.status
    );
}
