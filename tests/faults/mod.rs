//! Faults during a handoff, with real nginx + php-fpm and `php -S`: handoff-manager killed
//! (SIGKILL) with one-way handoffs queued and not yet read, mid-stream, and, for the
//! confirmed handshake (`handoff.confirm`), before it confirms and right after it confirms,
//! up to a hundred handoffs per point; and a php-fpm worker killed in the middle of the
//! confirmed handshake.
//!
//! What every client must get: the complete file, byte-exact, or a clean prefix of it
//! followed by a closed connection; never bytes from two writers, never a second head.
//! After each kill the next requests are served by PHP itself, and once the manager is
//! back on the same socket path, handoffs resume without restarting PHP.
//!
//! The faults every SAPI goes through are features of the SAPI × feature matrix
//! (`matrix.rs`, e.g. `matrix::cli_server::manager_killed_before_confirming`): they are the
//! `pub fn`s here, taking the [`Kind`] of stack. The tests here are nginx + php-fpm's own;
//! the manager killed mid-stream is in [`mid_stream`].
//!
//! Synchronisation is by polling what the kernel shows (`/proc/PID/syscall`,
//! `/proc/net/unix`, file sizes, logs) with deadlines, never by sleeping.

mod mid_stream;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::faults::{
    cli_server_pid, only_fpm_worker, wait_worker_in_handshake, CrashAfterAccept, RestartableManager,
};
use crate::util::scenarios::download_exact;
use crate::util::{response_from, wait_until, Config, Endpoint, Kind, Proc, Stack, MIB};

pub use mid_stream::manager_killed_mid_stream;

/// The client of a request whose handoff was lost ends within 30 s of `after` with
/// nginx's 502 page or an empty reply (curl exit 52): nothing of the file `content`.
fn assert_nothing_of_the_file(
    i: usize,
    curl: &mut Proc,
    head: &Path,
    body: &Path,
    content: &[u8],
    after: &str,
) {
    let status = curl
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("#{i}: curl still running 30 s after {after}"));
    let r = response_from(head, body);
    assert!(
        (status.success() && r.status == 502) || status.code() == Some(52),
        "#{i}: expected a 502 or an empty reply, got curl {status}, status {}:\n{}\n{}",
        r.status,
        r.head_text,
        curl.log_text()
    );
    let got = r.body();
    assert!(
        !got.windows(64).any(|w| w == &content[..64]) && got.len() < 4096,
        "#{i}: the client got {} body bytes, some of them the file's",
        got.len()
    );
}

/// Handoffs interrupted at each point.
const HANDOFFS_PER_POINT: usize = 100;

/// The file of the quick points: small, but above any inline threshold (the default is 0).
const SMALL: u64 = 64 * 1024;

/// What a kill may cost a waiting worker at most: far below its `handoff.timeout_ms`, so a
/// fallback that took this long came from the worker's timeout, not from seeing the kill.
const FALLBACK_AFTER_KILL: Duration = Duration::from_secs(5);

/// A client that got no byte for this long after a kill mid-stream, and whose connection is
/// still open, was left hanging.
const STALLED: Duration = Duration::from_secs(3);

/// A stack whose manager the test runs itself (to stop, kill and restart it). The worker
/// waits up to 10 s for the manager: only the kill, never this timeout, may end its wait.
fn stack(kind: Kind, children: u32) -> (Stack, RestartableManager) {
    stack_with(Config::new(kind).children(children))
}

/// [`stack`] whose workers use the confirmed two-phase handshake (`handoff.confirm`).
fn confirmed_stack(kind: Kind, children: u32) -> (Stack, RestartableManager) {
    stack_with(
        Config::new(kind)
            .children(children)
            .ini("handoff.confirm", "1"),
    )
}

fn stack_with(config: Config) -> (Stack, RestartableManager) {
    let kind = config.kind;
    let stack = Stack::start(config.without_manager().ini("handoff.timeout_ms", "10000"));
    let mut manager = RestartableManager::new(&stack.manager_socket, stack.path());
    if kind == Kind::Apache && crate::util::is_root() {
        // Apache's children run as www-data, the manager as root.
        manager = manager.with_args(&["--socket-mode", "0660", "--socket-group", "www-data"]);
    }
    (stack, manager)
}

