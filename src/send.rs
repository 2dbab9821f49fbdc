//! `send_file()` itself, in plain Rust: open and check the file, plan the response, hand
//! the connection and the file to the manager, or stream in-process.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use handoff_core::conditional::Conditions;
use handoff_core::head::Header;
use handoff_core::plan::{self, FileInfo, Method, Options, Plan, Request, ScriptResponse};
use handoff_core::protocol::{FallbackCause, Fallbacks, Framing, Job, Offer, ProtocolError};

use crate::connection::{self, Connection, Neutered};
use crate::error::SendFileError;
use crate::ffi::{self, Bailout};
use crate::settings::{self, Fallback, Settings};
use crate::source::{Opened, Source};

/// Why the last `send_file()` of this process did not hand off (shown by phpinfo()).
pub static LAST_FALLBACK: Mutex<String> = Mutex::new(String::new());

/// Fallbacks of this process not yet reported to a manager, per [`FallbackCause`]. They
/// travel with the next job, so fallbacks while the manager was down reach its metrics
/// once it is back (those of a worker that exits before its next handoff are lost).
static UNREPORTED: [AtomicU32; FallbackCause::COUNT] =
    [const { AtomicU32::new(0) }; FallbackCause::COUNT];

/// Why a request is not handed off: the cause for the manager's metrics, and the reason
/// for the exception, the log and phpinfo().
struct Declined {
    cause: FallbackCause,
    reason: String,
}

impl Declined {
    fn new(cause: FallbackCause, reason: impl Into<String>) -> Declined {
        Declined {
            cause,
            reason: reason.into(),
        }
    }
}

/// How the file went out.
pub enum Sent {
    HandedOff,
    Streamed,
}

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

/// Whether earlier output already committed a response head. Command-line SAPIs write no
/// head, so earlier output there does not stop a file from following it.
fn head_already_sent() -> bool {
    ffi::headers_sent() && !matches!(ffi::sapi_name().as_str(), "cli" | "phpdbg" | "embed")
}

pub fn send_file(source: Source<'_>, options: &Options) -> Result<Sent, Failure> {
    ffi::Request::within_call(|request| send_file_in(request, source, options))
}

/// `send_file()` inside the current request, which lends out its connection.
fn send_file_in(
    php_request: &ffi::Request,
    source: Source<'_>,
    options: &Options,
) -> Result<Sent, Failure> {
    if head_already_sent() {
        return Err(SendFileError::HeadersSent.into());
    }
    let Opened {
        file,
        type_name: name,
        log_name,
        etag,
        dated,
    } = crate::source::open(source)?;
    let meta = file
        .metadata()
        .map_err(|e| SendFileError::Open { kind: e.kind() })?;
    let info = FileInfo {
        size: meta.len(),
        modified: meta.modified().ok().filter(|_| dated),
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    };
    let request = request();
    let mut script = script_response();
    if let Some(etag) = etag {
        // Content without an identity of its own: its hash is the validator, unless the
        // script set one (the planner prefers the script's).
        if !script.headers.iter().any(|h| h.is("ETag")) {
            script.headers.push(Header::new("ETag", etag));
        }
    }
    let settings = settings::current();

    let conn = connection::find(php_request);
    // Without a connection to hand off, php-fpm still answers in FastCGI records.
    let framing = match &conn {
        Ok(c) => c.framing,
        Err(_) if ffi::sapi_name() == "fpm-fcgi" => Framing::FastCgi,
        Err(_) => Framing::Http,
    };
    let plan = plan::plan(info, &request, &script, options, &name, framing);

    let declined = match conn {
        // Small enough that serving it here is cheaper than a handoff: not a fallback,
        // so handoff.fallback=off does not apply.
        Ok(_) if plan.body_len() < settings.inline_below => {
            crate::fallback::stream(&plan::for_inline(plan), &file, options.rate)?;
            return Ok(Sent::Streamed);
        }
        Ok(conn) => match hand_off(&conn, &plan, options, &file, &settings, log_name) {
            Ok(()) => {
                ffi::disable_output();
                return Ok(Sent::HandedOff);
            }
            Err(reason) => reason,
        },
        Err(reason) => Declined::new(FallbackCause::NoConnection, reason),
    };
    let Declined { cause, reason } = declined;
    note_fallback(cause, &reason);
    if settings.fallback == Fallback::Off {
        return Err(SendFileError::NoFallback { reason }.into());
    }
    crate::fallback::stream(&plan, &file, options.rate)?;
    Ok(Sent::Streamed)
}

fn note_fallback(cause: FallbackCause, reason: &str) {
    UNREPORTED[cause.index()].fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = LAST_FALLBACK.lock() {
        reason.clone_into(&mut last);
    }
}

