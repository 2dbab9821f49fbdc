//! Completion records: one JSON object per finished download, POSTed to the application's
//! own endpoint (`--on-complete http://127.0.0.1/...`), so that it learns whether a user
//! got the file without parsing logs.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};

use crate::download::Outcome;
use crate::join::{FileId, Joined, Joins, RangeSet};
use crate::stats::Counters;

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
}

/// Where records go: a loopback address, resolved once at start-up (the sandbox may hide
/// `/etc/hosts` later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    addrs: Vec<SocketAddr>,
    /// The `Host` header: the URL's host, and its port if it named one.
    host: String,
    /// The request target: path and query, percent-encoded.
    path: String,
}

impl Endpoint {
    /// Parses an `http://` URL (WHATWG rules, with the `url` crate: anything that does
    /// not parse is refused, never guessed at) and checks that every address of its host
    /// is a loopback address.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
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
            addrs,
            host: host_header,
            path,
        })
    }
}

/// How `--on-complete` was configured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: Endpoint,
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
            "start": crate::access_log::rfc3339(self.started),
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
        std::thread::Builder::new()
            .name("on-complete".into())
            .spawn(move || queue.deliver_forever(&endpoint))?;
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

    fn deliver_forever(&self, endpoint: &Endpoint) {
        while let Some(record) = self.pop() {
            self.deliver(endpoint, &record);
        }
    }

    fn deliver(&self, endpoint: &Endpoint, record: &Record) {
        let body = record.to_json();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            match post(endpoint, &record.id, &body) {
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

/// One POST; `Ok` on a 2xx answer.
fn post(endpoint: &Endpoint, id: &str, body: &str) -> Result<(), Failure> {
    let retry = |e: io::Error| Failure::Retry(e.to_string());
    let mut last = None;
    let mut stream = None;
    for addr in &endpoint.addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(Failure::Retry(
            last.map_or_else(|| "no address".into(), |e| e.to_string()),
        ));
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(retry)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(retry)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nHandoff-Record-Id: {id}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.host,
        body.len()
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

    #[test]
    fn loopback_http_urls_only() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hooks/done.php?x=1").unwrap();
        assert_eq!(e.addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(e.path, "/hooks/done.php?x=1");
        assert_eq!(e.host, "127.0.0.1:8080");
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!(e.addrs, vec!["[::1]:80".parse().unwrap()]);
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
        assert_eq!(e.addrs, vec!["[::1]:8080".parse().unwrap()]);
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
