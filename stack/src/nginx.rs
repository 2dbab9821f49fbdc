//! nginx: the shared site (`deploy/nginx-site.conf.template`) inside a main config written
//! here, with what differs between the tests, the demo and the benchmark as options.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use nix::sys::signal::Signal;

use crate::{fill_template, find_program, is_root, wait_listening, Listen, Place, Proc};

/// One `server` from the shared site template.
#[derive(Clone, Debug)]
pub struct Site {
    pub listen: Listen,
    pub docroot: PathBuf,
    /// php-fpm's address for `fastcgi_pass` (`unix:/path` or `127.0.0.1:9000`).
    pub fpm: String,
    /// Keep FastCGI connections to php-fpm open between requests (`fastcgi_keep_conn on`
    /// and an upstream `keepalive` pool), a common tuning.
    pub fpm_keepalive: bool,
    /// Drop the site's `fastcgi_buffer_size` and `fastcgi_buffers` lines: nginx's default
    /// 4 KiB relay buffer (the benchmark's handoff-fpm-4k backend).
    pub default_buffers: bool,
    /// Extra lines inside the `server` block (the benchmark's bench-only locations).
    pub server_lines: Vec<String>,
    /// Serve HTTPS: `listen ... ssl` with this certificate (the benchmark's TLS backends).
    pub tls: Option<Tls>,
}

/// A site's TLS settings: the certificate chain and key (PEM) and `ssl_protocols`.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// e.g. "TLSv1.3".
    pub protocols: String,
}

impl Site {
    pub fn new(listen: Listen, docroot: PathBuf, fpm: String) -> Site {
        Site {
            listen,
            docroot,
            fpm,
            fpm_keepalive: false,
            default_buffers: false,
            server_lines: Vec::new(),
            tls: None,
        }
    }

    /// The template filled in, with this site's changes; `upstream` receives the http-level
    /// lines it needs.
    fn render(&self, index: usize, upstream: &mut String) -> String {
        let listen = match &self.tls {
            Some(_) => format!("{} ssl", self.listen.nginx()),
            None => self.listen.nginx(),
        };
        let mut site = fill_template(
            "nginx-site.conf.template",
            &[
                ("HANDOFF_LISTEN", &listen),
                ("HANDOFF_DOCROOT", &self.docroot.display().to_string()),
                ("HANDOFF_FPM", &self.fpm),
            ],
        );
        if self.fpm_keepalive {
            let pass = format!("fastcgi_pass {};", self.fpm);
            assert!(
                site.contains(&pass),
                "the site template's fastcgi_pass line moved"
            );
            let name = format!("php_keep{index}");
            site = site.replace(
                &pass,
                &format!("fastcgi_pass {name};\n        fastcgi_keep_conn on;"),
            );
            let _ = writeln!(
                upstream,
                "upstream {name} {{ server {}; keepalive 8; }}",
                self.fpm
            );
        }
        if self.default_buffers {
            let before = site.lines().count();
            site = site
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    !l.starts_with("fastcgi_buffer_size ") && !l.starts_with("fastcgi_buffers ")
                })
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                site.lines().count() + 2,
                before,
                "the site template's fastcgi_buffer lines moved"
            );
        }
        let mut server_lines = self.server_lines.clone();
        if let Some(tls) = &self.tls {
            server_lines.push(format!("ssl_certificate {};", tls.cert.display()));
            server_lines.push(format!("ssl_certificate_key {};", tls.key.display()));
            server_lines.push(format!("ssl_protocols {};", tls.protocols));
        }
        if !server_lines.is_empty() {
            let end = site
                .trim_end()
                .rfind('}')
                .expect("the site ends its server block");
            let mut extra = String::new();
            for line in &server_lines {
                let _ = writeln!(extra, "    {line}");
            }
            site.insert_str(end, &extra);
        }
        site
    }
}

/// How to start nginx: its sites and the main-config settings that differ between callers.
#[derive(Clone, Debug)]
pub struct Nginx {
    /// Names its files in DIR: `NAME.conf`, `NAME.pid`, `NAME-site-N.conf`, and its logs
    /// `NAME-error.log`, `NAME-access.log`, `NAME.out`: "nginx", or another name for a
    /// second nginx beside it (the benchmark's relay upstream). Temporary files go to
    /// `DIR/nginx-temp/` either way (a second nginx's prefixed with `NAME-`), the one
    /// directory the benchmark watches for spooled responses.
    pub name: String,
    pub sites: Vec<Site>,
    /// Plain `server` blocks written out in full, not from the shared site (the relay
    /// upstream's static server).
    pub servers: Vec<String>,
    /// `include /etc/nginx/mime.types` (a server of extensionless data files needs none).
    pub mime_types: bool,
    /// `worker_processes`: "1" (tests, demo) or "auto" (benchmark).
    pub worker_processes: String,
    pub worker_connections: u32,
    pub worker_rlimit_nofile: Option<u64>,
    /// The level of `error_log` (info, error).
    pub error_log_level: String,
    /// Write `nginx-access.log` (the benchmark turns it off).
    pub access_log: bool,
    /// Extra lines in the `http` block: tunings, more servers.
    pub http_lines: Vec<String>,
}

