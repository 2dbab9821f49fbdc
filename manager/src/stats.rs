//! Counters shared by the handshake loop and the download loops, and the live list of
//! downloads, for the shutdown summary, `/metrics` and `handoff-manager status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use handoff_core::protocol::{FallbackCause, Fallbacks};

/// Monotonic counters and the running-download gauge; updated with relaxed atomics
/// (each is an independent count, read only for reporting).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Refusals because `--max-downloads` downloads were running.
    pub refused_full: AtomicU64,
    /// Refused one-way handoffs whose clients got a response written by the manager (503
    /// or 500).
    pub refused_answered: AtomicU64,
    pub dropped_before_go: AtomicU64,
    pub complete: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Downloads running now.
    pub active: AtomicU64,
    /// Requests the workers served themselves, as they reported with their next handoff,
    /// per [`FallbackCause`].
    pub fallbacks_reported: [AtomicU64; FallbackCause::COUNT],
    /// Completion records (`--on-complete`) delivered, dropped (queue full or delivery
    /// given up) and retried (each failed attempt that is tried again).
    pub records_delivered: AtomicU64,
    pub records_dropped: AtomicU64,
    pub records_retried: AtomicU64,
    /// Rate groups with running downloads (a gauge).
    pub rate_groups: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds a worker's fallback report.
    pub fn add_fallbacks(&self, report: &Fallbacks) {
        for (counter, &n) in self.fallbacks_reported.iter().zip(report) {
            Self::add(counter, u64::from(n));
        }
    }

    /// The reported fallbacks: each cause's label and count.
    pub fn fallbacks(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FallbackCause::ALL
            .into_iter()
            .map(|c| (c.label(), Self::get(&self.fallbacks_reported[c.index()])))
    }

    /// Prometheus text exposition of every counter.
    pub fn prometheus(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 13] = [
            (
                "handoff_handoffs_accepted_total",
                "counter",
                "Handoffs accepted and started.",
                &self.accepted,
            ),
            (
                "handoff_handoffs_refused_total",
                "counter",
                "Handoffs refused (malformed, not allowed, full, shutting down).",
                &self.refused,
            ),
            (
                "handoff_handoffs_refused_full_total",
                "counter",
                "Handoffs refused at --max-downloads.",
                &self.refused_full,
            ),
            (
                "handoff_handoffs_refused_answered_total",
                "counter",
                "Refused one-way handoffs answered by the manager (503 at capacity, 500 invalid).",
                &self.refused_answered,
            ),
            (
                "handoff_handoffs_dropped_before_go_total",
                "counter",
                "Jobs dropped because the worker left before go.",
                &self.dropped_before_go,
            ),
            (
                "handoff_downloads_complete_total",
                "counter",
                "Downloads that sent every planned byte.",
                &self.complete,
            ),
            (
                "handoff_downloads_failed_total",
                "counter",
                "Downloads aborted, timed out or truncated.",
                &self.failed,
            ),
            (
                "handoff_bytes_sent_total",
                "counter",
                "Body bytes sent by finished downloads.",
                &self.bytes_sent,
            ),
            (
                "handoff_downloads_active",
                "gauge",
                "Downloads running now.",
                &self.active,
            ),
            (
                "handoff_records_delivered_total",
                "counter",
                "Completion records the --on-complete endpoint accepted.",
                &self.records_delivered,
            ),
            (
                "handoff_records_dropped_total",
                "counter",
                "Completion records dropped (queue full, endpoint refused, attempts used up).",
                &self.records_dropped,
            ),
            (
                "handoff_records_retried_total",
                "counter",
                "Completion record deliveries that failed and were tried again.",
                &self.records_retried,
            ),
            (
                "handoff_rate_groups",
                "gauge",
                "Rate groups (send_file() rate_group) with running downloads.",
                &self.rate_groups,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                Self::get(value)
            ));
        }
        let name = "handoff_fallbacks_reported_total";
        out.push_str(&format!(
            "# HELP {name} Requests PHP workers served themselves instead of handing off, \
             by cause, as reported with their next handoff.\n# TYPE {name} counter\n"
        ));
        for (cause, n) in self.fallbacks() {
            out.push_str(&format!("{name}{{cause=\"{cause}\"}} {n}\n"));
        }
        out
    }
}

/// One running download as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub client: String,
    pub file: String,
    /// The script's `tag` option (empty: none).
    pub tag: String,
    pub status: u16,
    pub sent: u64,
    pub planned: u64,
    pub elapsed_ms: u64,
}

/// The running downloads of one download loop, republished every tick.
#[derive(Debug, Default)]
pub struct Board {
    pub downloads: Mutex<Vec<Snapshot>>,
}

impl Board {
    pub fn publish(&self, list: Vec<Snapshot>) {
        if let Ok(mut d) = self.downloads.lock() {
            *d = list;
        }
    }

    pub fn read(&self) -> Vec<Snapshot> {
        self.downloads.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

/// `/status` as JSON: totals and the running downloads.
pub fn status_json(counters: &Counters, downloads: &[Snapshot]) -> String {
    let list: Vec<serde_json::Value> = downloads
        .iter()
        .map(|s| {
            serde_json::json!({
                "client": s.client,
                "file": s.file,
                "tag": (!s.tag.is_empty()).then_some(s.tag.as_str()),
                "status": s.status,
                "sent": s.sent,
                "planned": s.planned,
                "elapsed_ms": s.elapsed_ms,
            })
        })
        .collect();
    serde_json::json!({
        "active": Counters::get(&counters.active),
        "accepted": Counters::get(&counters.accepted),
        "refused": Counters::get(&counters.refused),
        "complete": Counters::get(&counters.complete),
        "failed": Counters::get(&counters.failed),
        "bytes_sent": Counters::get(&counters.bytes_sent),
        "fallbacks_reported": counters
            .fallbacks()
            .map(|(cause, n)| (cause.to_string(), serde_json::Value::from(n)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "downloads": list,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_value() {
        let c = Counters::default();
        Counters::add(&c.accepted, 3);
        let text = c.prometheus();
        assert!(text.contains(
            "# TYPE handoff_handoffs_accepted_total counter\nhandoff_handoffs_accepted_total 3\n"
        ));
        assert!(text.contains("# TYPE handoff_downloads_active gauge\n"));
        c.add_fallbacks(&[2, 0, 0, 1, 0]);
        c.add_fallbacks(&[1, 0, 0, 0, 0]);
        let text = c.prometheus();
        assert!(text.contains("\nhandoff_fallbacks_reported_total{cause=\"unreachable\"} 3\n"));
        assert!(text.contains("\nhandoff_fallbacks_reported_total{cause=\"gone_before_go\"} 1\n"));
        assert!(text.contains("\nhandoff_fallbacks_reported_total{cause=\"refused\"} 0\n"));
    }

    #[test]
    fn status_json_lists_downloads() {
        let c = Counters::default();
        let s = Snapshot {
            client: "c".into(),
            file: "f".into(),
            tag: "t:1".into(),
            status: 200,
            sent: 5,
            planned: 10,
            elapsed_ms: 7,
        };
        let v: serde_json::Value = serde_json::from_str(&status_json(&c, &[s])).unwrap();
        assert_eq!(v["downloads"][0]["planned"], 10);
        assert_eq!(v["downloads"][0]["tag"], "t:1");
        assert_eq!(v["active"], 0);
    }
}
