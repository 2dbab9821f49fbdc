//! The head fields that describe the file: `Content-Length` from the body's pieces,
//! `Content-Type` guessed from the download name, and an RFC 6266 `Content-Disposition`.

use crate::head::Header;

use super::{Options, Piece};

pub(super) fn push_length(headers: &mut Vec<Header>, body: &[Piece]) {
    let len: u64 = body.iter().map(Piece::len).sum();
    headers.push(Header::new("Content-Length", len.to_string()));
}

pub(super) fn push_disposition(headers: &mut Vec<Header>, options: &Options) {
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
