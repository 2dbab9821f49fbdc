//! The handoff protocol between a PHP worker and the manager.
//!
//! Transport: a Unix `SOCK_SEQPACKET` socket, so every message arrives whole or not at all
//! and a closed peer is seen as end-of-file. A connection carries one handoff after
//! another (a PHP process keeps its connection between requests, so a handoff costs no
//! connect or accept).
//!
//! **One-way handoff** (the default, [`Channel`]): a new connection starts with the
//! worker's hello, which the manager answers with [`Reply::Accept`] (this peer may hand
//! off, and this manager takes one-way handoffs) or [`Reply::Refuse`]. That is the only
//! answer the worker ever waits for. Each handoff is then one message, a job of kind
//! "handoff" with its two descriptors, sent without waiting (`MSG_DONTWAIT`): once the
//! kernel has queued it, the manager owns the request. The worker's copy of the
//! connection was made harmless before the send, so a send that fails (`EAGAIN` when the
//! manager has fallen behind and the socket's send buffer is full, a closed manager)
//! leaves the worker owning its request, and nothing was written.
//!
//! The manager never closes a connection with a handoff queued on it: it first shuts the
//! connection for reading (from then on the worker's send fails with `EPIPE` and nothing is
//! handed over), then reads and runs what was queued before that, then closes.
//!
//! **Confirmed handoff** (`handoff.confirm`): two phases, for a worker that must be able to
//! serve the request itself after the manager got the descriptors. Each handoff:
//!
//! 1. worker → manager: a [`Job`] message with exactly two descriptors attached by
//!    `SCM_RIGHTS`: the client connection, then the open file.
//! 2. manager → worker: [`Reply::Accept`] (the manager holds the job) or
//!    [`Reply::Refuse`] with a reason.
//! 3. The worker makes its own copy of the connection harmless, then sends [`Reply::Go`].
//! 4. Only after `Go` does the manager touch the connection. If the worker goes away
//!    before `Go`, the manager drops the job and writes nothing.
//!
//! So at no moment can two processes write to one connection: before `Go` only the worker
//! may write (and it falls back to serving the request itself), after `Go` only the manager.
//!
//! Reusing a connection changes nothing in that argument: the manager closes a connection
//! it no longer serves (idle too long, draining, restarted) only between handoffs, so a job
//! sent on it meets end-of-file or a reset before any accept, and the worker, which still
//! owns its request, may try a fresh connection within the same deadline. After a refusal
//! or any error the worker closes the connection.
//!
//! Wire format of a job (all integers big-endian, every length checked against the
//! message before anything is allocated):
//!
//! ```text
//! "HO" version:u8 kind:u8=1 framing:u8 reserved:u8 request_id:u16 status:u16
//! header_count:u16 piece_count:u16 rate:u64
//! reason:str16 (name:str16 value:bytes16)*header_count piece*piece_count
//! client:str16 file_name:str16 fallbacks:u32*5 tag:str16 rate_group:str16
//! piece = 0:u8 len:u32 bytes | 1:u8 offset:u64 length:u64
//! ```
//!
//! where `str16` is a `u16` length followed by that many bytes of UTF-8, and `bytes16` the
//! same without the UTF-8 rule (a header value the script set is passed on byte for byte;
//! the head's validation still keeps CR, LF and NUL out). A piece is either
//! literal body bytes (multipart part heads) or a range of the file. `fallbacks` are the
//! worker's report of the requests it served itself since its last report, one count per
//! [`FallbackCause`] in code order (the manager adds them to its metrics). `tag` and
//! `rate_group` are the script's `tag` and `rate_group` options, empty when not given.
//! Replies are `"HO" version kind` followed, for a refusal, by the reason text. A one-way
//! handoff has the job's layout with kind 6; a hello is `"HO" version 7`.
//!
//! This is the only module that touches `SCM_RIGHTS` (through [`crate::sys`]). The
//! worker's side of the handshake is [`Offer`]; the manager's side is `manager/src/server.rs`.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use crate::head::{Head, HeadError, Header};
use crate::io_class::{classify, IoClass};
use crate::plan::Piece;
use crate::sys::recv_with_fds;

/// The protocol version this build speaks; a message with another version is refused.
pub const VERSION: u8 = 3;
/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
const MAGIC: [u8; 2] = *b"HO";
const KIND_JOB: u8 = 1;
const KIND_ACCEPT: u8 = 2;
const KIND_REFUSE: u8 = 3;
const KIND_GO: u8 = 4;
const KIND_DRAIN: u8 = 5;
const KIND_HANDOFF: u8 = 6;
const KIND_HELLO: u8 = 7;
const FIXED_LEN: usize = 22;

