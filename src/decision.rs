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

/// Refuses a call during which the script's own code, run by send_file() (a user stream
/// wrapper read for the copy, the `header_register_callback()` callback), printed: that
/// output either committed a head already or sits in an output buffer that the file would
/// silently replace. Checked before the response is planned, so before any byte of the file.
pub fn check_nothing_printed(sapi: Sapi, printed: bool) -> Result<(), SendFileError> {
    if printed && sapi.writes_head() {
        return Err(SendFileError::OutputDuringSend);
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
    use std::time::{Duration, UNIX_EPOCH};

    use handoff_core::plan::Piece;

    use super::*;

    const SIZE: u64 = 1000;

    /// A GET of a 1000-byte file under php-fpm with a connection that can be handed off.
    fn context() -> Context<Framing> {
        Context {
            sapi: Sapi::Fpm,
            headers_only: false,
            method: Some("GET".into()),
            range: None,
            conditions: Conditions::default(),
            status_code: 200,
            status_line: None,
            header_lines: Vec::new(),
            file: FileInfo {
                size: SIZE,
                modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                inode: 7,
            },
            type_name: "report.pdf".into(),
            content_etag: None,
            inline_below: 0,
            connection: Ok(Framing::FastCgi),
        }
    }

    fn plan_of(decision: &Decision<Framing>) -> &Plan {
        match decision {
            Decision::Inline(plan)
            | Decision::HandOff { plan, .. }
            | Decision::Decline { plan, .. } => plan,
        }
    }

    fn decide_with(f: impl FnOnce(&mut Context<Framing>)) -> Decision<Framing> {
        let mut ctx = context();
        f(&mut ctx);
        decide(ctx, &Options::default())
    }

    fn handed_off(decision: &Decision<Framing>) -> bool {
        matches!(decision, Decision::HandOff { .. })
    }

    #[test]
    fn bodies_below_inline_below_are_streamed_here_the_rest_handed_off() {
        let at = decide_with(|c| c.inline_below = SIZE);
        assert!(handed_off(&at), "{at:?}");
        // The handoff asks nginx not to spool; the inline plan lets it buffer.
        assert_eq!(plan_of(&at).head.get("X-Accel-Buffering"), Some("no"));
        let below = decide_with(|c| c.inline_below = SIZE + 1);
        assert!(matches!(below, Decision::Inline(_)), "{below:?}");
        assert_eq!(plan_of(&below).head.get("X-Accel-Buffering"), None);
        // 0 turns inlining off, even for an empty file.
        let empty = decide_with(|c| c.file.size = 0);
        assert!(handed_off(&empty), "{empty:?}");
    }

    #[test]
    fn inline_below_counts_the_body_to_send_not_the_file() {
        let range = decide_with(|c| {
            c.inline_below = 100;
            c.range = Some("bytes=0-9".into());
        });
        assert!(matches!(range, Decision::Inline(_)), "{range:?}");
        assert_eq!(plan_of(&range).head.status, 206);
        let head = decide_with(|c| {
            c.inline_below = 1;
            c.method = Some("HEAD".into());
        });
        assert!(matches!(head, Decision::Inline(_)), "{head:?}");
    }

    #[test]
    fn head_gets_the_head_of_get_and_no_body() {
        let get = plan_of(&decide_with(|_| {})).clone();
        assert_eq!(
            get.body,
            vec![Piece::File {
                offset: 0,
                length: SIZE
            }]
        );
        for head in [
            decide_with(|c| c.method = Some("HEAD".into())),
            // PHP's own HEAD flag wins over the method it reports.
            decide_with(|c| c.headers_only = true),
        ] {
            let plan = plan_of(&head);
            assert!(plan.body.is_empty());
            assert_eq!(plan.head, get.head);
        }
    }

    #[test]
    fn range_and_preconditions_reach_the_planner() {
        let range = decide_with(|c| c.range = Some("bytes=0-9".into()));
        let plan = plan_of(&range);
        assert_eq!(plan.head.status, 206);
        assert_eq!(plan.head.get("Content-Range"), Some("bytes 0-9/1000"));
        assert_eq!(plan.body_len(), 10);
        let beyond = decide_with(|c| c.range = Some("bytes=5000-".into()));
        assert_eq!(plan_of(&beyond).head.status, 416);
        let etag = plan_of(&range).head.get("ETag").unwrap().to_string();
        let cached = decide_with(|c| c.conditions.if_none_match = Some(etag.clone()));
        assert_eq!(plan_of(&cached).head.status, 304);
        let changed = decide_with(|c| c.conditions.if_match = Some("\"other\"".into()));
        assert_eq!(plan_of(&changed).head.status, 412);
        let stale = decide_with(|c| {
            c.range = Some("bytes=0-9".into());
            c.conditions.if_range = Some("\"other\"".into());
        });
        assert_eq!(plan_of(&stale).head.status, 200);
        // Only GET gets a range; a script's error page is sent whole.
        let post = decide_with(|c| {
            c.method = Some("POST".into());
            c.range = Some("bytes=0-9".into());
        });
        assert_eq!(plan_of(&post).head.status, 200);
        assert_eq!(plan_of(&post).body_len(), SIZE);
        let error_page = decide_with(|c| {
            c.status_code = 404;
            c.range = Some("bytes=0-9".into());
        });
        assert_eq!(plan_of(&error_page).head.status, 404);
        assert_eq!(plan_of(&error_page).body_len(), SIZE);
    }

    #[test]
    fn a_head_already_sent_throws_before_the_file_is_opened_except_on_the_command_line() {
        for sapi in [Sapi::Fpm, Sapi::CliServer, Sapi::Apache, Sapi::Other] {
            assert!(matches!(
                check_head_not_sent(sapi, true),
                Err(SendFileError::HeadersSent)
            ));
            assert!(check_head_not_sent(sapi, false).is_ok());
        }
        assert!(check_head_not_sent(Sapi::CommandLine, true).is_ok());
        for name in ["cli", "phpdbg", "embed"] {
            assert_eq!(Sapi::from_name(name), Sapi::CommandLine);
        }
    }

    #[test]
    fn output_of_the_scripts_code_inside_send_file_throws_except_on_the_command_line() {
        for sapi in [Sapi::Fpm, Sapi::CliServer, Sapi::Apache, Sapi::Other] {
            assert!(matches!(
                check_nothing_printed(sapi, true),
                Err(SendFileError::OutputDuringSend)
            ));
            assert!(check_nothing_printed(sapi, false).is_ok());
        }
        assert!(check_nothing_printed(Sapi::CommandLine, true).is_ok());
    }

    #[test]
    fn without_a_connection_it_declines_framed_as_the_sapi_answers() {
        let reason = "fcgi_request layout not recognised (fd)";
        let fpm = decide_with(|c| {
            c.connection = Err(reason.into());
            // Small, but inlining is only instead of a handoff.
            c.inline_below = u64::MAX;
        });
        let Decision::Decline { plan, declined } = fpm else {
            panic!("{fpm:?}");
        };
        assert_eq!(declined, Declined::new(FallbackCause::NoConnection, reason));
        assert_eq!(plan.head.get("X-Accel-Buffering"), Some("no"));
        let cli = decide_with(|c| {
            c.sapi = Sapi::CliServer;
            c.connection = Err("no client".into());
        });
        assert!(matches!(cli, Decision::Decline { .. }));
        assert_eq!(plan_of(&cli).head.get("X-Accel-Buffering"), None);
        // With a connection, its framing counts, not the SAPI's.
        let http = decide_with(|c| c.connection = Ok(Framing::Http));
        assert_eq!(plan_of(&http).head.get("X-Accel-Buffering"), None);
    }

    #[test]
    fn a_decline_streams_unless_fallback_is_off() {
        let plan = plan_of(&decide_with(|_| {})).clone();
        let declined = Declined::new(FallbackCause::Refused, "handoff not accepted: busy");
        assert_eq!(
            fall_back(Fallback::Stream, plan.clone(), declined.clone()).unwrap(),
            plan
        );
        match fall_back(Fallback::Off, plan, declined) {
            Err(e @ SendFileError::NoFallback { .. }) => {
                assert!(e.to_string().contains("handoff not accepted: busy"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn lines(fields: &[&str]) -> Vec<Vec<u8>> {
        fields.iter().map(|f| f.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_status_field_is_the_status_under_php_fpm_only_and_never_sent() {
        let fields = lines(&["Status: 410 Gone Fishing", "Set-Cookie: a=b"]);
        let fpm = script_response(Sapi::Fpm, 200, None, &fields);
        assert_eq!((fpm.status, fpm.reason.as_str()), (410, "Gone Fishing"));
        for sapi in [Sapi::CliServer, Sapi::Apache] {
            let r = script_response(sapi, 200, None, &fields);
            assert_eq!((r.status, r.reason.as_str()), (200, ""), "{sapi:?}");
            assert_eq!(r.headers, fpm.headers);
        }
        assert_eq!(fpm.headers, vec![Header::new("Set-Cookie", "a=b")]);
        // A bad value is dropped too, and a later good one counts.
        let fields = lines(&["status: nope", "Status: 404"]);
        let r = script_response(Sapi::Fpm, 200, None, &fields);
        assert_eq!((r.status, r.reason.as_str(), r.headers.len()), (404, "", 0));
        // The whole decision carries it into the head.
        let plan = plan_of(&decide_with(|c| c.header_lines = lines(&["Status: 404"]))).clone();
        assert_eq!(plan.head.status, 404);
        assert_eq!(plan.head.get("Status"), None);
    }

    #[test]
    fn the_scripts_status_and_reason() {
        let custom = script_response(Sapi::Fpm, 299, Some("HTTP/1.1 299 Custom Reason"), &[]);
        assert_eq!(
            (custom.status, custom.reason.as_str()),
            (299, "Custom Reason")
        );
        // A reason for another code than the response's is not ours.
        let other = script_response(Sapi::Fpm, 404, Some("HTTP/1.1 299 Custom Reason"), &[]);
        assert_eq!((other.status, other.reason.as_str()), (404, ""));
        for bad in [0, 99, 600, -1] {
            assert_eq!(script_response(Sapi::Apache, bad, None, &[]).status, 200);
        }
        // Field values are kept byte for byte.
        let r = script_response(Sapi::Fpm, 200, None, &[b"X-Raw:  \xff\x01 ".to_vec()]);
        assert_eq!(r.headers, vec![Header::new("X-Raw", b"\xff\x01".to_vec())]);
    }

    #[test]
    fn copied_content_gets_its_hash_as_etag_unless_the_script_set_one() {
        let tag = "\"c0000000000000abc-a\"";
        let copied = decide_with(|c| c.content_etag = Some(tag.into()));
        assert_eq!(plan_of(&copied).head.get("ETag"), Some(tag));
        let own = decide_with(|c| {
            c.content_etag = Some(tag.into());
            c.header_lines = lines(&["ETag: \"v2\""]);
        });
        assert_eq!(plan_of(&own).head.get("ETag"), Some("\"v2\""));
    }

    #[test]
    fn no_decision_error_shows_a_path() {
        // What a path could leak through: the type name (its last component) and the
        // reasons for declining.
        let plan = plan_of(&decide_with(|c| c.type_name = "secret-plans.pdf".into())).clone();
        let Decision::Decline { declined, .. } = decide_with(|c| {
            c.type_name = "secret-plans.pdf".into();
            c.connection = Err("FastCGI request already ended".into());
        }) else {
            panic!("no decline");
        };
        let errors = [
            check_head_not_sent(Sapi::Fpm, true).unwrap_err(),
            fall_back(Fallback::Off, plan, declined).unwrap_err(),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.contains("secret") && !text.contains('/'), "{text}");
        }
    }

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
