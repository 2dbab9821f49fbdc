//! Handshakes that take too long and connections idle too long. A timed-out handshake's
//! socket is shut for reading before anything is decided, so that a go the worker sent in
//! time is honoured and one it sends later fails in the worker (`EPIPE`), which then keeps
//! its request.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use log::{debug, info, warn};
use nix::sys::socket::MsgFlags;

use super::{Server, Stage, IDLE_TIMEOUT};
use handoff_core::protocol::{self, Reply};

impl Server {
    /// Ends the handshakes that ran past `handshake_timeout`.
    ///
    /// An accepted job's socket is first shut for reading: from then on the worker's go
    /// fails (`EPIPE`) and the worker serves the request itself. A go that was queued
    /// before that moment is still read and honoured, so a worker whose go was sent never
    /// loses its request, however late the timer fires.
    pub(super) fn check_timeouts(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, h)| {
                let limit = match h.stage {
                    Stage::Idle => IDLE_TIMEOUT,
                    _ => self.config.handshake_timeout,
                };
                now.duration_since(h.since) > limit
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(h) = self.conns.get(&id) else {
                continue;
            };
            if matches!(h.stage, Stage::Idle) {
                debug!("closing a worker connection idle for {IDLE_TIMEOUT:?}");
                self.close_idle(id);
                continue;
            }
            if matches!(h.stage, Stage::AwaitingGo(_)) && late_go(&h.sock) {
                info!("go arrived as the handshake timed out; download started");
                self.start_download(id);
                // Shut for reading: it can carry no further handoff.
                self.finish(id);
                continue;
            }
            warn!("handshake timed out; job dropped, nothing written");
            self.drop_before_go(id);
        }
    }
}

/// Shuts a timed-out handshake's socket for reading, so that the worker can no longer
/// queue a go, then looks for a go queued before that. Whether one was.
fn late_go(sock: &OwnedFd) -> bool {
    use nix::sys::socket::{shutdown, Shutdown};
    if let Err(e) = shutdown(sock.as_raw_fd(), Shutdown::Read) {
        debug!("shutting a timed-out handshake: {e}");
    }
    matches!(
        protocol::recv_reply(sock.as_fd(), MsgFlags::MSG_DONTWAIT),
        Ok(Reply::Go)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::protocol::ProtocolError;
    use nix::errno::Errno;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_go_queued_before_the_timeout_is_honoured() {
        let (manager, worker) = pair();
        protocol::send_reply(worker.as_fd(), &Reply::Go).unwrap();
        assert!(late_go(&manager));
    }

    #[test]
    fn after_the_timeout_the_workers_go_fails_instead_of_vanishing() {
        let (manager, worker) = pair();
        assert!(!late_go(&manager));
        // The manager's socket is still open here: without the shutdown the go would be
        // queued, "sent", and never read.
        assert!(matches!(
            protocol::send_reply(worker.as_fd(), &Reply::Go),
            Err(ProtocolError::Io {
                errno: Errno::EPIPE,
                ..
            })
        ));
    }
}