/// [`stack`] with one php-fpm worker and nginx configured by `tune`.
fn stack_fpm_with(tune: impl FnOnce(Config) -> Config) -> (Stack, RestartableManager) {
    let stack = Stack::start(tune(
        Config::new(Kind::Fpm)
            .without_manager()
            .children(1)
            .ini("handoff.timeout_ms", "10000"),
    ));
    let manager = RestartableManager::new(&stack.manager_socket, stack.path());
    (stack, manager)
}

/// The process whose script runs the next request: the pool's only php-fpm worker, or
/// `php -S` itself.
fn php_pid(stack: &Stack) -> i32 {
    match (stack.kind, &stack.endpoint) {
        (kind, _) if kind.uses_fpm() => only_fpm_worker(stack.path()),
        (Kind::CliServer, Endpoint::Tcp(addr)) => cli_server_pid(&addr.to_string()),
        (Kind::CliServer, Endpoint::Unix(_)) => unreachable!("php -S listens on TCP"),
        _ => unreachable!("only the crash after confirming runs under Apache"),
    }
}

/// After a kill: with the manager down a request is served by PHP (send_file() returns
/// false); with a new manager on the same socket the next one is handed off again, which
/// the new manager logs as a complete download.
fn fallback_then_resume(stack: &Stack, manager: &mut RestartableManager, sha: &str, tag: &str) {
    let down = download_exact(stack, "small.bin", sha, SMALL, &format!("&down={tag}"));
    assert_eq!(down, "false", "{tag}: send_file() with the manager down");
    manager.start();
    let up = download_exact(stack, "small.bin", sha, SMALL, &format!("&up={tag}"));
    assert_eq!(up, "true", "{tag}: send_file() after the manager's restart");
    manager.wait_outcome("complete", SMALL, 1);
}

/// One-way handoffs killed before the manager read them.
const QUEUED_ROUNDS: usize = 20;

/// Point 0, the one-way handoff: the manager is stopped, so the worker's handoff stays
/// queued, unread, on its kept connection; the worker does not wait for it (send_file()
/// returns true while the manager is stopped); then the manager is killed. Such a handoff,
/// and only such a one, is lost: the kernel closes its connection, so the client gets
/// nginx's 502 or an empty reply, never a byte of the file. Counted per run.
pub fn manager_killed_with_handoffs_queued(kind: Kind) {
    let (stack, mut manager) = stack(kind, 1);
    let size = MIB;
    stack.data_file("queued.bin", size, 8);
    let content = fs::read(stack.data().join("queued.bin")).expect("read queued.bin");
    let sha = stack.data_file("small.bin", SMALL, 9);
    manager.start();
    let mut lost = 0;
    for i in 0..QUEUED_ROUNDS {
        // A handoff first, so that the worker holds a kept connection to this manager.
        let warm = download_exact(&stack, "small.bin", &sha, SMALL, &format!("&warm={i}"));
        assert_eq!(warm, "true", "#{i}: warm-up handoff");
        manager.signal(Signal::SIGSTOP);
        let name = format!("queued{i}");
        let (mut curl, head, body) = stack
            .curl(&name, &format!("/download.php?f=queued.bin&result={name}"))
            .spawn(stack.client_dir().join(format!("{name}.curl.log")));
        assert_eq!(
            stack.wait_result(&name),
            "true",
            "#{i}: send_file() must hand off one way while the manager is stopped"
        );
        manager.kill();
        assert_nothing_of_the_file(i, &mut curl, &head, &body, &content, "the kill");
        lost += 1;
        fallback_then_resume(&stack, &mut manager, &sha, &format!("queued{i}"));
    }
    eprintln!(
        "kill -9 with one-way handoffs queued ({kind:?}): {lost} of {QUEUED_ROUNDS} lost \
         (each unread when the manager died), 0 corrupt"
    );
    stack.assert_clean_logs();
}

/// A request in flight: its name, the curl running it, and where its head and body go.
type InFlight = (String, Proc, std::path::PathBuf, std::path::PathBuf);

/// A one-worker php-fpm stack configured by `tune`, whose worker holds a kept connection to
/// the manager (one handoff done), with the manager then stopped (SIGSTOP); and the sha of
/// `small.bin`, the file the requests fetch.
fn stopped_manager(tune: impl FnOnce(Config) -> Config) -> (Stack, RestartableManager, String) {
    let (stack, mut manager) = stack_fpm_with(tune);
    let sha = stack.data_file("small.bin", SMALL, 10);
    manager.start();
    let warm = download_exact(&stack, "small.bin", &sha, SMALL, "&warm=1");
    assert_eq!(warm, "true", "warm-up handoff");
    manager.signal(Signal::SIGSTOP);
    (stack, manager, sha)
}