pub use crate::plan::Framing;

/// Why a worker served a request itself instead of handing it off (`handoff.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCause {
    /// No manager answered at the socket (not running, wrong path, no permission).
    Unreachable,
    /// The manager refused the job (at `--max-downloads`, shutting down, peer not allowed,
    /// invalid job).
    Refused,
    /// The handshake failed otherwise (timeout, the manager died before answering).
    Failed,
    /// The manager accepted but went away before the worker's go.
    GoneBeforeGo,
    /// The worker found no connection it could hand off (SAPI, offsets not validated).
    NoConnection,
}

impl FallbackCause {
    /// How many causes there are.
    pub const COUNT: usize = 5;

    /// Every cause, in wire (and array) order.
    pub const ALL: [FallbackCause; FallbackCause::COUNT] = [
        FallbackCause::Unreachable,
        FallbackCause::Refused,
        FallbackCause::Failed,
        FallbackCause::GoneBeforeGo,
        FallbackCause::NoConnection,
    ];

    /// The index of this cause in [`Fallbacks`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            FallbackCause::Unreachable => "unreachable",
            FallbackCause::Refused => "refused",
            FallbackCause::Failed => "failed",
            FallbackCause::GoneBeforeGo => "gone_before_go",
            FallbackCause::NoConnection => "no_connection",
        }
    }
}

/// Fallback counts per [`FallbackCause`], indexed by [`FallbackCause::index`].
pub type Fallbacks = [u32; FallbackCause::COUNT];

/// One download handed to the manager: what to write, and which bytes of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub framing: Framing,
    /// The FastCGI request id the records are for (0 for raw HTTP).
    pub request_id: u16,
    pub head: Head,
    /// The body in order: file ranges and literal bytes (empty for HEAD).
    pub body: Vec<Piece>,
    /// Most bytes per second for this download (0: no limit of its own).
    pub rate: u64,
    /// Client address as the SAPI reported it, for the log.
    pub client: String,
    /// The file's name as the script gave it, for the log; never sent to the client.
    pub file_name: String,
    /// The worker's fallbacks since its last report, for the manager's metrics.
    pub fallbacks: Fallbacks,
    /// The application's key for this download (`tag` option; empty: none), carried into
    /// the access log, `/status` and completion records.
    pub tag: String,
    /// Downloads with the same non-empty group share one bucket of `rate` bytes/s.
    pub rate_group: String,
}

/// A manager's answer to a job or a hello, a worker's go-ahead or hello, or a new
/// manager's request that the old one hand over the socket path (`--takeover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accept,
    Refuse(String),
    Go,
    Drain,
    /// A worker's first message on a connection for one-way handoffs.
    Hello,
}

/// What a peer opened a connection with.
// One value per handshake, moved once: boxing the job would cost an allocation and save
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Incoming {
    /// A confirmed handoff: answer it, and start only on the worker's go.
    Job(Received),
    /// A one-way handoff: the manager owns the request from now on.
    Handoff(Received),
    /// A one-way handoff that cannot be run as sent; the manager still owns its request.
    BadHandoff(BadHandoff),
    /// A worker opens a connection for one-way handoffs.
    Hello,
    /// A new manager took over the socket path: stop taking handoffs and finish.
    Drain,
}

/// A malformed one-way handoff: why, and the client connection with what is needed to
/// answer on it (when the message said that much and carried its two descriptors).
#[derive(Debug)]
pub struct BadHandoff {
    pub error: ProtocolError,
    pub answer: Option<Answerable>,
}

