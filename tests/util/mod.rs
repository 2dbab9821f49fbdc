//! The integration-test harness: real nginx, php-fpm, `php -S` and handoff-manager.
//!
//! - [`Stack`] starts one serving stack (manager optional, then php-fpm behind nginx, or the
//!   PHP built-in server) inside its own temporary directory, with its own Unix sockets.
//! - [`Proc`] owns one child process: its output goes to a log file, it is stopped in `Drop`.
//! - [`Endpoint`] says how a client reaches the stack; [`curl`] and [`raw_request`] are the
//!   clients, [`Response`] what curl got.
//! - [`write_random_file`] generates deterministic test content and returns its sha256.
//!
//! Readiness is always "the socket accepts a connection", polled with a deadline; when a
//! test panics, the stack's `Drop` prints every command line and the tail of every log.

#![allow(dead_code)]

pub mod scenarios;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// How long a daemon may take to start accepting connections.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How many trailing lines of each log a failing test prints.
const LOG_TAIL_LINES: usize = 150;

pub const MIB: u64 = 1024 * 1024;

/// The repository root (the root crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The document root that nginx and `php -S` serve: `php/tests/www`.
pub fn docroot() -> PathBuf {
    repo_root().join("php/tests/www")
}

fn built_binary(env_var: &str, name: &str) -> PathBuf {
    let path = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/release").join(name),
    };
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --release --workspace` in {} first (or set {env_var})",
        path.display(),
        repo_root().display()
    );
    path
}

/// The extension: `$HANDOFF_EXT` or `target/release/libhandoff.so`.
pub fn extension() -> PathBuf {
    built_binary("HANDOFF_EXT", "libhandoff.so")
}

/// The daemon: `$HANDOFF_MANAGER` or `target/release/handoff-manager`.
pub fn manager_binary() -> PathBuf {
    built_binary("HANDOFF_MANAGER", "handoff-manager")
}

fn find_program(candidates: &[&str]) -> PathBuf {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for name in candidates {
        for dir in path_dirs.iter().map(PathBuf::as_path).chain([
            Path::new("/usr/sbin"),
            Path::new("/usr/local/sbin"),
            Path::new("/usr/bin"),
        ]) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("none of {candidates:?} found on PATH or in /usr/sbin");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Serialises the tests that move hundreds of MiB or run dozens of clients, so that they do
/// not starve the timing-sensitive ones. Poisoning is ignored: one failed test must not fail
/// the others.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `size` bytes of xorshift64 output seeded with `seed` and returns their sha256 (hex).
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> String {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write test file");
        left -= n as u64;
    }
    hex(&hasher.finalize())
}

/// sha256 (hex) of a file's content.
pub fn sha256_file(path: &Path) -> String {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut reader = BufReader::with_capacity(4 * MIB as usize, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = reader.read(&mut buf).expect("read file to hash");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// Polls `ready` every few milliseconds until it holds or `deadline` passes; `alive` is asked
/// in between so that a daemon that died is reported at once instead of at the deadline.
fn wait_until(
    what: &str,
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        alive()?;
        if start.elapsed() > deadline {
            return Err(format!("{what}: not ready after {deadline:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a SOCK_SEQPACKET listener at `path` accepts (the manager's socket type: a stream
/// connect would be refused).
pub fn seqpacket_accepts(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    connect(fd.as_raw_fd(), &addr).is_ok()
}

/// One child process: stdout and stderr go to `log`; stopped (signal, then SIGKILL) in Drop.
pub struct Proc {
    pub name: String,
    pub cmdline: String,
    pub log: PathBuf,
    child: std::process::Child,
    stop_signal: Signal,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, stop_signal: Signal) -> Proc {
        let cmdline = describe(&cmd);
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("dup log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {cmdline}: {e}"));
        Proc {
            name: name.to_string(),
            cmdline,
            log,
            child,
            stop_signal,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the exit status if the process is gone.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited early: {status}", self.name)),
            Err(e) => Err(format!("{}: wait: {e}", self.name)),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Waits for the process to exit by itself, at most `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // nginx and php-fpm masters take their workers down on SIGTERM; a SIGKILL would
        // leave those orphaned.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, self.stop_signal);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    let _ = write!(s, "{}", cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[... {skip} earlier lines]");
    }
    for l in &all[skip..] {
        let _ = writeln!(out, "{l}");
    }
    out
}

