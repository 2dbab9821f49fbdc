//! The handshake loop: one mio `Poll` over the handoff listener, the signal descriptor
//! and every handshake in progress. Each job whose worker said go is given to the least
//! loaded download loop ([`crate::worker`], one thread per CPU by default).
//!
//! Guarantees:
//! - A malformed or unacceptable handoff is refused with a reason (logged, and told to the
//!   worker, which then serves the request itself); its descriptors are closed; everyone
//!   else keeps being served.
//! - Nothing is written to a connection before the worker's `Go`; a worker that goes away
//!   before `Go` has its job dropped untouched.
//! - SIGTERM / SIGINT: the socket is removed and no new handoff is taken; running downloads
//!   get `grace` to finish, then the manager exits.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::stat::Mode;

use crate::access_log::AccessLog;
use crate::download;
use crate::protocol::{self, Incoming, ProtocolError, Received, Reply};
use crate::sandbox;
use crate::stats::Counters;
use crate::worker::{self, Command, Handle, LoopConfig, Schedule};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often handshake timeouts are checked.
const TICK: Duration = Duration::from_millis(250);

/// Everything the loop needs to know; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// A download whose client takes no byte for this long is dropped.
    pub send_timeout: Duration,
    /// How long a finished download waits for the peer to close.
    pub linger_timeout: Duration,
    /// How long a worker may take between connecting and `Go`.
    pub handshake_timeout: Duration,
    /// How long running downloads may continue after SIGTERM / SIGINT.
    pub grace: Duration,
    /// Group to give the socket to (with `socket_mode` 0660: who may hand off).
    pub socket_group: Option<String>,
    /// Unprivileged user to become after binding (when started as root).
    pub user: Option<String>,
    /// Peers allowed by `SO_PEERCRED`, checked on every connection; both empty means any
    /// peer that the socket's permissions let in.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// Give up filesystem access with Landlock after start-up.
    pub sandbox: bool,
    /// Refuse new handoffs while this many downloads run (0: no limit but the fd limit).
    pub max_downloads: usize,
    /// JSON access log: a file, `-` for stderr, or none.
    pub access_log: Option<PathBuf>,
    /// Number of download loops (threads); 0 means one per CPU.
    pub threads: usize,
    /// Address for `/metrics` (Prometheus) and `/status` (JSON), e.g. 127.0.0.1:9901.
    pub metrics: Option<std::net::SocketAddr>,
    /// Take the socket path over from a running manager, which then drains.
    pub takeover: bool,
    /// Global bandwidth cap in bytes/s, shared evenly by the download loops (0: none).
    pub max_rate: u64,
    pub schedule: Schedule,
    /// Completion records POSTed to a local endpoint (`--on-complete`), if any.
    pub on_complete: Option<crate::completion::Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{op} {path}: {errno}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("another manager is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("signal setup: {0}")]
    Signal(Errno),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { op, source }
}

/// A worker's handoff socket; `job` is set once the job is accepted and `Go` awaited.
/// `refuse` is set for a peer that may not hand off: its job is read (so that the refusal
/// is not lost to a reset) and refused.
struct Handshake {
    sock: OwnedFd,
    since: Instant,
    job: Option<Received>,
    refuse: Option<String>,
}

pub struct Server {
    config: Config,
    poll: Poll,
    listener: Option<OwnedFd>,
    /// Inode of our socket file: only that file is removed at shutdown.
    socket_ino: u64,
    signals: SignalFd,
    conns: HashMap<usize, Handshake>,
    next_token: usize,
    draining_until: Option<Instant>,
    workers: Vec<Handle>,
    pub counters: Arc<Counters>,
}

impl Server {
    /// Creates the socket (replacing a stale one), blocks SIGTERM/SIGINT into a signalfd and
    /// registers both. Call from the main thread before any other thread starts.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(ServerError::Signal)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ServerError::Signal)?;

