//! The latency probe: a new connection and one GET of a tiny page every `interval`, as a
//! visitor browsing the site while downloads run. A probe that takes longer than `timeout`
//! or gets anything but a complete 200 counts as failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{get_request, parse_head};

/// One probe: seconds since the probe started, and its latency in ms (`None` = failed).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_s: f64,
    pub latency_ms: Option<f64>,
}

/// Probes until `deadline` or until `stop` is set; at most one probe per `interval`, on a
/// fixed schedule (a slow probe delays the next one but does not add extra ones).
pub fn run(
    addr: SocketAddr,
    path: &str,
    interval: Duration,
    timeout: Duration,
    deadline: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<Sample> {
    let request = get_request(&addr.to_string(), path, true);
    let start = Instant::now();
    let mut next = start;
    let mut samples = Vec::new();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        let t0 = Instant::now();
        let ok = probe_once(addr, &request, timeout);
        let latency = t0.elapsed();
        samples.push(Sample {
            at_s: t0.duration_since(start).as_secs_f64(),
            latency_ms: (ok && latency <= timeout).then_some(latency.as_secs_f64() * 1e3),
        });
        while next <= Instant::now() {
            next += interval;
        }
    }
    samples
}

fn probe_once(addr: SocketAddr, request: &[u8], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(timeout)).is_err() || stream.write_all(request).is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        if let Ok(head) = parse_head(&buf) {
            if head
                .length
                .is_some_and(|l| (buf.len() - head.head_len) as u64 >= l)
            {
                break;
            }
        }
    }
    match parse_head(&buf) {
        Ok(head) => {
            head.status == 200
                && head
                    .length
                    .is_none_or(|l| (buf.len() - head.head_len) as u64 == l)
        }
        Err(_) => false,
    }
}
