//! Where completion records go (`--on-complete`: a loopback `http://` URL, checked and
//! resolved at start-up, or a Unix socket that speaks HTTP) and one POST there.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{url:?} is not a URL: {source}")]
    Syntax {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{url:?}: only http:// URLs are supported")]
    Scheme { url: String },
    #[error("{url:?}: no host")]
    NoHost { url: String },
    #[error("{url:?}: user names and passwords are not supported")]
    Credentials { url: String },
    #[error("{url:?}: bad port")]
    Port { url: String },
    #[error("{url:?}: cannot resolve the host: {source}")]
    Resolve {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{url:?}: {addr} is not a loopback address; completion records go only to this \
         machine (127.0.0.0/8, ::1, localhost)"
    )]
    NotLocal { url: String, addr: SocketAddr },
    #[error("{url:?}: expected unix:/absolute/path.sock, optionally followed by |/request/path")]
    Unix { url: String },
}

/// How records reach the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Loopback TCP addresses, resolved at start-up.
    Tcp(Vec<SocketAddr>),
    /// A Unix stream socket, e.g. in a volume shared with the receiver's container.
    Unix(PathBuf),
}

/// Where records go: a loopback address, resolved once at start-up (the sandbox may hide
/// `/etc/hosts` later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    target: Target,
    /// The `Host` header: the URL's host, and its port if it named one.
    host: String,
    /// The request target: path and query, percent-encoded.
    path: String,
}

impl Endpoint {
    /// Parses an `http://` URL (WHATWG rules, with the `url` crate: anything that does
    /// not parse is refused, never guessed at) and checks that every address of its host
    /// is a loopback address; or `unix:/path.sock[|/request/path]`, a Unix socket that
    /// speaks HTTP (the request path defaults to `/`).
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        if let Some(rest) = url.strip_prefix("unix:") {
            return Self::parse_unix(url, rest);
        }
        let parsed = url::Url::parse(url).map_err(|source| EndpointError::Syntax {
            url: url.into(),
            source,
        })?;
        if parsed.scheme() != "http" {
            return Err(EndpointError::Scheme { url: url.into() });
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(EndpointError::Credentials { url: url.into() });
        }
        let host = parsed
            .host()
            .ok_or_else(|| EndpointError::NoHost { url: url.into() })?;
        let port = parsed
            .port_or_known_default()
            .filter(|&p| p != 0)
            .ok_or_else(|| EndpointError::Port { url: url.into() })?;
        let addrs: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::from((ip, port))],
            url::Host::Ipv6(ip) => vec![SocketAddr::from((ip, port))],
            url::Host::Domain(name) => (name, port)
                .to_socket_addrs()
                .map_err(|source| EndpointError::Resolve {
                    url: url.into(),
                    source,
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(EndpointError::NoHost { url: url.into() });
        }
        if let Some(&addr) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(EndpointError::NotLocal {
                url: url.into(),
                addr,
            });
        }
        let host_header = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        Ok(Endpoint {
            url: url.into(),
            target: Target::Tcp(addrs),
            host: host_header,
            path,
        })
    }

    fn parse_unix(url: &str, rest: &str) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError::Unix { url: url.into() };
        let (socket, path) = rest.split_once('|').unwrap_or((rest, "/"));
        let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_control() || c == ' ');
        if !socket.starts_with('/') || !clean(socket) || !path.starts_with('/') || !clean(path) {
            return Err(bad());
        }
        Ok(Endpoint {
            url: url.into(),
            target: Target::Unix(PathBuf::from(socket)),
            host: "localhost".into(),
            path: path.into(),
        })
    }
}

pub(super) enum Failure {
    /// Worth another attempt.
    Retry(String),
    /// The endpoint answered with this status: it will not take the record.
    Refused(u16),
}

/// A connection to the receiver, over TCP or a Unix socket.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Connects to the receiver, with the I/O time-outs set.
fn connect(endpoint: &Endpoint) -> io::Result<Box<dyn Conn>> {
    match &endpoint.target {
        Target::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Box::new(s))
        }
        Target::Tcp(addrs) => {
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
    }
}

