//! handoff-manager: streams files that PHP workers hand over, so the workers are free at once.
//!
//! A PHP worker running `send_file()` opens the file, plans the response and passes the
//! request's connection and the open file to this process over a Unix `SOCK_SEQPACKET`
//! socket. What the extension shares with the manager (the planner, the head, the wire
//! protocol and its `SCM_RIGHTS` code, the errno classes) is the `handoff_core` crate
//! (`core/`); this crate is the daemon. A download's whole path, worker to client, is drawn
//! in docs/internals.md ("A download's path").
//!
//! The daemon has three roles, one folder each, and imports point one way only:
//! `handoffs` uses `downloads` and `reporting`, `downloads` uses `reporting`, and nothing
//! points back (`scripts/module-cycles.py` checks it). A change to how handoffs are taken
//! cannot reach into a running download, and reporting cannot change what is sent.
//!
//! - [`handoffs`]: taking handoffs. The listening socket and `--takeover`
//!   (`handoffs::listener`), the handshake loop that reads and checks what workers send on
//!   their kept connections, signals and drain, timeouts ([`handoffs::server`]), and the
//!   one-way handoffs that wait for a place under `--max-downloads` with the manager's own
//!   503 / 500 answers ([`handoffs::waiting`]).
//! - [`downloads`]: running downloads. One connection's state machine: head, body by
//!   zero-copy `sendfile`, trailer, lingering close ([`downloads::download`]); FastCGI
//!   record framing ([`downloads::fcgi`]); the download loops, one thread and one mio `Poll`
//!   each, with the `--max-rate` scheduler ([`downloads::download_loop`]); relay pacing
//!   ([`downloads::pacing`]); rate groups shared across loops ([`downloads::rate_group`]).
//! - [`reporting`]: what the manager tells about downloads. How one ended
//!   ([`reporting::outcome`]); counters, histograms and the live list ([`reporting::stats`])
//!   served as `/metrics`, `/status`, `/healthz` ([`reporting::metrics`]); the JSON access
//!   log ([`reporting::access_log`]); completion records POSTed to the application
//!   ([`reporting::completion`]) with range requests joined per tag and file
//!   ([`reporting::join`]).
//!
//! Around the three roles, the daemon's life and its environment:
//!
//! - [`startup`]: everything before the first handoff, in order (systemd's socket, signals,
//!   fd limit, access log, listening socket, privileges and sandbox, download loops,
//!   completion and metrics threads, readiness); it returns the handshake loop.
//! - [`config`]: the daemon's settings, filled by `main.rs` from the command line.
//! - [`error`]: what can stop the manager (start-up failures, the handshake loop's poll).
//! - [`sandbox`]: least privilege after start-up: `--user`, socket group, Landlock.
//! - [`systemd`]: socket activation (a listening socket passed by systemd) and `Type=notify`
//!   readiness.
//! - `sys`: the crate's only `unsafe` code, denied everywhere else (owning accepted and
//!   inherited descriptors, glibc memory tunables, a thread's nice value, `SIOCOUTQ`).

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
