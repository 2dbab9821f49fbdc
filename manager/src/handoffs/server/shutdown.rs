//! Stopping: SIGTERM / SIGINT and a new manager's `--takeover` drain the manager (no new
//! handoff, idle connections closed, the socket file removed while it is still ours);
//! dropping the handshake loop tells the download loops to drain.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{info, warn};
use mio::unix::SourceFd;

use super::{Server, Stage};
use crate::downloads::download_loop::Command;
use crate::handoffs::listener::{remove_socket_file, same_user};
use crate::reporting::stats::Counters;
use handoff_core::protocol::{self, Reply};

impl Server {
    pub(super) fn on_signal(&mut self, now: Instant) {
        let mut signals = Vec::new();
        while let Ok(Some(info)) = self.signals.read_signal() {
            signals.push(info.ssi_signo);
        }
        // Logged once the socket is gone, so that the line means what it says.
        self.drain(now);
        let active = Counters::get(&self.counters.active);
        for signo in signals {
            info!(
                "signal {signo}: no new handoffs; {active} download(s) get {:?} to finish",
                self.config.grace
            );
        }
    }

    /// Stops taking handoffs. Handshakes already accepted are finished; the download loops
    /// are told to drain once none is left ([`Server::run`]), and running downloads get
    /// the grace period.
    pub(super) fn drain(&mut self, now: Instant) {
        if self.draining_until.is_none() {
            self.draining_until = Some(now + self.config.grace);
            self.notifier.notify("STOPPING=1");
            self.counters.draining.store(true, Ordering::Relaxed);
            self.stop_listening();
            // Idle worker connections are closed at once, after the one-way handoffs queued
            // on them are read: their next handoff finds the connection shut before
            // anything was handed over, and reconnects (to the new manager after a
            // takeover).
            let idle: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, h)| matches!(h.stage, Stage::Idle))
                .map(|(&id, _)| id)
                .collect();
            for id in idle {
                self.close_idle(id);
            }
        }
    }

    pub(super) fn stop_listening(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
            if let Some(ino) = self.socket_ino {
                remove_socket_file(&self.config.socket, ino);
            }
        }
    }

    /// A new manager asks this one to hand over the socket path.
    pub(super) fn on_drain_request(&mut self, id: usize) {
        let Some(h) = self.conns.get(&id) else {
            return;
        };
        match same_user(&h.sock) {
            Ok(()) => {
                info!(
                    "a new manager took over {}: draining",
                    self.config.socket.display()
                );
                let _ = protocol::send_reply(h.sock.as_fd(), &Reply::Accept);
                self.finish(id);
                self.drain(Instant::now());
            }
            Err(why) => {
                warn!("refused a drain request: {why}");
                let _ = protocol::send_reply(h.sock.as_fd(), &Reply::Refuse(why));
                self.finish(id);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_listening();
        let until = Instant::now();
        for l in &self.loops {
            let _ = l.send(Command::Drain(until));
        }
    }
}
