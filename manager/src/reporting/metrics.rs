//! The optional local HTTP endpoint: `GET /metrics` in Prometheus text format,
//! `GET /status` as JSON (what `handoff-manager status` shows) and `GET /healthz` for
//! probes (200 `ok` while the manager takes handoffs, 503 `draining` once it has stopped
//! taking them and finishes its downloads).
//!
//! It runs on its own thread with blocking I/O and short timeouts, so a slow scraper can
//! never delay a handoff. Bind it to a loopback address: it is for operators, not clients.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::stat::Mode;
use std::sync::atomic::Ordering;

use crate::reporting::stats::{status_json, Board, Counters};

/// Counts the process's open descriptors for `process_open_fds` by listing
/// `/proc/self/fd`. The directory is opened before the sandbox closes the filesystem: an
/// open directory can still be listed.
pub struct OpenFds(Option<Dir>);

impl OpenFds {
    pub fn open() -> OpenFds {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        OpenFds(Dir::open("/proc/self/fd", flags, Mode::empty()).ok())
    }

    /// Open descriptors now (the listing's own included), if `/proc` could be read.
    fn count(&mut self) -> Option<usize> {
        let dir = self.0.as_mut()?;
        // The iterator rewinds the directory when dropped, ready for the next scrape.
        let n = dir
            .iter()
            .filter_map(Result::ok)
            .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            .count();
        Some(n)
    }

    /// `process_open_fds` and `process_max_fds`, the names Prometheus' client libraries
    /// use.
    fn prometheus(&mut self) -> String {
        let mut out = String::new();
        if let Some(n) = self.count() {
            out.push_str(&format!(
                "# HELP process_open_fds Open file descriptors.\n\
                 # TYPE process_open_fds gauge\nprocess_open_fds {n}\n"
            ));
        }
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            out.push_str(&format!(
                "# HELP process_max_fds The most file descriptors the process may open.\n\
                 # TYPE process_max_fds gauge\nprocess_max_fds {soft}\n"
            ));
        }
        out
    }
}

/// Binds `addr` and answers requests on a background thread.
pub fn serve(
    addr: SocketAddr,
    counters: Arc<Counters>,
    boards: Vec<Arc<Board>>,
    mut fds: OpenFds,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &counters, &boards, &mut fds) {
                    debug!("metrics request: {e}");
                }
            }
        })?;
    Ok(())
}

