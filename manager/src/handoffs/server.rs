//! The handshake loop: one mio `Poll` over the handoff listener, the signal descriptor
//! and every handshake in progress. Each job whose worker said go is given to the least
//! loaded download loop ([`crate::downloads::download_loop`], one thread per CPU by default).
//!
//! Guarantees:
//! - A worker connection carries one handoff after another: after a go or a one-way
//!   handoff it waits for the worker's next job (a PHP process keeps its connection between
//!   requests), and is closed after a refusal, after `IDLE_TIMEOUT` without a job, when
//!   more than `max_idle` connections are idle (the oldest first), or when the manager
//!   drains.
//! - A connection is never closed with a one-way handoff queued on it: it is shut for
//!   reading first (the worker's next send fails with `EPIPE`, and the worker still owns
//!   that request), and what was queued before is read and run.
//! - A one-way handoff is the manager's from the moment it is read: it runs, waits for a
//!   place (`max_waiting`, `wait_timeout`; smallest first), or its client gets a response
//!   written by the manager (503 with `Retry-After`, or 500 for an invalid job), logged and
//!   counted ([`crate::handoffs::waiting`]).
//! - A malformed or unacceptable handoff is refused with a reason (logged, and told to the
//!   worker, which then serves the request itself); its descriptors are closed; everyone
//!   else keeps being served.
//! - Nothing is written to a connection before the worker's `Go`; a worker that goes away
//!   before `Go` has its job dropped untouched.
//! - Nothing is dropped after `Go`: a job whose go was sent is run. When a handshake times
//!   out, its socket is shut for reading first (the worker's go then fails with `EPIPE` and
//!   the worker serves the request itself) and a go already queued is still honoured.
//! - At most `max_handshakes` handshakes are held at once; beyond that a new connection is
//!   refused at once. `max_downloads` counts the accepted jobs that wait for their go.
//! - SIGTERM / SIGINT / `--takeover`: the socket is removed and no new handoff is taken;
//!   every handshake already accepted is finished (the download loops run until the last
//!   of them has gone or failed), running downloads get `grace` to finish, then the manager
//!   exits.
//!
//! Why this handshake is safe, step by step: docs/internals.md ("The handshake").

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{accept4, MsgFlags, SockFlag};

use crate::config::Config;
use crate::downloads::download;
use crate::downloads::download_loop::{Command, Handle};
use crate::error::{io_err, ServerError};
use crate::handoffs::listener::{remove_socket_file, same_user, Listening};
use crate::handoffs::waiting::{self, Queue, Refusal};
use crate::reporting::stats::Counters;
use handoff_core::io_class::{classify, classify_io, IoClass};
use handoff_core::protocol::{self, BadHandoff, Incoming, ProtocolError, Received, Reply};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often handshake timeouts are checked.
const TICK: Duration = Duration::from_millis(250);
/// The handshake thread's nice value. A one-way handoff wakes this thread without anyone
/// waiting for it; at the PHP workers' own priority the wake-up preempts the worker that
/// sent the job on its core, and the worker's request is held until the manager yields.
/// Measured on a shared 2-core machine, S3 4 KiB through nginx: worker hold p99 1.7-2.9 ms
/// at nice 0, 0.7-1.1 ms at 5, no better at 10. (A worker with `handoff.confirm` waits for
/// this thread and pays for it under CPU contention.)
const HANDSHAKE_NICE: i32 = 5;
/// How often a free place is looked for while one-way handoffs wait for one.
const WAITING_TICK: Duration = Duration::from_millis(5);
/// A worker connection with no handoff for this long is closed; the PHP process reconnects
/// on its next handoff.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A worker's handoff socket and how far its handshake has come.
struct Handshake {
    sock: OwnedFd,
    since: Instant,
    stage: Stage,
}

/// The states of one worker connection. A connection carries one handoff after another (a
/// PHP process keeps it open between requests); a refused one is closed.
enum Stage {
    /// Connected; the first job has not arrived. `refuse` is set for a peer that may not
    /// hand off: its job is still read (so that the refusal is not lost to a reset) and
    /// refused.
    AwaitingJob { refuse: Option<String> },
    /// The job was accepted; the manager holds it and writes nothing until the worker's go.
    AwaitingGo(Received),
    /// A handoff is done; the worker may send its next job on the same connection.
    Idle,
}

pub struct Server {
    config: Config,
    poll: Poll,
    listener: Option<OwnedFd>,
    /// Inode of our socket file: only that file is removed at shutdown. `None` for a
    /// socket systemd passed: its file is systemd's, and stays for the next manager.
    socket_ino: Option<u64>,
    /// Readiness and stopping, told to systemd under `Type=notify`.
    notifier: crate::systemd::Notifier,
    signals: SignalFd,
    conns: HashMap<usize, Handshake>,
    next_token: usize,
    draining_until: Option<Instant>,
    /// Accepted jobs waiting for their go (counted against `max_downloads`).
    awaiting_go: usize,
    /// One-way handoffs waiting for a place under `max_downloads`.
    waiting: Queue,
    /// The download loops.
    loops: Vec<Handle>,
    pub counters: Arc<Counters>,
}

