//! handoff's integration tests, one binary: real nginx, lighttpd, Caddy, php-fpm, `php -S`,
//! Apache with mod_php and with mod_proxy_fcgi, handoff-manager and curl, each test in its
//! own temporary directory.
//!
//! Needs `cargo build --release --workspace` first: the extension and the manager are taken
//! from `target/release`, or from `$HANDOFF_EXT` and `$HANDOFF_MANAGER`.

mod util;

mod apache;
mod compose;
mod delete_after_send;
mod differential;
mod faults;
mod fpm;
mod frameworks;
mod global_functions;
mod kubernetes;
mod matrix;
mod operate;
mod pacing;
mod php_level;
mod php_package;
mod records;
mod release;
mod streams;
mod systemd;
mod user_code;
mod valgrind;
