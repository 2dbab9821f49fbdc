//! handoff-core: what the PHP extension and handoff-manager share, and nothing else. It is
//! linked into every PHP worker, so it depends only on what both sides need (no daemon,
//! command-line or logging machinery).
//!
//! - [`plan`]: decides the status, the head and the byte range of a download before the
//!   first byte leaves; the extension plans, and both the manager and the in-process
//!   fallback execute the same plan, so both paths send the same response.
//! - [`range`] and [`conditional`]: `Range` parsing and the RFC 9110 preconditions, used
//!   by the planner.
//! - [`head`]: a planned head rendered as an HTTP/1.1 status line + headers or as a CGI
//!   head.
//! - [`label`]: the application's labels on a download (`tag`, `rate_group`) and their
//!   validation.
//! - [`protocol`]: the handoff messages and their wire format, and each side's part of the
//!   exchange in a file of its own: the worker's [`protocol::Channel`] (one-way) and
//!   [`protocol::Offer`] (the two-phase accept/go handshake), the manager's
//!   [`protocol::recv_job`].
//! - [`bucket`]: the token bucket every rate is kept with (the fallback's `rate`, the
//!   manager's per-download rates, rate groups, `--max-rate` and relay pacing).
//! - [`io_class`]: what a failed system call means (retry, would block, peer gone, error).
//! - `sys`: the crate's only `unsafe` code: receiving a message with its `SCM_RIGHTS`
//!   descriptors, each owned at once.
//!
//! docs/internals.md explains the facts behind the protocol and the handshake.

// `unsafe` only in `sys`.
#![deny(unsafe_code)]

pub mod bucket;
pub mod conditional;
pub mod head;
pub mod io_class;
pub mod label;
pub mod plan;
pub mod protocol;
pub mod range;
mod sys;
