//! The differential test: one matrix of requests (every range form, every conditional header,
//! HEAD, combinations) sent to nginx serving the file statically and to `send_file()` on
//! four paths: nginx + php-fpm with the manager, the same without it (the in-process
//! fallback), and `php -S` with and without the manager.
//!
//! Compared: status, `Content-Range`, `Content-Length`, `Content-Type` and the body bytes,
//! with multipart boundaries replaced by a placeholder first. Our four paths must agree
//! exactly. Where we differ from nginx, the case names an [`Expected`] difference with the
//! RFC 9110 section that makes ours right (or acceptable): the test fails when a difference
//! appears that is not listed, and when a listed one disappears. The table "Differences from
//! nginx" in docs/behaviour.md lists the same differences.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::time::{Duration, UNIX_EPOCH};

use crate::util::{Config, Endpoint, Kind, Stack};

/// The binary file: big enough that ranges, suffixes and overlaps are all meaningful.
const PDF: &str = "report.pdf";
const PDF_SIZE: u64 = 100_000;
/// One text file, for the charset difference.
const TXT: &str = "notes.txt";
/// Every copy of the files gets this mtime (Tue, 14 Nov 2023 22:13:20 GMT), so that an hour
/// after it is still in the past: a date in the future would be a different case.
const MTIME: u64 = 1_700_000_000;

/// What is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Status,
    ContentRange,
    ContentLength,
    ContentType,
    Body,
}

const FIELDS: [Field; 5] = [
    Field::Status,
    Field::ContentRange,
    Field::ContentLength,
    Field::ContentType,
    Field::Body,
];

/// One response, reduced to what is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    status: u16,
    content_range: Option<String>,
    content_length: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// The multipart boundary the server chose (already replaced in the fields above).
    boundary: Option<String>,
    /// Validators, to build the requests that need them (not compared: each server has
    /// its own format).
    etag: Option<String>,
    last_modified: Option<String>,
}

impl View {
    fn field(&self, f: Field) -> String {
        match f {
            Field::Status => self.status.to_string(),
            Field::ContentRange => format!("{:?}", self.content_range),
            Field::ContentLength => format!("{:?}", self.content_length),
            Field::ContentType => format!("{:?}", self.content_type),
            Field::Body => {
                let text = String::from_utf8_lossy(&self.body);
                let short: String = text.chars().take(60).collect();
                format!("{} bytes {short:?}", self.body.len())
            }
        }
    }

    fn same(&self, other: &View, f: Field) -> bool {
        match f {
            Field::Body => self.body == other.body,
            _ => self.field(f) == other.field(f),
        }
    }

    fn is_html(&self) -> bool {
        self.content_type.as_deref() == Some("text/html")
            && String::from_utf8_lossy(&self.body).contains("<html>")
    }

    fn is_empty_error(&self, status: u16) -> bool {
        self.status == status
            && self.content_length.as_deref() == Some("0")
            && self.content_type.is_none()
            && self.body.is_empty()
    }
}

