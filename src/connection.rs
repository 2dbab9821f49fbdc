//! Finding the request's connection, and making the worker forget it after a handoff.
//!
//! Supported SAPIs: `fpm-fcgi` (the FastCGI connection from the web server), `cli-server`
//! (`php -S`: the client's own socket) and `apache2handler` (mod_php: the client's own
//! socket, for plain HTTP/1.x only: under mod_ssl or HTTP/2 the socket carries TLS or h2
//! frames that only Apache can write). Each descriptor read from the SAPI's private
//! structures is validated as docs/internals.md describes before it is trusted; any doubt
//! means "no handoff" and the request is served in-process.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getpeername, getsockname, getsockopt, sockopt, SockType, SockaddrStorage};

use handoff_core::protocol::Framing;

use crate::ffi;

/// The connection of the current request, validated: a descriptor the SAPI owns, lent for
/// the request (`'r`), and how the response must be framed on it. Not `Copy`: there is
/// one, and the handoff consumes the worker's use of it.
#[derive(Debug)]
pub struct Connection<'r> {
    fd: BorrowedFd<'r>,
    pub framing: Framing,
    /// php-fpm's FastCGI request id (0 for raw HTTP).
    pub request_id: u16,
}

impl<'r> Connection<'r> {
    pub fn fd(&self) -> BorrowedFd<'r> {
        self.fd
    }
}

/// A connected (not listening) stream socket.
fn is_connected_stream(fd: BorrowedFd<'_>) -> bool {
    matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::Stream))
        && matches!(getsockopt(&fd, sockopt::AcceptConn), Ok(false))
}

fn is_listening(fd: BorrowedFd<'_>) -> bool {
    matches!(getsockopt(&fd, sockopt::AcceptConn), Ok(true))
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

/// The peer and local addresses of a TCP socket.
fn inet_addresses(fd: BorrowedFd<'_>) -> Option<(SocketAddr, SocketAddr)> {
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
fn pipelining_allows_handoff(pending: ffi::ApachePending, has_body: bool) -> Result<(), String> {
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
struct ApacheRequest {
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
    fn current() -> ApacheRequest {
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
    fn has_body(&self) -> bool {
        self.transfer_encoding.is_some()
            || self
                .content_length
                .as_deref()
                .is_some_and(|l| l.trim().parse::<u64>().map_or(true, |n| n > 0))
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
fn check_peer(
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
enum LocalAddress {
    Inet(SocketAddr),
    /// A Unix socket's path (or abstract name, with its leading NUL); empty if unnamed.
    Unix(Vec<u8>),
}

fn local_address(fd: BorrowedFd<'_>) -> Option<LocalAddress> {
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
fn accepted_on(listener: &LocalAddress, conn: &LocalAddress) -> Result<(), String> {
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

/// The worker's copy of the connection, made harmless while the manager owns it.
///
/// `/dev/null` takes the connection's descriptor number, so that whatever the SAPI still
/// writes (php-fpm's `END_REQUEST`) is discarded and its later `close()` closes only that.
/// The original stays reachable through `saved` until the manager has said yes to go, so a
/// failed go can put it back.
/// `/dev/null`, opened once per process (every handoff puts a copy of it over the
/// connection's descriptor number).
fn dev_null() -> Result<&'static std::fs::File, String> {
    static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(null) = NULL.get() {
        return Ok(null);
    }
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    Ok(NULL.get_or_init(|| null))
}

pub struct Neutered<'r> {
    /// The connection's number: /dev/null until restored, open either way.
    fd: BorrowedFd<'r>,
    saved: OwnedFd,
    /// The connection's file status flags before the handoff: `O_NONBLOCK` under mod_php
    /// (APR's timeouts poll), blocking under php-fpm and `php -S`. Not read for a one-way
    /// handoff (`untouched_flags`).
    flags: Option<OFlag>,
    /// Nobody else can have had the connection before a restore (a one-way send that fails
    /// handed nothing over), so its flags are as the SAPI left them: restore keeps them.
    untouched_flags: bool,
    /// `O_CLOEXEC` if the number was close-on-exec (mod_php's client socket is; APR
    /// accepts with `SOCK_CLOEXEC`), else empty. `dup2` clears the flag, so both
    /// replacements use `dup3` with it, and a child the script starts later (`exec`,
    /// `proc_open`, `mail()`) inherits neither the connection nor /dev/null in its place.
    cloexec: OFlag,
}

impl<'r> Neutered<'r> {
    pub fn new(conn: &Connection<'r>) -> Result<Neutered<'r>, String> {
        Self::neuter(conn, false)
    }

    /// For a one-way handoff, whose restore follows only a send that handed nothing over:
    /// the file status flags are neither read nor set (one `fcntl` fewer per handoff).
    pub fn one_way(conn: &Connection<'r>) -> Result<Neutered<'r>, String> {
        Self::neuter(conn, true)
    }

    fn neuter(conn: &Connection<'r>, untouched_flags: bool) -> Result<Neutered<'r>, String> {
        let flags = if untouched_flags {
            None
        } else {
            fcntl(conn.fd.as_raw_fd(), FcntlArg::F_GETFL)
                .ok()
                .map(OFlag::from_bits_retain)
        };
        let cloexec = match fcntl(conn.fd.as_raw_fd(), FcntlArg::F_GETFD) {
            Ok(bits) if FdFlag::from_bits_retain(bits).contains(FdFlag::FD_CLOEXEC) => {
                OFlag::O_CLOEXEC
            }
            _ => OFlag::empty(),
        };
        let saved = conn
            .fd
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?;
        nix::unistd::dup3(
            dev_null()?.as_fd().as_raw_fd(),
            conn.fd.as_raw_fd(),
            cloexec,
        )
        .map_err(|e| format!("dup3: {e}"))?;
        Ok(Neutered {
            fd: conn.fd,
            saved,
            flags,
            untouched_flags,
            cloexec,
        })
    }

    /// The connection itself (a duplicate the worker holds while its descriptor number
    /// is `/dev/null`): what a one-way handoff sends.
    pub fn connection(&self) -> BorrowedFd<'_> {
        self.saved.as_fd()
    }

    /// Puts the real connection back (the manager never started), blocking or not as the
    /// SAPI had it (the manager may have switched the shared file description), and
    /// close-on-exec as it was.
    pub fn restore(self) -> Result<(), String> {
        nix::unistd::dup3(self.saved.as_raw_fd(), self.fd.as_raw_fd(), self.cloexec)
            .map_err(|e| format!("dup3: {e}"))?;
        match self.flags {
            _ if self.untouched_flags => {}
            Some(flags) => {
                let _ = fcntl(self.fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
            }
            None => clear_nonblocking(self.fd),
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
