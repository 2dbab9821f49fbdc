//! The manager's own check of a received job before it is accepted or run: the connection
//! must be a connected stream socket, the file a regular file that holds every planned byte,
//! the labels printable, and the body's length must fit a `u64`. The extension checked the
//! same before handing off; the manager trusts nothing it receives.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};

use handoff_core::plan::Piece;
use handoff_core::protocol::Received;

/// Why a received job is refused before it is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("connection descriptor is not a socket")]
    NotASocket,
    #[error("connection descriptor is not a connected stream socket")]
    NotAStream,
    #[error("file descriptor is not a regular file")]
    NotAFile,
    #[error("range {offset}+{length} is beyond the file's {size} bytes")]
    Range { offset: u64, length: u64, size: u64 },
    #[error("the body's pieces add up to more than 2^64 - 1 bytes")]
    BodyTooLong,
    #[error("cannot inspect descriptor: {0}")]
    Stat(Errno),
    #[error("tag or rate group is not 1 to 256 printable ASCII bytes")]
    Label,
}

/// Checks the two descriptors of a job before the manager accepts it.
pub fn validate(rcv: &Received) -> Result<(), Rejected> {
    for label in [&rcv.job.tag, &rcv.job.rate_group] {
        if !label.is_empty() && !handoff_core::label::is_valid(label.as_bytes()) {
            return Err(Rejected::Label);
        }
    }
    validate_connection(&rcv.conn)?;
    let st = fstat(rcv.file.as_raw_fd()).map_err(Rejected::Stat)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Rejected::NotAFile);
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    for piece in &rcv.job.body {
        if let Piece::File { offset, length } = *piece {
            if offset.saturating_add(length) > size {
                return Err(Rejected::Range {
                    offset,
                    length,
                    size,
                });
            }
        }
    }
    // Every later count of body bytes (what is planned, sent, still to frame) is then
    // exact, and never wraps.
    handoff_core::plan::checked_body_len(&rcv.job.body).ok_or(Rejected::BodyTooLong)?;
    Ok(())
}

/// Checks that a received connection descriptor is a connected stream socket (something a
/// response can be written to).
pub fn validate_connection(conn: &OwnedFd) -> Result<(), Rejected> {
    // Asking a descriptor for its socket type is also what tells a socket from anything
    // else: every other kind of file answers ENOTSOCK.
    let ty = getsockopt(conn, sockopt::SockType).map_err(|e| match e {
        Errno::ENOTSOCK => Rejected::NotASocket,
        e => Rejected::Stat(e),
    })?;
    let listening = getsockopt(conn, sockopt::AcceptConn).map_err(Rejected::Stat)?;
    if ty != nix::sys::socket::SockType::Stream || listening {
        return Err(Rejected::NotAStream);
    }
    Ok(())
}
