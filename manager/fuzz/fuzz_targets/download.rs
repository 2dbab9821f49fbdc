//! A whole job past the decoder: arbitrary bodies (file ranges and literal bytes, in any
//! number and size), heads, rates and framings, with real descriptors (a socket pair and a
//! sparse file that may be cut short after validation), through `validate` and, if it
//! passes, a real `Download` driven until it ends or for a bounded number of steps.
//!
//! It must never panic, abort or allocate without bound (a 2^63-byte allocation aborts),
//! and every descriptor must be closed again when the download is dropped.
#![no_main]

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use handoff_core::head::{Head, Header};
use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Received};
use handoff_manager::downloads::download::{self, Download, Step};
use libfuzzer_sys::fuzz_target;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// A little-endian reader over the fuzz input that yields zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }

    /// Mostly small numbers, sometimes huge ones near the edges of `u64` and `i64`.
    fn len(&mut self, size: u64) -> u64 {
        match self.u8() % 8 {
            0 => u64::MAX - u64::from(self.u8()),
            1 => i64::MAX as u64 - u64::from(self.u8()),
            2 => size.saturating_sub(u64::from(self.u8())),
            3 => self.u64(),
            _ => u64::from(self.u8()) << (self.u8() % 20),
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fuzz_target!(|data: &[u8]| {
    // As in the manager (Rust's runtime does it for binaries): a write to a closed
    // connection is an error, not a signal. sendfile has no MSG_NOSIGNAL.
    static IGNORE_SIGPIPE: std::sync::Once = std::sync::Once::new();
    IGNORE_SIGPIPE.call_once(|| {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process
        // manages SIGPIPE.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            )
        };
    });
    let before = open_fds();
    run(&mut Input(data));
    assert_eq!(open_fds(), before, "descriptors left open");
});

fn run(input: &mut Input<'_>) {
    let size = match input.u8() % 4 {
        0 => i64::MAX as u64,
        _ => u64::from(input.u8()) << (input.u8() % 17),
    };
    let Ok(file) = memfd_create(c"fuzz", MemFdCreateFlag::MFD_CLOEXEC) else {
        return;
    };
    if nix::unistd::ftruncate(&file, size as i64).is_err() {
        return;
    }
    let framing = match input.u8() % 2 {
        0 => Framing::Http,
        _ => Framing::FastCgi,
    };
    let request_id = u16::from(input.u8());
    let mut head = Head::new(100 + u16::from(input.u8()) % 500);
    for _ in 0..input.u8() % 4 {
        head.headers
            .push(Header::new("X-Fuzz", "v".repeat(usize::from(input.u8()))));
    }
    let mut body = Vec::new();
    for _ in 0..input.u8() % 8 {
        if input.u8() % 3 == 0 {
            body.push(Piece::Bytes(vec![b'b'; usize::from(input.u8()) * 64]));
        } else {
            let offset = input.len(size);
            let length = input.len(size);
            body.push(Piece::File { offset, length });
        }
    }
    let rate = match input.u8() % 4 {
        0 => input.u64(),
        1 => u64::from(input.u8()) * 1000,
        _ => 0,
    };
    let job = Job {
        framing,
        request_id,
        keep_conn: input.u8() & 1 == 1,
        head,
        body,
        rate,
        client: "fuzz".into(),
        file_name: "fuzz".into(),
        fallbacks: Default::default(),
        tag: String::new(),
        rate_group: String::new(),
    };
    let Ok((ours, client)) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    ) else {
        return;
    };
    let rcv = Received {
        job,
        conn: ours,
        file,
    };
    if download::validate(&rcv).is_err() {
        return;
    }
    // The file may shrink after the manager accepted it.
    if input.u8() % 4 == 0 {
        let cut = size.saturating_sub(input.len(size)).min(i64::MAX as u64);
        let _ = nix::unistd::ftruncate(&rcv.file, cut as i64);
    }
    let start = Instant::now();
    let mut now = start;
    let mut d = Download::new(rcv, now, Duration::from_secs(1), None);
    drive(&mut d, &client, &mut now, input.u8() % 2 == 0);
}

/// Runs the download for at most 200 steps, reading what it writes; the client closes
/// halfway when `close_early`.
fn drive(d: &mut Download, client: &OwnedFd, now: &mut Instant, close_early: bool) {
    let mut scratch = [0u8; 4096];
    let mut sink = vec![0u8; 256 * 1024];
    for step in 0..200 {
        if close_early && step == 100 {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(client),
                nix::sys::socket::Shutdown::Both,
            );
        }
        match d.on_writable(128 * 1024, *now) {
            Step::Done(_) => return,
            Step::Sleep(at) => *now = at.max(*now),
            Step::Wait | Step::Yield => {}
        }
        while let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(client),
            &mut sink,
            MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                break;
            }
        }
        if let Step::Done(_) = d.on_readable(&mut scratch) {
            return;
        }
        if let Some(_outcome) = d.check_timeout(*now, Duration::from_secs(60)) {
            return;
        }
        *now += Duration::from_millis(10);
    }
}