/// Why a difference from nginx is there (the table in docs/behaviour.md says the same). A difference
/// where nginx is right is a bug of ours: fix it, don't list it.
enum Why {
    /// Ours is right or acceptable: the reason, with the RFC section.
    Right(&'static str),
}

/// A difference from nginx, expected in one case on all four of our paths.
struct Expected {
    name: &'static str,
    why: Why,
    /// The compared fields that differ; all others must be equal.
    fields: &'static [Field],
    /// What nginx sends in this case, and what we send.
    nginx: fn(&View) -> bool,
    ours: fn(&View) -> bool,
}

const ERROR_PAGE_416: Expected = Expected {
    name: "416 without an error page",
    why: Why::Right(
        "RFC 9110 §15.5.17 asks only for Content-Range: bytes */SIZE; a download \
             has no use for nginx's HTML page, and an empty body is never mistaken for \
             file content",
    ),
    fields: &[Field::ContentLength, Field::ContentType, Field::Body],
    nginx: |v| v.status == 416 && v.is_html(),
    ours: |v| v.is_empty_error(416),
};

const ERROR_PAGE_412: Expected = Expected {
    name: "412 without an error page",
    why: Why::Right(
        "RFC 9110 §15.5.13 defines no content for 412; the client asked for a \
             conditional transfer, not for a page",
    ),
    fields: &[Field::ContentLength, Field::ContentType, Field::Body],
    nginx: |v| v.status == 412 && v.is_html(),
    ours: |v| v.is_empty_error(412),
};

const HEAD_IGNORES_RANGE: Expected = Expected {
    name: "HEAD ignores Range",
    why: Why::Right(
        "RFC 9110 §14.2: GET is the only method for which range handling is defined, \
             and a server MUST ignore Range on other methods; HEAD then gets the head GET \
             without Range would get (§9.3.2). nginx answers 206",
    ),
    fields: &[Field::Status, Field::ContentRange, Field::ContentLength],
    nginx: |v| v.status == 206 && v.content_range.is_some(),
    ours: |v| {
        v.status == 200
            && v.content_range.is_none()
            && v.content_length.as_deref() == Some(&PDF_SIZE.to_string())
    },
};

const IMS_LATER_IS_304: Expected = Expected {
    name: "If-Modified-Since later than Last-Modified gives 304",
    why: Why::Right(
        "RFC 9110 §13.1.3: the condition is false when the representation was not \
             modified after the date, so a later date than Last-Modified gives 304; nginx \
             (if_modified_since exact, its default) only answers 304 to the exact date",
    ),
    fields: &[
        Field::Status,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 200,
    ours: |v| v.status == 304 && v.body.is_empty(),
};

const INM_OVERRIDES_IMS: Expected = Expected {
    name: "If-None-Match decides, If-Modified-Since is ignored",
    why: Why::Right(
        "RFC 9110 §13.1.3: a recipient MUST ignore If-Modified-Since when the request \
             has If-None-Match (§13.2.2 step 3 before 4); nginx evaluates both and sends \
             200 because the date is older",
    ),
    fields: &[
        Field::Status,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 200,
    ours: |v| v.status == 304 && v.body.is_empty(),
};

const IM_OVERRIDES_IUS: Expected = Expected {
    name: "If-Match decides, If-Unmodified-Since is ignored",
    why: Why::Right(
        "RFC 9110 §13.1.4: a recipient MUST ignore If-Unmodified-Since when the \
             request has If-Match (§13.2.2 step 1 before 2); nginx evaluates both and \
             sends 412 because the date is older",
    ),
    fields: &[
        Field::Status,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 412,
    ours: |v| v.status == 200 && v.body.len() as u64 == PDF_SIZE,
};

const IUS_INVALID_IGNORED: Expected = Expected {
    name: "an invalid If-Unmodified-Since date is ignored",
    why: Why::Right(
        "RFC 9110 §13.1.4: a recipient MUST ignore If-Unmodified-Since if the value is \
             not a valid HTTP-date; nginx treats it as failed and sends 412",
    ),
    fields: &[
        Field::Status,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 412,
    ours: |v| v.status == 200 && v.body.len() as u64 == PDF_SIZE,
};

const TOO_MANY_RANGES: Expected = Expected {
    name: "more than 32 ranges: the whole file",
    why: Why::Right(
        "RFC 9110 §14.2 lets a server ignore a Range with many small or overlapping \
             ranges, and §17.15 warns of the cost; nginx (max_ranges unset) serves all of \
             them",
    ),
    fields: &[
        Field::Status,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 206 && v.boundary.is_some(),
    ours: |v| v.status == 200 && v.body.len() as u64 == PDF_SIZE,
};

const MALFORMED_RANGE_IGNORED: Expected = Expected {
    name: "a malformed Range is ignored, not refused",
    why: Why::Right(
        "RFC 9110 §14.2 lets a server ignore or reject an invalid ranges-specifier; \
         ignoring it sends the file the client asked for (a 416 leaves a download with \
         nothing). nginx rejects with 416 when the value starts with `bytes=` but does not \
         parse",
    ),
    fields: &[
        Field::Status,
        Field::ContentRange,
        Field::ContentLength,
        Field::ContentType,
        Field::Body,
    ],
    nginx: |v| v.status == 416 && v.is_html(),
    ours: |v| v.status == 200 && v.body.len() as u64 == PDF_SIZE,
};

/// A defect of one of our paths only: its effect is undone before the comparison (so the
/// rest of those responses is still checked) and it is reported; the test fails once it no
/// longer shows, so that the entry goes with the fix.
struct KnownBug {
    name: &'static str,
    /// The paths it shows on (each must still show it).
    targets: &'static [&'static str],
    description: &'static str,
    shows: fn(&View) -> bool,
    undo: fn(&mut View),
}

/// None at the moment: the spaces-around-`=` Range parsing and the fallback's default
/// Content-Type on body-less answers were both fixed after this test found them.
const KNOWN_BUGS: &[KnownBug] = &[];

const TEXT_CHARSET: Expected = Expected {
    name: "charset=utf-8 on text types",
    why: Why::Right(
        "RFC 9110 §8.3.2 lets the sender name the charset; without it text/plain \
             defaults to US-ASCII (RFC 2046 §4.1.2) and browsers guess. nginx adds a \
             charset only with its `charset` directive",
    ),
    fields: &[Field::ContentType],
    nginx: |v| v.content_type.as_deref() == Some("text/plain"),
    ours: |v| v.content_type.as_deref() == Some("text/plain; charset=utf-8"),
};

/// One request of the matrix. In header values `{etag}` is the server's own ETag, `{lm}`
/// its Last-Modified, `{lm-1h}` / `{lm+1h}` an hour before / after it.
struct Case {
    name: &'static str,
    head: bool,
    file: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Option<&'static Expected>,
}

const fn get(name: &'static str, headers: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        name,
        head: false,
        file: PDF,
        headers,
        expect: None,
    }
}

const fn head(name: &'static str, headers: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        name,
        head: true,
        file: PDF,
        headers,
        expect: None,
    }
}

impl Why {
    fn text(&self) -> String {
        match self {
            Why::Right(reason) => format!("ours is right: {reason}"),
        }
    }
}

impl Case {
    const fn differs(mut self, e: &'static Expected) -> Case {
        self.expect = Some(e);
        self
    }

    const fn on(mut self, file: &'static str) -> Case {
        self.file = file;
        self
    }
}

const MATRIX: &[Case] = &[
    // Ranges (RFC 9110 §14.1, §14.2).
    get("plain GET", &[]),
    get("first byte", &[("Range", "bytes=0-0")]),
    get("closed range", &[("Range", "bytes=100-199")]),
    get(
        "closed range past the end",
        &[("Range", "bytes=99000-200000")],
    ),
    get("open range", &[("Range", "bytes=99900-")]),
    get("open range from 0", &[("Range", "bytes=0-")]),
    get("last byte", &[("Range", "bytes=99999-99999")]),
    get("suffix", &[("Range", "bytes=-500")]),
    get("suffix as big as the file", &[("Range", "bytes=-100000")]),
    get("suffix bigger than the file", &[("Range", "bytes=-200000")]),
    get("unit in capitals", &[("Range", "Bytes=0-9")]),
    get("two ranges", &[("Range", "bytes=0-9,500-509")]),
    get(
        "three ranges, not in order",
        &[("Range", "bytes=900-999,0-9,-10")],
    ),
    get("overlapping ranges", &[("Range", "bytes=0-99,50-149")]),
    get("overlap larger than the file", &[("Range", "bytes=0-,0-")]),
    get(
        "spaces around commas",
        &[("Range", "bytes=0-9, 20-29 ,40-49")],
    ),
    get(
        "33 ranges",
        &[(
            "Range",
            "bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,24-24,\
             26-26,28-28,30-30,32-32,34-34,36-36,38-38,40-40,42-42,44-44,46-46,48-48,\
             50-50,52-52,54-54,56-56,58-58,60-60,62-62,64-64",
        )],
    )
    .differs(&TOO_MANY_RANGES),
    get(
        "one of two ranges unsatisfiable",
        &[("Range", "bytes=200000-300000,0-1")],
    ),
    get(
        "unsatisfiable: first byte past the end",
        &[("Range", "bytes=100000-")],
    )
    .differs(&ERROR_PAGE_416),
    get("unsatisfiable: suffix of zero", &[("Range", "bytes=-0")]).differs(&ERROR_PAGE_416),
    get(
        "unsatisfiable: all ranges past the end",
        &[("Range", "bytes=100000-100001,200000-")],
    )
    .differs(&ERROR_PAGE_416),
    // Malformed Range values are ignored (§14.2).
    get("malformed: letters", &[("Range", "bytes=abc")]).differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: empty set", &[("Range", "bytes=")]),
    get("malformed: unknown unit", &[("Range", "items=0-9")]),
    get("malformed: no equals sign", &[("Range", "bytes 0-9")]),
    get("malformed: double dash", &[("Range", "bytes=--1")]).differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: hex number", &[("Range", "bytes=0x1-2")]).differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: three numbers", &[("Range", "bytes=1-2-3")]).differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: last before first", &[("Range", "bytes=5-1")])
        .differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: dash only", &[("Range", "bytes=-")]).differs(&MALFORMED_RANGE_IGNORED),
    get("malformed: spaces around =", &[("Range", "bytes = 0-9")]),
    get("malformed: space after =", &[("Range", "bytes= 0-9")]),
    get(
        "malformed: one bad range of two",
        &[("Range", "bytes=0-9,abc")],
    )
    .differs(&MALFORMED_RANGE_IGNORED),
    // If-Range (§13.1.5).
    get(
        "If-Range: current ETag",
        &[("Range", "bytes=0-99"), ("If-Range", "{etag}")],
    ),
    get(
        "If-Range: other ETag",
        &[("Range", "bytes=0-99"), ("If-Range", "\"other\"")],
    ),
    get(
        "If-Range: weak ETag",
        &[("Range", "bytes=0-99"), ("If-Range", "W/{etag}")],
    ),
    get(
        "If-Range: Last-Modified",
        &[("Range", "bytes=0-99"), ("If-Range", "{lm}")],
    ),
    get(
        "If-Range: earlier date",
        &[("Range", "bytes=0-99"), ("If-Range", "{lm-1h}")],
    ),
    // If-Match (§13.1.1) and If-Unmodified-Since (§13.1.4).
    get("If-Match: current ETag", &[("If-Match", "{etag}")]),
    get("If-Match: list with it", &[("If-Match", "\"a\", {etag}")]),
    get("If-Match: *", &[("If-Match", "*")]),
    get("If-Match: other ETag", &[("If-Match", "\"other\"")]).differs(&ERROR_PAGE_412),
    get("If-Match: weak ETag", &[("If-Match", "W/{etag}")]).differs(&ERROR_PAGE_412),
    get(
        "If-Unmodified-Since: equal",
        &[("If-Unmodified-Since", "{lm}")],
    ),
    get(
        "If-Unmodified-Since: later",
        &[("If-Unmodified-Since", "{lm+1h}")],
    ),
    get(
        "If-Unmodified-Since: earlier",
        &[("If-Unmodified-Since", "{lm-1h}")],
    )
    .differs(&ERROR_PAGE_412),
    get(
        "If-Unmodified-Since: invalid",
        &[("If-Unmodified-Since", "yesterday")],
    )
    .differs(&IUS_INVALID_IGNORED),
    get(
        "If-Match beats If-Unmodified-Since",
        &[("If-Match", "{etag}"), ("If-Unmodified-Since", "{lm-1h}")],
    )
    .differs(&IM_OVERRIDES_IUS),
    // If-None-Match (§13.1.2) and If-Modified-Since (§13.1.3).
    get(
        "If-None-Match: current ETag",
        &[("If-None-Match", "{etag}")],
    ),
    get("If-None-Match: weak ETag", &[("If-None-Match", "W/{etag}")]),
    get(
        "If-None-Match: list with it",
        &[("If-None-Match", "\"a\", {etag}")],
    ),
    get("If-None-Match: *", &[("If-None-Match", "*")]),
    get(
        "If-None-Match: other ETag",
        &[("If-None-Match", "\"other\"")],
    ),
    get("If-Modified-Since: equal", &[("If-Modified-Since", "{lm}")]),
    get(
        "If-Modified-Since: earlier",
        &[("If-Modified-Since", "{lm-1h}")],
    ),
    get(
        "If-Modified-Since: later",
        &[("If-Modified-Since", "{lm+1h}")],
    )
    .differs(&IMS_LATER_IS_304),
    get(
        "If-Modified-Since: invalid",
        &[("If-Modified-Since", "yesterday")],
    ),
    get(
        "If-None-Match beats If-Modified-Since (no match, same date)",
        &[
            ("If-None-Match", "\"other\""),
            ("If-Modified-Since", "{lm}"),
        ],
    ),
    get(
        "If-None-Match beats If-Modified-Since (match, older date)",
        &[
            ("If-None-Match", "{etag}"),
            ("If-Modified-Since", "{lm-1h}"),
        ],
    )
    .differs(&INM_OVERRIDES_IMS),
    // Conditionals together with Range (§13.2.2: preconditions before Range).
    get(
        "If-None-Match (match) + Range",
        &[("If-None-Match", "{etag}"), ("Range", "bytes=0-99")],
    ),
    get(
        "If-None-Match (no match) + Range",
        &[("If-None-Match", "\"other\""), ("Range", "bytes=0-99")],
    ),
    get(
        "If-Modified-Since (equal) + Range",
        &[("If-Modified-Since", "{lm}"), ("Range", "bytes=0-99")],
    ),
    get(
        "If-Match (match) + two ranges",
        &[("If-Match", "{etag}"), ("Range", "bytes=0-9,20-29")],
    ),
    get(
        "If-Match (no match) + Range",
        &[("If-Match", "\"other\""), ("Range", "bytes=0-99")],
    )
    .differs(&ERROR_PAGE_412),
    // HEAD (§9.3.2).
    head("HEAD", &[]),
    head("HEAD + Range", &[("Range", "bytes=0-99")]).differs(&HEAD_IGNORES_RANGE),
    head("HEAD + If-None-Match", &[("If-None-Match", "{etag}")]),
    head("HEAD + If-Modified-Since", &[("If-Modified-Since", "{lm}")]),
    // Content-Type of a text file (§8.3).
    get("text file", &[]).on(TXT).differs(&TEXT_CHARSET),
];

/// Where one request goes.
struct Target<'a> {
    name: &'static str,
    stack: &'a Stack,
    endpoint: Endpoint,
    /// URL path of a file, given its name.
    url: fn(&str) -> String,
}

impl Target<'_> {
    fn request(&self, case: &Case, validators: Option<&View>) -> View {
        let method = if case.head { "HEAD" } else { "GET" };
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
            (self.url)(case.file)
        );
        for (name, value) in case.headers {
            let value = validators.map_or_else(|| value.to_string(), |v| fill(value, v));
            let _ = write!(req, "{name}: {value}\r\n");
        }
        req.push_str("\r\n");
        let raw = exchange(&self.endpoint, &req)
            .unwrap_or_else(|e| panic!("{}: {}: {e}\nrequest:\n{req}", self.name, case.name));
        parse(&raw, case.head)
            .unwrap_or_else(|e| panic!("{}: {}: {e}\nrequest:\n{req}", self.name, case.name))
    }
}

