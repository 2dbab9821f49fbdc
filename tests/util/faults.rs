//! Fault injection for the fault tests: a handoff-manager that can be stopped, killed and
//! restarted on the same socket path; a stand-in that dies right after confirming a job;
//! and what `/proc` says about who is waiting where in a handshake.

use std::fmt::Write as _;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use handoff_core::protocol::{self, Incoming, Reply};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{seqpacket_accepts, tail, wait_until, Proc, START_DEADLINE};

/// The real handoff-manager, started again and again on one socket path. Each run logs to
/// its own file; a failing test prints the last few runs' logs.
pub struct RestartableManager {
    pub socket: PathBuf,
    dir: PathBuf,
    runs: usize,
    current: Option<Proc>,
    logs: Vec<PathBuf>,
    /// Extra command-line flags for every run.
    args: Vec<String>,
}

impl RestartableManager {
    /// Nothing runs yet; `dir` receives one log per run.
    pub fn new(socket: &Path, dir: &Path) -> RestartableManager {
        RestartableManager {
            socket: socket.to_path_buf(),
            dir: dir.to_path_buf(),
            runs: 0,
            current: None,
            logs: Vec::new(),
            args: Vec::new(),
        }
    }

    /// The manager of `stack` (started [`super::Config::without_manager`]), with `args`,
    /// already running.
    pub fn started_for(stack: &super::Stack, args: &[&str]) -> RestartableManager {
        let mut manager =
            RestartableManager::new(&stack.manager_socket, stack.path()).with_args(args);
        manager.start();
        manager
    }

    /// Adds command-line flags to every later run.
    pub fn with_args(mut self, args: &[&str]) -> RestartableManager {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts a new run (the previous one must be gone) and waits until its socket accepts.
    pub fn start(&mut self) {
        assert!(self.current.is_none(), "a manager is still running");
        self.runs += 1;
        let log = self.dir.join(format!("manager-run-{}.log", self.runs));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut proc = super::manager::spawn_manager_with(&self.socket, &log, &args);
        self.logs.push(log);
        let socket = self.socket.clone();
        if let Err(e) = wait_until(
            "handoff-manager restart",
            START_DEADLINE,
            || seqpacket_accepts(&socket),
            || proc.check_alive(),
        ) {
            self.current = Some(proc);
            panic!("{e}");
        }
        self.current = Some(proc);
    }

    pub fn pid(&self) -> Pid {
        let proc = self.current.as_ref().expect("a manager is running");
        Pid::from_raw(proc.pid() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("kill -{signal} manager: {e}"));
    }

    /// SIGKILL, and waits until the process is gone (reaped), so that its socket is closed.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let mut proc = self.current.take().expect("a manager is running");
        let status = proc
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the manager survived SIGKILL for 10 s"));
        assert!(
            status.code().is_none(),
            "the manager exited by itself ({status}) instead of dying of SIGKILL:\n{}",
            proc.log_text()
        );
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .map(|p| super::read_lossy(p))
            .unwrap_or_default()
    }

    /// How many downloads the current run logged as finished with `outcome` and `bytes`.
    pub fn outcome_count(&self, outcome: &str, bytes: u64) -> usize {
        let want_outcome = format!("outcome={outcome}");
        let want_bytes = format!("bytes={bytes}");
        self.log()
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split(|c: char| c.is_whitespace() || c == ',').collect();
                words.contains(&want_outcome.as_str()) && words.contains(&want_bytes.as_str())
            })
            .count()
    }

    /// Waits until the current run has logged `count` downloads with `outcome` and `bytes`.
    pub fn wait_outcome(&self, outcome: &str, bytes: u64, count: usize) {
        wait_until(
            &format!(
                "manager run {}: outcome={outcome} bytes={bytes} (x{count})",
                self.runs
            ),
            Duration::from_secs(20),
            || self.outcome_count(outcome, bytes) >= count,
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// The last three runs' logs.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let first = self.logs.len().saturating_sub(3);
        for (i, log) in self.logs.iter().enumerate().skip(first) {
            let _ = writeln!(
                out,
                "---- handoff-manager run {} of {} ({}):",
                i + 1,
                self.logs.len(),
                log.display()
            );
            out.push_str(&tail(&super::read_lossy(log), 60));
        }
        out
    }
}

impl Drop for RestartableManager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// What the crashing stand-in saw of the one handoff it took.
#[derive(Debug)]
pub struct Confirmed {
    pub file_name: String,
}

/// A stand-in for a manager that dies right after it confirmed a job.
///
/// Why a stand-in: the window between the manager's `send(Accept)` and its read of "go" is
/// a few microseconds inside one process; no signal sent from outside can land in it
/// reliably. This runs the real protocol code (`recv_job`, `send_reply(Accept)`) and then
/// drops everything a dying process would lose: the handshake socket, both received
/// descriptors and the listening socket (the socket file stays behind, stale, as after a
/// SIGKILL). Its receive side is shut down *before* the Accept leaves, which is what the
/// worker would see from a process that died after sending it: without that, the worker's
/// "go" could win the race against the stand-in's own `close()` and the test would check a
/// different moment each run.
pub struct CrashAfterAccept {
    thread: Option<JoinHandle<Result<Confirmed, String>>>,
}

