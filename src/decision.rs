//! What `send_file()` does with a request, decided in plain Rust.
//!
//! `send.rs` reads everything a decision needs from PHP and the SAPI into a [`Context`]
//! (the request's method and conditional fields, the status and header fields the script
//! set so far, the SAPI, the open file's metadata, the settings, and the connection if one
//! can be handed off), and carries out what the functions here return:
//! - [`check_head_not_sent`]: throw before the file is even opened, when earlier output
//!   already committed a response head;
//! - [`decide`]: plan the response, then stream it in-process because it is small
//!   ([`Decision::Inline`]), offer it to the manager ([`Decision::HandOff`]), or decline
//!   ([`Decision::Decline`]: no connection that can be handed off);
//! - [`fall_back`]: once declined (here or by the manager), stream in-process or, with
//!   `handoff.fallback = off`, throw.
//!
//! Nothing here touches PHP, a descriptor or the manager, so unit tests call it without a
//! PHP runtime. Every error returned is thrown before a byte is sent, and none carries a
//! path (see `error.rs`).

use handoff_core::conditional::Conditions;
use handoff_core::head::Header;
use handoff_core::plan::{self, FileInfo, Framing, Method, Options, Plan, Request, ScriptResponse};
use handoff_core::protocol::FallbackCause;

use crate::error::SendFileError;
use crate::settings::Fallback;

/// The SAPI running the script, as far as the decisions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sapi {
    /// `fpm-fcgi`: answers in FastCGI records, reads a `Status:` field as the CGI status.
    Fpm,
    /// `cli-server` (`php -S`).
    CliServer,
    /// `apache2handler` (mod_php).
    Apache,
    /// `cli`, `phpdbg`, `embed`: no response head at all.
    CommandLine,
    Other,
}

impl Sapi {
    /// From `sapi_module.name`.
    pub fn from_name(name: &str) -> Sapi {
        match name {
            "fpm-fcgi" => Sapi::Fpm,
            "cli-server" => Sapi::CliServer,
            "apache2handler" => Sapi::Apache,
            "cli" | "phpdbg" | "embed" => Sapi::CommandLine,
            _ => Sapi::Other,
        }
    }

    /// Whether the SAPI writes a response head. Command-line SAPIs write none, so earlier
    /// output there does not stop a file from following it.
    fn writes_head(self) -> bool {
        self != Sapi::CommandLine
    }

    /// How the response is framed when there is no connection to hand off: php-fpm still
    /// answers in FastCGI records.
    fn framing(self) -> Framing {
        match self {
            Sapi::Fpm => Framing::FastCgi,
            _ => Framing::Http,
        }
    }
}

/// A connection that can be handed off, as far as the decisions care: how the response is
/// framed on it. `send.rs` passes its validated [`crate::connection::Connection`]; tests
/// pass a bare [`Framing`].
pub trait Framed {
    fn framing(&self) -> Framing;
}

impl Framed for Framing {
    fn framing(&self) -> Framing {
        *self
    }
}

impl Framed for crate::connection::Connection<'_> {
    fn framing(&self) -> Framing {
        self.framing
    }
}

/// Everything [`decide`] needs, read from PHP after the file was opened.
#[derive(Debug, Clone)]
pub struct Context<C> {
    pub sapi: Sapi,
    /// `SG(request_info).headers_only`: PHP itself answers a HEAD request.
    pub headers_only: bool,
    /// `REQUEST_METHOD`, if the SAPI has one.
    pub method: Option<String>,
    /// The request's `Range` field.
    pub range: Option<String>,
    /// The request's `If-*` fields.
    pub conditions: Conditions,
    /// The response code the script set (`http_response_code()`, 200 by default).
    pub status_code: i32,
    /// A status line the script set with `header("HTTP/1.1 299 Custom Reason")`.
    pub status_line: Option<String>,
    /// The header fields the script set so far, as PHP holds them (`Name: value`).
    pub header_lines: Vec<Vec<u8>>,
    /// The open file.
    pub file: FileInfo,
    /// The name the type is guessed from without a `filename` option.
    pub type_name: String,
    /// The validator of content without an identity of its own (a copied stream).
    pub content_etag: Option<String>,
    /// `handoff.inline_below`.
    pub inline_below: u64,
    /// The request's connection if it can be handed off, or why not.
    pub connection: Result<C, String>,
}