/// A connection the manager can still answer (with an error response) though its job was
/// malformed: the framing and request id come from the job's fixed part.
#[derive(Debug)]
pub struct Answerable {
    pub conn: OwnedFd,
    pub framing: Framing,
    pub request_id: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {len} bytes is shorter than its fixed part")]
    Truncated { len: usize },
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge { len: usize },
    #[error("not a handoff message (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {version} (this build speaks {VERSION})")]
    Version { version: u8 },
    #[error("unexpected message kind {kind}")]
    Kind { kind: u8 },
    #[error("field {field} runs past the end of the message")]
    Overrun { field: &'static str },
    #[error("{extra} bytes after the last field")]
    Trailing { extra: usize },
    #[error("field {field} is not valid UTF-8")]
    Utf8 { field: &'static str },
    #[error("field {field} is longer than 65535 bytes")]
    FieldTooLong { field: &'static str },
    #[error("unknown framing {framing}")]
    Framing { framing: u8 },
    #[error("file range {offset}+{length} overflows")]
    Range { offset: u64, length: u64 },
    #[error("unknown body piece kind {kind}")]
    PieceKind { kind: u8 },
    #[error("invalid head: {0}")]
    Head(#[from] HeadError),
    #[error("expected 2 descriptors (connection, file), got {got}")]
    FdCount { got: usize },
    #[error("control data was truncated (MSG_CTRUNC)")]
    ControlTruncated,
    #[error("message was truncated (MSG_TRUNC)")]
    MessageTruncated,
    #[error("manager refused the handoff: {reason}")]
    Refused { reason: String },
    #[error("peer closed the handoff socket")]
    Closed,
    /// The worker's handshake deadline ran out (its socket timeouts are what is left of
    /// it, so an `EAGAIN` on the worker's side means this).
    #[error("timed out waiting for the peer")]
    TimedOut,
    /// A non-blocking call found nothing to do yet (`EAGAIN` on the manager's side, or
    /// with `MSG_DONTWAIT`): wait for readiness and call again.
    #[error("the handoff socket would block")]
    WouldBlock,
    #[error("handoff socket {op}: {errno}")]
    Io { op: &'static str, errno: Errno },
}

impl ProtocolError {
    fn io(op: &'static str) -> impl FnOnce(Errno) -> ProtocolError {
        move |errno| match classify(errno) {
            IoClass::WouldBlock => ProtocolError::WouldBlock,
            _ => ProtocolError::Io { op, errno },
        }
    }

    /// For a socket whose timeouts stand for a deadline: a call that would have blocked
    /// past it timed out.
    pub fn timed_out(self) -> ProtocolError {
        match self {
            ProtocolError::WouldBlock => ProtocolError::TimedOut,
            other => other,
        }
    }

    /// Whether the socket had nothing to read yet (non-blocking manager side).
    pub fn is_would_block(&self) -> bool {
        matches!(self, ProtocolError::WouldBlock)
    }

    /// Whether a reused connection turned out to be closed by the manager before it
    /// accepted anything: the job was dropped unseen, and a fresh connection may be tried.
    pub fn is_stale_connection(&self) -> bool {
        matches!(
            self,
            ProtocolError::Closed
                | ProtocolError::Io {
                    errno: Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN,
                    ..
                }
        )
    }
}

fn put_str(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), ProtocolError> {
    put_bytes(out, field, s.as_bytes())
}

fn put_bytes(out: &mut Vec<u8>, field: &'static str, b: &[u8]) -> Result<(), ProtocolError> {
    let len = u16::try_from(b.len()).map_err(|_| ProtocolError::FieldTooLong { field })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// A bounds-checked cursor over a received message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ProtocolError::Overrun { field })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u16(field)?);
        self.bytes(len, field)
    }

    fn str16(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        std::str::from_utf8(self.bytes16(field)?)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::Utf8 { field })
    }
}

fn check_preamble(buf: &[u8]) -> Result<u8, ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::Truncated { len: buf.len() });
    }
    if buf[..2] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(ProtocolError::Version { version: buf[2] });
    }
    Ok(buf[3])
}

