//! The extension's ini settings (`handoff.*`), read at each call so `ini_set()` and
//! per-pool `php_value` work.

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Duration;

use ext_php_rs::flags::IniEntryPermission;
use ext_php_rs::zend::{IniEntryDef, IniEntryDefs};

use crate::ffi;

/// One ini setting: its name and its default, defined here only, both for PHP's
/// registration ([`INI_ENTRIES`]) and for reading it ([`current`]).
#[derive(Debug, Clone, Copy)]
pub struct Ini {
    pub name: &'static CStr,
    pub default: &'static CStr,
}

impl Ini {
    const fn new(name: &'static CStr, default: &'static CStr) -> Ini {
        Ini { name, default }
    }

    /// The setting's name as text (phpinfo()).
    pub fn name(self) -> &'static str {
        self.name.to_str().unwrap_or_default()
    }

    fn default_number(self) -> u64 {
        number(self.default.to_str().unwrap_or_default()).unwrap_or(0)
    }
}

pub const SOCKET: Ini = Ini::new(c"handoff.socket", c"/run/handoff/manager.sock");
pub const FALLBACK: Ini = Ini::new(c"handoff.fallback", c"stream");
pub const TIMEOUT_MS: Ini = Ini::new(c"handoff.timeout_ms", c"1000");
/// Measured break-even with the one-way handoff (docs/benchmarks.md, S3, 2026-12-03, two
/// runs): behind nginx the worker streaming a 16 KiB file was 1.05-1.12x as fast as a
/// handoff, and a handoff 1.18-1.50x as fast at 64 KiB (1.35x at 128 KiB). Behind a FastCGI
/// server such a body goes into the server's buffers, so it cannot hold the worker on a slow
/// client.
pub const INLINE_BELOW: Ini = Ini::new(c"handoff.inline_below", c"65536");
/// The most bytes a stream without a file of its own (php://memory, a pipe, a socket,
/// `https://`, a user wrapper) may have to be sent: it is copied into an anonymous memory
/// file first, shared memory that `memory_limit` does not count and that every worker
/// copying at once holds at the same time, so an endless stream must not fill it. 256 MiB
/// is twice PHP's default `memory_limit`, so any php://memory stream that a script could
/// fill fits; larger content belongs in a file (php://temp spills into one past 2 MiB, and
/// a file is sent by its descriptor, never copied). 0: no limit.
pub const MAX_COPY_BYTES: Ini = Ini::new(c"handoff.max_copy_bytes", c"268435456");

/// `On`: the confirmed two-phase handoff (the worker waits for the manager's accept, and
/// serves the request itself if the manager refuses it); `Off`: one-way handoff (the
/// worker sends and moves on; the manager answers what it cannot run).
pub const CONFIRM: Ini = Ini::new(c"handoff.confirm", c"0");

/// Whether the global names `send_file()` and `handoff_available()` exist beside
/// `Handoff\send_file()` and `Handoff\available()`. Off leaves the global names to
/// applications that declare their own (Moodle's `send_file()`).
pub const GLOBAL_FUNCTIONS: Ini = Ini::new(c"handoff.global_functions", c"1");

/// The global functions that `handoff.global_functions = Off` removes, lower case as PHP's
/// function table keys them. Their namespaced twins always stay.
pub const GLOBAL_FUNCTION_NAMES: [&str; 2] = ["send_file", "handoff_available"];

/// `handoff.global_functions` as its ini handler ([`ffi::global_functions_changed`]) sees it.
pub struct GlobalFunctionsSetting;

impl ffi::GlobalFunctions for GlobalFunctionsSetting {
    const NAMES: &'static [&'static str] = &GLOBAL_FUNCTION_NAMES;

    fn wanted(value: &str) -> bool {
        global_functions_wanted(value)
    }
}

