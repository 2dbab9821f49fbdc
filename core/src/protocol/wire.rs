//! The wire format: the message types, their layout (see the module above), encoding and
//! decoding with every length checked before anything is allocated, and sending and
//! receiving the short replies either side sends.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{sendmsg, MsgFlags};

use super::ProtocolError;
use crate::head::{Head, Header};
use crate::plan::Piece;

/// The protocol version this build speaks; a message with another version is refused.
pub const VERSION: u8 = 3;
/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
pub(super) const MAGIC: [u8; 2] = *b"HO";
pub(super) const KIND_JOB: u8 = 1;
pub(super) const KIND_ACCEPT: u8 = 2;
pub(super) const KIND_REFUSE: u8 = 3;
pub(super) const KIND_GO: u8 = 4;
pub(super) const KIND_DRAIN: u8 = 5;
pub(super) const KIND_HANDOFF: u8 = 6;
pub(super) const KIND_HELLO: u8 = 7;
pub(super) const FIXED_LEN: usize = 22;
/// The job's flags byte: the web server set `FCGI_KEEP_CONN` ([`Job::keep_conn`]).
const FLAG_KEEP_CONN: u8 = 1;

pub use crate::plan::Framing;

/// Why a worker served a request itself instead of handing it off (`handoff.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCause {
    /// No manager answered at the socket (not running, wrong path, no permission).
    Unreachable,
    /// The manager refused the job (at `--max-downloads`, shutting down, peer not allowed,
    /// invalid job).
    Refused,
    /// The handshake failed otherwise (timeout, the manager died before answering).
    Failed,
    /// The manager accepted but went away before the worker's go.
    GoneBeforeGo,
    /// The worker found no connection it could hand off (SAPI, offsets not validated).
    NoConnection,
}

impl FallbackCause {
    /// How many causes there are.
    pub const COUNT: usize = 5;

    /// Every cause, in wire (and array) order.
    pub const ALL: [FallbackCause; FallbackCause::COUNT] = [
        FallbackCause::Unreachable,
        FallbackCause::Refused,
        FallbackCause::Failed,
        FallbackCause::GoneBeforeGo,
        FallbackCause::NoConnection,
    ];

    /// The index of this cause in [`Fallbacks`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            FallbackCause::Unreachable => "unreachable",
            FallbackCause::Refused => "refused",
            FallbackCause::Failed => "failed",
            FallbackCause::GoneBeforeGo => "gone_before_go",
            FallbackCause::NoConnection => "no_connection",
        }
    }
}

/// Fallback counts per [`FallbackCause`], indexed by [`FallbackCause::index`].
pub type Fallbacks = [u32; FallbackCause::COUNT];

/// One download handed to the manager: what to write, and which bytes of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub framing: Framing,
    /// The FastCGI request id the records are for (0 for raw HTTP).
    pub request_id: u16,
    /// The web server asked php-fpm to keep the FastCGI connection for its next request
    /// (`FCGI_KEEP_CONN`, nginx's `fastcgi_keep_conn on`). The manager closes it after the
    /// response all the same, so it ends the response in a way that keeps the web server
    /// from putting the connection back into its pool.
    pub keep_conn: bool,
    pub head: Head,
    /// The body in order: file ranges and literal bytes (empty for HEAD).
    pub body: Vec<Piece>,
    /// Most bytes per second for this download (0: no limit of its own).
    pub rate: u64,
    /// Client address as the SAPI reported it, for the log.
    pub client: String,
    /// The file's name as the script gave it, for the log; never sent to the client.
    pub file_name: String,
    /// The worker's fallbacks since its last report, for the manager's metrics.
    pub fallbacks: Fallbacks,
    /// The application's key for this download (`tag` option; empty: none), carried into
    /// the access log, `/status` and completion records.
    pub tag: String,
    /// Downloads with the same non-empty group share one bucket of `rate` bytes/s.
    pub rate_group: String,
}

/// A manager's answer to a job or a hello, a worker's go-ahead or hello, or a new
/// manager's request that the old one hand over the socket path (`--takeover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accept,
    Refuse(String),
    Go,
    Drain,
    /// A worker's first message on a connection for one-way handoffs.
    Hello,
}

fn put_str(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), ProtocolError> {
    put_bytes(out, field, s.as_bytes())
}

