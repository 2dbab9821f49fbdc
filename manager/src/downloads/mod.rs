//! Downloads: running a started download to its end. A download loop owns each download it
//! is given and drives its state machine (head, body by `sendfile` or in FastCGI records,
//! lingering close) under the rates that apply to it; nothing here reads a worker's
//! socket, so the handshake loop depends on downloads and never the other way round.
//!
//! - [`download`]: one connection's state machine, and the check of a received job.
//! - [`fcgi`]: FastCGI record framing (behind nginx and other FastCGI front ends).
//! - [`download_loop`]: the download loops, one thread and one mio `Poll` each, and the
//!   `--max-rate` scheduler.
//! - [`pacing`]: relay pacing: downloads relayed by a web server are fed no faster than
//!   its measured pace (plus headroom), so that a burst of new downloads does not stall it.
//! - [`rate_group`]: token buckets shared by the downloads of one `rate_group`, across
//!   connections and download loops.

pub mod download;
pub mod download_loop;
pub mod fcgi;
pub mod pacing;
pub mod rate_group;
