//! One download: a handed-off connection and its file, from the first head byte to the
//! lingering close.
//!
//! States (thttpd-style, a plain enum): `Sending` writes the head, then the body with
//! zero-copy `sendfile` (FastCGI: one record header per at most 65,528 body bytes; the last
//! data record, the empty `STDOUT` and `END_REQUEST` go out in one send, as nginx needs),
//! then `Lingering`: the write side is shut down and whatever the peer still sends (the
//! unread FastCGI `STDIN`, a request body; a FastCGI connection is not read before this
//! point, see [`Download::on_readable`]) is read and discarded until end-of-file or the
//! linger deadline, so that closing does not turn into a reset that would cut the tail of
//! the response. `Done` carries the outcome for the log.
//!
//! The socket is non-blocking and registered edge-triggered: every call drains until the
//! kernel says `EAGAIN` or the per-wake-up byte budget is spent (fairness between
//! downloads), and says which of the two happened.

use std::collections::VecDeque;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::debug;
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, send, shutdown, sockopt, MsgFlags, Shutdown};
use nix::sys::stat::{fstat, SFlag};

use crate::downloads::fcgi;
use crate::downloads::rate_group::Member;
use crate::reporting::join::FileId;
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Counters;
use handoff_core::bucket::TokenBucket;
use handoff_core::io_class::{classify, IoClass};
use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Received};

/// Why a received job is refused before it is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("connection descriptor is not a socket")]
    NotASocket,
    #[error("connection descriptor is not a connected stream socket")]
    NotAStream,
    #[error("file descriptor is not a regular file")]
    NotAFile,
    #[error("range {offset}+{length} is beyond the file's {size} bytes")]
    Range { offset: u64, length: u64, size: u64 },
    #[error("the body's pieces add up to more than 2^64 - 1 bytes")]
    BodyTooLong,
    #[error("cannot inspect descriptor: {0}")]
    Stat(Errno),
    #[error("tag or rate group is not 1 to 256 printable ASCII bytes")]
    Label,
}

/// Checks the two descriptors of a job before the manager accepts it.
pub fn validate(rcv: &Received) -> Result<(), Rejected> {
    for label in [&rcv.job.tag, &rcv.job.rate_group] {
        if !label.is_empty() && !handoff_core::label::is_valid(label.as_bytes()) {
            return Err(Rejected::Label);
        }
    }
    validate_connection(&rcv.conn)?;
    let st = fstat(rcv.file.as_raw_fd()).map_err(Rejected::Stat)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Rejected::NotAFile);
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    for piece in &rcv.job.body {
        if let Piece::File { offset, length } = *piece {
            if offset.saturating_add(length) > size {
                return Err(Rejected::Range {
                    offset,
                    length,
                    size,
                });
            }
        }
    }
    // Every later count of body bytes (what is planned, sent, still to frame) is then
    // exact, and never wraps.
    handoff_core::plan::checked_body_len(&rcv.job.body).ok_or(Rejected::BodyTooLong)?;
    Ok(())
}

/// Checks that a received connection descriptor is a connected stream socket (something a
/// response can be written to).
pub fn validate_connection(conn: &OwnedFd) -> Result<(), Rejected> {
    let st = fstat(conn.as_raw_fd()).map_err(Rejected::Stat)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(Rejected::NotASocket);
    }
    let ty = getsockopt(conn, sockopt::SockType).map_err(Rejected::Stat)?;
    let listening = getsockopt(conn, sockopt::AcceptConn).map_err(Rejected::Stat)?;
    if ty != nix::sys::socket::SockType::Stream || listening {
        return Err(Rejected::NotAStream);
    }
    Ok(())
}

/// The file's identity as the ETag sees it; `None` if it cannot be inspected.
fn file_id(file: &OwnedFd) -> Option<FileId> {
    let st = fstat(file.as_raw_fd()).ok()?;
    Some(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).ok()?,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
    })
}

/// A download's own rate limit: a burst of 1/8 s (at least 16 KiB) to start with, then
/// `rate`; unused time is kept, so a download that waited for its client may catch up to
/// its average.
fn own_bucket(rate: u64, now: Instant) -> TokenBucket {
    let burst = (rate / 8).max(16 * 1024) as f64;
    TokenBucket::holding(rate, f64::INFINITY, burst, now)
}

/// What a call on a download left to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait for the next readiness event.
    Wait,
    /// The byte budget ran out while the socket could still take more: call again soon.
    Yield,
    /// The download's own rate limit is reached: call again at this instant.
    Sleep(Instant),
    /// The download is over.
    Done(Outcome),
}

enum State {
    Sending,
    Lingering { until: Instant, outcome: Outcome },
}

