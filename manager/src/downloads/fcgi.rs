//! FastCGI record framing for the responses the manager writes behind a web server: the
//! record headers, and [`Framer`], which decides how a body is cut into records.
//!
//! php-fpm has already read the request's `BEGIN_REQUEST` and `PARAMS`; the manager only
//! writes `STDOUT` records (the CGI head, then the body) and one `END_REQUEST`, and discards
//! whatever `STDIN` the web server still sends (see [`crate::downloads::download`]). What nginx needs
//! from these records, and why, is in docs/internals.md ("FastCGI behind nginx").

/// Protocol version 1 (the only one).
const VERSION: u8 = 1;
const TYPE_END_REQUEST: u8 = 3;
const TYPE_STDOUT: u8 = 6;
const TYPE_STDERR: u8 = 7;
/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Body bytes per `STDOUT` record: the largest multiple of 8 that fits the 16-bit length,
/// so that no record needs padding.
pub const MAX_RECORD_BODY: usize = 65_528;

/// The 8-byte header of a `STDOUT` record carrying `len` content bytes (no padding).
pub fn stdout_header(request_id: u16, len: u16) -> [u8; HEADER_LEN] {
    header(TYPE_STDOUT, request_id, len)
}

fn header(kind: u8, request_id: u16, len: u16) -> [u8; HEADER_LEN] {
    let id = request_id.to_be_bytes();
    let l = len.to_be_bytes();
    [VERSION, kind, id[0], id[1], l[0], l[1], 0, 0]
}

/// Appends `data` as one or more `STDOUT` records.
pub fn push_stdout(out: &mut Vec<u8>, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_RECORD_BODY) {
        // `chunks` yields at most MAX_RECORD_BODY bytes, which fits in a u16.
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&stdout_header(request_id, len));
        out.extend_from_slice(chunk);
    }
}

/// Appends the end of a response: an empty `STDOUT` record (end of stream) and
/// `END_REQUEST` with app status 0 and `FCGI_REQUEST_COMPLETE`.
///
/// `keep_conn`: the web server asked to keep the connection (`FCGI_KEEP_CONN`), which the
/// manager closes after the response all the same. An empty `STDERR` record then follows
/// `END_REQUEST`, in the same send: nginx keeps an upstream connection for its next request
/// only if its read ends exactly at the end of `END_REQUEST`, and drops it when more bytes
/// follow. Without it nginx could take the connection from its pool for the next request
/// before it read the manager's half-close, and that request would meet an end-of-file (a
/// retry for a GET, a 502 for a POST).
pub fn push_end(out: &mut Vec<u8>, request_id: u16, keep_conn: bool) {
    out.extend_from_slice(&stdout_header(request_id, 0));
    out.extend_from_slice(&header(TYPE_END_REQUEST, request_id, 8));
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    if keep_conn {
        out.extend_from_slice(&header(TYPE_STDERR, request_id, 0));
    }
}

/// What [`Framer::next`] asks of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Queue at most this many body bytes (the rest of the current record), then report
    /// how many with [`Framer::consumed`].
    Content(u64),
    /// The header of a full record ([`MAX_RECORD_BODY`] bytes) was appended to the output;
    /// its content follows.
    Header,
    /// The rest of the body, this many bytes (1 to [`MAX_RECORD_BODY`]), is the last
    /// record: gather them in memory and pass them to [`Framer::finish`], so that the last
    /// record and the end records leave in one send.
    Last(u64),
    /// The body was empty: the end records were appended to the output.
    End,
    /// Everything is framed.
    Done,
}

/// Cuts a body of known length into `STDOUT` records for one request, the way nginx needs
/// it (docs/internals.md, "FastCGI behind nginx"): full records of [`MAX_RECORD_BODY`]
/// bytes (no padding), each header written before its content (which the caller sends
/// with `sendfile`), and the last data record, the empty `STDOUT` and `END_REQUEST`
/// appended together by [`Framer::finish`]. It writes only headers and in-memory bytes
/// into the output buffer it is given; the content of full records is the caller's.
#[derive(Debug, Clone)]
pub struct Framer {
    request_id: u16,
    /// The web server asked to keep the connection: see [`push_end`].
    keep_conn: bool,
    /// Body bytes not yet given a record.
    unframed: u64,
    /// Content bytes of the current full record not yet queued by the caller.
    record_left: u64,
    /// The end records have been appended.
    ended: bool,
}