/// Starts the request `name` for `small.bin`.
fn request_small(stack: &Stack, name: &str) -> InFlight {
    let (curl, head, body) = stack
        .curl(name, &format!("/download.php?f=small.bin&result={name}"))
        .spawn(stack.client_dir().join(format!("{name}.curl.log")));
    (name.to_string(), curl, head, body)
}

/// Every request ends with a 200 and the whole of `small.bin`.
fn assert_all_served(requests: Vec<InFlight>, sha: &str) {
    for (name, mut curl, head, body) in requests {
        let status = curl
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{name}: still running after SIGCONT"));
        assert!(status.success(), "{name}: curl {status}");
        let r = response_from(&head, &body);
        assert_eq!(r.status, 200, "{name}:\n{}", r.head_text);
        assert_eq!(r.body_sha(), sha, "{name}: handed-off body");
    }
}

/// Back-pressure blocks a worker no longer than `handoff.timeout_ms`: with the manager
/// stopped, one-way handoffs queue on the worker's kept connection until its send buffer
/// is full; the next send waits for room until the timeout (200 ms here), then that
/// request is served in-process (send_file() returns false, body byte-exact). Once the
/// manager runs again, every queued handoff is served.
#[test]
fn a_full_handoff_queue_falls_back_in_process_and_the_queued_are_served() {
    let (stack, manager, sha) = stopped_manager(|c| c.ini("handoff.timeout_ms", "200"));
    let mut queued = Vec::new();
    let fell_back = loop {
        let request = request_small(&stack, &format!("q{}", queued.len()));
        match stack.wait_result(&request.0).as_str() {
            "true" => queued.push(request),
            "false" => break request,
            other => panic!("{}: send_file() returned {other}", request.0),
        }
        assert!(queued.len() < 5000, "the queue never filled");
    };
    assert!(
        queued.len() > 10,
        "only {} handoffs were queued",
        queued.len()
    );
    eprintln!(
        "one-way handoffs queued on one kept connection before EAGAIN: {}",
        queued.len()
    );
    let (name, mut curl, head, body) = fell_back;
    let status = curl
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{name}: the fallback did not finish"));
    assert!(status.success(), "{name}: curl {status}");
    let r = response_from(&head, &body);
    assert_eq!(r.body_sha(), sha, "{name}: the request served in-process");
    manager.signal(Signal::SIGCONT);
    assert_all_served(queued, &sha);
}

/// A full queue is waited for: the manager is stopped until the worker's kept connection
/// holds all it can, and runs again while the next request's worker waits for room
/// (`handoff.timeout_ms`, 10 s here). That request is handed off too: send_file() returns
/// true, nothing is served in-process, and every body arrives whole. (A fallback holds
/// the worker for the whole download; docs/internals.md, "The queue bound".)
#[test]
fn a_full_handoff_queue_is_waited_for_until_the_manager_catches_up() {
    let (stack, manager, sha) = stopped_manager(|c| c);
    let mut requests = Vec::new();
    let waiting = loop {
        let name = format!("w{}", requests.len());
        requests.push(request_small(&stack, &name));
        // A queued handoff's script finishes at once; the one that found the queue full
        // waits in send_file() for the stopped manager.
        let answered = wait_until(
            &format!("{name}'s result"),
            Duration::from_secs(2),
            || stack.result(&name).is_some_and(|r| !r.is_empty()),
            || Ok(()),
        )
        .is_ok();
        if !answered {
            break name;
        }
        let result = stack.result(&name).unwrap_or_default();
        assert_eq!(
            result, "true",
            "{name}: send_file() with the manager stopped (a full queue must be waited for)"
        );
        assert!(requests.len() < 5000, "the queue never filled");
    };
    assert!(
        requests.len() > 10,
        "only {} handoffs were queued before one waited",
        requests.len() - 1
    );
    manager.signal(Signal::SIGCONT);
    assert_eq!(
        stack.wait_result(&waiting),
        "true",
        "{waiting}: found the queue full, must wait for the manager and hand off"
    );
    assert_all_served(requests, &sha);
    manager.wait_outcome("complete", SMALL, 1);
}