/// `{etag}`, `{lm}`, `{lm-1h}`, `{lm+1h}` of `value`, from the server's own validators.
fn fill(value: &str, v: &View) -> String {
    let etag = v.etag.as_deref().expect("the server sent an ETag");
    let lm = v
        .last_modified
        .as_deref()
        .expect("the server sent Last-Modified");
    let date = httpdate::parse_http_date(lm).expect("Last-Modified is an HTTP-date");
    let hour = Duration::from_secs(3600);
    value
        .replace("{etag}", etag)
        .replace("{lm-1h}", &httpdate::fmt_http_date(date - hour))
        .replace("{lm+1h}", &httpdate::fmt_http_date(date + hour))
        .replace("{lm}", lm)
}

/// Sends `request` and reads the answer to EOF (the request says `Connection: close`).
fn exchange(endpoint: &Endpoint, request: &str) -> std::io::Result<Vec<u8>> {
    let mut conn = endpoint.connect()?;
    conn.set_read_timeout(Duration::from_secs(20));
    conn.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    Ok(out)
}

/// Reduces a raw response to a [`View`], checking its framing on the way: a body as long
/// as Content-Length says, none for HEAD.
fn parse(raw: &[u8], head: bool) -> Result<View, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {:?}", String::from_utf8_lossy(raw)))?;
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut body = raw[end + 4..].to_vec();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if head && !body.is_empty() {
        return Err(format!(
            "{} bytes of body after a HEAD:\n{text}",
            body.len()
        ));
    }
    if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or_else(|| format!("bad chunked body after\n{text}"))?;
    } else if let (false, Some(len)) = (head, header("content-length")) {
        if len != body.len().to_string() {
            return Err(format!(
                "Content-Length {len} but {} bytes\n{text}",
                body.len()
            ));
        }
    }
    let mut view = View {
        status,
        content_range: header("content-range"),
        content_length: header("content-length"),
        content_type: header("content-type"),
        body,
        boundary: None,
        etag: header("etag"),
        last_modified: header("last-modified"),
    };
    normalise_boundary(&mut view);
    Ok(view)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Replaces a multipart boundary (nginx: 20 decimal digits, ours: 16 hex digits) with
