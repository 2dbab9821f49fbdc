//! The worker's side: the confirmed handshake ([`Offer`]) and the connection kept for
//! one-way handoffs ([`Channel`]), both bounded by the worker's deadline through socket
//! timeouts.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    connect, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use super::wire::{recv_reply, send_reply, Job, Reply, KIND_GO};
use super::ProtocolError;

/// The worker's side of one handoff.
///
/// ```text
/// let offer = Offer::connect(path, timeout)?;   // manager unreachable: serve it yourself
/// offer.propose(&job, conn, file)?;            // refused / timed out: serve it yourself
/// // ... make the worker's copy of the connection harmless ...
/// offer.go()?;                                 // from here on only the manager writes
/// ```
///
/// `timeout` bounds the whole handshake up to the manager's answer (connecting, sending
/// the job, waiting for accept): each step waits only for what is left of it. `go` never
/// waits. The manager's own limit (`--handshake-timeout`) runs from its accept to the go;
/// if it fires first, the go fails with `EPIPE` and the worker serves the request itself,
/// and a go that was sent before is still honoured (see `manager/src/handoffs/server/` and
/// docs/internals.md, "The handshake").
#[derive(Debug)]
pub struct Offer {
    sock: OwnedFd,
    deadline: Instant,
}

impl Offer {
    /// Connects to the manager; the handshake up to the manager's answer takes at most
    /// `timeout` from now.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Offer, ProtocolError> {
        Offer::connect_until(path, Instant::now() + timeout)
    }

    /// Connects to the manager; the handshake up to the manager's answer ends by
    /// `deadline`.
    pub fn connect_until(path: &Path, deadline: Instant) -> Result<Offer, ProtocolError> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(ProtocolError::io("socket"))?;
        let offer = Offer { sock, deadline };
        // A full backlog makes connect wait, up to the send timeout.
        offer.arm(sockopt::SendTimeout)?;
        let addr = UnixAddr::new(path).map_err(ProtocolError::io("socket path"))?;
        connect(offer.sock.as_raw_fd(), &addr)
            .map_err(ProtocolError::io("connect"))
            .map_err(ProtocolError::timed_out)?;
        Ok(offer)
    }

    /// Sets a socket timeout to what is left until the deadline; `TimedOut` if nothing is.
    fn arm<O>(&self, opt: O) -> Result<(), ProtocolError>
    where
        O: nix::sys::socket::SetSockOpt<Val = TimeVal>,
    {
        arm(self.sock.as_fd(), opt, self.deadline)
    }

    /// Sends the job with its two descriptors and waits for the manager's answer.
    /// `Ok(())` means the manager holds the job and waits for [`Offer::go`].
    pub fn propose(
        &self,
        job: &Job,
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
    ) -> Result<(), ProtocolError> {
        let bytes = job.encode()?;
        let fds = [conn.as_raw_fd(), file.as_raw_fd()];
        self.arm(sockopt::SendTimeout)?;
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ProtocolError::io("sendmsg"))
        .map_err(ProtocolError::timed_out)?;
        self.arm(sockopt::ReceiveTimeout)?;
        match recv_reply(self.sock.as_fd(), MsgFlags::empty()).map_err(ProtocolError::timed_out)? {
            Reply::Accept => Ok(()),
            Reply::Refuse(reason) => Err(ProtocolError::Refused { reason }),
            Reply::Go | Reply::Drain | Reply::Hello => Err(ProtocolError::Kind { kind: KIND_GO }),
        }
    }

    /// The next handoff on a connection that carried one before (returned by
    /// [`Offer::go`]); the handshake up to the manager's answer ends by `deadline`.
    ///
    /// The manager may have closed it since (idle, restarted, draining): then `propose`
    /// fails with [`ProtocolError::Closed`] or an I/O error before anything was accepted
    /// ([`ProtocolError::is_stale_connection`]), and a fresh connection may be tried.
    pub fn resume(sock: OwnedFd, deadline: Instant) -> Offer {
        Offer { sock, deadline }
    }

    /// Tells the manager to start writing. Never waits: the socket's send buffer is empty
    /// at this point. An error means the manager did not get the go (it went away, or its
    /// handshake limit ended the handshake first). On success the connection is returned
    /// for the next handoff ([`Offer::resume`]).
    pub fn go(self) -> Result<OwnedFd, ProtocolError> {
        let bytes = Reply::Go.encode();
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(ProtocolError::io("send"))?;
        Ok(self.sock)
    }
}

