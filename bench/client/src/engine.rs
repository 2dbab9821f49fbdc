//! The load engine: one mio `Poll` driving many [`Conn`]s for a bounded time.
//!
//! Two uses: slow readers (`rate` set, `repeat` off: each connection makes one download and
//! reads it at a fixed rate) and fast readers (`rate` unset, `repeat` on: each connection
//! sends the next request as soon as a response ends, reusing the connection when the server
//! allows). Connections are opened evenly over `ramp`. Once a second the engine counts the
//! connections whose body advanced since the last count: "downloads progressing at once".

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::conn::{connect, Conn, Step};
use crate::http::get_request;
use crate::tls::Tls;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub path: String,
    pub conns: usize,
    /// Bytes per second per connection; `None` = read as fast as possible.
    pub rate: Option<u64>,
    /// Send the next request when one ends (fast readers); otherwise one download each.
    pub repeat: bool,
    pub duration: Duration,
    pub ramp: Duration,
    /// Stop after this many completed requests (over this engine).
    pub max_requests: u64,
    pub read_buf: usize,
    pub rcvbuf: Option<usize>,
    /// Ask the server to close after each response.
    pub close: bool,
    /// How often rate-limited connections are resumed (coarser = fewer, larger reads).
    pub tick: Duration,
    /// Speak HTTPS (TLS 1.3) on every connection; `None` = plain HTTP.
    pub tls: Option<Tls>,
}

/// What one engine saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub opened: u64,
    pub requests: u64,
    pub bytes: u64,
    pub latencies_ms: Vec<f64>,
    /// Per response head: ms from the connect() call (first request on a connection) or
    /// from the request's start (later ones) to the head being parsed.
    pub head_waits_ms: Vec<f64>,
    /// Connections still waiting for a response head at the end, those of them that had
    /// waited more than 100 ms, and the longest such wait.
    pub heads_waiting: u64,
    pub heads_waiting_over_100ms: u64,
    pub heads_waiting_max_ms: f64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Connections still downloading at the end that got less than half their rate.
    pub starved: u64,
    /// Connections still downloading at the end.
    pub alive: u64,
    /// Per second after the ramp: connections whose body advanced in that second.
    pub progressing: Vec<u64>,
    pub elapsed: Duration,
    /// TLS version and cipher suite of the first finished HTTPS handshake.
    pub tls: Option<String>,
}

/// Slot table: a connection's token is its index.
struct Slots {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Slots {
    fn insert(&mut self, conn: Conn) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.conns[i] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Conn> {
        let conn = self.conns.get_mut(i)?.take();
        if conn.is_some() {
            self.free.push(i);
        }
        conn
    }
}

pub fn run(cfg: &Config) -> io::Result<Outcome> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let request = get_request(&cfg.addr.to_string(), &cfg.path, cfg.close);
    let mut buf = vec![0u8; cfg.read_buf.max(4096)];
    let mut slots = Slots {
        conns: Vec::with_capacity(cfg.conns),
        free: Vec::new(),
    };
    let mut out = Outcome::default();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut next_sample = start + cfg.ramp + Duration::from_secs(1);
    let mut last_tick = start;

    let open = |slots: &mut Slots, poll: &Poll, out: &mut Outcome, now: Instant| {
        out.opened += 1;
        let session = match cfg.tls.as_ref().map(Tls::connection).transpose() {
            Ok(session) => session,
            Err(e) => {
                record_failure(out, format!("tls: {e}"));
                return;
            }
        };
        match connect(cfg.addr, cfg.rcvbuf) {
            Ok(stream) => {
                let i = slots.insert(Conn::new(stream, cfg.rate, now, session));
                let conn = slots.conns[i].as_mut().expect("just inserted");
                if let Err(e) = poll.registry().register(
                    &mut conn.stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    slots.remove(i);
                    record_failure(out, format!("register: {}", e.kind()));
                }
            }
            Err(e) => record_failure(out, format!("connect: {}", e.kind())),
        }
    };

