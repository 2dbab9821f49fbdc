//! The manager under systemd: socket activation with a listening socket really passed as
//! descriptor 3 (by `systemd-socket-activate`, systemd's own tool for this), `Type=notify`
//! readiness, and the shipped units checked by `systemd-analyze` (verify, and the security
//! rating of the hardening), which works on unit files without a running systemd.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};

use nix::sys::signal::Signal;

use crate::util::{
    find_program, manager_binary, repo_root, scenarios, Config, Kind, Proc, Stack, START_DEADLINE,
};

/// `systemd-socket-activate` listening on `socket` (SOCK_SEQPACKET if `seqpacket`), which
/// execs the manager with the socket as descriptor 3 on the first connection.
fn socket_activated_manager(
    socket: &Path,
    seqpacket: bool,
    notify: Option<&Path>,
    log: &Path,
) -> Proc {
    let mut cmd = Command::new(find_program(&["systemd-socket-activate"]));
    if seqpacket {
        cmd.arg("--seqpacket");
    }
    cmd.arg("-l").arg(socket).args(["-E", "RUST_LOG=debug"]);
    if let Some(notify) = notify {
        cmd.arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.display()));
    }
    cmd.arg(manager_binary()).arg("--socket").arg(socket);
    Proc::spawn("handoff-manager", cmd, log.to_path_buf(), Signal::SIGKILL)
}

/// Waits until `systemd-socket-activate` has created the socket file.
fn wait_for_socket_file(proc: &mut Proc, socket: &Path) {
    if let Err(e) = crate::util::wait_until(
        "systemd-socket-activate",
        START_DEADLINE,
        || socket.exists(),
        || proc.check_alive(),
    ) {
        panic!("{e}\n{}\n{}", proc.cmdline, proc.log_text());
    }
}

#[test]
fn a_socket_passed_by_systemd_carries_handoffs_and_readiness_is_told() {
    let mut stack = Stack::start(Config::new(Kind::Fpm).without_manager());
    let notify_path = stack.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(START_DEADLINE))
        .expect("notify timeout");
    let log = stack.path().join("manager.log");
    let mut proc = socket_activated_manager(&stack.manager_socket, true, Some(&notify_path), &log);
    wait_for_socket_file(&mut proc, &stack.manager_socket);
    let index = stack.adopt(proc);

    // The first download's handoff is the connection that makes systemd-socket-activate
    // exec the manager: it waits in the passed socket's backlog meanwhile.
    scenarios::byte_exact_through_manager(&stack);

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no readiness notification: {e}\n{}",
            stack.adopted(index).log_text()
        )
    });
    assert_eq!(&buf[..n], b"READY=1", "the first sd_notify message");
    let manager_log = stack.manager_log();
    assert!(
        manager_log.contains("using the socket systemd passed"),
        "the manager did not use descriptor 3:\n{manager_log}"
    );
}

#[test]
fn a_passed_socket_that_is_not_seqpacket_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("manager.sock");
    let log = dir.path().join("manager.log");
    let mut proc = socket_activated_manager(&socket, false, None, &log);
    wait_for_socket_file(&mut proc, &socket);
    // A stream connection triggers the exec, as a php-fpm worker's would.
    let _trigger = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    let status = proc.wait_exit(START_DEADLINE);
    let text = proc.log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the manager must exit with an error on a stream socket ({status:?}):\n{text}"
    );
    assert!(
        text.contains("not an AF_UNIX SOCK_SEQPACKET listening socket"),
        "the error must say what is wrong:\n{text}"
    );
}

/// Runs `systemd-analyze` and returns its output.
fn systemd_analyze(args: &[&str]) -> (String, Output) {
    let mut cmd = Command::new(find_program(&["systemd-analyze"]));
    cmd.args(args);
    let cmdline = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmdline}: {e}"));
    (cmdline, out)
}

#[test]
fn the_units_verify_cleanly_and_the_service_rates_ok_or_better() {
    let deploy = repo_root().join("deploy");
    let units = ["handoff-manager.socket", "handoff-manager.service"];

    // verify needs the unit's dependencies (sysinit.target, ...) and its ExecStart binary:
    // a root with the host's system units, the shipped units and the built manager where
    // the Debian package puts it.
    let root = tempfile::tempdir().expect("temp dir");
    let unit_dir = root.path().join("lib/systemd/system");
    std::fs::create_dir_all(&unit_dir).expect("unit dir");
    for entry in std::fs::read_dir("/lib/systemd/system").expect("host units") {
        let entry = entry.expect("host unit");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(entry.path(), unit_dir.join(entry.file_name())).expect("copy unit");
        }
    }
    for unit in units {
        std::fs::copy(deploy.join(unit), unit_dir.join(unit)).expect("copy shipped unit");
    }
    std::fs::create_dir_all(root.path().join("usr/bin")).expect("usr/bin");
    std::fs::copy(
        manager_binary(),
        root.path().join("usr/bin/handoff-manager"),
    )
    .expect("copy the manager");
    let root_arg = format!("--root={}", root.path().display());
    let (cmdline, out) = systemd_analyze(&["verify", &root_arg, units[0], units[1]]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{cmdline}: exit {}, must be clean:\n{said}",
        out.status
    );

    let service = deploy.join(units[1]);
    let (cmdline, out) =
        systemd_analyze(&["security", "--offline=true", &service.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "{cmdline}: no overall rating\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        [" OK", " SAFE"].iter().any(|level| overall.contains(level)),
        "{cmdline}: the service must rate OK or better: {overall}\n{stdout}"
    );
}
