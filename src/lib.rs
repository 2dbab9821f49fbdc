//! handoff: a PHP extension whose `send_file()` hands the request's connection and the open
//! file to `handoff-manager`, so that the PHP worker is free at once.
//!
//! - [`send`]: `send_file()`: reads the request context from PHP, then opens the file and
//!   hands off or streams in-process as [`decision`] decides.
//! - [`decision`]: what to do with a request (throw, stream inline, hand off, fall back),
//!   in plain Rust over a request context, unit-tested without PHP.
//! - [`connection`]: finds the request's connection for php-fpm and `php -S`, validates
//!   it, and makes the worker forget it after a handoff.
//! - [`source`]: what is sent: a path (optionally deleted at once) or a PHP stream (its
//!   own descriptor, or a copy in an anonymous memory file).
//! - [`fallback`]: in-process streaming of the same plan through PHP's output layer.
//! - [`options`], [`settings`], [`error`]: the `$options` array, the `handoff.*` ini
//!   settings and the exceptions.
//! - [`ffi`]: the only `unsafe` code (the crate denies it elsewhere): SAPI internals, the
//!   SAPIs' connections, PHP's output layer and streams, the engine functions not in the
//!   bindings.
//!
//! The response planning, the handoff protocol (with the worker's side of the handshake)
//! and the head rendering live in the `handoff-core` crate (`core/`), shared with the
//! manager; the extension does not link the daemon. docs/internals.md has the facts
//! about PHP, the web servers and the kernel that this code relies on, and a map of where
//! each part lives.

#![cfg_attr(windows, feature(abi_vectorcall))]
// `unsafe` is allowed only in `ffi`. The ext-php-rs macros used below (`#[php_function]`,
// `#[php_module]`) expand to `unsafe` blocks and `#[unsafe(no_mangle)]` of their own: rustc
// does not report `unsafe_code` in code expanded from another crate's macro, so they need
// no allow here (keeping that code sound is ext-php-rs' part), while any `unsafe` written
// in this crate outside `ffi` fails the build.
#![deny(unsafe_code)]

pub mod connection;
pub mod decision;
pub mod error;
pub mod fallback;
#[allow(unsafe_code)]
pub mod ffi;
pub mod options;
pub mod send;
pub mod settings;
pub mod source;

use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::exception::PhpException;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendHashTable, Zval};
use ext_php_rs::zend::{ClassEntry, IniEntryDef, ModuleEntry};

use crate::error::Failure;
use crate::send::Sent;

/// `HandoffException extends RuntimeException`: thrown by `send_file()` for every error
/// detected before a byte is sent. Registered as a plain PHP class (no Rust object behind
/// it) so that scripts can also construct, extend and catch it like any exception.
const EXCEPTION_CLASS: &str = "HandoffException";

fn throw(e: error::SendFileError) -> PhpException {
    let ce = ClassEntry::try_find(EXCEPTION_CLASS).unwrap_or_else(ffi::runtime_exception);
    PhpException::new(e.to_string(), 0, ce)
}

/// Sends a file (a path or an open stream) as the response: hands it to handoff-manager
/// (returns true) or streams it from this process (returns false). Throws
/// HandoffException before sending anything if the file or the options are unusable.
///
/// A PHP bailout caught while streaming (client gone, fatal error) is resumed here, with a
/// `longjmp` that skips every Rust frame up to ext-php-rs' handler, which runs no
/// destructor. So [`send_file_until_bailout`] does all the work and returns; by then every
/// value with a destructor that it or its callees created (the options' strings, the plan,
/// the open file, the read buffer) has been dropped by the normal returns. In the bailout
/// arm below the only live values are `file` and `options` (plain references: PHP owns the
/// zvals) and the zero-sized [`Bailed`]; the handler that called us holds only references
/// (ext-php-rs' argument fast path) and re-raises the bailout from a frame of its own.
/// So the parameters must stay borrowed types: an owned one (a `String`, a `Vec`) would live
/// in the handler's frame, which the `longjmp` skips.
///
/// Registered twice: as `Handoff\send_file()`, always, and as the global `send_file()`
/// unless `handoff.global_functions` is Off. Both PHP names call [`send_file_or_resume`];
/// their frames hold only references too.
#[php_function]
#[php(name = "Handoff\\send_file")]
pub fn handoff_send_file(file: &Zval, options: Option<&ZendHashTable>) -> PhpResult<bool> {
    send_file_or_resume(file, options)
}

