//! How each kind of stack starts its servers: the manager, php-fpm and nginx (through
//! handoff-stack), `php -S`, Apache with mod_php or mod_proxy_fcgi, lighttpd and Caddy;
//! [`Stack::start`](super::Stack::start) picks them by [`Kind`](super::Kind).

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;

use handoff_stack::fpm::Fpm;
use handoff_stack::nginx::{Nginx, Site};
use handoff_stack::{fill_template, Listen, Place};

use super::{
    docroot, extension, find_program, free_local_addr, is_root, read_lossy, seqpacket_accepts,
    spawn_manager_with, wait_until, Config, Endpoint, Kind, Proc, Stack, START_DEADLINE,
};

impl Stack {
    pub(super) fn start_manager(&mut self, kind: Kind, access_log: bool) {
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
    pub(super) fn place(&self) -> Place {
        Place::flat(self.path())
    }

    /// Starts php-fpm (the shared starter, `stack/`); returns the address for the
    /// front end's `fastcgi_pass`.
    pub(super) fn start_fpm(&mut self, config: &Config) -> String {
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
    pub(super) fn start_nginx(&mut self, fpm: &str, config: &Config) {
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

    pub(super) fn start_cli_server(&mut self, config: &Config) {
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
    pub(super) fn start_apache(&mut self, config: &Config) {
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
    pub(super) fn spawn_apache(
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
        // A clash counts even when the port accepted: then another server answered there.
        match ready {
            _ if bind_clash => false,
            Ok(()) => true,
            Err(e) => panic!("{e}"),
        }
    }

    /// lighttpd 1.4 with `deploy/lighttpd-handoff.conf.template`, on a Unix socket.
    pub(super) fn start_lighttpd(&mut self, fpm_socket: &str) {
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
    pub(super) fn start_caddy(&mut self, fpm_socket: &str) {
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
    pub(super) fn start_apache_fcgi(&mut self, fpm_socket: &str) {
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
    pub(super) fn serve_on_unix_socket(&mut self, name: &str, cmd: Command, sock: PathBuf) {
        let out = self.path().join(format!("{name}.out"));
        self.procs
            .push(Proc::spawn(name, cmd, out, Signal::SIGTERM));
        let probe = sock.clone();
        self.wait_ready(name, move || UnixStream::connect(&probe).is_ok());
        self.endpoint = Endpoint::Unix(sock);
    }

    pub(super) fn wait_ready(&mut self, name: &str, ready: impl FnMut() -> bool) {
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .expect("process was spawned");
        if let Err(e) = wait_until(name, START_DEADLINE, ready, || proc.check_alive()) {
            panic!("{e}");
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
