//! Response planning: the status, the head and the bytes of a download, decided before the
//! first byte leaves.
//!
//! The extension calls [`plan`] once per `send_file()`; the manager executes the resulting
//! [`Plan`] and so does the in-process fallback, so both paths send the same response.
//!
//! Rules (RFC 9110 is the reference):
//! - The script's status and header fields are kept (`Set-Cookie`, `Cache-Control`, custom
//!   fields); the fields that describe the body (`Content-Length`, `Transfer-Encoding`,
//!   `Content-Encoding`, `Content-Range`) are replaced by the file's.
//! - A script status outside 2xx (a 404 page, a 500) is sent as is with the whole file:
//!   conditionals and ranges apply only to a successful response (§13.2.1, §14.2).
//! - Preconditions in §13.2.2 order ([`crate::conditional`]): 412 or 304 (which carries
//!   the validators, caching fields and cookies, and no body).
//! - `Range` on GET only ([`crate::range`]), guarded by `If-Range`: 206 with one range,
//!   206 `multipart/byteranges` with several, 416 with `Content-Range: bytes */SIZE`.
//! - `Content-Type`: the `content_type` option, else the script's explicit field, else by
//!   the extension of the download name from the MIME database (text types get
//!   `charset=utf-8`), else `application/octet-stream`. PHP's implicit `text/html` never
//!   reaches a file.
//! - `filename` / `inline` produce an RFC 6266 `Content-Disposition` with an ASCII fallback
//!   and an RFC 8187 `filename*` for other names.
//! - HEAD gets exactly the head GET would get, and no body.
//!
//! The parts: the types in and out of planning are here; `decide` holds [`plan`] itself
//! (which status, which of the script's fields stay, which bytes go out); `fields` builds
//! the head fields that describe the file (`Content-Length`, `Content-Type`,
//! `Content-Disposition`); `multipart` builds a `multipart/byteranges` body. The paths
//! `handoff_core::plan::X` name every public item whichever part holds it.

mod decide;
mod fields;
mod multipart;
#[cfg(test)]
mod tests;

pub use decide::{for_inline, plan};
pub use fields::{content_disposition, guess_type};

use std::time::SystemTime;

use crate::conditional::Conditions;
use crate::head::{Head, Header};

/// What the planner needs to know about the open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
}

/// The request method, as far as planning cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    Get,
    Head,
    /// POST and the rest: the whole file, no ranges, no 304.
    Other,
}

/// The request being answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub range: Option<String>,
    pub conditions: Conditions,
}

/// What the script had set before calling `send_file()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
}

impl Default for ScriptResponse {
    fn default() -> Self {
        ScriptResponse {
            status: 200,
            reason: String::new(),
            headers: Vec::new(),
        }
    }
}

/// The `send_file()` options that shape the response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Explicit media type; wins over everything.
    pub content_type: Option<String>,
    /// Download name for `Content-Disposition` (and the type guess).
    pub filename: Option<String>,
    /// `Content-Disposition: inline` instead of `attachment`.
    pub inline: bool,
    /// Most bytes per second for this download (0: unlimited), like nginx's
    /// `X-Accel-Limit-Rate`; enforced by the manager.
    pub rate: u64,
    /// The application's key for this download (see [`crate::label`]).
    pub tag: Option<String>,
    /// Downloads of one group share one bucket of `rate` bytes/s (see [`crate::label`]).
    pub rate_group: Option<String>,
}

/// How the response is framed on the connection, the one "HTTP or FastCGI" of the
/// project: the planner asks FastCGI front ends not to spool the response, the wire
/// protocol carries it to the manager (with the request id beside it), and the manager
/// frames the response by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The connection is the client's own socket (`php -S`, mod_php): HTTP/1.1.
    Http,
    /// The connection is a FastCGI connection from a web server (php-fpm): `STDOUT`
    /// records and `END_REQUEST`.
    FastCgi,
}

/// One part of a response body, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal bytes (the parts' heads of a multipart body).
    Bytes(Vec<u8>),
    /// `length` bytes of the file from `offset`.
    File { offset: u64, length: u64 },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { length, .. } => *length,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decided response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub head: Head,
    /// The body, in order (empty for HEAD and body-less statuses).
    pub body: Vec<Piece>,
}

/// The body's length, or `None` if it does not fit a `u64` (only a hostile job's pieces
/// can: a plan's own ranges lie within one file).
pub fn checked_body_len(body: &[Piece]) -> Option<u64> {
    body.iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.len()))
}

impl Plan {
    pub fn body_len(&self) -> u64 {
        checked_body_len(&self.body).unwrap_or(u64::MAX)
    }
}
