//! The crate's only `unsafe` code: taking ownership of descriptor numbers that the kernel
//! just created for this process (by `accept4` or by `SCM_RIGHTS`), receiving a message
//! with its descriptors, and two glibc memory tunables.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;

/// Wraps a descriptor that the kernel has just created for us and that nothing else owns.
///
/// Callers pass only numbers returned by a successful `accept4()` or read from an
/// `SCM_RIGHTS` control message of a `recvmsg()` that just returned; each number is wrapped
/// exactly once, right away, so that every path (including errors) closes it.
pub(crate) fn own_new_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: per the contract above, `fd` is open, was created by the kernel for this
    // process during the call that returned it, and has no other owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
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

/// Most descriptors one `SCM_RIGHTS` message can carry on Linux (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// What [`recv_with_fds`] read: the message's length and flags, and every descriptor the
/// kernel installed in this process for it, already owned.
#[derive(Debug)]
pub(crate) struct Message {
    pub len: usize,
    pub flags: libc::c_int,
    pub fds: Vec<OwnedFd>,
}

/// Receives one message (`MSG_DONTWAIT`, descriptors close-on-exec) into `buf`.
///
/// Every descriptor that came with it is owned before this returns, whatever else the
/// message holds: the control buffer has room for the kernel's maximum per message, and
/// the control messages are walked by hand because `nix` refuses to iterate them after
/// `MSG_CTRUNC`, although the descriptors that did fit were installed all the same.
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Message, Errno> {
    // `u64` elements keep the buffer aligned for `cmsghdr`.
    let space = cmsg_space(SCM_MAX_FD * std::mem::size_of::<RawFd>());
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = control.len() * 8;
    // SAFETY: `hdr` points at `iov` (which describes `buf`) and at `control`, all of which
    // outlive the call and are writable for the lengths given.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut hdr,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    let mut fds = Vec::new();
    // SAFETY: after a successful recvmsg the kernel has set `msg_controllen` to the bytes
    // of control data it wrote into `control`; CMSG_FIRSTHDR/CMSG_NXTHDR only walk inside
    // that length, and each header they return lies within `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let header = data.offset_from(c.cast::<u8>()) as usize;
                let count =
                    ((*c).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(own_new_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok(Message {
        len: n as usize,
        flags: hdr.msg_flags,
        fds,
    })
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize }
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
