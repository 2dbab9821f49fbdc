//! The checks that make a descriptor read from the SAPI's private structures the
//! request's own connection (docs/internals.md, "How each descriptor is validated"): the
//! socket's type, its addresses against what the SAPI says about the client and the
//! server, php-fpm's listener, mod_php's protocol and pipelining. Apart from reading
//! `$_SERVER` (`ApacheRequest::current`) they are plain functions over real sockets and
//! strings, unit-tested without PHP.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockType, SockaddrStorage};

use crate::ffi;

/// A connected (not listening) stream socket.
pub(super) fn is_connected_stream(fd: BorrowedFd<'_>) -> bool {
    matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::Stream))
        && matches!(getsockopt(&fd, sockopt::AcceptConn), Ok(false))
}

pub(super) fn is_listening(fd: BorrowedFd<'_>) -> bool {
    matches!(getsockopt(&fd, sockopt::AcceptConn), Ok(true))
}

/// The peer and local addresses of a TCP socket.
pub(super) fn inet_addresses(fd: BorrowedFd<'_>) -> Option<(SocketAddr, SocketAddr)> {
    fn inet(a: SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            return Some(SocketAddr::V4((*v4).into()));
        }
        a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
    }
    let peer = inet(getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok()?)?;
    let local = inet(getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?)?;
    Some((peer, local))
}

/// `Ok` if nobody but the manager will write on the connection before the manager's
/// response and nothing is queued behind it: Apache holds no unsent bytes of an earlier
/// response (with HTTP pipelining it keeps a response's tail while the next request is
/// already buffered, and would write it later, into /dev/null, while the manager's bytes
/// went out first), and no next request is buffered (Apache would run it after the
/// handoff and write its response into /dev/null). Otherwise the request is streamed by
/// Apache itself, in order.
///
/// The input check cannot tell the next request from this request's own unread body, so
/// it is skipped for a request with a body: a request pipelined behind such a request gets
/// no response after a handoff, though Apache may still run it (the manager's
/// `Connection: close` tells the client to send it again).
pub(super) fn pipelining_allows_handoff(
    pending: ffi::ApachePending,
    has_body: bool,
) -> Result<(), String> {
    if pending.unsent_output {
        return Err(
            "mod_php: Apache still holds part of an earlier response (HTTP pipelining)".into(),
        );
    }
    if pending.buffered_input && !has_body {
        return Err("mod_php: a pipelined request follows on the connection".into());
    }
    Ok(())
}

/// What mod_php's request says about its connection (`$_SERVER`, from Apache's
/// `ap_add_common_vars`), to check the socket found through Apache's structures against.
#[derive(Debug, Default)]
pub(super) struct ApacheRequest {
    remote_addr: Option<String>,
    remote_port: Option<String>,
    server_addr: Option<String>,
    https: Option<String>,
    request_scheme: Option<String>,
    server_protocol: Option<String>,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
}

impl ApacheRequest {
    pub(super) fn current() -> ApacheRequest {
        ApacheRequest {
            content_length: ffi::server_var("CONTENT_LENGTH"),
            transfer_encoding: ffi::server_var("HTTP_TRANSFER_ENCODING"),
            remote_addr: ffi::server_var("REMOTE_ADDR"),
            remote_port: ffi::server_var("REMOTE_PORT"),
            server_addr: ffi::server_var("SERVER_ADDR"),
            https: ffi::server_var("HTTPS"),
            request_scheme: ffi::server_var("REQUEST_SCHEME"),
            server_protocol: ffi::server_var("SERVER_PROTOCOL"),
        }
    }

    /// The request carries a body (which may still be unread on the connection).
    pub(super) fn has_body(&self) -> bool {
        self.transfer_encoding.is_some()
            || self
                .content_length
                .as_deref()
                .is_some_and(|l| l.trim().parse::<u64>().map_or(true, |n| n > 0))
    }

