//! The manager binary against real sockets: a test plays the PHP worker (handoff socket)
//! and the client (the other end of a socketpair handed over as "the connection").

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use handoff_core::head::{Head, Header};
use handoff_core::plan::Piece;
use handoff_core::protocol::{Channel, Framing, Job, Offer, ProtocolError};
use handoff_stack::{wait_until, Place, Proc};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::IoSlice;
use std::os::fd::AsRawFd;

/// The manager under test, started by the shared starter (`tests/stack`, crate
/// handoff-stack) as the integration tests, the demo and the benchmark start it.
struct Manager {
    proc: Proc,
    socket: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Manager {
    fn start(extra: &[&str]) -> Manager {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Manager::start_on(
            dir.path().join("manager.sock"),
            dir.path().join("manager.log"),
            extra,
        );
        m._dir = Some(dir);
        m
    }

    fn start_on(socket: PathBuf, log: PathBuf, extra: &[&str]) -> Manager {
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

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL, and waits until it is gone.
    fn kill(&mut self) {
        self.proc.kill();
    }

    fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Waits (bounded) until the log contains `needle`.
    fn wait_log(&self, needle: &str) -> String {
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

fn data(len: usize) -> Vec<u8> {
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

fn file_with(dir: &Path, bytes: &[u8]) -> std::fs::File {
    let path = dir.join("data.bin");
    std::fs::write(&path, bytes).expect("write file");
    std::fs::File::open(&path).expect("open file")
}

fn job(framing: Framing, length: u64) -> Job {
    let mut head = Head::new(200);
    head.headers
        .push(Header::new("Content-Length", length.to_string()));
    Job {
        framing,
        request_id: 1,
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
fn hand_over(socket: &Path, j: &Job, file: &impl AsFd) -> UnixStream {
    let (ours, client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(socket, Duration::from_secs(5)).unwrap();
    offer.propose(j, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    offer.go().unwrap();
    client
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    out
}

#[test]
fn http_handoff_sends_head_then_exact_body() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(3 * 1024 * 1024 + 17);
    let file = file_with(dir.path(), &body);
    let client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &file);
    let got = read_all(client);
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    let head = String::from_utf8_lossy(&got[..split]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(head.contains("\r\nDate: "), "{head}");
    assert!(got[split..] == body[..], "body differs");
    m.wait_log("outcome=complete");
}

/// Parses FastCGI records: returns the STDOUT stream and whether END_REQUEST came last.
fn parse_fcgi(bytes: &[u8], id: u16) -> (Vec<u8>, bool) {
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
fn hand_over_fcgi(socket: &Path, request_id: u16, len: u64, file: &impl AsFd) -> UnixStream {
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

#[test]
fn fastcgi_handoff_frames_records_and_ends_the_request() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    for len in [0usize, 1, 65_528, 65_529, 1_000_003] {
        let body = data(len);
        let file = file_with(dir.path(), &body);
        let client = hand_over_fcgi(&m.socket, 7, len as u64, &file);
        let got = read_all(client);
        let (stdout, ended) = parse_fcgi(&got, 7);
        assert!(ended, "no END_REQUEST for {len} bytes");
        let split = stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head")
            + 4;
        assert!(stdout.starts_with(b"Status: 200 OK\r\n"));
        assert!(stdout[split..] == body[..], "body differs for {len} bytes");
    }
}

/// While it sends, the manager leaves what the web server sent unread (here the empty
/// STDIN record that ends every request nginx sends). Killed mid-response, it thus leaves
/// the web server a reset, not a clean end-of-file: nginx in unbuffered mode would take an
/// end-of-file for the end of the response and keep the client waiting on keep-alive.
#[test]
fn a_killed_manager_leaves_the_web_server_a_reset_not_an_end_of_file() {
    let mut m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let len = 32 * 1024 * 1024;
    let file = file_with(dir.path(), &data(len));
    let mut client = hand_over_fcgi(&m.socket, 1, len as u64, &file);
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 256 * 1024 {
        let n = client.read(&mut buf).expect("response bytes");
        assert!(n > 0, "end of file before the manager was killed");
        got += n;
    }
    m.kill();
    let end = loop {
        match client.read(&mut buf) {
            Ok(0) => break Ok(got),
            Ok(n) => got += n,
            Err(e) => break Err(e),
        }
    };
    match end {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("a clean end-of-file after {n} of {len} body bytes, not a reset"),
    }
}

#[test]
fn nothing_is_written_when_the_worker_leaves_before_go() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"secret");
    let (ours, client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    offer
        .propose(&job(Framing::Http, 6), ours.as_fd(), file.as_fd())
        .unwrap();
    drop(offer);
    m.wait_log("went away before go");
    drop(ours);
    // The manager closed its copy without writing: the client sees EOF and no byte.
    assert!(read_all(client).is_empty());
}

fn raw_send(socket: &Path, bytes: &[u8], fds: &[&OwnedFd]) -> Vec<u8> {
    let sock = socket_seqpacket();
    connect(sock.as_raw_fd(), &UnixAddr::new(socket).unwrap()).unwrap();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    buf[..n].to_vec()
}

fn socket_seqpacket() -> OwnedFd {
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

/// Descriptors of process `pid` other than the manager's event plumbing: the download loops'
/// epoll and eventfd may still be in the making when a baseline is counted (the socket
/// accepts before every loop runs). What a job brings is a socket, a file, a directory or
/// a FIFO.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| !t.to_string_lossy().starts_with("anon_inode:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Every descriptor of process `pid` and what it points at, for failure messages.
fn fd_list(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until the manager holds no more descriptors than `before`.
fn wait_fds_back_to(m: &Manager, before: usize, before_list: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd_count(m.pid()) > before {
        assert!(
            Instant::now() < deadline,
            "manager kept {} fds: before {before_list:?}, now {:?}",
            fd_count(m.pid()) - before,
            fd_list(m.pid())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn malformed_handoffs_are_refused_and_the_manager_keeps_serving() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file: OwnedFd = file_with(dir.path(), b"0123456789").into();
    let (ours, _client) = UnixStream::pair().unwrap();
    let conn: OwnedFd = ours.into();
    let good = job(Framing::Http, 10).encode().unwrap();
    let dir_fd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
    let zero: OwnedFd = std::fs::File::open("/dev/zero").unwrap().into();
    let fifo_path = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo_path)
        .unwrap()
        .into();
    let (dgram, _dgram_peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let dgram: OwnedFd = dgram.into();
    let listener: OwnedFd = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock"))
        .unwrap()
        .into();

    let mut bad_version = good.clone();
    bad_version[2] = 99;
    let cases: Vec<(&str, Vec<u8>, Vec<&OwnedFd>)> = vec![
        ("bad version", bad_version, vec![&conn, &file]),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            vec![&conn, &file],
        ),
        ("no fds", good.clone(), vec![]),
        ("one fd", good.clone(), vec![&conn]),
        ("three fds", good.clone(), vec![&conn, &file, &file]),
        ("file is a directory", good.clone(), vec![&conn, &dir_fd]),
        ("connection is a file", good.clone(), vec![&file, &file]),
        ("file is /dev/zero", good.clone(), vec![&conn, &zero]),
        ("file is a FIFO", good.clone(), vec![&conn, &fifo]),
        ("file is a socket", good.clone(), vec![&conn, &conn]),
        (
            "connection is a datagram socket",
            good.clone(),
            vec![&dgram, &file],
        ),
        (
            "connection is a listening socket",
            good.clone(),
            vec![&listener, &file],
        ),
        ("garbage", b"\x00\x01garbage".to_vec(), vec![&conn, &file]),
        (
            "range beyond the file",
            job(Framing::Http, 11).encode().unwrap(),
            vec![&conn, &file],
        ),
    ];
    let before = fd_count(m.pid());
    let before_list = fd_list(m.pid());
    for (what, bytes, fds) in cases {
        let reply = raw_send(&m.socket, &bytes, &fds);
        assert_eq!(
            &reply[..4],
            &[b'H', b'O', handoff_core::protocol::VERSION, 3],
            "{what}: expected a refusal"
        );
    }
    // Every received descriptor was closed again (bounded wait: closing follows the reply).
    // (At most as many as before: the start-up probe's connection may still have been
    // open when `before` was counted.)
    wait_fds_back_to(&m, before, &before_list);
    let log = m.log();
    assert!(
        log.matches("refused").count() + log.matches("rejected").count() >= 14,
        "{log}"
    );

    // And a good one still works.
    let client = hand_over(&m.socket, &job(Framing::Http, 10), &file);
    assert!(read_all(client).ends_with(b"\r\n\r\n0123456789"));
}

#[test]
fn sigterm_lets_1000_running_downloads_finish_and_removes_the_socket() {
    let m = Manager::start(&["--grace", "60"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(1024 * 1024);
    let file = file_with(dir.path(), &body);
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &file);
        clients.push(client);
    }
    // Nobody reads yet: the downloads are stuck in their socket buffers at SIGTERM.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    m.wait_log("no new handoffs");
    assert!(!m.socket.exists(), "socket file still there");
    // New handoffs cannot reach it: the extension falls back to streaming in-process.
    assert!(matches!(
        Offer::connect(&m.socket, Duration::from_secs(1)),
        Err(ProtocolError::Io { .. })
    ));
    for client in clients {
        assert!(
            read_all(client).ends_with(&body),
            "a download was cut by shutdown"
        );
    }
    let log = m.wait_log("all downloads finished; exiting");
    assert_eq!(log.matches("outcome=complete").count(), 1000);
}

#[test]
fn multipart_pieces_arrive_in_order_on_both_framings() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let content = data(200_000);
    let file = file_with(dir.path(), &content);
    let body = vec![
        Piece::Bytes(b"\r\n--b\r\n\r\n".to_vec()),
        Piece::File {
            offset: 3,
            length: 70_000,
        },
        Piece::Bytes(b"\r\n--b\r\n\r\n".to_vec()),
        Piece::File {
            offset: 199_990,
            length: 10,
        },
        Piece::Bytes(b"\r\n--b--\r\n".to_vec()),
    ];
    let mut expected = Vec::new();
    for p in &body {
        match p {
            Piece::Bytes(b) => expected.extend_from_slice(b),
            Piece::File { offset, length } => {
                expected.extend_from_slice(&content[*offset as usize..(*offset + *length) as usize])
            }
        }
    }
    for framing in [Framing::Http, Framing::FastCgi] {
        let mut j = job(framing, 0);
        j.body = body.clone();
        let client = hand_over(&m.socket, &j, &file);
        let got = read_all(client);
        let stream = match framing {
            Framing::Http => got,
            Framing::FastCgi => parse_fcgi(&got, j.request_id).0,
        };
        let split = stream
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head")
            + 4;
        assert!(stream[split..] == expected[..], "{framing:?}: body differs");
    }
}

/// A tag or rate group the extension would never send (a newline that could split a log
/// line, too long) is refused; a valid one is served.
#[test]
fn jobs_with_invalid_labels_are_refused() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"abc");
    let bad_tag = |j: &mut Job| j.tag = "order:1\nfake log line".into();
    let long_group = |j: &mut Job| {
        j.rate = 1000;
        j.rate_group = "g".repeat(257);
    };
    for spoil in [&bad_tag as &dyn Fn(&mut Job), &long_group] {
        let mut j = job(Framing::Http, 3);
        spoil(&mut j);
        let (ours, _client) = UnixStream::pair().unwrap();
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        let refused = offer.propose(&j, ours.as_fd(), file.as_fd());
        assert!(
            matches!(&refused, Err(ProtocolError::Refused { reason }) if reason.contains("printable ASCII")),
            "{refused:?}"
        );
    }
    let mut j = job(Framing::Http, 3);
    j.tag = "order:17/user:5".into();
    let client = hand_over(&m.socket, &j, &file);
    assert!(read_all(client).ends_with(b"\r\n\r\nabc"));
}

#[test]
fn peers_outside_the_allowed_uids_are_refused() {
    let me = nix::unistd::getuid().as_raw();
    let other = (me + 4242).to_string();
    let m = Manager::start(&["--allow-uid", &other]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"abc");
    let (ours, _client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    let refused = offer.propose(&job(Framing::Http, 3), ours.as_fd(), file.as_fd());
    assert!(
        matches!(&refused, Err(ProtocolError::Refused { reason }) if reason.contains("not allowed")),
        "{refused:?}"
    );
    drop(m);

    let m = Manager::start(&["--allow-uid", &me.to_string()]);
    let client = hand_over(&m.socket, &job(Framing::Http, 3), &file);
    assert!(read_all(client).ends_with(b"\r\n\r\nabc"));
}

#[test]
fn a_path_in_the_message_is_never_opened() {
    // The message's file name is only for the log: the manager serves the descriptor it
    // received and, under Landlock, could not open /etc/shadow even if it tried.
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"harmless");
    let mut j = job(Framing::Http, 8);
    j.file_name = "/etc/shadow".into();
    let client = hand_over(&m.socket, &j, &file);
    let got = read_all(client);
    assert!(got.ends_with(b"\r\n\r\nharmless"));
    let log = m.wait_log("outcome=complete");
    assert!(
        log.contains("landlock: no filesystem access") || log.contains("landlock is not supported"),
        "{log}"
    );
}

#[test]
fn max_downloads_refuses_in_the_handshake_and_the_access_log_records_each_download() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.jsonl");
    let access_arg = access.to_str().unwrap().to_string();
    let m = Manager::start(&["--max-downloads", "1", "--access-log", &access_arg]);
    let body = data(16 * 1024 * 1024);
    let file = file_with(dir.path(), &body);

    // The first download stays running: its client does not read yet.
    let slow_client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &file);
    m.wait_log("accepted job");

    let (ours2, _c2) = UnixStream::pair().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        match offer.propose(&job(Framing::Http, 10), ours2.as_fd(), file.as_fd()) {
            Err(ProtocolError::Refused { reason }) => break reason,
            // The first download may not have been registered yet: try again.
            Ok(()) => drop(offer),
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(refused.contains("max-downloads"), "{refused}");

    let got = read_all(slow_client);
    assert!(got.ends_with(&body));
    m.wait_log("outcome=complete");
    let line = wait_for_access_lines(&access, 1)
        .into_iter()
        .find(|l| l.contains("\"complete\""))
        .expect("a complete download in the access log");
    assert!(
        line.contains(&format!("\"bytes_sent\":{}", body.len())),
        "{line}"
    );
    assert!(
        line.contains(&format!("\"bytes_planned\":{}", body.len())),
        "{line}"
    );
    assert!(line.contains("\"file\":\"data.bin\""), "{line}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_and_status_show_a_live_download_on_several_loops() {
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Manager::start(&["--metrics", &addr, "--threads", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(16 * 1024 * 1024);
    let file = file_with(dir.path(), &body);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &file);
        clients.push(client);
    }
    // The boards refresh every 250 ms: wait (bounded) until all three show.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(&addr, "/metrics");
        if metrics.contains("\nhandoff_downloads_active 3\n") {
            let status = Command::new(env!("CARGO_BIN_EXE_handoff-manager"))
                .args(["status", "--metrics", &addr])
                .output()
                .expect("run status");
            let text = String::from_utf8_lossy(&status.stdout);
            if text.matches("data.bin").count() == 3 {
                assert!(text.starts_with("active 3"), "{text}");
                assert!(text.contains("16.0 MiB"), "{text}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed 3 live downloads"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    for client in clients {
        assert!(read_all(client).ends_with(&body));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(&addr, "/metrics").contains("\nhandoff_downloads_complete_total 3\n") {
        assert!(Instant::now() < deadline, "completions not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn takeover_upgrades_without_cutting_500_running_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("manager.sock");
    let old = Manager::start_on(
        socket.clone(),
        dir.path().join("old.log"),
        &["--grace", "120"],
    );
    let body = data(1024 * 1024);
    let file = file_with(dir.path(), &body);
    let mut clients = Vec::new();
    for _ in 0..500 {
        let client = hand_over(&socket, &job(Framing::Http, body.len() as u64), &file);
        clients.push(client);
    }
    let new = Manager::start_on(socket.clone(), dir.path().join("new.log"), &["--takeover"]);
    new.wait_log("took over the socket; the previous manager is draining");
    old.wait_log("took over");

    // New handoffs go to the new manager.
    let client = hand_over(&socket, &job(Framing::Http, 3), &file);
    assert!(read_all(client).ends_with(&body[..3]));
    new.wait_log("outcome=complete");

    // None of the old manager's downloads is cut.
    for client in clients {
        assert!(read_all(client).ends_with(&body), "a download was cut");
    }
    let log = old.wait_log("all downloads finished; exiting");
    assert_eq!(
        log.matches("outcome=complete").count(),
        500,
        "old manager log"
    );
    assert!(socket.exists(), "the new manager's socket was removed");
    assert!(Offer::connect(&socket, Duration::from_secs(1)).is_ok());
}

/// Starts `sizes.len()` downloads at once and reads them all concurrently; returns each
/// one's completion time.
fn run_concurrent(m: &Manager, file: &std::fs::File, sizes: &[u64], rate: u64) -> Vec<Duration> {
    let start = Instant::now();
    let mut readers = Vec::new();
    for &size in sizes {
        let (ours, client) = UnixStream::pair().unwrap();
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        let mut j = job(Framing::Http, size);
        j.rate = rate;
        offer.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
        drop(ours);
        offer.go().unwrap();
        readers.push(std::thread::spawn(move || {
            let got = read_all(client);
            (got.len(), start.elapsed())
        }));
    }
    readers
        .into_iter()
        .zip(sizes)
        .map(|(r, &size)| {
            let (len, t) = r.join().unwrap();
            assert!(len as u64 > size, "short download");
            t
        })
        .collect()
}

#[test]
fn per_download_rate_and_global_cap_hold_bytes_back() {
    // Lower bounds only: a limit can make a download slower, never faster, so these
    // cannot flake on a busy machine.
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), &data(2 * 1024 * 1024));
    let m = Manager::start(&[]);
    // 2 MiB at 4 MiB/s with a 0.5 MiB burst: at least 0.37 s.
    let t = run_concurrent(&m, &file, &[2 * 1024 * 1024], 4 * 1024 * 1024);
    assert!(
        t[0] >= Duration::from_millis(370),
        "rate not kept: {:?}",
        t[0]
    );
    drop(m);

    let m = Manager::start(&["--max-rate", "4194304", "--threads", "1"]);
    // 4 × 1 MiB under a 4 MiB/s cap (burst 0.2 MiB): at least 0.9 s for the last one.
    let t = run_concurrent(&m, &file, &[1 << 20; 4], 0);
    let last = t.iter().max().unwrap();
    assert!(
        *last >= Duration::from_millis(900),
        "cap not kept: {last:?}"
    );
}

#[test]
fn a_manager_killed_between_accept_and_go_writes_nothing_and_go_fails() {
    // The worker then restores its connection and serves the request itself (the
    // extension's side is covered by the PHP-level fault tests).
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    for round in 0..100 {
        let mut m = Manager::start_on(
            dir.path().join(format!("m{round}.sock")),
            dir.path().join(format!("m{round}.log")),
            &[],
        );
        let (ours, client) = UnixStream::pair().unwrap();
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        offer
            .propose(&job(Framing::Http, 10), ours.as_fd(), file.as_fd())
            .unwrap();
        m.kill();
        assert!(
            offer.go().is_err(),
            "round {round}: go to a dead manager succeeded"
        );
        drop(ours);
        assert!(
            read_all(client).is_empty(),
            "round {round}: bytes were written"
        );
    }
}

#[test]
fn a_truncated_file_ends_only_its_download_and_a_replaced_one_keeps_its_content() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(8 * 1024 * 1024);
    let path = dir.path().join("data.bin");
    std::fs::write(&path, &body).unwrap();
    let shrinking = std::fs::File::open(&path).unwrap();
    let client = hand_over(
        &m.socket,
        &job(Framing::Http, body.len() as u64),
        &shrinking,
    );
    m.wait_log("accepted job");
    // Shrink it while the client has not read: the rest of the range no longer exists.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let got = read_all(client);
    assert!(got.len() < body.len(), "more bytes than the file has");
    m.wait_log("outcome=truncated");

    // Replaced by rename: the open file keeps its bytes, the download completes.
    std::fs::write(&path, &body).unwrap();
    let original = std::fs::File::open(&path).unwrap();
    let client = hand_over(&m.socket, &job(Framing::Http, body.len() as u64), &original);
    let other = dir.path().join("other.bin");
    std::fs::write(&other, vec![0u8; body.len()]).unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert!(
        read_all(client).ends_with(&body),
        "replaced file changed the download"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn clients_that_never_read_are_closed_after_the_send_timeout() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const N: usize = 5000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (N as u64 * 2 + 256).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    let n = if want < N as u64 * 2 + 256 {
        // A machine whose hard limit is lower still exercises the path, with fewer.
        eprintln!("hard fd limit {hard}: testing {} clients", (want - 256) / 2);
        ((want - 256) / 2) as usize
    } else {
        N
    };

    let m = Manager::start(&["--send-timeout", "2", "--threads", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), &data(1024 * 1024));
    // Warm up allocator and loops, then take the baseline.
    let client = hand_over(&m.socket, &job(Framing::Http, 1 << 20), &file);
    read_all(client);
    let baseline = rss_kib(m.pid());

    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = hand_over(&m.socket, &job(Framing::Http, 1 << 20), &file);
        clients.push(client);
    }
    let peak = rss_kib(m.pid());
    // All of them time out (bounded wait: 2 s timeout, checked every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = m.log();
        if log.matches("outcome=timed_out").count() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every stuck client was closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each client sees the end of its connection after what the socket buffer held.
    for c in clients.iter_mut().take(50) {
        let mut buf = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_to_end(&mut buf).unwrap();
        assert!(buf.len() < (1 << 20), "a timed-out download was complete");
    }
    // The loops give memory back on a tick after the burst (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = rss_kib(m.pid());
        if after <= baseline + 2 * 1024 {
            eprintln!(
                "manager RSS: baseline {baseline} KiB, {n} stuck clients {peak} KiB, after {after} KiB"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory did not return: baseline {baseline} KiB, peak {peak} KiB, now {after} KiB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Hostile peers, restarts and slow downloads. Each test failed on the code
// before its fix.

/// A job whose pieces each lie within the file but whose sum wraps a `u64` is refused;
/// the manager neither aborts nor allocates for it, and keeps serving.
#[test]
fn a_job_whose_pieces_add_up_past_u64_is_refused_and_the_manager_survives() {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let m = Manager::start(&[]);
    // A sparse file of 2^63 - 1 bytes (tmpfs allows it; nothing is allocated).
    let huge = memfd_create(c"huge", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&huge, i64::MAX).unwrap();
    let max = i64::MAX as u64;
    let mut j = job(Framing::FastCgi, 3);
    // 2 * (2^63 - 1) + 3 wraps to 1: a one-byte body, "the last record in memory".
    j.body = vec![
        Piece::File {
            offset: 0,
            length: max,
        },
        Piece::File {
            offset: 0,
            length: max,
        },
        Piece::File {
            offset: 0,
            length: 3,
        },
    ];
    let (ours, _client) = UnixStream::pair().unwrap();
    let conn: OwnedFd = ours.into();
    let reply = raw_send(&m.socket, &j.encode().unwrap(), &[&conn, &huge]);
    assert_eq!(
        &reply[..4],
        &[b'H', b'O', handoff_core::protocol::VERSION, 3],
        "expected a refusal, got {reply:?}"
    );
    assert!(
        String::from_utf8_lossy(&reply).contains("2^64"),
        "{reply:?}"
    );
    // Still alive, still serving.
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let client = hand_over(&m.socket, &job(Framing::Http, 10), &file);
    assert!(read_all(client).ends_with(b"\r\n\r\n0123456789"));
}

/// Messages with more descriptors than a job has (here 20 each, 200 times) are refused,
/// and every descriptor the kernel installed for them is closed: with `MSG_CTRUNC` the
/// ones that fitted used to stay open, unowned.
#[test]
fn descriptors_of_oversized_messages_are_all_closed() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file: OwnedFd = file_with(dir.path(), b"0123456789").into();
    let good = job(Framing::Http, 10).encode().unwrap();
    let before = fd_count(m.pid());
    let before_list = fd_list(m.pid());
    let twenty: Vec<&OwnedFd> = std::iter::repeat_n(&file, 20).collect();
    for round in 0..200 {
        let reply = raw_send(&m.socket, &good, &twenty);
        assert_eq!(
            &reply[..4],
            &[b'H', b'O', handoff_core::protocol::VERSION, 3],
            "round {round}: expected a refusal"
        );
    }
    wait_fds_back_to(&m, before, &before_list);
    let client = hand_over(&m.socket, &job(Framing::Http, 10), &file);
    assert!(read_all(client).ends_with(b"\r\n\r\n0123456789"));
}

/// Proposes `j` and returns the offer awaiting go, and the client's end.
fn propose(socket: &Path, j: &Job, file: &impl AsFd) -> (Offer, UnixStream) {
    let (ours, client) = UnixStream::pair().unwrap();
    let offer = Offer::connect(socket, Duration::from_secs(5)).unwrap();
    offer.propose(j, ours.as_fd(), file.as_fd()).unwrap();
    (offer, client)
}

/// A job accepted before SIGTERM is still run when its go comes after the signal: the
/// download loops used to end at once, and the job was dropped after the worker had
/// committed.
#[test]
fn a_handshake_accepted_before_sigterm_is_finished_after_it() {
    let m = Manager::start(&["--grace", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(256 * 1024);
    let file = file_with(dir.path(), &body);
    let (offer, client) = propose(&m.socket, &job(Framing::Http, body.len() as u64), &file);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    m.wait_log("no new handoffs");
    offer.go().expect("go after SIGTERM");
    assert!(
        read_all(client).ends_with(&body),
        "the accepted job was dropped"
    );
    m.wait_log("all downloads finished; exiting");
}

/// The same across `--takeover`: the old manager finishes the handshake it accepted.
#[test]
fn a_handshake_accepted_before_a_takeover_is_finished_by_the_old_manager() {
    let old = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(256 * 1024);
    let file = file_with(dir.path(), &body);
    let (offer, client) = propose(&old.socket, &job(Framing::Http, body.len() as u64), &file);
    let new = Manager::start_on(
        old.socket.clone(),
        dir.path().join("new.log"),
        &["--takeover"],
    );
    old.wait_log("took over");
    offer.go().expect("go after the takeover");
    assert!(
        read_all(client).ends_with(&body),
        "the accepted job was dropped"
    );
    old.wait_log("all downloads finished; exiting");
    // The new manager serves the next one.
    let client = hand_over(&new.socket, &job(Framing::Http, body.len() as u64), &file);
    assert!(read_all(client).ends_with(&body));
}

/// `--max-downloads` counts the jobs that wait for their go: otherwise any number of
/// accepted-but-idle handshakes get past it.
#[test]
fn max_downloads_counts_jobs_waiting_for_go() {
    let m = Manager::start(&["--max-downloads", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let (first, client) = propose(&m.socket, &job(Framing::Http, 10), &file);
    let (ours, _other) = UnixStream::pair().unwrap();
    let second = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    match second.propose(&job(Framing::Http, 10), ours.as_fd(), file.as_fd()) {
        Err(ProtocolError::Refused { reason }) => {
            assert!(reason.contains("--max-downloads"), "{reason}")
        }
        other => panic!("a second job was not refused: {other:?}"),
    }
    first.go().unwrap();
    assert!(read_all(client).ends_with(b"0123456789"));
}

/// At most `--max-handshakes` handshakes are held; the next connection is refused at once
/// (its worker serves the request itself), and a slot that frees is taken again.
#[test]
fn pending_handshakes_are_capped() {
    let m = Manager::start(&["--max-handshakes", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    // One whole handoff first: by its end the manager has also seen the start-up probe's
    // connection close, which held a slot.
    assert!(read_all(hand_over(&m.socket, &job(Framing::Http, 10), &file)).ends_with(b"789"));
    // Three peers that hold a handshake each: two connected and silent, one accepted.
    let idle: Vec<OwnedFd> = (0..2)
        .map(|_| {
            let s = socket_seqpacket();
            connect(s.as_raw_fd(), &UnixAddr::new(&m.socket).unwrap()).unwrap();
            s
        })
        .collect();
    let (held, client) = propose(&m.socket, &job(Framing::Http, 10), &file);
    let (ours, _other) = UnixStream::pair().unwrap();
    let extra = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    match extra.propose(&job(Framing::Http, 10), ours.as_fd(), file.as_fd()) {
        Err(ProtocolError::Refused { reason }) => {
            assert!(reason.contains("too many handshakes"), "{reason}")
        }
        Err(ProtocolError::Io { .. }) => {} // refused and closed before the job was sent
        other => panic!("a fourth handshake was held: {other:?}"),
    }
    m.wait_log("--max-handshakes");
    held.go().unwrap();
    assert!(read_all(client).ends_with(b"0123456789"));
    drop(idle);
    // The slots are free again (bounded wait: the manager sees the closes).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ours, client) = UnixStream::pair().unwrap();
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        if offer
            .propose(&job(Framing::Http, 10), ours.as_fd(), file.as_fd())
            .is_ok()
        {
            offer.go().unwrap();
            drop(ours);
            assert!(read_all(client).ends_with(b"0123456789"));
            break;
        }
        assert!(Instant::now() < deadline, "freed slots were not reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A download slowed by its own `rate` writes in quanta with pauses between them (it used
/// to wake the loop without pause and write one byte per wake-up), and those pauses are not
/// a stalled client: the send timeout counts only while the connection refuses bytes.
/// (At 1,000 B/s a 4 KiB quantum is due every 4.1 s, longer than the 1 s send timeout.)
#[test]
fn a_slow_rate_writes_in_quanta_and_is_not_cut_by_the_send_timeout() {
    let m = Manager::start(&["--send-timeout", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(20 * 1024);
    let file = file_with(dir.path(), &body);
    let mut j = job(Framing::Http, body.len() as u64);
    j.rate = 1000;
    let mut client = hand_over(&m.socket, &j, &file);
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    let mut buf = [0u8; 65536];
    loop {
        let n = client.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    drop(client);
    assert!(
        got.ends_with(&body),
        "a slow but progressing download was cut"
    );
    // The 16 KiB burst and one 4 KiB quantum: a few reads, not thousands.
    assert!(reads <= 8, "{reads} reads for 20 KiB");
    assert!(m.wait_log("outcome=complete").contains("outcome=complete"));
}

/// The worker's `timeout` bounds the whole handshake: a manager that is slow to accept
/// the connection and then never answers costs the worker the timeout once, not once per
/// step.
#[test]
fn the_workers_timeout_covers_the_whole_handshake() {
    use nix::sys::socket::{accept, bind, listen, Backlog};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.sock");
    let listener = socket_seqpacket();
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    // A first connection fills the backlog: the next connect waits until it is accepted.
    let filler = socket_seqpacket();
    connect(filler.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    let stand_in = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // Accept both, read nothing, answer nothing, until the worker gives up.
        let a = accept(listener.as_raw_fd()).unwrap();
        let b = accept(listener.as_raw_fd()).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        drop((a, b, listener));
    });
    let file = file_with(dir.path(), b"0123456789");
    let (ours, _client) = UnixStream::pair().unwrap();
    let started = Instant::now();
    let result = Offer::connect(&path, Duration::from_millis(1000))
        .and_then(|o| o.propose(&job(Framing::Http, 10), ours.as_fd(), file.as_fd()));
    let took = started.elapsed();
    assert!(matches!(result, Err(ProtocolError::TimedOut)), "{result:?}");
    // Per step it was 0.7 s + 1 s; as a whole, 1 s (and some scheduling).
    assert!(
        took < Duration::from_millis(1500),
        "handshake took {took:?}"
    );
    stand_in.join().unwrap();
}

/// A go that comes after the manager's handshake limit fails at the worker, which then
/// serves the request itself; the manager writes nothing.
#[test]
fn a_go_after_the_managers_handshake_limit_fails_and_nothing_is_written() {
    let m = Manager::start(&["--handshake-timeout", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let (offer, client) = propose(&m.socket, &job(Framing::Http, 10), &file);
    m.wait_log("handshake timed out");
    assert!(offer.go().is_err(), "a go after the limit was taken");
    assert!(read_all(client).is_empty(), "bytes were written");
}

/// A PHP process keeps its connection between requests: one connection carries one
/// handoff after another, each byte-exact, with a go followed at once by the next job.
#[test]
fn one_connection_carries_one_handoff_after_another() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(100_000);
    let file = file_with(dir.path(), &body);
    let j = job(Framing::Http, body.len() as u64);
    let first = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    let (ours, client) = UnixStream::pair().unwrap();
    first.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    let mut sock = first.go().unwrap();
    let mut clients = vec![client];
    for _ in 0..20 {
        let offer = Offer::resume(sock, Instant::now() + Duration::from_secs(5));
        let (ours, client) = UnixStream::pair().unwrap();
        offer.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
        drop(ours);
        sock = offer.go().unwrap();
        clients.push(client);
    }
    for client in clients {
        assert!(read_all(client).ends_with(&body));
    }
}

/// A draining manager closes the connections that wait between handoffs: the next job on
/// one meets a closed connection before anything is accepted, which the worker may retry
/// elsewhere (it still owns its request).
#[test]
fn a_draining_manager_closes_idle_connections_before_accepting_anything() {
    let m = Manager::start(&["--grace", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let j = job(Framing::Http, 10);
    let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
    let (ours, client) = UnixStream::pair().unwrap();
    offer.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    let sock = offer.go().unwrap();
    assert!(read_all(client).ends_with(b"0123456789"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    m.wait_log("no new handoffs");
    let (ours, client) = UnixStream::pair().unwrap();
    let again = Offer::resume(sock, Instant::now() + Duration::from_secs(5));
    match again.propose(&j, ours.as_fd(), file.as_fd()) {
        Err(e) => assert!(e.is_stale_connection(), "{e:?}"),
        Ok(()) => panic!("a draining manager accepted a job on an idle connection"),
    }
    drop(ours);
    assert!(read_all(client).is_empty(), "bytes were written");
}

/// Opens a connection for one-way handoffs (hello answered) to the manager at `socket`.
fn channel(socket: &Path) -> Channel {
    Channel::open(socket, Instant::now() + Duration::from_secs(5)).expect("hello answered")
}

/// Hands `j` and `file` over one way on `ch` and returns the client's end of the
/// handed-over connection. The test's copy of the connection is closed at once, as the
/// worker's is.
/// The manager closed this connection: a one-way handoff sent on it now fails as stale
/// (so the worker reconnects or serves the request itself), and nothing is handed over.
fn assert_refused_as_stale(ch: &Channel, file: &impl AsFd) {
    let (ours, _client) = UnixStream::pair().unwrap();
    let err = ch
        .hand_off(
            &job(Framing::Http, 10).encode_one_way().unwrap(),
            ours.as_fd(),
            file.as_fd(),
        )
        .unwrap_err();
    assert!(err.is_stale_connection(), "{err:?}");
}

fn send_one_way(ch: &Channel, j: &Job, file: &impl AsFd) -> UnixStream {
    let (ours, client) = UnixStream::pair().unwrap();
    ch.hand_off(&j.encode_one_way().unwrap(), ours.as_fd(), file.as_fd())
        .expect("one-way handoff queued");
    client
}

/// The head of an HTTP response, and its body.
fn split_http(got: &[u8]) -> (String, Vec<u8>) {
    let split = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(got.len(), |p| p + 4);
    (
        String::from_utf8_lossy(&got[..split]).into_owned(),
        got[split..].to_vec(),
    )
}

/// One-way handoffs on one kept connection, both framings, byte-exact, each served while
/// the test reads nothing from the manager.
#[test]
fn one_way_handoffs_are_served_byte_exact_on_both_framings() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(1_000_003);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push((
            Framing::Http,
            send_one_way(&ch, &job(Framing::Http, body.len() as u64), &file),
        ));
        let (ours, mut client) = UnixStream::pair().unwrap();
        client.write_all(&[1, 5, 0, 1, 0, 0, 0, 0]).unwrap();
        ch.hand_off(
            &job(Framing::FastCgi, body.len() as u64)
                .encode_one_way()
                .unwrap(),
            ours.as_fd(),
            file.as_fd(),
        )
        .unwrap();
        clients.push((Framing::FastCgi, client));
    }
    for (framing, client) in clients {
        let got = read_all(client);
        match framing {
            Framing::Http => {
                let (head, got_body) = split_http(&got);
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                assert!(got_body == body, "HTTP body differs");
            }
            Framing::FastCgi => {
                let (stdout, ended) = parse_fcgi(&got, 1);
                assert!(ended, "no END_REQUEST");
                let (head, got_body) = split_http(&stdout);
                assert!(head.starts_with("Status: 200 OK\r\n"), "{head}");
                assert!(got_body == body, "FastCGI body differs");
            }
        }
    }
}

/// Under `--max-downloads` a one-way handoff that finds no place waits, and the waiting
/// ones start smallest first once places free; past `--max-waiting` the client gets a
/// 503 with Retry-After written by the manager (FastCGI records behind a web server,
/// HTTP/1.1 on a raw connection), counted and logged, never a silent close.
#[test]
fn one_way_handoffs_wait_smallest_first_and_past_the_queue_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.jsonl");
    let access_arg = access.to_str().unwrap().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Manager::start(&[
        "--max-downloads",
        "1",
        "--max-waiting",
        "3",
        "--wait-timeout",
        "30",
        "--access-log",
        &access_arg,
        "--metrics",
        &addr,
    ]);
    let body = data(16 * 1024 * 1024);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    // The only place is taken: its client reads nothing yet.
    let blocker = send_one_way(&ch, &job(Framing::Http, body.len() as u64), &file);
    m.wait_log("one-way handoff of");
    let sizes = [300_000u64, 100_000, 200_000];
    let waiting: Vec<(u64, UnixStream)> = sizes
        .iter()
        .map(|&len| (len, send_one_way(&ch, &job(Framing::Http, len), &file)))
        .collect();
    // The queue is full: these two are answered by the manager.
    let refused_http = send_one_way(&ch, &job(Framing::Http, 10), &file);
    let (ours, mut refused_fcgi) = UnixStream::pair().unwrap();
    refused_fcgi.write_all(&[1, 5, 0, 9, 0, 0, 0, 0]).unwrap();
    let fcgi_job = Job {
        request_id: 9,
        ..job(Framing::FastCgi, 10)
    };
    ch.hand_off(
        &fcgi_job.encode_one_way().unwrap(),
        ours.as_fd(),
        file.as_fd(),
    )
    .unwrap();
    drop(ours);

    let (head, text) = split_http(&read_all(refused_http));
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("\r\nRetry-After: 30\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", text.len())),
        "{head}"
    );
    assert!(!String::from_utf8_lossy(&text).contains(dir.path().to_str().unwrap()));
    let (stdout, ended) = parse_fcgi(&read_all(refused_fcgi), 9);
    assert!(ended, "the FastCGI refusal has no END_REQUEST");
    let (head, _) = split_http(&stdout);
    assert!(head.starts_with("Status: 503 "), "{head}");
    assert!(head.contains("\r\nRetry-After: 30\r\n"), "{head}");

    // Free the place: the waiting ones run, smallest first (read in that order: each
    // holds its place until its client has read it all).
    assert!(read_all(blocker).ends_with(&body));
    let mut waiting = waiting;
    waiting.sort_by_key(|w| w.0);
    for (len, client) in waiting {
        let (head, got) = split_http(&read_all(client));
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(got, body[..len as usize], "waiting download of {len} bytes");
    }
    let planned: Vec<u64> = wait_for_access_lines(&access, 6)
        .iter()
        .filter(|l| l.contains("\"status\":200"))
        .filter_map(|l| {
            let at = l.find("\"bytes_planned\":")? + "\"bytes_planned\":".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        planned,
        vec![body.len() as u64, 100_000, 200_000, 300_000],
        "order of the 200 downloads"
    );
    let metrics = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("\nhandoff_handoffs_refused_answered_total 2\n"),
        "{metrics}"
    );
    m.wait_log("--max-waiting");
}

/// The access log's lines, once there are at least `n`.
fn wait_for_access_lines(access: &Path, n: usize) -> Vec<String> {
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

/// A one-way handoff that waits longer than `--wait-timeout` for a place is answered with
/// 503; a HEAD request's refusal has no body.
#[test]
fn a_one_way_handoff_that_waits_too_long_gets_503() {
    let m = Manager::start(&["--max-downloads", "1", "--wait-timeout", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(16 * 1024 * 1024);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    let blocker = send_one_way(&ch, &job(Framing::Http, body.len() as u64), &file);
    let mut head_job = job(Framing::Http, 0);
    head_job.head.headers = vec![Header::new("Content-Length", "5000")];
    head_job.body.clear();
    let waited = send_one_way(&ch, &head_job, &file);
    let (head, got) = split_http(&read_all(waited));
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("\r\nRetry-After: 1\r\n"), "{head}");
    assert!(got.is_empty(), "a HEAD refusal carried {} bytes", got.len());
    m.wait_log("no place within --wait-timeout");
    assert!(read_all(blocker).ends_with(&body));
}

/// An invalid one-way handoff (a range past the end of the file, or a message that does
/// not parse) is answered with 500 by the manager, which goes on serving.
#[test]
fn invalid_one_way_handoffs_get_500_and_the_manager_keeps_serving() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let ch = channel(&m.socket);
    let past_the_end = send_one_way(&ch, &job(Framing::Http, 11), &file);
    let (head, text) = split_http(&read_all(past_the_end));
    assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    assert!(!String::from_utf8_lossy(&text).contains("data.bin"));

    let (ours, mut malformed) = UnixStream::pair().unwrap();
    malformed.write_all(&[1, 5, 0, 3, 0, 0, 0, 0]).unwrap();
    let mut bytes = Job {
        request_id: 3,
        ..job(Framing::FastCgi, 10)
    }
    .encode_one_way()
    .unwrap();
    bytes.push(0);
    ch.hand_off(&bytes, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    let (stdout, ended) = parse_fcgi(&read_all(malformed), 3);
    assert!(ended, "no END_REQUEST");
    assert!(stdout.starts_with(b"Status: 500 "), "{stdout:?}");
    m.wait_log("rejected malformed one-way handoff");
    // The same connection serves the next handoff.
    let ok = send_one_way(&ch, &job(Framing::Http, 10), &file);
    assert!(read_all(ok).ends_with(b"0123456789"));
}

/// Sends `n` one-way handoffs on `ch` while the manager is stopped (SIGSTOP), so that all
/// of them sit unread in the connection's queue; returns their clients.
fn queue_while_stopped(
    m: &Manager,
    ch: &Channel,
    n: usize,
    len: u64,
    file: &impl AsFd,
) -> Vec<UnixStream> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid() as i32), Signal::SIGSTOP).unwrap();
    (0..n)
        .map(|_| send_one_way(ch, &job(Framing::Http, len), file))
        .collect()
}

fn signal(m: &Manager, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid() as i32), sig).unwrap();
}

/// SIGTERM with one-way handoffs queued and not yet read: every one of them is read and
/// served, byte-exact, and the connection is then closed (the worker's next send fails
/// before anything is handed over).
#[test]
fn sigterm_serves_every_queued_one_way_handoff() {
    let m = Manager::start(&["--grace", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(200_000);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    let clients = queue_while_stopped(&m, &ch, 100, body.len() as u64, &file);
    signal(&m, Signal::SIGTERM);
    signal(&m, Signal::SIGCONT);
    for (i, client) in clients.into_iter().enumerate() {
        let (head, got) = split_http(&read_all(client));
        assert!(head.starts_with("HTTP/1.1 200 OK"), "#{i}: {head}");
        assert!(got == body, "#{i}: body differs ({} bytes)", got.len());
    }
    m.wait_log("all downloads finished; exiting");
    assert_refused_as_stale(&ch, &file);
}

/// `--takeover` with one-way handoffs queued on the old manager: the old one serves every
/// one of them, and the worker's next handoff, refused by the closed connection, reaches
/// the new manager on a fresh connection.
#[test]
fn takeover_serves_every_queued_one_way_handoff() {
    let old = Manager::start(&["--grace", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(200_000);
    let file = file_with(dir.path(), &body);
    let ch = channel(&old.socket);
    let clients = queue_while_stopped(&old, &ch, 100, body.len() as u64, &file);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&old.socket);
    let socket = old.socket.clone();
    let log = dir.path().join("new.log");
    let starter = std::thread::spawn(move || Manager::start_on(socket, log, &["--takeover"]));
    wait_until(
        "the new manager's socket in place",
        Duration::from_secs(10),
        || ino(&old.socket) != before,
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    signal(&old, Signal::SIGCONT);
    let new = starter.join().expect("new manager started");
    for (i, client) in clients.into_iter().enumerate() {
        let got = read_all(client);
        assert!(got.ends_with(&body), "#{i}: {} bytes", got.len());
    }
    old.wait_log("all downloads finished; exiting");
    assert_refused_as_stale(&ch, &file);
    let next = send_one_way(&channel(&new.socket), &job(Framing::Http, 200_000), &file);
    assert!(read_all(next).ends_with(&body));
}

/// kill -9 with one-way handoffs queued and not yet read: those (and only those) are lost;
/// the kernel closes their connections, so each client sees its connection closed with no
/// byte at all, never a partial or foreign body.
#[test]
fn kill_9_loses_only_the_unread_one_way_handoffs_and_writes_nothing_to_them() {
    let mut m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(200_000);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    let served = send_one_way(&ch, &job(Framing::Http, body.len() as u64), &file);
    assert!(read_all(served).ends_with(&body));
    let clients = queue_while_stopped(&m, &ch, 50, body.len() as u64, &file);
    m.kill();
    for (i, client) in clients.into_iter().enumerate() {
        assert!(read_all(client).is_empty(), "#{i}: bytes after kill -9");
    }
}

/// Idle worker connections are bounded (`--max-idle-connections`, at most 1,024 by
/// default): past the bound the connection idle longest is closed first, and a kept
/// connection still serves. With the default, 1,030 idle connections leave 1,024 open.
#[test]
fn idle_connections_are_bounded_oldest_first() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"0123456789");
    let j = job(Framing::Http, 10);
    // Idle connections as confirmed handoffs leave them (each carried one download).
    let mut idle = Vec::new();
    for i in 0..1030 {
        let offer = Offer::connect(&m.socket, Duration::from_secs(5)).unwrap();
        let (ours, client) = UnixStream::pair().unwrap();
        offer.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
        drop(ours);
        idle.push(offer.go().unwrap());
        assert!(read_all(client).ends_with(b"789"), "#{i}");
    }
    let closed = |sock: &OwnedFd| {
        let mut buf = [0u8; 16];
        matches!(
            nix::sys::socket::recv(
                sock.as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK
            ),
            Ok(0)
        )
    };
    wait_until(
        "the 6 oldest idle connections closed",
        Duration::from_secs(10),
        || idle[..6].iter().all(closed),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let open = idle[6..].iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 1024, "idle connections left open");
    // The newest still carries a handoff.
    let offer = Offer::resume(idle.pop().unwrap(), Instant::now() + Duration::from_secs(5));
    let (ours, client) = UnixStream::pair().unwrap();
    offer.propose(&j, ours.as_fd(), file.as_fd()).unwrap();
    drop(ours);
    offer.go().unwrap();
    assert!(read_all(client).ends_with(b"789"));
}

/// With a smaller `--max-idle-connections`, connections made for one-way handoffs are
/// bounded the same way, and the one closed loses none of the handoffs queued on it.
#[test]
fn closing_an_idle_connection_serves_what_was_queued_on_it() {
    let m = Manager::start(&["--max-idle-connections", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(100_000);
    let file = file_with(dir.path(), &body);
    let first = channel(&m.socket);
    let clients = queue_while_stopped(&m, &first, 20, body.len() as u64, &file);
    // Two newer connections say hello while the manager is stopped: it reads them after
    // the jobs queued on the first, which is then the oldest idle connection past the
    // bound, with handoffs queued on it.
    let newer: Vec<OwnedFd> = (0..2)
        .map(|_| {
            let sock = socket_seqpacket();
            connect(sock.as_raw_fd(), &UnixAddr::new(&m.socket).unwrap()).unwrap();
            handoff_core::protocol::send_reply(sock.as_fd(), &handoff_core::protocol::Reply::Hello)
                .unwrap();
            sock
        })
        .collect();
    signal(&m, Signal::SIGCONT);
    for (i, client) in clients.into_iter().enumerate() {
        assert!(read_all(client).ends_with(&body), "#{i}");
    }
    m.wait_log("--max-idle-connections");
    assert_refused_as_stale(&first, &file);
    for sock in newer {
        let answer = handoff_core::protocol::recv_reply(sock.as_fd(), MsgFlags::empty());
        assert!(
            matches!(answer, Ok(handoff_core::protocol::Reply::Accept)),
            "{answer:?}"
        );
        let ch = Channel::resume(sock);
        assert!(read_all(send_one_way(&ch, &job(Framing::Http, 100_000), &file)).ends_with(&body));
    }
}

/// A PHP process that exits (max_requests, a restart) right after its handoffs, before the
/// manager read them, loses none: what it queued is read before the end-of-file.
#[test]
fn handoffs_queued_by_a_worker_that_then_exits_are_all_served() {
    let m = Manager::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let body = data(100_000);
    let file = file_with(dir.path(), &body);
    let ch = channel(&m.socket);
    let clients = queue_while_stopped(&m, &ch, 30, body.len() as u64, &file);
    drop(ch);
    signal(&m, Signal::SIGCONT);
    for (i, client) in clients.into_iter().enumerate() {
        assert!(read_all(client).ends_with(&body), "#{i}");
    }
}

/// A peer that `--allow-uid` does not allow has its hello refused (its worker serves the
/// request itself); a one-way handoff sent without a hello is answered with 500 and never
/// run, so the file's bytes never reach its client.
#[test]
fn peers_outside_the_allowed_uids_cannot_hand_off_one_way() {
    let me = nix::unistd::getuid().as_raw();
    let other = (me + 4242).to_string();
    let m = Manager::start(&["--allow-uid", &other]);
    let dir = tempfile::tempdir().unwrap();
    let file = file_with(dir.path(), b"secret");
    let refused = Channel::open(&m.socket, Instant::now() + Duration::from_secs(5));
    assert!(
        matches!(&refused, Err(ProtocolError::Refused { reason }) if reason.contains("not allowed")),
        "{refused:?}"
    );
    let sock = socket_seqpacket();
    connect(sock.as_raw_fd(), &UnixAddr::new(&m.socket).unwrap()).unwrap();
    let ch = Channel::resume(sock);
    let first = send_one_way(&ch, &job(Framing::Http, 6), &file);
    let (head, body) = split_http(&read_all(first));
    assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    assert!(!body.ends_with(b"secret"), "the file was sent");
    // The connection carries nothing more: a second handoff is refused by the kernel, or
    // closed unread, and never run.
    let (ours, second) = UnixStream::pair().unwrap();
    let sent = ch.hand_off(
        &job(Framing::Http, 6).encode_one_way().unwrap(),
        ours.as_fd(),
        file.as_fd(),
    );
    drop(ours);
    let got = read_all(second);
    assert!(
        !got.ends_with(b"secret"),
        "a second handoff on a refused peer's connection was run ({sent:?})"
    );
}
