//! handoff-manager for tests: starting the real one and waiting for its socket, and a
//! stand-in that accepts and never answers.

use std::path::Path;
use std::time::Duration;

pub use handoff_stack::seqpacket_accepts;
use handoff_stack::Place;
use nix::sys::signal::Signal;

use super::{manager_binary, Proc};

/// A non-blocking listening SOCK_SEQPACKET socket at `path`, for the test stand-ins that
/// play a misbehaving manager; `who` names it in a failure.
pub fn listen_seqpacket(path: &Path, who: &str) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .expect("seqpacket socket");
    bind(
        listener.as_raw_fd(),
        &UnixAddr::new(path).expect("socket path"),
    )
    .unwrap_or_else(|e| panic!("bind {who}: {e}"));
    // Open to every user, unlike the real manager's socket (0660 for the PHP workers'
    // group): the stand-ins play a manager for any PHP user (Apache's www-data children)
    // without knowing it, and live in the test's own temporary directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("chmod {who}: {e}"));
    listen(&listener, Backlog::new(16).expect("backlog")).expect("listen");
    listener
}

/// Starts handoff-manager on `socket` with debug logging into `log`; does not wait.
pub fn spawn_manager(socket: &Path, log: &Path) -> Proc {
    spawn_manager_with(socket, log, &[])
}

/// [`spawn_manager`] with extra command-line arguments.
pub fn spawn_manager_with(socket: &Path, log: &Path, args: &[&str]) -> Proc {
    handoff_stack::spawn_manager(
        &Place::flat(log.parent().unwrap_or(Path::new("."))),
        &manager_binary(),
        socket,
        log,
        args,
        "debug",
        Signal::SIGKILL,
    )
}

/// Starts handoff-manager and waits until its socket accepts; panics with its log if not.
pub fn start_manager(socket: &Path, log: &Path) -> Proc {
    handoff_stack::start_manager(spawn_manager(socket, log), socket)
}

/// A stand-in for a hung manager: it accepts on the manager's socket and keeps every
/// connection open without ever answering. Stops accepting and closes all in `Drop`.
pub struct SilentManager {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentManager {
    pub fn bind(path: &Path) -> SilentManager {
        use nix::sys::socket::accept;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;

        let listener = listen_seqpacket(path, "the silent manager");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match accept(listener.as_raw_fd()) {
                    Ok(fd) => {
                        // SAFETY: accept() just returned this descriptor and nothing else owns it.
                        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        accepted2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(held);
        });
        SilentManager {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted (and never answered).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SilentManager {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `handoff-manager SUBCOMMAND --metrics ADDR` (`status`, `health`) to its end, as an
/// operator would, and returns what it printed and its exit status.
pub fn manager_cli(subcommand: &str, metrics: &str) -> std::process::Output {
    std::process::Command::new(manager_binary())
        .args([subcommand, "--metrics", metrics])
        .output()
        .unwrap_or_else(|e| panic!("run handoff-manager {subcommand}: {e}"))
}
