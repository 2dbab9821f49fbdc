//! The SAPI's request state (`SG(...)`, `sapi_module`): which SAPI runs, the request's
//! method, variables and `$_SERVER`, the response status and the header lines the script
//! set, and sending the head. All of it is read or changed through the SAPI globals of the
//! request's own thread.

use std::ffi::{c_char, c_int, CStr, CString};

use ext_php_rs::ffi;

use super::{c_str_to_string, guarded, sg, Bailout};

extern "C" {
    // Exported by every PHP binary (php-fpm, php, libphp) but not in ext-php-rs' bindings.
    fn sapi_getenv(name: *const c_char, name_len: usize) -> *mut c_char;
    fn sapi_send_headers() -> c_int;
    fn zend_is_auto_global_str(name: *const c_char, len: usize) -> bool;
}

/// `sapi_module.name`: "fpm-fcgi", "cli-server", "cli", "apache2handler", ...
pub fn sapi_name() -> String {
    // SAFETY: sapi_module is initialised before any extension runs and `name` is static.
    let name = unsafe { (*ffi::ext_php_rs_sapi_module()).name };
    c_str_to_string(name).unwrap_or_default()
}

/// The SAPI is php-fpm (`sapi_module.name` is "fpm-fcgi"), without copying the name.
fn is_fpm() -> bool {
    // SAFETY: as `sapi_name`.
    let name = unsafe { (*ffi::ext_php_rs_sapi_module()).name };
    // SAFETY: a static NUL-terminated string when set.
    !name.is_null() && unsafe { CStr::from_ptr(name) } == c"fpm-fcgi"
}

/// `$_SERVER` or `$_ENV` exists in this request (auto-globals are created when the script
/// is compiled if it names them, on first use otherwise, or at request start with
/// `auto_globals_jit` off).
fn server_or_env_created() -> bool {
    let globals = ext_php_rs::zend::ProcessGlobals::get();
    globals.http_globals[ffi::TRACK_VARS_SERVER as usize].is_array()
        || globals.http_globals[ffi::TRACK_VARS_ENV as usize].is_array()
}

/// `SG(headers_sent)`.
pub fn headers_sent() -> bool {
    // SAFETY: see `sg`; reading a plain byte of the live globals. The field is an integer
    // up to PHP 8.5 and a `bool` from 8.6 on: comparing with its type's default and setting
    // it with `From<bool>` fits both.
    unsafe { (*sg()).headers_sent != Default::default() }
}

/// `SG(request_info).headers_only`: the request is a HEAD.
pub fn headers_only() -> bool {
    // SAFETY: as `headers_sent`.
    unsafe { (*sg()).request_info.headers_only }
}

/// `SG(sapi_headers).http_response_code` and the script's own status line, if any.
pub fn response_status() -> (i32, Option<String>) {
    // SAFETY: as `headers_sent`; the status line is NULL or a request-lifetime string.
    unsafe {
        let h = &(*sg()).sapi_headers;
        (h.http_response_code, c_str_to_string(h.http_status_line))
    }
}

/// The header lines the script set (`header()`, `setcookie()`, session), in order.
pub fn script_header_lines() -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    // SAFETY: `SG(sapi_headers).headers` is a zend_llist whose elements each store one
    // `sapi_header_struct` inline, starting at `data` (declared `char data[1]`, allocated
    // as `sizeof(zend_llist_element) - 1 + size`); the list is not modified while we walk
    // it (we are the only code running). The struct is read through a pointer computed
    // from the element's own pointer and the field's offset, so that it may cover the
    // whole allocation (a pointer taken from the 1-byte array would only cover that
    // byte), and without assuming alignment. Each `header` points to `header_len` bytes.
    unsafe {
        let list = &(*sg()).sapi_headers.headers;
        let mut el = list.head;
        while !el.is_null() {
            let data = el
                .cast::<u8>()
                .add(std::mem::offset_of!(ffi::zend_llist_element, data));
            let h = std::ptr::read_unaligned(data.cast::<ffi::sapi_header_struct>());
            if !h.header.is_null() {
                let bytes = std::slice::from_raw_parts(h.header.cast::<u8>(), h.header_len);
                lines.push(bytes.to_vec());
            }
            el = (*el).next;
        }
    }
    lines
}

/// Adds a response header line (`Name: value`) as `header($line, false)` does, byte for
/// byte: ext-php-rs' own `add_header` takes a `&str`, and a script's value need not be
/// UTF-8. PHP rejects (with a warning, which a script's error handler may see) a line that
/// could split the head; the planner never produces one.
pub fn add_header_line(line: &[u8]) -> Result<bool, Bailout> {
    // SAFETY: SAPI.h requires a zeroed `sapi_header_line`; all its fields are integers or
    // raw pointers, for which zero is valid.
    let mut header: ffi::sapi_header_line = unsafe { std::mem::zeroed() };
    header.line = line.as_ptr().cast();
    header.line_len = line.len();
    let done = guarded(|| {
        // SAFETY: called during a request, before the head is sent (the fallback sets its
        // head first); the engine copies the line before returning, so `line` need only
        // live for the call.
        unsafe {
            ffi::sapi_header_op(
                ffi::sapi_header_op_enum_SAPI_HEADER_ADD,
                (&raw mut header).cast(),
            )
        }
    })?;
    Ok(done == ffi::ZEND_RESULT_CODE_SUCCESS)
}

