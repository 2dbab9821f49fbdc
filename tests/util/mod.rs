//! The integration-test harness: real nginx, php-fpm, `php -S`, Apache and handoff-manager.
//!
//! - [`stack`]: one serving stack (manager optional, then php-fpm behind nginx, the PHP
//!   built-in server, or Apache with mod_php) inside its own temporary directory, with its
//!   own Unix sockets; it prints every command line and the tail of every log when a test
//!   panics.
//! - [`manager`]: starting handoff-manager, and a stand-in that accepts and never answers.
//! - [`client`]: how a client reaches a stack, curl and raw-socket clients, what they got.
//! - [`data`]: deterministic test content and sha256.
//! - [`scenarios`]: checks that run the same way behind php-fpm, `php -S` and mod_php.
//!
//! How manager, php-fpm and nginx start (configs, readiness, logs, [`Proc`]) is the
//! `handoff-stack` crate in `stack/`, shared with the manager's tests, the demo and
//! the benchmark; this module re-exports it. Readiness is always "the socket accepts a
//! connection", polled with a deadline.

#![allow(dead_code)]

pub mod client;
pub mod data;
pub mod faults;
pub mod manager;
pub mod scenarios;
pub mod stack;

pub use client::*;
pub use data::*;
pub use handoff_stack::{
    describe, extension, find_program, free_local_addr, is_root, manager_binary, read_lossy,
    repo_root, tail, wait_until, Proc, LOG_TAIL_LINES, START_DEADLINE,
};
pub use manager::*;
pub use stack::*;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub const MIB: u64 = 1024 * 1024;

/// The document root that nginx and `php -S` serve: `php/tests/www`.
pub fn docroot() -> PathBuf {
    repo_root().join("php/tests/www")
}

/// Serialises the tests that move hundreds of MiB or run dozens of clients, so that they do
/// not starve the timing-sensitive ones. Poisoning is ignored: one failed test must not fail
/// the others.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}
