//! Validators and conditional requests (RFC 9110 §8.8, §13).
//!
//! Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since` in
//! the order of RFC 9110 §13.2.2, and `If-Range` (§13.1.5) for the range step. Dates are
//! compared at one-second resolution, the resolution of an HTTP-date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The validators of the representation being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The entity-tag as sent in `ETag`, quotes included (`"…"` or `W/"…"`).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// The conditional request header fields, raw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub if_unmodified_since: Option<String>,
    pub if_range: Option<String>,
}

/// Result of the preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the representation (ranges may still apply).
    Proceed,
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// A strong entity-tag derived from the file: inode, size and modification time in
/// nanoseconds. The inode is part of it so that a file replaced by another one with the
/// same size and timestamp (deploy tools that preserve mtimes, `rsync -t`, restores) gets a
/// new tag and caches do not keep serving the old bytes. The price: the same file on two
/// hosts has two tags, so a load-balanced pool revalidates more often.
pub fn file_etag(inode: u64, size: u64, modified: Option<SystemTime>) -> String {
    let nanos = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{inode:x}-{size:x}-{nanos:x}\"")
}

/// One entity-tag of a list: (weak, opaque-tag including quotes).
fn parse_tags(value: &str) -> Vec<(bool, &str)> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        if !rest.starts_with('"') {
            // Not an entity-tag: skip to the next list member.
            match rest.find(',') {
                Some(i) => {
                    rest = &rest[i..];
                    continue;
                }
                None => break,
            }
        }
        match rest[1..].find('"') {
            Some(end) => {
                tags.push((weak, &rest[..end + 2]));
                rest = &rest[end + 2..];
            }
            None => break,
        }
    }
    tags
}

fn split_tag(tag: &str) -> (bool, &str) {
    match tag.strip_prefix("W/") {
        Some(t) => (true, t),
        None => (false, tag),
    }
}

/// Strong comparison (§8.8.3.2): both strong and identical.
pub fn strong_match(ours: &str, theirs_weak: bool, theirs: &str) -> bool {
    let (weak, opaque) = split_tag(ours);
    !weak && !theirs_weak && opaque == theirs
}

/// Weak comparison (§8.8.3.2): identical opaque tags, weakness ignored.
pub fn weak_match(ours: &str, theirs: &str) -> bool {
    split_tag(ours).1 == theirs
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn parse_date(value: &str) -> Option<u64> {
    httpdate::parse_http_date(value.trim())
        .ok()
        .map(whole_seconds)
}

/// Evaluates the preconditions in RFC 9110 §13.2.2 order. `safe` is true for GET and HEAD.
pub fn evaluate(v: &Validators, c: &Conditions, safe: bool) -> Verdict {
    // Step 1: If-Match (§13.1.1).
    if let Some(im) = &c.if_match {
        let ok = im.trim() == "*"
            || v.etag.as_deref().is_some_and(|ours| {
                parse_tags(im)
                    .iter()
                    .any(|(weak, t)| strong_match(ours, *weak, t))
            });
        if !ok {
            return Verdict::Failed;
        }
    } else if let (Some(ius), Some(lm)) = (&c.if_unmodified_since, v.last_modified) {
        // Step 2: If-Unmodified-Since (§13.1.4), only without If-Match; an invalid date
        // is ignored.
        if let Some(date) = parse_date(ius) {
            if whole_seconds(lm) > date {
                return Verdict::Failed;
            }
        }
    }
    // Step 3: If-None-Match (§13.1.2).
    if let Some(inm) = &c.if_none_match {
        let matched = inm.trim() == "*"
            || v.etag
                .as_deref()
                .is_some_and(|ours| parse_tags(inm).iter().any(|(_, t)| weak_match(ours, t)));
        if matched {
            return if safe {
                Verdict::NotModified
            } else {
                Verdict::Failed
            };
        }
    } else if let (Some(ims), Some(lm), true) = (&c.if_modified_since, v.last_modified, safe) {
        // Step 4: If-Modified-Since (§13.1.3), only for GET/HEAD without If-None-Match.
        if let Some(date) = parse_date(ims) {
            if whole_seconds(lm) <= date {
                return Verdict::NotModified;
            }
        }
    }
    Verdict::Proceed
}

/// Whether an `If-Range` value (§13.1.5) still designates the current representation: an
/// entity-tag that strongly matches, or an HTTP-date equal to `Last-Modified`.
pub fn if_range_holds(v: &Validators, value: &str) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let tags = parse_tags(value);
        return tags.len() == 1
            && v.etag
                .as_deref()
                .is_some_and(|ours| strong_match(ours, tags[0].0, tags[0].1));
    }
    match (parse_date(value), v.last_modified) {
        (Some(date), Some(lm)) => whole_seconds(lm) == date,
        _ => false,
    }
}

