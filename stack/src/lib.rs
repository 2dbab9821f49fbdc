//! How a handoff stack starts: handoff-manager, php-fpm with `deploy/php-fpm-pool.conf`, and
//! nginx with `deploy/nginx-site.conf.template` inside a main config written here. One
//! definition for the integration tests (`tests/util/stack/`), the manager's own tests,
//! the demo (`scripts/demo.sh`) and the benchmark (`bench/run.sh`); the scripts reach it
//! through the `handoff-stack` binary (`src/main.rs`).
//!
//! - [`process`]: one child process, its output in a log file, stopped in `Drop`.
//! - [`manager`]: starting handoff-manager and waiting for its socket.
//! - [`fpm`]: starting php-fpm with the shared pool.
//! - [`nginx`]: writing nginx's main config around the shared site, starting it.
//!
//! What differs between the callers (worker counts, log levels, bench-only locations, the
//! static server of the differential test) is an explicit option here, not a copy.
//! Readiness is always "the socket accepts a connection", polled with a deadline; a daemon
//! that dies while starting is reported at once, with its command line and log.

#![deny(unsafe_code)]

pub mod fpm;
pub mod manager;
pub mod nginx;
pub mod process;

pub use manager::{seqpacket_accepts, spawn_manager, start_manager};
pub use process::{describe, Proc};

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a daemon may take to start accepting connections.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// How many trailing lines of a log a start-up failure prints.
pub const LOG_TAIL_LINES: usize = 150;

/// Where a stack's processes put their files.
#[derive(Clone, Debug)]
pub struct Place {
    /// Sockets, generated configs, pid files, nginx's temp directories.
    pub dir: PathBuf,
    /// Every process's log.
    pub logs: PathBuf,
    /// Start each daemon in a process group of its own, so that a Ctrl-C in the terminal
    /// reaches only the starter, which then stops them in order (the `handoff-stack`
    /// binary). The tests leave them in theirs: an interrupted `cargo test` takes them along.
    pub own_process_group: bool,
}

impl Place {
    /// Everything in `dir`, processes in the caller's process group (the tests).
    pub fn flat(dir: &Path) -> Place {
        Place {
            dir: dir.to_path_buf(),
            logs: dir.to_path_buf(),
            own_process_group: false,
        }
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        if self.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        cmd
    }
}

/// Something a started daemon accepts connections on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Listen {
    /// Whether a stream connection to it succeeds now.
    pub fn accepts(&self) -> bool {
        match self {
            Listen::Unix(path) => UnixStream::connect(path).is_ok(),
            Listen::Tcp(addr) => TcpStream::connect(addr).is_ok(),
        }
    }

    /// The address in nginx's syntax: `unix:/path` or `127.0.0.1:8080`.
    pub fn nginx(&self) -> String {
        match self {
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Tcp(addr) => addr.to_string(),
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    // This crate lives in stack/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn built_binary(env_var: &str, name: &str) -> PathBuf {
    let path = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/release").join(name),
    };
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --release --workspace` in {} first (or set {env_var})",
        path.display(),
        repo_root().display()
    );
    path
}

/// The extension: `$HANDOFF_EXT` or `target/release/libhandoff.so`.
pub fn extension() -> PathBuf {
    built_binary("HANDOFF_EXT", "libhandoff.so")
}

/// The daemon: `$HANDOFF_MANAGER` or `target/release/handoff-manager`.
pub fn manager_binary() -> PathBuf {
    built_binary("HANDOFF_MANAGER", "handoff-manager")
}

/// The first of `candidates` found on PATH or in the sbin directories.
pub fn find_program(candidates: &[&str]) -> PathBuf {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for name in candidates {
        for dir in path_dirs.iter().map(PathBuf::as_path).chain([
            Path::new("/usr/sbin"),
            Path::new("/usr/local/sbin"),
            Path::new("/usr/bin"),
        ]) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("none of {candidates:?} found on PATH or in /usr/sbin");
}

/// A loopback address with a port the kernel just handed out and nobody holds now, never
/// the same port twice in one process. The kernel picks each port at random from its
/// ephemeral range and forgets it when the probe socket closes, so two tests of one binary
/// running side by side could be given the same port: the second server then fails to bind
/// while its readiness check connects to the first one's. Another process may still take
/// the port before the caller binds it, so servers started on it retry.
pub fn free_local_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port");
        // A test that panicked while holding the lock leaves the set as it was: still valid.
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(addr.port()) {
            return addr;
        }
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The name of the user running this process (php-fpm's pool wants a name).
pub fn user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "nobody".into())
}

/// Polls `ready` every few milliseconds until it holds or `deadline` passes; `alive` is asked
/// in between so that a daemon that died is reported at once instead of at the deadline.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        alive()?;
        if start.elapsed() > deadline {
            return Err(format!("{what}: not ready after {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until every one of `listens` accepts, while `proc` lives; panics with its command
/// line and the tails of its output and of `logs` if not.
pub fn wait_listening(proc: &mut Proc, listens: &[Listen], logs: &[&Path]) {
    let result = wait_until(
        &proc.name.clone(),
        START_DEADLINE,
        || listens.iter().all(Listen::accepts),
        || proc.check_alive(),
    );
    if let Err(e) = result {
        let mut report = format!("{e}\n{}: {}\n", proc.name, proc.cmdline);
        for log in std::iter::once(proc.log.as_path()).chain(logs.iter().copied()) {
            let _ = writeln!(report, "---- {}:", log.display());
            report.push_str(&tail(&read_lossy(log), LOG_TAIL_LINES));
        }
        panic!("{report}");
    }
}

/// A file's content as text, or a note saying why it could not be read.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[... {skip} earlier lines]");
    }
    for l in &all[skip..] {
        let _ = writeln!(out, "{l}");
    }
    out
}

/// A `deploy/` template with its `${HANDOFF_*}` placeholders filled in; panics if one is
/// left (a renamed placeholder must not pass silently).
pub fn fill_template(name: &str, values: &[(&str, &str)]) -> String {
    let mut text = fs::read_to_string(repo_root().join("deploy").join(name))
        .unwrap_or_else(|e| panic!("read deploy/{name}: {e}"));
    for (key, value) in values {
        text = text.replace(&format!("${{{key}}}"), value);
    }
    let unfilled = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${HANDOFF_"))
        .collect::<Vec<_>>();
    assert!(
        unfilled.is_empty(),
        "deploy/{name}: unfilled placeholders: {unfilled:?}"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::free_local_addr;
    use std::collections::HashSet;

    /// Enough ports that the kernel's random picks repeat some (about 140 repeats among
    /// 2,000 picks, measured on Debian 12): none may be handed out twice.
    #[test]
    fn free_local_addr_never_repeats_a_port() {
        let mut seen = HashSet::new();
        for i in 0..2_000 {
            let port = free_local_addr().port();
            assert!(seen.insert(port), "port {port} handed out twice (pick {i})");
        }
    }
}
