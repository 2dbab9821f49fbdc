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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::conditional::{self, Conditions, Validators, Verdict};
use crate::head::{Head, Header};
use crate::range::{self, ByteRange, Resolved};

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

/// Fields of the script that describe a body other than the file, and are replaced.
const REPLACED: [&str; 6] = [
    "Content-Length",
    "Transfer-Encoding",
    "Content-Encoding",
    "Content-Range",
    "Accept-Ranges",
    "X-Accel-Buffering",
];

/// Fields that describe the representation, which a 304 does not carry (§15.4.5).
const NOT_IN_304: [&str; 3] = ["Content-Type", "Content-Disposition", "Content-Language"];

/// Plans the response for sending `file`, whose download name (for the type guess, when
/// no `filename` option is given) is `path_name`.
pub fn plan(
    file: FileInfo,
    request: &Request,
    script: &ScriptResponse,
    options: &Options,
    path_name: &str,
    framing: Framing,
) -> Plan {
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
    // The script's fields are passed on byte for byte; where the planner reads one (to
    // compare validators), it reads it as text.
    let find = |hs: &[Header], name: &str| hs.iter().find(|h| h.is(name)).map(|h| h.value.clone());
    let find_text = |hs: &[Header], name: &str| {
        find(hs, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    };

    // Validators: the script's own win (it may version content its own way).
    let validators = Validators {
        etag: find_text(&headers, "ETag")
            .or_else(|| Some(conditional::file_etag(file.inode, file.size, file.modified))),
        last_modified: match find_text(&headers, "Last-Modified") {
            Some(v) => httpdate::parse_http_date(&v).ok(),
            None => file.modified.map(conditional::truncate_to_seconds),
        },
    };
    if find(&headers, "ETag").is_none() {
        if let Some(etag) = &validators.etag {
            headers.push(Header::new("ETag", etag.clone()));
        }
    }
    if find(&headers, "Last-Modified").is_none() {
        if let Some(lm) = validators.last_modified {
            headers.push(Header::new("Last-Modified", httpdate::fmt_http_date(lm)));
        }
    }
    let content_type = find(&headers, "Content-Type").unwrap_or_else(|| {
        options
            .content_type
            .clone()
            .unwrap_or_else(|| guess_type(options.filename.as_deref().unwrap_or(path_name)))
            .into_bytes()
    });
    headers.retain(|h| !h.is("Content-Type"));
    if framing == Framing::FastCgi {
        headers.push(Header::new("X-Accel-Buffering", "no"));
    }

    let mut status = if script.status == 0 {
        200
    } else {
        script.status
    };
    let whole = vec![Piece::File {
        offset: 0,
        length: file.size,
    }];
    let mut body: Vec<Piece>;
    let mut representation = true;
    if !(200..300).contains(&status) || status == 204 {
        // The script's own non-2xx answer, with the file as its body (none for 204).
        body = if status < 200 || status == 204 || status == 304 {
            representation = false;
            Vec::new()
        } else {
            whole
        };
    } else {
        let safe = request.method != Method::Other;
        match conditional::evaluate(&validators, &request.conditions, safe) {
            Verdict::NotModified => {
                status = 304;
                representation = false;
                body = Vec::new();
                headers.retain(|h| !NOT_IN_304.iter().any(|n| h.is(n)));
            }
            Verdict::Failed => {
                status = 412;
                representation = false;
                body = Vec::new();
                headers.push(Header::new("Content-Length", "0"));
            }
            Verdict::Proceed => {
                let honour_range = request.method == Method::Get
                    && request.range.is_some()
                    && request
                        .conditions
                        .if_range
                        .as_deref()
                        .is_none_or(|v| conditional::if_range_holds(&validators, v));
                let resolved = match (&request.range, honour_range) {
                    (Some(r), true) => range::resolve(r, file.size),
                    _ => Resolved::Ignore,
                };
                headers.push(Header::new("Accept-Ranges", "bytes"));
                match resolved {
                    Resolved::Ignore => body = whole,
                    Resolved::Unsatisfiable => {
                        status = 416;
                        representation = false;
                        body = Vec::new();
                        headers.push(Header::new(
                            "Content-Range",
                            format!("bytes */{}", file.size),
                        ));
                        headers.push(Header::new("Content-Length", "0"));
                    }
                    Resolved::Ranges(ranges) if ranges.len() == 1 => {
                        status = 206;
                        let r = ranges[0];
                        headers.push(Header::new(
                            "Content-Range",
                            format!("bytes {}-{}/{}", r.start, r.last(), file.size),
                        ));
                        body = vec![Piece::File {
                            offset: r.start,
                            length: r.len,
                        }];
                    }
                    Resolved::Ranges(ranges) => {
                        status = 206;
                        let boundary = new_boundary();
                        body = multipart(&ranges, &content_type, file.size, &boundary);
                        // The parts carry the file's type; the whole is multipart.
                        headers.push(Header::new(
                            "Content-Type",
                            format!("multipart/byteranges; boundary={boundary}"),
                        ));
                        representation = false;
                        push_length(&mut headers, &body);
                        push_disposition(&mut headers, options);
                    }
                }
            }
        }
    }
    if representation {
        headers.push(Header::new("Content-Type", content_type));
        push_length(&mut headers, &body);
        push_disposition(&mut headers, options);
    }
    if request.method == Method::Head {
        body.clear();
    }
    Plan {
        head: Head {
            status,
            reason: if status == script.status {
                script.reason.clone()
            } else {
                String::new()
            },
            headers,
        },
        body,
    }
}

/// The plan for a small body that the worker sends itself (`handoff.inline_below`): it
/// fits the web server's buffers, so nginx may buffer it, which is faster than its
/// unbuffered relay (docs/benchmarks.md, S3).
pub fn for_inline(mut plan: Plan) -> Plan {
    plan.head.headers.retain(|h| !h.is("X-Accel-Buffering"));
    plan
}

fn push_length(headers: &mut Vec<Header>, body: &[Piece]) {
    let len: u64 = body.iter().map(Piece::len).sum();
    headers.push(Header::new("Content-Length", len.to_string()));
}

fn push_disposition(headers: &mut Vec<Header>, options: &Options) {
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
}

/// A boundary that cannot be predicted from outside (so file content cannot be crafted to
/// contain it on purpose) and differs between responses.
fn new_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32);
    // xorshift64* scrambling of the seed.
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    format!("{:016x}", x.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// The `multipart/byteranges` body (RFC 9110 §14.6): each part's head as literal bytes,
/// each part's content from the file.
fn multipart(ranges: &[ByteRange], content_type: &[u8], size: u64, boundary: &str) -> Vec<Piece> {
    let mut body = Vec::with_capacity(ranges.len() * 2 + 1);
    for r in ranges {
        let mut head = format!("\r\n--{boundary}\r\nContent-Type: ").into_bytes();
        head.extend_from_slice(content_type);
        head.extend_from_slice(
            format!(
                "\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                r.start,
                r.last()
            )
            .as_bytes(),
        );
        body.push(Piece::Bytes(head));
        body.push(Piece::File {
            offset: r.start,
            length: r.len,
        });
    }
    body.push(Piece::Bytes(format!("\r\n--{boundary}--\r\n").into_bytes()));
    body
}

/// Media type by the name's extension, from the MIME database, with `charset=utf-8` for
/// text types; `application/octet-stream` when unknown.
pub fn guess_type(name: &str) -> String {
    match mime_guess::from_path(name).first_raw() {
        Some(t) if t.starts_with("text/") => format!("{t}; charset=utf-8"),
        Some(t) => t.to_string(),
        None => "application/octet-stream".to_string(),
    }
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

    const SIZE: u64 = 1000;
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const EARLIER: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
    const LATER: &str = "Sun, 06 Nov 1994 08:49:38 GMT";

    fn file(size: u64) -> FileInfo {
        FileInfo {
            size,
            modified: Some(UNIX_EPOCH + Duration::from_millis(784_111_777_400)),
            inode: 7,
        }
    }

    fn etag() -> String {
        conditional::file_etag(7, SIZE, file(SIZE).modified)
    }

    fn script(headers: &[(&str, &str)]) -> ScriptResponse {
        ScriptResponse {
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            ..ScriptResponse::default()
        }
    }

    fn request(method: Method, fields: &[(&str, &str)]) -> Request {
        let mut r = Request {
            method,
            ..Request::default()
        };
        for (name, value) in fields {
            let v = Some(value.replace("{E}", &etag()));
            match *name {
                "Range" => r.range = v,
                "If-Match" => r.conditions.if_match = v,
                "If-None-Match" => r.conditions.if_none_match = v,
                "If-Modified-Since" => r.conditions.if_modified_since = v,
                "If-Unmodified-Since" => r.conditions.if_unmodified_since = v,
                "If-Range" => r.conditions.if_range = v,
                other => panic!("unknown field {other}"),
            }
        }
        r
    }

    fn file_ranges(p: &Plan) -> Vec<(u64, u64)> {
        p.body
            .iter()
            .filter_map(|piece| match piece {
                Piece::File { offset, length } => Some((*offset, *length)),
                Piece::Bytes(_) => None,
            })
            .collect()
    }

    struct Case {
        rfc: &'static str,
        method: Method,
        fields: &'static [(&'static str, &'static str)],
        script_status: u16,
        status: u16,
        ranges: &'static [(u64, u64)],
        content_range: Option<&'static str>,
    }

    const fn case(
        rfc: &'static str,
        method: Method,
        fields: &'static [(&'static str, &'static str)],
        status: u16,
        ranges: &'static [(u64, u64)],
        content_range: Option<&'static str>,
    ) -> Case {
        Case {
            rfc,
            method,
            fields,
            script_status: 200,
            status,
            ranges,
            content_range,
        }
    }

    use Method::{Get, Head, Other};
    const ALL: &[(u64, u64)] = &[(0, SIZE)];
    const NONE: &[(u64, u64)] = &[];

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // Plain requests.
        case("§9.3.1 GET", Get, &[], 200, ALL, None),
        case("§9.3.2 HEAD has GET's head, no body", Head, &[], 200, NONE, None),
        case("§9.3.3 POST gets the file", Other, &[], 200, ALL, None),
        // Single ranges (§14.1.2).
        case("§14.1.2 first-last", Get, &[("Range", "bytes=0-499")], 206, &[(0, 500)], Some("bytes 0-499/1000")),
        case("§14.1.2 first byte", Get, &[("Range", "bytes=0-0")], 206, &[(0, 1)], Some("bytes 0-0/1000")),
        case("§14.1.2 last byte by position", Get, &[("Range", "bytes=999-999")], 206, &[(999, 1)], Some("bytes 999-999/1000")),
        case("§14.1.2 open range", Get, &[("Range", "bytes=500-")], 206, &[(500, 500)], Some("bytes 500-999/1000")),
        case("§14.1.2 suffix", Get, &[("Range", "bytes=-200")], 206, &[(800, 200)], Some("bytes 800-999/1000")),
        case("§14.1.2 suffix of one", Get, &[("Range", "bytes=-1")], 206, &[(999, 1)], Some("bytes 999-999/1000")),
        case("§14.1.2 suffix longer than file", Get, &[("Range", "bytes=-2000")], 206, ALL, Some("bytes 0-999/1000")),
        case("§14.1.2 suffix equal to file", Get, &[("Range", "bytes=-1000")], 206, ALL, Some("bytes 0-999/1000")),
        case("§14.1.2 last beyond end is clamped", Get, &[("Range", "bytes=900-5000")], 206, &[(900, 100)], Some("bytes 900-999/1000")),
        case("§14.1.2 whole file as range", Get, &[("Range", "bytes=0-")], 206, ALL, Some("bytes 0-999/1000")),
        case("§14.1.1 unit is case-insensitive", Get, &[("Range", "BYTES=1-2")], 206, &[(1, 2)], Some("bytes 1-2/1000")),
        case("§14.1.1 whitespace around members", Get, &[("Range", "bytes= 1-2 ")], 206, &[(1, 2)], Some("bytes 1-2/1000")),
        case("§14.1.1 unsatisfiable member dropped", Get, &[("Range", "bytes=5000-,10-19")], 206, &[(10, 10)], Some("bytes 10-19/1000")),
        // Several ranges (§14.6).
        case("§14.6 two ranges multipart", Get, &[("Range", "bytes=0-9,20-29")], 206, &[(0, 10), (20, 10)], None),
        case("§14.6 three ranges in request order", Get, &[("Range", "bytes=50-59,0-9,-5")], 206, &[(50, 10), (0, 10), (995, 5)], None),
        case("§14.6 small overlap kept", Get, &[("Range", "bytes=0-9,5-14")], 206, &[(0, 10), (5, 10)], None),
        case("§14.2 overlapping beyond size ignored", Get, &[("Range", "bytes=0-999,0-999")], 200, ALL, None),
        case("§5.6.1 empty list members ignored", Get, &[("Range", "bytes=,0-0,")], 206, &[(0, 1)], Some("bytes 0-0/1000")),
        // Invalid Range headers are ignored (§14.2).
        case("§14.2 non-numeric", Get, &[("Range", "bytes=abc")], 200, ALL, None),
        case("§14.2 last before first", Get, &[("Range", "bytes=5-1")], 200, ALL, None),
        case("§14.2 other unit", Get, &[("Range", "pages=1-2")], 200, ALL, None),
        case("§14.2 empty set", Get, &[("Range", "bytes=")], 200, ALL, None),
        case("§14.2 missing equals", Get, &[("Range", "bytes 0-1")], 200, ALL, None),
        case("§14.2 double dash", Get, &[("Range", "bytes=--5")], 200, ALL, None),
        case("§14.2 signed number", Get, &[("Range", "bytes=+1-2")], 200, ALL, None),
        case("§14.2 no whitespace around =", Get, &[("Range", "bytes = 0-9")], 200, ALL, None),
        case("§14.2 one bad member spoils the set", Get, &[("Range", "bytes=0-1,x")], 200, ALL, None),
        // Unsatisfiable (§15.5.17).
        case("§15.5.17 first beyond end", Get, &[("Range", "bytes=1000-")], 416, NONE, Some("bytes */1000")),
        case("§15.5.17 far beyond end", Get, &[("Range", "bytes=5000-6000")], 416, NONE, Some("bytes */1000")),
        case("§15.5.17 zero suffix", Get, &[("Range", "bytes=-0")], 416, NONE, Some("bytes */1000")),
        case("§15.5.17 all members unsatisfiable", Get, &[("Range", "bytes=1000-1001,2000-")], 416, NONE, Some("bytes */1000")),
        // Ranges apply to GET only (§14.2).
        case("§14.2 HEAD ignores Range", Head, &[("Range", "bytes=0-1")], 200, NONE, None),
        case("§14.2 POST ignores Range", Other, &[("Range", "bytes=0-1")], 200, ALL, None),
        // If-Range (§13.1.5).
        case("§13.1.5 matching strong tag", Get, &[("Range", "bytes=0-9"), ("If-Range", "{E}")], 206, &[(0, 10)], Some("bytes 0-9/1000")),
        case("§13.1.5 other tag sends 200", Get, &[("Range", "bytes=0-9"), ("If-Range", "\"nope\"")], 200, ALL, None),
        case("§13.1.5 weak tag never matches", Get, &[("Range", "bytes=0-9"), ("If-Range", "W/{E}")], 200, ALL, None),
        case("§13.1.5 exact date", Get, &[("Range", "bytes=0-9"), ("If-Range", LM)], 206, &[(0, 10)], Some("bytes 0-9/1000")),
        case("§13.1.5 later date is not exact", Get, &[("Range", "bytes=0-9"), ("If-Range", LATER)], 200, ALL, None),
        case("§13.1.5 earlier date", Get, &[("Range", "bytes=0-9"), ("If-Range", EARLIER)], 200, ALL, None),
        case("§13.1.5 invalid value", Get, &[("Range", "bytes=0-9"), ("If-Range", "yesterday")], 200, ALL, None),
        case("§13.1.5 If-Range without Range", Get, &[("If-Range", "{E}")], 200, ALL, None),
        case("§13.1.5 unsatisfiable still 416 when it holds", Get, &[("Range", "bytes=2000-"), ("If-Range", "{E}")], 416, NONE, Some("bytes */1000")),
        // If-None-Match (§13.1.2).
        case("§13.1.2 matching tag: 304", Get, &[("If-None-Match", "{E}")], 304, NONE, None),
        case("§13.1.2 weak form matches weakly", Get, &[("If-None-Match", "W/{E}")], 304, NONE, None),
        case("§13.1.2 list with match", Get, &[("If-None-Match", "\"a\", {E}")], 304, NONE, None),
        case("§13.1.2 star", Get, &[("If-None-Match", "*")], 304, NONE, None),
        case("§13.1.2 no match", Get, &[("If-None-Match", "\"a\", \"b\"")], 200, ALL, None),
        case("§13.1.2 HEAD matching: 304", Head, &[("If-None-Match", "{E}")], 304, NONE, None),
        case("§13.1.2 POST matching: 412", Other, &[("If-None-Match", "{E}")], 412, NONE, None),
        case("§13.2.2 304 beats Range", Get, &[("If-None-Match", "{E}"), ("Range", "bytes=0-1")], 304, NONE, None),
        // If-Modified-Since (§13.1.3).
        case("§13.1.3 same date: 304", Get, &[("If-Modified-Since", LM)], 304, NONE, None),
        case("§13.1.3 later date: 304", Get, &[("If-Modified-Since", LATER)], 304, NONE, None),
        case("§13.1.3 earlier date: 200", Get, &[("If-Modified-Since", EARLIER)], 200, ALL, None),
        case("§13.1.3 invalid date ignored", Get, &[("If-Modified-Since", "not a date")], 200, ALL, None),
        case("§13.1.3 obsolete RFC 850 date", Get, &[("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")], 304, NONE, None),
        case("§13.1.3 asctime date", Get, &[("If-Modified-Since", "Sun Nov  6 08:49:37 1994")], 304, NONE, None),
        case("§13.1.3 ignored for POST", Other, &[("If-Modified-Since", LM)], 200, ALL, None),
        case("§13.1.3 ignored with If-None-Match", Get, &[("If-None-Match", "\"a\""), ("If-Modified-Since", LM)], 200, ALL, None),
        case("§13.1.3 with Range, modified: 206", Get, &[("If-Modified-Since", EARLIER), ("Range", "bytes=0-0")], 206, &[(0, 1)], Some("bytes 0-0/1000")),
        // If-Match (§13.1.1).
        case("§13.1.1 matching strong tag", Get, &[("If-Match", "{E}")], 200, ALL, None),
        case("§13.1.1 weak tag fails", Get, &[("If-Match", "W/{E}")], 412, NONE, None),
        case("§13.1.1 star", Get, &[("If-Match", "*")], 200, ALL, None),
        case("§13.1.1 no match", Get, &[("If-Match", "\"a\"")], 412, NONE, None),
        case("§13.1.1 list with match", Get, &[("If-Match", "\"a\",{E}")], 200, ALL, None),
        case("§13.2.2 If-Match beats If-None-Match", Get, &[("If-Match", "\"a\""), ("If-None-Match", "{E}")], 412, NONE, None),
        case("§13.2.2 412 beats Range", Get, &[("If-Match", "\"a\""), ("Range", "bytes=0-1")], 412, NONE, None),
        // If-Unmodified-Since (§13.1.4).
        case("§13.1.4 same date", Get, &[("If-Unmodified-Since", LM)], 200, ALL, None),
        case("§13.1.4 earlier date: 412", Get, &[("If-Unmodified-Since", EARLIER)], 412, NONE, None),
        case("§13.1.4 invalid date ignored", Get, &[("If-Unmodified-Since", "soon")], 200, ALL, None),
        case("§13.2.2 ignored when If-Match present", Get, &[("If-Match", "{E}"), ("If-Unmodified-Since", EARLIER)], 200, ALL, None),
        case("§13.1.4 with Range", Get, &[("If-Unmodified-Since", LATER), ("Range", "bytes=-3")], 206, &[(997, 3)], Some("bytes 997-999/1000")),
    ];

    #[test]
    fn rfc9110_table() {
        assert!(CASES.len() >= 60, "only {} cases", CASES.len());
        for c in CASES {
            let mut s = script(&[]);
            s.status = c.script_status;
            let p = plan(
                file(SIZE),
                &request(c.method, c.fields),
                &s,
                &Options::default(),
                "a.bin",
                Framing::Http,
            );
            assert_eq!(p.head.status, c.status, "{}: status", c.rfc);
            assert_eq!(file_ranges(&p), c.ranges, "{}: body", c.rfc);
            assert_eq!(p.head.get("Content-Range"), c.content_range, "{}", c.rfc);
            let len: u64 = p
                .head
                .get("Content-Length")
                .map_or(0, |v| v.parse().unwrap());
            if c.method != Head && c.status != 304 {
                assert_eq!(len, p.body_len(), "{}: Content-Length", c.rfc);
            }
            p.head.validate().unwrap();
        }
    }

    #[test]
    fn head_gets_the_same_head_as_get() {
        for fields in [
            &[][..],
            &[("Range", "bytes=0-9")][..],
            &[("If-None-Match", "{E}")][..],
        ] {
            let g = plan(
                file(SIZE),
                &request(Get, fields),
                &script(&[]),
                &Options::default(),
                "a.pdf",
                Framing::Http,
            );
            let h = plan(
                file(SIZE),
                &request(Head, fields),
                &script(&[]),
                &Options::default(),
                "a.pdf",
                Framing::Http,
            );
            if fields.iter().any(|(n, _)| *n == "Range") {
                // §14.2: HEAD ignores Range, so compare with a plain GET's head.
                let plain = plan(
                    file(SIZE),
                    &request(Get, &[]),
                    &script(&[]),
                    &Options::default(),
                    "a.pdf",
                    Framing::Http,
                );
                assert_eq!(h.head, plain.head);
            } else {
                assert_eq!(g.head, h.head);
            }
            assert!(h.body.is_empty());
        }
    }

    #[test]
    fn multipart_body_frames_each_part() {
        let p = plan(
            file(SIZE),
            &request(Get, &[("Range", "bytes=0-9,20-29")]),
            &script(&[]),
            &Options::default(),
            "a.pdf",
            Framing::Http,
        );
        let ct = p.head.get("Content-Type").unwrap();
        let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
        let Piece::Bytes(first) = &p.body[0] else {
            panic!("part head")
        };
        let first = String::from_utf8_lossy(first);
        assert_eq!(
            first,
            format!("\r\n--{boundary}\r\nContent-Type: application/pdf\r\nContent-Range: bytes 0-9/1000\r\n\r\n")
        );
        let Piece::Bytes(last) = p.body.last().unwrap() else {
            panic!("closing delimiter")
        };
        assert_eq!(
            String::from_utf8_lossy(last),
            format!("\r\n--{boundary}--\r\n")
        );
        assert_eq!(
            p.head.get("Content-Length"),
            Some(p.body_len().to_string().as_str())
        );
    }

    #[test]
    fn not_modified_keeps_validators_and_caching_fields_only() {
        // §15.4.5
        let p = plan(
            file(SIZE),
            &request(Get, &[("If-None-Match", "{E}")]),
            &script(&[
                ("Cache-Control", "max-age=60"),
                ("Vary", "Cookie"),
                ("Expires", LATER),
                ("Content-Type", "text/csv"),
            ]),
            &Options {
                filename: Some("a.csv".into()),
                ..Options::default()
            },
            "a.bin",
            Framing::Http,
        );
        assert_eq!(p.head.status, 304);
        assert_eq!(p.head.get("ETag"), Some(etag().as_str()));
        assert_eq!(p.head.get("Last-Modified"), Some(LM));
        assert_eq!(p.head.get("Cache-Control"), Some("max-age=60"));
        assert_eq!(p.head.get("Vary"), Some("Cookie"));
        assert_eq!(p.head.get("Expires"), Some(LATER));
        for absent in ["Content-Type", "Content-Length", "Content-Disposition"] {
            assert_eq!(p.head.get(absent), None, "{absent}");
        }
        assert!(p.body.is_empty());
    }

    #[test]
    fn non_2xx_script_status_is_kept_without_conditionals_or_ranges() {
        let mut s = script(&[]);
        s.status = 404;
        s.reason = "Nope".into();
        let p = plan(
            file(SIZE),
            &request(Get, &[("Range", "bytes=0-1"), ("If-None-Match", "{E}")]),
            &s,
            &Options::default(),
            "a",
            Framing::Http,
        );
        assert_eq!((p.head.status, p.head.reason.as_str()), (404, "Nope"));
        assert_eq!(file_ranges(&p), ALL);
        assert_eq!(p.head.get("Content-Range"), None);
    }

    #[test]
    fn script_validators_win() {
        let p = plan(
            file(SIZE),
            &request(Get, &[("If-None-Match", "\"v2\"")]),
            &script(&[("ETag", "\"v2\"")]),
            &Options::default(),
            "a",
            Framing::Http,
        );
        assert_eq!(p.head.status, 304);
        assert_eq!(p.head.headers.iter().filter(|h| h.is("ETag")).count(), 1);
    }

    #[test]
    fn full_file_with_type_length_and_validators() {
        let p = plan(
            file(1234),
            &Request::default(),
            &script(&[("Set-Cookie", "a=1"), ("X-Custom", "yes")]),
            &Options::default(),
            "report.pdf",
            Framing::FastCgi,
        );
        assert_eq!(p.head.status, 200);
        assert_eq!(
            p.body,
            vec![Piece::File {
                offset: 0,
                length: 1234
            }]
        );
        assert_eq!(p.head.get("Content-Type"), Some("application/pdf"));
        assert_eq!(p.head.get("Content-Length"), Some("1234"));
        assert_eq!(p.head.get("Set-Cookie"), Some("a=1"));
        assert_eq!(p.head.get("X-Custom"), Some("yes"));
        assert_eq!(p.head.get("Accept-Ranges"), Some("bytes"));
        assert_eq!(p.head.get("X-Accel-Buffering"), Some("no"));
        assert_eq!(p.head.get("Last-Modified"), Some(LM));
        assert!(p.head.get("ETag").is_some());
    }

    #[test]
    fn inline_plans_let_the_web_server_buffer() {
        let p = plan(
            file(10),
            &Request::default(),
            &script(&[("X-Custom", "1")]),
            &Options::default(),
            "a.bin",
            Framing::FastCgi,
        );
        assert_eq!(p.head.get("X-Accel-Buffering"), Some("no"));
        let inline = for_inline(p.clone());
        assert_eq!(inline.head.get("X-Accel-Buffering"), None);
        assert_eq!(inline.head.get("X-Custom"), Some("1"));
        assert_eq!(inline.body, p.body);
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
            Framing::Http,
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
            Framing::Http,
        );
        assert_eq!(p.head.get("Content-Type"), Some("image/png"));
        assert_eq!(guess_type("data.unknownext"), "application/octet-stream");
        assert_eq!(guess_type("noext"), "application/octet-stream");
        assert_eq!(guess_type("notes.txt"), "text/plain; charset=utf-8");
    }

    #[test]
    fn zero_length_file_and_bodyless_script_status() {
        let p = plan(
            file(0),
            &Request::default(),
            &script(&[]),
            &Options::default(),
            "a",
            Framing::Http,
        );
        assert_eq!((p.head.status, p.body_len()), (200, 0));
        assert_eq!(p.head.get("Content-Length"), Some("0"));
        let mut s = script(&[]);
        s.status = 204;
        let p = plan(
            file(50),
            &Request::default(),
            &s,
            &Options::default(),
            "a",
            Framing::Http,
        );
        assert_eq!((p.head.status, p.body_len()), (204, 0));
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
            Framing::Http,
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
            .starts_with(b"attachment; filename=\"r_sum_.pdf\"; filename*="));
    }
}
