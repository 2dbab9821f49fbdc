//! The extension's only `unsafe` code: everything that reaches into PHP or the SAPI below
//! what ext-php-rs' safe API offers. The folder is the one FFI module of the crate (the
//! crate root denies `unsafe_code` everywhere else), split by what the code reaches:
//!
//! - `sapi`: the SAPI's request state: its name, the request info and variables, the
//!   response status and header lines, sending the head.
//! - `connection`: where each SAPI keeps the request's connection (php-fpm's
//!   `fcgi_request`, the `php -S` client, mod_php's `php_struct` → `request_rec` →
//!   `conn_rec`), and the [`Request`] that lends those descriptors out.
//! - `output`: PHP's output layer: switching it off, its buffers, writing through it.
//! - `streams`: PHP streams and `SplFileObject`s handed to `send_file()`.
//! - `engine`: what the extension registers with the engine or asks of it: the ini
//!   handler of `handoff.global_functions`, ini values, `open_basedir`, the phpinfo()
//!   section, SPL's `RuntimeException`.
//!
//! Here, beside the helpers every part uses, is the bailout guard: [`guarded`] catches a
//! PHP bailout in any call that can run the script's code, and [`resume_bailout`]
//! continues it once Rust has dropped its values.
//!
//! Everything here is called from inside a PHP request on the request's own thread (the
//! extension supports NTS builds), where the SAPI globals are live and nothing else runs.
//! The struct offsets are those of docs/internals.md (verified on PHP 8.2 and 8.4; the
//! `fcgi_request` field order is the same in all PHP 7 and 8 sources, as is the start of
//! mod_php's `php_struct`, and `request_rec` begins the same way throughout Apache 2.4) and
//! are never trusted alone: the caller validates every descriptor read from them before
//! using it (see `connection.rs` and docs/internals.md).

mod connection;
mod engine;
mod output;
mod sapi;
mod streams;

pub use connection::*;
pub use engine::*;
pub use output::*;
pub use sapi::*;
pub use streams::*;

use std::ffi::{c_char, CStr};
use std::panic::AssertUnwindSafe;

use ext_php_rs::ffi;

fn sg() -> *mut ffi::sapi_globals_struct {
    // SAFETY: returns the address of the SAPI globals of this thread, which exist for the
    // life of the process.
    unsafe { ffi::ext_php_rs_sapi_globals() }
}

fn c_str_to_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: PHP's SAPI strings are NUL-terminated and live for the request.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A PHP bailout (fatal error, aborted connection) happened inside a call and must be
/// resumed with [`resume_bailout`] once Rust resources are dropped.
#[derive(Debug)]
pub struct Bailout;

/// Runs `f`, a call into PHP that can run the script's code (an output handler, a
/// `header_register_callback()` callback, a user stream wrapper's methods, an error
/// handler called for a warning) or raise a fatal error itself, and catches PHP's bailout.
///
/// A bailout is a `longjmp` to the nearest `zend_try`: uncaught, it would skip every Rust
/// frame in between without running a destructor, so an open file or memory file would
/// stay open for the life of the worker. Every such call goes through here; the caller
/// returns `Err(Bailout)` up to `send_file()`, whose frames drop everything on the way,
/// and [`resume_bailout`] then continues the bailout where PHP meant it to go. `f` itself
/// must own nothing with a destructor across the call into PHP.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Bailout> {
    ext_php_rs::zend::try_catch(AssertUnwindSafe(f)).map_err(|_| Bailout)
}

/// Continues a bailout caught by [`guarded`]. Call only from a frame that, like every
/// Rust frame between it and the nearest `zend_try`, holds no value with a destructor:
/// the `longjmp` skips them all (see `send_file` in `lib.rs`).
pub fn resume_bailout() -> ! {
    // SAFETY: the caller has dropped every Rust value (its own and its callees'); PHP's
    // bailout longjmps to the nearest zend_try (ext-php-rs' handler wrapper, which
    // re-raises it to the request's), as it would have without our catch.
    unsafe { ext_php_rs::zend::bailout() }
}