/// Starts handoff-manager on `socket` with debug logging into `log`; does not wait.
pub fn spawn_manager(socket: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(manager_binary());
    cmd.arg("--socket").arg(socket).env("RUST_LOG", "debug");
    Proc::spawn("handoff-manager", cmd, log.to_path_buf(), Signal::SIGKILL)
}

/// Starts handoff-manager and waits until its socket accepts; panics with its log if not.
pub fn start_manager(socket: &Path, log: &Path) -> Proc {
    let mut proc = spawn_manager(socket, log);
    if let Err(e) = wait_until(
        "handoff-manager",
        START_DEADLINE,
        || seqpacket_accepts(socket),
        || proc.check_alive(),
    ) {
        panic!("{e}\n{}: {}\n{}", proc.name, proc.cmdline, proc.log_text());
    }
    proc
}

/// A stand-in for a hung manager: it accepts on the manager's socket and keeps every
/// connection open without ever answering. Stops accepting and closes all in `Drop`.
pub struct SilentManager {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentManager {
    pub fn bind(path: &Path) -> SilentManager {
        use nix::sys::socket::{
            accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;

        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("seqpacket socket");
        bind(
            listener.as_raw_fd(),
            &UnixAddr::new(path).expect("socket path"),
        )
        .expect("bind the silent manager");
        listen(&listener, Backlog::new(16).expect("backlog")).expect("listen");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match accept(listener.as_raw_fd()) {
                    Ok(fd) => {
                        // SAFETY: accept() just returned this descriptor and nothing else owns it.
                        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        accepted2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(held);
        });
        SilentManager {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted (and never answered).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SilentManager {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a client reaches a stack.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// nginx on a Unix socket.
    Unix(PathBuf),
    /// `php -S` on loopback TCP.
    Tcp(SocketAddr),
}

impl Endpoint {
    /// curl arguments that address `path_and_query` on this endpoint.
    pub fn curl_target(&self, path_and_query: &str) -> Vec<String> {
        match self {
            Endpoint::Unix(sock) => vec![
                "--unix-socket".into(),
                sock.display().to_string(),
                format!("http://localhost{path_and_query}"),
            ],
            Endpoint::Tcp(addr) => vec![format!("http://{addr}{path_and_query}")],
        }
    }

    pub fn connect(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Conn::Tcp(TcpStream::connect(a)?),
        })
    }
}

/// A raw client connection, for what curl cannot do (read part of a body, see HEAD's bytes).
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub fn set_read_timeout(&self, t: Duration) {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
        .expect("set_read_timeout");
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `request` verbatim and reads until EOF (the request should say `Connection: close`).
pub fn raw_request(endpoint: &Endpoint, request: &str) -> Vec<u8> {
    let mut conn = endpoint.connect().expect("connect for raw request");
    conn.set_read_timeout(Duration::from_secs(30));
    conn.write_all(request.as_bytes())
        .expect("send raw request");
    let mut out = Vec::new();
    conn.read_to_end(&mut out)
        .expect("read raw response to EOF within 30 s");
    out
}

/// Splits a raw HTTP response into (head, body) at the first blank line.
pub fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..pos]).into_owned(),
        &raw[pos + 4..],
    )
}

/// What curl received: status, headers of the final response, body in a file.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub head_text: String,
    pub body_path: PathBuf,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body(&self) -> Vec<u8> {
        fs::read(&self.body_path).unwrap_or_default()
    }

    pub fn body_len(&self) -> u64 {
        fs::metadata(&self.body_path).map(|m| m.len()).unwrap_or(0)
    }

    pub fn body_sha(&self) -> String {
        if self.body_path.exists() {
            sha256_file(&self.body_path)
        } else {
            sha256_bytes(b"")
        }
    }
}

