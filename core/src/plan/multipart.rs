//! The `multipart/byteranges` body of a response with several ranges, and its boundary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::range::ByteRange;

use super::Piece;

/// A boundary that cannot be predicted from outside (so file content cannot be crafted to
/// contain it on purpose) and differs between responses.
pub(super) fn new_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32);
    // xorshift64* scrambling of the seed.
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    format!("{:016x}", x.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// The `multipart/byteranges` body (RFC 9110 §14.6): each part's head as literal bytes,
/// each part's content from the file.
pub(super) fn multipart(
    ranges: &[ByteRange],
    content_type: &[u8],
    size: u64,
    boundary: &str,
) -> Vec<Piece> {
    let mut body = Vec::with_capacity(ranges.len() * 2 + 1);
    for r in ranges {
        let mut head = format!("\r\n--{boundary}\r\nContent-Type: ").into_bytes();
        head.extend_from_slice(content_type);
        head.extend_from_slice(
            format!(
                "\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                r.start,
                r.last()
            )
            .as_bytes(),
        );
        body.push(Piece::Bytes(head));
        body.push(Piece::File {
            offset: r.start,
            length: r.len,
        });
    }
    body.push(Piece::Bytes(format!("\r\n--{boundary}--\r\n").into_bytes()));
    body
}
