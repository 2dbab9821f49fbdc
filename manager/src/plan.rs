//! Response planning: the status, the head and the bytes of a download, decided before the
//! first byte leaves.
//!
//! The extension calls [`plan`] once per `send_file()`; the manager executes the resulting
//! [`Plan`] and so does the in-process fallback, so both paths send the same response.
//!
//! Rules:
//! - The script's status and header fields are kept (`Set-Cookie`, `Cache-Control`, custom
//!   fields, a non-200 status); the fields that describe the body (`Content-Length`,
//!   `Transfer-Encoding`, `Content-Encoding`) are replaced by the file's.
//! - `Content-Type`: the `content_type` option, else the script's explicit field, else by
//!   the extension of the download name from the MIME database, else
//!   `application/octet-stream`. PHP's implicit `text/html` never reaches a file.
//! - `filename` / `inline` produce an RFC 6266 `Content-Disposition` with an ASCII fallback
//!   and an RFC 8187 `filename*` for other names.
//! - HEAD, 1xx, 204 and 304 send no body.

use std::time::SystemTime;

use crate::head::{Head, Header};

/// What the planner needs to know about the open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The request being answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// HEAD: send the head only.
    pub head_only: bool,
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
}

/// Where the response goes; FastCGI responses ask the web server not to spool them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    FastCgi,
}

/// The decided response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub head: Head,
    /// First byte of the file to send.
    pub offset: u64,
    /// Number of body bytes to send (0 for HEAD or a body-less status).
    pub length: u64,
}

/// Fields of the script that describe a body other than the file, and are replaced.
const REPLACED: [&str; 6] = [
    "Content-Length",
    "Transfer-Encoding",
    "Content-Encoding",
    "Content-Range",
    "Accept-Ranges",
    "X-Accel-Buffering",
];

/// Plans the response for sending `file`, whose download name (for the type guess, when
/// no `filename` option is given) is `path_name`.
pub fn plan(
    file: FileInfo,
    request: &Request,
    script: &ScriptResponse,
    options: &Options,
    path_name: &str,
    transport: Transport,
) -> Plan {
    let status = if script.status == 0 {
        200
    } else {
        script.status
    };
    let has_body = !(status < 200 || status == 204 || status == 304);
    let mut headers: Vec<Header> = script
        .headers
        .iter()
        .filter(|h| !REPLACED.iter().any(|n| h.is(n)))
        .filter(|h| !(options.content_type.is_some() && h.is("Content-Type")))
        .filter(|h| {
            !((options.filename.is_some() || options.inline) && h.is("Content-Disposition"))
        })
        .cloned()
        .collect();

    if !headers.iter().any(|h| h.is("Content-Type")) {
        let name = options.filename.as_deref().unwrap_or(path_name);
        let ct = options
            .content_type
            .clone()
            .unwrap_or_else(|| guess_type(name));
        headers.push(Header::new("Content-Type", ct));
    }
    if has_body {
        headers.push(Header::new("Content-Length", file.size.to_string()));
        headers.push(Header::new("Accept-Ranges", "bytes"));
    }
    if let Some(modified) = file.modified {
        if !headers.iter().any(|h| h.is("Last-Modified")) {
            headers.push(Header::new(
                "Last-Modified",
                httpdate::fmt_http_date(modified),
            ));
        }
    }
    if options.filename.is_some() || options.inline {
        let kind = if options.inline {
            "inline"
        } else {
            "attachment"
        };
        headers.push(Header::new(
            "Content-Disposition",
            content_disposition(kind, options.filename.as_deref()),
        ));
    }
    if transport == Transport::FastCgi {
        headers.push(Header::new("X-Accel-Buffering", "no"));
    }

    let length = if has_body && !request.head_only {
        file.size
    } else {
        0
    };
    Plan {
        head: Head {
            status,
            reason: script.reason.clone(),
            headers,
        },
        offset: 0,
        length,
    }
}

