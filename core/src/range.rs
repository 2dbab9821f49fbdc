//! `Range: bytes=...` parsing and resolution against a file size (RFC 9110 §14.1-14.2).
//!
//! A header that does not parse is ignored (the full representation is sent), as RFC 9110
//! §14.2 allows; a header that parses but selects no byte of the file is unsatisfiable
//! (416). Like nginx, ranges are kept in request order and not merged; a set whose total
//! exceeds the file (heavy overlap, a way to amplify a response) or that has more than
//! [`MAX_RANGES`] members is ignored and the full file is sent.

/// Most ranges served as `multipart/byteranges`; more are ignored (full 200).
pub const MAX_RANGES: usize = 32;

/// One `range-spec` as written by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (last = None).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix { len: u64 },
}

/// A byte range of the file: `start` and `len` bytes (never empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

impl ByteRange {
    /// The inclusive last byte, as `Content-Range` writes it.
    pub fn last(&self) -> u64 {
        self.start + self.len - 1
    }
}

/// What a `Range` header means for a file of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Ignore the header: send the whole file with 200.
    Ignore,
    /// 416: no range selects a byte of the file.
    Unsatisfiable,
    /// 206 with these ranges (one, or several as multipart).
    Ranges(Vec<ByteRange>),
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a `Range` header value; `None` if it is not a valid `bytes` range set.
fn parse(value: &str) -> Option<Vec<Spec>> {
    // `range-unit "=" range-set` (§14.2): no whitespace around the "=".
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // RFC 9110 §5.6.1: empty list elements are allowed and ignored.
    for part in set.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        let spec = if first.is_empty() {
            Spec::Suffix {
                len: parse_u64(last)?,
            }
        } else {
            let first = parse_u64(first)?;
            let last = if last.is_empty() {
                None
            } else {
                let l = parse_u64(last)?;
                if l < first {
                    return None;
                }
                Some(l)
            };
            Spec::From { first, last }
        };
        specs.push(spec);
    }
    if specs.is_empty() {
        return None;
    }
    Some(specs)
}

/// Resolves a `Range` header value against a file of `size` bytes.
pub fn resolve(value: &str, size: u64) -> Resolved {
    let Some(specs) = parse(value) else {
        return Resolved::Ignore;
    };
    if specs.len() > MAX_RANGES {
        return Resolved::Ignore;
    }
    let mut ranges = Vec::with_capacity(specs.len());
    for spec in specs {
        let range = match spec {
            Spec::From { first, last } if first < size => {
                let last = last.map_or(size - 1, |l| l.min(size - 1));
                Some(ByteRange {
                    start: first,
                    len: last - first + 1,
                })
            }
            Spec::From { .. } => None,
            Spec::Suffix { len } if len > 0 && size > 0 => {
                let len = len.min(size);
                Some(ByteRange {
                    start: size - len,
                    len,
                })
            }
            Spec::Suffix { .. } => None,
        };
        ranges.extend(range);
    }
    if ranges.is_empty() {
        return Resolved::Unsatisfiable;
    }
    let total = ranges.iter().fold(0u64, |a, r| a.saturating_add(r.len));
    if ranges.len() > 1 && total > size {
        return Resolved::Ignore;
    }
    Resolved::Ranges(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> ByteRange {
        ByteRange { start, len }
    }

    #[test]
    fn forms_of_a_single_range() {
        // RFC 9110 §14.1.2: first-last, first-, -suffix.
        assert_eq!(
            resolve("bytes=0-499", 1000),
            Resolved::Ranges(vec![r(0, 500)])
        );
        assert_eq!(
            resolve("bytes=500-", 1000),
            Resolved::Ranges(vec![r(500, 500)])
        );
        assert_eq!(
            resolve("bytes=-200", 1000),
            Resolved::Ranges(vec![r(800, 200)])
        );
        // A last position beyond the end is clamped (§14.1.2).
        assert_eq!(
            resolve("bytes=900-5000", 1000),
            Resolved::Ranges(vec![r(900, 100)])
        );
        // A suffix longer than the file selects the whole file (§14.1.2).
        assert_eq!(
            resolve("bytes=-2000", 1000),
            Resolved::Ranges(vec![r(0, 1000)])
        );
    }

    #[test]
    fn unit_and_whitespace_are_lenient_where_the_grammar_is() {
        // The unit is case-insensitive (§14.1); "=" takes no whitespace (§14.2).
        assert_eq!(resolve("Bytes=0-0", 10), Resolved::Ranges(vec![r(0, 1)]));
        assert_eq!(resolve("bytes = 0-0", 10), Resolved::Ignore);
        assert_eq!(
            resolve("bytes=0-0, ,-1", 10),
            Resolved::Ranges(vec![r(0, 1), r(9, 1)])
        );
    }

    #[test]
    fn invalid_syntax_is_ignored() {
        // RFC 9110 §14.2: a server MAY ignore a Range it cannot parse.
        for v in [
            "bytes=abc",
            "bytes=5-1",
            "bytes=",
            "bytes=--1",
            "items=0-1",
            "bytes 0-1",
            "bytes=0x1-2",
            "bytes=+1-2",
        ] {
            assert_eq!(resolve(v, 1000), Resolved::Ignore, "{v}");
        }
    }

    #[test]
    fn unsatisfiable_sets_give_416() {
        // RFC 9110 §15.5.17: no range overlaps the representation.
        assert_eq!(resolve("bytes=1000-", 1000), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=-0", 1000), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=0-", 0), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=-5", 0), Resolved::Unsatisfiable);
        // One satisfiable member is enough (§14.1.1).
        assert_eq!(
            resolve("bytes=2000-3000,0-1", 1000),
            Resolved::Ranges(vec![r(0, 2)])
        );
    }

    #[test]
    fn amplifying_or_excessive_sets_are_ignored() {
        // RFC 9110 §14.2 / §17.15: a server may ignore overlapping or too many ranges.
        assert_eq!(resolve("bytes=0-999,0-999", 1000), Resolved::Ignore);
        let many: Vec<String> = (0..=MAX_RANGES).map(|i| format!("{i}-{i}")).collect();
        assert_eq!(
            resolve(&format!("bytes={}", many.join(",")), 1000),
            Resolved::Ignore
        );
        // Small overlaps within the file size are served as asked, in request order.
        assert_eq!(
            resolve("bytes=5-9,0-5", 1000),
            Resolved::Ranges(vec![r(5, 5), r(0, 6)])
        );
    }
}
