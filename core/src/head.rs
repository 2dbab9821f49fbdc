//! A response head (status + header fields) and its two renderings.
//!
//! The same planned head is written by the manager onto a raw HTTP/1.1 connection
//! (`php -S`, mod_php) or as the CGI head inside FastCGI `STDOUT` records (php-fpm behind
//! a web server), and set through PHP's own header API by the in-process fallback.
//! Validation here guarantees that nothing can split the head: names are RFC 9110 tokens
//! and values carry no CR, LF or NUL.

use std::time::SystemTime;

/// One header field, as it will be sent. The value is bytes: a script may set one that is
/// not UTF-8 (Latin-1 text, say), and it must reach the client unchanged on every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The value as text, if it is UTF-8 (every field the planner reads or writes is).
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// `name: value`, as PHP's `header()` and both renderings take it.
    pub fn line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.name.len() + 2 + self.value.len());
        line.extend_from_slice(self.name.as_bytes());
        line.extend_from_slice(b": ");
        line.extend_from_slice(&self.value);
        line
    }

    /// Whether this field is called `name` (field names are case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Status, optional custom reason phrase and header fields of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The script's own reason phrase (`header("HTTP/1.1 299 Custom")`); empty means the
    /// standard phrase for `status`.
    pub reason: String,
    pub headers: Vec<Header>,
}

/// Why a head cannot be sent as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("status {status} is outside 100..=599")]
    Status { status: u16 },
    #[error("header name {name:?} is not an RFC 9110 token")]
    Name { name: String },
    #[error("value of header {name} contains CR, LF or NUL")]
    Value { name: String },
    #[error("reason phrase contains CR, LF or NUL")]
    Reason,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_safe_text(s: &[u8]) -> bool {
    !s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

impl Head {
    pub fn new(status: u16) -> Self {
        Head {
            status,
            reason: String::new(),
            headers: Vec::new(),
        }
    }

    /// Checks that the head can be rendered without splitting the response.
    pub fn validate(&self) -> Result<(), HeadError> {
        if !(100..=599).contains(&self.status) {
            return Err(HeadError::Status {
                status: self.status,
            });
        }
        if !is_safe_text(self.reason.as_bytes()) {
            return Err(HeadError::Reason);
        }
        for h in &self.headers {
            if h.name.is_empty() || !h.name.bytes().all(is_tchar) {
                return Err(HeadError::Name {
                    name: h.name.clone(),
                });
            }
            if !is_safe_text(&h.value) {
                return Err(HeadError::Value {
                    name: h.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The first value of header `name`, if any and if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.is(name))
            .and_then(Header::text)
    }

    pub fn reason_phrase(&self) -> &str {
        if self.reason.is_empty() {
            reason_phrase(self.status)
        } else {
            &self.reason
        }
    }

    /// The head as sent on a raw HTTP/1.1 connection: status line, `Date`,
    /// `Connection: close` (the manager serves exactly one response per connection), the
    /// planned fields, blank line.
    pub fn render_http(&self, now: SystemTime) -> Vec<u8> {
        let first = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nConnection: close\r\n",
            self.status,
            self.reason_phrase(),
            httpdate::fmt_http_date(now)
        );
        self.render_fields(first)
    }

    /// The head as a CGI response (RFC 3875 §6): a `Status` field and the planned fields.
    /// The web server adds `Date` and decides on connection reuse.
    pub fn render_cgi(&self) -> Vec<u8> {
        self.render_fields(format!(
            "Status: {} {}\r\n",
            self.status,
            self.reason_phrase()
        ))
    }

    /// `first`, then the planned fields (values byte for byte), then the blank line.
    fn render_fields(&self, first: String) -> Vec<u8> {
        let mut out = first.into_bytes();
        for h in self.headers.iter().filter(|h| !is_hop_by_hop(h)) {
            out.extend_from_slice(&h.line());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Fields that describe one connection rather than the response; the renderer writes its
/// own (`Connection: close`), and `Date` is written once, at sending time.
fn is_hop_by_hop(h: &Header) -> bool {
    ["Connection", "Keep-Alive", "Date", "Status"]
        .iter()
        .any(|n| h.is(n))
}

/// The standard reason phrase of a status code (RFC 9110 §15).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn head() -> Head {
        let mut h = Head::new(200);
        h.headers.push(Header::new("Content-Type", "text/plain"));
        h.headers.push(Header::new("Connection", "keep-alive"));
        h
    }

    #[test]
    fn http_head_has_date_and_close_and_no_script_connection_field() {
        let t = UNIX_EPOCH + Duration::from_secs(784111777);
        let text = String::from_utf8(head().render_http(t)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\
             Content-Type: text/plain\r\n\r\n"
        );
    }

    #[test]
    fn cgi_head_starts_with_status_and_keeps_custom_reason() {
        let mut h = head();
        h.status = 299;
        h.reason = "Fine Indeed".into();
        let text = String::from_utf8(h.render_cgi()).unwrap();
        assert_eq!(
            text,
            "Status: 299 Fine Indeed\r\nContent-Type: text/plain\r\n\r\n"
        );
    }

    #[test]
    fn validation_rejects_response_splitting() {
        let mut h = head();
        h.headers
            .push(Header::new("X-Evil", "a\r\nSet-Cookie: x=1"));
        assert!(matches!(h.validate(), Err(HeadError::Value { .. })));
        let mut h = head();
        h.headers.push(Header::new("Bad Name", "v"));
        assert!(matches!(h.validate(), Err(HeadError::Name { .. })));
        assert!(matches!(
            Head::new(42).validate(),
            Err(HeadError::Status { status: 42 })
        ));
        assert_eq!(head().validate(), Ok(()));
    }
}