    loop {
        let now = Instant::now();
        if now >= deadline || (cfg.max_requests > 0 && out.requests >= cfg.max_requests) {
            break;
        }
        // Open connections evenly over the ramp, never more than `conns` at once. Slow
        // readers are opened once each; fast readers are replaced when they close.
        let target = if cfg.ramp.is_zero() {
            cfg.conns
        } else {
            let frac = now.duration_since(start).as_secs_f64() / cfg.ramp.as_secs_f64();
            ((cfg.conns as f64 * frac.min(1.0)).ceil() as usize).min(cfg.conns)
        };
        let live = slots.conns.len() - slots.free.len();
        let want = if cfg.repeat {
            target.saturating_sub(live)
        } else {
            target.saturating_sub(out.opened as usize)
        };
        for _ in 0..want.min(256) {
            open(&mut slots, &poll, &mut out, now);
        }

        let timeout = if cfg.rate.is_some() {
            cfg.tick
        } else {
            Duration::from_millis(50)
        };
        poll.poll(
            &mut events,
            Some(timeout.min(deadline.saturating_duration_since(now))),
        )?;
        let now = Instant::now();
        let mut touched: Vec<usize> = Vec::with_capacity(events.iter().count());
        for event in events.iter() {
            let i = event.token().0;
            if let Some(conn) = slots.conns.get_mut(i).and_then(Option::as_mut) {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    conn.readable = true;
                }
                if event.is_writable() || event.is_error() {
                    conn.writable = true;
                }
                touched.push(i);
            }
        }
        if cfg.rate.is_some() && now.duration_since(last_tick) >= cfg.tick {
            last_tick = now;
            touched.extend(
                slots
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.as_ref().is_some_and(|c| c.readable && c.in_body()))
                    .map(|(i, _)| i),
            );
        }
        for i in touched {
            drive_slot(cfg, &poll, &mut slots, i, &request, &mut buf, now, &mut out);
        }

        if now >= next_sample && now < deadline {
            next_sample += Duration::from_secs(1);
            let mut moving = 0;
            for conn in slots.conns.iter_mut().flatten() {
                if conn.body_total > conn.sampled_total {
                    moving += 1;
                }
                conn.sampled_total = conn.body_total;
            }
            out.progressing.push(moving);
        }
    }

    let end = Instant::now();
    out.elapsed = end.duration_since(start);
    for conn in slots.conns.iter().flatten() {
        if conn.awaiting_head() {
            out.heads_waiting += 1;
            let wait = end.duration_since(conn.waiting_since).as_secs_f64() * 1e3;
            out.heads_waiting_max_ms = out.heads_waiting_max_ms.max(wait);
            out.heads_waiting_over_100ms += u64::from(wait > 100.0);
        }
        if conn.in_body() || !cfg.repeat {
            out.alive += 1;
            if let Some(rate) = cfg.rate {
                let active = end.duration_since(conn.opened).as_secs_f64();
                if (conn.body_total as f64) < 0.5 * rate as f64 * active {
                    out.starved += 1;
                }
            }
        }
    }
    Ok(out)
}

fn record_failure(out: &mut Outcome, why: String) {
    out.failed += 1;
    *out.errors.entry(why).or_default() += 1;
}

#[allow(clippy::too_many_arguments)]
fn drive_slot(
    cfg: &Config,
    poll: &Poll,
    slots: &mut Slots,
    i: usize,
    request: &[u8],
    buf: &mut [u8],
    now: Instant,
    out: &mut Outcome,
) {
    loop {
        let Some(conn) = slots.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let before = conn.body_total;
        let step = conn.drive(request, buf, now);
        out.bytes += conn.body_total - before;
        if let Some(wait) = conn.head_wait.take() {
            out.head_waits_ms.push(wait.as_secs_f64() * 1e3);
        }
        if cfg.tls.is_some() && out.tls.is_none() {
            out.tls = conn.tls_description();
        }
        match step {
            Step::Pending => return,
            Step::Completed {
                latency, reusable, ..
            } => {
                out.requests += 1;
                out.latencies_ms.push(latency.as_secs_f64() * 1e3);
                if cfg.repeat && reusable && !cfg.close {
                    conn.restart(now);
                    continue;
                }
                close(poll, slots, i);
                return;
            }
            Step::Failed(why) => {
                record_failure(out, why);
                close(poll, slots, i);
                return;
            }
        }
    }
}

fn close(poll: &Poll, slots: &mut Slots, i: usize) {
    if let Some(mut conn) = slots.remove(i) {
        let _ = poll.registry().deregister(&mut conn.stream);
    }
}
