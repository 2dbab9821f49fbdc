//! The crate's only `unsafe` code (`lib.rs` denies it everywhere else): taking ownership of
//! the descriptor numbers that `accept4` just created for this process or that systemd
//! passed to it (both leave this module as `OwnedFd`), two glibc memory tunables, a
//! thread's nice value, a descriptor's non-blocking mode, and the bytes still unread in a
//! socket.
//! (Descriptors received by `SCM_RIGHTS` are owned by `handoff_core`'s own `sys` module.)

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::SockFlag;

/// `accept4()` on a listening socket: the new connection comes back owned, wrapped the
/// moment the kernel returns its number, so that every path (including errors) closes it
/// and no bare descriptor number leaves this module.
pub(crate) fn accept4(listener: BorrowedFd<'_>, flags: SockFlag) -> Result<OwnedFd, Errno> {
    let fd = nix::sys::socket::accept4(listener.as_raw_fd(), flags)?;
    // SAFETY: a successful accept4() has just created `fd` for this process and returned
    // it to this call alone: it is open, has no other owner, and is wrapped exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of descriptor `fd`, which systemd's socket activation passed to this
/// process (`LISTEN_FDS`), after checking that it is open.
///
/// Callers pass only the numbers the `sd_listen_fds` protocol assigns to this process
/// (`LISTEN_PID` is ours), once, at start-up before the process creates any descriptor of
/// its own: an open descriptor of that number is then the inherited one, and nothing else
/// owns it.
pub(crate) fn own_inherited_fd(fd: RawFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: per the contract above, `fd` is open (F_GETFD succeeded), was inherited at
    // exec for this process, and has no other owner; it is wrapped exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives memory that the allocator keeps after a burst of downloads back to the kernel,
/// so that the manager's footprint returns to its baseline when the burst is over.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap under its lock; it has no
    // preconditions and returns whether memory was released.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// One malloc arena for the whole process. Jobs are built by the handshake thread and
/// freed by a download loop; with glibc's default of one arena per thread those frees
/// fragment several heaps that `malloc_trim` cannot give back, and the manager's memory
/// would not return to its baseline after a burst (measured: +3 MiB of 9 MiB kept with
/// 8 arenas, +1 MiB with one). The loops allocate almost nothing per event, so one arena's
/// lock costs nothing measurable.
pub(crate) fn single_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; called before any other thread starts.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Raises the calling thread's nice value by `by` (Linux: per thread). Needs no privilege;
/// failure (a sandbox that forbids it) only loses the preference, so it is logged.
pub(crate) fn lower_thread_priority(by: i32) {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS and a thread id
    // changes only that thread's nice value.
    let done = unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + by)
    };
    if done != 0 {
        log::debug!("cannot lower a download loop's priority: {}", Errno::last());
    }
}

/// Sets `O_NONBLOCK` on the descriptor's open file description in one call (`FIONBIO`;
/// `fcntl` needs two, reading the flags and writing them back), leaving its other flags.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int through the pointer, which points to a live local; the
    // descriptor is borrowed for the call, so it is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &on) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Bytes written to a stream socket that its peer has not read yet (`SIOCOUTQ`; for TCP the
/// bytes not yet acknowledged, for a Unix socket those still queued for the reader).
pub(crate) fn unsent_bytes(sock: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int through the pointer, which points to a
    // live local; the descriptor is borrowed for the call, so it is open.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}
