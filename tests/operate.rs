//! Operating the manager: what `handoff-manager status` prints, how it refuses a
//! completion endpoint it cannot parse, and its metrics while bytes flow, scraped by a
//! real Prometheus.

use std::process::Command;
use std::time::Duration;

use crate::records::{http_get, stack_with};
use crate::util::{free_local_addr, manager_binary, wait_until, MIB};

/// A file name with a newline and a terminal escape sequence cannot forge a status line
/// or colour the operator's terminal: `status` escapes it as the log does.
#[test]
fn status_escapes_control_characters_in_file_names() {
    let metrics = free_local_addr().to_string();
    let (mut stack, manager) = stack_with(|_| vec!["--metrics".into(), metrics.clone()]);
    let name = "evil\n200 [####################] 100.0% \u{1b}[31mforged.bin";
    stack.data_file(name, MIB, 24);
    // 256 KiB/s: about four seconds, long enough to be seen running.
    let (proc, _, _) = stack
        .curl(
            "evil",
            "/download.php?f=evil%0A200%20%5B%23%23%23%23%23%23%23%23%23%23%23%23%23%23%23%23\
             %23%23%23%23%5D%20100.0%25%20%1B%5B31mforged.bin&rate=262144",
        )
        .spawn(stack.path().join("curl-evil.log"));
    stack.adopt(proc);
    wait_until(
        "the download in /status",
        Duration::from_secs(10),
        || http_get(&metrics, "/status").contains("forged.bin"),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.report()));
    let out = Command::new(manager_binary())
        .args(["status", "--metrics", &metrics])
        .output()
        .expect("run handoff-manager status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}'),
        "raw escape sequence in handoff-manager status:\n{text:?}"
    );
    assert_eq!(
        text.lines().count(),
        2,
        "one summary line and one line for the download:\n{text}"
    );
    assert!(
        text.contains("evil\\n200 [####################] 100.0% \\u{1b}[31mforged.bin\n"),
        "the name, escaped:\n{text}"
    );
}

/// A URL that does not parse is refused at start-up with a message that names it, never
/// read as something else (`http://[::1]8080/x` was once taken for port 80).
#[test]
fn on_complete_url_that_does_not_parse_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("manager.sock");
    for bad in ["http://[::1]8080/x", "http://127.0.0.1:8o/x"] {
        let mut child = Command::new(manager_binary())
            .args([
                "--socket",
                &socket.display().to_string(),
                "--on-complete",
                bad,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start handoff-manager");
        let exited = wait_until(
            &format!("handoff-manager --on-complete {bad} exits"),
            Duration::from_secs(10),
            || matches!(child.try_wait(), Ok(Some(_))),
            || Ok(()),
        );
        if exited.is_err() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("collect handoff-manager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited.is_ok() && !out.status.success(),
            "{bad} was accepted: {err}"
        );
        assert!(err.contains(bad) && err.contains("is not a URL"), "{err}");
        assert!(!socket.exists(), "no socket is made for a bad command line");
    }
}
