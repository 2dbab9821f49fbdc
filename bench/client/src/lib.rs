//! handoff-bench: the load client of `bench/run.sh`.
//!
//! No Debian tool reads thousands of connections at a fixed, slow rate, and wrk reads 8 KiB
//! at a time, which caps it below what sendfile over loopback delivers; so this crate does
//! both with one small engine. The pieces:
//!
//! - [`http`]: the GET request and the parsing of a response head (status, length, close).
//! - [`conn`]: one client connection's state machine (connect, write, head, body).
//! - [`engine`]: a mio event loop driving many connections, optionally rate-limited per
//!   connection, with keep-alive reuse; samples how many downloads progress each second.
//! - [`probe`]: a thread requesting a tiny page at a fixed interval, timing each answer.
//! - [`procstat`]: samples `/proc` for peak RSS and CPU time of process groups (a root pid
//!   and its descendants), machine-wide CPU time, and the size of a directory tree.
//! - [`stats`]: percentiles and the JSON report helpers.
//! - [`tls`]: HTTPS for the load connections (rustls, TLS 1.3 only, verified against the
//!   run's own CA); the probe stays plain HTTP.
//!
//! Every loop is bounded: by a duration, a request count, or both.

#![deny(unsafe_code)]

pub mod conn;
pub mod engine;
pub mod http;
pub mod probe;
pub mod procstat;
pub mod stats;
pub mod tls;
