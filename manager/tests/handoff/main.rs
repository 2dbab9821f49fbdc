//! The manager binary against real sockets: a test plays the PHP worker (handoff socket)
//! and the client (the other end of a socketpair handed over as "the connection").
//!
//! One test binary, one module per topic; what they share is in `common`.

mod common;

mod lifecycle;
mod limits;
mod one_way;
mod protocol;
mod refusals;
mod reporting;