pub struct Download {
    sock: OwnedFd,
    file: OwnedFd,
    /// FastCGI: how the body is cut into records; `None` for raw HTTP.
    framer: Option<fcgi::Framer>,
    /// Bytes to write before anything else (head, record headers, last record + trailer).
    out: Vec<u8>,
    out_pos: usize,
    /// Body bytes inside `out`, counted as sent once `out` is flushed.
    body_in_out: u64,
    /// Body still to queue, in order.
    pieces: VecDeque<Piece>,
    /// The current `sendfile` run: next file offset and bytes left.
    pos: u64,
    run_left: u64,
    state: State,
    /// Bytes of the response head at the start of `out`, and bytes written so far.
    head_len: u64,
    written: u64,
    /// Bytes of `written` known to have left the socket ([`Download::drained`]).
    drained: u64,
    /// The download's own `rate` (`None`: unlimited, or limited by its group), and how
    /// many of the bytes written it has been charged for.
    rate: Option<TokenBucket>,
    charged: u64,
    /// The shared bucket of its `rate_group`, if any; replaces its own `rate`.
    group: Option<Member>,
    pub status: u16,
    pub planned: u64,
    pub sent: u64,
    pub client: String,
    pub file_name: String,
    /// The script's `tag` option (empty: none).
    pub tag: String,
    /// The `Content-Range` sent, for the access log.
    pub range: Option<String>,
    /// The file's byte ranges in the body, as (offset, length), for completion records.
    pub file_ranges: Vec<(u64, u64)>,
    /// Which file in which version (the ETag's parts), to join range requests.
    pub file_id: Option<FileId>,
    pub started: Instant,
    /// When the download started, by the wall clock (for completion records).
    pub started_at: SystemTime,
    last_progress: Instant,
    /// Since when the connection has refused bytes (`EAGAIN`) with no write since: the
    /// send timeout runs only then, not while the download waits for its own rate.
    stalled_since: Option<Instant>,
    linger: Duration,
    /// When the first byte (of the head) was written.
    first_byte: Option<Instant>,
    /// Where body bytes are counted as they are written (`handoff_bytes_sent_total`).
    counters: Option<Arc<Counters>>,
}