/// One POST; `Ok` on a 2xx answer. `signature` holds the signing header lines, if any.
pub(super) fn post(
    endpoint: &Endpoint,
    id: &str,
    signature: Option<&str>,
    body: &str,
) -> Result<(), Failure> {
    let retry = |e: io::Error| Failure::Retry(e.to_string());
    let mut stream = connect(endpoint).map_err(retry)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nHandoff-Record-Id: {id}\r\n{}Connection: close\r\n\r\n",
        endpoint.path,
        endpoint.host,
        body.len(),
        signature.unwrap_or("")
    );
    stream.write_all(head.as_bytes()).map_err(retry)?;
    stream.write_all(body.as_bytes()).map_err(retry)?;
    // The status line is all we need; then read the rest (bounded) so that closing does
    // not reset the receiver's connection.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(retry(e)),
        }
    }
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Failure::Retry("no HTTP status line in the answer".into()))?;
    let _ = io::copy(&mut stream.take(64 * 1024), &mut io::sink());
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(Failure::Retry(format!("answered {status}"))),
        _ => Err(Failure::Refused(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Target {
        Target::Tcp(vec![addr.parse().unwrap()])
    }

    #[test]
    fn unix_endpoints_name_an_absolute_socket_and_a_request_path() {
        let e = Endpoint::parse("unix:/run/app/records.sock|/hooks/done.php?x=1").unwrap();
        assert_eq!(e.target, Target::Unix("/run/app/records.sock".into()));
        assert_eq!(e.path, "/hooks/done.php?x=1");
        assert_eq!(e.host, "localhost");
        assert_eq!(Endpoint::parse("unix:/a.sock").unwrap().path, "/");
        for bad in [
            "unix:",
            "unix:a.sock",
            "unix:/a.sock|done.php",
            "unix:/a b.sock",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(EndpointError::Unix { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn loopback_http_urls_only() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hooks/done.php?x=1").unwrap();
        assert_eq!(e.target, tcp("127.0.0.1:8080"));
        assert_eq!(e.path, "/hooks/done.php?x=1");
        assert_eq!(e.host, "127.0.0.1:8080");
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!(e.target, tcp("[::1]:80"));
        assert_eq!(e.path, "/");
        assert!(Endpoint::parse("http://127.0.0.2:9/").is_ok());
        assert!(matches!(
            Endpoint::parse("https://127.0.0.1/"),
            Err(EndpointError::Scheme { .. })
        ));
        assert!(matches!(
            Endpoint::parse("http://192.0.2.1/"),
            Err(EndpointError::NotLocal { .. })
        ));
        assert!(matches!(
            Endpoint::parse("http://[2001:db8::1]:80/"),
            Err(EndpointError::NotLocal { .. })
        ));
        assert!(matches!(
            Endpoint::parse("http://127.0.0.1:0/"),
            Err(EndpointError::Port { .. })
        ));
        assert!(matches!(
            Endpoint::parse("http://user@127.0.0.1/"),
            Err(EndpointError::Credentials { .. })
        ));
        assert!(Endpoint::parse("http:///x").is_err());
        // A space or control character never reaches the request line: it is encoded.
        let e = Endpoint::parse("http://localhost/a b\n").unwrap();
        assert_eq!(e.path, "/a%20b");
        assert_eq!(e.host, "localhost");
    }

    /// A port glued to an IPv6 literal without its colon was once taken for port 80.
    #[test]
    fn urls_that_do_not_parse_are_refused() {
        for bad in [
            "http://[::1]8080/x",
            "http://127.0.0.1:80a/",
            "http://127.0.0.1:65536/",
            "http://[::1/",
            "http://",
            "127.0.0.1:8080/x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} was accepted");
        }
        let e = Endpoint::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(e.target, tcp("[::1]:8080"));
        assert_eq!(e.host, "[::1]:8080");
    }
}
