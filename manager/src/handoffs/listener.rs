//! The manager's listening socket and the takeover of a running manager's socket path:
//! creating the socket with exactly the requested mode (replacing a stale one, refusing a
//! live one unless `--takeover`), asking the previous manager to drain, and removing the
//! socket file at shutdown only while it is still ours.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;

use crate::error::{io_err, ServerError};
use handoff_core::protocol::{self, ProtocolError, Reply};

/// Only the manager's own user (or root) may make it drain: any other local user allowed
/// to hand off could otherwise stop the service.
pub(crate) fn same_user(sock: &OwnedFd) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not take over (running as {me})",
            cred.uid()
        ))
    }
}

/// Asks the manager we took the socket path from to stop taking handoffs and finish.
pub(crate) fn tell_previous_to_drain(prev: &OwnedFd) {
    let tv = nix::sys::time::TimeVal::new(5, 0);
    let _ = nix::sys::socket::setsockopt(prev, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
    let answer = protocol::send_reply(prev.as_fd(), &Reply::Drain)
        .and_then(|()| protocol::recv_reply(prev.as_fd(), MsgFlags::empty()))
        .map_err(ProtocolError::timed_out);
    match answer {
        Ok(Reply::Accept) => info!("took over the socket; the previous manager is draining"),
        Ok(other) => warn!("the previous manager answered {other:?} to drain"),
        Err(e) => warn!("the previous manager did not confirm drain: {e}"),
    }
}

/// The socket the handshake loop listens on, and the inode of its file when the manager
/// created it: only that file is removed at shutdown. `None` for a socket systemd passed:
/// its file is systemd's, and stays for the next manager.
pub(crate) struct Listening {
    pub sock: OwnedFd,
    pub ino: Option<u64>,
}

/// The bound socket, its inode (so that shutdown removes only our own socket file), and,
/// after a takeover, the connection to the previous manager.
pub(crate) struct Bound {
    pub sock: OwnedFd,
    pub ino: u64,
    pub previous: Option<OwnedFd>,
}

/// Creates the listening socket at `path` with `mode`. A stale socket file is replaced; a
/// live manager's socket is an error unless `takeover`, in which case the new socket is
/// bound beside it and renamed over it in one step, so that no handoff finds the path
/// missing; the caller then tells the previous manager to drain.
pub(crate) fn listen_on(path: &Path, mode: u32, takeover: bool) -> Result<Bound, ServerError> {
    let sock_err = |op: &'static str| {
        let path = path.to_path_buf();
        move |errno| ServerError::Socket { op, path, errno }
    };
    let mut previous = None;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        let probe = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(sock_err("socket"))?;
        let addr = UnixAddr::new(path).map_err(sock_err("address"))?;
        if connect(probe.as_raw_fd(), &addr).is_ok() {
            if !takeover {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            previous = Some(probe);
        } else {
            std::fs::remove_file(path).map_err(io_err("removing stale socket"))?;
        }
    }
    let bind_path = if previous.is_some() {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".new.{}", std::process::id()));
        PathBuf::from(p)
    } else {
        path.to_path_buf()
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sock_err("socket"))?;
    let addr = UnixAddr::new(&bind_path).map_err(sock_err("address"))?;
    // Bind with no permission for anyone, then open up to the requested mode: no moment
    // where the socket is wider than asked.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o777));
    let bound = bind(sock.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(sock_err("bind"))?;
    std::fs::set_permissions(&bind_path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting socket mode"))?;
    let backlog = Backlog::new(1024).map_err(sock_err("listen"))?;
    listen(&sock, backlog).map_err(sock_err("listen"))?;
    if bind_path != path {
        std::fs::rename(&bind_path, path).map_err(io_err("moving the new socket in place"))?;
    }
    let ino = std::fs::symlink_metadata(path)
        .map_err(io_err("reading the socket"))?
        .ino();
    Ok(Bound {
        sock,
        ino,
        previous,
    })
}

/// Removes the socket file if it is still ours (a newer manager may have taken the path).
pub(crate) fn remove_socket_file(path: &Path, ino: u64) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.ino() != ino => {
            debug!(
                "{} belongs to a newer manager; left in place",
                path.display()
            );
            return;
        }
        Err(_) => return,
        Ok(_) => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("removing {}: {e}", path.display()),
    }
}