impl Job {
    /// Serialises the job for a confirmed handoff; fails if the head could split the
    /// response or a field is too long for the format.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        self.encode_as(KIND_JOB)
    }

    /// Serialises the job for a one-way handoff ([`Channel::hand_off`]).
    pub fn encode_one_way(&self) -> Result<Vec<u8>, ProtocolError> {
        self.encode_as(KIND_HANDOFF)
    }

    fn encode_as(&self, kind: u8) -> Result<Vec<u8>, ProtocolError> {
        self.head.validate()?;
        let pieces = u16::try_from(self.body.len()).map_err(|_| ProtocolError::FieldTooLong {
            field: "piece count",
        })?;
        let count =
            u16::try_from(self.head.headers.len()).map_err(|_| ProtocolError::FieldTooLong {
                field: "header count",
            })?;
        let framing = match self.framing {
            Framing::Http => 0u8,
            Framing::FastCgi => 1u8,
        };
        let request_id = self.request_id;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind, framing, 0]);
        out.extend_from_slice(&request_id.to_be_bytes());
        out.extend_from_slice(&self.head.status.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&pieces.to_be_bytes());
        out.extend_from_slice(&self.rate.to_be_bytes());
        put_str(&mut out, "reason", &self.head.reason)?;
        for h in &self.head.headers {
            put_str(&mut out, "header name", &h.name)?;
            put_bytes(&mut out, "header value", &h.value)?;
        }
        for piece in &self.body {
            match piece {
                Piece::Bytes(b) => {
                    let len = u32::try_from(b.len())
                        .map_err(|_| ProtocolError::TooLarge { len: b.len() })?;
                    out.push(0);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(b);
                }
                Piece::File { offset, length } => {
                    if offset.checked_add(*length).is_none() {
                        return Err(ProtocolError::Range {
                            offset: *offset,
                            length: *length,
                        });
                    }
                    out.push(1);
                    out.extend_from_slice(&offset.to_be_bytes());
                    out.extend_from_slice(&length.to_be_bytes());
                }
            }
        }
        put_str(&mut out, "client", &self.client)?;
        put_str(&mut out, "file name", &self.file_name)?;
        for count in self.fallbacks {
            out.extend_from_slice(&count.to_be_bytes());
        }
        put_str(&mut out, "tag", &self.tag)?;
        put_str(&mut out, "rate group", &self.rate_group)?;
        if out.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge { len: out.len() });
        }
        Ok(out)
    }

    /// Parses and validates a job message (of either kind).
    pub fn decode(buf: &[u8]) -> Result<Job, ProtocolError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge { len: buf.len() });
        }
        let kind = check_preamble(buf)?;
        if kind != KIND_JOB && kind != KIND_HANDOFF {
            return Err(ProtocolError::Kind { kind });
        }
        if buf.len() < FIXED_LEN {
            return Err(ProtocolError::Truncated { len: buf.len() });
        }
        let mut r = Reader { buf, pos: 4 };
        let fixed = r.bytes(2, "framing")?;
        let framing_byte = fixed[0];
        let request_id = r.u16("request id")?;
        let framing = match framing_byte {
            0 => Framing::Http,
            1 => Framing::FastCgi,
            framing => return Err(ProtocolError::Framing { framing }),
        };
        let status = r.u16("status")?;
        let count = r.u16("header count")?;
        let piece_count = r.u16("piece count")?;
        let rate = r.u64("rate")?;
        let reason = r.str16("reason")?;
        // Each header needs at least 4 length bytes, so `count` cannot make us allocate
        // more than the message could describe.
        let remaining = buf.len() - r.pos;
        if usize::from(count) * 4 > remaining {
            return Err(ProtocolError::Overrun { field: "headers" });
        }
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = r.str16("header name")?;
            let value = r.bytes16("header value")?.to_vec();
            headers.push(Header { name, value });
        }
        // Each piece takes at least 5 bytes: again no allocation beyond the message.
        if usize::from(piece_count) * 5 > buf.len() - r.pos {
            return Err(ProtocolError::Overrun { field: "pieces" });
        }
        let mut body = Vec::with_capacity(usize::from(piece_count));
        for _ in 0..piece_count {
            let kind = r.bytes(1, "piece kind")?[0];
            match kind {
                0 => {
                    let b = r.bytes(4, "piece length")?;
                    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    body.push(Piece::Bytes(r.bytes(len, "piece bytes")?.to_vec()));
                }
                1 => {
                    let offset = r.u64("piece offset")?;
                    let length = r.u64("piece length")?;
                    if offset.checked_add(length).is_none() {
                        return Err(ProtocolError::Range { offset, length });
                    }
                    body.push(Piece::File { offset, length });
                }
                kind => return Err(ProtocolError::PieceKind { kind }),
            }
        }
        let client = r.str16("client")?;
        let file_name = r.str16("file name")?;
        let mut fallbacks = Fallbacks::default();
        for count in &mut fallbacks {
            let b = r.bytes(4, "fallbacks")?;
            *count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        let tag = r.str16("tag")?;
        let rate_group = r.str16("rate group")?;
        if r.pos != buf.len() {
            return Err(ProtocolError::Trailing {
                extra: buf.len() - r.pos,
            });
        }
        let head = Head {
            status,
            reason,
            headers,
        };
        head.validate()?;
        Ok(Job {
            framing,
            request_id,
            head,
            body,
            rate,
            client,
            file_name,
            fallbacks,
            tag,
            rate_group,
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Reply::Accept => (KIND_ACCEPT, ""),
            Reply::Refuse(reason) => (KIND_REFUSE, reason.as_str()),
            Reply::Go => (KIND_GO, ""),
            Reply::Drain => (KIND_DRAIN, ""),
            Reply::Hello => (KIND_HELLO, ""),
        };
        let text = clip_reason(text);
        let mut out = Vec::with_capacity(4 + text.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind]);
        out.extend_from_slice(text.as_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Reply, ProtocolError> {
        match check_preamble(buf)? {
            KIND_ACCEPT if buf.len() == 4 => Ok(Reply::Accept),
            KIND_GO if buf.len() == 4 => Ok(Reply::Go),
            KIND_DRAIN if buf.len() == 4 => Ok(Reply::Drain),
            KIND_HELLO if buf.len() == 4 => Ok(Reply::Hello),
            KIND_REFUSE => Ok(Reply::Refuse(
                clip_reason(&String::from_utf8_lossy(&buf[4..])).to_owned(),
            )),
            KIND_ACCEPT | KIND_GO | KIND_DRAIN | KIND_HELLO => Err(ProtocolError::Trailing {
                extra: buf.len() - 4,
            }),
            kind => Err(ProtocolError::Kind { kind }),
        }
    }
}

/// A refusal reason is for logs: at most 1 KiB, cut at a character boundary.
fn clip_reason(text: &str) -> &str {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A job received by the manager, with the two descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    pub job: Job,
    pub conn: OwnedFd,
    pub file: OwnedFd,
}

/// Reads the next message of a connection: a job and its descriptors, a hello, or a drain
/// request. Every received descriptor is owned (and so closed) whatever the outcome.
/// `Ok(None)` means the peer closed the socket.
///
/// A malformed one-way handoff is not an error but [`Incoming::BadHandoff`]: its request
/// belongs to the manager, which answers it if it can.
pub fn recv_job(sock: BorrowedFd<'_>) -> Result<Option<Incoming>, ProtocolError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let msg = recv_with_fds(sock, &mut buf).map_err(ProtocolError::io("recvmsg"))?;
    let mut fds = msg.fds;
    let len = msg.len;
    let flags = MsgFlags::from_bits_retain(msg.flags);
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let one_way = len >= 4 && matches!(check_preamble(&buf[..4]), Ok(KIND_HANDOFF));
    let checked = check_message(&buf, len, flags);
    if one_way {
        let job = checked.and_then(|()| Job::decode(&buf[..len]));
        return Ok(Some(match (job, fds.len()) {
            (Ok(job), 2) => {
                let file = fds.pop().ok_or(ProtocolError::FdCount { got: 0 })?;
                let conn = fds.pop().ok_or(ProtocolError::FdCount { got: 1 })?;
                Incoming::Handoff(Received { job, conn, file })
            }
            (Ok(_), got) => Incoming::BadHandoff(BadHandoff {
                error: ProtocolError::FdCount { got },
                answer: None,
            }),
            (Err(error), got) => {
                // The descriptors are trusted to be (connection, file) only when exactly
                // two came, nothing was cut off, and the fixed part names the framing.
                let answer = match (got, fixed_framing(&buf[..len.min(buf.len())])) {
                    (2, Some((framing, request_id))) if !flags.contains(MsgFlags::MSG_CTRUNC) => {
                        fds.truncate(1);
                        fds.pop().map(|conn| Answerable {
                            conn,
                            framing,
                            request_id,
                        })
                    }
                    _ => None,
                };
                Incoming::BadHandoff(BadHandoff { error, answer })
            }
        }));
    }
    checked?;
    if fds.is_empty() {
        match Reply::decode(&buf[..len]) {
            Ok(Reply::Drain) => return Ok(Some(Incoming::Drain)),
            Ok(Reply::Hello) => return Ok(Some(Incoming::Hello)),
            _ => {}
        }
    }
    let job = Job::decode(&buf[..len])?;
    if fds.len() != 2 {
        return Err(ProtocolError::FdCount { got: fds.len() });
    }
    let file = fds.pop().ok_or(ProtocolError::FdCount { got: 0 })?;
    let conn = fds.pop().ok_or(ProtocolError::FdCount { got: 1 })?;
    Ok(Some(Incoming::Job(Received { job, conn, file })))
}

/// The checks every received message must pass before its bytes are parsed.
fn check_message(buf: &[u8], len: usize, flags: MsgFlags) -> Result<(), ProtocolError> {
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(ProtocolError::ControlTruncated);
    }
    if flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE || len > buf.len() {
        return Err(ProtocolError::MessageTruncated);
    }
    Ok(())
}

