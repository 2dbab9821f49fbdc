//! The download loops' side of completion records: ids, the join fields, and a bounded
//! queue that never makes a download loop wait (a full queue drops the record and counts
//! it).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use log::warn;

use super::{Completions, Record, Settings};
use crate::reporting::join::{FileId, Joined, Joins, RangeSet};
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Counters;

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

    pub(super) fn dropped(&self, record: &Record, why: &str) {
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

    pub(super) fn pop(&self) -> Option<Record> {
        let mut queue = self.queue.lock().ok()?;
        loop {
            if let Some(r) = queue.pop_front() {
                return Some(r);
            }
            queue = self.ready.wait(queue).ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
