//! What can stop the manager: a start-up step that failed (the socket, the signal
//! descriptor, the sandbox, systemd's socket) or the handshake loop's `poll`. Its own module
//! so that the listener and the handshake loop, which both report it, depend on it and not
//! on each other.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{op} {path}: {errno}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("another manager is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("signal setup: {0}")]
    Signal(Errno),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { op, source }
}
