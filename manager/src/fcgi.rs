//! FastCGI record framing for the responses the manager writes behind a web server.
//!
//! php-fpm has already read the request's `BEGIN_REQUEST` and `PARAMS`; the manager only
//! writes `STDOUT` records (the CGI head, then the body) and one `END_REQUEST`, and discards
//! whatever `STDIN` the web server still sends (see [`crate::download`]). What nginx needs
//! from these records, and why, is in docs/internals.md ("FastCGI behind nginx").

/// Protocol version 1 (the only one).
const VERSION: u8 = 1;
const TYPE_END_REQUEST: u8 = 3;
const TYPE_STDOUT: u8 = 6;
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
pub fn push_end(out: &mut Vec<u8>, request_id: u16) {
    out.extend_from_slice(&stdout_header(request_id, 0));
    out.extend_from_slice(&header(TYPE_END_REQUEST, request_id, 8));
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        push_end(&mut out, 0x0102);
        assert_eq!(
            out,
            [1, 6, 1, 2, 0, 0, 0, 0, 1, 3, 1, 2, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