fn answer(
    stream: TcpStream,
    counters: &Counters,
    boards: &[Arc<Board>],
    fds: &mut OpenFds,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // Read the rest of the head so that closing does not reset the connection.
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut line)?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            counters.prometheus() + &fds.prometheus(),
        ),
        "/healthz" if counters.draining.load(Ordering::Relaxed) => (
            "503 Service Unavailable",
            "text/plain",
            "draining\n".to_string(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/status" => {
            let downloads: Vec<_> = boards.iter().flat_map(|b| b.read()).collect();
            (
                "200 OK",
                "application/json",
                status_json(counters, &downloads),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// One GET to a running manager's metrics listener: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    io::Read::read_to_string(&mut stream, &mut response)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP body"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// `handoff-manager health`: whether `/healthz` answers 200, and what it said.
pub fn health(addr: SocketAddr) -> io::Result<(bool, String)> {
    let (status, body) = get(addr, "/healthz")?;
    Ok((status == 200, body))
}

/// `handoff-manager status`: fetches `/status` from a running manager and renders the
/// running downloads with progress bars and rates.
pub fn print_status(addr: SocketAddr, out: &mut impl Write) -> io::Result<()> {
    let (_, body) = get(addr, "/status")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    render(&v, out)
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A name from a download (file, tag, client) made safe for a terminal: control and other
/// unprintable characters are escaped as the log escapes them (`\n`, `\u{1b}`), so a file
/// name can neither forge a status line nor drive the terminal.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\'' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

fn render(v: &serde_json::Value, out: &mut impl Write) -> io::Result<()> {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    writeln!(
        out,
        "active {}  accepted {}  refused {}  complete {}  failed {}  sent {}{}",
        n("active"),
        n("accepted"),
        n("refused"),
        n("complete"),
        n("failed"),
        human(n("bytes_sent") as f64),
        if v["draining"].as_bool() == Some(true) {
            "  draining"
        } else {
            ""
        }
    )?;
    // Failures by outcome, in the words of the access log and the records.
    if let Some(map) = v["outcomes"].as_object() {
        let seen: Vec<String> = map
            .iter()
            .filter(|(outcome, _)| outcome.as_str() != "complete")
            .filter_map(|(outcome, n)| {
                n.as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| format!("{} {n}", printable(outcome)))
            })
            .collect();
        if !seen.is_empty() {
            writeln!(out, "failed by outcome: {}", seen.join("  "))?;
        }
    }
    // Fallbacks the workers reported, by cause; only the causes that occurred.
    if let Some(map) = v["fallbacks_reported"].as_object() {
        let seen: Vec<String> = map
            .iter()
            .filter_map(|(cause, n)| {
                n.as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| format!("{} {n}", printable(cause)))
            })
            .collect();
        if !seen.is_empty() {
            writeln!(out, "fallbacks reported by PHP: {}", seen.join("  "))?;
        }
    }
    let empty = Vec::new();
    for d in v["downloads"].as_array().unwrap_or(&empty) {
        let sent = d["sent"].as_u64().unwrap_or(0);
        let planned = d["planned"].as_u64().unwrap_or(0);
        let ms = d["elapsed_ms"].as_u64().unwrap_or(0).max(1);
        let frac = if planned == 0 {
            1.0
        } else {
            sent as f64 / planned as f64
        };
        let filled = (frac * 20.0).round() as usize;
        let tag = d["tag"]
            .as_str()
            .map(|t| format!("  tag={}", printable(t)))
            .unwrap_or_default();
        writeln!(
            out,
            "{:>3} [{}{}] {:>5.1}% {:>10} / {:<10} {:>10}/s  {}  {}{}",
            d["status"].as_u64().unwrap_or(0),
            "#".repeat(filled.min(20)),
            ".".repeat(20 - filled.min(20)),
            frac * 100.0,
            human(sent as f64),
            human(planned as f64),
            human(sent as f64 * 1000.0 / ms as f64),
            printable(d["client"].as_str().unwrap_or("")),
            printable(d["file"].as_str().unwrap_or("")),
            tag
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_a_bar_per_download() {
        let v = serde_json::json!({
            "active": 1, "accepted": 1, "refused": 0, "complete": 0, "failed": 0,
            "bytes_sent": 0,
            "outcomes": {"complete": 3, "aborted": 0, "timed_out": 2, "truncated": 0},
            "fallbacks_reported": {"unreachable": 4, "refused": 0},
            "downloads": [{"client": "c", "file": "big.iso", "tag": "order:9", "status": 200,
                           "sent": 512, "planned": 1024, "elapsed_ms": 1000}]
        });
        let mut out = Vec::new();
        render(&v, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("[##########..........]  50.0%"), "{text}");
        assert!(
            text.contains("\nfailed by outcome: timed_out 2\n"),
            "{text}"
        );
        assert!(text.contains("512.0 B/s"), "{text}");
        assert!(text.contains("big.iso  tag=order:9\n"), "{text}");
        assert!(
            text.contains("\nfallbacks reported by PHP: unreachable 4\n"),
            "{text}"
        );
    }

    #[test]
    fn status_escapes_control_characters_in_names() {
        let forged = "a.bin\n200 [####################] 100.0% \u{1b}[31mred\u{202e}";
        let v = serde_json::json!({
            "downloads": [{"client": "c\r", "file": forged, "status": 200,
                           "sent": 1, "planned": 2, "elapsed_ms": 1}]
        });
        let mut out = Vec::new();
        render(&v, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "one line per download:\n{text}");
        assert!(!text.contains(['\u{1b}', '\r', '\u{202e}']), "{text:?}");
        assert!(
            text.contains(
                "c\\r  a.bin\\n200 [####################] 100.0% \\u{1b}[31mred\\u{202e}\n"
            ),
            "{text}"
        );
    }
}