/// Sends the response head now if PHP has not yet (a file with an empty body). PHP runs a
/// `header_register_callback()` callback here unless [`run_header_callback`] ran it.
pub fn send_headers() -> Result<(), Bailout> {
    if !headers_sent() {
        // SAFETY: valid during a request; sends SG(sapi_headers) through the SAPI once.
        guarded(|| unsafe { sapi_send_headers() })?;
    }
    Ok(())
}

/// Runs the script's `header_register_callback()` callback now, once, as
/// `sapi_send_headers()` would just before it sends the head: the callback's headers then
/// are in `SG(sapi_headers)` for the handoff's head as for the fallback's, and PHP does not
/// run it a second time. `Ok(false)` if the callback threw: its exception is pending and
/// leaves `send_file()` before anything is sent.
pub fn run_header_callback() -> Result<bool, Bailout> {
    // SAFETY: the SAPI globals of this request; `callback_func` is a zval that PHP leaves
    // UNDEF unless `header_register_callback()` stored a callable (with a reference of
    // its own). It is moved out and the global set to UNDEF first, as
    // `sapi_send_headers()` does, so that whatever happens in the call it never runs
    // twice. `cb` and `retval` are plain C values on this stack (no destructor); PHP's
    // `zval_ptr_dtor` releases them. A bailout inside the call leaves both to the request's
    // memory manager, as PHP's own code would.
    unsafe {
        let g = sg();
        // As `sapi_send_headers()`: nothing runs once the head is sent, or in a SAPI that
        // sends none (the CLI).
        if (*g).headers_sent != 0
            || (*g).request_info.no_headers
            || u32::from((*g).callback_func.u1.v.type_) == ffi::IS_UNDEF
        {
            return Ok(true);
        }
        let mut cb: ffi::zval = std::ptr::read(&raw const (*g).callback_func);
        (*g).callback_func.u1.type_info = ffi::IS_UNDEF;
        let mut retval: ffi::zval = std::mem::zeroed();
        let called = guarded(|| {
            ffi::_call_user_function_impl(
                std::ptr::null_mut(),
                &raw mut cb,
                &raw mut retval,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        })?;
        if called == ffi::ZEND_RESULT_CODE_SUCCESS {
            ffi::zval_ptr_dtor(&raw mut retval);
        }
        ffi::zval_ptr_dtor(&raw mut cb);
    }
    Ok(!ext_php_rs::zend::ExecutorGlobals::has_exception())
}

/// Keeps PHP from adding its `default_mimetype` to a head that has no `Content-Type` on
/// purpose (304, 412, 416: no representation).
pub fn suppress_default_content_type() {
    // SAFETY: as `headers_sent`; a plain flag of the live globals, read when the head is sent.
    unsafe { (*sg()).sapi_headers.send_default_content_type = 0 };
}

/// A request variable from the SAPI (FastCGI params under php-fpm).
pub fn request_env(name: &str) -> Option<String> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid C string; sapi_getenv returns NULL or an emalloc'd copy that
    // we free after copying it.
    unsafe {
        let p = sapi_getenv(c.as_ptr(), name.len());
        let v = c_str_to_string(p);
        if !p.is_null() {
            ext_php_rs::alloc::efree(p.cast());
        }
        v
    }
}

/// The request method (`SG(request_info).request_method`).
pub fn request_method() -> Option<String> {
    // SAFETY: as `headers_sent`; NULL or a request-lifetime C string.
    c_str_to_string(unsafe { (*sg()).request_info.request_method })
}

/// A `$_SERVER` entry (request headers appear as `HTTP_*`). Under php-fpm they come
/// straight from the FastCGI params; other SAPIs fill `$_SERVER`, which PHP creates
/// lazily, so it is created here first.
///
/// Under php-fpm a name the params lack is what `$_SERVER` would hold: the process
/// environment's (php-fpm builds `$_SERVER` from `environ`, then the params). As long as
/// neither `$_SERVER` nor `$_ENV` (which `$_SERVER` would copy) exists yet, the script
/// cannot have changed either, so the environment is read directly: creating `$_SERVER`
/// imports every variable and param, most of a handoff's own work in the worker for a
/// request without `Range` or conditional headers.
pub fn server_var(name: &str) -> Option<String> {
    if let Some(v) = request_env(name) {
        return Some(v);
    }
    if is_fpm() && !server_or_env_created() {
        return std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    }
    // SAFETY: a valid string for the call; creates $_SERVER if a JIT auto-global.
    unsafe { zend_is_auto_global_str(c"_SERVER".as_ptr(), "_SERVER".len()) };
    let globals = ext_php_rs::zend::ProcessGlobals::get();
    let value = globals.http_server_vars()?.get(name)?;
    value
        .zend_str()
        .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
}
