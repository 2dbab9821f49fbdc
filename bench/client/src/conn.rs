//! One client connection: connect, (TLS handshake,) write the request, read the head, read
//! the body. With TLS the same states carry decrypted bytes: [`crate::tls`] does the I/O.
//!
//! The connection remembers readiness (mio is edge-triggered): `readable`/`writable` stay
//! true until an operation returns `WouldBlock`, so a rate-limited connection that stopped
//! reading because it ran out of budget can be resumed on the next tick without an event.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use rustls::ClientConnection;

use crate::http::{parse_head, Head, HeadError};
use crate::tls;

/// Where the connection is in its current request.
#[derive(Debug)]
pub enum State {
    /// Non-blocking connect in progress.
    Connecting,
    /// TLS only: the handshake is in progress (the request is sent once it is done).
    Handshake,
    /// `written` bytes of the request are out.
    Writing { written: usize },
    /// Collecting the response head.
    Head { buf: Vec<u8> },
    /// Reading the body; `received` counts this response's body bytes.
    Body { head: Head, received: u64 },
}

/// What one call of [`Conn::drive`] ended with.
#[derive(Debug)]
pub enum Step {
    /// Waiting for readiness or for rate budget.
    Pending,
    /// A response finished; `reusable` when the connection may carry the next request.
    Completed {
        latency: Duration,
        body: u64,
        reusable: bool,
    },
    /// The connection is unusable; the reason is a short, countable label.
    Failed(String),
}

/// A per-connection token bucket: `rate` bytes per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub rate: u64,
    pub burst: u64,
    tokens: u64,
    refilled: Instant,
}

impl Budget {
    pub fn new(rate: u64, now: Instant) -> Self {
        let burst = (rate / 4).max(16 * 1024);
        Budget {
            rate,
            burst,
            tokens: burst.min(rate / 10 + 1),
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) -> u64 {
        let dt = now.saturating_duration_since(self.refilled);
        let add = (self.rate as f64 * dt.as_secs_f64()) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            self.refilled = now;
        }
        self.tokens
    }
}

pub struct Conn {
    pub stream: TcpStream,
    pub state: State,
    pub readable: bool,
    pub writable: bool,
    pub opened: Instant,
    request_start: Instant,
    /// Since when this connection has been waiting for its current response head: the
    /// connect() call for its first request, the request's start for the next ones.
    pub waiting_since: Instant,
    /// Set when a response head arrives: how long it was waited for (see `waiting_since`).
    /// The engine takes it.
    pub head_wait: Option<Duration>,
    /// Body bytes over the connection's whole life.
    pub body_total: u64,
    /// `body_total` at the last progress sample.
    pub sampled_total: u64,
    budget: Option<Budget>,
    /// The TLS session, for HTTPS; `None` = plain HTTP.
    tls: Option<Box<ClientConnection>>,
}

/// Opens a non-blocking TCP connection to `addr` (IPv4), with `SO_RCVBUF` set before the
/// SYN when `rcvbuf` is given so that the window it advertises is small from the start.
pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(size) = rcvbuf {
        socket::setsockopt(&fd, sockopt::RcvBuf, &size)?;
    }
    match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let std_stream = std::net::TcpStream::from(fd);
    Ok(TcpStream::from_std(std_stream))
}

