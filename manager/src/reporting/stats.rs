//! Counters shared by the handshake loop and the download loops, and the live list of
//! downloads, for the shutdown summary, `/metrics` and `handoff-manager status`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use handoff_core::protocol::{FallbackCause, Fallbacks};

use crate::reporting::outcome::Outcome;

/// Upper bounds (seconds) of every histogram's buckets: from 100 µs (a handoff) to an
/// hour (a download).
pub const BUCKETS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A Prometheus histogram of durations over [`BUCKETS`], updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the exposition (`_bucket`, `_sum`, `_count`) of histogram `name`.
    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, count) in self.counts.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            match BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

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
    /// Downloads that ended, by [`Outcome::index`].
    pub outcomes: [AtomicU64; Outcome::LABELS.len()],
    /// Body bytes, counted as they are written.
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
    /// From a worker's job to its go, as the manager sees it.
    pub handoff_seconds: Histogram,
    /// From go to the first byte of the response written.
    pub first_byte_seconds: Histogram,
    /// From go to the end of the download, whatever its outcome.
    pub download_seconds: Histogram,
    /// The manager stopped taking handoffs (SIGTERM, takeover) and finishes its downloads.
    pub draining: AtomicBool,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a download that ended, under its outcome (and as complete or failed).
    pub fn count_outcome(&self, outcome: &Outcome) {
        Self::add(&self.outcomes[outcome.index()], 1);
        if *outcome == Outcome::Complete {
            Self::add(&self.complete, 1);
        } else {
            Self::add(&self.failed, 1);
        }
    }

    /// The outcomes and how many downloads ended with each.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Outcome::LABELS
            .into_iter()
            .zip(&self.outcomes)
            .map(|(label, n)| (label, Self::get(n)))
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
        let rows: [(&str, &str, &str, &AtomicU64); 12] = [
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
                "handoff_bytes_sent_total",
                "counter",
                "Body bytes sent, counted as they are written (running downloads included).",
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
        let name = "handoff_build_info";
        let _ = writeln!(
            out,
            "# HELP {name} The running manager's version (always 1).\n# TYPE {name} gauge\n\
             {name}{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
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
        let name = "handoff_downloads_failed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Downloads that did not send every planned byte, by outcome.\n\
             # TYPE {name} counter"
        );
        for (outcome, n) in self.outcomes().skip(1) {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {n}");
        }
        let name = "handoff_draining";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while the manager takes no new handoffs and finishes its \
             downloads.\n# TYPE {name} gauge\n{name} {}",
            u8::from(self.draining.load(Ordering::Relaxed))
        );
        self.handoff_seconds.render(
            "handoff_handoff_seconds",
            "From a job's arrival to its start, as the manager sees it: a confirmed handoff's \
             wait for the worker's go, a one-way handoff's wait for a place under --max-downloads.",
            &mut out,
        );
        self.first_byte_seconds.render(
            "handoff_first_byte_seconds",
            "From the worker's go to the first byte of the response written.",
            &mut out,
        );
        self.download_seconds.render(
            "handoff_download_seconds",
            "From the worker's go to the end of the download, whatever its outcome.",
            &mut out,
        );
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
        "outcomes": counters
            .outcomes()
            .map(|(outcome, n)| (outcome.to_string(), serde_json::Value::from(n)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "draining": counters.draining.load(Ordering::Relaxed),
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
    fn histograms_are_cumulative_with_sum_and_count() {
        let c = Counters::default();
        c.first_byte_seconds.observe(Duration::from_micros(300));
        c.first_byte_seconds.observe(Duration::from_secs(2));
        c.first_byte_seconds.observe(Duration::from_secs(7200));
        let text = c.prometheus();
        for line in [
            "# TYPE handoff_first_byte_seconds histogram\n",
            "\nhandoff_first_byte_seconds_bucket{le=\"0.00025\"} 0\n",
            "\nhandoff_first_byte_seconds_bucket{le=\"0.0005\"} 1\n",
            "\nhandoff_first_byte_seconds_bucket{le=\"2.5\"} 2\n",
            "\nhandoff_first_byte_seconds_bucket{le=\"3600\"} 2\n",
            "\nhandoff_first_byte_seconds_bucket{le=\"+Inf\"} 3\n",
            "\nhandoff_first_byte_seconds_sum 7202.0003\n",
            "\nhandoff_first_byte_seconds_count 3\n",
            "\nhandoff_handoff_seconds_count 0\n",
            "\nhandoff_download_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(text.contains(&format!(
            "\nhandoff_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
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
