//! Checks that run the same way behind nginx + php-fpm, `php -S` and Apache + mod_php.
//!
//! Each takes a started [`Stack`] and panics with a precise message on the first difference;
//! the stack prints its logs when that happens.
//!
//! By topic: [`downloads`], [`headers`], [`fallback`], [`ranges`]; every check is re-exported
//! here (`scenarios::byte_exact_through_manager`). The SAPI × feature matrix
//! (`tests/matrix.rs`) runs them behind each server.

mod downloads;
mod fallback;
mod headers;
mod ranges;

pub use downloads::*;
pub use fallback::*;
pub use headers::*;
pub use ranges::*;

use super::{Config, Kind, Stack, MIB};

/// The sizes every server must deliver byte-exact.
pub const SIZES: [u64; 4] = [0, 1, MIB, 100 * MIB];

/// GETs `data/<name>` through download.php and checks status, length and sha256; returns
/// what the script recorded as send_file()'s return value.
pub fn download_exact(
    stack: &Stack,
    name: &str,
    sha: &str,
    size: u64,
    extra_query: &str,
) -> String {
    let tag: String = extra_query
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let result = format!("{name}{tag}.result");
    let response = stack.get(
        &format!("{name}{tag}"),
        &format!("/download.php?f={name}&result={result}{extra_query}"),
    );
    assert_eq!(
        response.status, 200,
        "status for {name}:\n{}",
        response.head_text
    );
    assert_eq!(
        response.header("Content-Length"),
        Some(size.to_string().as_str()),
        "Content-Length for {name}:\n{}",
        response.head_text
    );
    assert_eq!(
        response.body_len(),
        size,
        "body length of {name} ({extra_query})"
    );
    assert_eq!(
        response.body_sha(),
        sha,
        "body sha256 of {name} ({extra_query})"
    );
    stack.wait_result(&result)
}

/// Runs `scenario` on a stack with the manager, where send_file() must return `"true"`, and
/// on one without it (the in-process fallback, `"false"`); behind nginx the logs must stay
/// clean on both.
pub fn on_both_paths(kind: Kind, scenario: impl Fn(&Stack, &str)) {
    for (manager, returned) in [(true, "true"), (false, "false")] {
        let config = Config::new(kind);
        let stack = Stack::start(if manager {
            config
        } else {
            config.without_manager()
        });
        scenario(&stack, returned);
        if kind != Kind::CliServer {
            stack.assert_clean_logs();
        }
    }
}
