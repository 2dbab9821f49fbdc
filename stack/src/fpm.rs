//! php-fpm with the shared pool (`deploy/php-fpm-pool.conf`, unchanged: php-fpm expands its
//! `${HANDOFF_*}` environment variables itself) inside a `[global]` section written here.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use nix::sys::signal::Signal;

use crate::{
    find_program, free_local_addr, repo_root, user_name, wait_listening, Listen, Place, Proc,
};

/// How to start php-fpm.
#[derive(Clone, Debug)]
pub struct Fpm {
    /// The extension to load (`-d extension=`); an empty path loads none (the framework
    /// packages' in-process path).
    pub extension: PathBuf,
    /// Where `send_file()` finds handoff-manager (`HANDOFF_SOCKET`).
    pub manager_socket: PathBuf,
    /// Workers (pm = static).
    pub children: u32,
    /// Listen on 127.0.0.1 (a free port) instead of `DIR/php-fpm.sock`.
    pub tcp: bool,
    /// The group of php-fpm.sock (0660): the web server's. `None`: this process's group
    /// (nginx, lighttpd and Caddy run as this user).
    pub listen_group: Option<String>,
    /// Extra `-d key=value` PHP settings.
    pub ini: Vec<(String, String)>,
    /// Lines for the `[handoff]` pool, added in a section reopened after the shared file
    /// (the benchmark's access log).
    pub pool_lines: Vec<String>,
    /// Extra environment for the workers (the pool keeps it: `clear_env = no`).
    pub env: Vec<(String, OsString)>,
}

/// A started php-fpm.
pub struct StartedFpm {
    pub proc: Proc,
    /// Where it listens.
    pub listen: Listen,
    /// Its error log (`error_log`, where a crashed worker shows), beside its output.
    pub log: PathBuf,
}

impl StartedFpm {
    /// The address for nginx's `fastcgi_pass`.
    pub fn fastcgi_pass(&self) -> String {
        self.listen.nginx()
    }
}

impl Fpm {
    pub fn new(extension: PathBuf, manager_socket: PathBuf) -> Fpm {
        Fpm {
            extension,
            manager_socket,
            children: 2,
            tcp: false,
            listen_group: None,
            ini: Vec::new(),
            pool_lines: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Writes `DIR/php-fpm.conf`, starts php-fpm in the foreground (`-F`; `-R`: a local
    /// stack started as root runs its workers as root) and waits until it accepts.
    pub fn start(&self, place: &Place) -> StartedFpm {
        let listen = if self.tcp {
            // A port the kernel just handed out and nobody holds (php-fpm binds it at once).
            Listen::Tcp(free_local_addr())
        } else {
            Listen::Unix(place.dir.join("php-fpm.sock"))
        };
        let fpm_log = place.log("php-fpm.log");
        let mut global = format!(
            "[global]\npid = {}\nerror_log = {}\ndaemonize = no\ninclude = {}\n",
            place.dir.join("php-fpm.pid").display(),
            fpm_log.display(),
            repo_root().join("deploy/php-fpm-pool.conf").display()
        );
        if !self.pool_lines.is_empty() {
            global.push_str("\n[handoff]\n");
            for line in &self.pool_lines {
                let _ = writeln!(global, "{line}");
            }
        }
        let conf = place.dir.join("php-fpm.conf");
        fs::write(&conf, global).expect("write php-fpm.conf");
        let mut cmd = place.command(find_program(&[
            "php-fpm8.2",
            "php-fpm8.4",
            "php-fpm8.5",
            "php-fpm8.6",
            "php-fpm",
        ]));
        cmd.args(["-F", "-R", "-y"]).arg(&conf);
        if !self.extension.as_os_str().is_empty() {
            cmd.arg("-d")
                .arg(format!("extension={}", self.extension.display()));
        }
        for (k, v) in &self.ini {
            cmd.arg("-d").arg(format!("{k}={v}"));
        }
        let listen_group = self
            .listen_group
            .clone()
            .unwrap_or_else(|| nix::unistd::getgid().as_raw().to_string());
        let address = match &listen {
            Listen::Unix(path) => path.display().to_string(),
            Listen::Tcp(addr) => addr.to_string(),
        };
        cmd.env("HANDOFF_FPM_LISTEN", address)
            .env("HANDOFF_FPM_USER", user_name())
            .env(
                "HANDOFF_FPM_LISTEN_OWNER",
                nix::unistd::getuid().as_raw().to_string(),
            )
            .env("HANDOFF_FPM_LISTEN_GROUP", listen_group)
            .env("HANDOFF_FPM_CHILDREN", self.children.to_string())
            .env("HANDOFF_SOCKET", &self.manager_socket);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("php-fpm", cmd, place.log("php-fpm.out"), Signal::SIGTERM);
        wait_listening(&mut proc, std::slice::from_ref(&listen), &[&fpm_log]);
        StartedFpm {
            proc,
            listen,
            log: fpm_log,
        }
    }
}
