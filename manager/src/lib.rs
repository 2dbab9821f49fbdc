//! handoff-manager: streams files that PHP workers hand over, so the workers are free at once.
//!
//! A PHP worker running `send_file()` opens the file, plans the response and passes the
//! request's connection and the open file to this process over a Unix `SOCK_SEQPACKET`
//! socket. The pieces, one concept per module:
//!
//! - [`protocol`]: the handoff message, its wire format, the two-phase accept/go handshake
//!   and the only code that touches `SCM_RIGHTS`; used by the manager and the extension.
//! - [`range`] and [`conditional`]: `Range` parsing and the RFC 9110 preconditions, used
//!   by the planner.
//! - [`plan`]: decides the status, the head and the byte range of a download before the
//!   first byte leaves; used by the extension for both the handoff and its in-process
//!   fallback, so both paths send the same response.
//! - [`head`]: renders a planned head as an HTTP/1.1 status line + headers or as a CGI head.
//! - [`fcgi`]: FastCGI record framing (behind nginx and other FastCGI front ends).
//! - [`access_log`]: one JSON line per finished download (bytes, outcome, duration).
//! - [`label`]: the application's labels on a download (`tag`, `rate_group`) and their
//!   validation, shared by the extension and the manager.
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
//! - [`download_loop`]: the download loops, one thread and one mio `Poll` each.
//! - [`stats`] and [`metrics`]: shared counters, the live download list, `/metrics`,
//!   `/status` and `handoff-manager status`.
//! - [`io_class`]: what a failed system call means (retry, would block, peer gone,
//!   error), asked by every loop instead of matching errno by hand.
//! - [`sys`]: the crate's only `unsafe` code (taking ownership of received descriptors).

pub mod access_log;
pub mod completion;
pub mod conditional;
pub mod download;
pub mod download_loop;
pub mod fcgi;
pub mod head;
pub mod io_class;
pub mod join;
pub mod label;
mod listener;
pub mod metrics;
pub mod plan;
pub mod protocol;
pub mod range;
pub mod rate_group;
pub mod sandbox;
pub mod server;
pub mod stats;
mod sys;
