//! What every topic shares: the manager under test, the worker's side of a handoff (a job,
//! its file, the offer and `go`), reading what the client got, and small probes (a free
//! port, an HTTP GET, the access log).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handoff_core::head::{Head, Header};
use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Offer};
use handoff_stack::{wait_until, Place, Proc};
use nix::sys::signal::Signal;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// The manager under test, started by the shared starter (`stack/`, crate
/// handoff-stack) as the integration tests, the demo and the benchmark start it.
pub struct Manager {
    pub proc: Proc,
    pub socket: PathBuf,
    pub _dir: Option<tempfile::TempDir>,
}

impl Manager {
    pub fn start(extra: &[&str]) -> Manager {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Manager::start_on(
            dir.path().join("manager.sock"),
            dir.path().join("manager.log"),
            extra,
        );
        m._dir = Some(dir);
        m
    }

    pub fn start_on(socket: PathBuf, log: PathBuf, extra: &[&str]) -> Manager {
        // $HANDOFF_MANAGER runs the tests against another build (e.g. an older one).
        let bin = std::env::var_os("HANDOFF_MANAGER").map_or_else(
            || env!("CARGO_BIN_EXE_handoff-manager").into(),
            PathBuf::from,
        );
        let place = Place::flat(log.parent().expect("the log is in a directory"));
        let proc = handoff_stack::spawn_manager(
            &place,
            &bin,
            &socket,
            &log,
            extra,
            "debug",
            Signal::SIGKILL,
        );
        Manager {
            proc: handoff_stack::start_manager(proc, &socket),
            socket,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let mut log = String::new();
        wait_until(
            &format!("log showing {needle:?}"),
            Duration::from_secs(10),
            || {
                log = self.log();
                log.contains(needle)
            },
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        log
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- manager log ---\n{}", self.log());
        }
    }
}

pub fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn file_with(dir: &Path, bytes: &[u8]) -> std::fs::File {
    let path = dir.join("data.bin");
    std::fs::write(&path, bytes).expect("write file");
    std::fs::File::open(&path).expect("open file")
}

pub fn job(framing: Framing, length: u64) -> Job {
    let mut head = Head::new(200);
    head.headers
        .push(Header::new("Content-Length", length.to_string()));
    Job {
        framing,
        request_id: 1,
        keep_conn: false,
        head,
        body: vec![Piece::File { offset: 0, length }],
        rate: 0,
        client: "test".into(),
        file_name: "data.bin".into(),
        fallbacks: Default::default(),
        tag: String::new(),
        rate_group: String::new(),
    }
}

/// Hands `j` and `file` to the manager the way a PHP worker does (propose, accept, go)
/// and returns the client's end of the handed-over connection.
pub fn hand_over(socket: &Path, j: &Job, file: &impl AsFd) -> UnixStream {
    let (ours, client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(socket, Duration::from_secs(5)).unwrap();
    offer.propose(j, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    offer.go().unwrap();
    client
}

pub fn read_all(mut s: UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    out
}

/// Parses FastCGI records: returns the STDOUT stream and whether END_REQUEST came last.
pub fn parse_fcgi(bytes: &[u8], id: u16) -> (Vec<u8>, bool) {
    let mut pos = 0;
    let mut stdout = Vec::new();
    let mut ended = false;
    while pos + 8 <= bytes.len() {
        let h = &bytes[pos..pos + 8];
        assert_eq!(h[0], 1, "version");
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), id, "request id");
        let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let pad = usize::from(h[6]);
        let content = &bytes[pos + 8..pos + 8 + len];
        match h[1] {
            6 => stdout.extend_from_slice(content),
            3 => {
                assert_eq!(len, 8);
                ended = true;
            }
            t => panic!("unexpected record type {t}"),
        }
        pos += 8 + len + pad;
        if ended {
            assert_eq!(pos, bytes.len(), "bytes after END_REQUEST");
        }
    }
    assert_eq!(pos, bytes.len(), "partial record");
    (stdout, ended)
}

/// [`hand_over`] of a FastCGI job whose web server side (the returned stream) has sent
/// what nginx sends and PHP never reads: an empty STDIN record.
pub fn hand_over_fcgi(socket: &Path, request_id: u16, len: u64, file: &impl AsFd) -> UnixStream {
    let (ours, mut client) = UnixStream::pair().unwrap();
    let id = request_id.to_be_bytes();
    client.write_all(&[1, 5, id[0], id[1], 0, 0, 0, 0]).unwrap();
    let offer = Offer::connect(socket, Duration::from_secs(5)).unwrap();
    offer
        .propose(
            &Job {
                request_id,
                ..job(Framing::FastCgi, len)
            },
            ours.as_fd(),
            file.as_fd(),
        )
        .unwrap();
    drop(ours);
    offer.go().unwrap();
    client
}

pub fn socket_seqpacket() -> OwnedFd {
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let tv = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
    s
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Proposes `j` and returns the offer awaiting go, and the client's end.
pub fn propose(socket: &Path, j: &Job, file: &impl AsFd) -> (Offer, UnixStream) {
    let (ours, client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(socket, Duration::from_secs(5)).unwrap();
    offer.propose(j, ours.as_fd(), file.as_fd()).unwrap();
    (offer, client)
}

/// The access log's lines, once there are at least `n`.
pub fn wait_for_access_lines(access: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(access).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} access log lines:\n{text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn signal(m: &Manager, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid() as i32), sig).unwrap();
}