        raise_fd_limit();
        crate::sys::single_malloc_arena();
        let access_log = Arc::new(Mutex::new(
            AccessLog::open(config.access_log.as_deref())
                .map_err(io_err("opening the access log"))?,
        ));
        let Bound {
            sock: listener,
            ino: socket_ino,
            previous,
        } = listen_on(&config.socket, config.socket_mode, config.takeover)?;
        if let Some(prev) = previous {
            tell_previous_to_drain(&prev);
        }
        if let Some(group) = &config.socket_group {
            let group = sandbox::lookup_group(group)?;
            sandbox::set_socket_group(&config.socket, &group)?;
        }
        if let Some(user) = &config.user {
            let user = sandbox::lookup_user(user)?;
            sandbox::drop_to(&user, &config.socket)?;
        }
        if config.sandbox {
            // A container's seccomp profile may forbid Landlock's system calls: run
            // unsandboxed then, and say so, rather than not at all.
            if let Err(e) = sandbox::restrict_filesystem(&config.socket) {
                warn!("{e}: filesystem access not restricted");
            }
        }
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
        let counters = Arc::new(Counters::default());
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let loop_config = LoopConfig {
            send_timeout: config.send_timeout,
            linger_timeout: config.linger_timeout,
            max_rate: config.max_rate.div_ceil(threads as u64),
            schedule: config.schedule,
        };
        let completions = match &config.on_complete {
            Some(settings) => Some(
                crate::completion::Completions::start(settings.clone(), counters.clone())
                    .map_err(io_err("starting the completion record thread"))?,
            ),
            None => None,
        };
        let groups = crate::rate_group::Groups::new(counters.clone());
        let workers = (0..threads)
            .map(|i| {
                worker::spawn(
                    i,
                    loop_config,
                    counters.clone(),
                    access_log.clone(),
                    completions.clone(),
                    groups.clone(),
                )
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_err("starting download loops"))?;
        if let Some(addr) = config.metrics {
            let boards = workers.iter().map(|w| w.board.clone()).collect();
            crate::metrics::serve(addr, counters.clone(), boards)
                .map_err(io_err("starting the metrics listener"))?;
            info!("metrics on http://{addr}/metrics, status on http://{addr}/status");
        }
        info!(
            "listening on {} (mode {:o}), {threads} download loop(s)",
            config.socket.display(),
            config.socket_mode
        );
        Ok(Server {
            config,
            poll,
            listener: Some(listener),
            socket_ino,
            signals,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            draining_until: None,
            workers,
            counters,
        })
    }