/// The settings as PHP registers them.
pub static INI_ENTRIES: IniEntryDefs<8> = IniEntryDefs::new([
    // Where the request's connection goes is the administrator's choice, never a script's:
    // with ini_set() any script (a compromised plugin) could send its clients' connections
    // to a Unix socket of its own. php.ini, `-d`, the pool's php_admin_value and Apache's
    // php_admin_value can set it (and php_value / .user.ini / .htaccess, the PERDIR level,
    // unless an admin value locks it).
    IniEntryDef::new(
        SOCKET.name,
        SOCKET.default,
        IniEntryPermission::System.union(IniEntryPermission::PerDir),
    ),
    IniEntryDef::new(FALLBACK.name, FALLBACK.default, IniEntryPermission::All),
    IniEntryDef::new(TIMEOUT_MS.name, TIMEOUT_MS.default, IniEntryPermission::All),
    IniEntryDef::new(
        INLINE_BELOW.name,
        INLINE_BELOW.default,
        IniEntryPermission::All,
    ),
    IniEntryDef::new(
        MAX_COPY_BYTES.name,
        MAX_COPY_BYTES.default,
        IniEntryPermission::All,
    ),
    IniEntryDef::new(CONFIRM.name, CONFIRM.default, IniEntryPermission::All),
    // Which names exist is decided once per process, before any script is compiled: at
    // startup (php.ini, `-d`) or, in a php-fpm worker, by the pool's php_admin_value, which
    // php-fpm applies before the worker's first request. A script cannot change it.
    IniEntryDef {
        on_modify: Some(ffi::global_functions_changed::<GlobalFunctionsSetting>),
        ..IniEntryDef::new(
            GLOBAL_FUNCTIONS.name,
            GLOBAL_FUNCTIONS.default,
            IniEntryPermission::System,
        )
    },
    IniEntryDef::end(),
]);

fn number(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok()
}

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
    /// The largest stream that is copied into memory to be sent; 0: no limit.
    pub max_copy_bytes: u64,
    /// Use the confirmed two-phase handoff instead of the one-way one.
    pub confirm: bool,
}

pub fn current() -> Settings {
    let socket = ffi::ini_string(SOCKET.name())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| SOCKET.default.to_string_lossy().into_owned());
    let fallback = match ffi::ini_string(FALLBACK.name()) {
        Some(v) => parse_fallback(&v),
        None => Fallback::Stream,
    };
    let timeout_ms = ffi::ini_string(TIMEOUT_MS.name())
        .and_then(|s| number(&s))
        .filter(|&ms| ms > 0)
        .unwrap_or_else(|| TIMEOUT_MS.default_number());
    let inline_below = ffi::ini_string(INLINE_BELOW.name())
        .and_then(|s| number(&s))
        .unwrap_or_else(|| INLINE_BELOW.default_number());
    let max_copy_bytes = ffi::ini_string(MAX_COPY_BYTES.name())
        .and_then(|s| number(&s))
        .unwrap_or_else(|| MAX_COPY_BYTES.default_number());
    let confirm = ffi::ini_string(CONFIRM.name()).is_some_and(|v| parse_bool(&v));
    Settings {
        socket: PathBuf::from(socket),
        fallback,
        timeout: Duration::from_millis(timeout_ms),
        inline_below,
        max_copy_bytes,
        confirm,
    }
}

/// php.ini stores `On`/`yes`/`true` as "1" and `Off`/`no`/`false`/`none` as "";
/// `ini_set()` stores the string given.
fn parse_bool(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

/// What a `handoff.global_functions` value asks for: `true` keeps the global names. php.ini
/// stores an unquoted `Off` as an empty string and `On` as "1".
pub fn global_functions_wanted(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "off" | "false" | "no" | "none"
    )
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
    fn defaults_are_what_the_code_reads_when_a_value_does_not_parse() {
        assert_eq!(TIMEOUT_MS.default_number(), 1000);
        assert_eq!(INLINE_BELOW.default_number(), 64 * 1024);
        assert_eq!(MAX_COPY_BYTES.default_number(), 256 * 1024 * 1024);
        assert_eq!(
            parse_fallback(FALLBACK.default.to_str().unwrap()),
            Fallback::Stream
        );
        assert_eq!(SOCKET.name(), "handoff.socket");
    }

    #[test]
    fn confirm_is_off_unless_switched_on() {
        assert!(!parse_bool(CONFIRM.default.to_str().unwrap()));
        for v in ["1", "On", "yes", " true "] {
            assert!(parse_bool(v), "{v:?}");
        }
        for v in ["", "0", "off", "no", "false", "none", "2"] {
            assert!(!parse_bool(v), "{v:?}");
        }
    }

    #[test]
    fn global_functions_off_in_every_spelling_php_ini_produces() {
        for v in ["", "0", "off", "Off", "false", "no", " off "] {
            assert!(!global_functions_wanted(v), "{v:?}");
        }
        for v in ["1", "on", "On", "yes", "true"] {
            assert!(global_functions_wanted(v), "{v:?}");
        }
        assert!(global_functions_wanted(
            GLOBAL_FUNCTIONS.default.to_str().unwrap()
        ));
    }

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
