//! Completion records: one JSON object per finished download, POSTed to the application's
//! own endpoint (`--on-complete http://127.0.0.1/...`, or `unix:/path/app.sock|/done.php`
//! for a receiver in another container that shares a volume), so that it learns whether a
//! user got the file without parsing logs.
//!
//! - With `--on-complete-secret FILE`, every POST carries `Handoff-Timestamp` (Unix
//!   seconds at sending) and `Handoff-Signature: sha256=HEX`, the HMAC-SHA256 of
//!   `TIMESTAMP.BODY` under the secret: the receiver can tell a record from the manager
//!   from a forged one, and a stale timestamp or an `id` seen before from a replay
//!   (`php/src/CompletionRecord.php` checks all three). A retry is signed anew.
//!
//! Guarantees:
//! - A download loop never waits for delivery. It only pushes the record onto a bounded
//!   queue (a short lock); a separate thread delivers. When the queue is full the record is
//!   dropped, counted (`handoff_records_dropped_total`) and logged.
//! - The delivery thread POSTs records in order. A failed delivery (no connection, time-out,
//!   a 5xx, 408 or 429 answer) is retried with exponential back-off from 100 ms to 5 s, at
//!   most [`MAX_ATTEMPTS`] times in all (each retry counted in
//!   `handoff_records_retried_total`), then dropped and counted. Any other non-2xx answer
//!   means the endpoint will not take it: dropped at once.
//! - Each record has a unique `id` (also sent as the `Handoff-Record-Id` header): a retry
//!   may repeat a delivery whose answer was lost, and the receiver deduplicates by it.
//! - Only loopback endpoints are accepted, checked at start-up ([`Endpoint::parse`], with
//!   the `url` crate's WHATWG parser): the records are for the application on this
//!   machine, never for the network.
//! - Records still queued when the manager exits are lost.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};

use crate::reporting::join::{FileId, Joined, Joins, RangeSet};
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Counters;

/// Deliveries of one record, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
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

/// The key of `--on-complete-secret`: the file's bytes without a final newline.
#[derive(Clone)]
pub struct Secret(Arc<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path:?}: the secret must be at least 16 bytes (it is {len})")]
    Short { path: PathBuf, len: usize },
}

impl Secret {
    /// Reads the secret at start-up, before the sandbox closes the filesystem.
    pub fn read(path: &std::path::Path) -> Result<Secret, SecretError> {
        let mut key = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.into(),
            source,
        })?;
        while key.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            key.pop();
        }
        if key.len() < 16 {
            return Err(SecretError::Short {
                path: path.into(),
                len: key.len(),
            });
        }
        Ok(Secret(Arc::new(key)))
    }

    /// `sha256=HEX`: HMAC-SHA256 of `TIMESTAMP.BODY`.
    pub fn sign(&self, timestamp: u64, body: &str) -> String {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::from("sha256=");
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// How `--on-complete` was configured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: Endpoint,
    /// Signs every record (`--on-complete-secret`).
    pub secret: Option<Secret>,
    /// Records that may wait for delivery; more are dropped.
    pub queue: usize,
    /// How long range requests of one tag and file are joined (`--join-window`).
    pub join_window: Duration,
    /// Most (tag, file) unions kept (`--join-entries`).
    pub join_entries: usize,
}

/// One finished download as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unique per record: the manager's start time and a sequence number.
    pub id: String,
    pub tag: Option<String>,
    /// The file name as the script passed it.
    pub file: String,
    pub status: u16,
    /// The `Content-Range` sent, if any.
    pub range: Option<String>,
    /// The file's byte ranges this response carried, as `[first, last]` (inclusive, like
    /// `Content-Range`), in order.
    pub ranges: Vec<(u64, u64)>,
    pub bytes_planned: u64,
    pub bytes_sent: u64,
    pub outcome: Outcome,
    pub started: SystemTime,
    pub duration: Duration,
    pub client: String,
    /// The file's size, if it could be inspected.
    pub file_size: Option<u64>,
    /// Bytes of the file delivered completely under this tag within the join window
    /// (this download's own, without a tag).
    pub joined_bytes: u64,
    /// Those bytes are the whole file.
    pub file_complete: bool,
}