/// The framing and request id from a job's fixed part, if the message has that much and
/// names a known framing.
fn fixed_framing(buf: &[u8]) -> Option<(Framing, u16)> {
    if buf.len() < 8 {
        return None;
    }
    let framing = match buf[4] {
        0 => Framing::Http,
        1 => Framing::FastCgi,
        _ => return None,
    };
    Some((framing, u16::from_be_bytes([buf[6], buf[7]])))
}

/// Sends a reply (either direction). Never blocks longer than the socket's send timeout.
pub fn send_reply(sock: BorrowedFd<'_>, reply: &Reply) -> Result<(), ProtocolError> {
    let bytes = reply.encode();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(ProtocolError::io("send"))?;
    Ok(())
}

/// Reads one reply. `Err(Closed)` when the peer went away.
pub fn recv_reply(sock: BorrowedFd<'_>, flags: MsgFlags) -> Result<Reply, ProtocolError> {
    let mut buf = [0u8; 2048];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, flags)
        .map_err(ProtocolError::io("recv"))?;
    if n == 0 {
        return Err(ProtocolError::Closed);
    }
    Reply::decode(&buf[..n])
}

/// The worker's side of one handoff.
///
/// ```text
/// let offer = Offer::connect(path, timeout)?;   // manager unreachable: serve it yourself
/// offer.propose(&job, conn, file)?;            // refused / timed out: serve it yourself
/// // ... make the worker's copy of the connection harmless ...
/// offer.go()?;                                 // from here on only the manager writes
/// ```
///
/// `timeout` bounds the whole handshake up to the manager's answer (connecting, sending
/// the job, waiting for accept): each step waits only for what is left of it. `go` never
/// waits. The manager's own limit (`--handshake-timeout`) runs from its accept to the go;
/// if it fires first, the go fails with `EPIPE` and the worker serves the request itself,
/// and a go that was sent before is still honoured (see `manager/src/server.rs` and
/// docs/internals.md, "The handshake").
#[derive(Debug)]
pub struct Offer {
    sock: OwnedFd,
    deadline: Instant,
}

