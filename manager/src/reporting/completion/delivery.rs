//! The delivery thread: POSTs the queued records in order, retries a failed delivery with
//! exponential back-off (at most [`MAX_ATTEMPTS`] attempts in all), signs each attempt
//! anew, and drops (and counts) what the endpoint refuses or never takes.

use std::time::{Duration, SystemTime};

use log::debug;

use super::endpoint::{post, Failure};
use super::{Completions, Endpoint, Record, Secret, MAX_ATTEMPTS};
use crate::reporting::stats::Counters;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Completions {
    pub(super) fn deliver_forever(&self, endpoint: &Endpoint, secret: Option<&Secret>) {
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
