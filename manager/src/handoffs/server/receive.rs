//! What a worker sends on its connection, read and checked: a job (accepted or refused, then
//! the worker's go), a one-way handoff (started, queued for a place, or answered by the
//! manager), a hello that opens a connection for one-way handoffs, a malformed message, and
//! a new manager's request to drain.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{debug, info, warn};
use nix::sys::socket::MsgFlags;

use super::{Server, Stage};
use crate::downloads::download;
use crate::handoffs::waiting::{self, Refusal};
use crate::reporting::stats::Counters;
use handoff_core::protocol::{self, BadHandoff, Incoming, ProtocolError, Received, Reply};

impl Server {
    /// Reads what the worker sent, message by message until none is left (the socket is
    /// edge-triggered, and a go may be followed by the next job at once).
    pub(super) fn on_handshake(&mut self, id: usize) {
        loop {
            let Some(h) = self.conns.get_mut(&id) else {
                return;
            };
            if let Stage::AwaitingGo(_) = h.stage {
                // Anything but go means the worker keeps the request.
                match protocol::recv_reply(h.sock.as_fd(), MsgFlags::MSG_DONTWAIT) {
                    Ok(Reply::Go) => {
                        self.start_download(id);
                        self.bound_idle();
                    }
                    Err(e) if e.is_would_block() => return,
                    Err(ProtocolError::Closed) => {
                        info!("worker went away before go; job dropped, nothing written");
                        return self.drop_before_go(id);
                    }
                    Ok(other) => {
                        warn!("expected go from worker, got {other:?}; job dropped");
                        return self.drop_before_go(id);
                    }
                    Err(e) => {
                        warn!("waiting for go: {e}; job dropped");
                        return self.drop_before_go(id);
                    }
                }
                continue;
            }
            let refuse = match &mut h.stage {
                Stage::AwaitingJob { refuse } => refuse.take(),
                _ => None,
            };
            match protocol::recv_job(h.sock.as_fd()) {
                Ok(Some(Incoming::Drain)) => return self.on_drain_request(id),
                Ok(Some(Incoming::Job(rcv))) => {
                    h.since = Instant::now();
                    self.on_job(id, rcv, refuse);
                }
                Ok(Some(Incoming::Hello)) => {
                    if !self.on_hello(id, refuse) {
                        return;
                    }
                }
                Ok(Some(Incoming::Handoff(rcv))) => {
                    if let Some(why) = refuse {
                        // Not a worker this manager serves: its request is answered, never
                        // run, and the connection carries nothing more.
                        warn!("refused handoff of {:?}: {why}", rcv.job.file_name);
                        self.answer(rcv, Refusal::Invalid);
                        return self.finish(id);
                    }
                    h.since = Instant::now();
                    let became_idle = !matches!(h.stage, Stage::Idle);
                    h.stage = Stage::Idle;
                    self.on_handoff(rcv);
                    if became_idle {
                        self.bound_idle();
                    }
                }
                Ok(Some(Incoming::BadHandoff(bad))) => {
                    self.on_bad_handoff(bad);
                    if refuse.is_some() {
                        return self.finish(id);
                    }
                    if let Some(h) = self.conns.get_mut(&id) {
                        h.since = Instant::now();
                        h.stage = Stage::Idle;
                    }
                }
                Ok(None) => return self.finish(id),
                Err(e) if e.is_would_block() => {
                    if let (Stage::AwaitingJob { refuse: slot }, Some(why)) = (&mut h.stage, refuse)
                    {
                        *slot = Some(why);
                    }
                    return;
                }
                Err(e) => {
                    warn!("rejected malformed handoff: {e}");
                    return self.refuse(id, e.to_string());
                }
            }
        }
    }

    /// A worker opens a connection for one-way handoffs: accept it (the connection then
    /// waits idle for handoffs) or refuse it (a peer that may not hand off, or a manager
    /// that is stopping) and close it. Whether the connection is still open.
    fn on_hello(&mut self, id: usize, refuse: Option<String>) -> bool {
        let refuse = refuse.or_else(|| {
            self.draining_until
                .is_some()
                .then(|| "manager is shutting down".to_string())
        });
        if let Some(why) = refuse {
            warn!("refused a worker connection: {why}");
            self.refuse(id, why);
            return false;
        }
        let Some(h) = self.conns.get_mut(&id) else {
            return false;
        };
        if let Err(e) = protocol::send_reply(h.sock.as_fd(), &Reply::Accept) {
            debug!("worker gone before its hello was answered: {e}");
            self.finish(id);
            return false;
        }
        h.since = Instant::now();
        h.stage = Stage::Idle;
        self.bound_idle();
        self.conns.contains_key(&id)
    }

    /// A one-way handoff arrived: the manager owns its request now. It starts, waits for
    /// a place, or is answered by the manager.
    fn on_handoff(&mut self, rcv: Received) {
        let arrived = Instant::now();
        self.counters.add_fallbacks(&rcv.job.fallbacks);
        if let Err(e) = download::validate(&rcv) {
            warn!("refused handoff of {:?}: {e}", rcv.job.file_name);
            return self.answer(rcv, Refusal::Invalid);
        }
        if self.waiting.is_empty() && self.has_place() {
            debug!("one-way handoff of {:?} starts", rcv.job.file_name);
            self.counters.handoff_seconds.observe(arrived.elapsed());
            return self.dispatch(rcv);
        }
        if let Err(rcv) = self.waiting.push(rcv, Instant::now()) {
            Counters::add(&self.counters.refused_full, 1);
            warn!(
                "refused handoff of {:?}: {} handoffs wait for a place (--max-waiting)",
                rcv.job.file_name,
                self.waiting.len()
            );
            let retry_after = self.waiting.retry_after();
            self.answer(*rcv, Refusal::Busy { retry_after });
        }
    }

