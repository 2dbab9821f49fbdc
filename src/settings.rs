//! The extension's ini settings (`handoff.*`), read at each call so `ini_set()` and
//! per-pool `php_value` work.

use std::path::PathBuf;
use std::time::Duration;

use crate::ffi;

pub const SOCKET: &str = "handoff.socket";
pub const FALLBACK: &str = "handoff.fallback";
pub const TIMEOUT_MS: &str = "handoff.timeout_ms";
pub const INLINE_BELOW: &str = "handoff.inline_below";

pub const DEFAULT_SOCKET: &str = "/run/handoff/manager.sock";
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Measured break-even (docs/benchmarks.md, S3): below 64 KiB the worker streaming the file
/// is faster than a handoff, and such a body fits in the socket buffers anyway, so it cannot
/// hold the worker on a slow client.
pub const DEFAULT_INLINE_BELOW: u64 = 64 * 1024;

/// What `send_file()` does when the file cannot be handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Stream the file from the worker itself.
    Stream,
    /// Throw `HandoffException`.
    Off,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub fallback: Fallback,
    pub timeout: Duration,
    /// Files with fewer body bytes than this are streamed by the worker itself: for tiny
    /// files the handoff costs more than the transfer.
    pub inline_below: u64,
}

pub fn current() -> Settings {
    let socket = ffi::ini_string(SOCKET)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    let fallback = match ffi::ini_string(FALLBACK) {
        Some(v) => parse_fallback(&v),
        None => Fallback::Stream,
    };
    let timeout_ms = ffi::ini_string(TIMEOUT_MS)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let inline_below = ffi::ini_string(INLINE_BELOW)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_INLINE_BELOW);
    Settings {
        socket: PathBuf::from(socket),
        fallback,
        timeout: Duration::from_millis(timeout_ms),
        inline_below,
    }
}

/// php.ini reads an unquoted `off`, `false` or `no` as boolean false and stores an empty
/// string; the default is `stream`, so an empty value can only mean one of those.
fn parse_fallback(value: &str) -> Fallback {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "off" | "0" | "false" | "no" | "none" | "throw" => Fallback::Off,
        _ => Fallback::Stream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_off_in_every_spelling_php_ini_produces() {
        for v in ["", "off", "Off", "0", "false", "no", " off "] {
            assert_eq!(parse_fallback(v), Fallback::Off, "{v:?}");
        }
        for v in ["stream", "1", "on", "yes"] {
            assert_eq!(parse_fallback(v), Fallback::Stream, "{v:?}");
        }
    }
}
