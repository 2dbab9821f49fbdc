//! The decision: which status the response gets (the script's, 304, 412, 206, 416),
//! which of the script's fields stay, and which bytes of the file go out, in the order of
//! RFC 9110 (see the module above).

use crate::conditional::{self, Validators, Verdict};
use crate::head::{Head, Header};
use crate::range::{self, Resolved};

use super::fields::{guess_type, push_disposition, push_length};
use super::multipart::{multipart, new_boundary};
use super::{FileInfo, Framing, Method, Options, Piece, Plan, Request, ScriptResponse};

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
