//! Starting handoff-manager and knowing when it listens.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::{wait_until, Place, Proc, START_DEADLINE};

/// Whether a SOCK_SEQPACKET listener at `path` accepts (the manager's socket type: a stream
/// connect would be refused).
pub fn seqpacket_accepts(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    connect(fd.as_raw_fd(), &addr).is_ok()
}

/// Starts `binary --socket SOCKET ARGS...` with `RUST_LOG=rust_log`, its output in `log`;
/// does not wait. `stop` is the signal `Drop` sends (SIGTERM lets downloads finish for
/// `--grace`; the tests use SIGKILL).
pub fn spawn_manager(
    place: &Place,
    binary: &Path,
    socket: &Path,
    log: &Path,
    args: &[&str],
    rust_log: &str,
    stop: Signal,
) -> Proc {
    let mut cmd = place.command(binary);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", rust_log);
    Proc::spawn("handoff-manager", cmd, log.to_path_buf(), stop)
}

/// Waits until the manager's socket accepts; panics with its log if it does not.
pub fn start_manager(mut proc: Proc, socket: &Path) -> Proc {
    if let Err(e) = wait_until(
        "handoff-manager",
        START_DEADLINE,
        || seqpacket_accepts(socket),
        || proc.check_alive(),
    ) {
        panic!("{e}\n{}: {}\n{}", proc.name, proc.cmdline, proc.log_text());
    }
    proc
}
