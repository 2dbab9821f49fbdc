//! What `send_file()` sends: a path, or an open PHP stream.
//!
//! Everything here ends in one open, readable, regular [`File`] that the manager (or the
//! in-process fallback) reads with explicit offsets, so the stream's own position is
//! never disturbed:
//! - a **path** is opened here; with `'delete' => true` it is unlinked right after the
//!   open, before a byte is sent, and the open descriptor keeps the data alive until the
//!   download ends, whichever process ends it;
//! - a **stream with a descriptor of a regular file** (`fopen()`, `tmpfile()`, a
//!   `php://temp` that already spilled to its temp file, an `SplFileObject` of a file) is
//!   sent through a duplicate of that descriptor: no copy, no reopening by path;
//! - **any other stream** (`php://memory`, `php://temp` still in memory, filtered,
//!   user-space, pipes, sockets) is read from offset 0 to its end into an anonymous,
//!   sealed memory file (`memfd_create`), which is then sent like a file.
//!
//! An `SplFileObject` (or `SplTempFileObject`) is its stream: [`crate::ffi`] finds it
//! without reading SPL's private struct by layout, and from there it is a stream like any
//! other.
//!
//! The body is always the whole stream from offset 0, whatever the stream's position.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::hash::Hasher;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use ext_php_rs::types::{ZendHashTable, Zval};
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::error::{Failure, SendFileError};
use crate::ffi::{self, Bailout, PhpStream, SplLookup};

/// The `'delete'` option of `send_file()`.
pub const DELETE_OPTION: &str = "delete";

/// What the script passed as `send_file()`'s first argument.
pub enum Source<'a> {
    Path { path: &'a [u8], delete: bool },
    Stream(PhpStream<'a>),
}

impl<'a> Source<'a> {
    /// Reads the first argument and the `delete` option; a bad combination throws.
    pub fn from_php(
        file: &'a Zval,
        options: Option<&ZendHashTable>,
    ) -> Result<Source<'a>, SendFileError> {
        let delete = delete_option(options)?;
        if let Some(path) = file.zend_str() {
            return Ok(Source::Path {
                path: path.as_bytes(),
                delete,
            });
        }
        let stream = if file.resource().is_some() {
            crate::ffi::stream_from_zval(file).ok_or(SendFileError::NotAStream)?
        } else if file.is_object() {
            crate::ffi::stream_from_spl_file_object(file).map_err(|e| match e {
                SplLookup::NotSplFileObject => SendFileError::NotPathOrStream,
                SplLookup::NoStream => SendFileError::SplNoStream,
            })?
        } else {
            return Err(SendFileError::NotPathOrStream);
        };
        if delete {
            return Err(SendFileError::DeleteStream);
        }
        Ok(Source::Stream(stream))
    }
}

/// `'delete' => bool`; absent means false. Checked here, where it is used; `options.rs`
/// only lets the key through.
fn delete_option(options: Option<&ZendHashTable>) -> Result<bool, SendFileError> {
    let Some(value) = options.and_then(|t| t.get(DELETE_OPTION)) else {
        return Ok(false);
    };
    value
        .bool()
        .filter(|_| value.is_bool())
        .ok_or(SendFileError::OptionType {
            name: DELETE_OPTION.into(),
            expected: "a bool",
        })
}

/// The file to send and what the response needs to know about where it came from.
pub struct Opened {
    pub file: File,
    /// The name the type is guessed from when there is no `filename` option: the path's
    /// last component; empty for a stream (application/octet-stream).
    pub type_name: String,
    /// What the manager's access log shows (never the client).
    pub log_name: String,
    /// The validator of content that has no identity of its own (a copy made for this
    /// request): a hash of the bytes, so that identical generated content keeps its
    /// ETag across requests. `None`: the file's inode, size and mtime make the ETag.
    pub etag: Option<String>,
    /// Whether the file's mtime means anything (not for a copy made just now).
    pub dated: bool,
}

/// Opens what is sent; a stream that must be copied may have at most `max_copy_bytes`
/// bytes (0: any number).
pub fn open(source: Source<'_>, max_copy_bytes: u64) -> Result<Opened, Failure> {
    match source {
        Source::Path { path, delete } => {
            let file = open_path(path)?;
            if delete {
                unlink(path, &file)?;
            }
            Ok(Opened {
                file,
                type_name: last_component(path),
                log_name: String::from_utf8_lossy(path).into_owned(),
                etag: None,
                dated: true,
            })
        }
        Source::Stream(stream) => from_stream(&stream, max_copy_bytes),
    }
}

fn last_component(path: &[u8]) -> String {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Unlinks the path just opened (for a symbolic link: the link). The path was checked
/// against open_basedir by the open. If the path no longer names the opened file (it was
/// replaced in between), nothing is unlinked and the call throws: deleting another file
/// than the one sent would be worse than keeping one.
fn unlink(path: &[u8], opened: &File) -> Result<(), SendFileError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let path = std::ffi::OsStr::from_bytes(path);
    let error = |e: std::io::Error| SendFileError::Delete { kind: e.kind() };
    let now = std::fs::metadata(path).map_err(error)?;
    let sent = opened.metadata().map_err(error)?;
    if (now.dev(), now.ino()) != (sent.dev(), sent.ino()) {
        return Err(SendFileError::DeleteReplaced);
    }
    std::fs::remove_file(path).map_err(error)
}

