//! One serving stack per test: handoff-manager (optional), then php-fpm behind nginx, the
//! PHP built-in server, or Apache with mod_php, configured from the shared files in
//! `deploy/` (Apache from a minimal config of its own). Manager, php-fpm and nginx start
//! through the shared starter (`stack/`, crate handoff-stack), as in the demo and the
//! benchmark.

mod servers;

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{
    curl, curl_target, docroot, extension, find_program, free_local_addr, is_root, read_lossy,
    seqpacket_accepts, spawn_manager_with, tail, wait_until, write_random_file, Curl, Endpoint,
    Proc, Response, LOG_TAIL_LINES, START_DEADLINE,
};

/// Which server runs PHP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nginx in front of php-fpm.
    Fpm,
    /// The PHP built-in web server, `php -S`.
    CliServer,
    /// Apache 2.4 (prefork) with mod_php, plain HTTP on 127.0.0.1.
    Apache,
    /// lighttpd 1.4 (mod_fastcgi) in front of php-fpm.
    Lighttpd,
    /// Caddy 2 (`php_fastcgi`) in front of php-fpm.
    Caddy,
    /// Apache 2.4 (event MPM) with mod_proxy_fcgi in front of php-fpm, plain HTTP on
    /// 127.0.0.1.
    ApacheFcgi,
}

impl Kind {
    /// Whether PHP runs in php-fpm (behind some FastCGI front end).
    pub fn uses_fpm(self) -> bool {
        matches!(
            self,
            Kind::Fpm | Kind::Lighttpd | Kind::Caddy | Kind::ApacheFcgi
        )
    }
}

/// How to start a [`Stack`].
pub struct Config {
    pub kind: Kind,
    /// Start handoff-manager; without it `handoff.socket` points at a path nobody listens on.
    pub manager: bool,
    /// php-fpm workers (pm = static), or Apache prefork children.
    pub fpm_children: u32,
    /// Extra `-d` settings for PHP (php.ini lines under Apache).
    pub ini: Vec<(String, String)>,
    /// Extra lines for php-fpm's pool (`php_admin_value[...] = ...`).
    pub pool_lines: Vec<String>,
    /// The manager writes its JSON access log ([`Stack::access_log`]).
    pub access_log: bool,
    /// php-fpm runs without the extension (only with [`Kind::Fpm`]).
    pub extension: bool,
    /// nginx also serves `data/` statically on a second socket ([`Stack::static_endpoint`]),
    /// the reference the differential test compares `send_file()` with.
    pub static_files: bool,
    /// php-fpm listens on 127.0.0.1 (TCP) instead of a Unix socket, as in many container
    /// set-ups (`fastcgi_pass 127.0.0.1:9000`).
    pub fpm_tcp: bool,
    /// nginx keeps its connections to php-fpm open between requests (`fastcgi_keep_conn on`
    /// and an upstream `keepalive` pool), a common tuning.
    pub fpm_keepalive: bool,
    /// Apache also serves HTTPS (mod_ssl, a self-signed certificate) on a second port
    /// ([`Stack::tls_addr`]). (HTTP/2 cannot be tested: mod_http2 stays inactive under
    /// prefork, the only MPM mod_php runs in.)
    pub apache_tls: bool,
    /// nginx without the site's `fastcgi_buffer_size` / `fastcgi_buffers` lines: nginx's
    /// default 4k/8k buffers, as a site that did not copy them has.
    pub nginx_default_buffers: bool,
}

impl Config {
    pub fn new(kind: Kind) -> Config {
        // The tests exercise the handoff for every size, 0 and 1 byte included; the inline
        // threshold (default 64 KiB) has its own test, which sets it again.
        let ini = vec![("handoff.inline_below".to_string(), "0".to_string())];
        Config {
            kind,
            manager: true,
            fpm_children: 2,
            ini,
            pool_lines: Vec::new(),
            access_log: false,
            extension: true,
            static_files: false,
            fpm_tcp: false,
            fpm_keepalive: false,
            apache_tls: false,
            nginx_default_buffers: false,
        }
    }

    /// Apache serves HTTPS too (only with [`Kind::Apache`]).
    pub fn with_tls(mut self) -> Config {
        self.apache_tls = true;
        self
    }

    /// nginx talks to php-fpm over TCP on 127.0.0.1 (only with [`Kind::Fpm`]).
    pub fn fpm_over_tcp(mut self) -> Config {
        self.fpm_tcp = true;
        self
    }

    /// nginx keeps FastCGI connections to php-fpm alive (only with [`Kind::Fpm`]).
    pub fn fpm_keepalive(mut self) -> Config {
        self.fpm_keepalive = true;
        self
    }

    /// nginx relays with its default FastCGI buffers (only with [`Kind::Fpm`]).
    pub fn nginx_default_buffers(mut self) -> Config {
        self.nginx_default_buffers = true;
        self
    }

