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
//!
//! The parts: `endpoint.rs` (where records go, and one POST), `secret.rs` (signing),
//! `queue.rs` (the download loops' side: ids, join fields, the bounded queue) and
//! `delivery.rs` (the thread that POSTs, with retries and back-off).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use crate::reporting::join::Joins;
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Counters;

mod delivery;
mod endpoint;
mod queue;
mod secret;

pub use endpoint::{Endpoint, EndpointError};
pub use secret::{Secret, SecretError};

/// Deliveries of one record, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
