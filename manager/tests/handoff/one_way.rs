//! One-way handoffs (the worker does not wait for `go`): byte-exact on both framings, the
//! waiting queue (smallest first, 503 past it or after waiting too long), 500 for invalid
//! ones, queued handoffs served through SIGTERM, takeover and an exiting worker, idle
//! connections bounded.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use handoff_core::head::Header;
use handoff_core::protocol::{Channel, Framing, Job, Offer, ProtocolError};
use handoff_stack::wait_until;
use nix::sys::signal::Signal;
use nix::sys::socket::{connect, MsgFlags, UnixAddr};

use crate::common::{
    data, file_with, free_port, http_get, job, parse_fcgi, read_all, signal, socket_seqpacket,
    wait_for_access_lines, Manager,
};

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