/// Why a request is not handed off: the cause for the manager's metrics, and the reason
/// for the exception, the log and phpinfo().
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined {
    pub cause: FallbackCause,
    pub reason: String,
}

impl Declined {
    pub fn new(cause: FallbackCause, reason: impl Into<String>) -> Declined {
        Declined {
            cause,
            reason: reason.into(),
        }
    }
}

/// What to do with the planned response.
#[derive(Debug)]
pub enum Decision<C> {
    /// Fewer body bytes than `handoff.inline_below`: serving it here is cheaper than a
    /// handoff. Not a fallback, so `handoff.fallback = off` does not apply.
    Inline(Plan),
    /// Offer the connection and the file to the manager.
    HandOff { conn: C, plan: Plan },
    /// No connection that can be handed off: see [`fall_back`].
    Decline { plan: Plan, declined: Declined },
}

/// Refuses a call after earlier output committed a response head: the file cannot be the
/// response any more. Checked before the file is opened (and so before `delete` unlinks it).
pub fn check_head_not_sent(sapi: Sapi, headers_sent: bool) -> Result<(), SendFileError> {
    if headers_sent && sapi.writes_head() {
        return Err(SendFileError::HeadersSent);
    }
    Ok(())
}

/// Plans the response and decides how it goes out.
pub fn decide<C: Framed>(ctx: Context<C>, options: &Options) -> Decision<C> {
    let request = request(&ctx);
    let mut script = script_response(
        ctx.sapi,
        ctx.status_code,
        ctx.status_line.as_deref(),
        &ctx.header_lines,
    );
    if let Some(etag) = ctx.content_etag {
        // Content without an identity of its own: its hash is the validator, unless the
        // script set one (the planner prefers the script's).
        if !script.headers.iter().any(|h| h.is("ETag")) {
            script.headers.push(Header::new("ETag", etag));
        }
    }
    let framing = match &ctx.connection {
        Ok(conn) => conn.framing(),
        Err(_) => ctx.sapi.framing(),
    };
    let plan = plan::plan(
        ctx.file,
        &request,
        &script,
        options,
        &ctx.type_name,
        framing,
    );
    match ctx.connection {
        Ok(_) if plan.body_len() < ctx.inline_below => Decision::Inline(plan::for_inline(plan)),
        Ok(conn) => Decision::HandOff { conn, plan },
        Err(reason) => Decision::Decline {
            plan,
            declined: Declined::new(FallbackCause::NoConnection, reason),
        },
    }
}

/// After a decline (no connection, or the manager did not take the handoff): the plan to
/// stream in-process, or with `handoff.fallback = off` the error to throw (nothing has
/// been sent yet).
pub fn fall_back(policy: Fallback, plan: Plan, declined: Declined) -> Result<Plan, SendFileError> {
    match policy {
        Fallback::Off => Err(SendFileError::NoFallback {
            reason: declined.reason,
        }),
        Fallback::Stream => Ok(plan),
    }
}

/// The request as the planner needs it: method, `Range` and the conditional fields.
fn request<C>(ctx: &Context<C>) -> Request {
    let method = if ctx.headers_only {
        Method::Head
    } else {
        match ctx.method.as_deref() {
            None | Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            Some(_) => Method::Other,
        }
    };
    Request {
        method,
        range: ctx.range.clone(),
        conditions: ctx.conditions.clone(),
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
fn script_response(
    sapi: Sapi,
    code: i32,
    status_line: Option<&str>,
    header_lines: &[Vec<u8>],
) -> ScriptResponse {
    let status = u16::try_from(code)
        .ok()
        .filter(|c| (100..=599).contains(c))
        .unwrap_or(200);
    // "HTTP/1.1 299 Custom Reason" set by header(): keep the reason if its code is ours.
    let reason = status_line
        .and_then(|l| l.split_once(' '))
        .and_then(|(_, rest)| rest.split_once(' '))
        .filter(|(c, _)| c.parse::<u16>().ok() == Some(status))
        .map(|(_, r)| r.trim().to_string())
        .unwrap_or_default();
    let mut cgi_status = None;
    let headers = header_lines
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
        Some(taken) if sapi == Sapi::Fpm => taken,
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