impl Offer {
    /// Connects to the manager; the handshake up to the manager's answer takes at most
    /// `timeout` from now.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Offer, ProtocolError> {
        Offer::connect_until(path, Instant::now() + timeout)
    }

    /// Connects to the manager; the handshake up to the manager's answer ends by
    /// `deadline`.
    pub fn connect_until(path: &Path, deadline: Instant) -> Result<Offer, ProtocolError> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(ProtocolError::io("socket"))?;
        let offer = Offer { sock, deadline };
        // A full backlog makes connect wait, up to the send timeout.
        offer.arm(sockopt::SendTimeout)?;
        let addr = UnixAddr::new(path).map_err(ProtocolError::io("socket path"))?;
        connect(offer.sock.as_raw_fd(), &addr)
            .map_err(ProtocolError::io("connect"))
            .map_err(ProtocolError::timed_out)?;
        Ok(offer)
    }

    /// Sets a socket timeout to what is left until the deadline; `TimedOut` if nothing is.
    fn arm<O>(&self, opt: O) -> Result<(), ProtocolError>
    where
        O: nix::sys::socket::SetSockOpt<Val = TimeVal>,
    {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProtocolError::TimedOut);
        }
        // A zero timeval would mean "wait forever": at least one microsecond.
        let tv = TimeVal::new(
            i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            i64::from(left.subsec_micros().max(1)),
        );
        setsockopt(&self.sock, opt, &tv).map_err(ProtocolError::io("setsockopt"))
    }

    /// Sends the job with its two descriptors and waits for the manager's answer.
    /// `Ok(())` means the manager holds the job and waits for [`Offer::go`].
    pub fn propose(
        &self,
        job: &Job,
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
    ) -> Result<(), ProtocolError> {
        let bytes = job.encode()?;
        let fds = [conn.as_raw_fd(), file.as_raw_fd()];
        self.arm(sockopt::SendTimeout)?;
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ProtocolError::io("sendmsg"))
        .map_err(ProtocolError::timed_out)?;
        self.arm(sockopt::ReceiveTimeout)?;
        match recv_reply(self.sock.as_fd(), MsgFlags::empty()).map_err(ProtocolError::timed_out)? {
            Reply::Accept => Ok(()),
            Reply::Refuse(reason) => Err(ProtocolError::Refused { reason }),
            Reply::Go | Reply::Drain | Reply::Hello => Err(ProtocolError::Kind { kind: KIND_GO }),
        }
    }

    /// The next handoff on a connection that carried one before (returned by
    /// [`Offer::go`]); the handshake up to the manager's answer ends by `deadline`.
    ///
    /// The manager may have closed it since (idle, restarted, draining): then `propose`
    /// fails with [`ProtocolError::Closed`] or an I/O error before anything was accepted
    /// ([`ProtocolError::is_stale_connection`]), and a fresh connection may be tried.
    pub fn resume(sock: OwnedFd, deadline: Instant) -> Offer {
        Offer { sock, deadline }
    }

    /// Tells the manager to start writing. Never waits: the socket's send buffer is empty
    /// at this point. An error means the manager did not get the go (it went away, or its
    /// handshake limit ended the handshake first). On success the connection is returned
    /// for the next handoff ([`Offer::resume`]).
    pub fn go(self) -> Result<OwnedFd, ProtocolError> {
        let bytes = Reply::Go.encode();
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(ProtocolError::io("send"))?;
        Ok(self.sock)
    }
}

