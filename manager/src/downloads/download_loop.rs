//! A download loop: one thread with its own mio `Poll` that owns the downloads handed to
//! it and runs them to the end. The manager starts one per CPU by default; the handshake
//! loop ([`crate::handoffs::server`]) gives each accepted job to the least loaded one.
//!
//! Guarantees: a download is touched by exactly one thread; a loop told to drain takes no
//! new work, finishes what it has, and cuts what is left when the grace period ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;

use crate::downloads::download::{Download, Step};
use crate::downloads::pacing::{PaceConfig, Pacer};
use crate::downloads::rate_group::Groups;
use crate::reporting::access_log::{AccessLog, Entry};
use crate::reporting::completion::{Completions, Record};
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::{Board, Counters, Snapshot};
use handoff_core::bucket::TokenBucket;
use handoff_core::io_class::{classify_io, IoClass};
use handoff_core::protocol::Received;

const WAKER: Token = Token(0);
const FIRST: usize = 1;
/// Bytes one download may write per wake-up before the others get their turn.
const BUDGET: usize = 2 << 20;
/// How often timeouts are checked and the status board is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// Under a bandwidth cap, a download that has waited this long is served first whatever
/// its size: the starvation bound of shortest-remaining-first.
const STARVE: Duration = Duration::from_secs(1);
/// The download loops' nice value, above the PHP workers' (the process's): moving bytes
/// yields to the requests the workers serve. The handshake thread runs at the same value
/// (`server.rs`, `HANDSHAKE_NICE`).
const LOOP_NICE: i32 = 5;

/// What the handshake loop tells a download loop.
pub enum Command {
    /// The worker said go: run this download.
    Start(Received),
    /// Take no more work; finish by this deadline, then cut what is left.
    Drain(Instant),
}

/// Which download gets the bandwidth first when a cap makes it scarce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Shortest remaining first (with a starvation bound): small downloads finish
    /// quickly, which lowers mean completion time.
    Srpt,
    /// Round robin: the download served longest ago goes next.
    Fair,
}

/// Settings every download loop shares.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    pub send_timeout: Duration,
    pub linger_timeout: Duration,
    /// This loop's share of the global bandwidth cap, bytes/s (0: none).
    pub max_rate: u64,
    pub schedule: Schedule,
    /// Start pacing of relayed downloads ([`crate::downloads::pacing`]); `rate` is this loop's share.
    pub pacing: PaceConfig,
}

/// The loop's bandwidth cap: a bucket of 1/20 s of the rate (at least 64 KiB).
fn cap_bucket(rate: u64, now: Instant) -> TokenBucket {
    TokenBucket::full(rate, (rate as f64 / 20.0).max(64.0 * 1024.0), now)
}

/// How long until the cap holds a useful amount (1/8 of its capacity).
fn cap_wait(cap: &TokenBucket) -> Duration {
    cap.time_until(cap.capacity() / 8.0)
        .max(Duration::from_millis(1))
}

/// The handshake loop's end of one download loop.
pub struct Handle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// Downloads this loop runs now (for picking the least loaded one).
    pub load: Arc<AtomicUsize>,
    pub board: Arc<Board>,
    thread: Option<JoinHandle<usize>>,
}