    /// `Ok` if the socket with these addresses is this request's own connection and
    /// carries plain HTTP/1.x. `SERVER_PORT` is not compared: it comes from the `Host`
    /// header (`UseCanonicalName Off`), so it differs behind any port mapping.
    pub(super) fn check(&self, peer: SocketAddr, local: SocketAddr) -> Result<(), String> {
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
        check_peer(
            "mod_php",
            peer,
            self.remote_addr.as_deref(),
            self.remote_port.as_deref(),
        )
        .map_err(|e| format!("{e} (mod_remoteip?)"))?;
        let server_ip = parse_ip(self.server_addr.as_deref()).ok_or("mod_php: SERVER_ADDR")?;
        if local.ip().to_canonical() != server_ip {
            return Err(format!(
                "mod_php: socket address {local} is not SERVER_ADDR"
            ));
        }
        Ok(())
    }
}

/// `Ok` if `peer`, the socket's peer, is the client the SAPI names in `REMOTE_ADDR` and
/// `REMOTE_PORT` (for `php -S` and mod_php, which fill both from the accepted socket).
pub(super) fn check_peer(
    sapi: &str,
    peer: SocketAddr,
    remote_addr: Option<&str>,
    remote_port: Option<&str>,
) -> Result<(), String> {
    let remote_ip = parse_ip(remote_addr).ok_or(format!("{sapi}: no REMOTE_ADDR"))?;
    let remote_port = remote_port
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(format!("{sapi}: no REMOTE_PORT"))?;
    if peer.ip().to_canonical() != remote_ip || peer.port() != remote_port {
        return Err(format!(
            "{sapi}: socket peer {peer} is not REMOTE_ADDR/REMOTE_PORT"
        ));
    }
    Ok(())
}

/// A socket's local address, as far as the checks below need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LocalAddress {
    Inet(SocketAddr),
    /// A Unix socket's path (or abstract name, with its leading NUL); empty if unnamed.
    Unix(Vec<u8>),
}

pub(super) fn local_address(fd: BorrowedFd<'_>) -> Option<LocalAddress> {
    let a = getsockname::<SockaddrStorage>(fd.as_raw_fd()).ok()?;
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(LocalAddress::Inet(SocketAddr::V4((*v4).into())));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(LocalAddress::Inet(SocketAddr::V6((*v6).into())));
    }
    let unix = a.as_unix_addr()?;
    if let Some(path) = unix.path() {
        return Some(LocalAddress::Unix(path.as_os_str().as_bytes().to_vec()));
    }
    if let Some(name) = unix.as_abstract() {
        let mut bytes = vec![0];
        bytes.extend_from_slice(name);
        return Some(LocalAddress::Unix(bytes));
    }
    Some(LocalAddress::Unix(Vec::new()))
}

/// `Ok` if a connection whose local address is `conn` can have been accepted on a
/// listening socket bound to `listener`: the same family, and the same port and address
/// (any address for a wildcard listener) for TCP, the same path for a Unix socket (Linux
/// gives an accepted Unix socket its listener's name). A client socket the process opened
/// itself has an ephemeral port or no name, so it never matches.
pub(super) fn accepted_on(listener: &LocalAddress, conn: &LocalAddress) -> Result<(), String> {
    let matches = match (listener, conn) {
        (LocalAddress::Inet(l), LocalAddress::Inet(c)) => {
            l.is_ipv4() == c.is_ipv4()
                && l.port() == c.port()
                && (l.ip().is_unspecified() || l.ip() == c.ip())
        }
        (LocalAddress::Unix(l), LocalAddress::Unix(c)) => !l.is_empty() && l == c,
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        // No addresses in the reason: it may end up in an exception a client sees, and a
        // Unix listener's address is a path.
        Err("the FastCGI connection was not accepted on php-fpm's listening socket".into())
    }
}

