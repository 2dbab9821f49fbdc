//! Bad input is refused and logged while the manager serves everyone else: malformed or
//! oversized messages (every descriptor closed), invalid labels, peers outside the allowed
//! uids, pieces past u64, and files truncated or replaced under a download.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Offer, ProtocolError};
use nix::sys::socket::{connect, sendmsg, ControlMessage, MsgFlags, UnixAddr};

use crate::common::{data, file_with, hand_over, job, read_all, socket_seqpacket, Manager};

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
        if what == "connection is a file" {
            let reason = String::from_utf8_lossy(&reply[4..]);
            assert!(reason.contains("not a socket"), "{what}: {reason}");
        }
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