impl Handle {
    /// Queues a command for the loop; hands it back if the loop is gone.
    pub fn send(&self, cmd: Command) -> Result<(), Box<Command>> {
        // Counted here so that a burst of handoffs spreads before the loop wakes up.
        let start = matches!(cmd, Command::Start(_));
        if start {
            self.load.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(mpsc::SendError(cmd)) = self.tx.send(cmd) {
            if start {
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(Box::new(cmd));
        }
        // A command in the queue is taken at the latest on the loop's next tick.
        if let Err(e) = self.waker.wake() {
            warn!("waking a download loop: {e}");
        }
        Ok(())
    }

    /// Waits for the loop to end; returns how many downloads it had to cut.
    pub fn join(mut self) -> usize {
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// Starts download loop number `index`.
pub fn spawn(
    index: usize,
    config: LoopConfig,
    counters: Arc<Counters>,
    access_log: Arc<Mutex<AccessLog>>,
    completions: Option<Arc<Completions>>,
    groups: Arc<Groups>,
) -> io::Result<Handle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    let load = Arc::new(AtomicUsize::new(0));
    let board = Arc::new(Board::default());
    let mut lp = Loop {
        poll,
        rx,
        config,
        counters,
        access_log,
        completions,
        groups,
        load: load.clone(),
        board: board.clone(),
        downloads: HashMap::new(),
        next: FIRST,
        ready: Vec::new(),
        sleepers: BinaryHeap::new(),
        cap: (config.max_rate > 0).then(|| cap_bucket(config.max_rate, Instant::now())),
        wanting: HashSet::new(),
        fair_turn: false,
        pacer: config
            .pacing
            .enabled()
            .then(|| Pacer::new(config.pacing, Instant::now())),
        scratch: vec![0u8; 64 * 1024],
        drain_until: None,
        trimmed_idle: true,
    };
    let thread = std::thread::Builder::new()
        .name(format!("download-{index}"))
        .spawn(move || lp.run())?;
    Ok(Handle {
        tx,
        waker,
        load,
        board,
        thread: Some(thread),
    })
}

struct Loop {
    poll: Poll,
    rx: Receiver<Command>,
    config: LoopConfig,
    counters: Arc<Counters>,
    access_log: Arc<Mutex<AccessLog>>,
    /// Where completion records go (`--on-complete`), if anywhere.
    completions: Option<Arc<Completions>>,
    /// The rate groups, shared by every loop.
    groups: Arc<Groups>,
    load: Arc<AtomicUsize>,
    board: Arc<Board>,
    downloads: HashMap<usize, Download>,
    next: usize,
    /// Downloads that spent their budget with the socket still writable.
    ready: Vec<usize>,
    /// Downloads waiting for their own rate limit, by wake-up time.
    sleepers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The bandwidth cap, if any; then writable downloads wait in `wanting` and
    /// [`Loop::schedule`] decides who writes.
    cap: Option<TokenBucket>,
    wanting: HashSet<usize>,
    /// Whether the cap's next turn goes round robin (every other turn does).
    fair_turn: bool,
    /// Start pacing, if on.
    pacer: Option<Pacer>,
    scratch: Vec<u8>,
    drain_until: Option<Instant>,
    /// Memory was given back since the loop last fell idle.
    trimmed_idle: bool,
}

impl Loop {
    fn run(&mut self) -> usize {
        // The handshake thread answers PHP workers that wait for it; a loop only moves
        // bytes. Under CPU contention the scheduler should run the handshake first.
        crate::sys::lower_thread_priority(LOOP_NICE);
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if classify_io(&e) != IoClass::Retry {
                    warn!("download loop poll: {e}");
                }
                continue;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_commands(now),
                    // A closed or failed connection counts as writable: the next write
                    // reports it (a FastCGI connection is not read while sending).
                    Token(id) => {
                        let writable =
                            event.is_writable() || event.is_write_closed() || event.is_error();
                        self.on_event(id, event.is_readable(), writable, now)
                    }
                }
            }
            for id in std::mem::take(&mut self.ready) {
                self.on_event(id, false, true, now);
            }
            while let Some(Reverse((at, id))) = self.sleepers.peek().copied() {
                if at > now {
                    break;
                }
                self.sleepers.pop();
                self.on_event(id, false, true, now);
            }
            self.pace(now);
            self.schedule(now);
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.check_timeouts(now);
                self.publish(now);
                self.shrink_after_burst();
            }
            if let Some(until) = self.drain_until {
                if self.downloads.is_empty() {
                    self.publish(now);
                    return 0;
                }
                if now >= until {
                    let cut = self.downloads.len();
                    warn!("grace period over; cutting {cut} download(s)");
                    for id in self.downloads.keys().copied().collect::<Vec<_>>() {
                        self.finish(id, Outcome::Aborted("shutdown".into()));
                    }
                    self.publish(now);
                    return cut;
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        let mut timeout = TICK;
        if let Some(Reverse((at, _))) = self.sleepers.peek() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let (Some(cap), false) = (&self.cap, self.wanting.is_empty()) {
            timeout = timeout.min(cap_wait(cap));
        }
        if let Some(at) = self.pacer.as_ref().map(Pacer::wake_at) {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        timeout
    }

    /// The first window of a relayed download; 0 while relay pacing is off.
    fn start_bytes(&self) -> u64 {
        self.pacer.as_ref().map_or(0, Pacer::start_bytes)
    }

    /// Whether download `id` is paced.
    fn in_start(&self, id: usize) -> bool {
        let start_bytes = self.start_bytes();
        self.downloads
            .get(&id)
            .is_some_and(|d| in_start_phase(d, start_bytes))
    }

    /// Relay pacing: at the end of each interval the budget follows what the relayed
    /// sockets drained; when a round begins, the downloads that waited for it write, in
    /// turn.
    fn pace(&mut self, now: Instant) {
        if self.pacer.as_ref().is_some_and(|p| p.due(now)) {
            let drained: u64 = self
                .downloads
                .values_mut()
                .filter(|d| d.is_relayed())
                .map(|d| d.drained())
                .sum();
            if let Some(pacer) = &mut self.pacer {
                pacer.measured(drained, now);
            }
        }
        let Some(waiting) = self.pacer.as_mut().and_then(|p| p.begin_round(now)) else {
            return;
        };
        for id in waiting {
            self.write_starting(id, now, false);
        }
    }

    /// A writable relayed download writes its first window at once, then what the budget
    /// allows (a quantum at most), or waits for the next round. One that is not paced
    /// (finished writing) is back on the ordinary path. Under `--max-rate`, past its first
    /// window it writes only when the cap's scheduler gives it a turn (`scheduled`): were it
    /// to write whenever it happens to be writable, the downloads woken most often (a
    /// stream of new ones) would take the cap's bytes before the scheduler could share them.
    fn write_starting(&mut self, id: usize, now: Instant, scheduled: bool) {
        let start_bytes = self.start_bytes();
        let (Some(pacer), Some(d)) = (self.pacer.as_mut(), self.downloads.get_mut(&id)) else {
            return;
        };
        if !in_start_phase(d, start_bytes) {
            self.on_event(id, false, true, now);
            return;
        }
        // The head and the first window go out at once: pacing never delays a response's
        // head. Only what follows waits for the budget.
        let free = start_bytes.saturating_sub(d.written());
        if free == 0 && !scheduled && self.cap.is_some() {
            self.wanting.insert(id);
            return;
        }
        let allowed = if free > 0 {
            free
        } else if let Some(allowed) = pacer.allowance(now) {
            allowed
        } else {
            pacer.defer(id);
            return;
        };
        // The cap is asked before writing, like every other write under it: a start phase
        // never borrows from it (the head too waits for the cap).
        let allowed = match &mut self.cap {
            Some(cap) => match cap.available(now) {
                0 => {
                    self.wanting.insert(id);
                    return;
                }
                n => allowed.min(n),
            },
            None => allowed,
        };
        let budget = allowed.min(BUDGET as u64);
        let before = d.written();
        let step = d.on_writable(budget as usize, now);
        let spent = d.written() - before;
        pacer.charge(spent.saturating_sub(free));
        if let Some(cap) = &mut self.cap {
            cap.take(spent);
        }
        self.apply(id, step);
    }

    /// Under a bandwidth cap: gives the available bytes to the waiting downloads, the
    /// starved first, then every other turn by the schedule (shortest remaining, or served
    /// longest ago) and in between by round robin, so that at least half of the cap is
    /// shared fairly: a stream of new, shorter downloads cannot starve a running one.
    fn schedule(&mut self, now: Instant) {
        let Some(cap) = &mut self.cap else {
            return;
        };
        if self.wanting.is_empty() || cap.available(now) == 0 {
            return;
        }
        self.fair_turn = !self.fair_turn;
        let schedule = if self.fair_turn {
            Schedule::Fair
        } else {
            self.config.schedule
        };
        let mut order: Vec<(bool, u64, Instant, usize)> = self
            .wanting
            .iter()
            .filter_map(|&id| self.downloads.get(&id).map(|d| (id, d)))
            .map(|(id, d)| {
                let starved = now.duration_since(d.last_progress()) >= STARVE;
                (!starved, d.remaining(), d.last_progress(), id)
            })
            .collect();
        match schedule {
            Schedule::Srpt => order.sort_unstable_by_key(|&(s, rem, last, _)| (s, rem, last)),
            Schedule::Fair => order.sort_unstable_by_key(|&(s, _, last, _)| (s, last)),
        }
        for (_, _, _, id) in order {
            let budget = self.cap.as_mut().map_or(0, |cap| cap.available(now));
            if budget == 0 {
                break;
            }
            if self.in_start(id) {
                // Start pacing and the cap both decide (it comes back if the cap runs dry).
                self.wanting.remove(&id);
                self.write_starting(id, now, true);
                continue;
            }
            let Some(d) = self.downloads.get_mut(&id) else {
                self.wanting.remove(&id);
                continue;
            };
            let budget = usize::try_from(budget).unwrap_or(BUDGET).min(BUDGET);
            let before = d.written();
            let step = d.on_writable(budget, now);
            if let Some(cap) = &mut self.cap {
                cap.take(d.written() - before);
            }
            if step != Step::Yield {
                self.wanting.remove(&id);
                self.apply(id, step);
            }
        }
    }

    /// After a burst, give back the tables' room and the allocator's free memory.
    /// Also once each time the loop falls idle, so that the last frees of a burst are
    /// returned too.
    fn shrink_after_burst(&mut self) {
        let shrunk =
            self.downloads.capacity() > 64 && self.downloads.len() < self.downloads.capacity() / 4;
        let fell_idle = self.downloads.is_empty() && !self.trimmed_idle;
        if shrunk || fell_idle {
            self.downloads.shrink_to_fit();
            self.wanting.shrink_to_fit();
            if let Some(pacer) = &mut self.pacer {
                pacer.shrink();
            }
            self.sleepers.shrink_to_fit();
            self.ready.shrink_to_fit();
            crate::sys::release_free_memory();
        }
        self.trimmed_idle = self.downloads.is_empty();
    }

    fn take_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Start(rcv) => self.start(rcv, now),
                Command::Drain(until) => self.drain_until = Some(until),
            }
        }
    }