    /// A one-way handoff whose job cannot be read: its client gets a 500 if the connection
    /// came with it and the framing is known; otherwise there is nothing to answer on.
    fn on_bad_handoff(&mut self, bad: BadHandoff) {
        let BadHandoff { error, answer } = bad;
        Counters::add(&self.counters.refused, 1);
        match answer {
            Some(a) => {
                warn!("rejected malformed one-way handoff: {error}; answered with 500");
                match a.conn.try_clone() {
                    Ok(file) => {
                        Counters::add(&self.counters.refused_answered, 1);
                        self.dispatch(waiting::refusal_unread(a, file));
                    }
                    Err(e) => warn!("cannot answer a malformed handoff: {e}"),
                }
            }
            None => {
                warn!("rejected malformed one-way handoff: {error}; no connection to answer on")
            }
        }
    }

    /// Writes the manager's own response on a refused one-way handoff's connection (if it
    /// is a connection at all); counts and logs it.
    fn answer(&mut self, rcv: Received, refusal: Refusal) {
        Counters::add(&self.counters.refused, 1);
        if download::validate_connection(&rcv.conn).is_err() {
            warn!("the refused handoff's connection is not a socket; closed");
            return;
        }
        Counters::add(&self.counters.refused_answered, 1);
        self.dispatch(waiting::refusal(rcv, refusal));
    }

    /// Whether one more download may start under `--max-downloads`.
    fn has_place(&self) -> bool {
        let max = self.config.max_downloads;
        if max == 0 {
            return true;
        }
        let running: usize = self
            .loops
            .iter()
            .map(|l| l.load.load(Ordering::Relaxed))
            .sum();
        running + self.awaiting_go < max
    }

    /// Starts waiting one-way handoffs while there is a place; answers those that waited
    /// too long with 503 (all of them once the grace period of a drain is over).
    pub(super) fn start_waiting(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            return;
        }
        while self.has_place() {
            let Some((rcv, since)) = self.waiting.pop() else {
                break;
            };
            self.counters.handoff_seconds.observe(since.elapsed());
            self.dispatch(rcv);
        }
        let all = self.draining_until.is_some_and(|until| now >= until);
        let retry_after = self.waiting.retry_after();
        for rcv in self.waiting.expired(now, all) {
            Counters::add(&self.counters.refused_full, 1);
            warn!(
                "refused handoff of {:?}: no place within --wait-timeout; answered with 503",
                rcv.job.file_name
            );
            self.answer(rcv, Refusal::Busy { retry_after });
        }
    }

    /// A job arrived: accept it (and wait for go) or refuse it.
    fn on_job(&mut self, id: usize, rcv: Received, refuse: Option<String>) {
        // Only an allowed peer's fallback report counts.
        if refuse.is_none() {
            self.counters.add_fallbacks(&rcv.job.fallbacks);
        }
        let verdict = match refuse {
            Some(why) => Err(why),
            None => self.admit(&rcv),
        };
        if let Err(reason) = verdict {
            warn!("refused handoff of {:?}: {reason}", rcv.job.file_name);
            self.refuse(id, reason);
            return;
        }
        let Some(h) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = protocol::send_reply(h.sock.as_fd(), &Reply::Accept) {
            debug!("worker gone before accept: {e}");
            self.finish(id);
            return;
        }
        debug!("accepted job for {:?}", rcv.job.file_name);
        h.stage = Stage::AwaitingGo(rcv);
        self.awaiting_go += 1;
    }

    /// The one admission decision for a well-formed job from an allowed peer.
    fn admit(&self, rcv: &Received) -> Result<(), String> {
        if self.draining_until.is_some() {
            return Err("manager is shutting down".to_string());
        }
        let max = self.config.max_downloads;
        let held = Counters::get(&self.counters.active) + self.awaiting_go as u64;
        if max > 0 && held >= max as u64 {
            Counters::add(&self.counters.refused_full, 1);
            return Err(format!("manager is at --max-downloads ({max})"));
        }
        download::validate(rcv).map_err(|e| e.to_string())
    }

    /// Tells the worker why, counts the refusal and closes the handshake.
    fn refuse(&mut self, id: usize, reason: String) {
        if let Some(h) = self.conns.get(&id) {
            let _ = protocol::send_reply(h.sock.as_fd(), &Reply::Refuse(reason));
        }
        Counters::add(&self.counters.refused, 1);
        self.finish(id);
    }

    pub(super) fn drop_before_go(&mut self, id: usize) {
        Counters::add(&self.counters.dropped_before_go, 1);
        self.finish(id);
    }

    /// The worker said go: the job goes to a download loop, and the connection waits for
    /// the worker's next job (or is closed, when the manager is draining).
    pub(super) fn start_download(&mut self, id: usize) {
        let draining = self.draining_until.is_some();
        let Some(h) = self.conns.get_mut(&id) else {
            return;
        };
        let Stage::AwaitingGo(rcv) = std::mem::replace(&mut h.stage, Stage::Idle) else {
            return;
        };
        // `since` is when the job arrived: the worker waited this long for its answer
        // and sent go.
        self.counters.handoff_seconds.observe(h.since.elapsed());
        h.since = Instant::now();
        self.awaiting_go -= 1;
        if draining {
            self.finish(id);
        }
        self.dispatch(rcv);
    }
}
