//! The extension's only `unsafe` code: reading PHP's SAPI state, finding the request's
//! connection inside the SAPI's private structures, and switching PHP's output off.
//!
//! Everything here is called from inside a PHP request on the request's own thread (the
//! extension supports NTS builds), where the SAPI globals are live and nothing else runs.
//! The struct offsets are those of docs/internals.md (verified on PHP 8.2 and 8.4; the
//! `fcgi_request` field order is the same in all PHP 7 and 8 sources, as is the start of
//! mod_php's `php_struct`, and `request_rec` begins the same way throughout Apache 2.4) and
//! are never trusted alone: the caller validates every descriptor read from them before
//! using it (see `connection.rs` and docs/internals.md).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{BorrowedFd, RawFd};
use std::panic::AssertUnwindSafe;

use ext_php_rs::ffi;
use ext_php_rs::zend::ModuleEntry;

/// `PHP_OUTPUT_DISABLED` from main/php_output.h.
const PHP_OUTPUT_DISABLED: c_int = 0x02;

extern "C" {
    // Exported by every PHP binary (php-fpm, php, libphp) but not in ext-php-rs' bindings.
    fn php_output_discard_all();
    fn php_output_set_status(status: c_int);
    fn php_output_get_level() -> c_int;
    fn php_output_get_length(p: *mut ffi::zval) -> ffi::zend_result;
    fn php_check_open_basedir_ex(path: *const c_char, warn: c_int) -> c_int;
    fn zend_ini_string_ex(
        name: *const c_char,
        name_length: usize,
        orig: bool,
        exists: *mut bool,
    ) -> *mut c_char;
    fn sapi_getenv(name: *const c_char, name_len: usize) -> *mut c_char;
    fn sapi_send_headers() -> c_int;
    fn zend_is_auto_global_str(name: *const c_char, len: usize) -> bool;
    static mut spl_ce_RuntimeException: *mut ffi::zend_class_entry;
}

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

/// The request's connection as php-fpm keeps it (`fcgi_request`).
#[derive(Debug, Clone, Copy)]
pub struct FpmRequest {
    pub listen_socket: RawFd,
    pub fd: RawFd,
    pub id: i32,
    pub keep: i32,
    pub ended: i32,
}

/// Reads php-fpm's `fcgi_request` behind `SG(server_context)`. Only call under the
/// `fpm-fcgi` SAPI; validate every field before use.
pub fn fpm_request() -> Option<FpmRequest> {
    // SAFETY: under fpm-fcgi, SG(server_context) is the current `fcgi_request*` (or NULL);
    // the struct is at least 28 bytes and starts with the int fields read here at the
    // offsets in docs/internals.md.
    unsafe {
        let p = (*sg()).server_context.cast::<u8>();
        if p.is_null() {
            return None;
        }
        let int_at = |off: usize| std::ptr::read_unaligned(p.add(off).cast::<c_int>());
        Some(FpmRequest {
            listen_socket: int_at(0),
            fd: int_at(8),
            id: int_at(12),
            keep: int_at(16),
            ended: int_at(24),
        })
    }
}

/// Reads the client socket of `php -S` (`php_cli_server_client.sock`). Only call under
/// the `cli-server` SAPI; validate before use.
pub fn cli_server_socket() -> Option<RawFd> {
    // SAFETY: under cli-server, SG(server_context) is the current
    // `php_cli_server_client*`, whose `sock` int follows the 8-byte server pointer.
    unsafe {
        let p = (*sg()).server_context.cast::<u8>();
        if p.is_null() {
            return None;
        }
        Some(std::ptr::read_unaligned(p.add(8).cast::<c_int>()))
    }
}

