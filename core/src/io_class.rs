//! What a failed system call means for the caller, in one place: every loop that reads,
//! writes, accepts or polls asks [`classify`] instead of matching errno values by hand.
//!
//! - [`IoClass::Retry`]: interrupted by a signal (`EINTR`); call again at once.
//! - [`IoClass::WouldBlock`]: `EAGAIN` (= `EWOULDBLOCK` on Linux). On a non-blocking socket
//!   or with `MSG_DONTWAIT` it means "not now, wait for readiness"; on a blocking socket with
//!   `SO_RCVTIMEO` / `SO_SNDTIMEO` it means the timeout ran out. Only the caller knows which
//!   (see [`crate::protocol`]).
//! - [`IoClass::PeerGone`]: the other end closed or reset the connection (`EPIPE`,
//!   `ECONNRESET`, `ENOTCONN`, `ECONNABORTED`): the conversation is over, nothing is wrong
//!   with this process.
//! - [`IoClass::Error`]: anything else.

use std::io;

use nix::errno::Errno;

/// The class of a failed system call's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    Retry,
    WouldBlock,
    PeerGone,
    Error,
}

/// The class of `errno`.
pub fn classify(errno: Errno) -> IoClass {
    match errno {
        Errno::EINTR => IoClass::Retry,
        Errno::EAGAIN => IoClass::WouldBlock,
        Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::ECONNABORTED => {
            IoClass::PeerGone
        }
        _ => IoClass::Error,
    }
}

/// The class of a `std::io::Error` (from mio, std): by its OS error, else by its kind.
pub fn classify_io(e: &io::Error) -> IoClass {
    match e.raw_os_error() {
        Some(raw) => classify(Errno::from_raw(raw)),
        None => match e.kind() {
            io::ErrorKind::Interrupted => IoClass::Retry,
            io::ErrorKind::WouldBlock => IoClass::WouldBlock,
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionAborted => IoClass::PeerGone,
            _ => IoClass::Error,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{recv, send, MsgFlags};

    use super::*;

    #[test]
    fn each_errno_has_its_class() {
        assert_eq!(classify(Errno::EINTR), IoClass::Retry);
        assert_eq!(classify(Errno::EAGAIN), IoClass::WouldBlock);
        assert_eq!(classify(Errno::EWOULDBLOCK), IoClass::WouldBlock);
        for gone in [
            Errno::EPIPE,
            Errno::ECONNRESET,
            Errno::ENOTCONN,
            Errno::ECONNABORTED,
        ] {
            assert_eq!(classify(gone), IoClass::PeerGone, "{gone}");
        }
        for other in [Errno::EBADF, Errno::EINVAL, Errno::ENOMEM, Errno::EIO] {
            assert_eq!(classify(other), IoClass::Error, "{other}");
        }
    }

    #[test]
    fn io_errors_are_classified_by_their_os_error_or_kind() {
        let cases = [
            (
                io::Error::from_raw_os_error(nix::libc::EINTR),
                IoClass::Retry,
            ),
            (
                io::Error::from(io::ErrorKind::WouldBlock),
                IoClass::WouldBlock,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                IoClass::PeerGone,
            ),
            (io::Error::from(io::ErrorKind::InvalidData), IoClass::Error),
        ];
        for (e, class) in cases {
            assert_eq!(classify_io(&e), class, "{e}");
        }
    }

    /// The kernel's own answers on real sockets land in the classes the loops expect.
    #[test]
    fn real_sockets_would_block_then_see_the_peer_gone() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut buf = [0u8; 16];
        let empty = recv(a.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
        assert_eq!(empty.map_err(classify), Err(IoClass::WouldBlock));
        (&b).write_all(b"x").expect("write");
        assert_eq!((&a).read(&mut buf).expect("read"), 1);
        drop(b);
        let gone = send(a.as_raw_fd(), b"y", MsgFlags::MSG_NOSIGNAL);
        assert_eq!(gone.map_err(classify), Err(IoClass::PeerGone));
    }
}