    /// Runs until a stop signal has been handled and the downloads are over.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            match self.poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.check_timeouts(now);
            }
            if self.draining_until.is_some() && self.conns.is_empty() {
                break;
            }
        }
        let cut: usize = std::mem::take(&mut self.workers)
            .into_iter()
            .map(Handle::join)
            .sum();
        if cut == 0 {
            info!("all downloads finished; exiting");
        }
        let c = &self.counters;
        info!(
            "stopped: {} accepted, {} refused ({} at the limit), {} dropped before go, \
             {} complete, {} failed, {} bytes sent",
            Counters::get(&c.accepted),
            Counters::get(&c.refused),
            Counters::get(&c.refused_full),
            Counters::get(&c.dropped_before_go),
            Counters::get(&c.complete),
            Counters::get(&c.failed),
            Counters::get(&c.bytes_sent)
        );
        Ok(())
    }

    fn accept_workers(&mut self, now: Instant) {
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
                            job: None,
                            refuse,
                        },
                    );
                }
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    // EMFILE and friends: leave the backlog to the workers' timeouts.
                    warn!("accepting a worker connection: {e}");
                    return;
                }
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

    /// Stops taking handoffs; running downloads get the grace period.
    fn drain(&mut self, now: Instant) {
        if self.draining_until.is_none() {
            let until = now + self.config.grace;
            self.draining_until = Some(until);
            self.stop_listening();
            for w in &self.workers {
                w.send(Command::Drain(until));
            }
        }
    }

    fn stop_listening(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
            remove_socket_file(&self.config.socket, self.socket_ino);
        }
    }

    fn on_handshake(&mut self, id: usize) {
        let draining = self.draining_until.is_some();
        let max = self.config.max_downloads;
        let full = max > 0 && Counters::get(&self.counters.active) >= max as u64;
        let Some(Handshake {
            sock, job, refuse, ..
        }) = self.conns.get_mut(&id)
        else {
            return;
        };
        if job.is_none() {
            match protocol::recv_job(sock.as_fd()) {
                Ok(Some(Incoming::Drain)) => {
                    match same_user(sock) {
                        Ok(()) => {
                            info!(
                                "a new manager took over {}: draining",
                                self.config.socket.display()
                            );
                            let _ = protocol::send_reply(sock.as_fd(), &Reply::Accept);
                            self.finish(id);
                            self.drain(Instant::now());
                        }
                        Err(why) => {
                            warn!("refused a drain request: {why}");
                            let _ = protocol::send_reply(sock.as_fd(), &Reply::Refuse(why));
                            self.finish(id);
                        }
                    }
                    return;
                }
                Ok(Some(Incoming::Job(rcv))) => {
                    // Only an allowed peer's fallback report counts.
                    if refuse.is_none() {
                        self.counters.add_fallbacks(&rcv.job.fallbacks);
                    }
                    let verdict = if let Some(why) = refuse.take() {
                        Err(why)
                    } else if draining {
                        Err("manager is shutting down".to_string())
                    } else if full {
                        Counters::add(&self.counters.refused_full, 1);
                        Err(format!("manager is at --max-downloads ({max})"))
                    } else {
                        download::validate(&rcv).map_err(|e| e.to_string())
                    };
                    match verdict {
                        Ok(()) => {
                            if let Err(e) = protocol::send_reply(sock.as_fd(), &Reply::Accept) {
                                debug!("worker gone before accept: {e}");
                                self.finish(id);
                                return;
                            }
                            debug!("accepted job for {:?}", rcv.job.file_name);
                            *job = Some(rcv);
                        }
                        Err(reason) => {
                            warn!("refused handoff of {:?}: {reason}", rcv.job.file_name);
                            let _ = protocol::send_reply(sock.as_fd(), &Reply::Refuse(reason));
                            Counters::add(&self.counters.refused, 1);
                            self.finish(id);
                            return;
                        }
                    }
                }
                Ok(None) => {
                    self.finish(id);
                    return;
                }
                Err(e) if e.is_would_block() => return,
                Err(e) => {
                    warn!("rejected malformed handoff: {e}");
                    let _ = protocol::send_reply(sock.as_fd(), &Reply::Refuse(e.to_string()));
                    Counters::add(&self.counters.refused, 1);
                    self.finish(id);
                    return;
                }
            }
        }
        // The job is held: wait for go. Anything but go means the worker keeps the request.
        match protocol::recv_reply(sock.as_fd(), MsgFlags::MSG_DONTWAIT) {
            Ok(Reply::Go) => self.start_download(id),
            Err(e) if e.is_would_block() => {}
            Err(ProtocolError::Closed) => {
                info!("worker went away before go; job dropped, nothing written");
                Counters::add(&self.counters.dropped_before_go, 1);
                self.finish(id);
            }
            Ok(other) => {
                warn!("expected go from worker, got {other:?}; job dropped");
                Counters::add(&self.counters.dropped_before_go, 1);
                self.finish(id);
            }
            Err(e) => {
                warn!("waiting for go: {e}; job dropped");
                Counters::add(&self.counters.dropped_before_go, 1);
                self.finish(id);
            }
        }
    }

    fn start_download(&mut self, id: usize) {
        let Some(Handshake { sock, job, .. }) = self.conns.remove(&id) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&sock.as_raw_fd()));
        drop(sock);
        let Some(rcv) = job else {
            return;
        };
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        if !worker.send(Command::Start(rcv)) {
            warn!("a download loop is gone; download dropped");
            Counters::add(&self.counters.failed, 1);
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) > self.config.handshake_timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            warn!("handshake timed out; job dropped, nothing written");
            Counters::add(&self.counters.dropped_before_go, 1);
            self.finish(id);
        }
    }

    /// Removes a handshake, closing its socket and any descriptors it received.
    fn finish(&mut self, id: usize) {
        if let Some(h) = self.conns.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&h.sock.as_raw_fd()));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_listening();
        let until = Instant::now();
        for w in &self.workers {
            w.send(Command::Drain(until));
        }
    }
}

