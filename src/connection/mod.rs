//! Finding the request's connection, and making the worker forget it after a handoff.
//!
//! Supported SAPIs: `fpm-fcgi` (the FastCGI connection from the web server), `cli-server`
//! (`php -S`: the client's own socket) and `apache2handler` (mod_php: the client's own
//! socket, for plain HTTP/1.x only: under mod_ssl or HTTP/2 the socket carries TLS or h2
//! frames that only Apache can write). Each descriptor read from the SAPI's private
//! structures is validated as docs/internals.md describes before it is trusted; any doubt
//! means "no handoff" and the request is served in-process.
//!
//! `find` picks the SAPI's descriptor and runs the checks of `validate` on it; `neutered`
//! holds what the worker does with its copy of the connection once it is handed off.

mod neutered;
mod validate;

pub use neutered::{clear_nonblocking, Neutered};

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Mutex;

use handoff_core::protocol::Framing;

use crate::ffi;

use validate::{
    accepted_on, check_peer, inet_addresses, is_connected_stream, is_listening, local_address,
    pipelining_allows_handoff, ApacheRequest, LocalAddress,
};

/// The connection of the current request, validated: a descriptor the SAPI owns, lent for
/// the request (`'r`), and how the response must be framed on it. Not `Copy`: there is
/// one, and the handoff consumes the worker's use of it.
#[derive(Debug)]
pub struct Connection<'r> {
    fd: BorrowedFd<'r>,
    pub framing: Framing,
    /// php-fpm's FastCGI request id (0 for raw HTTP).
    pub request_id: u16,
    /// The web server asked php-fpm to keep the FastCGI connection (`FCGI_KEEP_CONN`,
    /// `fcgi_request.keep`); false for raw HTTP.
    pub keep_conn: bool,
}

impl<'r> Connection<'r> {
    pub fn fd(&self) -> BorrowedFd<'r> {
        self.fd
    }
}

/// The request's connection if this SAPI's can be handed off, or why not. Every
/// descriptor number read from the SAPI is lent out by `request` only if it is an open
/// socket, and then validated here (docs/internals.md, "How each descriptor is validated").
pub fn find(request: &ffi::Request) -> Result<Connection<'_>, String> {
    if ffi::headers_sent() {
        return Err("headers already sent".into());
    }
    match ffi::sapi_name().as_str() {
        "fpm-fcgi" => {
            let r = ffi::fpm_request().ok_or("no FastCGI request")?;
            if r.ended != 0 {
                return Err("FastCGI request already ended".into());
            }
            let listener = fpm_listener(request, r.listen_socket)?;
            let fd = request
                .sapi_socket(r.fd)
                .filter(|&fd| is_connected_stream(fd))
                .ok_or("fcgi_request layout not recognised (fd)")?;
            // A connected stream socket at the right offset could still be another one
            // (a database connection the script opened): only a connection accepted on
            // php-fpm's own listening socket is the web server's.
            let local =
                local_address(fd).ok_or("fcgi_request layout not recognised (fd address)")?;
            accepted_on(&listener, &local)?;
            let request_id = u16::try_from(r.id)
                .map_err(|_| format!("FastCGI request id {} out of range", r.id))?;
            Ok(Connection {
                fd,
                framing: Framing::FastCgi,
                request_id,
                keep_conn: r.keep != 0,
            })
        }
        "cli-server" => {
            let fd = ffi::cli_server_socket().ok_or("no client")?;
            let fd = request
                .sapi_socket(fd)
                .filter(|&fd| is_connected_stream(fd))
                .ok_or("php -S client layout not recognised")?;
            // The request's own client, not another socket at that offset.
            let (peer, _local) =
                inet_addresses(fd).ok_or("php -S client socket has no TCP addresses")?;
            check_peer(
                "php -S",
                peer,
                ffi::server_var("REMOTE_ADDR").as_deref(),
                ffi::server_var("REMOTE_PORT").as_deref(),
            )?;
            Ok(Connection {
                fd,
                framing: Framing::Http,
                request_id: 0,
                keep_conn: false,
            })
        }
        "apache2handler" => {
            let fd = ffi::apache_client_socket()
                .map_err(|e| format!("mod_php: no client socket ({e:?})"))?;
            let fd = request
                .sapi_socket(fd)
                .filter(|&fd| is_connected_stream(fd))
                .ok_or("mod_php client socket not recognised")?;
            let (peer, local) =
                inet_addresses(fd).ok_or("mod_php client socket has no TCP addresses")?;
            let apache = ApacheRequest::current();
            apache.check(peer, local)?;
            let pending = ffi::apache_pending()
                .map_err(|e| format!("mod_php: connection state unknown ({e:?})"))?;
            pipelining_allows_handoff(pending, apache.has_body())?;
            Ok(Connection {
                fd,
                framing: Framing::Http,
                request_id: 0,
                keep_conn: false,
            })
        }
        other => Err(format!("SAPI {other} is not supported for handoff")),
    }
}

/// The address of php-fpm's listening socket, number `fd`: validated on this process's
/// first handoff (an open, listening socket at the `fcgi_request` offset) and kept, since a
/// php-fpm worker accepts on the same listening socket all its life; later requests skip
/// three system calls. A different number is validated afresh.
fn fpm_listener(request: &ffi::Request, fd: RawFd) -> Result<LocalAddress, String> {
    static LISTENER: Mutex<Option<(RawFd, LocalAddress)>> = Mutex::new(None);
    let mut kept = LISTENER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((number, listener)) = &*kept {
        if *number == fd {
            return Ok(listener.clone());
        }
    }
    let listen_socket = request
        .sapi_socket(fd)
        .filter(|&l| is_listening(l))
        .ok_or("fcgi_request layout not recognised (listen_socket)")?;
    let listener = local_address(listen_socket)
        .ok_or("fcgi_request layout not recognised (listen_socket address)")?;
    *kept = Some((fd, listener.clone()));
    Ok(listener)
}
