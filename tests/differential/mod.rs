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

mod cases;
mod wire;

use std::fmt::Write as _;
use std::fs;
use std::time::{Duration, UNIX_EPOCH};

use crate::util::{Config, Endpoint, Kind, Stack};

use cases::{get, Case, Expected, KNOWN_BUGS, MATRIX};
use wire::{exchange, parse};

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
