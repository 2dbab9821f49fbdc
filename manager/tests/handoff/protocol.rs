//! The handshake and the framing: a worker's offer, the manager's answer, `go`, and the
//! bytes the client gets (an HTTP head and body, FastCGI records, multipart pieces); one
//! worker connection carrying one handoff after another.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Offer, ProtocolError};
use nix::sys::socket::{connect, UnixAddr};

use crate::common::{
    data, file_with, hand_over, hand_over_fcgi, job, parse_fcgi, propose, read_all,
    socket_seqpacket, Manager,
};

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