/// Point 1 (`handoff.confirm`): the manager dies before it confirms. It is stopped, so the request's worker
/// connects (into the backlog), sends the job and blocks in recv() for the answer; then it
/// is killed. The worker must see the socket close, fall back and send the whole file.
pub fn manager_killed_before_confirming(kind: Kind) {
    let (stack, mut manager) = confirmed_stack(kind, 1);
    let sha = stack.data_file("small.bin", SMALL, 1);
    manager.start();
    for i in 0..HANDOFFS_PER_POINT {
        let php = php_pid(&stack);
        manager.signal(Signal::SIGSTOP);
        let name = format!("before{i}");
        let (mut curl, head, body) = stack
            .curl(&name, &format!("/download.php?f=small.bin&result={name}"))
            .spawn(stack.client_dir().join(format!("{name}.curl.log")));
        wait_worker_in_handshake(php, &stack.manager_socket);
        let killed = Instant::now();
        manager.kill();
        let status = curl
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("#{i}: curl still running 30 s after the kill"));
        let waited = killed.elapsed();
        assert!(status.success(), "#{i}: curl {status}\n{}", curl.log_text());
        let r = response_from(&head, &body);
        assert_eq!(r.status, 200, "#{i}:\n{}", r.head_text);
        assert_eq!(r.body_len(), SMALL, "#{i}: body length");
        assert_eq!(r.body_sha(), sha, "#{i}: body sha256");
        assert_eq!(
            stack.wait_result(&name),
            "false",
            "#{i}: send_file() must report the fallback"
        );
        assert!(
            waited < FALLBACK_AFTER_KILL,
            "#{i}: the response took {waited:?} after the kill: the worker did not notice it"
        );
        fallback_then_resume(&stack, &mut manager, &sha, &format!("before{i}"));
    }
    stack.assert_clean_logs();
}

/// Point 2 (`handoff.confirm`): the manager confirms (Accept) and dies before "go" (see [`CrashAfterAccept`]
/// for why this is a stand-in). The worker's go fails; it must take its connection back
/// and send the whole file itself. Under mod_php, APR keeps the client socket non-blocking,
/// and the worker must put it back as it was before streaming the file itself.
pub fn manager_crashing_after_confirming(kind: Kind) {
    let (stack, mut manager) = confirmed_stack(kind, 1);
    let sha = stack.data_file("small.bin", SMALL, 2);
    for i in 0..HANDOFFS_PER_POINT {
        let stand_in = CrashAfterAccept::bind(&stack.manager_socket);
        let returned = download_exact(&stack, "small.bin", &sha, SMALL, &format!("&after={i}"));
        let confirmed = stand_in
            .join()
            .unwrap_or_else(|e| panic!("#{i}: the stand-in did not confirm a job: {e}"));
        assert!(
            confirmed.file_name.ends_with("/small.bin"),
            "#{i}: the stand-in confirmed {:?}",
            confirmed.file_name
        );
        assert_eq!(
            returned, "false",
            "#{i}: send_file() after the manager died between accept and go"
        );
        fallback_then_resume(&stack, &mut manager, &sha, &format!("after{i}"));
        manager.kill();
    }
    stack.assert_clean_logs();
}

/// After a failed go the worker takes its connection back with its close-on-exec flag as
/// it was: a child process the script starts afterwards (`exec`, `proc_open`, `mail()`)
/// inherits no more sockets than one started before send_file(). Under mod_php the client
/// socket is close-on-exec (APR accepts with `SOCK_CLOEXEC`); a `dup2` would clear that.
pub fn failed_go_keeps_close_on_exec(kind: Kind) {
    let (stack, _manager) = confirmed_stack(kind, 1);
    let sha = stack.data_file("cloexec.bin", SMALL, 9);
    for i in 0..3 {
        let stand_in = CrashAfterAccept::bind(&stack.manager_socket);
        let name = format!("cloexec{i}");
        let r = stack.get(
            &name,
            &format!("/user_code.php?f=cloexec.bin&children=1&result={name}"),
        );
        assert_eq!(r.body_sha(), sha, "#{i}: body");
        stand_in
            .join()
            .unwrap_or_else(|e| panic!("#{i}: the stand-in did not confirm a job: {e}"));
        assert_eq!(stack.wait_result(&name), "false", "#{i}: send_file()");
        let children = stack.wait_result(&format!("{name}.children"));
        let count = |key: &str| -> u32 {
            children
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.parse().ok())
                .unwrap_or_else(|| panic!("#{i}: no {key} in {children:?}"))
        };
        assert_eq!(
            count("after="),
            count("before="),
            "#{i}: sockets a child inherits before and after the failed handoff ({children})"
        );
    }
}