/// The worker's connection for one-way handoffs, kept between requests.
///
/// ```text
/// let channel = Channel::open(path, deadline)?;  // hello answered: one-way handoffs go
/// // ... make the worker's copy of the connection harmless ...
/// channel.hand_off(&job_bytes, conn, file)?;     // Ok: the manager owns the request
/// ```
///
/// Opening waits for the manager's answer to the hello (bounded by the deadline); a
/// handoff never waits and reads nothing.
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
}

impl Channel {
    /// Connects and says hello; `Ok` once the manager has accepted this peer for one-way
    /// handoffs. Everything ends by `deadline`.
    pub fn open(path: &Path, deadline: Instant) -> Result<Channel, ProtocolError> {
        let offer = Offer::connect_until(path, deadline)?;
        offer.arm(sockopt::SendTimeout)?;
        send_reply(offer.sock.as_fd(), &Reply::Hello).map_err(ProtocolError::timed_out)?;
        offer.arm(sockopt::ReceiveTimeout)?;
        match recv_reply(offer.sock.as_fd(), MsgFlags::empty()).map_err(ProtocolError::timed_out)? {
            Reply::Accept => Ok(Channel { sock: offer.sock }),
            Reply::Refuse(reason) => Err(ProtocolError::Refused { reason }),
            Reply::Go | Reply::Drain | Reply::Hello => Err(ProtocolError::Kind { kind: KIND_GO }),
        }
    }

    /// A connection that carried a hello before (kept by the worker between requests).
    pub fn resume(sock: OwnedFd) -> Channel {
        Channel { sock }
    }