/// Opens the file for reading, refusing what cannot be a download. `O_NONBLOCK` keeps a
/// FIFO from blocking the open (it is refused right after); it has no effect on files.
fn open_path(path: &[u8]) -> Result<File, SendFileError> {
    if path.is_empty() {
        return Err(SendFileError::EmptyPath);
    }
    let c = CString::new(path).map_err(|_| SendFileError::NulByte)?;
    if !ffi::open_basedir_allows(&c) {
        return Err(SendFileError::OpenBasedir);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(OsStr::from_bytes(path))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SendFileError::NotFound,
            std::io::ErrorKind::PermissionDenied => SendFileError::PermissionDenied,
            kind => {
                if e.raw_os_error() == Some(nix::libc::EISDIR) {
                    SendFileError::NotRegular
                } else {
                    SendFileError::Open { kind }
                }
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| SendFileError::Open { kind: e.kind() })?;
    if !meta.is_file() {
        return Err(SendFileError::NotRegular);
    }
    Ok(file)
}

fn from_stream(stream: &PhpStream<'_>, max_copy_bytes: u64) -> Result<Opened, Failure> {
    let opened_as = stream.opened_as().unwrap_or_default();
    if let Some(fd) = stream.descriptor()? {
        let flags = fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), FcntlArg::F_GETFL)
            .map(OFlag::from_bits_retain)
            .unwrap_or(OFlag::O_RDONLY);
        if flags & OFlag::O_ACCMODE == OFlag::O_WRONLY {
            return Err(SendFileError::StreamNotReadable.into());
        }
        let file = File::from(
            fd.try_clone_to_owned()
                .map_err(|e| SendFileError::Open { kind: e.kind() })?,
        );
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular {
            return Ok(Opened {
                file,
                type_name: String::new(),
                log_name: format!("stream {opened_as}"),
                etag: None,
                dated: true,
            });
        }
        // A pipe, socket or device: its bytes are only reachable by reading them.
    }
    let (file, etag) = copy_to_memory(stream, max_copy_bytes)?;
    Ok(Opened {
        file,
        type_name: String::new(),
        log_name: format!("stream {opened_as} (copied)"),
        etag: Some(etag),
        dated: false,
    })
}

const COPY_CHUNK: usize = 128 * 1024;

/// Reads the whole stream from offset 0 into a sealed memfd; returns it and the ETag of
/// its content. A stream with more than `max_copy_bytes` bytes (0: no limit) is refused
/// as soon as the copy would pass it. The stream's position is put back where it was when
/// it can seek (quietly: a user wrapper may turn out not to). A stream that cannot seek is
/// taken from where it is, which must be its start (or unknown: a pipe).
fn copy_to_memory(stream: &PhpStream<'_>, max_copy_bytes: u64) -> Result<(File, String), Failure> {
    // A pipe's position is unknown (-1): it has no start to go back to, so what is left
    // in it is the stream.
    let position = stream.tell();
    let seekable = stream.seekable();
    if position > 0 && !(seekable && stream.seek(0)?) {
        return Err(SendFileError::StreamNotAtStart.into());
    }
    let copy_error = |e: std::io::Error| SendFileError::StreamCopy { kind: e.kind() };
    let fd = memfd_create(
        c"handoff-stream",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| copy_error(e.into()))?;
    let mut file = File::from(fd);
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut size: u64 = 0;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Some(Bailout)) => return Err(Failure::Bailout),
            Err(None) => return Err(SendFileError::StreamRead.into()),
        };
        if max_copy_bytes > 0 && size + n as u64 > max_copy_bytes {
            // The memory file is dropped on the way out: nothing of the copy stays.
            return Err(SendFileError::StreamTooLarge {
                limit: max_copy_bytes,
            }
            .into());
        }
        let chunk = &buf[..n];
        hasher.write(chunk);
        file.write_all(chunk).map_err(copy_error)?;
        size += n as u64;
    }
    if ext_php_rs::zend::ExecutorGlobals::has_exception() {
        // A user-space wrapper threw while being read: its exception is pending, and it
        // is what the script sees (ext-php-rs never replaces a pending exception).
        return Err(SendFileError::StreamRead.into());
    }
    if seekable && position >= 0 {
        stream.seek(position)?;
    }
    // Sealed: nobody, not even this process, can change what the plan was made for.
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()),
        FcntlArg::F_ADD_SEALS(seals),
    )
    .map_err(|e| copy_error(e.into()))?;
    Ok((file, content_etag(hasher.finish(), size)))
}

/// A strong ETag of copied content: its 64-bit hash and its length. The hash (std's
/// SipHash with fixed keys) is the same in every process running this build; a new build
/// may change it, which costs one full download per cached copy, never a wrong 304.
fn content_etag(hash: u64, size: u64) -> String {
    format!("\"c{hash:016x}-{size:x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_etag_is_a_quoted_strong_tag_per_content() {
        let e = content_etag(0xabc, 10);
        assert_eq!(e, "\"c0000000000000abc-a\"");
        assert_ne!(e, content_etag(0xabc, 11));
        assert_ne!(e, content_etag(0xabd, 10));
    }

    #[test]
    fn last_component_is_the_type_name_of_a_path() {
        assert_eq!(last_component(b"/srv/files/report.pdf"), "report.pdf");
        assert_eq!(last_component(b"report"), "report");
    }
}