fn put_bytes(out: &mut Vec<u8>, field: &'static str, b: &[u8]) -> Result<(), ProtocolError> {
    let len = u16::try_from(b.len()).map_err(|_| ProtocolError::FieldTooLong { field })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// A bounds-checked cursor over a received message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ProtocolError::Overrun { field })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u16(field)?);
        self.bytes(len, field)
    }

    fn str16(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        std::str::from_utf8(self.bytes16(field)?)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::Utf8 { field })
    }
}

pub(super) fn check_preamble(buf: &[u8]) -> Result<u8, ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::Truncated { len: buf.len() });
    }
    if buf[..2] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(ProtocolError::Version { version: buf[2] });
    }
    Ok(buf[3])
}

impl Job {
    /// Serialises the job for a confirmed handoff; fails if the head could split the
    /// response or a field is too long for the format.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        self.encode_as(KIND_JOB)
    }

    /// Serialises the job for a one-way handoff ([`super::Channel::hand_off_until`]).
    pub fn encode_one_way(&self) -> Result<Vec<u8>, ProtocolError> {
        self.encode_as(KIND_HANDOFF)
    }

    fn encode_as(&self, kind: u8) -> Result<Vec<u8>, ProtocolError> {
        self.head.validate()?;
        let pieces = u16::try_from(self.body.len()).map_err(|_| ProtocolError::FieldTooLong {
            field: "piece count",
        })?;
        let count =
            u16::try_from(self.head.headers.len()).map_err(|_| ProtocolError::FieldTooLong {
                field: "header count",
            })?;
        let framing = match self.framing {
            Framing::Http => 0u8,
            Framing::FastCgi => 1u8,
        };
        let flags = if self.keep_conn { FLAG_KEEP_CONN } else { 0 };
        let request_id = self.request_id;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind, framing, flags]);
        out.extend_from_slice(&request_id.to_be_bytes());
        out.extend_from_slice(&self.head.status.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&pieces.to_be_bytes());
        out.extend_from_slice(&self.rate.to_be_bytes());
        put_str(&mut out, "reason", &self.head.reason)?;
        for h in &self.head.headers {
            put_str(&mut out, "header name", &h.name)?;
            put_bytes(&mut out, "header value", &h.value)?;
        }
        for piece in &self.body {
            match piece {
                Piece::Bytes(b) => {
                    let len = u32::try_from(b.len())
                        .map_err(|_| ProtocolError::TooLarge { len: b.len() })?;
                    out.push(0);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(b);
                }
                Piece::File { offset, length } => {
                    if offset.checked_add(*length).is_none() {
                        return Err(ProtocolError::Range {
                            offset: *offset,
                            length: *length,
                        });
                    }
                    out.push(1);
                    out.extend_from_slice(&offset.to_be_bytes());
                    out.extend_from_slice(&length.to_be_bytes());
                }
            }
        }
        put_str(&mut out, "client", &self.client)?;
        put_str(&mut out, "file name", &self.file_name)?;
        for count in self.fallbacks {
            out.extend_from_slice(&count.to_be_bytes());
        }
        put_str(&mut out, "tag", &self.tag)?;
        put_str(&mut out, "rate group", &self.rate_group)?;
        if out.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge { len: out.len() });
        }
        Ok(out)
    }

    /// Parses and validates a job message (of either kind).
    pub fn decode(buf: &[u8]) -> Result<Job, ProtocolError> {
        if buf.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge { len: buf.len() });
        }
        let kind = check_preamble(buf)?;
        if kind != KIND_JOB && kind != KIND_HANDOFF {
            return Err(ProtocolError::Kind { kind });
        }
        if buf.len() < FIXED_LEN {
            return Err(ProtocolError::Truncated { len: buf.len() });
        }
        let mut r = Reader { buf, pos: 4 };
        let fixed = r.bytes(2, "framing")?;
        let (framing_byte, flags) = (fixed[0], fixed[1]);
        let request_id = r.u16("request id")?;
        let framing = framing_of(framing_byte).ok_or(ProtocolError::Framing {
            framing: framing_byte,
        })?;
        if flags & !FLAG_KEEP_CONN != 0 {
            return Err(ProtocolError::Flags { flags });
        }
        let status = r.u16("status")?;
        let count = r.u16("header count")?;
        let piece_count = r.u16("piece count")?;
        let rate = r.u64("rate")?;
        let reason = r.str16("reason")?;
        // Each header needs at least 4 length bytes, so `count` cannot make us allocate
        // more than the message could describe.
        let remaining = buf.len() - r.pos;
        if usize::from(count) * 4 > remaining {
            return Err(ProtocolError::Overrun { field: "headers" });
        }
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = r.str16("header name")?;
            let value = r.bytes16("header value")?.to_vec();
            headers.push(Header { name, value });
        }
        // Each piece takes at least 5 bytes: again no allocation beyond the message.
        if usize::from(piece_count) * 5 > buf.len() - r.pos {
            return Err(ProtocolError::Overrun { field: "pieces" });
        }
        let mut body = Vec::with_capacity(usize::from(piece_count));
        for _ in 0..piece_count {
            let kind = r.bytes(1, "piece kind")?[0];
            match kind {
                0 => {
                    let b = r.bytes(4, "piece length")?;
                    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    body.push(Piece::Bytes(r.bytes(len, "piece bytes")?.to_vec()));
                }
                1 => {
                    let offset = r.u64("piece offset")?;
                    let length = r.u64("piece length")?;
                    if offset.checked_add(length).is_none() {
                        return Err(ProtocolError::Range { offset, length });
                    }
                    body.push(Piece::File { offset, length });
                }
                kind => return Err(ProtocolError::PieceKind { kind }),
            }
        }
        let client = r.str16("client")?;
        let file_name = r.str16("file name")?;
        let mut fallbacks = Fallbacks::default();
        for count in &mut fallbacks {
            let b = r.bytes(4, "fallbacks")?;
            *count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        let tag = r.str16("tag")?;
        let rate_group = r.str16("rate group")?;
        if r.pos != buf.len() {
            return Err(ProtocolError::Trailing {
                extra: buf.len() - r.pos,
            });
        }
        let head = Head {
            status,
            reason,
            headers,
        };
        head.validate()?;
        Ok(Job {
            framing,
            request_id,
            keep_conn: keeps_conn(flags),
            head,
            body,
            rate,
            client,
            file_name,
            fallbacks,
            tag,
            rate_group,
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Reply::Accept => (KIND_ACCEPT, ""),
            Reply::Refuse(reason) => (KIND_REFUSE, reason.as_str()),
            Reply::Go => (KIND_GO, ""),
            Reply::Drain => (KIND_DRAIN, ""),
            Reply::Hello => (KIND_HELLO, ""),
        };
        let text = clip_reason(text);
        let mut out = Vec::with_capacity(4 + text.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, kind]);
        out.extend_from_slice(text.as_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Reply, ProtocolError> {
        match check_preamble(buf)? {
            KIND_ACCEPT if buf.len() == 4 => Ok(Reply::Accept),
            KIND_GO if buf.len() == 4 => Ok(Reply::Go),
            KIND_DRAIN if buf.len() == 4 => Ok(Reply::Drain),
            KIND_HELLO if buf.len() == 4 => Ok(Reply::Hello),
            KIND_REFUSE => Ok(Reply::Refuse(
                clip_reason(&String::from_utf8_lossy(&buf[4..])).to_owned(),
            )),
            KIND_ACCEPT | KIND_GO | KIND_DRAIN | KIND_HELLO => Err(ProtocolError::Trailing {
                extra: buf.len() - 4,
            }),
            kind => Err(ProtocolError::Kind { kind }),
        }
    }
}

/// A refusal reason is for logs: at most 1 KiB, cut at a character boundary.
pub(super) fn clip_reason(text: &str) -> &str {
    let mut end = text.len().min(1024);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The checks every received message must pass before its bytes are parsed.
pub(super) fn check_message(buf: &[u8], len: usize, flags: MsgFlags) -> Result<(), ProtocolError> {
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(ProtocolError::ControlTruncated);
    }
    if flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE || len > buf.len() {
        return Err(ProtocolError::MessageTruncated);
    }
    Ok(())
}

/// The framing, request id and keep-connection flag from a job's fixed part, if the
/// message has that much and names a known framing.
pub(super) fn fixed_framing(buf: &[u8]) -> Option<(Framing, u16, bool)> {
    if buf.len() < 8 {
        return None;
    }
    let framing = framing_of(buf[4])?;
    Some((
        framing,
        u16::from_be_bytes([buf[6], buf[7]]),
        keeps_conn(buf[5]),
    ))
}

/// The framing a job's framing byte names, if any (the one mapping both the full decode and
/// [`fixed_framing`] use).
fn framing_of(byte: u8) -> Option<Framing> {
    match byte {
        0 => Some(Framing::Http),
        1 => Some(Framing::FastCgi),
        _ => None,
    }
}

/// Whether a job's flags byte says the web server keeps the connection ([`Job::keep_conn`]).
fn keeps_conn(flags: u8) -> bool {
    flags & FLAG_KEEP_CONN != 0
}

/// Sends a reply (either direction). Never blocks longer than the socket's send timeout.
pub fn send_reply(sock: BorrowedFd<'_>, reply: &Reply) -> Result<(), ProtocolError> {
    let bytes = reply.encode();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(ProtocolError::io("send"))?;
    Ok(())
}

/// Reads one reply. `Err(Closed)` when the peer went away.
pub fn recv_reply(sock: BorrowedFd<'_>, flags: MsgFlags) -> Result<Reply, ProtocolError> {
    let mut buf = [0u8; 2048];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, flags)
        .map_err(ProtocolError::io("recv"))?;
    if n == 0 {
        return Err(ProtocolError::Closed);
    }
    Reply::decode(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::job;

    #[test]
    fn job_round_trips() {
        let j = job();
        assert_eq!(Job::decode(&j.encode().unwrap()).unwrap(), j);
        let mut h = j.clone();
        h.framing = Framing::Http;
        assert_eq!(Job::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = job().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(Job::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn bad_version_magic_kind_and_trailing_bytes_are_rejected() {
        let bytes = job().encode().unwrap();
        let mut b = bytes.clone();
        b[2] = 9;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Version { version: 9 })
        ));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(Job::decode(&b), Err(ProtocolError::BadMagic)));
        let mut b = bytes.clone();
        b[3] = KIND_GO;
        assert!(matches!(Job::decode(&b), Err(ProtocolError::Kind { .. })));
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Trailing { extra: 1 })
        ));
    }

    #[test]
    fn a_lying_header_count_does_not_allocate_or_pass() {
        let mut b = job().encode().unwrap();
        b[10] = 0xff;
        b[11] = 0xff;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Overrun { .. })
        ));
        let mut b = job().encode().unwrap();
        b[12] = 0xff;
        b[13] = 0xff;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Overrun { .. })
        ));
    }

    #[test]
    fn a_head_that_would_split_the_response_is_rejected_on_both_sides() {
        let mut j = job();
        j.head.headers.push(Header::new("X-A", "1\r\n\r\ninjected"));
        assert!(matches!(j.encode(), Err(ProtocolError::Head(_))));
    }

    #[test]
    fn one_way_jobs_round_trip_and_are_told_apart() {
        let j = job();
        let one_way = j.encode_one_way().unwrap();
        let confirmed = j.encode().unwrap();
        assert_eq!(Job::decode(&one_way).unwrap(), j);
        assert_ne!(one_way[3], confirmed[3]);
        assert_eq!(one_way[4..], confirmed[4..]);
        assert_eq!(fixed_framing(&one_way), Some((Framing::FastCgi, 1, true)));
        assert_eq!(fixed_framing(&one_way[..7]), None);
    }

    #[test]
    fn the_keep_connection_flag_round_trips_and_unknown_flags_are_rejected() {
        for keep_conn in [false, true] {
            let j = Job { keep_conn, ..job() };
            let bytes = j.encode_one_way().unwrap();
            assert_eq!(bytes[5], u8::from(keep_conn));
            assert_eq!(Job::decode(&bytes).unwrap(), j);
            assert_eq!(fixed_framing(&bytes).map(|f| f.2), Some(keep_conn));
        }
        let mut b = job().encode().unwrap();
        b[5] |= 0x80;
        assert!(matches!(
            Job::decode(&b),
            Err(ProtocolError::Flags { flags: 0x81 })
        ));
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Accept,
            Reply::Go,
            Reply::Drain,
            Reply::Hello,
            Reply::Refuse("busy".into()),
        ] {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
        assert!(Reply::decode(b"HO").is_err());
    }

    #[test]
    fn refusal_reasons_are_clipped_the_same_way_both_ways() {
        // Found by the decode_job fuzz target: a long or invalid UTF-8 reason must come
        // back from a round trip unchanged.
        let mut msg = vec![b'H', b'O', VERSION, KIND_REFUSE];
        msg.extend(std::iter::repeat_n(0xffu8, 600));
        let r = Reply::decode(&msg).unwrap();
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let long = Reply::Refuse("é".repeat(700));
        let once = Reply::decode(&long.encode()).unwrap();
        assert_eq!(Reply::decode(&once.encode()).unwrap(), once);
    }
}
