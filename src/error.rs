//! Errors of `send_file()`, each thrown as `HandoffException` before any byte is sent.
//!
//! Messages never contain the path the script passed: an uncaught exception may be
//! displayed to the client (`display_errors`), and the client must never learn where files
//! live. The script knows which path it passed.

use std::io;

use crate::ffi::Bailout;

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
        "send_file(): unknown option \"{name}\" (known: content_type, delete, filename, inline, \
         rate, rate_group, tag)"
    )]
    UnknownOption { name: String },
    #[error("send_file(): option \"rate_group\" needs \"rate\" (the group's bytes per second)")]
    RateGroupWithoutRate,
    #[error("send_file(): the first argument must be a path, an open stream or an SplFileObject")]
    NotPathOrStream,
    #[error("send_file(): the resource is not an open stream")]
    NotAStream,
    #[error(
        "send_file(): the SplFileObject has no open stream (was its constructor called and \
         did it succeed?)"
    )]
    SplNoStream,
    #[error("send_file(): option \"delete\" only applies to a path, not to a stream")]
    DeleteStream,
    #[error("send_file(): cannot delete the file after opening it: {kind}")]
    Delete { kind: io::ErrorKind },
    #[error("send_file(): the path was replaced after it was opened, so nothing was deleted")]
    DeleteReplaced,
    #[error("send_file(): the stream is not open for reading")]
    StreamNotReadable,
    #[error("send_file(): the stream cannot seek back to its start and is not at it")]
    StreamNotAtStart,
    #[error("send_file(): reading the stream failed")]
    StreamRead,
    #[error(
        "send_file(): the script's code printed output while send_file() ran it (a stream \
         wrapper, the header callback), so the file cannot be the response"
    )]
    OutputDuringSend,
    /// The callback's own exception is pending and is what the script sees (an exception
    /// already pending is never replaced), as when PHP runs the callback itself.
    #[error("send_file(): the header_register_callback() callback threw")]
    HeaderCallbackThrew,
    #[error(
        "send_file(): the stream has more than handoff.max_copy_bytes ({limit}) bytes to copy \
         into memory"
    )]
    StreamTooLarge { limit: u64 },
    #[error("send_file(): cannot copy the stream into memory: {kind}")]
    StreamCopy { kind: io::ErrorKind },
    #[error("send_file(): the file cannot be handed off ({reason}) and handoff.fallback is off")]
    NoFallback { reason: String },
}

/// How `send_file()` ends when it does not return normally: an error to throw, or a
/// bailout to resume.
pub enum Failure {
    Error(SendFileError),
    /// PHP bailed out while streaming (client gone with ignore_user_abort off, fatal
    /// error): resume it once our resources are dropped.
    Bailout,
}

impl From<SendFileError> for Failure {
    fn from(e: SendFileError) -> Self {
        Failure::Error(e)
    }
}

impl From<Bailout> for Failure {
    fn from(_: Bailout) -> Self {
        Failure::Bailout
    }
}