fn parse_head(text: &str) -> (u16, Vec<(String, String)>) {
    // -D records every response (100 Continue, redirects): the last head is the answer.
    let last = text
        .split("\r\n\r\n")
        .filter(|h| h.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// A prepared curl invocation; `name` names its header and body files in `dir`.
pub struct Curl {
    cmd: Command,
    head_path: PathBuf,
    body_path: PathBuf,
    /// A file that gets one line per request sent (shown when a test fails).
    journal: Option<PathBuf>,
}

pub fn curl(dir: &Path, name: &str, endpoint: &Endpoint, path_and_query: &str) -> Curl {
    let head_path = dir.join(format!("{name}.head"));
    let body_path = dir.join(format!("{name}.body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "-D"])
        .arg(&head_path)
        .arg("-o")
        .arg(&body_path)
        .args(endpoint.curl_target(path_and_query));
    Curl {
        cmd,
        head_path,
        body_path,
        journal: None,
    }
}

impl Curl {
    pub fn arg(mut self, a: &str) -> Curl {
        self.cmd.arg(a);
        self
    }

    pub fn args(mut self, a: &[&str]) -> Curl {
        self.cmd.args(a);
        self
    }

    pub fn cmdline(&self) -> String {
        describe(&self.cmd)
    }

    fn note(&self, what: &str) {
        if let Some(journal) = &self.journal {
            if let Ok(mut f) = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(journal)
            {
                let _ = writeln!(f, "{what}: {}", describe(&self.cmd));
            }
        }
    }

    /// Runs curl to completion; panics if curl itself fails.
    pub fn run(mut self) -> Response {
        self.note("run");
        let cmdline = describe(&self.cmd);
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("run {cmdline}: {e}"));
        assert!(
            out.status.success(),
            "curl failed ({}): {cmdline}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.response()
    }

    /// Starts curl in the background, owned by the returned [`Proc`]; collect the result
    /// with [`Curl::response_of`] once it has exited.
    pub fn spawn(self, log: PathBuf) -> (Proc, PathBuf, PathBuf) {
        self.note("spawn");
        let Curl {
            cmd,
            head_path,
            body_path,
            ..
        } = self;
        (
            Proc::spawn("curl", cmd, log, Signal::SIGKILL),
            head_path,
            body_path,
        )
    }

    fn response(&self) -> Response {
        response_from(&self.head_path, &self.body_path)
    }
}

/// Reads what a (finished) curl wrote to its header and body files.
pub fn response_from(head_path: &Path, body_path: &Path) -> Response {
    let head_text = read_lossy(head_path);
    let (status, headers) = parse_head(&head_text);
    Response {
        status,
        headers,
        head_text,
        body_path: body_path.to_path_buf(),
    }
}

/// Which server runs PHP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nginx in front of php-fpm.
    Fpm,
    /// The PHP built-in web server, `php -S`.
    CliServer,
}

/// How to start a [`Stack`].
pub struct Config {
    pub kind: Kind,
    /// Start handoff-manager; without it `handoff.socket` points at a path nobody listens on.
    pub manager: bool,
    /// php-fpm workers (pm = static).
    pub fpm_children: u32,
    /// Extra `-d` settings for PHP.
    pub ini: Vec<(String, String)>,
}

impl Config {
    pub fn new(kind: Kind) -> Config {
        Config {
            kind,
            manager: true,
            fpm_children: 2,
            ini: Vec::new(),
        }
    }

    pub fn without_manager(mut self) -> Config {
        self.manager = false;
        self
    }

    pub fn children(mut self, n: u32) -> Config {
        self.fpm_children = n;
        self
    }

    /// Adds a `-d key=value` PHP setting.
    pub fn ini(mut self, key: &str, value: &str) -> Config {
        self.ini.push((key.to_string(), value.to_string()));
        self
    }
}

/// One serving stack in its own temporary directory.
///
/// Layout of the directory: `data/` holds the files scripts send (the scripts find it through
/// `$HANDOFF_TEST_DIR`), `results/` what scripts report, `client/` what curl received, and the
/// sockets, configs and logs of every process.
pub struct Stack {
    pub kind: Kind,
    pub endpoint: Endpoint,
    pub manager_socket: PathBuf,
    procs: Vec<Proc>,
    /// Logs that are not a process's own output (nginx error.log, fpm.log).
    extra_logs: Vec<(String, PathBuf)>,
    dir: tempfile::TempDir,
}

impl Stack {
    pub fn start(config: Config) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("handoff-")
            .tempdir()
            .expect("create temp dir");
        let mut stack = Stack {
            kind: config.kind,
            endpoint: Endpoint::Unix(PathBuf::new()),
            manager_socket: dir.path().join("manager.sock"),
            procs: Vec::new(),
            extra_logs: Vec::new(),
            dir,
        };
        for sub in ["data", "results", "client"] {
            fs::create_dir(stack.path().join(sub)).expect("create subdir");
        }
        if config.manager {
            stack.start_manager();
        }
        match config.kind {
            Kind::Fpm => {
                let fpm_sock = stack.start_fpm(&config);
                stack.start_nginx(&fpm_sock);
            }
            Kind::CliServer => stack.start_cli_server(&config),
        }
        stack
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn client_dir(&self) -> PathBuf {
        self.path().join("client")
    }

    /// Creates `data/<name>` with `size` pseudo-random bytes; returns its sha256.
    pub fn data_file(&self, name: &str, size: u64, seed: u64) -> String {
        write_random_file(&self.data().join(name), size, seed)
    }

    /// What a script wrote to `results/<name>`, if anything.
    pub fn result(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path().join("results").join(name)).ok()
    }

    /// Waits for a script to write `results/<name>` (after a handoff the script still runs
    /// while the client already has its bytes).
    pub fn wait_result(&self, name: &str) -> String {
        let path = self.path().join("results").join(name);
        wait_until(
            &format!("result file {name}"),
            Duration::from_secs(10),
            || path.exists() && fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false),
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        read_lossy(&path)
    }

    /// A curl request to this stack; `name` must be unique within the test.
    pub fn curl(&self, name: &str, path_and_query: &str) -> Curl {
        let mut c = curl(&self.client_dir(), name, &self.endpoint, path_and_query);
        c.journal = Some(self.path().join("requests.log"));
        c
    }

    /// GET with curl, to completion.
    pub fn get(&self, name: &str, path_and_query: &str) -> Response {
        self.curl(name, path_and_query).run()
    }

    fn proc_mut(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// Keeps a background process (a slow curl) so that it is killed and reported with the rest.
    pub fn adopt(&mut self, proc: Proc) -> usize {
        self.procs.push(proc);
        self.procs.len() - 1
    }

    pub fn adopted(&mut self, index: usize) -> &mut Proc {
        &mut self.procs[index]
    }

    pub fn manager_log(&self) -> String {
        self.procs
            .iter()
            .find(|p| p.name == "handoff-manager")
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// The `bytes=N` of every manager log line that reports a download with `outcome`.
    pub fn outcome_bytes(&self, outcome: &str) -> Vec<u64> {
        let want_outcome = format!("outcome={outcome}");
        self.manager_log()
            .lines()
            .filter_map(|l| {
                let words: Vec<&str> = l.split(|c: char| c.is_whitespace() || c == ',').collect();
                if !words.contains(&want_outcome.as_str()) {
                    return None;
                }
                words
                    .iter()
                    .find_map(|w| w.strip_prefix("bytes=")?.parse().ok())
            })
            .collect()
    }

    /// Manager log lines that report a finished download with `outcome` and exactly `bytes`.
    pub fn outcome_count(&self, outcome: &str, bytes: u64) -> usize {
        self.outcome_bytes(outcome)
            .into_iter()
            .filter(|&b| b == bytes)
            .count()
    }

    /// Waits until `check` accepts the manager's log (at most 30 s); panics with `what`.
    pub fn wait_manager(&self, what: &str, mut check: impl FnMut(&Stack) -> bool) {
        wait_until(what, Duration::from_secs(30), || check(self), || Ok(()))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the manager has logged `count` downloads with `outcome` and `bytes`.
    pub fn wait_outcome(&self, outcome: &str, bytes: u64, count: usize) {
        wait_until(
            &format!("manager log line outcome={outcome} bytes={bytes} (x{count})"),
            Duration::from_secs(20),
            || self.outcome_count(outcome, bytes) >= count,
            || Ok(()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Fails if a php-fpm worker died of a signal (a crash in the extension).
    pub fn assert_no_worker_crash(&self) {
        for (label, path) in &self.extra_logs {
            if label == "php-fpm log" {
                let log = read_lossy(path);
                assert!(
                    !log.contains("exited on signal"),
                    "a php-fpm worker crashed:\n{log}"
                );
            }
        }
    }

    fn env_for_php(&self, cmd: &mut Command) {
        cmd.env("HANDOFF_TEST_DIR", self.path());
    }

    fn start_manager(&mut self) {
        self.procs.push(spawn_manager(
            &self.manager_socket,
            &self.path().join("manager.log"),
        ));
        let sock = self.manager_socket.clone();
        self.wait_ready("handoff-manager", move || seqpacket_accepts(&sock));
    }

    fn start_fpm(&mut self, config: &Config) -> PathBuf {
        let tmp = self.path().to_path_buf();
        let fpm_sock = tmp.join("php-fpm.sock");
        let fpm_log = tmp.join("fpm.log");
        let conf = tmp.join("php-fpm.conf");
        fs::write(
            &conf,
            format!(
                "[global]\npid = {}\nerror_log = {}\ndaemonize = no\ninclude = {}\n",
                tmp.join("php-fpm.pid").display(),
                fpm_log.display(),
                repo_root().join("deploy/php-fpm-pool.conf").display()
            ),
        )
        .expect("write php-fpm.conf");
        let user = if is_root() {
            "root".to_string()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "nobody".into())
        };
        let mut cmd = Command::new(find_program(&["php-fpm8.2", "php-fpm"]));
        cmd.args(["-F", "-R", "-y"])
            .arg(&conf)
            .arg("-d")
            .arg(format!("extension={}", extension().display()));
        for (k, v) in &config.ini {
            cmd.arg("-d").arg(format!("{k}={v}"));
        }
        cmd.env("HANDOFF_FPM_LISTEN", &fpm_sock)
            .env("HANDOFF_FPM_USER", user)
            .env("HANDOFF_FPM_CHILDREN", config.fpm_children.to_string())
            .env("HANDOFF_SOCKET", &self.manager_socket);
        self.env_for_php(&mut cmd);
        self.extra_logs.push(("php-fpm log".into(), fpm_log));
        let proc = Proc::spawn("php-fpm", cmd, tmp.join("fpm.out"), Signal::SIGTERM);
        self.procs.push(proc);
        let sock = fpm_sock.clone();
        self.wait_ready("php-fpm", move || UnixStream::connect(&sock).is_ok());
        fpm_sock
    }

    fn start_nginx(&mut self, fpm_sock: &Path) {
        let tmp = self.path().to_path_buf();
        let nginx_sock = tmp.join("nginx.sock");
        let template = fs::read_to_string(repo_root().join("deploy/nginx-site.conf.template"))
            .expect("read deploy/nginx-site.conf.template");
        let site = template
            .replace(
                "${HANDOFF_LISTEN}",
                &format!("unix:{}", nginx_sock.display()),
            )
            .replace("${HANDOFF_DOCROOT}", &docroot().display().to_string())
            .replace("${HANDOFF_FPM}", &format!("unix:{}", fpm_sock.display()));
        fs::write(tmp.join("site.conf"), site).expect("write site.conf");
        let t = tmp.display();
        let user = if is_root() { "user root;\n" } else { "" };
        // client_max_body_size: the unread-POST test sends more than nginx's default 1 MiB.
        let main = format!(
            "{user}daemon off;\nmaster_process on;\nworker_processes 1;\npid {t}/nginx.pid;\n\
             error_log {t}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
             \x20 client_max_body_size 64m;\n\
             \x20 access_log {t}/access.log;\n  client_body_temp_path {t}/client_body;\n\
             \x20 fastcgi_temp_path {t}/fastcgi_temp;\n  proxy_temp_path {t}/proxy_temp;\n\
             \x20 uwsgi_temp_path {t}/uwsgi_temp;\n  scgi_temp_path {t}/scgi_temp;\n\
             \x20 include {t}/site.conf;\n}}\n"
        );
        let conf = tmp.join("nginx.conf");
        fs::write(&conf, main).expect("write nginx.conf");
        let mut cmd = Command::new(find_program(&["nginx"]));
        cmd.arg("-p")
            .arg(format!("{t}/"))
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(tmp.join("error.log"));
        self.extra_logs
            .push(("nginx error.log".into(), tmp.join("error.log")));
        let proc = Proc::spawn("nginx", cmd, tmp.join("nginx.out"), Signal::SIGTERM);
        self.procs.push(proc);
        let sock = nginx_sock.clone();
        self.wait_ready("nginx", move || UnixStream::connect(&sock).is_ok());
        self.endpoint = Endpoint::Unix(nginx_sock);
    }

    fn start_cli_server(&mut self, config: &Config) {
        // php -S only listens on TCP: take a free port from the kernel; another process may
        // grab it before php binds, so a failed start is retried on a new port.
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("pick a free port")
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let mut cmd = Command::new(find_program(&["php"]));
            cmd.arg("-d")
                .arg(format!("extension={}", extension().display()))
                .arg("-d")
                .arg(format!("handoff.socket={}", self.manager_socket.display()));
            for (k, v) in &config.ini {
                cmd.arg("-d").arg(format!("{k}={v}"));
            }
            cmd.arg("-S").arg(addr.to_string()).arg("-t").arg(docroot());
            self.env_for_php(&mut cmd);
            let name = format!("php -S (attempt {attempt})");
            let log = self.path().join(format!("php-server-{attempt}.log"));
            let mut proc = Proc::spawn(&name, cmd, log, Signal::SIGKILL);
            let ready = wait_until(
                &name,
                START_DEADLINE,
                || TcpStream::connect(addr).is_ok(),
                || proc.check_alive(),
            );
            let bind_clash = proc.log_text().contains("Address already in use");
            self.procs.push(proc);
            match ready {
                Ok(()) => {
                    self.endpoint = Endpoint::Tcp(addr);
                    return;
                }
                Err(_) if bind_clash => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("php -S: no free port after 5 attempts");
    }

    fn wait_ready(&mut self, name: &str, ready: impl FnMut() -> bool) {
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("process was spawned");
        if let Err(e) = wait_until(name, START_DEADLINE, ready, || proc.check_alive()) {
            panic!("{e}");
        }
    }

    /// The command lines and log tails of everything in this stack.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "==== stack in {}", self.path().display());
        for p in &self.procs {
            let _ = writeln!(out, "---- {} (pid {}): {}", p.name, p.pid(), p.cmdline);
            let _ = writeln!(out, "---- output of {} ({}):", p.name, p.log.display());
            out.push_str(&tail(&p.log_text(), LOG_TAIL_LINES));
        }
        for (label, path) in &self.extra_logs {
            let _ = writeln!(out, "---- {label} ({}):", path.display());
            out.push_str(&tail(&read_lossy(path), LOG_TAIL_LINES));
        }
        let requests = self.path().join("requests.log");
        if requests.exists() {
            let _ = writeln!(out, "---- curl requests, in order:");
            out.push_str(&tail(&read_lossy(&requests), LOG_TAIL_LINES));
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        // Stop clients before servers, servers in reverse start order.
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}