/// Only the manager's own user (or root) may make it drain: any other local user allowed
/// to hand off could otherwise stop the service.
fn same_user(sock: &OwnedFd) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not take over (running as {me})",
            cred.uid()
        ))
    }
}

/// Asks the manager we took the socket path from to stop taking handoffs and finish.
fn tell_previous_to_drain(prev: &OwnedFd) {
    let tv = nix::sys::time::TimeVal::new(5, 0);
    let _ = nix::sys::socket::setsockopt(prev, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
    let answer = protocol::send_reply(prev.as_fd(), &Reply::Drain)
        .and_then(|()| protocol::recv_reply(prev.as_fd(), MsgFlags::empty()));
    match answer {
        Ok(Reply::Accept) => info!("took over the socket; the previous manager is draining"),
        Ok(other) => warn!("the previous manager answered {other:?} to drain"),
        Err(e) => warn!("the previous manager did not confirm drain: {e}"),
    }
}

/// Each download holds two descriptors: take the whole hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!("open file limit raised from {soft} to {hard}"),
            Err(e) => warn!("cannot raise the open file limit from {soft}: {e}"),
        },
        Ok((soft, _)) => debug!("open file limit {soft}"),
        Err(e) => warn!("reading the open file limit: {e}"),
    }
}

/// The bound socket, its inode (so that shutdown removes only our own socket file), and,
/// after a takeover, the connection to the previous manager.
struct Bound {
    sock: OwnedFd,
    ino: u64,
    previous: Option<OwnedFd>,
}

/// Creates the listening socket at `path` with `mode`. A stale socket file is replaced; a
/// live manager's socket is an error unless `takeover`, in which case the new socket is
/// bound beside it and renamed over it in one step, so that no handoff finds the path
/// missing; the caller then tells the previous manager to drain.
fn listen_on(path: &Path, mode: u32, takeover: bool) -> Result<Bound, ServerError> {
    let sock_err = |op: &'static str| {
        let path = path.to_path_buf();
        move |errno| ServerError::Socket { op, path, errno }
    };
    let mut previous = None;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        let probe = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(sock_err("socket"))?;
        let addr = UnixAddr::new(path).map_err(sock_err("address"))?;
        if connect(probe.as_raw_fd(), &addr).is_ok() {
            if !takeover {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            previous = Some(probe);
        } else {
            std::fs::remove_file(path).map_err(io_err("removing stale socket"))?;
        }
    }
    let bind_path = if previous.is_some() {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".new.{}", std::process::id()));
        PathBuf::from(p)
    } else {
        path.to_path_buf()
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sock_err("socket"))?;
    let addr = UnixAddr::new(&bind_path).map_err(sock_err("address"))?;
    // Bind with no permission for anyone, then open up to the requested mode: no moment
    // where the socket is wider than asked.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o777));
    let bound = bind(sock.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(sock_err("bind"))?;
    std::fs::set_permissions(&bind_path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting socket mode"))?;
    let backlog = Backlog::new(1024).map_err(sock_err("listen"))?;
    listen(&sock, backlog).map_err(sock_err("listen"))?;
    if bind_path != path {
        std::fs::rename(&bind_path, path).map_err(io_err("moving the new socket in place"))?;
    }
    let ino = std::fs::symlink_metadata(path)
        .map_err(io_err("reading the socket"))?
        .ino();
    Ok(Bound {
        sock,
        ino,
        previous,
    })
}

/// Removes the socket file if it is still ours (a newer manager may have taken the path).
fn remove_socket_file(path: &Path, ino: u64) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.ino() != ino => {
            debug!(
                "{} belongs to a newer manager; left in place",
                path.display()
            );
            return;
        }
        Err(_) => return,
        Ok(_) => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("removing {}: {e}", path.display()),
    }
}