/// Media type by the name's extension, from the MIME database; `application/octet-stream`
/// when unknown.
pub fn guess_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// `Content-Disposition` value (RFC 6266): `kind; filename="ascii"` plus
/// `filename*=UTF-8''…` (RFC 8187) when the name is not plain printable ASCII.
pub fn content_disposition(kind: &str, filename: Option<&str>) -> String {
    let Some(name) = filename else {
        return kind.to_string();
    };
    let fallback: String = name
        .chars()
        .map(|c| {
            if (' '..='~').contains(&c) && !matches!(c, '"' | '\\' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if fallback == name {
        return format!("{kind}; filename=\"{fallback}\"");
    }
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(size: u64) -> FileInfo {
        FileInfo {
            size,
            modified: Some(UNIX_EPOCH + Duration::from_secs(784111777)),
        }
    }

    fn script(headers: &[(&str, &str)]) -> ScriptResponse {
        ScriptResponse {
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            ..ScriptResponse::default()
        }
    }

    #[test]
    fn full_file_with_type_length_and_validators() {
        let p = plan(
            file(1234),
            &Request::default(),
            &script(&[("Set-Cookie", "a=1"), ("X-Custom", "yes")]),
            &Options::default(),
            "report.pdf",
            Transport::FastCgi,
        );
        assert_eq!(p.head.status, 200);
        assert_eq!((p.offset, p.length), (0, 1234));
        assert_eq!(p.head.get("Content-Type"), Some("application/pdf"));
        assert_eq!(p.head.get("Content-Length"), Some("1234"));
        assert_eq!(p.head.get("Set-Cookie"), Some("a=1"));
        assert_eq!(p.head.get("X-Custom"), Some("yes"));
        assert_eq!(p.head.get("Accept-Ranges"), Some("bytes"));
        assert_eq!(p.head.get("X-Accel-Buffering"), Some("no"));
        assert_eq!(
            p.head.get("Last-Modified"),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
    }

    #[test]
    fn script_body_fields_are_replaced_and_its_type_wins() {
        let p = plan(
            file(10),
            &Request::default(),
            &script(&[
                ("Content-Length", "99"),
                ("Content-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "text/csv; charset=UTF-8"),
            ]),
            &Options::default(),
            "x.pdf",
            Transport::Http,
        );
        assert_eq!(p.head.get("Content-Length"), Some("10"));
        assert_eq!(p.head.get("Content-Encoding"), None);
        assert_eq!(p.head.get("Transfer-Encoding"), None);
        assert_eq!(p.head.get("Content-Type"), Some("text/csv; charset=UTF-8"));
        assert_eq!(p.head.get("X-Accel-Buffering"), None);
        let n = p
            .head
            .headers
            .iter()
            .filter(|h| h.is("Content-Length"))
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn option_type_beats_script_type_and_unknown_is_octet_stream() {
        let opts = Options {
            content_type: Some("image/png".into()),
            ..Options::default()
        };
        let p = plan(
            file(1),
            &Request::default(),
            &script(&[("Content-Type", "text/html")]),
            &opts,
            "a.bin",
            Transport::Http,
        );
        assert_eq!(p.head.get("Content-Type"), Some("image/png"));
        assert_eq!(guess_type("data.unknownext"), "application/octet-stream");
        assert_eq!(guess_type("noext"), "application/octet-stream");
    }

    #[test]
    fn head_and_bodyless_statuses_send_no_bytes() {
        let head = Request { head_only: true };
        let p = plan(
            file(50),
            &head,
            &script(&[]),
            &Options::default(),
            "a",
            Transport::Http,
        );
        assert_eq!(p.length, 0);
        assert_eq!(p.head.get("Content-Length"), Some("50"));
        let mut s = script(&[]);
        s.status = 304;
        let p = plan(
            file(50),
            &Request::default(),
            &s,
            &Options::default(),
            "a",
            Transport::Http,
        );
        assert_eq!((p.head.status, p.length), (304, 0));
        assert_eq!(p.head.get("Content-Length"), None);
    }

    #[test]
    fn script_status_and_reason_are_kept() {
        let mut s = script(&[]);
        s.status = 404;
        s.reason = "Nope".into();
        let p = plan(
            file(3),
            &Request::default(),
            &s,
            &Options::default(),
            "a",
            Transport::Http,
        );
        assert_eq!(
            (p.head.status, p.head.reason.as_str(), p.length),
            (404, "Nope", 3)
        );
    }

    #[test]
    fn content_disposition_follows_rfc6266() {
        assert_eq!(
            content_disposition("attachment", Some("report.pdf")),
            "attachment; filename=\"report.pdf\""
        );
        assert_eq!(
            content_disposition("attachment", Some("Übersicht 100%.pdf")),
            "attachment; filename=\"_bersicht 100_.pdf\"; \
             filename*=UTF-8''%C3%9Cbersicht%20100%25.pdf"
        );
        assert_eq!(
            content_disposition("inline", Some("a\"b\\c.txt")),
            "inline; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%5Cc.txt"
        );
        assert_eq!(content_disposition("inline", None), "inline");
    }

    #[test]
    fn filename_option_drives_type_and_disposition() {
        let opts = Options {
            filename: Some("résumé.pdf".into()),
            ..Options::default()
        };
        let p = plan(
            file(1),
            &Request::default(),
            &script(&[("Content-Disposition", "inline")]),
            &opts,
            "blob-1234",
            Transport::Http,
        );
        assert_eq!(p.head.get("Content-Type"), Some("application/pdf"));
        let cds: Vec<_> = p
            .head
            .headers
            .iter()
            .filter(|h| h.is("Content-Disposition"))
            .collect();
        assert_eq!(cds.len(), 1);
        assert!(cds[0]
            .value
            .starts_with("attachment; filename=\"r_sum_.pdf\"; filename*="));
    }
}