/// An address as Apache prints it: IPv4-mapped IPv6 as IPv4, an IPv6 zone after `%`.
fn parse_ip(s: Option<&str>) -> Option<IpAddr> {
    let s = s?;
    let s = s.split_once('%').map_or(s, |(ip, _zone)| ip);
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn request() -> ApacheRequest {
        ApacheRequest {
            remote_addr: Some("127.0.0.1".into()),
            remote_port: Some("40000".into()),
            server_addr: Some("127.0.0.1".into()),
            https: None,
            request_scheme: Some("http".into()),
            server_protocol: Some("HTTP/1.1".into()),
            content_length: None,
            transfer_encoding: None,
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

    #[test]
    fn php_s_peer_must_be_remote_addr_and_port() {
        let peer = addr("127.0.0.1:40000");
        assert_eq!(
            check_peer("php -S", peer, Some("127.0.0.1"), Some("40000")),
            Ok(())
        );
        assert_eq!(
            check_peer("php -S", addr("[::1]:40000"), Some("::1"), Some("40000")),
            Ok(())
        );
        for (remote_addr, remote_port) in [
            (Some("127.0.0.1"), Some("40001")),
            (Some("127.0.0.2"), Some("40000")),
            (None, Some("40000")),
            (Some("127.0.0.1"), None),
            (Some("127.0.0.1"), Some("port")),
        ] {
            assert!(
                check_peer("php -S", peer, remote_addr, remote_port).is_err(),
                "{remote_addr:?}:{remote_port:?} was accepted"
            );
        }
    }

    fn local(fd: &impl AsFd) -> LocalAddress {
        local_address(fd.as_fd()).expect("getsockname")
    }

    /// Real sockets: what php-fpm accepted on its listener passes, a socket the script
    /// opened itself (to a database, say) never does.
    #[test]
    fn fpm_connection_must_come_from_its_listener_tcp() {
        use std::net::{TcpListener, TcpStream};
        for bind in ["127.0.0.1:0", "0.0.0.0:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(bind) else {
                continue; // no IPv6 on this machine
            };
            let port = listener.local_addr().expect("local addr").port();
            let target = if bind.starts_with('[') {
                format!("[::1]:{port}")
            } else {
                format!("127.0.0.1:{port}")
            };
            let client = TcpStream::connect(&target).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            assert_eq!(
                accepted_on(&local(&listener), &local(&accepted)),
                Ok(()),
                "{bind}"
            );
            // The client end: an ephemeral port, as for a script's own connections.
            assert!(
                accepted_on(&local(&listener), &local(&client)).is_err(),
                "{bind}: a client socket passed"
            );
            // A connection accepted on another listener.
            let other = TcpListener::bind("127.0.0.1:0").expect("bind other");
            let _c = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
            let (foreign, _) = other.accept().expect("accept other");
            assert!(
                accepted_on(&local(&listener), &local(&foreign)).is_err(),
                "{bind}: another listener's connection passed"
            );
        }
    }

    #[test]
    fn fpm_connection_must_come_from_its_listener_unix() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fpm.sock");
        let other_path = dir.path().join("db.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let client = UnixStream::connect(&path).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(accepted_on(&local(&listener), &local(&accepted)), Ok(()));
        assert!(
            accepted_on(&local(&listener), &local(&client)).is_err(),
            "an unnamed client socket passed"
        );
        let other = UnixListener::bind(&other_path).expect("bind other");
        let db = UnixStream::connect(&other_path).expect("connect other");
        let (foreign, _) = other.accept().expect("accept other");
        assert!(accepted_on(&local(&listener), &local(&foreign)).is_err());
        assert!(accepted_on(&local(&listener), &local(&db)).is_err());
        // A TCP connection is never one of a Unix listener's.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        assert!(accepted_on(&local(&listener), &local(&tcp)).is_err());
    }

    #[test]
    fn pipelined_connections_stay_with_apache() {
        let pending = |unsent_output, buffered_input| ffi::ApachePending {
            unsent_output,
            buffered_input,
        };
        assert_eq!(
            pipelining_allows_handoff(pending(false, false), false),
            Ok(())
        );
        assert!(pipelining_allows_handoff(pending(true, false), false).is_err());
        assert!(pipelining_allows_handoff(pending(true, false), true).is_err());
        assert!(pipelining_allows_handoff(pending(false, true), false).is_err());
        // An upload's unread body looks like buffered input.
        assert_eq!(
            pipelining_allows_handoff(pending(false, true), true),
            Ok(())
        );
    }

    #[test]
    fn request_body_from_content_length_or_transfer_encoding() {
        let with = |content_length: Option<&str>, transfer_encoding: Option<&str>| ApacheRequest {
            content_length: content_length.map(Into::into),
            transfer_encoding: transfer_encoding.map(Into::into),
            ..request()
        };
        assert!(!with(None, None).has_body());
        assert!(!with(Some("0"), None).has_body());
        assert!(with(Some("10"), None).has_body());
        assert!(with(None, Some("chunked")).has_body());
    }
}
