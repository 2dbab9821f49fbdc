//! PHP's output layer: switching it off for a handoff, noticing output the script made
//! while our calls ran its code, discarding its buffers and writing the fallback's body
//! through it (and so through the SAPI).

use std::ffi::c_int;

use ext_php_rs::ffi;

use super::sapi::headers_sent;
use super::{guarded, sg, Bailout};

/// `PHP_OUTPUT_DISABLED` from main/php_output.h.
const PHP_OUTPUT_DISABLED: c_int = 0x02;

extern "C" {
    // Exported by every PHP binary (php-fpm, php, libphp) but not in ext-php-rs' bindings.
    fn php_output_discard_all();
    fn php_output_set_status(status: c_int);
    fn php_output_get_level() -> c_int;
    fn php_output_get_length(p: *mut ffi::zval) -> ffi::zend_result;
}

/// Switches PHP's output off for the rest of the request: buffered output is discarded,
/// later `echo`s go nowhere, `header()` only warns, and the SAPI sends no head of its own.
/// Output is switched off before the buffers are discarded, which runs the script's output
/// handlers (user code, see [`guarded`]): a fatal error in one leaves output off.
pub fn disable_output() -> Result<(), Bailout> {
    // SAFETY: valid during a request; they only touch request globals.
    unsafe {
        php_output_set_status(PHP_OUTPUT_DISABLED);
        (*sg()).headers_sent = From::from(true);
        (*sg()).request_info.no_headers = true;
    }
    discard_output_buffers()
}

/// What the script's output looked like at one moment: whether the head was sent, and
/// how many output buffers held how many bytes. Compared before and after a call that
/// runs user code, to notice output it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputMark {
    headers_sent: bool,
    level: c_int,
    length: i64,
}

/// The script's output now (see [`OutputMark`]).
pub fn output_mark() -> OutputMark {
    // SAFETY: valid during a request; `php_output_get_length` writes a long (or nothing,
    // without an active buffer) into the zeroed zval on this stack.
    let (level, length) = unsafe {
        let mut z: ffi::zval = std::mem::zeroed();
        let length = if php_output_get_length(&raw mut z) == ffi::ZEND_RESULT_CODE_SUCCESS
            && u32::from(z.u1.v.type_) == ffi::IS_LONG
        {
            z.value.lval
        } else {
            0
        };
        (php_output_get_level(), length)
    };
    OutputMark {
        headers_sent: headers_sent(),
        level,
        length,
    }
}

/// Drops every output buffer the script started (their content is not the file). Runs
/// the script's output handlers.
pub fn discard_output_buffers() -> Result<(), Bailout> {
    // SAFETY: valid during a request; discards user and default output buffers.
    guarded(|| unsafe { php_output_discard_all() })
}

/// Writes through PHP's output layer (and so the SAPI: headers first, then the body).
pub fn output_write(bytes: &[u8]) -> Result<usize, Bailout> {
    // SAFETY: `bytes` is valid for its length for the duration of the call.
    guarded(|| unsafe { ffi::php_output_write(bytes.as_ptr().cast(), bytes.len()) })
}