/// The requests a worker served itself while the manager was down reach the manager's
/// metrics with that worker's next handoff, once, under their cause.
#[test]
fn fallbacks_while_the_manager_was_down_reach_its_metrics() {
    let (stack, manager) = stack(Kind::Fpm, 1);
    let addr = crate::util::free_local_addr().to_string();
    let mut manager = manager.with_args(&["--metrics", &addr]);
    let sha = stack.data_file("small.bin", SMALL, 5);
    for k in 0..3 {
        let got = download_exact(&stack, "small.bin", &sha, SMALL, &format!("&down={k}"));
        assert_eq!(got, "false", "send_file() with the manager down");
    }
    manager.start();
    let metrics = || -> String {
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let line = |cause: &str, n: u32| {
        format!("\nhandoff_fallbacks_reported_total{{cause=\"{cause}\"}} {n}\n")
    };
    wait_until(
        "the metrics endpoint answers",
        Duration::from_secs(10),
        || metrics().contains(&line("unreachable", 0)),
        || Ok(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", manager.report()));
    for k in 0..2 {
        let got = download_exact(&stack, "small.bin", &sha, SMALL, &format!("&up={k}"));
        assert_eq!(got, "true", "send_file() with the manager back");
        let text = metrics();
        assert!(
            text.contains(&line("unreachable", 3)) && text.contains(&line("refused", 0)),
            "after handoff {k}, the three fallbacks must be counted once:\n{text}"
        );
    }
    let status = crate::util::manager_cli("status", &addr);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("fallbacks reported by PHP: unreachable 3\n"),
        "handoff-manager status:\n{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A php-fpm worker killed while it waits for the manager's answer: the manager (stopped
/// meanwhile) finds the job of a dead worker and must drop it without writing, so nginx
/// answers 502 (or closes) and the client gets no byte of the file.
#[test]
fn fpm_worker_killed_mid_handshake() {
    let (stack, mut manager) = confirmed_stack(Kind::Fpm, 1);
    let size = MIB;
    stack.data_file("victim.bin", size, 5);
    let content = fs::read(stack.data().join("victim.bin")).expect("read victim.bin");
    let sha = stack.data_file("small.bin", SMALL, 6);
    let dropped = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("worker went away before go; job dropped")
                    || l.contains("worker gone before accept")
            })
            .count()
    };
    manager.start();
    let rounds = 10;
    for i in 0..rounds {
        let worker = only_fpm_worker(stack.path());
        manager.signal(Signal::SIGSTOP);
        let name = format!("victim{i}");
        let (mut curl, head, body) = stack
            .curl(&name, "/download.php?f=victim.bin")
            .spawn(stack.client_dir().join(format!("{name}.curl.log")));
        wait_worker_in_handshake(worker, &stack.manager_socket);
        kill(Pid::from_raw(worker), Signal::SIGKILL).expect("kill the php-fpm worker");
        wait_until(
            &format!("php-fpm worker {worker} reaped"),
            Duration::from_secs(10),
            || !std::path::Path::new(&format!("/proc/{worker}")).exists(),
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        manager.signal(Signal::SIGCONT);
        assert_nothing_of_the_file(i, &mut curl, &head, &body, &content, "SIGCONT");
        wait_until(
            &format!("manager log: {} dropped jobs", i + 1),
            Duration::from_secs(10),
            || dropped(&manager.log()) > i,
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", manager.log()));
    }
    assert_eq!(
        dropped(&manager.log()),
        rounds,
        "one dropped job per killed worker"
    );
    assert_eq!(
        manager.outcome_count("complete", size) + manager.outcome_count("aborted", size),
        0,
        "the manager started a download for a dead worker"
    );
    assert!(
        !manager.log().contains("outcome="),
        "the manager wrote to a connection it should have dropped:\n{}",
        manager.log()
    );
    // The pool (with its respawned worker) and the manager go on.
    let returned = download_exact(&stack, "small.bin", &sha, SMALL, "&after=1");
    assert_eq!(returned, "true", "send_file() after the killed workers");
    manager.wait_outcome("complete", SMALL, 1);
}
