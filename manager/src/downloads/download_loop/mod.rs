//! A download loop: one thread with its own mio `Poll` that owns the downloads handed to
//! it and runs them to the end. The manager starts one per CPU by default; the handshake
//! loop ([`crate::handoffs::server`]) gives each accepted job to the least loaded one.
//!
//! Guarantees: a download is touched by exactly one thread; a loop told to drain takes no
//! new work, finishes what it has, and cuts what is left when the grace period ends.
//!
//! The parts: this file runs the loop (commands, events, timeouts); `rates.rs` decides who
//! writes under the `--max-rate` cap and relay pacing; `report.rs` publishes the live list
//! and reports each finished download.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::downloads::download::{Download, Step};
use crate::downloads::pacing::{PaceConfig, Pacer};
use crate::downloads::rate_group::Groups;
use crate::reporting::access_log::AccessLog;
use crate::reporting::completion::Completions;
use crate::reporting::outcome::Outcome;
use crate::reporting::stats::{Board, Counters};
use handoff_core::bucket::TokenBucket;
use handoff_core::io_class::{classify_io, IoClass};
use handoff_core::protocol::Received;

mod rates;
mod report;

use rates::{cap_bucket, cap_wait, in_start_phase};

const WAKER: Token = Token(0);
const FIRST: usize = 1;
/// Bytes one download may write per wake-up before the others get their turn.
const BUDGET: usize = 2 << 20;
/// How often timeouts are checked and the status board is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// The download loops' nice value, above the PHP workers' (the process's): moving bytes
/// yields to the requests the workers serve. The handshake thread runs at the same value
/// (`handoffs/server/mod.rs`, `HANDSHAKE_NICE`).
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
        if let Err(e) = crate::sys::set_nonblocking(rcv.conn.as_fd()) {
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
        if self.completions.is_some() {
            download.identify_file();
        }
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
}