impl Framer {
    /// A framer for a body of `body_len` bytes; `keep_conn` as for [`push_end`].
    pub fn new(request_id: u16, body_len: u64, keep_conn: bool) -> Framer {
        Framer {
            request_id,
            keep_conn,
            unframed: body_len,
            record_left: 0,
            ended: false,
        }
    }

    pub fn request_id(&self) -> u16 {
        self.request_id
    }

    /// Whether the end records have been appended (nothing more will follow).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next step; appends a record header or the end records to `out` when that is it.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Next {
        if self.record_left > 0 {
            return Next::Content(self.record_left);
        }
        if self.ended {
            return Next::Done;
        }
        if self.unframed == 0 {
            push_end(out, self.request_id, self.keep_conn);
            self.ended = true;
            return Next::End;
        }
        if self.unframed <= MAX_RECORD_BODY as u64 {
            return Next::Last(self.unframed);
        }
        let len = MAX_RECORD_BODY as u16;
        out.extend_from_slice(&stdout_header(self.request_id, len));
        self.record_left = u64::from(len);
        self.unframed -= u64::from(len);
        Next::Header
    }

    /// The caller queued `n` content bytes of the current record (at most what
    /// [`Next::Content`] said).
    pub fn consumed(&mut self, n: u64) {
        self.record_left = self.record_left.saturating_sub(n);
    }

    /// Appends the last record with `last` (the bytes [`Next::Last`] asked for), the empty
    /// `STDOUT` record and `END_REQUEST`, in one stretch of `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>, last: &[u8]) {
        push_stdout(out, self.request_id, last);
        push_end(out, self.request_id, self.keep_conn);
        self.unframed = 0;
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a body of `len` bytes (byte i is `i % 251`) as the download does: full
    /// records' content in chunks of `chunk` bytes, the last record from memory.
    fn frame(request_id: u16, len: u64, chunk: u64, keep_conn: bool) -> (Vec<u8>, usize) {
        let body = |from: u64, n: u64| (from..from + n).map(|i| (i % 251) as u8);
        let mut framer = Framer::new(request_id, len, keep_conn);
        let mut out = Vec::new();
        let mut pos = 0u64;
        let mut end_at = usize::MAX;
        loop {
            match framer.next(&mut out) {
                Next::Content(left) => {
                    let n = left.min(chunk);
                    out.extend(body(pos, n));
                    pos += n;
                    framer.consumed(n);
                }
                Next::Header => {}
                Next::Last(n) => {
                    assert_eq!(pos + n, len, "the last record is the rest of the body");
                    assert!(n >= 1 && n <= MAX_RECORD_BODY as u64);
                    end_at = out.len();
                    let last: Vec<u8> = body(pos, n).collect();
                    framer.finish(&mut out, &last);
                    pos += n;
                }
                Next::End => {
                    assert_eq!(len, 0);
                    end_at = out.len() - end_len(keep_conn);
                }
                Next::Done => break,
            }
        }
        assert!(framer.ended());
        (out, end_at)
    }

    /// Bytes of the end records: the empty `STDOUT`, `END_REQUEST`, and the empty `STDERR`
    /// after it when the web server asked to keep the connection.
    fn end_len(keep_conn: bool) -> usize {
        2 * HEADER_LEN + 8 + if keep_conn { HEADER_LEN } else { 0 }
    }

    /// Parses records: (type, request id, content), checking that none is padded.
    fn records(mut b: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0], VERSION);
            let len = usize::from(u16::from_be_bytes([b[4], b[5]]));
            assert_eq!(b[6], 0, "no padding");
            v.push((
                b[1],
                u16::from_be_bytes([b[2], b[3]]),
                b[8..8 + len].to_vec(),
            ));
            b = &b[8 + len..];
        }
        v
    }

    #[test]
    fn bodies_are_cut_into_aligned_records_and_end_in_one_stretch() {
        let max = MAX_RECORD_BODY as u64;
        for len in [
            0,
            1,
            7,
            max - 1,
            max,
            max + 1,
            2 * max,
            3 * max + 5,
            200_000,
        ] {
            for (chunk, keep_conn) in [(1_000, false), (max, false), (max, true)] {
                let (out, end_at) = frame(0x0102, len, chunk, keep_conn);
                let recs = records(&out);
                let ends = if keep_conn { 3 } else { 2 };
                let (data, tail) = recs.split_at(recs.len() - ends);
                // Every record is for this request; content never exceeds 65,535 bytes,
                // and all but the last data record carry exactly 65,528 (a multiple of 8).
                for (i, (kind, id, content)) in data.iter().enumerate() {
                    assert_eq!((*kind, *id), (TYPE_STDOUT, 0x0102));
                    assert!(content.len() <= usize::from(u16::MAX));
                    if i + 1 < data.len() {
                        assert_eq!(content.len(), MAX_RECORD_BODY, "len {len}");
                    } else {
                        assert!(!content.is_empty());
                    }
                }
                let body: Vec<u8> = data.iter().flat_map(|r| r.2.clone()).collect();
                let want: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                assert_eq!(body, want, "len {len}");
                assert_eq!(tail[0], (TYPE_STDOUT, 0x0102, vec![]));
                assert_eq!(tail[1], (TYPE_END_REQUEST, 0x0102, vec![0; 8]));
                if keep_conn {
                    assert_eq!(tail[2], (TYPE_STDERR, 0x0102, vec![]));
                }
                // The last data record and the end records were appended by one call.
                let last = data.last().map_or(0, |r| HEADER_LEN + r.2.len());
                let expected = if len == 0 { 0 } else { last };
                assert_eq!(out.len() - end_at, expected + end_len(keep_conn));
            }
        }
    }

    #[test]
    fn a_full_record_waits_for_its_content() {
        let mut framer = Framer::new(1, 2 * MAX_RECORD_BODY as u64, false);
        let mut out = Vec::new();
        assert_eq!(framer.next(&mut out), Next::Header);
        assert_eq!(out, [1, 6, 0, 1, 0xff, 0xf8, 0, 0]);
        assert_eq!(framer.next(&mut out), Next::Content(MAX_RECORD_BODY as u64));
        framer.consumed(100);
        assert_eq!(
            framer.next(&mut out),
            Next::Content(MAX_RECORD_BODY as u64 - 100)
        );
        framer.consumed(MAX_RECORD_BODY as u64 - 100);
        assert_eq!(framer.next(&mut out), Next::Last(MAX_RECORD_BODY as u64));
        assert_eq!(
            out.len(),
            HEADER_LEN,
            "nothing appended before the last record"
        );
        assert!(!framer.ended());
    }

    #[test]
    fn records_split_at_the_aligned_maximum() {
        let data = vec![7u8; MAX_RECORD_BODY + 3];
        let mut out = Vec::new();
        push_stdout(&mut out, 1, &data);
        assert_eq!(&out[..8], &[1, 6, 0, 1, 0xff, 0xf8, 0, 0]);
        let second = HEADER_LEN + MAX_RECORD_BODY;
        assert_eq!(&out[second..second + 8], &[1, 6, 0, 1, 0, 3, 0, 0]);
        assert_eq!(out.len(), 2 * HEADER_LEN + data.len());
    }

    #[test]
    fn end_is_empty_stdout_then_end_request() {
        let mut out = Vec::new();
        push_end(&mut out, 0x0102, false);
        let end = [
            1, 6, 1, 2, 0, 0, 0, 0, 1, 3, 1, 2, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(out, end);
        // A connection the web server wants to keep: bytes follow END_REQUEST, so that
        // nginx does not pool the connection the manager is about to close.
        let mut out = Vec::new();
        push_end(&mut out, 0x0102, true);
        assert_eq!(out[..end.len()], end);
        assert_eq!(out[end.len()..], [1, 7, 1, 2, 0, 0, 0, 0]);
    }
}