    /// The connection, to keep for the next handoff.
    pub fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// Hands the request over in one non-blocking send: `Ok` means the kernel queued the
    /// job with both descriptors, and the manager owns the request. Any error means
    /// nothing was handed over: [`ProtocolError::WouldBlock`] when the manager has fallen
    /// behind (the socket's send buffer holds as many queued handoffs as it can), a stale
    /// connection ([`ProtocolError::is_stale_connection`]) when the manager closed it.
    /// `job` is a message from [`Job::encode_one_way`].
    pub fn hand_off(
        &self,
        job: &[u8],
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
    ) -> Result<(), ProtocolError> {
        let fds = [conn.as_raw_fd(), file.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(job)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(ProtocolError::io("sendmsg"))?;
        // A SEQPACKET send is all or nothing; anything else is not a handoff.
        if sent != job.len() {
            return Err(ProtocolError::Truncated { len: sent });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let mut head = Head::new(200);
        head.headers
            .push(Header::new("Content-Type", "application/pdf"));
        head.headers.push(Header::new("Set-Cookie", "a=b; Path=/"));
        Job {
            framing: Framing::FastCgi,
            request_id: 1,
            head,
            body: vec![
                Piece::Bytes(b"--part\r\n".to_vec()),
                Piece::File {
                    offset: 5,
                    length: 1 << 33,
                },
            ],
            rate: 1 << 20,
            client: "127.0.0.1".into(),
            file_name: "/srv/files/ä.pdf".into(),
            fallbacks: [3, 0, 1, 0, u32::MAX],
            tag: "order:17/user:5".into(),
            rate_group: "user:5".into(),
        }
    }

    #[test]
    fn job_round_trips() {
        let j = job();
        assert_eq!(Job::decode(&j.encode().unwrap()).unwrap(), j);
        let mut h = j.clone();
        h.framing = Framing::Http;
        assert_eq!(Job::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = job().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(Job::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn bad_version_magic_kind_and_trailing_bytes_are_rejected() {
        let bytes = job().encode().unwrap();
        let mut b = bytes.clone();
        b[2] = 9;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Version { version: 9 })
        ));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(Job::decode(&b), Err(ProtocolError::BadMagic)));
        let mut b = bytes.clone();
        b[3] = KIND_GO;
        assert!(matches!(Job::decode(&b), Err(ProtocolError::Kind { .. })));
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Trailing { extra: 1 })
        ));
    }

    #[test]
    fn a_lying_header_count_does_not_allocate_or_pass() {
        let mut b = job().encode().unwrap();
        b[10] = 0xff;
        b[11] = 0xff;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Overrun { .. })
        ));
        let mut b = job().encode().unwrap();
        b[12] = 0xff;
        b[13] = 0xff;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Overrun { .. })
        ));
    }

    #[test]
    fn a_head_that_would_split_the_response_is_rejected_on_both_sides() {
        let mut j = job();
        j.head.headers.push(Header::new("X-A", "1\r\n\r\ninjected"));
        assert!(matches!(j.encode(), Err(ProtocolError::Head(_))));
    }

    #[test]
    fn one_way_jobs_round_trip_and_are_told_apart() {
        let j = job();
        let one_way = j.encode_one_way().unwrap();
        let confirmed = j.encode().unwrap();
        assert_eq!(Job::decode(&one_way).unwrap(), j);
        assert_ne!(one_way[3], confirmed[3]);
        assert_eq!(one_way[4..], confirmed[4..]);
        assert_eq!(fixed_framing(&one_way), Some((Framing::FastCgi, 1)));
        assert_eq!(fixed_framing(&one_way[..7]), None);
    }

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn stream_pair() -> (OwnedFd, OwnedFd) {
        nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_one_way_handoff_arrives_with_its_descriptors() {
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        let channel = Channel::resume(worker);
        channel
            .hand_off(&job().encode_one_way().unwrap(), conn.as_fd(), file.as_fd())
            .unwrap();
        match recv_job(manager.as_fd()).unwrap() {
            Some(Incoming::Handoff(r)) => assert_eq!(r.job, job()),
            other => panic!("expected a one-way handoff, got {other:?}"),
        }
    }

    #[test]
    fn a_malformed_one_way_handoff_keeps_its_connection_to_answer_on() {
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        let mut bytes = job().encode_one_way().unwrap();
        bytes.push(0);
        Channel::resume(worker)
            .hand_off(&bytes, conn.as_fd(), file.as_fd())
            .unwrap();
        match recv_job(manager.as_fd()).unwrap() {
            Some(Incoming::BadHandoff(BadHandoff {
                error: ProtocolError::Trailing { extra: 1 },
                answer: Some(a),
            })) => {
                assert_eq!((a.framing, a.request_id), (Framing::FastCgi, 1));
            }
            other => panic!("expected an answerable bad handoff, got {other:?}"),
        }
    }

    #[test]
    fn a_full_queue_is_would_block_and_hands_nothing_over() {
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        let channel = Channel::resume(worker);
        let bytes = job().encode_one_way().unwrap();
        let mut sent = 0;
        let err = loop {
            match channel.hand_off(&bytes, conn.as_fd(), file.as_fd()) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the queue never filled");
        };
        assert!(err.is_would_block(), "{err:?}");
        assert!(sent > 10, "only {sent} handoffs were queued");
        eprintln!(
            "{sent} one-way handoffs of {} bytes queued before EAGAIN",
            bytes.len()
        );
        // Exactly the queued ones arrive; the refused send left nothing behind.
        let mut got = 0;
        while let Ok(Some(Incoming::Handoff(_))) = recv_job(manager.as_fd()) {
            got += 1;
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn a_connection_shut_for_reading_refuses_the_handoff() {
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        nix::sys::socket::shutdown(manager.as_raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
        let err = Channel::resume(worker)
            .hand_off(&job().encode_one_way().unwrap(), conn.as_fd(), file.as_fd())
            .unwrap_err();
        assert!(err.is_stale_connection(), "{err:?}");
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Accept,
            Reply::Go,
            Reply::Drain,
            Reply::Hello,
            Reply::Refuse("busy".into()),
        ] {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
        assert!(Reply::decode(b"HO").is_err());
    }

    #[test]
    fn refusal_reasons_are_clipped_the_same_way_both_ways() {
        // Found by the decode_job fuzz target: a long or invalid UTF-8 reason must come
        // back from a round trip unchanged.
        let mut msg = vec![b'H', b'O', VERSION, KIND_REFUSE];
        msg.extend(std::iter::repeat_n(0xffu8, 600));
        let r = Reply::decode(&msg).unwrap();
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let long = Reply::Refuse("é".repeat(700));
        let once = Reply::decode(&long.encode()).unwrap();
        assert_eq!(Reply::decode(&once.encode()).unwrap(), once);
    }
}
