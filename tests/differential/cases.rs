//! The differential test's matrix of requests, and each difference from nginx it expects
//! (with the RFC 9110 section that makes ours right).

use super::{Field, View, PDF, PDF_SIZE, TXT};

/// Why a difference from nginx is there (the table in docs/behaviour.md says the same). A difference
/// where nginx is right is a bug of ours: fix it, don't list it.
pub(super) enum Why {
    /// Ours is right or acceptable: the reason, with the RFC section.
    Right(&'static str),
}

/// A difference from nginx, expected in one case on all four of our paths.
pub(super) struct Expected {
    pub(super) name: &'static str,
    pub(super) why: Why,
    /// The compared fields that differ; all others must be equal.
    pub(super) fields: &'static [Field],
    /// What nginx sends in this case, and what we send.
    pub(super) nginx: fn(&View) -> bool,
    pub(super) ours: fn(&View) -> bool,
}

pub(super) const ERROR_PAGE_416: Expected = Expected {
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

pub(super) const ERROR_PAGE_412: Expected = Expected {
    name: "412 without an error page",
    why: Why::Right(
        "RFC 9110 §15.5.13 defines no content for 412; the client asked for a \
             conditional transfer, not for a page",
    ),
    fields: &[Field::ContentLength, Field::ContentType, Field::Body],
    nginx: |v| v.status == 412 && v.is_html(),
    ours: |v| v.is_empty_error(412),
};

pub(super) const HEAD_IGNORES_RANGE: Expected = Expected {
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

pub(super) const IMS_LATER_IS_304: Expected = Expected {
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

pub(super) const INM_OVERRIDES_IMS: Expected = Expected {
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

pub(super) const IM_OVERRIDES_IUS: Expected = Expected {
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

pub(super) const IUS_INVALID_IGNORED: Expected = Expected {
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

pub(super) const TOO_MANY_RANGES: Expected = Expected {
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

pub(super) const MALFORMED_RANGE_IGNORED: Expected = Expected {
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
pub(super) struct KnownBug {
    pub(super) name: &'static str,
    /// The paths it shows on (each must still show it).
    pub(super) targets: &'static [&'static str],
    pub(super) description: &'static str,
    pub(super) shows: fn(&View) -> bool,
    pub(super) undo: fn(&mut View),
}

/// None at the moment: the spaces-around-`=` Range parsing and the fallback's default
/// Content-Type on body-less answers were both fixed after this test found them.
pub(super) const KNOWN_BUGS: &[KnownBug] = &[];

pub(super) const TEXT_CHARSET: Expected = Expected {
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
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) head: bool,
    pub(super) file: &'static str,
    pub(super) headers: &'static [(&'static str, &'static str)],
    pub(super) expect: Option<&'static Expected>,
}

pub(super) const fn get(
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        name,
        head: false,
        file: PDF,
        headers,
        expect: None,
    }
}

pub(super) const fn head(
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        name,
        head: true,
        file: PDF,
        headers,
        expect: None,
    }
}

impl Why {
    pub(super) fn text(&self) -> String {
        match self {
            Why::Right(reason) => format!("ours is right: {reason}"),
        }
    }
}

impl Case {
    pub(super) const fn differs(mut self, e: &'static Expected) -> Case {
        self.expect = Some(e);
        self
    }

    pub(super) const fn on(mut self, file: &'static str) -> Case {
        self.file = file;
        self
    }
}

pub(super) const MATRIX: &[Case] = &[
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