/// Seconds-precision copy of a time, as `Last-Modified` carries it.
pub fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(whole_seconds(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const LM_STR: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const BEFORE: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
    const AFTER: &str = "Sun, 06 Nov 1994 08:49:38 GMT";

    fn v() -> Validators {
        Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some(UNIX_EPOCH + Duration::from_millis(LM * 1000 + 400)),
        }
    }

    fn c(f: impl FnOnce(&mut Conditions)) -> Conditions {
        let mut c = Conditions::default();
        f(&mut c);
        c
    }

    #[test]
    fn if_match_uses_strong_comparison() {
        // RFC 9110 §13.1.1
        let ok = c(|c| c.if_match = Some("\"x\", \"abc\"".into()));
        assert_eq!(evaluate(&v(), &ok, true), Verdict::Proceed);
        let weak = c(|c| c.if_match = Some("W/\"abc\"".into()));
        assert_eq!(evaluate(&v(), &weak, true), Verdict::Failed);
        let star = c(|c| c.if_match = Some("*".into()));
        assert_eq!(evaluate(&v(), &star, true), Verdict::Proceed);
        let other = c(|c| c.if_match = Some("\"zzz\"".into()));
        assert_eq!(evaluate(&v(), &other, true), Verdict::Failed);
    }

    #[test]
    fn if_unmodified_since_fails_only_when_modified_later() {
        // RFC 9110 §13.1.4
        let same = c(|c| c.if_unmodified_since = Some(LM_STR.into()));
        assert_eq!(evaluate(&v(), &same, true), Verdict::Proceed);
        let before = c(|c| c.if_unmodified_since = Some(BEFORE.into()));
        assert_eq!(evaluate(&v(), &before, true), Verdict::Failed);
        let junk = c(|c| c.if_unmodified_since = Some("yesterday".into()));
        assert_eq!(evaluate(&v(), &junk, true), Verdict::Proceed);
        // Ignored when If-Match is present (§13.2.2 step 2).
        let both = c(|c| {
            c.if_match = Some("\"abc\"".into());
            c.if_unmodified_since = Some(BEFORE.into());
        });
        assert_eq!(evaluate(&v(), &both, true), Verdict::Proceed);
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        // RFC 9110 §13.1.2
        for value in ["\"abc\"", "W/\"abc\"", "\"x\" , W/\"abc\"", "*"] {
            let cond = c(|c| c.if_none_match = Some(value.into()));
            assert_eq!(evaluate(&v(), &cond, true), Verdict::NotModified, "{value}");
            assert_eq!(evaluate(&v(), &cond, false), Verdict::Failed, "{value}");
        }
        let other = c(|c| c.if_none_match = Some("\"x\"".into()));
        assert_eq!(evaluate(&v(), &other, true), Verdict::Proceed);
    }

    #[test]
    fn if_modified_since_is_ignored_with_if_none_match_or_unsafe_methods() {
        // RFC 9110 §13.1.3
        let same = c(|c| c.if_modified_since = Some(LM_STR.into()));
        assert_eq!(evaluate(&v(), &same, true), Verdict::NotModified);
        let after = c(|c| c.if_modified_since = Some(AFTER.into()));
        assert_eq!(evaluate(&v(), &after, true), Verdict::NotModified);
        let before = c(|c| c.if_modified_since = Some(BEFORE.into()));
        assert_eq!(evaluate(&v(), &before, true), Verdict::Proceed);
        assert_eq!(evaluate(&v(), &same, false), Verdict::Proceed);
        let with_inm = c(|c| {
            c.if_modified_since = Some(LM_STR.into());
            c.if_none_match = Some("\"other\"".into());
        });
        assert_eq!(evaluate(&v(), &with_inm, true), Verdict::Proceed);
    }

    #[test]
    fn if_range_needs_an_exact_strong_tag_or_date() {
        // RFC 9110 §13.1.5
        assert!(if_range_holds(&v(), "\"abc\""));
        assert!(!if_range_holds(&v(), "W/\"abc\""));
        assert!(!if_range_holds(&v(), "\"abd\""));
        assert!(if_range_holds(&v(), LM_STR));
        assert!(!if_range_holds(&v(), AFTER));
        assert!(!if_range_holds(&v(), "garbage"));
    }

    #[test]
    fn file_etag_changes_with_inode_size_and_time() {
        let t = Some(UNIX_EPOCH + Duration::from_secs(LM));
        let base = file_etag(1, 2, t);
        assert!(base.starts_with('"') && base.ends_with('"'));
        assert_ne!(base, file_etag(9, 2, t));
        assert_ne!(base, file_etag(1, 3, t));
        assert_ne!(
            base,
            file_etag(
                1,
                2,
                Some(UNIX_EPOCH + Duration::from_nanos(LM * 1_000_000_000 + 1))
            )
        );
    }
}