impl Record {
    pub fn to_json(&self) -> String {
        let ranges: Vec<[u64; 2]> = self.ranges.iter().map(|&(a, b)| [a, b]).collect();
        serde_json::json!({
            "id": self.id,
            "tag": self.tag,
            "file": self.file,
            "status": self.status,
            "range": self.range,
            "ranges": ranges,
            "bytes_planned": self.bytes_planned,
            "bytes_sent": self.bytes_sent,
            "outcome": self.outcome.label(),
            "reason": self.outcome.reason(),
            "start": crate::reporting::access_log::rfc3339(self.started),
            "duration_ms": self.duration.as_millis() as u64,
            "client": self.client,
            "file_size": self.file_size,
            "joined_bytes": self.joined_bytes,
            "file_complete": self.file_complete,
        })
        .to_string()
    }
}

/// The download loops' side: makes ids and queues records for the delivery thread.
pub struct Completions {
    queue: Mutex<VecDeque<Record>>,
    ready: Condvar,
    capacity: usize,
    counters: Arc<Counters>,
    id_prefix: String,
    next_id: AtomicU64,
    joins: Mutex<Joins>,
}

impl Completions {
    /// Starts the delivery thread.
    pub fn start(settings: Settings, counters: Arc<Counters>) -> io::Result<Arc<Completions>> {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let completions = Arc::new(Completions {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: settings.queue.max(1),
            counters,
            id_prefix: format!("{:x}-{:x}", started.as_nanos(), std::process::id()),
            next_id: AtomicU64::new(1),
            joins: Mutex::new(Joins::new(settings.join_window, settings.join_entries)),
        });
        let queue = completions.clone();
        let endpoint = settings.endpoint;
        let secret = settings.secret;
        std::thread::Builder::new()
            .name("on-complete".into())
            .spawn(move || queue.deliver_forever(&endpoint, secret.as_ref()))?;
        Ok(completions)
    }

    /// A new unique record id.
    pub fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    /// Fills in the record's join fields from the download's file and ranges (offset,
    /// length), then queues it. Only complete 200/206 responses add to a union.
    pub fn report(&self, mut record: Record, file: Option<FileId>, ranges: &[(u64, u64)]) {
        if let Some(file) = file {
            let delivered =
                record.outcome == Outcome::Complete && matches!(record.status, 200 | 206);
            let joined = match &record.tag {
                Some(tag) => match self.joins.lock() {
                    Ok(mut joins) => joins.add(tag, file, ranges, delivered, Instant::now()),
                    Err(_) => Joined::default(),
                },
                None if delivered => {
                    let mut own = RangeSet::default();
                    for &(offset, length) in ranges {
                        own.insert(offset, offset.saturating_add(length));
                    }
                    Joined {
                        bytes: own.covered(),
                        file_complete: own.covers(file.size),
                    }
                }
                None => Joined::default(),
            };
            record.file_size = Some(file.size);
            record.joined_bytes = joined.bytes;
            record.file_complete = joined.file_complete;
        }
        self.push(record);
    }

    /// Queues a record; never blocks beyond a short lock. A full queue drops it.
    pub fn push(&self, record: Record) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        if queue.len() >= self.capacity {
            drop(queue);
            self.dropped(&record, "the queue is full");
            return;
        }
        queue.push_back(record);
        drop(queue);
        self.ready.notify_one();
    }

    fn dropped(&self, record: &Record, why: &str) {
        let n = self
            .counters
            .records_dropped
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // Logged, but not once per record when an endpoint is down for a day.
        if n.is_power_of_two() || n.is_multiple_of(1000) {
            warn!(
                "completion record {} (tag {:?}) dropped: {why}; {n} dropped so far",
                record.id,
                record.tag.as_deref().unwrap_or("")
            );
        }
    }

    fn pop(&self) -> Option<Record> {
        let mut queue = self.queue.lock().ok()?;
        loop {
            if let Some(r) = queue.pop_front() {
                return Some(r);
            }
            queue = self.ready.wait(queue).ok()?;
        }
    }

    fn deliver_forever(&self, endpoint: &Endpoint, secret: Option<&Secret>) {
        while let Some(record) = self.pop() {
            self.deliver(endpoint, secret, &record);
        }
    }

    fn deliver(&self, endpoint: &Endpoint, secret: Option<&Secret>, record: &Record) {
        let body = record.to_json();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let signature = secret.map(|s| {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                format!(
                    "Handoff-Timestamp: {now}\r\nHandoff-Signature: {}\r\n",
                    s.sign(now, &body)
                )
            });
            match post(endpoint, &record.id, signature.as_deref(), &body) {
                Ok(()) => {
                    Counters::add(&self.counters.records_delivered, 1);
                    return;
                }
                Err(Failure::Refused(status)) => {
                    self.dropped(record, &format!("{} answered {status}", endpoint.url));
                    return;
                }
                Err(Failure::Retry(why)) if attempt < MAX_ATTEMPTS => {
                    debug!(
                        "completion record {}: {why}; retry in {backoff:?}",
                        record.id
                    );
                    Counters::add(&self.counters.records_retried, 1);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(Failure::Retry(why)) => {
                    self.dropped(
                        record,
                        &format!("{}: {why} ({MAX_ATTEMPTS} attempts)", endpoint.url),
                    );
                }
            }
        }
    }
}

