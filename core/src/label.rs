//! The application's own labels on a download: the `tag` option (its key for the download,
//! such as `order:17/user:5`) and the `rate_group` option (whose bandwidth it shares).
//!
//! Both are checked the same way on both sides of the handoff: 1 to [`MAX_LEN`] bytes of
//! printable ASCII (space to `~`). No control characters means a label can never break a
//! log line or a header, and ASCII means it is the same string in PHP, in JSON and in the
//! application's database, with no encoding question.

/// Longest label, in bytes.
pub const MAX_LEN: usize = 256;

/// Whether `bytes` is a valid label.
pub fn is_valid(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|&b| (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_up_to_256_bytes() {
        assert!(is_valid(b"order:17/user:5"));
        assert!(is_valid(b" ~"));
        assert!(is_valid(&[b'a'; MAX_LEN]));
        assert!(!is_valid(&[b'a'; MAX_LEN + 1]));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a\nb"));
        assert!(!is_valid(b"a\x7f"));
        assert!(!is_valid("ä".as_bytes()));
    }
}
