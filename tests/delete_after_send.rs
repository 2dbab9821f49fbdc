//! `send_file($path, ['delete' => true])` (php/tests/www/delete.php) behind nginx +
//! php-fpm: the path is unlinked as soon as it is opened, and the open descriptor is the
//! only thing keeping the data. On every way a download can end (handed off and complete,
//! streamed in-process, the client walking away, the manager killed mid-stream, the
//! php-fpm worker killed mid-stream) the file is gone at the end and no process holds a
//! descriptor of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::faults::{only_fpm_worker, RestartableManager};
use crate::util::scenarios::read_part_then_close;
use crate::util::{wait_until, Config, Kind, Stack, MIB};

/// Every `/proc/PID/fd/N` that still refers to `path` (deleted or not), as "PID/N".
fn holders(path: &Path) -> Vec<String> {
    let want = path.display().to_string();
    let deleted = format!("{want} (deleted)");
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let target = target.display().to_string();
                if target == want || target == deleted {
                    found.push(format!("{pid}/{}", fd.file_name().to_string_lossy()));
                }
            }
        }
    }
    found
}

/// The file is gone and, within 20 s (the manager closes after its log line, a killed
/// process's descriptors go with it), no process holds it open.
fn assert_gone_and_closed(path: &Path, what: &str) {
    assert!(!path.exists(), "{what}: {} still exists", path.display());
    let mut last = Vec::new();
    wait_until(
        &format!("{what}: no descriptor of the deleted file left"),
        Duration::from_secs(20),
        || {
            last = holders(path);
            last.is_empty()
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}: still open in {last:?}"));
}

fn body_len(path: &PathBuf) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A complete download: byte-exact, the path gone already when send_file() returned.
fn complete(stack: &Stack, name: &str, size: u64, expect: &str) {
    let sha = stack.data_file(name, size, 7);
    let path = stack.data().join(name);
    let result = format!("{name}.result");
    let r = stack.get(name, &format!("/delete.php?f={name}&result={result}"));
    assert_eq!(r.status, 200, "{}", r.head_text);
    assert_eq!(r.body_sha(), sha, "{name}: body");
    assert_eq!(
        stack.wait_result(&result),
        format!("{expect} exists=false"),
        "{name}: send_file()'s return value, and the path after it returned"
    );
    assert_gone_and_closed(&path, name);
}

#[test]
fn deleted_after_handoff() {
    let stack = Stack::start(Config::new(Kind::Fpm));
    complete(&stack, "handed.bin", 4 * MIB, "true");
    stack.wait_outcome("complete", 4 * MIB, 1);
    stack.assert_clean_logs();
}

#[test]
fn deleted_after_fallback() {
    let stack = Stack::start(Config::new(Kind::Fpm).without_manager());
    complete(&stack, "streamed.bin", 4 * MIB, "false");
    stack.assert_clean_logs();
}

/// `handoff.fallback = off` and no manager: send_file() throws before any byte, and the
/// file is already gone (it was unlinked right after the open; docs/usage.md, "Temp files that
/// delete themselves", says why this is kept). Pins the documented behaviour: nothing
/// sent, nothing left, no descriptor held.
#[test]
fn deleted_when_fallback_off_throws() {
    let stack = Stack::start(
        Config::new(Kind::Fpm)
            .without_manager()
            .ini("handoff.fallback", "off"),
    );
    let name = "refused.bin";
    stack.data_file(name, 4 * MIB, 9);
    let path = stack.data().join(name);
    let result = format!("{name}.result");
    let r = stack.get(name, &format!("/delete.php?f={name}&result={result}"));
    assert_eq!(r.status, 503, "{}", r.head_text);
    assert_eq!(r.body(), b"try again later\n", "only the script's own page");
    assert_eq!(stack.wait_result(&result), "HandoffException exists=false");
    assert_gone_and_closed(&path, "fallback off");
    stack.assert_clean_logs();
}

/// The client reads 1 MiB of 64 MiB and closes: with the manager (logged as aborted) and
/// without it (the worker's write fails).
#[test]
fn deleted_when_client_aborts() {
    for manager in [true, false] {
        let config = Config::new(Kind::Fpm);
        let stack = Stack::start(if manager {
            config
        } else {
            config.without_manager()
        });
        let size = 64 * MIB;
        stack.data_file("abort.bin", size, 8);
        let path = stack.data().join("abort.bin");
        read_part_then_close(&stack, "/delete.php?f=abort.bin&rate=4000000", MIB as usize);
        if manager {
            stack.wait_manager("a manager log line outcome=aborted", |s| {
                s.outcome_bytes("aborted").iter().any(|&b| b < size)
            });
        }
        assert_gone_and_closed(&path, &format!("client abort (manager: {manager})"));
        stack.assert_clean_logs();
    }
}

/// A slow download (`rate`) that has started: the file is already unlinked, and the
/// client holds at least 256 KiB. Returns the curl process and its body path.
fn slow_download(stack: &Stack, name: &str) -> (crate::util::Proc, PathBuf) {
    let (mut curl, _head, body) = stack
        .curl(name, &format!("/delete.php?f={name}&rate=2000000"))
        .spawn(stack.client_dir().join(format!("{name}.curl.log")));
    wait_until(
        &format!("{name}: 256 KiB at the client"),
        Duration::from_secs(30),
        || body_len(&body) >= 256 * 1024,
        || curl.check_alive(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", curl.log_text()));
    assert!(
        !stack.data().join(name).exists(),
        "{name}: unlinked before the download ended"
    );
    (curl, body)
}

#[test]
fn deleted_when_manager_killed_mid_stream() {
    let stack = Stack::start(
        Config::new(Kind::Fpm)
            .without_manager()
            .ini("handoff.timeout_ms", "10000"),
    );
    let mut manager = RestartableManager::new(&stack.manager_socket, stack.path());
    manager.start();
    let size = 32 * MIB;
    stack.data_file("mkill.bin", size, 9);
    let (mut curl, body) = slow_download(&stack, "mkill.bin");
    manager.kill();
    curl.wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("curl still running 30 s after the manager's kill"));
    assert!(body_len(&body) < size, "the download was cut");
    assert_gone_and_closed(&stack.data().join("mkill.bin"), "manager killed");
    stack.assert_clean_logs();
}

/// The only php-fpm worker is killed: while it streams the file itself (no manager), and
/// after it handed the file off (the manager finishes the download, byte-exact).
#[test]
fn deleted_when_worker_killed() {
    for manager in [false, true] {
        let config = Config::new(Kind::Fpm).children(1);
        let stack = Stack::start(if manager {
            config
        } else {
            config.without_manager()
        });
        let size = 8 * MIB;
        let sha = stack.data_file("wkill.bin", size, 10);
        let worker = only_fpm_worker(stack.path());
        let (mut curl, body) = slow_download(&stack, "wkill.bin");
        kill(Pid::from_raw(worker), Signal::SIGKILL).expect("kill the php-fpm worker");
        let status = curl
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("curl still running 60 s after the worker's kill"));
        if manager {
            assert!(status.success(), "{}", curl.log_text());
            assert_eq!(
                crate::util::sha256_file(&body),
                sha,
                "the manager finished the download of the killed worker"
            );
        } else {
            assert!(body_len(&body) < size, "the in-process download was cut");
        }
        assert_gone_and_closed(
            &stack.data().join("wkill.bin"),
            &format!("worker killed (manager: {manager})"),
        );
    }
}
