//! Reporting: what the manager tells about the downloads it ran. Every module here only
//! records or publishes; none of them moves a byte of a download, so the download loops
//! depend on reporting and never the other way round.

pub mod access_log;
pub mod completion;
pub mod join;
pub mod metrics;
pub mod outcome;
pub mod stats;
