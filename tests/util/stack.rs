//! One serving stack per test: handoff-manager (optional), then php-fpm behind nginx, the
//! PHP built-in server, or Apache with mod_php, configured from the shared files in
//! `deploy/` (Apache from a minimal config of its own). Manager, php-fpm and nginx start
//! through the shared starter (`stack/`, crate handoff-stack), as in the demo and the
//! benchmark.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use handoff_stack::fpm::Fpm;
use handoff_stack::nginx::{Nginx, Site};
use handoff_stack::{fill_template, Listen, Place};

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

    fn start_manager(&mut self, kind: Kind, access_log: bool) {
        let mut args: Vec<String> = Vec::new();
        // Apache's children run as another user (www-data) than the manager (root): the
        // socket's group lets them in, as docs/deployment.md advises, and nobody else.
        if kind == Kind::Apache && is_root() {
            args.extend(["--socket-mode", "0660", "--socket-group", "www-data"].map(String::from));
        }
        if access_log {
            args.push("--access-log".into());
            args.push(self.access_log_path().display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.procs.push(spawn_manager_with(
            &self.manager_socket,
            &self.path().join("manager.log"),
            &args,
        ));
        let sock = self.manager_socket.clone();
        self.wait_ready("handoff-manager", move || seqpacket_accepts(&sock));
    }

    /// The stack's files and logs, all in its temporary directory.
    fn place(&self) -> Place {
        Place::flat(self.path())
    }

    /// Starts php-fpm (the shared starter, `stack/`); returns the address for the
    /// front end's `fastcgi_pass`.
    fn start_fpm(&mut self, config: &Config) -> String {
        let extension = if config.extension {
            extension()
        } else {
            PathBuf::new()
        };
        let mut fpm = Fpm::new(extension, self.manager_socket.clone());
        fpm.children = config.fpm_children;
        fpm.tcp = config.fpm_tcp;
        fpm.ini = config.ini.clone();
        fpm.pool_lines = config.pool_lines.clone();
        // php-fpm.sock is 0660 (deploy/php-fpm-pool.conf): nginx, lighttpd and Caddy run as
        // this same user; Apache's children (mod_proxy_fcgi) as www-data, when root starts it.
        if config.kind == Kind::ApacheFcgi && is_root() {
            fpm.listen_group = Some("www-data".into());
        }
        fpm.env = vec![("HANDOFF_TEST_DIR".into(), self.path().into())];
        let place = self.place();
        self.extra_logs
            .push(("php-fpm log".into(), place.log("php-fpm.log")));
        let started = fpm.start(&place);
        let pass = started.fastcgi_pass();
        self.procs.push(started.proc);
        pass
    }

    /// nginx with the shared site (the shared starter, `stack/`) on `nginx.sock`.
    fn start_nginx(&mut self, fpm: &str, config: &Config) {
        let tmp = self.path().to_path_buf();
        let t = tmp.display();
        let nginx_sock = tmp.join("nginx.sock");
        let mut site = Site::new(Listen::Unix(nginx_sock.clone()), docroot(), fpm.to_string());
        site.fpm_keepalive = config.fpm_keepalive;
        site.default_buffers = config.nginx_default_buffers;
        let mut nginx = Nginx::new(vec![site]);
        // The unread-POST test sends more than nginx's default 1 MiB.
        nginx.http_lines.push("client_max_body_size 64m;".into());
        // nginx's defaults for a static file (etag on, if_modified_since exact, no
        // max_ranges): what users get from X-Accel-Redirect or a plain location.
        let static_sock = tmp.join("static.sock");
        if config.static_files {
            nginx.http_lines.push(format!(
                "server {{ listen unix:{}; root {t}/data; }}",
                static_sock.display()
            ));
        }
        let place = self.place();
        self.extra_logs
            .push(("nginx error.log".into(), Nginx::error_log(&place)));
        let also_wait = if config.static_files {
            vec![Listen::Unix(static_sock.clone())]
        } else {
            Vec::new()
        };
        self.procs.push(nginx.start(&place, &also_wait));
        self.endpoint = Endpoint::Unix(nginx_sock);
        if config.static_files {
            self.static_endpoint = Some(Endpoint::Unix(static_sock));
        }
    }

    fn start_cli_server(&mut self, config: &Config) {
        // php -S only listens on TCP: take a free port from the kernel; another process may
        // grab it before php binds, so a failed start is retried on a new port.
        for attempt in 0..5 {
            let addr = free_local_addr();
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

    /// Apache 2.4 prefork with mod_php from a minimal config in the temp dir (Debian builds
    /// mod_log_config in, so it is not loaded): its own php.ini (the distro's mod_php
    /// php.ini plus the extension and the settings, through `PHPINIDir`), the test docroot,
    /// `HANDOFF_TEST_DIR` through `SetEnv`. Like `php -S` it takes a free port from the
    /// kernel and retries on a clash.
    fn start_apache(&mut self, config: &Config) {
        let tmp = self.path().to_path_buf();
        let t = tmp.display();
        let mut ini = fs::read_to_string("/etc/php/8.2/apache2/php.ini").unwrap_or_default();
        let _ = write!(
            ini,
            "\n; handoff tests\nextension={}\nhandoff.socket={}\n",
            extension().display(),
            self.manager_socket.display()
        );
        for (k, v) in &config.ini {
            let _ = writeln!(ini, "{k}={v}");
        }
        fs::write(tmp.join("php.ini"), ini).expect("write php.ini");
        let modules = "/usr/lib/apache2/modules";
        let user = if is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let children = config.fpm_children.max(1);
        let docroot = docroot();
        let d = docroot.display();
        let error_log = tmp.join("apache-error.log");
        self.extra_logs
            .push(("apache error.log".into(), error_log.clone()));
        self.extra_logs
            .push(("apache access.log".into(), tmp.join("apache-access.log")));
        let tls_key = tmp.join("tls.key");
        let tls_cert = tmp.join("tls.crt");
        if config.apache_tls {
            let out = Command::new(find_program(&["openssl"]))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(&tls_key)
                .arg("-out")
                .arg(&tls_cert)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for attempt in 0..5 {
            let addr = free_local_addr();
            let tls_addr = config.apache_tls.then(free_local_addr);
            let tls = match tls_addr {
                Some(tls_addr) => format!(
                    "LoadModule ssl_module {modules}/mod_ssl.so\n\
                     Listen {tls_addr}\n\
                     <VirtualHost {tls_addr}>\n  SSLEngine on\n\
                     \x20 SSLCertificateFile \"{}\"\n  SSLCertificateKeyFile \"{}\"\n\
                     </VirtualHost>\n",
                    tls_cert.display(),
                    tls_key.display()
                ),
                None => String::new(),
            };
            let conf = format!(
                "{base}\
                 LoadModule php_module {modules}/libphp8.2.so\n\
                 StartServers {children}\nMinSpareServers 1\nMaxSpareServers {children}\n\
                 ServerLimit {children}\nMaxRequestWorkers {children}\n\
                 MaxConnectionsPerChild 0\n\
                 PHPINIDir \"{t}\"\n\
                 DocumentRoot \"{d}\"\n\
                 <Directory />\n  Require all denied\n</Directory>\n\
                 <Directory \"{d}\">\n  Require all granted\n</Directory>\n\
                 DirectoryIndex index.php\n\
                 <FilesMatch \"\\.php$\">\n  SetHandler application/x-httpd-php\n</FilesMatch>\n\
                 SetEnv HANDOFF_TEST_DIR \"{t}\"\n{tls}",
                base = apache_base_conf(addr, &tmp, &error_log, user, "prefork"),
            );
            let name = format!("apache2 (attempt {attempt})");
            if self.spawn_apache(&name, attempt, conf, addr, &error_log) {
                self.endpoint = Endpoint::Tcp(addr);
                if let Some(tls_addr) = tls_addr {
                    self.wait_ready(&name, move || TcpStream::connect(tls_addr).is_ok());
                    self.tls_addr = Some(tls_addr);
                }
                return;
            }
        }
        panic!("apache2: no free port after 5 attempts");
    }

    /// Writes `conf` and starts apache2 with it in the foreground, in a process group of
    /// its own (on SIGTERM the parent signals its whole group: that must not be the
    /// test's), and waits until `addr` accepts. False when the port was taken meanwhile
    /// (the caller tries another); any other failure panics with the logs.
    fn spawn_apache(
        &mut self,
        name: &str,
        attempt: usize,
        conf: String,
        addr: SocketAddr,
        error_log: &Path,
    ) -> bool {
        let tmp = self.path().to_path_buf();
        let conf_path = tmp.join("apache.conf");
        fs::write(&conf_path, conf).expect("write apache.conf");
        let mut cmd = Command::new(find_program(&["apache2"]));
        cmd.arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .process_group(0);
        let log = tmp.join(format!("apache-{attempt}.out"));
        let mut proc = Proc::spawn(name, cmd, log, Signal::SIGTERM);
        let ready = wait_until(
            name,
            START_DEADLINE,
            || TcpStream::connect(addr).is_ok(),
            || proc.check_alive(),
        );
        let bind_clash = proc.log_text().contains("Address already in use")
            || read_lossy(error_log).contains("Address already in use");
        self.procs.push(proc);
        match ready {
            Ok(()) => true,
            Err(_) if bind_clash => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// lighttpd 1.4 with `deploy/lighttpd-handoff.conf.template`, on a Unix socket.
    fn start_lighttpd(&mut self, fpm_socket: &str) {
        let tmp = self.path().to_path_buf();
        let t = tmp.display();
        let sock = tmp.join("lighttpd.sock");
        let handoff = fill_template(
            "lighttpd-handoff.conf.template",
            &[
                ("HANDOFF_DOCROOT", &docroot().display().to_string()),
                ("HANDOFF_FPM_SOCKET", fpm_socket),
            ],
        );
        fs::write(tmp.join("lighttpd-handoff.conf"), handoff).expect("write lighttpd conf");
        let main = format!(
            "server.modules = ( \"mod_accesslog\" )\n\
             server.bind = \"{}\"\n\
             server.errorlog = \"{t}/lighttpd-error.log\"\n\
             accesslog.filename = \"{t}/lighttpd-access.log\"\n\
             server.pid-file = \"{t}/lighttpd.pid\"\n\
             server.upload-dirs = ( \"{t}\" )\n\
             include \"{t}/lighttpd-handoff.conf\"\n",
            sock.display()
        );
        let conf = tmp.join("lighttpd.conf");
        fs::write(&conf, main).expect("write lighttpd.conf");
        let mut cmd = Command::new(find_program(&["lighttpd"]));
        cmd.arg("-D").arg("-f").arg(&conf);
        self.extra_logs
            .push(("lighttpd error.log".into(), tmp.join("lighttpd-error.log")));
        self.extra_logs.push((
            "lighttpd access.log".into(),
            tmp.join("lighttpd-access.log"),
        ));
        self.serve_on_unix_socket("lighttpd", cmd, sock);
    }

    /// Caddy 2 with `deploy/Caddyfile.template`, on a Unix socket; its admin API is off and
    /// its state (certificates, autosaved config) stays in the temp dir.
    fn start_caddy(&mut self, fpm_socket: &str) {
        let tmp = self.path().to_path_buf();
        let sock = tmp.join("caddy.sock");
        let site = fill_template(
            "Caddyfile.template",
            &[
                ("HANDOFF_ADDRESS", "http://"),
                ("HANDOFF_BIND", &format!("unix/{}", sock.display())),
                ("HANDOFF_DOCROOT", &docroot().display().to_string()),
                ("HANDOFF_FPM_SOCKET", fpm_socket),
            ],
        );
        let caddyfile = tmp.join("Caddyfile");
        fs::write(
            &caddyfile,
            format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}"),
        )
        .expect("write Caddyfile");
        let mut cmd = Command::new(find_program(&["caddy"]));
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .env("HOME", &tmp)
            .env("XDG_DATA_HOME", tmp.join("caddy-data"))
            .env("XDG_CONFIG_HOME", tmp.join("caddy-config"));
        self.serve_on_unix_socket("caddy", cmd, sock);
    }

    /// Apache 2.4 with the event MPM and `deploy/apache-proxy-fcgi.conf.template`, from a
    /// minimal main config of its own (no mod_php: PHP runs in php-fpm). Like mod_php's
    /// Apache it takes a free port from the kernel and retries on a clash.
    fn start_apache_fcgi(&mut self, fpm_socket: &str) {
        let tmp = self.path().to_path_buf();
        let t = tmp.display();
        let handoff = fill_template(
            "apache-proxy-fcgi.conf.template",
            &[
                ("HANDOFF_DOCROOT", &docroot().display().to_string()),
                ("HANDOFF_FPM_SOCKET", fpm_socket),
            ],
        );
        fs::write(tmp.join("apache-handoff.conf"), handoff).expect("write apache conf");
        let modules = "/usr/lib/apache2/modules";
        let user = if is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let error_log = tmp.join("apache-error.log");
        self.extra_logs
            .push(("apache error.log".into(), error_log.clone()));
        self.extra_logs
            .push(("apache access.log".into(), tmp.join("apache-access.log")));
        for attempt in 0..5 {
            let addr = free_local_addr();
            let conf = format!(
                "{base}\
                 LoadModule proxy_module {modules}/mod_proxy.so\n\
                 LoadModule proxy_fcgi_module {modules}/mod_proxy_fcgi.so\n\
                 StartServers 1\nServerLimit 1\nThreadsPerChild 25\nMaxRequestWorkers 25\n\
                 <Directory />\n  Require all denied\n</Directory>\n\
                 Include {t}/apache-handoff.conf\n",
                base = apache_base_conf(addr, &tmp, &error_log, user, "event"),
            );
            let name = format!("apache2 event (attempt {attempt})");
            if self.spawn_apache(&name, attempt, conf, addr, &error_log) {
                self.endpoint = Endpoint::Tcp(addr);
                return;
            }
        }
        panic!("apache2 (event): no free port after 5 attempts");
    }

    /// Starts the front end `name` (its output in `NAME.out`), waits until it accepts on
    /// `sock`, and makes `sock` the stack's endpoint.
    fn serve_on_unix_socket(&mut self, name: &str, cmd: Command, sock: PathBuf) {
        let out = self.path().join(format!("{name}.out"));
        self.procs
            .push(Proc::spawn(name, cmd, out, Signal::SIGTERM));
        let probe = sock.clone();
        self.wait_ready(name, move || UnixStream::connect(&probe).is_ok());
        self.endpoint = Endpoint::Unix(sock);
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

/// The part of an Apache config that the mod_php and the mod_proxy_fcgi stacks share: the
/// listener, pid and error log in `dir`, `user` (the `User`/`Group` lines, or nothing), the
/// MPM, the modules both load, and the access log with the client's port.
fn apache_base_conf(
    addr: SocketAddr,
    dir: &Path,
    error_log: &Path,
    user: &str,
    mpm: &str,
) -> String {
    let t = dir.display();
    let modules = "/usr/lib/apache2/modules";
    format!(
        "ServerRoot /etc/apache2\nServerName localhost\nListen {addr}\n\
                 PidFile {t}/apache.pid\nDefaultRuntimeDir {t}\n\
                 ErrorLog {el}\nLogLevel info\n{user}\
                 LoadModule mpm_{mpm}_module {modules}/mod_mpm_{mpm}.so\n\
                 LoadModule authz_core_module {modules}/mod_authz_core.so\n\
                 LoadModule mime_module {modules}/mod_mime.so\n\
                 LoadModule dir_module {modules}/mod_dir.so\n\
                 LoadModule env_module {modules}/mod_env.so\n\
                 TypesConfig /etc/mime.types\n\
                 LogFormat \"%h %{{remote}}p \\\"%r\\\" %>s %B %Dus\" handoff\n\
                 CustomLog {t}/apache-access.log handoff\n",
        el = error_log.display(),
    )
}
