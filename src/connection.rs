//! Finding the request's connection, and making the worker forget it after a handoff.
//!
//! Supported SAPIs: `fpm-fcgi` (the FastCGI connection from the web server), `cli-server`
//! (`php -S`: the client's own socket) and `apache2handler` (mod_php: the client's own
//! socket, for plain HTTP/1.x only: under mod_ssl or HTTP/2 the socket carries TLS or h2
//! frames that only Apache can write). Each descriptor read from the SAPI's private
//! structures is validated as handoff-facts.md prescribes before it is trusted; any doubt
//! means "no handoff" and the request is served in-process.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
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
    /// `php -S`, mod_php: raw HTTP/1.x.
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
        "apache2handler" => {
            let fd = ffi::apache_client_socket()
                .map_err(|e| format!("mod_php: no client socket ({e:?})"))?;
            if !is_connected_stream(fd) {
                return Err("mod_php client socket not recognised".into());
            }
            let (peer, local) =
                inet_addresses(fd).ok_or("mod_php client socket has no TCP addresses")?;
            ApacheRequest::current().check(peer, local)?;
            Ok(Connection {
                fd,
                kind: Kind::Http,
            })
        }
        other => Err(format!("SAPI {other} is not supported for handoff")),
    }
}

/// The peer and local addresses of a TCP socket.
fn inet_addresses(fd: RawFd) -> Option<(SocketAddr, SocketAddr)> {
    fn inet(a: SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            return Some(SocketAddr::V4((*v4).into()));
        }
        a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
    }
    let peer = inet(getpeername::<SockaddrStorage>(fd).ok()?)?;
    let local = inet(getsockname::<SockaddrStorage>(fd).ok()?)?;
    Some((peer, local))
}

/// What mod_php's request says about its connection (`$_SERVER`, from Apache's
/// `ap_add_common_vars`), to check the socket found through Apache's structures against.
#[derive(Debug, Default)]
struct ApacheRequest {
    remote_addr: Option<String>,
    remote_port: Option<String>,
    server_addr: Option<String>,
    https: Option<String>,
    request_scheme: Option<String>,
    server_protocol: Option<String>,
}

impl ApacheRequest {
    fn current() -> ApacheRequest {
        ApacheRequest {
            remote_addr: ffi::server_var("REMOTE_ADDR"),
            remote_port: ffi::server_var("REMOTE_PORT"),
            server_addr: ffi::server_var("SERVER_ADDR"),
            https: ffi::server_var("HTTPS"),
            request_scheme: ffi::server_var("REQUEST_SCHEME"),
            server_protocol: ffi::server_var("SERVER_PROTOCOL"),
        }
    }

    /// `Ok` if the socket with these addresses is this request's own connection and
    /// carries plain HTTP/1.x. `SERVER_PORT` is not compared: it comes from the `Host`
    /// header (`UseCanonicalName Off`), so it differs behind any port mapping.
    fn check(&self, peer: SocketAddr, local: SocketAddr) -> Result<(), String> {
        match self.server_protocol.as_deref() {
            Some("HTTP/1.0" | "HTTP/1.1") => {}
            Some(other) => return Err(format!("mod_php: {other} request (only HTTP/1.x)")),
            None => return Err("mod_php: no SERVER_PROTOCOL".into()),
        }
        if self
            .https
            .as_deref()
            .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("off"))
        {
            return Err("mod_php: HTTPS request (TLS is Apache's)".into());
        }
        if self
            .request_scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
        {
            return Err("mod_php: request scheme is not http".into());
        }
        let remote_ip = parse_ip(self.remote_addr.as_deref()).ok_or("mod_php: REMOTE_ADDR")?;
        let remote_port = self
            .remote_port
            .as_deref()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("mod_php: REMOTE_PORT")?;
        let server_ip = parse_ip(self.server_addr.as_deref()).ok_or("mod_php: SERVER_ADDR")?;
        if peer.ip().to_canonical() != remote_ip || peer.port() != remote_port {
            return Err(format!(
                "mod_php: socket peer {peer} is not REMOTE_ADDR/REMOTE_PORT (mod_remoteip?)"
            ));
        }
        if local.ip().to_canonical() != server_ip {
            return Err(format!(
                "mod_php: socket address {local} is not SERVER_ADDR"
            ));
        }
        Ok(())
    }
}

