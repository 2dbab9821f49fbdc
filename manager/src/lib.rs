//! handoff-manager: streams files that PHP workers hand over, so the workers are free at once.
//!
//! A PHP worker running `send_file()` opens the file, plans the response and passes the
//! request's connection and the open file to this process over a Unix `SOCK_SEQPACKET`
//! socket. What the extension shares with the manager (the planner, the head, the wire
//! protocol and its `SCM_RIGHTS` code, the errno classes) is the `handoff_core` crate
//! (`core/`); this crate is the daemon. The pieces, one concept per module:
//!
//! - [`fcgi`]: FastCGI record framing (behind nginx and other FastCGI front ends).
//! - [`access_log`]: one JSON line per finished download (bytes, outcome, duration).
//! - [`completion`]: completion records POSTed to the application's local endpoint
//!   (`--on-complete`) from a bounded queue by a delivery thread.
//! - [`join`]: the union of byte ranges delivered per (tag, file), so that range requests
//!   that together cover a file count as one complete download.
//! - [`rate_group`]: token buckets shared by the downloads of one `rate_group`, across
//!   connections and download loops.
//! - [`download`]: one connection's state machine: head, body by zero-copy `sendfile`,
//!   trailer, lingering close.
//! - [`sandbox`]: least privilege after start-up: `--user`, socket group, Landlock.
//! - [`server`]: the handshake loop: accepts handoffs, checks them, hands each started
//!   download to a download loop; signals and shutdown.
//! - `listener`: the listening socket, `--takeover` of a running manager's socket path,
//!   and removing the socket file at shutdown.
//! - [`pacing`]: relay pacing: downloads relayed by a web server are fed no faster than
//!   its measured pace (plus headroom), so that a burst of new downloads does not stall it.
//! - [`waiting`]: one-way handoffs waiting for a place under `--max-downloads`, smallest
//!   first, and the 503 / 500 responses the manager writes when it must refuse one.
//! - [`download_loop`]: the download loops, one thread and one mio `Poll` each.
//! - [`stats`] and [`metrics`]: shared counters, the live download list, `/metrics`,
//!   `/status` and `handoff-manager status`.
//! - [`systemd`]: socket activation (a listening socket passed by systemd) and `Type=notify`
//!   readiness.
//! - [`sys`]: the crate's only `unsafe` code (taking ownership of accepted descriptors,
//!   glibc memory tunables).

#![deny(unsafe_code)]

pub mod config;
pub mod downloads;
pub mod error;
pub mod handoffs;
pub mod reporting;
pub mod sandbox;
pub mod startup;
#[allow(unsafe_code)]
mod sys;
pub mod systemd;
