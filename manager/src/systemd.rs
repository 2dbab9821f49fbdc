//! What systemd gives the manager and expects from it, both optional:
//!
//! - **Socket activation** (`handoff-manager.socket`): systemd creates the listening socket
//!   with its owner, group and mode, and passes it as descriptor 3 with `LISTEN_FDS` and
//!   `LISTEN_PID` (the `sd_listen_fds` protocol). The socket outlives the manager, so a
//!   restart never leaves the path missing: handoffs that arrive meanwhile wait in its
//!   backlog. Without these variables the manager binds its own socket.
//! - **Readiness** (`Type=notify`): `READY=1` on the datagram socket named by
//!   `NOTIFY_SOCKET` once the manager serves, and `STOPPING=1` when it drains (the
//!   `sd_notify` protocol). Without the variable nothing is sent.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("LISTEN_FDS={0:?}: expected exactly one socket (one ListenSequentialPacket= line)")]
    Count(String),
    #[error("descriptor 3, passed by systemd, is not open: {0}")]
    NotOpen(Errno),
    #[error(
        "descriptor 3, passed by systemd, is not an AF_UNIX SOCK_SEQPACKET listening socket: {0}"
    )]
    NotSeqpacketListener(String),
    #[error("setting up descriptor 3, passed by systemd: {0}")]
    Setup(Errno),
}

/// The listening socket systemd passed to this process (non-blocking, close-on-exec) and
/// the path it is bound to, or `None` when the manager was not socket-activated. The
/// `LISTEN_*` variables are removed either way: they describe this process only. Call
/// before anything else creates a descriptor.
pub fn listen_socket() -> Result<Option<(OwnedFd, Option<PathBuf>)>, SystemdError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        debug!("LISTEN_PID={pid} is another process's; binding our own socket");
        return Ok(None);
    }
    if fds.trim() != "1" {
        return Err(SystemdError::Count(fds));
    }
    let fd = crate::sys::own_inherited_fd(LISTEN_FDS_START).map_err(SystemdError::NotOpen)?;
    let path = check_seqpacket_listener(&fd)?;
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(SystemdError::Setup)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(SystemdError::Setup)?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(SystemdError::Setup)?;
    Ok(Some((fd, path)))
}

/// Accepts only what the extension can connect to: a listening Unix `SOCK_SEQPACKET`
/// socket (a `.socket` unit with `ListenStream=` would pass a stream socket, on which
/// every handoff would fail). Returns the socket's path, if it has one.
fn check_seqpacket_listener(fd: &OwnedFd) -> Result<Option<PathBuf>, SystemdError> {
    let bad = |what: String| SystemdError::NotSeqpacketListener(what);
    match getsockopt(&fd.as_fd(), sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        Ok(other) => return Err(bad(format!("socket type {other:?}"))),
        Err(e) => return Err(bad(e.to_string())),
    }
    let addr = getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_err(|e| bad(e.to_string()))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(bad(format!("address family {:?}", addr.family())));
    }
    if !matches!(getsockopt(&fd.as_fd(), sockopt::AcceptConn), Ok(true)) {
        return Err(bad("not listening".to_string()));
    }
    Ok(addr
        .as_unix_addr()
        .and_then(|u| u.path())
        .map(|p| p.to_path_buf()))
}

/// The service manager's notification socket (`NOTIFY_SOCKET`), connected at start-up,
/// before the sandbox takes filesystem access away, so that readiness can be told later.
pub struct Notifier {
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// Connects to `NOTIFY_SOCKET` if it is set (a path, or `@name` in the abstract
    /// namespace), and removes the variable. A socket that cannot be reached is logged:
    /// the manager serves anyway, and systemd reports the missing readiness itself.
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { sock: None };
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let connect = || -> std::io::Result<UnixDatagram> {
            let bytes = name.as_encoded_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
                None => SocketAddr::from_pathname(&name)?,
            };
            let sock = UnixDatagram::unbound()?;
            sock.connect_addr(&addr)?;
            Ok(sock)
        };
        match connect() {
            Ok(sock) => Notifier { sock: Some(sock) },
            Err(e) => {
                warn!("NOTIFY_SOCKET={name:?}: {e}; readiness will not be reported");
                Notifier { sock: None }
            }
        }
    }

    /// Sends one `sd_notify` state, e.g. `READY=1`.
    pub fn notify(&self, state: &str) {
        if let Some(sock) = &self.sock {
            match sock.send(state.as_bytes()) {
                Ok(_) => debug!("told systemd {state}"),
                Err(e) => warn!("telling systemd {state}: {e}"),
            }
        }
    }
}
