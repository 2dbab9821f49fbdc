//! One-way handoffs the manager owns but cannot start yet, and the responses it writes
//! itself when it must refuse one.
//!
//! A one-way handoff cannot be given back: the worker has already moved on. So a job that
//! arrives while `--max-downloads` downloads run waits here, the smallest body first (small
//! downloads finish quickly and free their place), and when the manager must refuse (the
//! queue holds `--max-waiting` jobs, a job waited `--wait-timeout`, or the job is invalid)
//! the client gets a complete response written by the manager: `503` with `Retry-After`
//! for capacity, `500` for an invalid job, in FastCGI records or HTTP/1.1 as the connection
//! needs. Never a silent close, and never a path: the body is a fixed text.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use handoff_core::head::{Head, Header};
use handoff_core::plan::{checked_body_len, Piece};
use handoff_core::protocol::{Answerable, Framing, Job, Received};

/// A job waiting for a free place, ordered smallest body first, then first come.
struct Waiting {
    planned: u64,
    since: Instant,
    seq: u64,
    rcv: Received,
}

impl Waiting {
    fn key(&self) -> Reverse<(u64, Instant, u64)> {
        Reverse((self.planned, self.since, self.seq))
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// The jobs waiting for a place: at most `max` of them, each for at most `timeout`.
pub struct Queue {
    heap: BinaryHeap<Waiting>,
    max: usize,
    timeout: Duration,
    seq: u64,
}

impl Queue {
    pub fn new(max: usize, timeout: Duration) -> Queue {
        Queue {
            heap: BinaryHeap::new(),
            max,
            timeout,
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// How long a refused client is told to wait before it tries again (`Retry-After`).
    pub fn retry_after(&self) -> u64 {
        self.timeout.as_secs().clamp(1, 60)
    }

    /// Queues a job, or hands it back when the queue is full.
    pub fn push(&mut self, rcv: Received, now: Instant) -> Result<(), Box<Received>> {
        if self.heap.len() >= self.max {
            return Err(Box::new(rcv));
        }
        self.seq += 1;
        self.heap.push(Waiting {
            planned: checked_body_len(&rcv.job.body).unwrap_or(u64::MAX),
            since: now,
            seq: self.seq,
            rcv,
        });
        Ok(())
    }

    /// The next job to start: the smallest body, first come among equals; with the time it
    /// was queued.
    pub fn pop(&mut self) -> Option<(Received, Instant)> {
        self.heap.pop().map(|w| (w.rcv, w.since))
    }

    /// Takes out the jobs that have waited longer than the timeout (all of them with
    /// `all`, when the manager can no longer start any).
    pub fn expired(&mut self, now: Instant, all: bool) -> Vec<Received> {
        let timeout = self.timeout;
        let (gone, kept): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.heap)
            .into_iter()
            .partition(|w| all || now.duration_since(w.since) > timeout);
        self.heap = kept.into();
        if self.heap.capacity() > 64 && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to_fit();
        }
        gone.into_iter().map(|w| w.rcv).collect()
    }
}

/// Why the manager answers a one-way handoff itself instead of running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No place within the wait limits (or the manager is stopping): 503.
    Busy { retry_after: u64 },
    /// The job cannot be run as sent: 500.
    Invalid,
}

/// The job that writes the manager's own response on a refused handoff's connection.
/// `headers_only`: the request was a HEAD, so the response has no body (its head still
/// announces the body's length). The descriptors are the handoff's own; the file is never read.
pub fn refusal_job(
    refusal: Refusal,
    framing: Framing,
    request_id: u16,
    headers_only: bool,
    client: String,
    file_name: String,
) -> Job {
    let (status, text, retry_after) = match refusal {
        Refusal::Busy { retry_after } => (
            503,
            "The server is busy. Please try again shortly.\n",
            Some(retry_after),
        ),
        Refusal::Invalid => (500, "The download could not be started.\n", None),
    };
    let body: &[u8] = if headers_only { b"" } else { text.as_bytes() };
    let mut head = Head::new(status);
    head.headers
        .push(Header::new("Content-Type", "text/plain; charset=utf-8"));
    head.headers
        .push(Header::new("Content-Length", text.len().to_string()));
    head.headers.push(Header::new("Cache-Control", "no-store"));
    if let Some(secs) = retry_after {
        head.headers
            .push(Header::new("Retry-After", secs.to_string()));
    }
    Job {
        framing,
        request_id,
        keep_conn: false,
        head,
        body: vec![Piece::Bytes(body.to_vec())],
        rate: 0,
        client,
        file_name,
        fallbacks: Default::default(),
        tag: String::new(),
        rate_group: String::new(),
    }
}

/// A refused handoff as a download of the manager's own response, on its connection.
pub fn refusal(rcv: Received, refusal: Refusal) -> Received {
    let Received { job, conn, file } = rcv;
    // A HEAD request's plan announces a length and has no body (a 304 has no length, an
    // empty file's GET a length of 0: both get the body).
    let announced = job
        .head
        .get("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok());
    let headers_only = checked_body_len(&job.body) == Some(0) && announced.is_some_and(|l| l > 0);
    Received {
        job: Job {
            keep_conn: job.keep_conn,
            ..refusal_job(
                refusal,
                job.framing,
                job.request_id,
                headers_only,
                job.client,
                job.file_name,
            )
        },
        conn,
        file,
    }
}

/// A refused handoff whose job could not be read: only its connection and the job's fixed
/// part (framing, request id, flags) are known. `file` is any descriptor to fill the slot
/// (never read).
pub fn refusal_unread(answer: Answerable, file: OwnedFd) -> Received {
    let Answerable {
        conn,
        framing,
        request_id,
        keep_conn,
    } = answer;
    Received {
        job: Job {
            keep_conn,
            ..refusal_job(
                Refusal::Invalid,
                framing,
                request_id,
                false,
                String::new(),
                String::new(),
            )
        },
        conn,
        file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn received(len: u64) -> Received {
        let (conn, file) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut job = refusal_job(
            Refusal::Invalid,
            Framing::Http,
            0,
            false,
            String::new(),
            format!("{len}"),
        );
        job.body = vec![Piece::File {
            offset: 0,
            length: len,
        }];
        Received { job, conn, file }
    }

    #[test]
    fn smallest_first_then_first_come_and_bounded() {
        let now = Instant::now();
        let mut q = Queue::new(3, Duration::from_secs(10));
        for len in [300, 100, 100] {
            assert!(q.push(received(len), now).is_ok());
        }
        assert!(
            q.push(received(1), now).is_err(),
            "a full queue takes no more"
        );
        let order: Vec<(u64, String)> = std::iter::from_fn(|| q.pop().map(|(rcv, _)| rcv))
            .map(|r| (checked_body_len(&r.job.body).unwrap(), r.job.file_name))
            .collect();
        assert_eq!(
            order.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![100, 100, 300]
        );
    }

    #[test]
    fn only_jobs_past_the_timeout_expire() {
        let now = Instant::now();
        let mut q = Queue::new(10, Duration::from_secs(5));
        assert!(q.push(received(1), now).is_ok());
        assert!(q.push(received(2), now + Duration::from_secs(4)).is_ok());
        let gone = q.expired(now + Duration::from_secs(6), false);
        assert_eq!(gone.len(), 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.expired(now, true).len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn a_refusal_is_a_complete_response_without_the_path() {
        let j = refusal_job(
            Refusal::Busy { retry_after: 7 },
            Framing::FastCgi,
            1,
            false,
            "client".into(),
            "/srv/secret/file.bin".into(),
        );
        assert_eq!(j.head.status, 503);
        assert_eq!(j.head.get("Retry-After"), Some("7"));
        let body = match &j.body[..] {
            [Piece::Bytes(b)] => b.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            j.head.get("Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert!(!String::from_utf8_lossy(&body).contains("/srv"));
        j.head.validate().unwrap();
        let head_only = refusal_job(
            Refusal::Invalid,
            Framing::Http,
            0,
            true,
            String::new(),
            String::new(),
        );
        assert_eq!(head_only.head.status, 500);
        assert_eq!(head_only.body, vec![Piece::Bytes(Vec::new())]);
    }
}
