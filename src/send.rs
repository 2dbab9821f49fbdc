//! `send_file()` itself, the side that acts: read the request, the script's response so far
//! and the settings from PHP into a [`Context`], let [`crate::decision`] decide, then
//! carry it out: stream in-process, or hand the connection and the file to the manager
//! (one way by default, or with the confirmed two-phase handshake; the kept manager
//! connection; the fallback counters).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use handoff_core::conditional::Conditions;
use handoff_core::plan::{FileInfo, Options, Plan};
use handoff_core::protocol::{Channel, FallbackCause, Fallbacks, Job, Offer, ProtocolError};

use crate::connection::{self, Connection, Neutered};
use crate::decision::{self, Context, Decision, Declined, Sapi};
use crate::error::{Failure, SendFileError};
use crate::ffi;
use crate::settings::{self, Settings};
use crate::source::{Opened, Source};

/// Why the last `send_file()` of this process did not hand off (shown by phpinfo()).
pub static LAST_FALLBACK: Mutex<String> = Mutex::new(String::new());

/// Fallbacks of this process not yet reported to a manager, per [`FallbackCause`]. They
/// travel with the next job, so fallbacks while the manager was down reach its metrics
/// once it is back (those of a worker that exits before its next handoff are lost).
static UNREPORTED: [AtomicU32; FallbackCause::COUNT] =
    [const { AtomicU32::new(0) }; FallbackCause::COUNT];

/// How the file went out.
pub enum Sent {
    HandedOff,
    Streamed,
}

pub fn send_file(source: Source<'_>, options: &Options) -> Result<Sent, Failure> {
    ffi::Request::within_call(|request| send_file_in(request, source, options))
}

/// `send_file()` inside the current request, which lends out its connection: reads what
/// the decisions need from PHP, and carries out what [`crate::decision`] decides.
fn send_file_in(
    php_request: &ffi::Request,
    source: Source<'_>,
    options: &Options,
) -> Result<Sent, Failure> {
    let sapi = Sapi::from_name(&ffi::sapi_name());
    decision::check_head_not_sent(sapi, ffi::headers_sent())?;
    let settings = settings::current();
    let quiet = ffi::output_mark();
    let Opened {
        file,
        type_name,
        log_name,
        etag,
        dated,
    } = crate::source::open(source, settings.max_copy_bytes)?;
    // The callback PHP would run just before sending the head runs now, before the head is
    // planned, so that its headers are in the handoff's head as in the fallback's.
    if !ffi::run_header_callback()? {
        return Err(SendFileError::HeaderCallbackThrew.into());
    }
    decision::check_nothing_printed(sapi, ffi::output_mark() != quiet)?;
    let meta = file
        .metadata()
        .map_err(|e| SendFileError::Open { kind: e.kind() })?;
    let info = FileInfo {
        size: meta.len(),
        modified: meta.modified().ok().filter(|_| dated),
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    };
    let (status_code, status_line) = ffi::response_status();
    let context = Context {
        sapi,
        headers_only: ffi::headers_only(),
        method: ffi::request_method(),
        range: ffi::server_var("HTTP_RANGE"),
        conditions: Conditions {
            if_match: ffi::server_var("HTTP_IF_MATCH"),
            if_none_match: ffi::server_var("HTTP_IF_NONE_MATCH"),
            if_modified_since: ffi::server_var("HTTP_IF_MODIFIED_SINCE"),
            if_unmodified_since: ffi::server_var("HTTP_IF_UNMODIFIED_SINCE"),
            if_range: ffi::server_var("HTTP_IF_RANGE"),
        },
        status_code,
        status_line,
        header_lines: ffi::script_header_lines(),
        file: info,
        type_name,
        content_etag: etag,
        inline_below: settings.inline_below,
        connection: connection::find(php_request),
    };

    let (plan, declined) = match decision::decide(context, options) {
        Decision::Inline(plan) => {
            crate::fallback::stream(&plan, &file, options.rate)?;
            return Ok(Sent::Streamed);
        }
        Decision::HandOff { conn, plan } => {
            match hand_off(&conn, &plan, options, &file, &settings, log_name) {
                Ok(()) => {
                    // The manager has its own descriptor: this one goes before the script's
                    // output handlers run (user code that may fail fatally and take long).
                    drop(file);
                    ffi::disable_output()?;
                    return Ok(Sent::HandedOff);
                }
                Err(declined) => (plan, declined),
            }
        }
        Decision::Decline { plan, declined } => (plan, declined),
    };
    note_fallback(&declined);
    let plan = decision::fall_back(settings.fallback, plan, declined)?;
    crate::fallback::stream(&plan, &file, options.rate)?;
    Ok(Sent::Streamed)
}

fn note_fallback(declined: &Declined) {
    UNREPORTED[declined.cause.index()].fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = LAST_FALLBACK.lock() {
        declined.reason.clone_into(&mut last);
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

/// Hands the request to the manager, one way or (`handoff.confirm`) with the two-phase
/// handshake. `Ok` means the manager owns the connection and the worker's copy is
/// harmless; `Err` means the worker still owns it, untouched, and must serve it.
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
        keep_conn: conn.keep_conn,
        head: plan.head.clone(),
        body: plan.body.clone(),
        rate: options.rate,
        client: client_address(conn),
        file_name,
        fallbacks: unreported(),
        tag: options.tag.clone().unwrap_or_default(),
        rate_group: options.rate_group.clone().unwrap_or_default(),
    };
    if settings.confirm {
        hand_off_confirmed(conn, &job, file, settings)
    } else {
        hand_off_one_way(conn, &job, file, settings)
    }
}

