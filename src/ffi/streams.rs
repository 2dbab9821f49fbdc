//! PHP streams (main/php_streams.h) and `SplFileObject`s: what `send_file()` needs to send
//! an open stream: the stream behind a zval, its own descriptor if it has one, and
//! `ftell`/`fseek`/`fread` for the rest, every call that can run a user wrapper's code
//! through [`guarded`].

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::BorrowedFd;

use ext_php_rs::ffi;

use super::{c_str_to_string, guarded, Bailout};

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