/// The fallbacks to report with the next job.
fn unreported() -> Fallbacks {
    let mut report = Fallbacks::default();
    for (n, counter) in report.iter_mut().zip(&UNREPORTED) {
        *n = counter.load(Ordering::Relaxed);
    }
    report
}

/// A manager answered the job that carried `report`: those fallbacks are counted there.
fn reported(report: &Fallbacks) {
    for (&n, counter) in report.iter().zip(&UNREPORTED) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Opens the file for reading, refusing what cannot be a download. `O_NONBLOCK` keeps a
/// FIFO from blocking the open (it is refused right after); it has no effect on files.
pub(crate) fn open(path: &[u8]) -> Result<File, SendFileError> {
    if path.is_empty() {
        return Err(SendFileError::EmptyPath);
    }
    let c = CString::new(path).map_err(|_| SendFileError::NulByte)?;
    if !ffi::open_basedir_allows(&c) {
        return Err(SendFileError::OpenBasedir);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(OsStr::from_bytes(path))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SendFileError::NotFound,
            std::io::ErrorKind::PermissionDenied => SendFileError::PermissionDenied,
            kind => {
                if e.raw_os_error() == Some(nix::libc::EISDIR) {
                    SendFileError::NotRegular
                } else {
                    SendFileError::Open { kind }
                }
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| SendFileError::Open { kind: e.kind() })?;
    if !meta.is_file() {
        return Err(SendFileError::NotRegular);
    }
    Ok(file)
}

/// The request as the planner needs it: method, `Range` and the conditional fields.
fn request() -> Request {
    let method = if ffi::headers_only() {
        Method::Head
    } else {
        match ffi::request_method().as_deref() {
            None | Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            Some(_) => Method::Other,
        }
    };
    Request {
        method,
        range: ffi::server_var("HTTP_RANGE"),
        conditions: Conditions {
            if_match: ffi::server_var("HTTP_IF_MATCH"),
            if_none_match: ffi::server_var("HTTP_IF_NONE_MATCH"),
            if_modified_since: ffi::server_var("HTTP_IF_MODIFIED_SINCE"),
            if_unmodified_since: ffi::server_var("HTTP_IF_UNMODIFIED_SINCE"),
            if_range: ffi::server_var("HTTP_IF_RANGE"),
        },
    }
}

/// The status and header fields the script set so far.
///
/// A `Status:` field (the CGI idiom `header('Status: 404')`) is taken as PHP's SAPI takes
/// it, so that the handoff answers as the fallback does: php-fpm passes it to the web
/// server as the CGI status, which wins over the response code (`sapi_cgi_send_headers`
/// then writes no status of its own), so under `fpm-fcgi` it becomes the status and reason.
/// `php -S` and mod_php send it as an ordinary field and keep their status. It is never
/// kept as a field: it is a CGI control field, and the manager writes none on either
/// framing, so the fallback must not either.
fn script_response() -> ScriptResponse {
    let (code, status_line) = ffi::response_status();
    let status = u16::try_from(code)
        .ok()
        .filter(|c| (100..=599).contains(c))
        .unwrap_or(200);
    // "HTTP/1.1 299 Custom Reason" set by header(): keep the reason if its code is ours.
    let reason = status_line
        .as_deref()
        .and_then(|l| l.split_once(' '))
        .and_then(|(_, rest)| rest.split_once(' '))
        .filter(|(c, _)| c.parse::<u16>().ok() == Some(status))
        .map(|(_, r)| r.trim().to_string())
        .unwrap_or_default();
    let mut cgi_status = None;
    let headers = ffi::script_header_lines()
        .iter()
        .filter_map(|line| {
            // The value is kept byte for byte (it need not be UTF-8); a name that is not a
            // token, whatever its bytes, is refused by the head's validation.
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]);
            let value = line[colon + 1..].trim_ascii();
            if name.trim().eq_ignore_ascii_case("Status") {
                if cgi_status.is_none() {
                    cgi_status = status_field(&String::from_utf8_lossy(value));
                }
                return None;
            }
            Some(Header::new(name.trim(), value))
        })
        .collect();
    let (status, reason) = match cgi_status {
        Some(taken) if ffi::sapi_name() == "fpm-fcgi" => taken,
        _ => (status, reason),
    };
    ScriptResponse {
        status,
        reason,
        headers,
    }
}

/// A CGI `Status` field's value (`404`, `410 Gone Fishing`): the code and the reason, if
/// any (empty: the standard one).
fn status_field(value: &str) -> Option<(u16, String)> {
    let value = value.trim();
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| code.len() == 3 && (100..=599).contains(c))?;
    Some((code, reason.trim().to_string()))
}

