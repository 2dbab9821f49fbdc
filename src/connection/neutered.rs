//! The worker's copy of a handed-off connection: `/dev/null` over its descriptor number
//! while the manager owns it, put back if the manager never started.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use super::Connection;

/// The worker's copy of the connection, made harmless while the manager owns it.
///
/// `/dev/null` takes the connection's descriptor number, so that whatever the SAPI still
/// writes (php-fpm's `END_REQUEST`) is discarded and its later `close()` closes only that.
/// The original stays reachable through `saved` until the manager has said yes to go, so a
/// failed go can put it back.
/// `/dev/null`, opened once per process (every handoff puts a copy of it over the
/// connection's descriptor number).
fn dev_null() -> Result<&'static std::fs::File, String> {
    static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(null) = NULL.get() {
        return Ok(null);
    }
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    Ok(NULL.get_or_init(|| null))
}

pub struct Neutered<'r> {
    /// The connection's number: /dev/null until restored, open either way.
    fd: BorrowedFd<'r>,
    saved: OwnedFd,
    /// The connection's file status flags before the handoff: `O_NONBLOCK` under mod_php
    /// (APR's timeouts poll), blocking under php-fpm and `php -S`. Not read for a one-way
    /// handoff (`untouched_flags`).
    flags: Option<OFlag>,
    /// Nobody else can have had the connection before a restore (a one-way send that fails
    /// handed nothing over), so its flags are as the SAPI left them: restore keeps them.
    untouched_flags: bool,
    /// `O_CLOEXEC` if the number was close-on-exec (mod_php's client socket is; APR
    /// accepts with `SOCK_CLOEXEC`), else empty. `dup2` clears the flag, so both
    /// replacements use `dup3` with it, and a child the script starts later (`exec`,
    /// `proc_open`, `mail()`) inherits neither the connection nor /dev/null in its place.
    cloexec: OFlag,
}

impl<'r> Neutered<'r> {
    pub fn new(conn: &Connection<'r>) -> Result<Neutered<'r>, String> {
        Self::neuter(conn, false)
    }

    /// For a one-way handoff, whose restore follows only a send that handed nothing over:
    /// the file status flags are neither read nor set (one `fcntl` fewer per handoff).
    pub fn one_way(conn: &Connection<'r>) -> Result<Neutered<'r>, String> {
        Self::neuter(conn, true)
    }

    fn neuter(conn: &Connection<'r>, untouched_flags: bool) -> Result<Neutered<'r>, String> {
        let flags = if untouched_flags {
            None
        } else {
            fcntl(conn.fd.as_raw_fd(), FcntlArg::F_GETFL)
                .ok()
                .map(OFlag::from_bits_retain)
        };
        let cloexec = match fcntl(conn.fd.as_raw_fd(), FcntlArg::F_GETFD) {
            Ok(bits) if FdFlag::from_bits_retain(bits).contains(FdFlag::FD_CLOEXEC) => {
                OFlag::O_CLOEXEC
            }
            _ => OFlag::empty(),
        };
        let saved = conn
            .fd
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?;
        nix::unistd::dup3(
            dev_null()?.as_fd().as_raw_fd(),
            conn.fd.as_raw_fd(),
            cloexec,
        )
        .map_err(|e| format!("dup3: {e}"))?;
        Ok(Neutered {
            fd: conn.fd,
            saved,
            flags,
            untouched_flags,
            cloexec,
        })
    }

    /// The connection itself (a duplicate the worker holds while its descriptor number
    /// is `/dev/null`): what a one-way handoff sends.
    pub fn connection(&self) -> BorrowedFd<'_> {
        self.saved.as_fd()
    }

    /// Puts the real connection back (the manager never started), blocking or not as the
    /// SAPI had it (the manager may have switched the shared file description), and
    /// close-on-exec as it was.
    pub fn restore(self) -> Result<(), String> {
        nix::unistd::dup3(self.saved.as_raw_fd(), self.fd.as_raw_fd(), self.cloexec)
            .map_err(|e| format!("dup3: {e}"))?;
        match self.flags {
            _ if self.untouched_flags => {}
            Some(flags) => {
                let _ = fcntl(self.fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
            }
            None => clear_nonblocking(self.fd),
        }
        Ok(())
    }

    /// The manager owns the connection now; drop our extra reference to it.
    pub fn commit(self) {
        drop(self.saved);
    }
}

/// The manager may have set `O_NONBLOCK` on the shared file description; PHP's SAPIs write
/// with blocking calls.
pub fn clear_nonblocking(fd: BorrowedFd<'_>) {
    if let Ok(bits) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(bits);
        if flags.contains(OFlag::O_NONBLOCK) {
            let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK));
        }
    }
}