/// `BOUNDARY` in Content-Type and body, and adjusts Content-Length to match.
fn normalise_boundary(view: &mut View) {
    const PREFIX: &str = "multipart/byteranges; boundary=";
    let Some(boundary) = view
        .content_type
        .as_deref()
        .and_then(|t| t.strip_prefix(PREFIX))
        .map(str::to_string)
    else {
        return;
    };
    let marker = format!("\r\n--{boundary}");
    let mut body = Vec::with_capacity(view.body.len());
    let mut rest = &view.body[..];
    let mut count = 0;
    while let Some(at) = rest
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
    {
        body.extend_from_slice(&rest[..at]);
        body.extend_from_slice(b"\r\n--BOUNDARY");
        rest = &rest[at + marker.len()..];
        count += 1;
    }
    body.extend_from_slice(rest);
    view.body = body;
    view.content_type = Some(format!("{PREFIX}BOUNDARY"));
    if let Some(len) = view
        .content_length
        .as_deref()
        .and_then(|l| l.parse::<usize>().ok())
    {
        let adjusted = len - count * boundary.len() + count * "BOUNDARY".len();
        view.content_length = Some(adjusted.to_string());
    }
    view.boundary = Some(boundary);
}

/// Creates the test files in `stack`'s data directory, all with the same content and mtime.
fn put_files(stack: &Stack) {
    stack.data_file(PDF, PDF_SIZE, 4242);
    let text = "Plain UTF-8 text: Grüße, 日本語.\n".repeat(40);
    fs::write(stack.data().join(TXT), text).expect("write the text file");
    for name in [PDF, TXT] {
        fs::File::options()
            .write(true)
            .open(stack.data().join(name))
            .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME)))
            .expect("set the mtime of a test file");
    }
}