/// The global `send_file()`: see [`handoff_send_file`].
#[php_function]
pub fn send_file(file: &Zval, options: Option<&ZendHashTable>) -> PhpResult<bool> {
    send_file_or_resume(file, options)
}

fn send_file_or_resume(file: &Zval, options: Option<&ZendHashTable>) -> PhpResult<bool> {
    match send_file_until_bailout(file, options) {
        Ok(result) => result,
        Err(Bailed) => ffi::resume_bailout(),
    }
}

/// A bailout was caught; nothing of ours is alive any more. Deliberately `Copy` with no
/// fields: the frame that resumes the bailout must own nothing with a destructor.
#[derive(Debug, Clone, Copy)]
struct Bailed;

/// `send_file()` up to the point where a caught bailout must be resumed.
fn send_file_until_bailout(
    file: &Zval,
    options: Option<&ZendHashTable>,
) -> Result<PhpResult<bool>, Bailed> {
    let source = match source::Source::from_php(file, options) {
        Ok(source) => source,
        Err(e) => return Ok(Err(throw(e))),
    };
    let options = match options::parse(options) {
        Ok(options) => options,
        Err(e) => return Ok(Err(throw(e))),
    };
    match send::send_file(source, &options) {
        Ok(Sent::HandedOff) => Ok(Ok(true)),
        Ok(Sent::Streamed) => Ok(Ok(false)),
        Err(Failure::Error(e)) => Ok(Err(throw(e))),
        Err(Failure::Bailout) => Err(Bailed),
    }
}

/// Whether handoff-manager answers at `handoff.socket`: lets an application decide, for
/// example, between send_file() and its own strategy. `Handoff\available()`, always.
#[php_function]
#[php(name = "Handoff\\available")]
pub fn handoff_available_namespaced() -> bool {
    send::manager_answers(&settings::current()).is_ok()
}

/// The global `handoff_available()`, unless `handoff.global_functions` is Off.
#[php_function]
pub fn handoff_available() -> bool {
    handoff_available_namespaced()
}

pub fn startup(_ty: i32, module_number: i32) -> i32 {
    IniEntryDef::register(settings::INI_ENTRIES.as_slice(), module_number);
    let registered = ClassBuilder::new(EXCEPTION_CLASS)
        .extends((ffi::runtime_exception, "RuntimeException"))
        // No methods of our own, so there are no argument tables to keep alive.
        .registration(|_class, _arg_info| {})
        .register();
    i32::from(registered.is_err()).wrapping_neg()
}

/// Rows of the phpinfo() section.
pub fn info_rows() -> Vec<(String, String)> {
    let s = settings::current();
    let manager = match send::manager_answers(&s) {
        Ok(()) => "answers".to_string(),
        Err(e) => format!("not reachable: {e}"),
    };
    let last = send::LAST_FALLBACK
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    vec![
        ("handoff support".into(), "enabled".into()),
        ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ("SAPI handoff".into(), ffi::sapi_name()),
        (
            settings::SOCKET.name().into(),
            s.socket.display().to_string(),
        ),
        (
            settings::FALLBACK.name().into(),
            format!("{:?}", s.fallback).to_lowercase(),
        ),
        (
            settings::TIMEOUT_MS.name().into(),
            s.timeout.as_millis().to_string(),
        ),
        (
            settings::INLINE_BELOW.name().into(),
            s.inline_below.to_string(),
        ),
        (
            settings::MAX_COPY_BYTES.name().into(),
            s.max_copy_bytes.to_string(),
        ),
        (
            settings::CONFIRM.name().into(),
            if s.confirm { "on" } else { "off" }.into(),
        ),
        ("manager".into(), manager),
        ("last fallback reason (this process)".into(), last),
    ]
}

/// The `phpinfo()` section: PHP calls it with the module's entry, which is not needed.
pub extern "C" fn module_info(_module: *mut ModuleEntry) {
    ffi::print_info_table(info_rows());
}

#[php_module]
#[php(startup = "startup")]
pub fn get_module(module: ModuleBuilder) -> ModuleBuilder {
    module
        .function(wrap_function!(handoff_send_file))
        .function(wrap_function!(handoff_available_namespaced))
        .function(wrap_function!(send_file))
        .function(wrap_function!(handoff_available))
        .info_function(module_info)
}