    /// nginx serves `data/` statically too (only with [`Kind::Fpm`]).
    pub fn with_static_files(mut self) -> Config {
        self.static_files = true;
        self
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

    /// php-fpm does not load the extension (only with [`Kind::Fpm`]).
    pub fn without_extension(mut self) -> Config {
        self.extension = false;
        self
    }

    /// The manager writes a JSON access log ([`Stack::access_log`]).
    pub fn with_access_log(mut self) -> Config {
        self.access_log = true;
        self
    }

    /// Adds a line to php-fpm's pool, e.g. `php_admin_value[handoff.socket] = ...`.
    pub fn pool_line(mut self, line: &str) -> Config {
        self.pool_lines.push(line.to_string());
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
    /// nginx serving `data/` as static files, with [`Config::with_static_files`].
    pub static_endpoint: Option<Endpoint>,
    /// Apache's HTTPS port, with [`Config::with_tls`].
    pub tls_addr: Option<SocketAddr>,
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
            static_endpoint: None,
            tls_addr: None,
            manager_socket: dir.path().join("manager.sock"),
            procs: Vec::new(),
            extra_logs: Vec::new(),
            dir,
        };
        for sub in ["data", "results", "client"] {
            fs::create_dir(stack.path().join(sub)).expect("create subdir");
        }
        if config.kind == Kind::ApacheFcgi && is_root() {
            // Apache's children run as www-data: they must reach php-fpm's socket.
            fs::set_permissions(stack.path(), fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", stack.path().display()));
        }
        if config.kind == Kind::Apache && is_root() {
            // Apache's children run as www-data: they must reach the scripts' data, write
            // results/ and connect to the manager's socket.
            for (path, mode) in [
                (stack.path().to_path_buf(), 0o755),
                (stack.data(), 0o755),
                (stack.path().join("results"), 0o777),
            ] {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            }
        }
        if config.manager {
            stack.start_manager(config.kind, config.access_log);
        }
        match config.kind {
            Kind::Fpm => {
                let fpm = stack.start_fpm(&config);
                stack.start_nginx(&fpm, &config);
            }
            Kind::Lighttpd | Kind::Caddy | Kind::ApacheFcgi => {
                assert!(
                    !config.fpm_tcp
                        && !config.fpm_keepalive
                        && !config.static_files
                        && !config.nginx_default_buffers,
                    "fpm_over_tcp, fpm_keepalive, with_static_files and nginx_default_buffers \
                     are nginx settings"
                );
                let fpm = stack.start_fpm(&config);
                let socket = fpm
                    .strip_prefix("unix:")
                    .expect("php-fpm on a Unix socket")
                    .to_string();
                match config.kind {
                    Kind::Lighttpd => stack.start_lighttpd(&socket),
                    Kind::Caddy => stack.start_caddy(&socket),
                    _ => stack.start_apache_fcgi(&socket),
                }
            }
            Kind::CliServer => stack.start_cli_server(&config),
            Kind::Apache => stack.start_apache(&config),
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

    /// A curl request over HTTPS to Apache's TLS port (self-signed: not verified).
    pub fn curl_tls(&self, name: &str, path_and_query: &str) -> Curl {
        let addr = self.tls_addr.expect("the stack was started with_tls()");
        let target = vec!["-k".into(), format!("https://{addr}{path_and_query}")];
        let mut c = curl_target(&self.client_dir(), name, target);
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

    fn access_log_path(&self) -> PathBuf {
        self.path().join("access.log")
    }

    /// The manager's JSON access log, one object per finished download
    /// ([`Config::with_access_log`]); lines that do not parse are left out.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        read_lossy(&self.access_log_path())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
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

    /// Fails if a php-fpm worker died of a signal (a crash in the extension), if nginx
    /// found the FastCGI response it got malformed (a framing bug in the manager or the
    /// fallback: such responses can still look fine to curl), or if nginx spooled a
    /// response to disk (the manager's `X-Accel-Buffering: no` is there to prevent that).
    pub fn assert_clean_logs(&self) {
        const UPSTREAM_ERRORS: [&str; 6] = [
            "upstream response is buffered to a temporary file",
            "upstream prematurely closed",
            "upstream sent more data than specified",
            "upstream sent invalid",
            "upstream sent unexpected FastCGI record",
            "upstream sent unsupported FastCGI protocol version",
        ];
        for (label, path) in &self.extra_logs {
            let log = read_lossy(path);
            if label == "php-fpm log" {
                assert!(
                    !log.contains("exited on signal"),
                    "a php-fpm worker crashed:\n{log}"
                );
            }
            if label == "apache error.log" {
                for line in log.lines() {
                    assert!(
                        !line.contains("exit signal") && !line.contains("Segmentation fault"),
                        "an Apache child crashed: {line}"
                    );
                }
            }
            if label == "nginx error.log" {
                for line in log.lines() {
                    assert!(
                        !UPSTREAM_ERRORS.iter().any(|e| line.contains(e)),
                        "nginx rejected a FastCGI response: {line}"
                    );
                }
            }
        }
    }

    fn env_for_php(&self, cmd: &mut Command) {
        cmd.env("HANDOFF_TEST_DIR", self.path());
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