impl Server {
    /// The handshake loop's `Poll`, watching the listening socket and the signal descriptor.
    pub(crate) fn handshake_poll(
        listener: &OwnedFd,
        signals: &SignalFd,
    ) -> Result<Poll, ServerError> {
        let poll = Poll::new().map_err(io_err("creating poll"))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(io_err("registering listener"))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.as_fd().as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(io_err("registering signals"))?;
        Ok(poll)
    }

    /// The handshake loop over a listening socket, once start-up ([`crate::startup`]) has
    /// done everything else.
    pub(crate) fn new(
        config: Config,
        poll: Poll,
        listening: Listening,
        signals: SignalFd,
        notifier: crate::systemd::Notifier,
        loops: Vec<Handle>,
        counters: Arc<Counters>,
    ) -> Server {
        Server {
            waiting: Queue::new(config.max_waiting, config.wait_timeout),
            config,
            poll,
            listener: Some(listening.sock),
            socket_ino: listening.ino,
            notifier,
            signals,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            draining_until: None,
            awaiting_go: 0,
            loops,
            counters,
        }
    }

    /// Runs until a stop signal has been handled and the downloads are over.
    pub fn run(&mut self) -> Result<(), ServerError> {
        crate::sys::lower_thread_priority(HANDSHAKE_NICE);
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            let tick = if self.waiting.is_empty() {
                TICK
            } else {
                WAITING_TICK
            };
            match self.poll.poll(&mut events, Some(tick)) {
                Ok(()) => {}
                Err(e) if classify_io(&e) == IoClass::Retry => continue,
                Err(e) => {
                    return Err(ServerError::Io {
                        op: "poll",
                        source: e,
                    })
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_workers(now),
                    SIGNALS => self.on_signal(now),
                    Token(id) => {
                        if event.is_readable() {
                            self.on_handshake(id);
                        }
                    }
                }
            }
            self.start_waiting(now);
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.check_timeouts(now);
            }
            let idle = self.conns.is_empty() && self.waiting.is_empty();
            if let (Some(until), true) = (self.draining_until, idle) {
                // Only now: every accepted handshake has been started or has failed, so
                // no job can reach a loop that has already ended.
                for l in &self.loops {
                    let _ = l.send(Command::Drain(until));
                }
                break;
            }
        }
        let cut: usize = std::mem::take(&mut self.loops)
            .into_iter()
            .map(Handle::join)
            .sum();
        if cut == 0 {
            info!("all downloads finished; exiting");
        }
        let c = &self.counters;
        info!(
            "stopped: {} accepted, {} refused ({} at the limit, {} answered by the manager), \
             {} dropped before go, {} complete, {} failed, {} bytes sent",
            Counters::get(&c.accepted),
            Counters::get(&c.refused),
            Counters::get(&c.refused_full),
            Counters::get(&c.refused_answered),
            Counters::get(&c.dropped_before_go),
            Counters::get(&c.complete),
            Counters::get(&c.failed),
            Counters::get(&c.bytes_sent)
        );
        Ok(())
    }

    /// Accepts the waiting worker connections, then closes the idle ones past `max_idle`.
    fn accept_workers(&mut self, now: Instant) {
        self.accept_new(now);
        self.bound_idle();
    }

    fn accept_new(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match accept4(
                listener.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(raw) => {
                    let sock = crate::sys::own_new_fd(raw);
                    if self.busy_handshakes() >= self.config.max_handshakes {
                        // Refused before anything is read: the job (if one was sent) and
                        // its descriptors are discarded by the kernel with the socket.
                        warn!(
                            "refused a handoff: {} handshakes pending (--max-handshakes)",
                            self.conns.len()
                        );
                        let why = "manager has too many handshakes pending".to_string();
                        let _ = protocol::send_reply(sock.as_fd(), &Reply::Refuse(why));
                        Counters::add(&self.counters.refused, 1);
                        continue;
                    }
                    let refuse = self.check_peer(&sock).err();
                    let id = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&sock.as_raw_fd()),
                        Token(id),
                        Interest::READABLE,
                    ) {
                        warn!("cannot watch a worker connection: {e}");
                        continue;
                    }
                    self.conns.insert(
                        id,
                        Handshake {
                            sock,
                            since: now,
                            stage: Stage::AwaitingJob { refuse },
                        },
                    );
                }
                // A worker that went away before its connection was accepted.
                Err(e) => match classify(e) {
                    IoClass::Retry | IoClass::PeerGone => {}
                    IoClass::WouldBlock => return,
                    IoClass::Error => {
                        // EMFILE and friends: leave the backlog to the workers' timeouts.
                        warn!("accepting a worker connection: {e}");
                        return;
                    }
                },
            }
        }
    }

    /// `SO_PEERCRED` against `--allow-uid` / `--allow-gid`.
    fn check_peer(&self, sock: &OwnedFd) -> Result<(), String> {
        if self.config.allow_uids.is_empty() && self.config.allow_gids.is_empty() {
            return Ok(());
        }
        let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        if self.config.allow_uids.contains(&cred.uid())
            || self.config.allow_gids.contains(&cred.gid())
        {
            Ok(())
        } else {
            Err(format!(
                "peer uid {} gid {} (pid {}) is not allowed",
                cred.uid(),
                cred.gid(),
                cred.pid()
            ))
        }
    }

    fn on_signal(&mut self, now: Instant) {
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
    fn drain(&mut self, now: Instant) {
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

    fn stop_listening(&mut self) {
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

    /// Reads what the worker sent, message by message until none is left (the socket is
    /// edge-triggered, and a go may be followed by the next job at once).
    fn on_handshake(&mut self, id: usize) {
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
                        self.dispatch(waiting::refusal_unread(
                            a.conn,
                            file,
                            a.framing,
                            a.request_id,
                        ));
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
    fn start_waiting(&mut self, now: Instant) {
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

    /// Closes the idle connections past `max_idle`, the one idle longest first.
    fn bound_idle(&mut self) {
        let mut idle: Vec<(Instant, usize)> = self
            .conns
            .iter()
            .filter(|(_, h)| matches!(h.stage, Stage::Idle))
            .map(|(&id, h)| (h.since, id))
            .collect();
        if idle.len() <= self.config.max_idle {
            return;
        }
        idle.sort_unstable();
        let excess = idle.len() - self.config.max_idle;
        debug!("closing {excess} idle worker connection(s) (--max-idle-connections)");
        for (_, id) in idle.into_iter().take(excess) {
            self.close_idle(id);
        }
    }

    /// Closes an idle connection without losing a one-way handoff queued on it: shut for
    /// reading (a later send fails in the worker, which keeps that request), run what was
    /// queued before, then close.
    fn close_idle(&mut self, id: usize) {
        let Some(h) = self.conns.get(&id) else {
            return;
        };
        if let Err(e) =
            nix::sys::socket::shutdown(h.sock.as_raw_fd(), nix::sys::socket::Shutdown::Read)
        {
            debug!("shutting an idle worker connection: {e}");
        }
        // Reads until end-of-file, which a socket shut for reading reports once its
        // queue is empty; that closes it.
        self.on_handshake(id);
        self.finish(id);
    }

    /// A new manager asks this one to hand over the socket path.
    fn on_drain_request(&mut self, id: usize) {
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

    fn drop_before_go(&mut self, id: usize) {
        Counters::add(&self.counters.dropped_before_go, 1);
        self.finish(id);
    }

    /// The worker said go: the job goes to a download loop, and the connection waits for
    /// the worker's next job (or is closed, when the manager is draining).
    fn start_download(&mut self, id: usize) {
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

    /// Gives a job to the least loaded download loop.
    fn dispatch(&mut self, rcv: Received) {
        // Least loaded first; a loop that is gone (it can only have panicked: loops end
        // only when told to drain, after the last handshake) hands the job back.
        let mut order: Vec<&Handle> = self.loops.iter().collect();
        order.sort_by_key(|l| l.load.load(Ordering::Relaxed));
        let mut job = rcv;
        for download_loop in order {
            match download_loop.send(Command::Start(job)).map_err(|cmd| *cmd) {
                Ok(()) => return,
                Err(Command::Start(back)) => job = back,
                Err(Command::Drain(_)) => return,
            }
        }
        warn!("no download loop is running; download dropped");
        self.counters
            .count_outcome(&crate::reporting::outcome::Outcome::Aborted(
                "no download loop".into(),
            ));
    }

    /// Ends the handshakes that ran past `handshake_timeout`.
    ///
    /// An accepted job's socket is first shut for reading: from then on the worker's go
    /// fails (`EPIPE`) and the worker serves the request itself. A go that was queued
    /// before that moment is still read and honoured, so a worker whose go was sent never
    /// loses its request, however late the timer fires.
    fn check_timeouts(&mut self, now: Instant) {
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

    /// Connections in a handshake (idle ones between handoffs do not count).
    fn busy_handshakes(&self) -> usize {
        self.conns
            .values()
            .filter(|h| !matches!(h.stage, Stage::Idle))
            .count()
    }

    /// Removes a handshake from the loop and returns it.
    fn take(&mut self, id: usize) -> Option<Handshake> {
        let h = self.conns.remove(&id)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&h.sock.as_raw_fd()));
        if matches!(h.stage, Stage::AwaitingGo(_)) {
            self.awaiting_go -= 1;
        }
        Some(h)
    }

    /// Removes a handshake, closing its socket and any descriptors it received.
    fn finish(&mut self, id: usize) {
        drop(self.take(id));
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_listening();
        let until = Instant::now();
        for l in &self.loops {
            let _ = l.send(Command::Drain(until));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::socket::{socketpair, AddressFamily, SockType};

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
