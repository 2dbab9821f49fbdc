//! The manager's side: reading the next message of a connection with the descriptors that
//! came with it, checking it, and telling a confirmed job, a one-way handoff (good or
//! malformed, whose request the manager then owns), a hello and a drain request apart.

use std::os::fd::{BorrowedFd, OwnedFd};

use nix::sys::socket::MsgFlags;

use super::wire::{
    check_message, check_preamble, fixed_framing, Framing, Job, Reply, KIND_HANDOFF, MAX_MESSAGE,
};
use super::ProtocolError;
use crate::sys::recv_with_fds;

/// What a peer opened a connection with.
// One value per handshake, moved once: boxing the job would cost an allocation and save
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Incoming {
    /// A confirmed handoff: answer it, and start only on the worker's go.
    Job(Received),
    /// A one-way handoff: the manager owns the request from now on.
    Handoff(Received),
    /// A one-way handoff that cannot be run as sent; the manager still owns its request.
    BadHandoff(BadHandoff),
    /// A worker opens a connection for one-way handoffs.
    Hello,
    /// A new manager took over the socket path: stop taking handoffs and finish.
    Drain,
}

/// A malformed one-way handoff: why, and the client connection with what is needed to
/// answer on it (when the message said that much and carried its two descriptors).
#[derive(Debug)]
pub struct BadHandoff {
    pub error: ProtocolError,
    pub answer: Option<Answerable>,
}

/// A connection the manager can still answer (with an error response) though its job was
/// malformed: the framing, request id and flags come from the job's fixed part.
#[derive(Debug)]
pub struct Answerable {
    pub conn: OwnedFd,
    pub framing: Framing,
    pub request_id: u16,
    /// See [`Job::keep_conn`].
    pub keep_conn: bool,
}

/// A job received by the manager, with the two descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    pub job: Job,
    pub conn: OwnedFd,
    pub file: OwnedFd,
}

/// Reads the next message of a connection: a job and its descriptors, a hello, or a drain
/// request. Every received descriptor is owned (and so closed) whatever the outcome.
/// `Ok(None)` means the peer closed the socket.
///
/// A malformed one-way handoff is not an error but [`Incoming::BadHandoff`]: its request
/// belongs to the manager, which answers it if it can.
pub fn recv_job(sock: BorrowedFd<'_>) -> Result<Option<Incoming>, ProtocolError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let msg = recv_with_fds(sock, &mut buf).map_err(ProtocolError::io("recvmsg"))?;
    let mut fds = msg.fds;
    let len = msg.len;
    let flags = MsgFlags::from_bits_retain(msg.flags);
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let one_way = len >= 4 && matches!(check_preamble(&buf[..4]), Ok(KIND_HANDOFF));
    let checked = check_message(&buf, len, flags);
    if one_way {
        let job = checked.and_then(|()| Job::decode(&buf[..len]));
        return Ok(Some(match (job, fds.len()) {
            (Ok(job), 2) => {
                let file = fds.pop().ok_or(ProtocolError::FdCount { got: 0 })?;
                let conn = fds.pop().ok_or(ProtocolError::FdCount { got: 1 })?;
                Incoming::Handoff(Received { job, conn, file })
            }
            (Ok(_), got) => Incoming::BadHandoff(BadHandoff {
                error: ProtocolError::FdCount { got },
                answer: None,
            }),
            (Err(error), got) => {
                // The descriptors are trusted to be (connection, file) only when exactly
                // two came, nothing was cut off, and the fixed part names the framing.
                let answer = match (got, fixed_framing(&buf[..len.min(buf.len())])) {
                    (2, Some((framing, request_id, keep_conn)))
                        if !flags.contains(MsgFlags::MSG_CTRUNC) =>
                    {
                        fds.truncate(1);
                        fds.pop().map(|conn| Answerable {
                            conn,
                            framing,
                            request_id,
                            keep_conn,
                        })
                    }
                    _ => None,
                };
                Incoming::BadHandoff(BadHandoff { error, answer })
            }
        }));
    }
    checked?;
    if fds.is_empty() {
        match Reply::decode(&buf[..len]) {
            Ok(Reply::Drain) => return Ok(Some(Incoming::Drain)),
            Ok(Reply::Hello) => return Ok(Some(Incoming::Hello)),
            _ => {}
        }
    }
    let job = Job::decode(&buf[..len])?;
    if fds.len() != 2 {
        return Err(ProtocolError::FdCount { got: fds.len() });
    }
    let file = fds.pop().ok_or(ProtocolError::FdCount { got: 0 })?;
    let conn = fds.pop().ok_or(ProtocolError::FdCount { got: 1 })?;
    Ok(Some(Incoming::Job(Received { job, conn, file })))
}
