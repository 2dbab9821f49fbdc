//! Finding the request's connection, and making the worker forget it after a handoff.
//!
//! Supported SAPIs: `fpm-fcgi` (the FastCGI connection from the web server) and
//! `cli-server` (`php -S`: the client's own socket). Each descriptor read from the SAPI's
//! private structures is validated as handoff-facts.md prescribes before it is trusted;
//! any doubt means "no handoff" and the request is served in-process.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};

use crate::ffi;

/// The connection of the current request, validated.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub fd: RawFd,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// php-fpm: FastCGI with this request id.
    FastCgi { request_id: u16 },
    /// `php -S`: raw HTTP/1.1.
    Http,
}

impl Connection {
    pub fn borrow(&self) -> BorrowedFd<'_> {
        ffi::borrow_sapi_fd(self.fd)
    }
}

fn is_socket(fd: RawFd) -> bool {
    matches!(fstat(fd), Ok(st)
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
}

/// A connected (not listening) stream socket.
fn is_connected_stream(fd: RawFd) -> bool {
    if fd < 0 || !is_socket(fd) {
        return false;
    }
    let b = ffi::borrow_sapi_fd(fd);
    matches!(getsockopt(&b, sockopt::SockType), Ok(SockType::Stream))
        && matches!(getsockopt(&b, sockopt::AcceptConn), Ok(false))
}

fn is_listening(fd: RawFd) -> bool {
    if fd < 0 || !is_socket(fd) {
        return false;
    }
    let b = ffi::borrow_sapi_fd(fd);
    matches!(getsockopt(&b, sockopt::AcceptConn), Ok(true))
}

/// The request's connection if this SAPI's can be handed off, or why not.
pub fn find() -> Result<Connection, String> {
    if ffi::headers_sent() {
        return Err("headers already sent".into());
    }
    match ffi::sapi_name().as_str() {
        "fpm-fcgi" => {
            let r = ffi::fpm_request().ok_or("no FastCGI request")?;
            if r.ended != 0 {
                return Err("FastCGI request already ended".into());
            }
            if !is_listening(r.listen_socket) {
                return Err("fcgi_request layout not recognised (listen_socket)".into());
            }
            if !is_connected_stream(r.fd) {
                return Err("fcgi_request layout not recognised (fd)".into());
            }
            let request_id = u16::try_from(r.id)
                .map_err(|_| format!("FastCGI request id {} out of range", r.id))?;
            Ok(Connection {
                fd: r.fd,
                kind: Kind::FastCgi { request_id },
            })
        }
        "cli-server" => {
            let fd = ffi::cli_server_socket().ok_or("no client")?;
            if !is_connected_stream(fd) {
                return Err("php -S client layout not recognised".into());
            }
            Ok(Connection {
                fd,
                kind: Kind::Http,
            })
        }
        other => Err(format!("SAPI {other} is not supported for handoff")),
    }
}

/// The worker's copy of the connection, made harmless while the manager owns it.
///
/// `/dev/null` takes the connection's descriptor number, so that whatever the SAPI still
/// writes (php-fpm's `END_REQUEST`) is discarded and its later `close()` closes only that.
/// The original stays reachable through `saved` until the manager has said yes to go, so a
/// failed go can put it back.
pub struct Neutered {
    fd: RawFd,
    saved: OwnedFd,
}

impl Neutered {
    pub fn new(conn: &Connection) -> Result<Neutered, String> {
        let saved = conn
            .borrow()
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?;
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        nix::unistd::dup2(null.as_fd().as_raw_fd(), conn.fd).map_err(|e| format!("dup2: {e}"))?;
        Ok(Neutered { fd: conn.fd, saved })
    }

    /// Puts the real connection back (the manager never started), blocking as the SAPI
    /// expects it.
    pub fn restore(self) -> Result<(), String> {
        nix::unistd::dup2(self.saved.as_raw_fd(), self.fd).map_err(|e| format!("dup2: {e}"))?;
        clear_nonblocking(ffi::borrow_sapi_fd(self.fd));
        Ok(())
    }

    /// The manager owns the connection now; drop our extra reference to it.
    pub fn commit(self) {
        drop(self.saved);
    }
}

/// The manager may have set `O_NONBLOCK` on the shared file description; PHP's SAPIs write
/// with blocking calls.
pub fn clear_nonblocking(fd: BorrowedFd<'_>) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(bits) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(bits);
        if flags.contains(OFlag::O_NONBLOCK) {
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK));
        }
    }
}
