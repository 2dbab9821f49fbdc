//! The planner's tests: the RFC 9110 table, heads, bodies and fields, over [`plan`] as the
//! extension and the manager call it.

use super::*;
use crate::conditional;
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