/// Why mod_php's client socket could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApacheSocketError {
    /// `ap_get_conn_socket` or `apr_os_sock_get` is not in the process (not Apache 2.4).
    MissingSymbol(&'static str),
    /// A pointer on the way to the socket was NULL.
    Null(&'static str),
    /// `apr_os_sock_get` returned this APR status.
    Apr(c_int),
    /// A structure did not look as Apache 2.4 lays it out.
    Layout(&'static str),
}

/// Reads mod_php's client socket: `SG(server_context)` is a `php_struct*` whose
/// `request_rec *r` follows an `int` (offset 8), `r->connection` is the `conn_rec*` at
/// offset 8 of `request_rec` (after its pool), and Apache's own `ap_get_conn_socket()` and
/// APR's `apr_os_sock_get()` turn that into the descriptor. Only call under the
/// `apache2handler` SAPI; validate the result before use.
pub fn apache_client_socket() -> Result<RawFd, ApacheSocketError> {
    type GetConnSocket = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
    type OsSockGet = unsafe extern "C" fn(*mut c_int, *mut c_void) -> c_int;
    let get_conn_socket = lookup(c"ap_get_conn_socket")
        .ok_or(ApacheSocketError::MissingSymbol("ap_get_conn_socket"))?;
    let os_sock_get =
        lookup(c"apr_os_sock_get").ok_or(ApacheSocketError::MissingSymbol("apr_os_sock_get"))?;
    // SAFETY: the two symbols are the exported Apache 2.4 / APR 1.x functions of these
    // names (checked non-NULL above), with the C signatures
    // `apr_socket_t *ap_get_conn_socket(conn_rec *)` and
    // `apr_status_t apr_os_sock_get(apr_os_sock_t *, apr_socket_t *)`, where
    // `apr_os_sock_t` is `int` on Unix.
    let (get_conn_socket, os_sock_get) = unsafe {
        (
            std::mem::transmute::<*mut c_void, GetConnSocket>(get_conn_socket),
            std::mem::transmute::<*mut c_void, OsSockGet>(os_sock_get),
        )
    };
    // SAFETY: under apache2handler, SG(server_context) is the request's `php_struct*` (or
    // NULL) for the whole request; `php_struct` starts with `int state` and then the
    // `request_rec *r` at offset 8, and `request_rec` starts with `apr_pool_t *pool`
    // and then `conn_rec *connection` at offset 8 (docs/internals.md). Every pointer is
    // checked for NULL before it is followed; the conn_rec lives as long as the connection.
    unsafe {
        let ctx = (*sg()).server_context.cast::<u8>();
        if ctx.is_null() {
            return Err(ApacheSocketError::Null("php_struct"));
        }
        let r = std::ptr::read_unaligned(ctx.add(8).cast::<*mut u8>());
        if r.is_null() {
            return Err(ApacheSocketError::Null("request_rec"));
        }
        let conn = std::ptr::read_unaligned(r.add(8).cast::<*mut c_void>());
        if conn.is_null() {
            return Err(ApacheSocketError::Null("conn_rec"));
        }
        let sock = get_conn_socket(conn);
        if sock.is_null() {
            return Err(ApacheSocketError::Null("apr_socket_t"));
        }
        let mut fd: c_int = -1;
        match os_sock_get(&mut fd, sock) {
            0 => Ok(fd),
            status => Err(ApacheSocketError::Apr(status)),
        }
    }
}

/// What Apache itself still holds for the request's connection (mod_php), besides what
/// the request's own output filters will write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApachePending {
    /// `c->data_in_output_filters`: the core output filter set aside bytes of an earlier
    /// response on this connection (HTTP pipelining: Apache does not flush a response while
    /// the next request is already buffered) that it will write later.
    pub unsent_output: bool,
    /// A nonblocking speculative read of the connection's input filters found bytes: the
    /// next pipelined request (or this request's unread body).
    pub buffered_input: bool,
}

/// Filters in a connection's chain beyond which the layout is not believed.
const MAX_FILTERS: usize = 32;

/// Reads what Apache still holds for the request's connection, through `conn_rec` fields
/// beyond the ones `apache_client_socket` uses: `input_filters` (offset 104),
/// `output_filters` (112), `bucket_alloc` (128), `data_in_input_filters` (144) and
/// `data_in_output_filters` (148), the Apache 2.4 layout on LP64 (`include/httpd.h`; the
/// fields up to `data_in_output_filters` have been there since 2.3). The layout is
/// validated before anything is believed: both filter pointers must lead to chains of
/// `ap_filter_t` whose `c` is this very `conn_rec` and which end in Apache's core filters
/// (`CORE_IN`, `CORE`), and both flags must be 0 or 1. Only call under `apache2handler`,
/// after [`apache_client_socket`] succeeded.
pub fn apache_pending() -> Result<ApachePending, ApacheSocketError> {
    type GetBrigade = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, c_int, i64) -> c_int;
    type BrigadeCreate = unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void;
    type BrigadeLength = unsafe extern "C" fn(*mut c_void, c_int, *mut i64) -> c_int;
    type BrigadeDestroy = unsafe extern "C" fn(*mut c_void) -> c_int;
    /// `AP_MODE_SPECULATIVE` and `APR_NONBLOCK_READ` (util_filter.h, apr_buckets.h).
    const AP_MODE_SPECULATIVE: c_int = 3;
    const APR_NONBLOCK_READ: c_int = 1;
    let symbol = |name: &'static CStr, label: &'static str| {
        lookup(name).ok_or(ApacheSocketError::MissingSymbol(label))
    };
    let get_brigade = symbol(c"ap_get_brigade", "ap_get_brigade")?;
    let brigade_create = symbol(c"apr_brigade_create", "apr_brigade_create")?;
    let brigade_length = symbol(c"apr_brigade_length", "apr_brigade_length")?;
    let brigade_destroy = symbol(c"apr_brigade_destroy", "apr_brigade_destroy")?;
    // SAFETY: the exported Apache 2.4 / APR-util 1.x functions of these names (checked
    // non-NULL), with the C signatures
    // `apr_status_t ap_get_brigade(ap_filter_t *, apr_bucket_brigade *, ap_input_mode_t,
    // apr_read_type_e, apr_off_t)`, `apr_bucket_brigade *apr_brigade_create(apr_pool_t *,
    // apr_bucket_alloc_t *)`, `apr_status_t apr_brigade_length(apr_bucket_brigade *, int,
    // apr_off_t *)` and `apr_status_t apr_brigade_destroy(apr_bucket_brigade *)`; the two
    // enums are `int`s and `apr_off_t` is 64-bit on LP64 Linux.
    let (get_brigade, brigade_create, brigade_length, brigade_destroy) = unsafe {
        (
            std::mem::transmute::<*mut c_void, GetBrigade>(get_brigade),
            std::mem::transmute::<*mut c_void, BrigadeCreate>(brigade_create),
            std::mem::transmute::<*mut c_void, BrigadeLength>(brigade_length),
            std::mem::transmute::<*mut c_void, BrigadeDestroy>(brigade_destroy),
        )
    };
    // SAFETY: as in `apache_client_socket` for `php_struct` → `request_rec` (whose
    // `pool` is at offset 0) → `conn_rec`; every further pointer is checked for NULL and
    // followed only inside structures whose layout the checks before it confirmed: an
    // `ap_filter_t` is `{ frec, ctx, next, r, c }` (offsets 0, 8, 16, 24, 32) and an
    // `ap_filter_rec_t` starts with its `name`. The chains are walked at most MAX_FILTERS
    // deep. The speculative read only moves bytes from the socket into the core input
    // filter's own buffer, where Apache reads them next, as `ap_check_pipeline` does; the
    // brigade is created in the request's pool and destroyed before returning.
    unsafe {
        let ctx = (*sg()).server_context.cast::<u8>();
        if ctx.is_null() {
            return Err(ApacheSocketError::Null("php_struct"));
        }
        let r = std::ptr::read_unaligned(ctx.add(8).cast::<*mut u8>());
        if r.is_null() {
            return Err(ApacheSocketError::Null("request_rec"));
        }
        let pool = std::ptr::read_unaligned(r.cast::<*mut c_void>());
        let c = std::ptr::read_unaligned(r.add(8).cast::<*mut u8>());
        if pool.is_null() || c.is_null() {
            return Err(ApacheSocketError::Null("conn_rec"));
        }
        let field = |off: usize| std::ptr::read_unaligned(c.add(off).cast::<*mut u8>());
        let (input, output, bucket_alloc) = (field(104), field(112), field(128));
        if bucket_alloc.is_null() {
            return Err(ApacheSocketError::Layout("conn_rec.bucket_alloc"));
        }
        // The chain from `first`: each filter names `c` as its connection, the last one is
        // the core filter called `core`.
        let chain_ends_in = |first: *mut u8, core: &[u8]| {
            let mut f = first;
            for _ in 0..MAX_FILTERS {
                if f.is_null() || std::ptr::read_unaligned(f.add(32).cast::<*mut u8>()) != c {
                    return false;
                }
                let next = std::ptr::read_unaligned(f.add(16).cast::<*mut u8>());
                if next.is_null() {
                    let frec = std::ptr::read_unaligned(f.cast::<*const *const c_char>());
                    if frec.is_null() {
                        return false;
                    }
                    let name = std::ptr::read_unaligned(frec);
                    return !name.is_null()
                        && CStr::from_ptr(name).to_bytes().eq_ignore_ascii_case(core);
                }
                f = next;
            }
            false
        };
        if !chain_ends_in(input, b"core_in") {
            return Err(ApacheSocketError::Layout("conn_rec.input_filters"));
        }
        if !chain_ends_in(output, b"core") {
            return Err(ApacheSocketError::Layout("conn_rec.output_filters"));
        }
        let flag = |off: usize| std::ptr::read_unaligned(c.add(off).cast::<c_int>());
        let (data_in_input, data_in_output) = (flag(144), flag(148));
        if !matches!(data_in_input, 0 | 1) || !matches!(data_in_output, 0 | 1) {
            return Err(ApacheSocketError::Layout("conn_rec.data_in_*_filters"));
        }
        let bb = brigade_create(pool, bucket_alloc.cast());
        if bb.is_null() {
            return Err(ApacheSocketError::Null("apr_bucket_brigade"));
        }
        let mut len: i64 = 0;
        let read = get_brigade(input.cast(), bb, AP_MODE_SPECULATIVE, APR_NONBLOCK_READ, 1);
        let buffered_input = read == 0 && brigade_length(bb, 1, &mut len) == 0 && len > 0;
        brigade_destroy(bb);
        Ok(ApachePending {
            unsent_output: data_in_output == 1,
            buffered_input,
        })
    }
}

