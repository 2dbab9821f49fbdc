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
//! Why this handshake is safe, step by step: docs/internals.md ("The one-way handoff",
//! "The confirmed handshake").
//!
//! The parts: this file holds the loop, accepting connections, the idle bound and handing
//! jobs to the download loops; `receive.rs` reads and checks what a worker sends;
//! `timeouts.rs` ends handshakes and idle connections that last too long; `shutdown.rs`
//! handles signals and drain. Start-up, which builds the loop, is `crate::startup`.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::SockFlag;

use crate::config::Config;
use crate::downloads::download_loop::{Command, Handle};
use crate::error::{io_err, ServerError};
use crate::handoffs::listener::Listening;
use crate::handoffs::waiting::Queue;
use crate::reporting::stats::Counters;
use handoff_core::io_class::{classify, classify_io, IoClass};
use handoff_core::protocol::{self, Received, Reply};

mod receive;
mod shutdown;
mod timeouts;

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
            match crate::sys::accept4(
                listener.as_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(sock) => {
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
