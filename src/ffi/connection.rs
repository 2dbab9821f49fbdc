//! Where each SAPI keeps the request's connection: php-fpm's `fcgi_request`, the client of
//! `php -S`, and mod_php's `php_struct` → `request_rec` → `conn_rec` (walked once, in
//! [`apache_request`], for both the client socket and what Apache still holds for the
//! connection). The offsets are those of docs/internals.md and are never trusted alone:
//! [`Request::sapi_socket`] lends out only an open socket, and `crate::connection`
//! validates it further before anything is handed off.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::{BorrowedFd, RawFd};

use super::sg;

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

/// mod_php's request as far as this code follows it: the `request_rec`'s pool and its
/// `conn_rec`.
#[derive(Debug, Clone, Copy)]
struct ApacheRequest {
    /// `r->pool` (may be NULL: only [`apache_pending`] needs it and checks it).
    pool: *mut c_void,
    /// `r->connection`, never NULL.
    connection: *mut u8,
}

/// The one walk from `SG(server_context)` to mod_php's connection: the context is a
/// `php_struct*` whose `request_rec *r` follows an `int` (offset 8), and `request_rec`
/// starts with `apr_pool_t *pool` and then `conn_rec *connection` at offset 8
/// (docs/internals.md). Every pointer is checked for NULL before it is followed.
///
/// # Safety
/// Only under the `apache2handler` SAPI, during a request: then `SG(server_context)` is
/// the request's `php_struct*` (or NULL) for the whole request.
unsafe fn apache_request() -> Result<ApacheRequest, ApacheSocketError> {
    // SAFETY: the caller runs under apache2handler, so the context is a `php_struct*` or
    // NULL, and `r` a live `request_rec*` or NULL, laid out as above.
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
        let connection = std::ptr::read_unaligned(r.add(8).cast::<*mut u8>());
        if connection.is_null() {
            return Err(ApacheSocketError::Null("conn_rec"));
        }
        Ok(ApacheRequest { pool, connection })
    }
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
    // SAFETY: under apache2handler (the caller's promise), as `apache_request` requires;
    // `connection` is a live, non-NULL `conn_rec*`, which lives as long as the connection.
    unsafe {
        let conn = apache_request()?.connection.cast::<c_void>();
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
    // SAFETY: `apache_request` for `php_struct` → `request_rec` → `conn_rec` (under
    // apache2handler, the caller's promise); every further pointer is checked for NULL and
    // followed only inside structures whose layout the checks before it confirmed: an
    // `ap_filter_t` is `{ frec, ctx, next, r, c }` (offsets 0, 8, 16, 24, 32) and an
    // `ap_filter_rec_t` starts with its `name`. The chains are walked at most MAX_FILTERS
    // deep. The speculative read only moves bytes from the socket into the core input
    // filter's own buffer, where Apache reads them next, as `ap_check_pipeline` does; the
    // brigade is created in the request's pool and destroyed before returning.
    unsafe {
        let ApacheRequest {
            pool,
            connection: c,
        } = apache_request()?;
        if pool.is_null() {
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
