//! The end of a download: once everything is written the write side is shut down and what
//! the peer still sends is read and discarded until it closes or the linger deadline
//! passes, so that closing never turns into a reset that cuts the response's tail; and the
//! send timeout of a connection that stopped taking bytes.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::debug;
use nix::sys::socket::{shutdown, MsgFlags, Shutdown};

use handoff_core::io_class::{classify, IoClass};

use super::{Download, State, Step};
use crate::reporting::outcome::Outcome;

impl Download {
    pub(super) fn start_lingering(&mut self, now: Instant) -> Step {
        // Everything is written; half-close so the peer sees the end, then read what it
        // still sends until it closes, instead of resetting the connection under it.
        match shutdown(self.sock.as_raw_fd(), Shutdown::Write) {
            Ok(()) => {}
            // The peer has the whole response already.
            Err(e) if classify(e) == IoClass::PeerGone => return Step::Done(Outcome::Complete),
            Err(e) => debug!("shutdown after complete response: {e}"),
        }
        self.state = State::Lingering {
            until: now + self.linger,
            outcome: Outcome::Complete,
        };
        // The peer may already have closed: look now, edge-triggered events won't repeat.
        self.on_readable(&mut [0u8; 512])
    }

    /// Reads and discards what the peer sends (FastCGI `STDIN`, a request body).
    ///
    /// Behind a FastCGI web server nothing is read while the response is being sent: what
    /// the web server sent and nobody read (at least the empty `STDIN` record that ends a
    /// GET request) stays queued on our end of the connection. If the manager then dies,
    /// the kernel reports that unread data to the web server as a reset instead of a clean
    /// end-of-file. nginx takes a clean end-of-file in unbuffered mode for the end of the
    /// response and keeps the client's connection for keep-alive, so the client would wait
    /// for the missing bytes until `keepalive_timeout`; a reset is an upstream error, and
    /// nginx closes the client's connection. A web server that goes away still shows up:
    /// the next write fails.
    pub fn on_readable(&mut self, scratch: &mut [u8]) -> Step {
        if matches!(self.state, State::Sending) && self.framer.is_some() {
            return Step::Wait;
        }
        loop {
            match nix::sys::socket::recv(self.sock.as_raw_fd(), scratch, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    return match &self.state {
                        State::Lingering { outcome, .. } => Step::Done(outcome.clone()),
                        // A half-close while we still send: keep sending; a real close
                        // shows up as a send error.
                        State::Sending => Step::Wait,
                    };
                }
                Ok(_) => {}
                Err(e) => match classify(e) {
                    IoClass::Retry => {}
                    IoClass::WouldBlock => return Step::Wait,
                    IoClass::PeerGone | IoClass::Error => {
                        return match &self.state {
                            State::Lingering { outcome, .. } => Step::Done(outcome.clone()),
                            State::Sending => Step::Done(Outcome::Aborted(e.desc().to_string())),
                        }
                    }
                },
            }
        }
    }

    /// Ends a download whose client stopped taking bytes, or whose peer never closed.
    pub fn check_timeout(&self, now: Instant, send_timeout: Duration) -> Option<Outcome> {
        match &self.state {
            State::Sending
                if self
                    .stalled_since
                    .is_some_and(|since| now.duration_since(since) > send_timeout) =>
            {
                Some(Outcome::TimedOut)
            }
            State::Lingering { until, outcome } if now >= *until => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Whether the response has been written completely (only lingering is left).
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering { .. })
    }
}