    fn start(&mut self, rcv: Received, now: Instant) {
        // Only now, after go, may the shared file description become non-blocking: the
        // worker no longer writes to it.
        if let Err(e) = set_nonblocking(&rcv.conn) {
            warn!("cannot make the connection non-blocking: {e}; dropped");
            self.load.fetch_sub(1, Ordering::Relaxed);
            self.counters
                .count_outcome(&Outcome::Aborted("not started".into()));
            return;
        }
        // A group without a rate (which the extension never sends) would crawl at 1 B/s:
        // ignored.
        let group = (!rcv.job.rate_group.is_empty() && rcv.job.rate > 0)
            .then(|| self.groups.join(&rcv.job.rate_group, rcv.job.rate, now));
        if group.is_some() {
            debug!(
                "download of {:?} joins rate group {:?} at {} B/s",
                rcv.job.file_name, rcv.job.rate_group, rcv.job.rate
            );
        }
        let mut download = Download::new(rcv, now, self.config.linger_timeout, group);
        download.count_into(self.counters.clone());
        let id = self.next;
        self.next += 1;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&download.socket().as_raw_fd()),
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot watch a download: {e}; dropped");
            self.load.fetch_sub(1, Ordering::Relaxed);
            self.counters
                .count_outcome(&Outcome::Aborted("not started".into()));
            return;
        }
        Counters::add(&self.counters.accepted, 1);
        Counters::add(&self.counters.active, 1);
        self.downloads.insert(id, download);
        // Edge-triggered registration reports the current state, but start right away.
        self.ready.push(id);
    }

    fn on_event(&mut self, id: usize, readable: bool, writable: bool, now: Instant) {
        let start_bytes = self.start_bytes();
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        let mut step = Step::Wait;
        if readable {
            step = d.on_readable(&mut self.scratch);
        }
        if writable && step == Step::Wait {
            // The connection takes bytes again: whatever wait follows is for a rate, and
            // a rate wait never counts toward the send timeout.
            d.unstall();
            if in_start_phase(d, start_bytes) {
                self.write_starting(id, now, false);
                return;
            }
            if self.cap.is_some() {
                // The scheduler decides when it writes.
                self.wanting.insert(id);
                return;
            }
            step = d.on_writable(BUDGET, now);
        }
        self.apply(id, step);
    }

    fn apply(&mut self, id: usize, step: Step) {
        match step {
            Step::Wait => {}
            // Its share, its start phase or the byte budget ran out: write_starting
            // decides which (a later turn, or the ordinary path).
            Step::Yield if self.in_start(id) => self.ready.push(id),
            Step::Yield if self.cap.is_some() => {
                self.wanting.insert(id);
            }
            Step::Yield => self.ready.push(id),
            Step::Sleep(at) => self.sleepers.push(Reverse((at, id))),
            Step::Done(outcome) => self.finish(id, outcome),
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let expired: Vec<(usize, Outcome)> = self
            .downloads
            .iter()
            .filter_map(|(&id, d)| {
                d.check_timeout(now, self.config.send_timeout)
                    .map(|o| (id, o))
            })
            .collect();
        for (id, outcome) in expired {
            self.finish(id, outcome);
        }
    }

    fn publish(&self, now: Instant) {
        let list = self
            .downloads
            .values()
            .map(|d| Snapshot {
                client: d.client.clone(),
                file: d.file_name.clone(),
                tag: d.tag.clone(),
                status: d.status,
                sent: d.sent,
                planned: d.planned,
                elapsed_ms: now.duration_since(d.started).as_millis() as u64,
            })
            .collect();
        self.board.publish(list);
    }

    /// Removes a download, closing its descriptors, and logs it.
    fn finish(&mut self, id: usize, outcome: Outcome) {
        let Some(d) = self.downloads.remove(&id) else {
            return;
        };
        self.wanting.remove(&id);
        if let Some(pacer) = &mut self.pacer {
            pacer.forget(id);
        }
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&d.socket().as_raw_fd()));
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.counters.count_outcome(&outcome);
        let duration = d.started.elapsed();
        self.counters.download_seconds.observe(duration);
        if let Some(first) = d.first_byte() {
            self.counters
                .first_byte_seconds
                .observe(first.duration_since(d.started));
        }
        info!(
            "download client={:?} file={:?} status={} bytes={} planned={} {} duration_ms={}",
            d.client,
            d.file_name,
            d.status,
            d.sent,
            d.planned,
            outcome,
            duration.as_millis()
        );
        if let Ok(mut log) = self.access_log.lock() {
            log.write(&Entry {
                client: &d.client,
                file: &d.file_name,
                tag: (!d.tag.is_empty()).then_some(d.tag.as_str()),
                status: d.status,
                range: d.range.as_deref(),
                bytes_sent: d.sent,
                bytes_planned: d.planned,
                outcome: &outcome,
                duration,
            });
        }
        if let Some(completions) = &self.completions {
            let record = Record {
                id: completions.next_id(),
                tag: (!d.tag.is_empty()).then(|| d.tag.clone()),
                file: d.file_name.clone(),
                status: d.status,
                range: d.range.clone(),
                ranges: d
                    .file_ranges
                    .iter()
                    .map(|&(offset, length)| (offset, offset + length - 1))
                    .collect(),
                bytes_planned: d.planned,
                bytes_sent: d.sent,
                outcome,
                started: d.started_at,
                duration,
                client: d.client.clone(),
                file_size: None,
                joined_bytes: 0,
                file_complete: false,
            };
            completions.report(record, d.file_id, &d.file_ranges);
        }
    }
}

/// Whether relay pacing governs a download: relayed by a web server, longer than the
/// first window (a shorter one fills no buffer beyond its own end, so pacing it would only
/// slow small files down), and still sending (`start_bytes` is 0 while pacing is off).
fn in_start_phase(d: &Download, start_bytes: u64) -> bool {
    start_bytes > 0 && d.is_relayed() && d.planned > start_bytes && !d.is_lingering()
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
