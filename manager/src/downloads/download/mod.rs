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
//!
//! The parts: this file writes (head, body, the rate limits' allowance); `body.rs` queues
//! the body's pieces and cuts them into FastCGI records; `linger.rs` ends a download
//! (lingering close, timeouts); `validate.rs` checks a received job before it is accepted.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use nix::sys::stat::fstat;

use crate::downloads::fcgi;
use crate::downloads::rate_group::Member;
use crate::reporting::join::FileId;
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::Counters;
use handoff_core::bucket::TokenBucket;
use handoff_core::io_class::{classify, IoClass};
use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Received};

mod body;
mod linger;
mod validate;

pub use validate::{validate, validate_connection, Rejected};

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
    /// Which file in which version (the ETag's parts), to join range requests; only looked
    /// up when completion records are on ([`Download::identify_file`]).
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
            keep_conn,
            head,
            body,
            rate,
            client,
            file_name,
            tag,
            ..
        } = job;
        let planned = handoff_core::plan::checked_body_len(&body).unwrap_or(u64::MAX);
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
                Some(fcgi::Framer::new(request_id, planned, keep_conn))
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
            file_id: None,
            started: now,
            started_at: SystemTime::now(),
            last_progress: now,
            stalled_since: None,
            linger,
            first_byte: None,
            counters: None,
        }
    }

    /// Looks up which file in which version this is, for completion records (one `fstat`
    /// that a manager without records does not need).
    pub fn identify_file(&mut self) {
        self.file_id = file_id(&self.file);
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
                if self.all_written() {
                    // A rate's debt from the last write (behind FastCGI the last record
                    // leaves whole, with the end records) concerns no byte any more:
                    // close now instead of after the rate wait, which would keep the
                    // connection, and a web server waiting for its end, for seconds.
                    return self.start_lingering(now);
                }
                return match self.rate_allowance(now) {
                    Err(at) => Step::Sleep(at),
                    Ok(_) => Step::Yield,
                };
            }
            if self.out_pos < self.out.len() {
                if self.out_pos == 0 && self.run_left == 0 {
                    // What comes next (a record header, the last record with the end
                    // records, literal body bytes) joins the bytes already waiting, so
                    // that they leave in one send: the head and a small body's records
                    // together, one system call fewer per download.
                    if let Err(outcome) = self.frame_next() {
                        return Step::Done(outcome);
                    }
                }
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

    /// Whether every byte of the response, end records included, has been written.
    fn all_written(&self) -> bool {
        self.out_pos == self.out.len()
            && self.run_left == 0
            && self.pieces.is_empty()
            && self.framer.as_ref().is_none_or(fcgi::Framer::ended)
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

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