/// Reads response bytes: straight from the socket, or decrypted through the TLS session.
fn read_from(
    stream: &mut TcpStream,
    session: Option<&mut ClientConnection>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match session {
        Some(session) => tls::read(stream, session, buf),
        None => stream.read(buf),
    }
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        rate: Option<u64>,
        now: Instant,
        tls: Option<ClientConnection>,
    ) -> Self {
        Conn {
            stream,
            state: State::Connecting,
            readable: false,
            writable: false,
            opened: now,
            request_start: now,
            waiting_since: now,
            head_wait: None,
            body_total: 0,
            sampled_total: 0,
            budget: rate.map(|r| Budget::new(r, now)),
            tls: tls.map(Box::new),
        }
    }

    /// The TLS version and cipher suite agreed on, once the handshake is done.
    pub fn tls_description(&self) -> Option<String> {
        self.tls.as_deref().and_then(tls::describe)
    }

    /// Starts the next request on a kept-alive connection.
    pub fn restart(&mut self, now: Instant) {
        self.state = State::Writing { written: 0 };
        self.request_start = now;
        self.waiting_since = now;
    }

    /// Whether the connection is still waiting for its current response head.
    pub fn awaiting_head(&self) -> bool {
        !matches!(self.state, State::Body { .. })
    }

    /// Whether the body is being read (the rate limiter's tick resumes only those).
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// Makes as much progress as readiness and the rate budget allow.
    pub fn drive(&mut self, request: &[u8], buf: &mut [u8], now: Instant) -> Step {
        loop {
            match &mut self.state {
                State::Connecting => {
                    if !self.writable {
                        return Step::Pending;
                    }
                    if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
                        return Step::Failed(format!("connect: {}", e.kind()));
                    }
                    match self.stream.peer_addr() {
                        Ok(_) => {
                            // The request's latency starts here, so with TLS it includes
                            // the handshake, as a client sees it.
                            self.request_start = now;
                            self.state = if self.tls.is_some() {
                                State::Handshake
                            } else {
                                State::Writing { written: 0 }
                            };
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            self.writable = false;
                            return Step::Pending;
                        }
                        Err(e) => return Step::Failed(format!("connect: {}", e.kind())),
                    }
                }
                State::Handshake => {
                    let Some(session) = self.tls.as_deref_mut() else {
                        self.state = State::Writing { written: 0 };
                        continue;
                    };
                    if session.wants_write() {
                        if !self.writable {
                            return Step::Pending;
                        }
                        match session.write_tls(&mut self.stream) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.writable = false;
                                return Step::Pending;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Step::Failed(format!("tls write: {}", e.kind())),
                        }
                    } else if session.is_handshaking() {
                        if !self.readable {
                            return Step::Pending;
                        }
                        match session.read_tls(&mut self.stream) {
                            Ok(0) => return Step::Failed("closed in the TLS handshake".into()),
                            Ok(_) => {
                                if let Err(e) = session.process_new_packets() {
                                    return Step::Failed(format!("tls: {e}"));
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.readable = false;
                                return Step::Pending;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Step::Failed(format!("tls read: {}", e.kind())),
                        }
                    } else {
                        self.state = State::Writing { written: 0 };
                    }
                }
                State::Writing { written } => {
                    // TLS: the request is queued in rustls at once, then flushed below.
                    if let (Some(session), true) =
                        (self.tls.as_deref_mut(), *written < request.len())
                    {
                        match tls::queue(session, &request[*written..]) {
                            Ok(0) => return Step::Failed("tls: request not queued".into()),
                            Ok(n) => *written += n,
                            Err(e) => return Step::Failed(format!("tls write: {}", e.kind())),
                        }
                        continue;
                    }
                    if *written == request.len() {
                        if let Some(session) = self.tls.as_deref_mut() {
                            if session.wants_write() && !self.writable {
                                return Step::Pending;
                            }
                            match tls::flush(&mut self.stream, session) {
                                Ok(()) => {}
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    self.writable = false;
                                    return Step::Pending;
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                                Err(e) => return Step::Failed(format!("write: {}", e.kind())),
                            }
                        }
                        self.state = State::Head { buf: Vec::new() };
                        continue;
                    }
                    if !self.writable {
                        return Step::Pending;
                    }
                    match self.stream.write(&request[*written..]) {
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.writable = false;
                            return Step::Pending;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Step::Failed(format!("write: {}", e.kind())),
                    }
                }
                State::Head { buf: head_buf } => {
                    if !self.readable {
                        return Step::Pending;
                    }
                    let cap = buf.len().min(16 * 1024);
                    let n =
                        match read_from(&mut self.stream, self.tls.as_deref_mut(), &mut buf[..cap])
                        {
                            Ok(0) => return Step::Failed("closed before the head".into()),
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.readable = false;
                                return Step::Pending;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Step::Failed(format!("read head: {}", e.kind())),
                        };
                    head_buf.extend_from_slice(&buf[..n]);
                    match parse_head(head_buf) {
                        Ok(head) => {
                            if head.status != 200 {
                                return Step::Failed(format!("status {}", head.status));
                            }
                            self.head_wait =
                                Some(now.saturating_duration_since(self.waiting_since));
                            let extra = (head_buf.len() - head.head_len) as u64;
                            self.body_total += extra;
                            self.state = State::Body {
                                head,
                                received: extra,
                            };
                            if let Some(step) = self.check_complete(now) {
                                return step;
                            }
                        }
                        Err(HeadError::Incomplete) if head_buf.len() < 64 * 1024 => {}
                        Err(HeadError::Incomplete) => return Step::Failed("head too long".into()),
                        Err(HeadError::Unsupported(what)) => {
                            return Step::Failed(format!("unsupported {what}"))
                        }
                    }
                }
                State::Body { head, received } => {
                    if !self.readable {
                        return Step::Pending;
                    }
                    let mut cap = buf.len() as u64;
                    if let Some(length) = head.length {
                        cap = cap.min(length - *received);
                    }
                    if let Some(budget) = &mut self.budget {
                        cap = cap.min(budget.refill(now));
                        if cap == 0 {
                            return Step::Pending;
                        }
                    }
                    match read_from(
                        &mut self.stream,
                        self.tls.as_deref_mut(),
                        &mut buf[..cap as usize],
                    ) {
                        Ok(0) if head.length.is_none() => {
                            return self.complete(now).unwrap_or(Step::Pending);
                        }
                        Ok(0) => return Step::Failed("closed mid-body".into()),
                        Ok(n) => {
                            *received += n as u64;
                            self.body_total += n as u64;
                            if let Some(budget) = &mut self.budget {
                                budget.tokens -= n as u64;
                            }
                            if let Some(step) = self.check_complete(now) {
                                return step;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.readable = false;
                            return Step::Pending;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Step::Failed(format!("read body: {}", e.kind())),
                    }
                }
            }
        }
    }

    fn check_complete(&mut self, now: Instant) -> Option<Step> {
        match &self.state {
            State::Body { head, received } if head.length == Some(*received) => self.complete(now),
            _ => None,
        }
    }

    fn complete(&mut self, now: Instant) -> Option<Step> {
        let State::Body { head, received } = &self.state else {
            return None;
        };
        Some(Step::Completed {
            latency: now.saturating_duration_since(self.request_start),
            body: *received,
            reusable: !head.close,
        })
    }
}
