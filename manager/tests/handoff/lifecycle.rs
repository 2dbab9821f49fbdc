//! Stopping and restarting: SIGTERM lets running downloads finish, a takeover hands over
//! without cutting them, kill -9 leaves the web server a reset, and handshakes caught in
//! between are finished or fail cleanly.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use handoff_core::protocol::{Framing, Offer, ProtocolError};

use crate::common::{data, file_with, hand_over, hand_over_fcgi, job, propose, read_all, Manager};

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
