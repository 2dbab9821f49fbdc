//! Errors of `send_file()`, each thrown as `HandoffException` before any byte is sent.
//!
//! Messages never contain the path the script passed: an uncaught exception may be
//! displayed to the client (`display_errors`), and the client must never learn where files
//! live. The script knows which path it passed.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum SendFileError {
    #[error("send_file(): the path must be a non-empty string")]
    EmptyPath,
    #[error("send_file(): the path contains a NUL byte")]
    NulByte,
    #[error("send_file(): the file does not exist")]
    NotFound,
    #[error("send_file(): permission denied opening the file")]
    PermissionDenied,
    #[error("send_file(): not a regular file")]
    NotRegular,
    #[error("send_file(): the file is outside open_basedir")]
    OpenBasedir,
    #[error("send_file(): cannot open the file: {kind}")]
    Open { kind: io::ErrorKind },
    #[error("send_file(): headers were already sent, so the file cannot be sent as the response")]
    HeadersSent,
    #[error("send_file(): option \"{name}\" must be {expected}")]
    OptionType {
        name: String,
        expected: &'static str,
    },
    #[error(
        "send_file(): unknown option \"{name}\" (known: content_type, filename, inline, rate, \
         rate_group, tag)"
    )]
    UnknownOption { name: String },
    #[error("send_file(): option \"rate_group\" needs \"rate\" (the group's bytes per second)")]
    RateGroupWithoutRate,
    #[error("send_file(): the file cannot be handed off ({reason}) and handoff.fallback is off")]
    NoFallback { reason: String },
}