/// An address as Apache prints it: IPv4-mapped IPv6 as IPv4, an IPv6 zone after `%`.
fn parse_ip(s: Option<&str>) -> Option<IpAddr> {
    let s = s?;
    let s = s.split_once('%').map_or(s, |(ip, _zone)| ip);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
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
    /// The connection's file status flags before the handoff: `O_NONBLOCK` under mod_php
    /// (APR's timeouts poll), blocking under php-fpm and `php -S`.
    flags: Option<OFlag>,
}

impl Neutered {
    pub fn new(conn: &Connection) -> Result<Neutered, String> {
        let flags = fcntl(conn.fd, FcntlArg::F_GETFL)
            .ok()
            .map(OFlag::from_bits_retain);
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
        Ok(Neutered {
            fd: conn.fd,
            saved,
            flags,
        })
    }

    /// Puts the real connection back (the manager never started), blocking or not as the
    /// SAPI had it (the manager may have switched the shared file description).
    pub fn restore(self) -> Result<(), String> {
        nix::unistd::dup2(self.saved.as_raw_fd(), self.fd).map_err(|e| format!("dup2: {e}"))?;
        match self.flags {
            Some(flags) => {
                let _ = fcntl(self.fd, FcntlArg::F_SETFL(flags));
            }
            None => clear_nonblocking(ffi::borrow_sapi_fd(self.fd)),
        }
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
    if let Ok(bits) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(bits);
        if flags.contains(OFlag::O_NONBLOCK) {
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ApacheRequest {
        ApacheRequest {
            remote_addr: Some("127.0.0.1".into()),
            remote_port: Some("40000".into()),
            server_addr: Some("127.0.0.1".into()),
            https: None,
            request_scheme: Some("http".into()),
            server_protocol: Some("HTTP/1.1".into()),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn own_plain_http_connection_passes() {
        let r = request();
        assert_eq!(
            r.check(addr("127.0.0.1:40000"), addr("127.0.0.1:8080")),
            Ok(())
        );
        let r = ApacheRequest {
            server_protocol: Some("HTTP/1.0".into()),
            https: Some("off".into()),
            ..request()
        };
        assert_eq!(
            r.check(addr("127.0.0.1:40000"), addr("127.0.0.1:80")),
            Ok(())
        );
    }

    #[test]
    fn ipv4_mapped_and_zoned_addresses_compare_as_apache_prints_them() {
        let r = request();
        let peer = addr("[::ffff:127.0.0.1]:40000");
        let local = addr("[::ffff:127.0.0.1]:80");
        assert_eq!(r.check(peer, local), Ok(()));
        let r = ApacheRequest {
            remote_addr: Some("fe80::1%eth0".into()),
            server_addr: Some("fe80::2".into()),
            ..request()
        };
        assert_eq!(
            r.check(addr("[fe80::1]:40000"), addr("[fe80::2]:80")),
            Ok(())
        );
    }

    #[test]
    fn tls_http2_and_foreign_sockets_are_refused() {
        let peer = addr("127.0.0.1:40000");
        let local = addr("127.0.0.1:80");
        let refused = [
            ApacheRequest {
                https: Some("on".into()),
                ..request()
            },
            ApacheRequest {
                request_scheme: Some("https".into()),
                ..request()
            },
            ApacheRequest {
                server_protocol: Some("HTTP/2.0".into()),
                ..request()
            },
            ApacheRequest {
                server_protocol: None,
                ..request()
            },
            ApacheRequest {
                remote_port: Some("40001".into()),
                ..request()
            },
            ApacheRequest {
                remote_addr: Some("10.0.0.1".into()),
                ..request()
            },
            ApacheRequest {
                server_addr: Some("10.0.0.2".into()),
                ..request()
            },
            ApacheRequest {
                remote_port: Some("not a port".into()),
                ..request()
            },
            ApacheRequest {
                remote_addr: None,
                ..request()
            },
            ApacheRequest::default(),
        ];
        for r in refused {
            assert!(r.check(peer, local).is_err(), "{r:?} was accepted");
        }
    }
}
