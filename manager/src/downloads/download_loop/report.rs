//! What a download loop tells about its downloads: the live list for `/status`, and at the
//! end of each download the log line, the counters and histograms, the access log entry and
//! the completion record.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::info;
use mio::unix::SourceFd;

use super::Loop;
use crate::reporting::access_log::Entry;
use crate::reporting::completion::Record;
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Snapshot;

impl Loop {
    pub(super) fn publish(&self, now: Instant) {
        let list = self
            .downloads
            .values()
            .map(|d| Snapshot {
                client: d.client.clone(),
                file: d.file_name.clone(),
                tag: d.tag.clone(),
                status: d.status,
                sent: d.sent,
                planned: d.planned,
                elapsed_ms: now.duration_since(d.started).as_millis() as u64,
            })
            .collect();
        self.board.publish(list);
    }

    /// Removes a download, closing its descriptors, and logs it.
    pub(super) fn finish(&mut self, id: usize, outcome: Outcome) {
        let Some(d) = self.downloads.remove(&id) else {
            return;
        };
        self.wanting.remove(&id);
        if let Some(pacer) = &mut self.pacer {
            pacer.forget(id);
        }
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&d.socket().as_raw_fd()));
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.counters.count_outcome(&outcome);
        let duration = d.started.elapsed();
        self.counters.download_seconds.observe(duration);
        if let Some(first) = d.first_byte() {
            self.counters
                .first_byte_seconds
                .observe(first.duration_since(d.started));
        }
        info!(
            "download client={:?} file={:?} status={} bytes={} planned={} {} duration_ms={}",
            d.client,
            d.file_name,
            d.status,
            d.sent,
            d.planned,
            outcome,
            duration.as_millis()
        );
        if let Ok(mut log) = self.access_log.lock() {
            log.write(&Entry {
                client: &d.client,
                file: &d.file_name,
                tag: (!d.tag.is_empty()).then_some(d.tag.as_str()),
                status: d.status,
                range: d.range.as_deref(),
                bytes_sent: d.sent,
                bytes_planned: d.planned,
                outcome: &outcome,
                duration,
            });
        }
        if let Some(completions) = &self.completions {
            let record = Record {
                id: completions.next_id(),
                tag: (!d.tag.is_empty()).then(|| d.tag.clone()),
                file: d.file_name.clone(),
                status: d.status,
                range: d.range.clone(),
                ranges: d
                    .file_ranges
                    .iter()
                    .map(|&(offset, length)| (offset, offset + length - 1))
                    .collect(),
                bytes_planned: d.planned,
                bytes_sent: d.sent,
                outcome,
                started: d.started_at,
                duration,
                client: d.client.clone(),
                file_size: None,
                joined_bytes: 0,
                file_complete: false,
            };
            completions.report(record, d.file_id, &d.file_ranges);
        }
    }
}
