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
//! "HO" version:u8 kind:u8=1 framing:u8 flags:u8 request_id:u16 status:u16
//! header_count:u16 piece_count:u16 rate:u64
//! reason:str16 (name:str16 value:bytes16)*header_count piece*piece_count
//! client:str16 file_name:str16 fallbacks:u32*5 tag:str16 rate_group:str16
//! piece = 0:u8 len:u32 bytes | 1:u8 offset:u64 length:u64
//! ```
//!
//! where `flags` has one bit, 1: the web server set `FCGI_KEEP_CONN` (a worker older than
//! the flag sends 0 there, and a manager older than it ignores the byte); `str16` is a
//! `u16` length followed by that many bytes of UTF-8, and `bytes16` the same without the
//! UTF-8 rule (a header value the script set is passed on byte for byte; the head's
//! validation still keeps CR, LF and NUL out). A piece is either
//! literal body bytes (multipart part heads) or a range of the file. `fallbacks` are the
//! worker's report of the requests it served itself since its last report, one count per
//! [`FallbackCause`] in code order (the manager adds them to its metrics). `tag` and
//! `rate_group` are the script's `tag` and `rate_group` options, empty when not given.
//! Replies are `"HO" version kind` followed, for a refusal, by the reason text. A one-way
//! handoff has the job's layout with kind 6; a hello is `"HO" version 7`.
//!
//! This is the only module that touches `SCM_RIGHTS` (through the crate's `sys` module).
//! It is one folder with a part per side, so that a reader finds each side alone:
//!
//! - `wire`: the message layout: the message types ([`Job`], [`Reply`], [`FallbackCause`]),
//!   their encoding and decoding with every length checked, and sending and receiving a
//!   reply.
//! - `worker`: the worker's side: the confirmed handshake ([`Offer`]: connect, propose,
//!   go) and the kept connection for one-way handoffs ([`Channel`]: hello, then one
//!   non-blocking send per handoff).
//! - `manager`: the manager's side: receiving a message with its descriptors and checking
//!   it ([`recv_job`] into [`Incoming`], [`Received`], [`BadHandoff`]); the manager crate
//!   runs the handshake with it (`manager/src/handoffs/server/`).
//!
//! [`ProtocolError`], every side's error, is here. The paths `handoff_core::protocol::X`
//! name every public item whichever part holds it.

mod manager;
mod wire;
mod worker;

pub use manager::{recv_job, Answerable, BadHandoff, Incoming, Received};
pub use wire::{
    recv_reply, send_reply, FallbackCause, Fallbacks, Framing, Job, Reply, MAX_MESSAGE, VERSION,
};
pub use worker::{Channel, Offer};

use nix::errno::Errno;

use crate::head::HeadError;
use crate::io_class::{classify, IoClass};

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
    #[error("unknown job flags {flags:#04x}")]
    Flags { flags: u8 },
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

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

    use nix::sys::socket::{AddressFamily, SockFlag, SockType};

    use super::*;
    use crate::head::{Head, Header};
    use crate::plan::Piece;

    /// A job with every field set, for the tests of every part.
    pub(super) fn job() -> Job {
        let mut head = Head::new(200);
        head.headers
            .push(Header::new("Content-Type", "application/pdf"));
        head.headers.push(Header::new("Set-Cookie", "a=b; Path=/"));
        Job {
            framing: Framing::FastCgi,
            request_id: 1,
            keep_conn: true,
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

    /// Sends one-way handoffs of `bytes` until the queue is full (`WouldBlock`, nothing
    /// handed over); how many were queued.
    fn fill_queue(
        channel: &Channel,
        bytes: &[u8],
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
    ) -> usize {
        let mut sent = 0;
        let err = loop {
            match channel.hand_off(bytes, conn, file) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the queue never filled");
        };
        assert!(err.is_would_block(), "{err:?}");
        assert!(sent > 10, "only {sent} handoffs were queued");
        sent
    }

    /// Reads one-way handoffs until none is waiting; how many there were.
    fn count_handoffs(manager: BorrowedFd<'_>) -> usize {
        let mut got = 0;
        while let Ok(Some(Incoming::Handoff(_))) = recv_job(manager) {
            got += 1;
        }
        got
    }

    #[test]
    fn a_full_queue_is_would_block_and_hands_nothing_over() {
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        let channel = Channel::resume(worker);
        let bytes = job().encode_one_way().unwrap();
        let sent = fill_queue(&channel, &bytes, conn.as_fd(), file.as_fd());
        eprintln!(
            "{sent} one-way handoffs of {} bytes queued before EAGAIN",
            bytes.len()
        );
        // Exactly the queued ones arrive; the refused send left nothing behind.
        assert_eq!(count_handoffs(manager.as_fd()), sent);
    }

    /// `hand_off_until` waits for room in a full queue: until the deadline when nobody
    /// reads (then nothing is handed over), and only until the manager reads when it does.
    #[test]
    fn a_full_queue_is_waited_for_until_the_deadline() {
        use std::time::{Duration, Instant};
        let (worker, manager) = seqpacket_pair();
        let (conn, _client) = stream_pair();
        let (file, _other) = stream_pair();
        let channel = Channel::resume(worker);
        let bytes = job().encode_one_way().unwrap();
        let sent = fill_queue(&channel, &bytes, conn.as_fd(), file.as_fd());
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let err = channel
            .hand_off_until(&bytes, conn.as_fd(), file.as_fd(), deadline)
            .unwrap_err();
        assert!(err.is_would_block(), "{err:?}");
        assert!(
            Instant::now() >= deadline - Duration::from_millis(10),
            "gave up after {:?}, before the deadline",
            start.elapsed()
        );
        // The manager reads the queue a little later: the waiting send goes through then
        // (the kernel wakes a sender once the queue is down to a quarter of the buffer).
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let got = count_handoffs(manager.as_fd());
            (manager, got)
        });
        let waited = Instant::now();
        channel
            .hand_off_until(
                &bytes,
                conn.as_fd(),
                file.as_fd(),
                waited + Duration::from_secs(30),
            )
            .unwrap();
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the send waited {:?} after the manager read the queue",
            waited.elapsed()
        );
        let (manager, got) = reader.join().unwrap();
        let got = got + count_handoffs(manager.as_fd());
        assert_eq!(got, sent + 1, "the queued jobs and the one that waited");
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
}
