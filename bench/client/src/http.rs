//! HTTP/1.1 on the wire, as little of it as a benchmark needs: one GET request, and the
//! parts of a response head that decide how the body ends.

/// The request bytes for `GET path` on `host`; `close` asks the server to close afterwards.
pub fn get_request(host: &str, path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: handoff-bench\r\nConnection: {connection}\r\n\r\n")
        .into_bytes()
}

/// What a response head says about the body that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// `Content-Length`, or `None` when the body ends at EOF.
    pub length: Option<u64>,
    /// The server closes the connection after this response.
    pub close: bool,
    /// Length of the head including the blank line.
    pub head_len: usize,
}

/// Why a head could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// More bytes are needed.
    Incomplete,
    /// Not an HTTP/1.x response, or a chunked body (the bench scripts always set a length).
    Unsupported(String),
}

/// Parses the head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(HeadError::Incomplete);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Unsupported(format!(
            "status line {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HeadError::Unsupported(format!("status line {status_line:?}")))?;
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| HeadError::Unsupported(format!("Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(HeadError::Unsupported(format!("Transfer-Encoding {value}")));
        }
    }
    if length.is_none() {
        close = true;
    }
    Ok(Head {
        status,
        length,
        close,
        head_len: end + 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_keep_alive() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody").unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                length: Some(12),
                close: false,
                head_len: 39
            }
        );
    }

    #[test]
    fn no_length_means_close_delimited() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((head.length, head.close), (None, true));
    }

    #[test]
    fn incomplete_and_chunked() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\n"),
            Err(HeadError::Incomplete)
        );
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Unsupported(_))
        ));
    }
}