fn download_url(name: &str) -> String {
    format!("/download.php?f={name}")
}

fn static_url(name: &str) -> String {
    format!("/{name}")
}

#[test]
fn send_file_matches_nginx_static_except_listed_differences() {
    let manager = Stack::start(Config::new(Kind::Fpm).with_static_files());
    let fallback = Stack::start(Config::new(Kind::Fpm).without_manager());
    let cli = Stack::start(Config::new(Kind::CliServer));
    let cli_fallback = Stack::start(Config::new(Kind::CliServer).without_manager());
    for stack in [&manager, &fallback, &cli, &cli_fallback] {
        put_files(stack);
    }
    let nginx = Target {
        name: "nginx static",
        stack: &manager,
        endpoint: manager
            .static_endpoint
            .clone()
            .expect("nginx serves data/ statically"),
        url: static_url,
    };
    let ours = [
        Target {
            name: "php-fpm + manager",
            stack: &manager,
            endpoint: manager.endpoint.clone(),
            url: download_url,
        },
        Target {
            name: "php-fpm fallback",
            stack: &fallback,
            endpoint: fallback.endpoint.clone(),
            url: download_url,
        },
        Target {
            name: "php -S + manager",
            stack: &cli,
            endpoint: cli.endpoint.clone(),
            url: download_url,
        },
        Target {
            name: "php -S fallback",
            stack: &cli_fallback,
            endpoint: cli_fallback.endpoint.clone(),
            url: download_url,
        },
    ];
    assert!(
        MATRIX.len() >= 40,
        "the matrix has {} requests",
        MATRIX.len()
    );

    // Each server's own validators, per file.
    let plain = |t: &Target, file: &'static str| {
        let v = t.request(&get("validators", &[]).on(file), None);
        assert!(
            v.status == 200 && v.etag.is_some() && v.last_modified.is_some(),
            "{}: a plain GET of {file} gives 200 with ETag and Last-Modified: {v:?}",
            t.name
        );
        v
    };

    let mut failures = String::new();
    let mut table = String::new();
    let mut seen: Vec<&Expected> = Vec::new();
    let mut bugs_seen: Vec<(&str, &str)> = Vec::new();
    let validators: Vec<[View; 2]> = std::iter::once(&nginx)
        .chain(&ours)
        .map(|t| [plain(t, PDF), plain(t, TXT)])
        .collect();
    let pick = |i: usize, file: &str| &validators[i][usize::from(file == TXT)];

    for case in MATRIX {
        let reference = nginx.request(case, Some(pick(0, case.file)));
        let _ = writeln!(
            table,
            "{:<58} nginx {} {}",
            case.name,
            reference.status,
            reference.content_range.as_deref().unwrap_or("")
        );
        let mut first: Option<View> = None;
        for (i, t) in ours.iter().enumerate() {
            let mut got = t.request(case, Some(pick(i + 1, case.file)));
            for bug in KNOWN_BUGS.iter().filter(|b| b.targets.contains(&t.name)) {
                if (bug.shows)(&got) {
                    (bug.undo)(&mut got);
                    if !bugs_seen.contains(&(bug.name, t.name)) {
                        bugs_seen.push((bug.name, t.name));
                    }
                }
            }
            let differing: Vec<Field> = FIELDS
                .into_iter()
                .filter(|&f| !reference.same(&got, f))
                .collect();
            let expected: &[Field] = case.expect.map_or(&[], |e| e.fields);
            if differing != expected {
                let _ = writeln!(
                    failures,
                    "{} / {}: differs from nginx in {differing:?}, expected {expected:?}{}",
                    case.name,
                    t.name,
                    case.expect
                        .map_or(String::new(), |e| format!(" ({})", e.name))
                );
                for f in differing.iter().chain(expected).copied() {
                    let _ = writeln!(
                        failures,
                        "    {f:?}: nginx {}, ours {}",
                        reference.field(f),
                        got.field(f)
                    );
                }
            }
            if let Some(e) = case.expect {
                if !(e.nginx)(&reference) || !(e.ours)(&got) {
                    let _ = writeln!(
                        failures,
                        "{} / {}: \"{}\" no longer describes the answers: nginx {:?}, ours {:?}",
                        case.name,
                        t.name,
                        e.name,
                        summary(&reference),
                        summary(&got)
                    );
                }
                if !seen.iter().any(|s: &&Expected| s.name == e.name) {
                    seen.push(e);
                }
            }
            match &first {
                None => first = Some(got),
                Some(f) => {
                    for field in FIELDS {
                        if !f.same(&got, field) {
                            let _ = writeln!(
                                failures,
                                "{} / {}: {field:?} {} differs from {}'s {}",
                                case.name,
                                t.name,
                                got.field(field),
                                ours[0].name,
                                f.field(field)
                            );
                        }
                    }
                }
            }
        }
    }
    for bug in KNOWN_BUGS {
        for target in bug.targets {
            if !bugs_seen.contains(&(bug.name, target)) {
                let _ = writeln!(
                    failures,
                    "\"{}\" no longer shows on {target}: remove it from KNOWN_BUGS and docs/behaviour.md",
                    bug.name
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "send_file() and nginx differ where no difference is listed:\n{failures}\n\
         all cases, as nginx answered them:\n{table}"
    );
    eprintln!(
        "{} requests x 5 servers; differences from nginx:",
        MATRIX.len()
    );
    for e in &seen {
        eprintln!("- {}: {}", e.name, e.why.text());
    }
    for bug in KNOWN_BUGS {
        eprintln!(
            "known bug on {}: {}: {}",
            bug.targets.join(", "),
            bug.name,
            bug.description
        );
    }
    for stack in [&manager, &fallback] {
        stack.assert_clean_logs();
    }
    for t in [&ours[0], &ours[2]] {
        assert!(
            !t.stack.outcome_bytes("complete").is_empty(),
            "{}: the manager logged no download, so the matrix did not test its path",
            t.name
        );
    }
}

fn summary(v: &View) -> String {
    format!(
        "{} range={:?} length={:?} type={:?} body={}B",
        v.status,
        v.content_range,
        v.content_length,
        v.content_type,
        v.body.len()
    )
}