impl Nginx {
    pub fn new(sites: Vec<Site>) -> Nginx {
        Nginx {
            name: "nginx".into(),
            sites,
            servers: Vec::new(),
            mime_types: true,
            worker_processes: "1".into(),
            worker_connections: 1024,
            worker_rlimit_nofile: None,
            error_log_level: "info".into(),
            access_log: true,
            http_lines: Vec::new(),
        }
    }

    /// `nginx-error.log`, where nginx reports what it thought of upstream responses.
    pub fn error_log(place: &Place) -> PathBuf {
        place.log("nginx-error.log")
    }

    /// This nginx's error log, `NAME-error.log`.
    pub fn own_error_log(&self, place: &Place) -> PathBuf {
        place.log(&format!("{}-error.log", self.name))
    }

    /// The relay limit's upstream for the benchmark: nginx alone, one worker, serving
    /// `root` with sendfile on the Unix socket `socket`, no PHP, no access log: the best any
    /// design in which nginx relays the bytes can do. Named "relay-upstream".
    pub fn relay_upstream(socket: &std::path::Path, root: &std::path::Path) -> Nginx {
        let mut nginx = Nginx::new(Vec::new());
        nginx.name = "relay-upstream".into();
        nginx.mime_types = false;
        nginx.access_log = false;
        nginx.http_lines = [
            "sendfile on;",
            "tcp_nopush on;",
            "keepalive_requests 1000000;",
        ]
        .map(String::from)
        .to_vec();
        nginx.servers.push(format!(
            "server {{\n        listen unix:{};\n        root {};\n    }}",
            socket.display(),
            root.display()
        ));
        nginx
    }

    /// Writes `DIR/nginx.conf` around the sites, checks it with `nginx -t`, starts nginx in
    /// the foreground and waits until every site and every `also_wait` accepts.
    pub fn start(&self, place: &Place, also_wait: &[Listen]) -> Proc {
        let t = place.dir.display();
        let name = &self.name;
        let tmp = if name == "nginx" {
            format!("{t}/nginx-temp/")
        } else {
            format!("{t}/nginx-temp/{name}-")
        };
        let error_log = self.own_error_log(place);
        let mut upstream = String::new();
        let mut includes = String::new();
        for (i, site) in self.sites.iter().enumerate() {
            let path = place.dir.join(format!("{name}-site-{i}.conf"));
            fs::write(&path, site.render(i, &mut upstream)).expect("write the nginx site");
            let _ = writeln!(includes, "include {};", path.display());
        }
        // Started as root, nginx would run its workers as "nobody", who may not reach a
        // docroot inside a checkout under /root: a local stack runs them as the caller.
        let user = if is_root() { "user root;\n" } else { "" };
        let rlimit = self
            .worker_rlimit_nofile
            .map(|n| format!("worker_rlimit_nofile {n};\n"))
            .unwrap_or_default();
        let access_log = if self.access_log {
            place
                .log(&format!("{name}-access.log"))
                .display()
                .to_string()
        } else {
            "off".into()
        };
        let mut http = String::new();
        let extra = self.http_lines.iter().map(String::as_str);
        for line in extra.chain(upstream.lines()).chain(includes.lines()) {
            let _ = writeln!(http, "    {line}");
        }
        for server in &self.servers {
            let _ = writeln!(http, "    {server}");
        }
        let mime_types = if self.mime_types {
            "    include /etc/nginx/mime.types;\n"
        } else {
            ""
        };
        let main = format!(
            "# written by handoff-stack (stack/src/nginx.rs)\n\
             {user}daemon off;\nmaster_process on;\nworker_processes {wp};\n{rlimit}\
             pid {t}/{name}.pid;\nerror_log {el} {level};\n\
             events {{ worker_connections {wc}; }}\n\
             http {{\n{mime_types}    default_type application/octet-stream;\n\
             \x20   access_log {access_log};\n\
             \x20   client_body_temp_path {tmp}client_body;\n\
             \x20   fastcgi_temp_path {tmp}fastcgi;\n\
             \x20   proxy_temp_path {tmp}proxy;\n\
             \x20   uwsgi_temp_path {tmp}uwsgi;\n\
             \x20   scgi_temp_path {tmp}scgi;\n{http}}}\n",
            wp = self.worker_processes,
            el = error_log.display(),
            level = self.error_log_level,
            wc = self.worker_connections,
        );
        fs::create_dir_all(place.dir.join("nginx-temp")).expect("create nginx-temp");
        let conf = place.dir.join(format!("{name}.conf"));
        fs::write(&conf, main).expect("write nginx.conf");
        let nginx = find_program(&["nginx"]);
        let args = |cmd: &mut std::process::Command| {
            cmd.arg("-p")
                .arg(format!("{t}/"))
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log);
        };
        let mut check = place.command(&nginx);
        args(&mut check);
        let out = check.arg("-t").arg("-q").output().expect("run nginx -t");
        assert!(
            out.status.success(),
            "nginx rejected {}:\n{}{}",
            conf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = place.command(&nginx);
        args(&mut cmd);
        let mut proc = Proc::spawn(
            name,
            cmd,
            place.log(&format!("{name}.out")),
            Signal::SIGTERM,
        );
        let listens: Vec<Listen> = self
            .sites
            .iter()
            .map(|s| s.listen.clone())
            .chain(also_wait.iter().cloned())
            .collect();
        wait_listening(&mut proc, &listens, &[&error_log]);
        proc
    }
}
