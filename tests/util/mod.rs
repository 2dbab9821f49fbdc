//! The integration-test harness: real nginx, php-fpm, `php -S`, Apache and handoff-manager.
//!
//! - [`stack`]: one serving stack (manager optional, then php-fpm behind nginx, the PHP
//!   built-in server, or Apache with mod_php) inside its own temporary directory, with its
//!   own Unix sockets; it prints every command line and the tail of every log when a test
//!   panics.
//! - [`process`]: one child process, its output in a log file, stopped in `Drop`.
//! - [`manager`]: starting handoff-manager, and a stand-in that accepts and never answers.
//! - [`client`]: how a client reaches a stack, curl and raw-socket clients, what they got.
//! - [`data`]: deterministic test content and sha256.
//! - [`scenarios`]: checks that run the same way behind php-fpm, `php -S` and mod_php.
//!
//! Readiness is always "the socket accepts a connection", polled with a deadline.

#![allow(dead_code)]

pub mod client;
pub mod data;
pub mod faults;
pub mod manager;
pub mod process;
pub mod scenarios;
pub mod stack;

pub use client::*;
pub use data::*;
pub use manager::*;
pub use process::*;
pub use stack::*;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a daemon may take to start accepting connections.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// How many trailing lines of each log a failing test prints.
pub const LOG_TAIL_LINES: usize = 150;

pub const MIB: u64 = 1024 * 1024;

/// The repository root (the root crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The document root that nginx and `php -S` serve: `php/tests/www`.
pub fn docroot() -> PathBuf {
    repo_root().join("php/tests/www")
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

/// A loopback address with a port the kernel just handed out and nobody holds now. Another
/// process may still take it before the caller binds it, so servers started on it retry.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free port")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Serialises the tests that move hundreds of MiB or run dozens of clients, so that they do
/// not starve the timing-sensitive ones. Poisoning is ignored: one failed test must not fail
/// the others.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
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