impl CrashAfterAccept {
    /// Binds `path` (replacing a stale socket file) and serves exactly one handshake.
    pub fn bind(path: &Path) -> CrashAfterAccept {
        let _ = fs::remove_file(path);
        let listener = super::manager::listen_seqpacket(path, "the crashing stand-in");
        let thread = std::thread::spawn(move || Self::serve_one(listener));
        CrashAfterAccept {
            thread: Some(thread),
        }
    }

    fn serve_one(listener: OwnedFd) -> Result<Confirmed, String> {
        use nix::sys::socket::{accept, shutdown, Shutdown};
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = loop {
            match accept(listener.as_raw_fd()) {
                // SAFETY: accept() just returned this descriptor and nothing else owns it.
                Ok(fd) => break unsafe { OwnedFd::from_raw_fd(fd) },
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("no worker connected within 20 s: {e}")),
            }
        };
        let received = loop {
            match protocol::recv_job(sock.as_fd()) {
                Ok(Some(Incoming::Job(r))) => break r,
                Err(e) if e.is_would_block() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(Some(Incoming::Drain)) => return Err("got a drain request".into()),
                // The stand-in confirms: it serves workers with handoff.confirm on.
                Ok(Some(other)) => return Err(format!("not a confirmed handoff: {other:?}")),
                Ok(None) => return Err("the worker closed before sending a job".into()),
                Err(e) => return Err(format!("recv_job: {e}")),
            }
        };
        shutdown(sock.as_raw_fd(), Shutdown::Read).map_err(|e| format!("shutdown: {e}"))?;
        protocol::send_reply(sock.as_fd(), &Reply::Accept)
            .map_err(|e| format!("sending accept: {e}"))?;
        let confirmed = Confirmed {
            file_name: received.job.file_name.clone(),
        };
        // The crash: everything the process held goes at once.
        drop(sock);
        drop(received);
        drop(listener);
        Ok(confirmed)
    }

    /// What it confirmed; `Err` if it never got to confirm a job.
    pub fn join(mut self) -> Result<Confirmed, String> {
        self.thread
            .take()
            .expect("joined once")
            .join()
            .unwrap_or_else(|_| Err("the stand-in thread panicked".into()))
    }
}

impl Drop for CrashAfterAccept {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The live child processes of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// The php-fpm master of a stack in `dir` (from its pid file).
pub fn fpm_master(dir: &Path) -> i32 {
    let text = fs::read_to_string(dir.join("php-fpm.pid")).expect("read php-fpm.pid");
    text.trim().parse().expect("php-fpm.pid holds a pid")
}

/// The one php-fpm worker of a pool with one child: waits for it (the master respawns a
/// killed one) and returns its pid.
pub fn only_fpm_worker(dir: &Path) -> i32 {
    let master = fpm_master(dir);
    let mut found = 0;
    wait_until(
        "exactly one php-fpm worker",
        Duration::from_secs(10),
        || {
            let kids = children_of(master);
            found = kids.first().copied().unwrap_or(0);
            kids.len() == 1
        },
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    found
}

/// The `php -S` process serving `addr`, a child of this test process.
pub fn cli_server_pid(addr: &str) -> i32 {
    let me = std::process::id() as i32;
    children_of(me)
        .into_iter()
        .find(|&p| {
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.contains(&b"-S".as_slice()) && args.contains(&addr.as_bytes())
        })
        .unwrap_or_else(|| panic!("no php -S child serving {addr}"))
}

/// `recvfrom`, which `recv()` is on Linux: the call a worker blocks in while it waits for
/// the manager's answer (PHP itself reads requests with `read()`).
#[cfg(target_arch = "x86_64")]
const SYS_RECVFROM: i64 = 45;
#[cfg(target_arch = "aarch64")]
const SYS_RECVFROM: i64 = 207;

/// Whether `pid` is blocked in `recv()` (per `/proc/PID/syscall`, which names the system
/// call a sleeping task is in).
pub fn blocked_in_recv(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        == Some(SYS_RECVFROM)
}

/// Waits until `worker` is blocked in the handshake with a stopped manager: it has sent its
/// job and sits in `recv()` for the answer. (A worker's first handoff connects, and its
/// connection waits in the stopped manager's backlog; later ones reuse the connection the
/// manager accepted before it stopped. PHP reads requests with `read()`, so a worker in
/// `recv()` is in the handshake.)
pub fn wait_worker_in_handshake(worker: i32, socket: &Path) {
    wait_until(
        &format!(
            "worker {worker} blocked in recv() for the answer of {}",
            socket.display()
        ),
        Duration::from_secs(20),
        || blocked_in_recv(worker),
        || {
            if Path::new(&format!("/proc/{worker}")).exists() {
                Ok(())
            } else {
                Err(format!("worker {worker} is gone"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
