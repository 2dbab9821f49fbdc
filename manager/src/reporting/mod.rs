//! Reporting: what the manager tells about the downloads it ran. Every module here only
//! records or publishes; none of them moves a byte of a download, so the download loops
//! depend on reporting and never the other way round.
//!
//! - [`outcome`]: how a download ended, and the one word every report uses for it.
//! - [`stats`] and [`metrics`]: shared counters and histograms, the live download list,
//!   `/metrics`, `/status`, `/healthz` and `handoff-manager status`.
//! - [`access_log`]: one JSON line per finished download (bytes, outcome, duration).
//! - [`completion`]: completion records POSTed to the application's local endpoint
//!   (`--on-complete`) from a bounded queue by a delivery thread.
//! - [`join`]: the union of byte ranges delivered per (tag, file), so that range requests
//!   that together cover a file count as one complete download.

pub mod access_log;
pub mod completion;
pub mod join;
pub mod metrics;
pub mod outcome;
pub mod stats;