/// The client's address for the manager's log: the web server's `REMOTE_ADDR` under
/// FastCGI, the socket's peer under `php -S`.
fn client_address(conn: &Connection) -> String {
    if let Some(addr) = ffi::request_env("REMOTE_ADDR") {
        return addr;
    }
    nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(conn.fd().as_raw_fd())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// The two-phase handoff. `Ok` means the manager owns the connection and the worker's
/// copy is harmless; `Err` means the worker still owns it, untouched, and must serve it.
fn hand_off(
    conn: &Connection,
    plan: &Plan,
    options: &Options,
    file: &File,
    settings: &Settings,
    file_name: String,
) -> Result<(), Declined> {
    let job = Job {
        framing: conn.framing,
        request_id: conn.request_id,
        head: plan.head.clone(),
        body: plan.body.clone(),
        rate: options.rate,
        client: client_address(conn),
        file_name,
        fallbacks: unreported(),
        tag: options.tag.clone().unwrap_or_default(),
        rate_group: options.rate_group.clone().unwrap_or_default(),
    };
    let deadline = Instant::now() + settings.timeout;
    let connect = || {
        Offer::connect_until(&settings.socket, deadline).map_err(|e| {
            Declined::new(
                FallbackCause::Unreachable,
                format!("manager unreachable: {e}"),
            )
        })
    };
    // The connection of this process's last handoff, if it went to the same socket; a
    // connection the manager closed since is replaced by a fresh one, once.
    let (mut offer, reused) = match kept_connection(&settings.socket) {
        Some(sock) => (Offer::resume(sock, deadline), true),
        None => (connect()?, false),
    };
    let mut proposed = offer.propose(&job, conn.fd(), file.as_fd());
    if reused
        && proposed
            .as_ref()
            .is_err_and(ProtocolError::is_stale_connection)
    {
        offer = connect()?;
        proposed = offer.propose(&job, conn.fd(), file.as_fd());
    }
    match proposed {
        Ok(()) => reported(&job.fallbacks),
        Err(e @ ProtocolError::Refused { .. }) => {
            reported(&job.fallbacks);
            return Err(Declined::new(
                FallbackCause::Refused,
                format!("handoff not accepted: {e}"),
            ));
        }
        Err(e) => {
            return Err(Declined::new(
                FallbackCause::Failed,
                format!("handoff not accepted: {e}"),
            ))
        }
    }
    // Dropping `offer` on any error below closes the socket before go: the manager then
    // drops the job without writing.
    let neutered = Neutered::new(conn).map_err(|e| Declined::new(FallbackCause::Failed, e))?;
    match offer.go() {
        Ok(sock) => {
            neutered.commit();
            keep_connection(&settings.socket, sock);
            Ok(())
        }
        Err(e) => {
            neutered
                .restore()
                .map_err(|e| Declined::new(FallbackCause::GoneBeforeGo, e))?;
            Err(Declined::new(
                FallbackCause::GoneBeforeGo,
                format!("manager went away before go: {e}"),
            ))
        }
    }
}

/// This process's connection to the manager between handoffs, with the socket path it
/// leads to (`handoff.socket` may differ per directory or virtual host). PHP runs one
/// request at a time per process (NTS), so the lock is never contended; after a fork
/// (mod_php's children, php-fpm's workers) each process connects for itself, since the
/// connection is made on the first handoff, not before the fork.
static KEPT: Mutex<Option<(PathBuf, OwnedFd)>> = Mutex::new(None);

fn kept_connection(path: &Path) -> Option<OwnedFd> {
    let mut kept = KEPT.lock().ok()?;
    match kept.take() {
        Some((p, sock)) if p == path => Some(sock),
        _ => None,
    }
}

fn keep_connection(path: &Path, sock: OwnedFd) {
    if let Ok(mut kept) = KEPT.lock() {
        *kept = Some((path.to_path_buf(), sock));
    }
}

/// Whether a manager answers at the configured socket (for `handoff_available()`).
pub fn manager_answers(settings: &Settings) -> Result<(), String> {
    Offer::connect(&settings.socket, settings.timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_status_field_as_php_fpm_passes_it() {
        assert_eq!(status_field(" 404"), Some((404, String::new())));
        assert_eq!(
            status_field("410 Gone Fishing "),
            Some((410, "Gone Fishing".to_string()))
        );
        for bad in ["", "abc", "99", "600", "4040", "+404", "404x"] {
            assert_eq!(status_field(bad), None, "{bad:?}");
        }
    }
}