enum Failure {
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
fn post(endpoint: &Endpoint, id: &str, signature: Option<&str>, body: &str) -> Result<(), Failure> {
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

    /// The signature is HMAC-SHA256 of `TIMESTAMP.BODY`; the expected value was computed
    /// with Python's `hmac` module.
    #[test]
    fn signatures_depend_on_key_timestamp_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let key = Secret::read(&path).unwrap();
        let sig = key.sign(1_700_000_000, "{}");
        assert_eq!(
            sig,
            "sha256=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
        assert_ne!(sig, key.sign(1_700_000_001, "{}"));
        assert_ne!(sig, key.sign(1_700_000_000, "{ }"));
        std::fs::write(&path, "0123456789abcdeF").unwrap();
        assert_ne!(sig, Secret::read(&path).unwrap().sign(1_700_000_000, "{}"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            Secret::read(&path),
            Err(SecretError::Short { len: 5, .. })
        ));
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

    #[test]
    fn a_record_is_one_json_object_with_every_field() {
        let r = Record {
            id: "a-1".into(),
            tag: Some("order:17/user:5".into()),
            file: "/srv/a.pdf".into(),
            status: 206,
            range: Some("bytes 0-9/100".into()),
            ranges: vec![(0, 9)],
            bytes_planned: 10,
            bytes_sent: 10,
            outcome: Outcome::TimedOut,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_250),
            duration: Duration::from_millis(20),
            client: "203.0.113.9".into(),
            file_size: Some(100),
            joined_bytes: 10,
            file_complete: false,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["tag"], "order:17/user:5");
        assert_eq!(v["ranges"], serde_json::json!([[0, 9]]));
        assert_eq!(v["outcome"], "timed_out");
        assert_eq!(v["start"], "2000-02-29T00:00:00.250Z");
        assert_eq!(v["duration_ms"], 20);
        assert_eq!(v["client"], "203.0.113.9");
        assert_eq!(v["file_size"], 100);
        assert_eq!(v["joined_bytes"], 10);
        assert_eq!(v["file_complete"], false);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let counters = Arc::new(Counters::default());
        // No delivery thread: nothing leaves the queue.
        let c = Completions {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: 2,
            counters: counters.clone(),
            id_prefix: "t".into(),
            next_id: AtomicU64::new(1),
            joins: Mutex::new(Joins::new(Duration::from_secs(60), 10)),
        };
        let record = |id: String| Record {
            id,
            tag: None,
            file: String::new(),
            status: 200,
            range: None,
            ranges: Vec::new(),
            bytes_planned: 0,
            bytes_sent: 0,
            outcome: Outcome::Complete,
            started: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            client: String::new(),
            file_size: None,
            joined_bytes: 0,
            file_complete: false,
        };
        for _ in 0..5 {
            c.push(record(c.next_id()));
        }
        assert_eq!(Counters::get(&counters.records_dropped), 3);
        assert_eq!(c.pop().map(|r| r.id), Some("t-1".into()));
        assert_eq!(c.pop().map(|r| r.id), Some("t-2".into()));
    }
}
