//! The clients: how a stack is reached, curl (to completion or in the background), raw
//! sockets for what curl hides, and what came back.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{describe, read_lossy, sha256_bytes, sha256_file, Proc};

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// How a client reaches a stack.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// nginx on a Unix socket.
    Unix(PathBuf),
    /// `php -S` or Apache on loopback TCP.
    Tcp(SocketAddr),
}

impl Endpoint {
    /// curl arguments that address `path_and_query` on this endpoint.
    pub fn curl_target(&self, path_and_query: &str) -> Vec<String> {
        match self {
            Endpoint::Unix(sock) => vec![
                "--unix-socket".into(),
                sock.display().to_string(),
                format!("http://localhost{path_and_query}"),
            ],
            Endpoint::Tcp(addr) => vec![format!("http://{addr}{path_and_query}")],
        }
    }

    pub fn connect(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Conn::Tcp(TcpStream::connect(a)?),
        })
    }
}

/// A raw client connection, for what curl cannot do (read part of a body, see HEAD's bytes).
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub fn set_read_timeout(&self, t: Duration) {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
        .expect("set_read_timeout");
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `request` verbatim and reads until EOF (the request should say `Connection: close`).
pub fn raw_request(endpoint: &Endpoint, request: &str) -> Vec<u8> {
    let mut conn = endpoint.connect().expect("connect for raw request");
    conn.set_read_timeout(Duration::from_secs(30));
    conn.write_all(request.as_bytes())
        .expect("send raw request");
    let mut out = Vec::new();
    conn.read_to_end(&mut out)
        .expect("read raw response to EOF within 30 s");
    out
}

/// Splits a raw HTTP response into (head, body) at the first blank line.
pub fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..pos]).into_owned(),
        &raw[pos + 4..],
    )
}

/// Splits what one connection received into its responses, in order: (head, body), each
/// body delimited by `Content-Length` or chunked encoding (de-chunked), the last one also
/// by EOF. Responses to HEAD are not supported. Errors describe where parsing stopped.
pub fn split_responses(mut raw: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let n = out.len() + 1;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("response {n}: no end of head"))?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let field = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let body = if let Some(len) = field("Content-Length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("response {n}: Content-Length {len:?}"))?;
            if raw.len() < len {
                return Err(format!(
                    "response {n}: {} of {len} body bytes\n{head}",
                    raw.len()
                ));
            }
            let (body, rest) = raw.split_at(len);
            raw = rest;
            body.to_vec()
        } else if field("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = raw
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or_else(|| format!("response {n}: cut in a chunk size"))?;
                let size = std::str::from_utf8(&raw[..line_end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| format!("response {n}: bad chunk size"))?;
                raw = &raw[line_end + 2..];
                if raw.len() < size + 2 {
                    return Err(format!("response {n}: cut in a chunk"));
                }
                body.extend_from_slice(&raw[..size]);
                raw = &raw[size + 2..];
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            std::mem::take(&mut raw).to_vec()
        };
        out.push((head, body));
    }
    Ok(out)
}

/// What curl received: status, headers of the final response, body in a file.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub head_text: String,
    pub body_path: PathBuf,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body(&self) -> Vec<u8> {
        fs::read(&self.body_path).unwrap_or_default()
    }

    pub fn body_len(&self) -> u64 {
        fs::metadata(&self.body_path).map(|m| m.len()).unwrap_or(0)
    }

    pub fn body_sha(&self) -> String {
        if self.body_path.exists() {
            sha256_file(&self.body_path)
        } else {
            sha256_bytes(b"")
        }
    }
}

fn parse_head(text: &str) -> (u16, Vec<(String, String)>) {
    // -D records every response (100 Continue, redirects): the last head is the answer.
    let last = text
        .split("\r\n\r\n")
        .filter(|h| h.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// A prepared curl invocation; `name` names its header and body files in `dir`.
pub struct Curl {
    cmd: Command,
    head_path: PathBuf,
    body_path: PathBuf,
    /// A file that gets one line per request sent (shown when a test fails).
    pub(super) journal: Option<PathBuf>,
}

pub fn curl(dir: &Path, name: &str, endpoint: &Endpoint, path_and_query: &str) -> Curl {
    curl_target(dir, name, endpoint.curl_target(path_and_query))
}

/// curl with its target given as arguments (a URL, or `--unix-socket` and a URL).
pub fn curl_target(dir: &Path, name: &str, target: Vec<String>) -> Curl {
    let head_path = dir.join(format!("{name}.head"));
    let body_path = dir.join(format!("{name}.body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "-D"])
        .arg(&head_path)
        .arg("-o")
        .arg(&body_path)
        .args(target);
    Curl {
        cmd,
        head_path,
        body_path,
        journal: None,
    }
}

impl Curl {
    pub fn arg(mut self, a: &str) -> Curl {
        self.cmd.arg(a);
        self
    }

    pub fn args(mut self, a: &[&str]) -> Curl {
        self.cmd.args(a);
        self
    }

    pub fn cmdline(&self) -> String {
        describe(&self.cmd)
    }

    fn note(&self, what: &str) {
        if let Some(journal) = &self.journal {
            if let Ok(mut f) = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(journal)
            {
                let _ = writeln!(f, "{what}: {}", describe(&self.cmd));
            }
        }
    }

    /// Runs curl to completion; panics if curl itself fails.
    pub fn run(mut self) -> Response {
        self.note("run");
        let cmdline = describe(&self.cmd);
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("run {cmdline}: {e}"));
        assert!(
            out.status.success(),
            "curl failed ({}): {cmdline}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.response()
    }

    /// Starts curl in the background, owned by the returned [`Proc`]; collect the result
    /// with [`Curl::response_of`] once it has exited.
    pub fn spawn(self, log: PathBuf) -> (Proc, PathBuf, PathBuf) {
        self.note("spawn");
        let Curl {
            cmd,
            head_path,
            body_path,
            ..
        } = self;
        (
            Proc::spawn("curl", cmd, log, Signal::SIGKILL),
            head_path,
            body_path,
        )
    }

    fn response(&self) -> Response {
        response_from(&self.head_path, &self.body_path)
    }
}

/// Reads what a (finished) curl wrote to its header and body files.
pub fn response_from(head_path: &Path, body_path: &Path) -> Response {
    let head_text = read_lossy(head_path);
    let (status, headers) = parse_head(&head_text);
    Response {
        status,
        headers,
        head_text,
        body_path: body_path.to_path_buf(),
    }
}

/// How many bytes a client has written to `path` so far (0 before the file exists).
pub fn received_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