/// A function exported by the process or a library it loaded, if present.
fn lookup(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `name` is a valid C string; RTLD_DEFAULT searches the global symbol scope,
    // and dlsym only reads it.
    let p = unsafe { nix::libc::dlsym(nix::libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// The PHP request that a `send_file()` call runs in, as far as the SAPI's descriptors go.
///
/// The SAPI keeps the request's connection open until the request ends, which is after
/// `send_file()` returns. A `Request` lives on the stack of one `send_file()` call (it is
/// neither `Clone`, `Send` nor storable beyond it: see [`Request::within_call`]), so a
/// descriptor it lends out, as a `BorrowedFd` tied to it, cannot outlive the request.
#[derive(Debug)]
pub struct Request {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Request {
    /// Runs `f` with the current request. Only call from inside a PHP request (a PHP
    /// function's body); the request is not handed out beyond `f`.
    pub fn within_call<T>(f: impl FnOnce(&Request) -> T) -> T {
        f(&Request {
            _not_send: std::marker::PhantomData,
        })
    }

    /// Lends out a descriptor number read from the SAPI's request structures, if it is an
    /// open socket: the first check of every such number, which makes the borrow sound.
    /// What socket it is (connected, accepted on php-fpm's listener, the request's own
    /// peer) the caller validates next (see `connection.rs` and docs/internals.md).
    pub fn sapi_socket(&self, fd: RawFd) -> Option<BorrowedFd<'_>> {
        if fd < 0 {
            return None;
        }
        let st = nix::sys::stat::fstat(fd).ok()?;
        let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode);
        if kind & nix::sys::stat::SFlag::S_IFMT != nix::sys::stat::SFlag::S_IFSOCK {
            return None;
        }
        // SAFETY: `fd` is open (fstat just succeeded) and is the SAPI's socket for this
        // request, which the SAPI keeps open until the request ends; the borrow is tied
        // to `self`, which does not outlive the `send_file()` call. Replacing the number
        // with /dev/null (`dup2`, see `connection::Neutered`) keeps it open.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }
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

/// Keeps PHP from adding its `default_mimetype` to a head that has no `Content-Type` on
/// purpose (304, 412, 416: no representation).
pub fn suppress_default_content_type() {
    // SAFETY: as `headers_sent`; a plain flag of the live globals, read when the head is sent.
    unsafe { (*sg()).sapi_headers.send_default_content_type = 0 };
}

/// Drops every output buffer the script started (their content is not the file). Runs
/// the script's output handlers.
pub fn discard_output_buffers() -> Result<(), Bailout> {
    // SAFETY: valid during a request; discards user and default output buffers.
    guarded(|| unsafe { php_output_discard_all() })
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

/// Writes through PHP's output layer (and so the SAPI: headers first, then the body).
pub fn output_write(bytes: &[u8]) -> Result<usize, Bailout> {
    // SAFETY: `bytes` is valid for its length for the duration of the call.
    guarded(|| unsafe { ffi::php_output_write(bytes.as_ptr().cast(), bytes.len()) })
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

/// `open_basedir` check, without PHP's own warning (we throw instead).
pub fn open_basedir_allows(path: &CStr) -> bool {
    // SAFETY: `path` is a valid C string for the call.
    unsafe { php_check_open_basedir_ex(path.as_ptr(), 0) == 0 }
}

/// The current value of an ini setting.
pub fn ini_string(name: &str) -> Option<String> {
    let mut exists = false;
    // SAFETY: `name` is valid for its length; the returned value is owned by the ini
    // table and valid until the setting changes, and we copy it at once.
    let p = unsafe { zend_ini_string_ex(name.as_ptr().cast(), name.len(), false, &mut exists) };
    if !exists {
        return None;
    }
    c_str_to_string(p)
}

/// PHP's `on_modify` handler of `handoff.global_functions`, run when the value is set: at
/// startup by the ini registration (php.ini, `-d`), and in a php-fpm worker by the pool's
/// `php_admin_value`, before the worker's first request.
///
/// Off deletes the global `send_file()` and `handoff_available()` from the function table,
/// the way PHP's own `disable_functions` does, so a script may declare functions of those
/// names; `Handoff\send_file()` and `Handoff\available()` stay. No request is running at
/// either moment (the executor counts its persistent functions at each request's start, so
/// the smaller table is what every later request sees). Once deleted, the functions cannot
/// come back in this process: On after Off is refused, and the setting keeps saying Off.
///
/// # Safety
/// Called by PHP with a valid (or null) `new_value`, outside any request.
pub unsafe extern "C" fn global_functions_changed(
    _entry: *mut ffi::zend_ini_entry,
    new_value: *mut ffi::zend_string,
    _arg1: *mut c_void,
    _arg2: *mut c_void,
    _arg3: *mut c_void,
    _stage: c_int,
) -> c_int {
    const SUCCESS: c_int = 0;
    const FAILURE: c_int = -1;
    // SAFETY: PHP passes the new value as a live zend_string (or null for no value).
    let value = match unsafe { new_value.as_ref() } {
        Some(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        None => String::new(),
    };
    // SAFETY: the compiler globals exist for the life of the process; their function table
    // is set up before any extension starts.
    let table = unsafe { (*ffi::ext_php_rs_compiler_globals()).function_table };
    if table.is_null() {
        return FAILURE;
    }
    let wanted = crate::settings::global_functions_wanted(&value);
    for name in crate::settings::GLOBAL_FUNCTION_NAMES {
        // SAFETY: `table` is PHP's live function table and `name` is valid for its length.
        let present =
            unsafe { !ffi::zend_hash_str_find(table, name.as_ptr().cast(), name.len()).is_null() };
        if wanted && !present {
            return FAILURE;
        }
        if !wanted && present {
            // SAFETY: as above; no request runs, so no call frame refers to the function,
            // and the table's destructor frees it as PHP's disable_functions does.
            unsafe { ffi::zend_hash_str_del(table, name.as_ptr().cast(), name.len()) };
        }
    }
    SUCCESS
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

/// The class entry of SPL's `RuntimeException`, the parent of `HandoffException`.
pub fn runtime_exception() -> &'static ext_php_rs::zend::ClassEntry {
    // SAFETY: SPL is always compiled in and registers its classes before any shared
    // extension starts, so the pointer is set and valid for the life of the process.
    unsafe {
        let p = spl_ce_RuntimeException;
        match p.as_ref() {
            Some(ce) => ce,
            None => ext_php_rs::zend::ce::exception(),
        }
    }
}

/// `phpinfo()` section: rows computed by safe code in `lib.rs`.
pub extern "C" fn module_info(_module: *mut ModuleEntry) {
    let rows = crate::info_rows();
    // SAFETY: called by PHP while printing phpinfo(); the table functions write output.
    unsafe { ffi::php_info_print_table_start() };
    for (k, v) in rows {
        ext_php_rs::info_table_row!(k.as_str(), v.as_str());
    }
    // SAFETY: as above.
    unsafe { ffi::php_info_print_table_end() };
}

// PHP streams (main/php_streams.h): what `send_file()` needs to send an open stream.
extern "C" {
    fn php_file_le_stream() -> c_int;
    fn php_file_le_pstream() -> c_int;
    fn _php_stream_cast(
        stream: *mut ffi::php_stream,
        castas: c_int,
        ret: *mut *mut c_void,
        show_err: c_int,
    ) -> c_int;
    fn _php_stream_flush(stream: *mut ffi::php_stream, closing: c_int) -> c_int;
    fn _php_stream_seek(
        stream: *mut ffi::php_stream,
        offset: ffi::zend_off_t,
        whence: c_int,
    ) -> c_int;
    fn _php_stream_tell(stream: *mut ffi::php_stream) -> ffi::zend_off_t;
    fn _php_stream_read(stream: *mut ffi::php_stream, buf: *mut c_char, count: usize) -> isize;
}

/// `PHP_STREAM_AS_FD`: the stream's own file descriptor.
const PHP_STREAM_AS_FD: c_int = 1;
/// `PHP_STREAM_CAST_INTERNAL`: we read through the descriptor ourselves and know about
/// the stream's read buffer, so PHP need not warn about "buffered data lost".
const PHP_STREAM_CAST_INTERNAL: c_int = 0x2000_0000;
/// `PHP_STREAM_FLAG_NO_SEEK`.
const PHP_STREAM_FLAG_NO_SEEK: u32 = 0x1;

/// Runs `f` with `error_reporting` at 0, as PHP's `@` does, through [`guarded`]. A cast
/// warns "N bytes of buffered data lost" when the stream had read ahead, and seeking a
/// stream that cannot seek warns "does not support seeking"; nothing is lost for us (we
/// read the file with explicit offsets, and a position that cannot be restored does not
/// matter to the response), and a warning printed before the response head would be
/// output that breaks the download. `PHP_STREAM_CAST_INTERNAL` silences the cast's only
/// for the outer stream, not for the inner file of a `php://temp`. A script's own error
/// handler is still called (PHP calls it whatever `error_reporting` says); what it prints
/// is caught as output of the script (see `send.rs`).
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, Bailout> {
    // SAFETY: the executor globals of this thread live for the process; `error_reporting`
    // is a plain int, restored before returning, also after a bailout.
    unsafe {
        let eg = ffi::ext_php_rs_executor_globals();
        let saved = (*eg).error_reporting;
        (*eg).error_reporting = 0;
        let r = guarded(f);
        (*eg).error_reporting = saved;
        r
    }
}

/// A PHP stream resource (`fopen()`, `tmpfile()`, `php://temp`, ...), borrowed from the
/// zval that holds it for the duration of the `send_file()` call.
pub struct PhpStream<'a> {
    ptr: std::ptr::NonNull<ffi::php_stream>,
    _zval: std::marker::PhantomData<&'a ext_php_rs::types::Zval>,
}

/// The stream behind a resource zval, or `None` if it holds no (open) stream: another
/// resource type, or a stream already closed with `fclose()`.
pub fn stream_from_zval(zval: &ext_php_rs::types::Zval) -> Option<PhpStream<'_>> {
    let res = zval.resource()?;
    // SAFETY: `resource()` returned the zval's live `zend_resource*`, non-NULL for a
    // resource zval. A closed resource keeps its type but gets `type_ == -1` and a NULL
    // `ptr`; a stream resource's `ptr` is its `php_stream*` (what php_stream_from_zval
    // reads after the same type check).
    unsafe {
        let res = res.as_ref()?;
        if res.type_ != php_file_le_stream() && res.type_ != php_file_le_pstream() {
            return None;
        }
        let ptr = std::ptr::NonNull::new(res.ptr.cast::<ffi::php_stream>())?;
        Some(PhpStream {
            ptr,
            _zval: std::marker::PhantomData,
        })
    }
}

/// Why an object is not an SplFileObject whose stream can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplLookup {
    /// Not an instance of SplFileObject (or of a subclass, such as SplTempFileObject).
    NotSplFileObject,
    /// An SplFileObject without exactly one open stream of its own: its constructor was
    /// not called or failed, or the stream is gone.
    NoStream,
}

/// The largest custom object part (SPL's `spl_filesystem_object` before its `std`) that
/// is scanned: about 4.3 KiB on PHP 8.2 and 8.4 (`u.dir.entry` holds a path buffer).
const MAX_OBJECT_PREFIX: usize = 64 * 1024;

extern "C" {
    static mut spl_ce_SplFileObject: *mut ffi::zend_class_entry;
}

/// The stream of an `SplFileObject` (or of a subclass: `SplTempFileObject`, a user's class),
/// without reading SPL's private struct by its layout, which differs between PHP versions.
///
/// Three facts of PHP's public object and resource APIs are enough:
/// - `handlers->offset` is, by the object API's contract, the distance from the start of
///   the object's allocation to its embedded `zend_object std` (`zend_objects_store_del`
///   frees `(char *) obj - handlers->offset`): the custom struct's bytes are
///   `[obj - offset, obj)`. SPL allocates them with `zend_object_alloc`, which zeroes them
///   all, so every byte is initialised and a pointer SPL never stored is NULL;
/// - the object keeps its `php_stream *` and, in a zval, the stream's registered
///   `zend_resource *` (`stream->res`) among those bytes;
/// - every open stream is a resource of type `le_stream` / `le_pstream` in
///   `EG(regular_list)`; a closed one has another type and a NULL `ptr`.
///
/// So the object's stream is the open stream whose `php_stream *` *and* `zend_resource *`
/// both appear, pointer-aligned, in those bytes. Exactly one must: none is an object whose
/// constructor was not called (or failed), or whose stream was closed; two would be an
/// object this code does not understand, refused rather than guessed at.
pub fn stream_from_spl_file_object(
    zval: &ext_php_rs::types::Zval,
) -> Result<PhpStream<'_>, SplLookup> {
    let obj = zval.object().ok_or(SplLookup::NotSplFileObject)?;
    // SAFETY: SPL is always compiled in and registers SplFileObject before any shared
    // extension starts; the pointer is then set for the life of the process.
    let spl_file_object = unsafe { spl_ce_SplFileObject.as_ref() };
    // A live object always has a class entry (`get_class_entry` cannot fail here).
    let is_spl = spl_file_object.is_some_and(|ce| !obj.ce.is_null() && obj.instance_of(ce));
    if !is_spl {
        return Err(SplLookup::NotSplFileObject);
    }
    // SAFETY: a live object's `handlers` points at its class's static handler table.
    let offset = unsafe { obj.handlers.as_ref() }.map_or(0, |h| h.offset);
    let word = std::mem::size_of::<usize>();
    let prefix = usize::try_from(offset).unwrap_or(0);
    if prefix == 0 || prefix > MAX_OBJECT_PREFIX || prefix % word != 0 {
        return Err(SplLookup::NoStream);
    }
    let obj_addr = std::ptr::from_ref(obj).cast::<u8>();
    // SAFETY: by the object API's contract the object's allocation starts `prefix` bytes
    // before `std` (that is the pointer PHP frees), so `[obj - prefix, obj)` is memory of
    // this live object; `zend_object_alloc` zeroed it and SPL wrote only whole fields
    // since, so every byte is initialised. `std` is pointer-aligned and `prefix` a multiple
    // of the pointer size, so each word read is aligned. The words are copied out at once:
    // nothing below runs PHP code that could change them.
    let words: Vec<usize> = unsafe {
        let base = obj_addr.sub(prefix).cast::<usize>();
        (0..prefix / word).map(|i| base.add(i).read()).collect()
    };
    let holds = |p: usize| p != 0 && words.contains(&p);
    // SAFETY: the executor globals of this thread live for the process; `regular_list` is
    // the request's resource table, valid during a request. Each value is a resource zval
    // whose `zend_resource` stays alive while the table holds it; nothing below changes
    // the table.
    let found: Vec<std::ptr::NonNull<ffi::php_stream>> = unsafe {
        let eg = ffi::ext_php_rs_executor_globals();
        let list: &ext_php_rs::types::ZendHashTable = &(*eg).regular_list;
        let (le_stream, le_pstream) = (php_file_le_stream(), php_file_le_pstream());
        list.values()
            .filter_map(|value| value.resource())
            .filter_map(|res| {
                let r = res.as_ref()?;
                if r.type_ != le_stream && r.type_ != le_pstream {
                    return None;
                }
                let stream = std::ptr::NonNull::new(r.ptr.cast::<ffi::php_stream>())?;
                (holds(stream.as_ptr() as usize) && holds(res as usize)).then_some(stream)
            })
            .collect()
    };
    match found.as_slice() {
        [stream] => Ok(PhpStream {
            ptr: *stream,
            _zval: std::marker::PhantomData,
        }),
        _ => Err(SplLookup::NoStream),
    }
}

impl PhpStream<'_> {
    /// The stream's own descriptor, if it has one without conversion (plain files,
    /// `tmpfile()`, a `php://temp` that already spilled to its temp file; also pipes and
    /// sockets, which the caller tells apart with `fstat`). Filtered streams and memory
    /// streams have none. PHP flushes the stream's buffers before handing out the
    /// descriptor, so everything written through the stream is in the file. Flushing and
    /// casting call a user-space wrapper's `stream_flush` and `stream_cast`.
    pub fn descriptor(&self) -> Result<Option<BorrowedFd<'_>>, Bailout> {
        let stream = self.ptr.as_ptr();
        // SAFETY: `stream` is a live php_stream for the borrow's duration.
        guarded(|| unsafe { _php_stream_flush(stream, 0) })?;
        // SAFETY: as above. The first call only asks whether a descriptor exists (`ret`
        // NULL): that is what keeps a `php://temp` still in memory from being converted
        // into a temp file. The second writes a `php_socket_t` (an `int`) into `slot`,
        // which has room for it.
        let cast = |ret: *mut *mut c_void| {
            quietly(|| unsafe {
                _php_stream_cast(stream, PHP_STREAM_AS_FD | PHP_STREAM_CAST_INTERNAL, ret, 0) == 0
            })
        };
        if !cast(std::ptr::null_mut())? {
            return Ok(None);
        }
        let mut slot: [c_int; 4] = [-1; 4];
        let ok = cast(slot.as_mut_ptr().cast::<*mut c_void>())?;
        // SAFETY: PHP returned the stream's own open descriptor, which the stream keeps
        // open while the borrowed zval (and so `self`) lives.
        Ok((ok && slot[0] >= 0).then(|| unsafe { BorrowedFd::borrow_raw(slot[0]) }))
    }

    /// Where PHP's stream is (`ftell`).
    pub fn tell(&self) -> i64 {
        // SAFETY: a live stream; `_php_stream_tell` only reads its position.
        unsafe { _php_stream_tell(self.ptr.as_ptr()) }
    }

    /// Whether the stream can seek at all (asking `fseek` of one that cannot would print a
    /// warning, and output before the head is fatal for a download).
    pub fn seekable(&self) -> bool {
        // SAFETY: a live stream; reads its flags and ops table.
        unsafe {
            let s = self.ptr.as_ref();
            s.flags & PHP_STREAM_FLAG_NO_SEEK == 0
                && s.ops.as_ref().is_some_and(|ops| ops.seek.is_some())
        }
    }

    /// `@fseek($stream, offset)`; false if the stream cannot seek there (PHP's warning
    /// for a stream that turns out not to seek is silenced, see [`quietly`]).
    pub fn seek(&self, offset: i64) -> Result<bool, Bailout> {
        let stream = self.ptr.as_ptr();
        // SAFETY: a live stream; seeking may call a user-space wrapper's stream_seek,
        // which is ordinary PHP code run on the request's thread.
        quietly(|| unsafe { _php_stream_seek(stream, offset, nix::libc::SEEK_SET) == 0 })
    }

    /// `fread()`: bytes read into `buf` (0 at the end), or `Err(None)` on a read error,
    /// or `Err(Some(Bailout))` if PHP bailed out (a user-space wrapper's fatal error).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Option<Bailout>> {
        let stream = self.ptr.as_ptr();
        // SAFETY: a live stream and a buffer valid for `buf.len()` bytes.
        let n = guarded(|| unsafe { _php_stream_read(stream, buf.as_mut_ptr().cast(), buf.len()) })
            .map_err(Some)?;
        usize::try_from(n).map_err(|_| None)
    }

    /// The name the stream was opened with (a path, `php://temp`, a URL), for the
    /// manager's log only: it is never shown to the client.
    pub fn opened_as(&self) -> Option<String> {
        // SAFETY: a live stream; `orig_path` is NULL or a NUL-terminated string the
        // stream owns.
        c_str_to_string(unsafe { (*self.ptr.as_ptr()).orig_path })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Only an open socket becomes a descriptor: not a file, not a closed or negative number.
    #[test]
    fn only_open_sockets_are_lent_out() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let file = tempfile::tempfile().expect("temp file");
        // A number no process has open (a closed one could be reused by another test).
        let closed = RawFd::MAX - 1;
        Request::within_call(|request| {
            let lent = request.sapi_socket(a.as_raw_fd()).expect("a socket");
            assert_eq!(lent.as_raw_fd(), a.as_raw_fd());
            assert!(request.sapi_socket(file.as_raw_fd()).is_none());
            assert!(request.sapi_socket(closed).is_none());
            assert!(request.sapi_socket(-1).is_none());
        });
    }
}
