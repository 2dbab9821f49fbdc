//! The access log: one JSON object per line for every finished download, so that an
//! application can tell whether a download completed and how many bytes went out.
//!
//! Fields: `time` (RFC 3339, UTC), `client`, `file` (the name the script passed; never
//! sent to clients), `tag` (the script's `tag` option, or null), `status`, `range` (the `Content-Range` sent, if any), `bytes_sent`,
//! `bytes_planned`, `outcome` (`complete` | `aborted` | `timed_out` | `truncated`: the same words as the
//! completion records, the metrics' `outcome` label and `status`),
//! `reason` (for aborted downloads), `duration_ms`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::reporting::outcome::Outcome;

/// Where the lines go.
pub enum AccessLog {
    Off,
    Stderr,
    File(File),
}

/// One finished download.
pub struct Entry<'a> {
    pub client: &'a str,
    pub file: &'a str,
    pub tag: Option<&'a str>,
    pub status: u16,
    pub range: Option<&'a str>,
    pub bytes_sent: u64,
    pub bytes_planned: u64,
    pub outcome: &'a Outcome,
    pub duration: Duration,
}

impl AccessLog {
    /// `-` means standard error; anything else is a file opened for appending.
    pub fn open(target: Option<&Path>) -> io::Result<AccessLog> {
        match target {
            None => Ok(AccessLog::Off),
            Some(p) if p == Path::new("-") => Ok(AccessLog::Stderr),
            Some(p) => Ok(AccessLog::File(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        }
    }

    pub fn write(&mut self, e: &Entry<'_>) {
        if matches!(self, AccessLog::Off) {
            return;
        }
        let line = format_entry(e, SystemTime::now());
        // A full disk must not stop downloads: the error is dropped with the line.
        let _ = match self {
            AccessLog::Off => Ok(()),
            AccessLog::Stderr => io::stderr().write_all(line.as_bytes()),
            AccessLog::File(f) => f.write_all(line.as_bytes()),
        };
    }
}

fn format_entry(e: &Entry<'_>, now: SystemTime) -> String {
    let value = serde_json::json!({
        "time": rfc3339(now),
        "client": e.client,
        "file": e.file,
        "tag": e.tag,
        "status": e.status,
        "range": e.range,
        "bytes_sent": e.bytes_sent,
        "bytes_planned": e.bytes_planned,
        "outcome": e.outcome.label(),
        "reason": e.outcome.reason(),
        "duration_ms": e.duration.as_millis() as u64,
    });
    format!("{value}\n")
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn one_json_line_with_every_field() {
        let outcome = Outcome::Aborted("Broken pipe".into());
        let e = Entry {
            client: "203.0.113.9",
            file: "/srv/a \"b\".pdf",
            tag: Some("order:17/user:5"),
            status: 206,
            range: Some("bytes 0-9/100"),
            bytes_sent: 4,
            bytes_planned: 10,
            outcome: &outcome,
            duration: Duration::from_millis(1500),
        };
        let line = format_entry(&e, UNIX_EPOCH + Duration::from_millis(951_782_400_250));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2000-02-29T00:00:00.250Z");
        assert_eq!(v["file"], "/srv/a \"b\".pdf");
        assert_eq!(v["tag"], "order:17/user:5");
        assert_eq!(v["status"], 206);
        assert_eq!(v["range"], "bytes 0-9/100");
        assert_eq!(v["bytes_sent"], 4);
        assert_eq!(v["bytes_planned"], 10);
        assert_eq!(v["outcome"], "aborted");
        assert_eq!(v["reason"], "Broken pipe");
        assert_eq!(v["duration_ms"], 1500);
    }

    /// The access log, the completion records and the metrics say `timed_out` alike.
    #[test]
    fn a_timed_out_download_is_timed_out_in_every_report() {
        let e = Entry {
            client: "c",
            file: "f",
            tag: None,
            status: 200,
            range: None,
            bytes_sent: 0,
            bytes_planned: 10,
            outcome: &Outcome::TimedOut,
            duration: Duration::ZERO,
        };
        let v: serde_json::Value = serde_json::from_str(&format_entry(&e, UNIX_EPOCH)).unwrap();
        assert_eq!(v["outcome"], "timed_out");
        assert!(v["reason"].is_null());
        assert_eq!(Outcome::TimedOut.to_string(), "outcome=timed_out");
        let c = crate::reporting::stats::Counters::default();
        c.count_outcome(&Outcome::TimedOut);
        assert!(c
            .prometheus()
            .contains("\nhandoff_downloads_failed_total{outcome=\"timed_out\"} 1\n"));
    }
}
