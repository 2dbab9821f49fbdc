//! How a download ended, and the one word for it that every report uses: the log line, the
//! access log, completion records, the metrics and `/status`. It lives with the reports
//! (not with the download that produces it) so that reporting never depends on the
//! download machinery, only the other way round.

use std::fmt;

/// How a download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every planned byte was written.
    Complete,
    /// The client went away or the connection failed.
    Aborted(String),
    /// The client accepted no byte for the send timeout.
    TimedOut,
    /// The file ended before the planned bytes (it shrank while being sent).
    Truncated,
}

impl Outcome {
    /// Every outcome's word, in [`Outcome::index`] order.
    pub const LABELS: [&'static str; 4] = ["complete", "aborted", "timed_out", "truncated"];

    /// The one word for this outcome in the log, the access log, completion records,
    /// metrics and status.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Position in [`Outcome::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Outcome::Complete => 0,
            Outcome::Aborted(_) => 1,
            Outcome::TimedOut => 2,
            Outcome::Truncated => 3,
        }
    }

    /// Why an aborted download ended.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Aborted(why) => Some(why),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outcome={}", self.label())?;
        match self.reason() {
            Some(why) => write!(f, " reason={why:?}"),
            None => Ok(()),
        }
    }
}
