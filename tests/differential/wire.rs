//! Talking to a server at the byte level: one request on a fresh connection, the response
//! parsed into a [`View`] (chunked bodies joined, multipart boundaries replaced).

use std::io::{Read, Write};
use std::time::Duration;

use super::View;
use crate::util::Endpoint;

/// Sends `request` and reads the answer to EOF (the request says `Connection: close`).
pub(super) fn exchange(endpoint: &Endpoint, request: &str) -> std::io::Result<Vec<u8>> {
    let mut conn = endpoint.connect()?;
    conn.set_read_timeout(Duration::from_secs(20));
    conn.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    Ok(out)
}

/// Reduces a raw response to a [`View`], checking its framing on the way: a body as long
/// as Content-Length says, none for HEAD.
pub(super) fn parse(raw: &[u8], head: bool) -> Result<View, String> {
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

pub(super) fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
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
pub(super) fn normalise_boundary(view: &mut View) {
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