/// Sets a socket timeout on `sock` to what is left until `deadline`; `TimedOut` if nothing
/// is.
fn arm<O>(sock: BorrowedFd<'_>, opt: O, deadline: Instant) -> Result<(), ProtocolError>
where
    O: nix::sys::socket::SetSockOpt<Val = TimeVal>,
{
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProtocolError::TimedOut);
    }
    // A zero timeval would mean "wait forever": at least one microsecond.
    let tv = TimeVal::new(
        i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        i64::from(left.subsec_micros().max(1)),
    );
    setsockopt(&sock, opt, &tv).map_err(ProtocolError::io("setsockopt"))
}

/// The worker's connection for one-way handoffs, kept between requests.
///
/// ```text
/// let channel = Channel::open(path, deadline)?;  // hello answered: one-way handoffs go
/// // ... make the worker's copy of the connection harmless ...
/// channel.hand_off_until(&job_bytes, conn, file, deadline)?;  // Ok: the manager owns it
/// ```
///
/// Opening waits for the manager's answer to the hello (bounded by the deadline). A
/// handoff reads nothing; it waits only for room in a full queue, and only until the
/// deadline ([`Channel::hand_off_until`]; [`Channel::hand_off`] never waits).
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
}

impl Channel {
    /// Connects and says hello; `Ok` once the manager has accepted this peer for one-way
    /// handoffs. Everything ends by `deadline`.
    pub fn open(path: &Path, deadline: Instant) -> Result<Channel, ProtocolError> {
        let offer = Offer::connect_until(path, deadline)?;
        offer.arm(sockopt::SendTimeout)?;
        send_reply(offer.sock.as_fd(), &Reply::Hello).map_err(ProtocolError::timed_out)?;
        offer.arm(sockopt::ReceiveTimeout)?;
        match recv_reply(offer.sock.as_fd(), MsgFlags::empty()).map_err(ProtocolError::timed_out)? {
            Reply::Accept => Ok(Channel { sock: offer.sock }),
            Reply::Refuse(reason) => Err(ProtocolError::Refused { reason }),
            Reply::Go | Reply::Drain | Reply::Hello => Err(ProtocolError::Kind { kind: KIND_GO }),
        }
    }

    /// A connection that carried a hello before (kept by the worker between requests).
    pub fn resume(sock: OwnedFd) -> Channel {
        Channel { sock }
    }

    /// The connection, to keep for the next handoff.
    pub fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// Hands the request over in one non-blocking send: `Ok` means the kernel queued the
    /// job with both descriptors, and the manager owns the request. Any error means
    /// nothing was handed over: [`ProtocolError::WouldBlock`] when the manager has fallen
    /// behind (the socket's send buffer holds as many queued handoffs as it can), a stale
    /// connection ([`ProtocolError::is_stale_connection`]) when the manager closed it.
    /// `job` is a message from [`Job::encode_one_way`].
    pub fn hand_off(
        &self,
        job: &[u8],
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
    ) -> Result<(), ProtocolError> {
        self.send(job, conn, file, MsgFlags::MSG_DONTWAIT)
    }

    /// [`Channel::hand_off`], but when the manager's queue on this connection is full it
    /// waits for room until `deadline` (a blocking send under a send timeout) instead of
    /// giving up at once. A manager that falls behind for a moment (a burst of handoffs on a
    /// busy machine) frees room within milliseconds, while a worker that gives up serves the
    /// whole download itself, for as long as its client takes. [`ProtocolError::WouldBlock`]
    /// if the deadline passed with the queue still full; nothing was handed over then.
    pub fn hand_off_until(
        &self,
        job: &[u8],
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), ProtocolError> {
        match self.hand_off(job, conn, file) {
            Err(ProtocolError::WouldBlock) => {}
            done => return done,
        }
        match arm(self.sock.as_fd(), sockopt::SendTimeout, deadline) {
            Ok(()) => self.send(job, conn, file, MsgFlags::empty()),
            Err(ProtocolError::TimedOut) => Err(ProtocolError::WouldBlock),
            Err(e) => Err(e),
        }
    }

    fn send(
        &self,
        job: &[u8],
        conn: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        flags: MsgFlags,
    ) -> Result<(), ProtocolError> {
        let fds = [conn.as_raw_fd(), file.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(job)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | flags,
            None,
        )
        .map_err(ProtocolError::io("sendmsg"))?;
        // A SEQPACKET send is all or nothing; anything else is not a handoff.
        if sent != job.len() {
            return Err(ProtocolError::Truncated { len: sent });
        }
        Ok(())
    }
}