impl Download {
    /// Starts a download of a validated, accepted job after the worker said go
    /// ([`validate`] guarantees that the body's length fits a `u64`).
    /// `linger` bounds how long the finished download waits for the peer to close. A
    /// download in a rate group is limited by the group's bucket instead of its own rate.
    pub fn new(rcv: Received, now: Instant, linger: Duration, group: Option<Member>) -> Download {
        let Received { job, conn, file } = rcv;
        let Job {
            framing,
            request_id,
            head,
            body,
            rate,
            client,
            file_name,
            tag,
            ..
        } = job;
        let planned = handoff_core::plan::checked_body_len(&body).unwrap_or(u64::MAX);
        let file_id = file_id(&file);
        let file_ranges = body
            .iter()
            .filter_map(|p| match *p {
                Piece::File { offset, length } if length > 0 => Some((offset, length)),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(1024);
        let framer = match framing {
            Framing::Http => {
                out.extend_from_slice(&head.render_http(SystemTime::now()));
                None
            }
            Framing::FastCgi => {
                fcgi::push_stdout(&mut out, request_id, &head.render_cgi());
                Some(fcgi::Framer::new(request_id, planned))
            }
        };
        let head_len = out.len() as u64;
        let range = head.get("Content-Range").map(str::to_owned);
        Download {
            sock: conn,
            file,
            framer,
            out,
            out_pos: 0,
            body_in_out: 0,
            head_len,
            written: 0,
            drained: 0,
            rate: (group.is_none() && rate > 0).then(|| own_bucket(rate, now)),
            charged: 0,
            group,
            pieces: body.into_iter().filter(|p| !p.is_empty()).collect(),
            pos: 0,
            run_left: 0,
            state: State::Sending,
            status: head.status,
            planned,
            sent: 0,
            client,
            file_name,
            tag,
            range,
            file_ranges,
            file_id,
            started: now,
            started_at: SystemTime::now(),
            last_progress: now,
            stalled_since: None,
            linger,
            first_byte: None,
            counters: None,
        }
    }

    /// Counts this download's body bytes into `counters` as they are written, so that a
    /// long download shows in the metrics while it runs.
    pub fn count_into(&mut self, counters: Arc<Counters>) {
        self.counters = Some(counters);
    }

    /// The one place where body bytes become sent.
    fn add_sent(&mut self, n: u64) {
        self.sent += n;
        if let Some(c) = &self.counters {
            Counters::add(&c.bytes_sent, n);
        }
    }

    /// When the first byte of the response was written, if one was.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }

    pub fn socket(&self) -> &OwnedFd {
        &self.sock
    }

    fn more_after_out(&self) -> bool {
        self.run_left > 0
            || !self.pieces.is_empty()
            || self.framer.as_ref().is_some_and(|f| !f.ended())
    }

    /// Body bytes not yet sent (for shortest-remaining-first scheduling).
    pub fn remaining(&self) -> u64 {
        self.planned.saturating_sub(self.sent)
    }

    /// Whether a web server relays this download (FastCGI) rather than the manager
    /// writing to the client itself.
    pub fn is_relayed(&self) -> bool {
        self.framer.is_some()
    }

    /// Bytes that left the connection's socket since the last call (read by the peer):
    /// what was written minus what is still unread in the socket (`SIOCOUTQ`). Relay
    /// pacing sums this over the relayed downloads to measure the web server's pace.
    pub fn drained(&mut self) -> u64 {
        let Ok(unread) = crate::sys::unsent_bytes(self.sock.as_fd()) else {
            return 0;
        };
        let left = self.written.saturating_sub(unread);
        let delta = left.saturating_sub(self.drained);
        self.drained = self.drained.max(left);
        delta
    }

    /// Bytes written to the connection so far, framing included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// When this download last wrote a byte.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// The download's own rate limit: how many more bytes it may write now, or when it may
    /// write again. It writes only once a quantum (1/20 s worth, at least 4 KiB, or what
    /// is left of the body if less) is allowed, so that a slow rate means a few full writes
    /// with pauses between them, not a loop that wakes for every byte.
    fn rate_allowance(&mut self, now: Instant) -> Result<usize, Instant> {
        let Some(bucket) = &mut self.rate else {
            return Ok(usize::MAX);
        };
        bucket.take(self.written - self.charged);
        self.charged = self.written;
        let quantum = (bucket.rate() / 20)
            .max(4096)
            .min(self.planned.saturating_sub(self.sent).max(1)) as f64;
        let allowed = bucket.available(now);
        if allowed as f64 >= quantum {
            return Ok(usize::try_from(allowed).unwrap_or(usize::MAX));
        }
        Err(bucket.ready_at(quantum))
    }

    /// Writes as much as the socket takes, up to `budget` bytes (and the download's own
    /// rate, or its group's share).
    pub fn on_writable(&mut self, budget: usize, now: Instant) -> Step {
        if !matches!(self.state, State::Sending) {
            return Step::Wait;
        }
        let Some(group) = &self.group else {
            return self.write_some(budget, now);
        };
        let share = match group.allowance(now) {
            Ok(share) => share,
            Err(at) => return Step::Sleep(at),
        };
        let before = self.written;
        let step = self.write_some(budget.min(share), now);
        if let Some(group) = &self.group {
            group.charge(self.written - before);
        }
        step
    }

    fn write_some(&mut self, budget: usize, now: Instant) -> Step {
        let budget = match self.rate_allowance(now) {
            Ok(allowed) => budget.min(allowed),
            Err(at) => return Step::Sleep(at),
        };
        let mut spent = 0usize;
        loop {
            if spent >= budget {
                return match self.rate_allowance(now) {
                    Err(at) => Step::Sleep(at),
                    Ok(_) => Step::Yield,
                };
            }
            if self.out_pos < self.out.len() {
                let mut flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                if self.more_after_out() {
                    flags |= MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
                }
                match send(self.sock.as_raw_fd(), &self.out[self.out_pos..], flags) {
                    Ok(n) => {
                        self.out_pos += n;
                        self.written += n as u64;
                        spent += n;
                        self.progressed(now);
                        if self.out_pos == self.out.len() {
                            self.out.clear();
                            self.out_pos = 0;
                            self.add_sent(self.body_in_out);
                            self.body_in_out = 0;
                        }
                    }
                    Err(e) => match classify(e) {
                        IoClass::Retry => {}
                        IoClass::WouldBlock => return self.stalled(now),
                        IoClass::PeerGone | IoClass::Error => {
                            return Step::Done(self.write_failed(e))
                        }
                    },
                }
                continue;
            }
            if self.run_left > 0 {
                let want = usize::try_from(self.run_left)
                    .unwrap_or(usize::MAX)
                    .min(budget - spent);
                let mut off = i64::try_from(self.pos).unwrap_or(i64::MAX);
                match nix::sys::sendfile::sendfile64(&self.sock, &self.file, Some(&mut off), want) {
                    // The file ended before the planned range: it shrank under us.
                    Ok(0) => return Step::Done(Outcome::Truncated),
                    Ok(n) => {
                        let n64 = n as u64;
                        self.pos += n64;
                        self.run_left -= n64;
                        self.add_sent(n64);
                        self.written += n64;
                        spent += n;
                        self.progressed(now);
                    }
                    Err(e) => match classify(e) {
                        IoClass::Retry => {}
                        IoClass::WouldBlock => return self.stalled(now),
                        IoClass::PeerGone | IoClass::Error => {
                            return Step::Done(Outcome::Aborted(e.desc().to_string()))
                        }
                    },
                }
                continue;
            }
            let queued = match self.frame_next() {
                Ok(queued) => queued,
                Err(outcome) => return Step::Done(outcome),
            };
            if queued {
                continue;
            }
            return self.start_lingering(now);
        }
    }

    fn progressed(&mut self, now: Instant) {
        self.first_byte.get_or_insert(now);
        self.last_progress = now;
        self.stalled_since = None;
    }

    /// The connection reported that it takes bytes again: the send timeout stops running
    /// until a write is refused again (a wait for a rate that follows is not a stall).
    pub fn unstall(&mut self) {
        self.stalled_since = None;
    }

    /// The connection takes no more bytes now: wait for it, with the send timeout running.
    fn stalled(&mut self, now: Instant) -> Step {
        self.stalled_since.get_or_insert(now);
        Step::Wait
    }

    /// A write error ends the download. When the head and every body byte were already
    /// written, only FastCGI's end records were refused: nginx closes the upstream early
    /// when it needs no body (HEAD, 304), so that is a complete response.
    fn write_failed(&self, e: Errno) -> Outcome {
        if self.written >= self.head_len && self.sent == self.planned {
            Outcome::Complete
        } else {
            Outcome::Aborted(e.desc().to_string())
        }
    }

    /// Queues up to `max` bytes of the next body piece: literal bytes into `out`, a file
    /// range as the next `sendfile` run. Returns false when the body is all queued.
    fn queue_next_piece(&mut self, max: u64) -> bool {
        let Some(piece) = self.pieces.front_mut() else {
            return false;
        };
        match piece {
            Piece::Bytes(b) => {
                let n = usize::try_from(max).unwrap_or(usize::MAX).min(b.len());
                self.out.extend_from_slice(&b[..n]);
                self.body_in_out += n as u64;
                b.drain(..n);
            }
            Piece::File { offset, length } => {
                let n = max.min(*length);
                self.pos = *offset;
                self.run_left = n;
                *offset += n;
                *length -= n;
            }
        }
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        true
    }

    /// Queues the next part of the body: for raw HTTP the next piece; behind FastCGI what
    /// the [`fcgi::Framer`] asks for (the rest of the current record, the next record
    /// header, or the last record read into memory so that it leaves in the same send as
    /// the end-of-stream records). Returns false when everything is queued.
    fn frame_next(&mut self) -> Result<bool, Outcome> {
        let Some(framer) = self.framer.as_mut() else {
            return Ok(self.queue_next_piece(u64::MAX));
        };
        match framer.next(&mut self.out) {
            fcgi::Next::Content(left) => {
                let before = self.body_in_out + self.run_left;
                if !self.queue_next_piece(left) {
                    return Err(Outcome::Aborted("body shorter than its records".into()));
                }
                let queued = self.body_in_out + self.run_left - before;
                if let Some(framer) = self.framer.as_mut() {
                    framer.consumed(queued);
                }
                Ok(true)
            }
            fcgi::Next::Header | fcgi::Next::End => Ok(true),
            fcgi::Next::Last(len) => {
                // The last record: at most MAX_RECORD_BODY bytes, because the framer's
                // count is the exact sum of the pieces left (no piece can be longer).
                let left = handoff_core::plan::checked_body_len(self.pieces.make_contiguous());
                if left != Some(len) {
                    return Err(Outcome::Aborted("body does not match its records".into()));
                }
                let mut last = Vec::with_capacity(len as usize);
                while let Some(piece) = self.pieces.pop_front() {
                    match piece {
                        Piece::Bytes(b) => last.extend_from_slice(&b),
                        Piece::File { offset, length } => {
                            self.read_into(&mut last, offset, length)?
                        }
                    }
                }
                if let Some(framer) = self.framer.as_mut() {
                    framer.finish(&mut self.out, &last);
                }
                self.body_in_out += last.len() as u64;
                Ok(true)
            }
            fcgi::Next::Done => Ok(false),
        }
    }

    fn read_into(&self, out: &mut Vec<u8>, offset: u64, length: u64) -> Result<(), Outcome> {
        let start = out.len();
        out.resize(start + length as usize, 0);
        let mut filled = start;
        while filled < out.len() {
            let off = i64::try_from(offset + (filled - start) as u64).unwrap_or(i64::MAX);
            match nix::sys::uio::pread(&self.file, &mut out[filled..], off) {
                Ok(0) => return Err(Outcome::Truncated),
                Ok(n) => filled += n,
                Err(e) if classify(e) == IoClass::Retry => {}
                Err(e) => return Err(Outcome::Aborted(format!("reading file: {}", e.desc()))),
            }
        }
        Ok(())
    }

    fn start_lingering(&mut self, now: Instant) -> Step {
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

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