/// The one-way handoff: one send on the kept connection, nothing read back.
///
/// The worker's copy of the connection is made harmless *before* the send, so that from
/// the instant the kernel queues the job not a byte can come from this process; a send
/// that fails (the manager closed the connection or is gone, or its queue on this
/// connection stayed full until `handoff.timeout_ms`) handed nothing over, and the
/// connection is put back for the fallback. A full queue is waited for, not given up on
/// at once: the manager drains it as soon as it gets the CPU, while the fallback would
/// hold this worker for the whole download.
fn hand_off_one_way(
    conn: &Connection,
    job: &Job,
    file: &File,
    settings: &Settings,
) -> Result<(), Declined> {
    let bytes = job
        .encode_one_way()
        .map_err(|e| Declined::new(FallbackCause::Failed, format!("handoff not possible: {e}")))?;
    let deadline = Instant::now() + settings.timeout;
    let open = || {
        Channel::open(&settings.socket, deadline).map_err(|e| match e {
            ProtocolError::Refused { .. } => {
                // The manager read the report that came with nothing: not counted there.
                Declined::new(FallbackCause::Refused, format!("handoff not accepted: {e}"))
            }
            _ => Declined::new(
                FallbackCause::Unreachable,
                format!("manager unreachable: {e}"),
            ),
        })
    };
    let (mut channel, reused) = match kept_connection(&settings.socket, true) {
        Some(sock) => (Channel::resume(sock), true),
        None => (open()?, false),
    };
    let neutered = Neutered::one_way(conn).map_err(|e| Declined::new(FallbackCause::Failed, e))?;
    let mut sent = channel.hand_off_until(&bytes, neutered.connection(), file.as_fd(), deadline);
    if reused && sent.as_ref().is_err_and(ProtocolError::is_stale_connection) {
        // The manager closed the kept connection (idle, restarted, draining) before this
        // job: nothing was handed over. Once more on a fresh connection.
        sent = match open() {
            Ok(fresh) => {
                channel = fresh;
                channel.hand_off_until(&bytes, neutered.connection(), file.as_fd(), deadline)
            }
            Err(declined) => {
                restore(neutered)?;
                return Err(declined);
            }
        };
    }
    match sent {
        Ok(()) => {
            neutered.commit();
            reported(&job.fallbacks);
            keep_connection(&settings.socket, channel.into_fd(), true);
            Ok(())
        }
        Err(e) => {
            restore(neutered)?;
            if e.is_would_block() {
                // The manager stayed behind until the deadline: its queue on this
                // connection is full. The connection itself is fine.
                keep_connection(&settings.socket, channel.into_fd(), true);
                return Err(Declined::new(
                    FallbackCause::Refused,
                    "handoff not accepted: the manager's queue is full".to_string(),
                ));
            }
            Err(Declined::new(
                FallbackCause::Failed,
                format!("handoff not sent: {e}"),
            ))
        }
    }
}

/// Puts the worker's connection back after a handoff that handed nothing over.
fn restore(neutered: Neutered<'_>) -> Result<(), Declined> {
    neutered
        .restore()
        .map_err(|e| Declined::new(FallbackCause::Failed, e))
}

/// The confirmed two-phase handoff (`handoff.confirm`): the worker waits for the
/// manager's accept, and serves the request itself after a refusal.
fn hand_off_confirmed(
    conn: &Connection,
    job: &Job,
    file: &File,
    settings: &Settings,
) -> Result<(), Declined> {
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
    let (mut offer, reused) = match kept_connection(&settings.socket, false) {
        Some(sock) => (Offer::resume(sock, deadline), true),
        None => (connect()?, false),
    };
    let mut proposed = offer.propose(job, conn.fd(), file.as_fd());
    if reused
        && proposed
            .as_ref()
            .is_err_and(ProtocolError::is_stale_connection)
    {
        offer = connect()?;
        proposed = offer.propose(job, conn.fd(), file.as_fd());
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
            // A connection made for a confirmed handoff never said hello: kept for the
            // next confirmed one only.
            keep_connection(&settings.socket, sock, false);
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
/// The flag says whether the connection was opened with a hello, as one-way handoffs need
/// (a confirmed handoff may use either kind).
static KEPT: Mutex<Option<(PathBuf, OwnedFd, bool)>> = Mutex::new(None);

/// The kept connection to `path`, if there is one fit for the handoff (`one_way`: it
/// must have said hello).
fn kept_connection(path: &Path, one_way: bool) -> Option<OwnedFd> {
    let mut kept = KEPT.lock().ok()?;
    match kept.take() {
        Some((p, sock, hello)) if p == path && (hello || !one_way) => Some(sock),
        _ => None,
    }
}

fn keep_connection(path: &Path, sock: OwnedFd, hello: bool) {
    if let Ok(mut kept) = KEPT.lock() {
        *kept = Some((path.to_path_buf(), sock, hello));
    }
}

/// Whether a manager answers at the configured socket (for `handoff_available()`). For
/// one-way handoffs that means it accepted this process's hello (it allows this peer and
/// is not draining); the connection is then kept for the next handoff.
pub fn manager_answers(settings: &Settings) -> Result<(), String> {
    if settings.confirm {
        return Offer::connect(&settings.socket, settings.timeout)
            .map(drop)
            .map_err(|e| e.to_string());
    }
    let channel = Channel::open(&settings.socket, Instant::now() + settings.timeout)
        .map_err(|e| e.to_string())?;
    keep_connection(&settings.socket, channel.into_fd(), true);
    Ok(())
}
