//! `handoff-stack`: starts handoff-manager, php-fpm and nginx the way the integration tests
//! do (this crate's library), for scripts/demo.sh and bench/run.sh, and stays in the
//! foreground. When everything accepts connections it writes `DIR/stack.env` (`manager`:
//! `DIR/manager.env`), shell lines with the pids, sockets, URL and logs, and prints them.
//! SIGINT, SIGTERM or SIGHUP stops the children in reverse start order (SIGTERM each: the
//! manager lets downloads finish for its `--grace`) and exits 128 + the signal; if a child
//! dies on its own, the others are stopped and it exits 1.
//!
//!   handoff-stack up --dir DIR [--port N] [--docroot DIR] [--fpm-children 4]
//!                    [--tls-port N --tls-cert PEM --tls-key PEM]
//!                    [--relay-socket SOCK --relay-root DIR] [-- MANAGER ARGS]
//!   handoff-stack manager --dir DIR [-- MANAGER ARGS]      (the manager alone)
//!   handoff-stack down --dir DIR                           (stops what runs from DIR)

#![deny(unsafe_code)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use handoff_stack::fpm::Fpm;
use handoff_stack::nginx::{Nginx, Site, Tls};
use handoff_stack::{
    extension, manager_binary, repo_root, spawn_manager, start_manager, tail, Listen, Place, Proc,
};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    name = "handoff-stack",
    about = "Start handoff-manager, php-fpm and nginx in the foreground"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// handoff-manager, php-fpm with deploy/php-fpm-pool.conf, nginx with
    /// deploy/nginx-site.conf.template.
    Up(Box<Up>),
    /// handoff-manager alone (bench/run.sh restarts it with other flags).
    Manager(Common),
    /// Stops the starters running from DIR (SIGTERM) and waits until they are gone.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// Runtime directory: sockets (manager.sock, php-fpm.sock), configs, pid files.
    #[arg(long)]
    dir: PathBuf,
    /// Where the logs go (default: DIR).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// The handoff-manager binary (default: $HANDOFF_MANAGER or target/release).
    #[arg(long)]
    manager_bin: Option<PathBuf>,
    /// RUST_LOG of the manager (default: $RUST_LOG, else info).
    #[arg(long)]
    manager_log_level: Option<String>,
    /// Arguments for handoff-manager after `--` (`--socket DIR/manager.sock` is given).
    #[arg(last = true)]
    manager_args: Vec<String>,
}

#[derive(Args)]
struct Up {
    #[command(flatten)]
    common: Common,
    /// Do not start a manager (one is started apart, with `manager`).
    #[arg(long)]
    no_manager: bool,
    /// nginx's port on 127.0.0.1 (default: a Unix socket, DIR/nginx.sock).
    #[arg(long)]
    port: Option<u16>,
    /// The PHP document root (default: php/demo).
    #[arg(long)]
    docroot: Option<PathBuf>,
    /// The extension (default: $HANDOFF_EXT or target/release/libhandoff.so).
    #[arg(long)]
    extension: Option<PathBuf>,
    /// php-fpm workers (pm = static).
    #[arg(long, default_value_t = 4)]
    fpm_children: u32,
    /// A line for the php-fpm pool, in a [handoff] section reopened after the shared file.
    #[arg(long = "fpm-pool-line")]
    fpm_pool_lines: Vec<String>,
    /// nginx's worker_processes.
    #[arg(long, default_value = "1")]
    nginx_workers: String,
    /// nginx's worker_connections.
    #[arg(long, default_value_t = 1024)]
    nginx_connections: u32,
    /// nginx's worker_rlimit_nofile.
    #[arg(long)]
    nginx_rlimit_nofile: Option<u64>,
    /// The level of nginx's error_log.
    #[arg(long, default_value = "info")]
    nginx_error_level: String,
    /// No nginx access log.
    #[arg(long)]
    nginx_no_access_log: bool,
    /// A line in nginx's http block.
    #[arg(long = "nginx-http-line")]
    nginx_http_lines: Vec<String>,
    /// A line in the site's server block (e.g. an include of more locations).
    #[arg(long = "nginx-server-line")]
    nginx_server_lines: Vec<String>,
    /// Also serve the site on this port with nginx's default fastcgi buffers (4 KiB), not
    /// the site's 128k.
    #[arg(long)]
    default_buffers_port: Option<u16>,
    /// Also serve the site over HTTPS on this port (with the same server lines), with
    /// --tls-cert and --tls-key.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_port: Option<u16>,
    /// The HTTPS server's certificate chain (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The HTTPS server's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The HTTPS server's ssl_protocols.
    #[arg(long, default_value = "TLSv1.3")]
    tls_protocols: String,
    /// Also start a second nginx, "relay-upstream" (one worker, no PHP), serving
    /// --relay-root with sendfile on this Unix socket: the upstream of the benchmark's relay
    /// limit. It takes the main nginx's connections, rlimit and error level.
    #[arg(long, requires = "relay_root")]
    relay_socket: Option<PathBuf>,
    /// The directory the relay upstream serves.
    #[arg(long)]
    relay_root: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    if let Command::Down { dir } = &cli.command {
        std::process::exit(down(dir));
    }
    // Blocked before any child starts, and taken with sigwait below: the children get an
    // empty mask (std resets it in the child).
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("handoff-stack: block signals: {e}");
        std::process::exit(1);
    }
    let (procs, env_file, env) = match cli.command {
        Command::Up(up) => up_stack(&up),
        Command::Down { .. } => unreachable!("handled above"),
        Command::Manager(common) => {
            let place = place(&common);
            let (proc, env) = manager(&place, &common);
            (vec![proc], place.dir.join("manager.env"), env)
        }
    };
    // The starter's own pid, for `down`.
    let env = format!("STACK_PID={}\n{env}", std::process::id());
    let tmp = env_file.with_extension("env.tmp");
    if let Err(e) = fs::write(&tmp, &env).and_then(|()| fs::rename(&tmp, &env_file)) {
        eprintln!("handoff-stack: write {}: {e}", env_file.display());
        std::process::exit(1);
    }
    print!("{env}");
    let status = serve(procs, &signals);
    let _ = fs::remove_file(&env_file);
    std::process::exit(status);
}

fn place(common: &Common) -> Place {
    let logs = common.logs.clone().unwrap_or_else(|| common.dir.clone());
    for dir in [&common.dir, &logs] {
        if let Err(e) = fs::create_dir_all(dir) {
            eprintln!("handoff-stack: create {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    // Absolute: nginx and php-fpm resolve relative paths against their own prefixes.
    let absolute = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    Place {
        dir: absolute(&common.dir),
        logs: absolute(&logs),
        own_process_group: true,
    }
}

fn progress(what: &str) {
    eprintln!("==> {what}");
}

/// Starts the manager on DIR/manager.sock and waits for it.
fn manager(place: &Place, common: &Common) -> (Proc, String) {
    let socket = place.dir.join("manager.sock");
    let _ = fs::remove_file(&socket);
    let binary = common.manager_bin.clone().unwrap_or_else(manager_binary);
    let level = common
        .manager_log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let args: Vec<&str> = common.manager_args.iter().map(String::as_str).collect();
    progress(&format!("starting handoff-manager on {}", socket.display()));
    let log = place.log("manager.log");
    let proc = spawn_manager(
        place,
        &binary,
        &socket,
        &log,
        &args,
        &level,
        Signal::SIGTERM,
    );
    let proc = start_manager(proc, &socket);
    let env = format!(
        "STACK_MANAGER_PID={}\nSTACK_MANAGER_SOCKET={}\nSTACK_MANAGER_LOG={}\n",
        proc.pid(),
        socket.display(),
        log.display()
    );
    (proc, env)
}

fn up_stack(up: &Up) -> (Vec<Proc>, PathBuf, String) {
    let place = place(&up.common);
    let mut procs = Vec::new();
    let mut env = String::new();
    if !up.no_manager {
        let (proc, e) = manager(&place, &up.common);
        procs.push(proc);
        env.push_str(&e);
    }
    let mut fpm = Fpm::new(
        up.extension.clone().unwrap_or_else(extension),
        place.dir.join("manager.sock"),
    );
    fpm.children = up.fpm_children;
    fpm.pool_lines = up.fpm_pool_lines.clone();
    let _ = fs::remove_file(place.dir.join("php-fpm.sock"));
    progress(&format!(
        "starting php-fpm ({} workers) on {}",
        fpm.children,
        place.dir.join("php-fpm.sock").display()
    ));
    let fpm = fpm.start(&place);

    let docroot = up
        .docroot
        .clone()
        .unwrap_or_else(|| repo_root().join("php/demo"));
    let tcp = |port: u16| Listen::Tcp(([127, 0, 0, 1], port).into());
    let listen = match up.port {
        Some(port) => tcp(port),
        None => Listen::Unix(place.dir.join("nginx.sock")),
    };
    let mut site = Site::new(listen.clone(), docroot.clone(), fpm.fastcgi_pass());
    site.server_lines = up.nginx_server_lines.clone();
    let mut sites = vec![site.clone()];
    if let (Some(port), Some(cert), Some(key)) = (up.tls_port, &up.tls_cert, &up.tls_key) {
        let mut https = site;
        https.listen = tcp(port);
        https.tls = Some(Tls {
            cert: cert.clone(),
            key: key.clone(),
            protocols: up.tls_protocols.clone(),
        });
        sites.push(https);
    }
    if let Some(port) = up.default_buffers_port {
        let mut plain = Site::new(tcp(port), docroot, fpm.fastcgi_pass());
        plain.default_buffers = true;
        sites.push(plain);
    }
    let mut nginx = Nginx::new(sites);
    nginx.worker_processes = up.nginx_workers.clone();
    nginx.worker_connections = up.nginx_connections;
    nginx.worker_rlimit_nofile = up.nginx_rlimit_nofile;
    nginx.error_log_level = up.nginx_error_level.clone();
    nginx.access_log = !up.nginx_no_access_log;
    nginx.http_lines = up.nginx_http_lines.clone();
    let relay = match (&up.relay_socket, &up.relay_root) {
        (Some(socket), Some(root)) => {
            let _ = fs::remove_file(socket);
            let mut relay = Nginx::relay_upstream(socket, root);
            relay.worker_connections = nginx.worker_connections;
            relay.worker_rlimit_nofile = nginx.worker_rlimit_nofile;
            relay.error_log_level = nginx.error_log_level.clone();
            progress(&format!(
                "starting nginx (relay upstream) on {}",
                socket.display()
            ));
            let proc = relay.start(&place, &[Listen::Unix(socket.clone())]);
            let _ = write!(
                env,
                "STACK_RELAY_PID={}\nSTACK_RELAY_SOCKET={}\n",
                proc.pid(),
                socket.display()
            );
            Some(proc)
        }
        _ => None,
    };
    progress(&format!("starting nginx on {}", listen.nginx()));
    let nginx_proc = nginx.start(&place, &[]);

    let url = match &listen {
        Listen::Tcp(addr) => format!("http://{addr}/"),
        Listen::Unix(path) => format!("unix:{}", path.display()),
    };
    let _ = write!(
        env,
        "STACK_FPM_PID={}\nSTACK_FPM_SOCKET={}\nSTACK_FPM_LOG={}\n\
         STACK_NGINX_PID={}\nSTACK_NGINX_ERROR_LOG={}\nSTACK_URL={url}\nSTACK_LOGS={}\n",
        fpm.proc.pid(),
        fpm.fastcgi_pass().trim_start_matches("unix:"),
        fpm.log.display(),
        nginx_proc.pid(),
        Nginx::error_log(&place).display(),
        place.logs.display(),
    );
    procs.push(fpm.proc);
    procs.extend(relay);
    procs.push(nginx_proc);
    (procs, place.dir.join("stack.env"), env)
}

/// Waits for a stop signal or a dead child, then stops the rest in reverse start order.
fn serve(mut procs: Vec<Proc>, signals: &SigSet) -> i32 {
    let status = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                let mut dead = None;
                for p in &mut procs {
                    if let Err(e) = p.check_alive() {
                        eprintln!(
                            "handoff-stack: {e}; stopping the others. Last lines of {}:\n{}",
                            p.log.display(),
                            tail(&p.log_text(), 20)
                        );
                        dead = Some(1);
                    }
                }
                if let Some(status) = dead {
                    break status;
                }
            }
            Ok(signal) => break 128 + signal as i32,
            Err(e) => {
                eprintln!("handoff-stack: sigwait: {e}");
                break 1;
            }
        }
    };
    let names: Vec<&str> = procs.iter().rev().map(|p| p.name.as_str()).collect();
    progress(&format!("stopping {}", names.join(", ")));
    while let Some(p) = procs.pop() {
        drop(p);
    }
    status
}

/// SIGTERM to the starters whose `stack.env` / `manager.env` are in `dir` (nginx and php-fpm
/// first, as the starters stop their children in reverse order), then waits for each to
/// exit (they remove their file), at most 30 s each.
fn down(dir: &Path) -> i32 {
    let mut status = 0;
    for name in ["stack.env", "manager.env"] {
        let file = dir.join(name);
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let pid = text
            .lines()
            .find_map(|l| l.strip_prefix("STACK_PID=")?.parse::<i32>().ok());
        let Some(pid) = pid.map(nix::unistd::Pid::from_raw) else {
            eprintln!("handoff-stack: {} names no STACK_PID", file.display());
            status = 1;
            continue;
        };
        progress(&format!("stopping the starter {pid} ({name})"));
        if nix::sys::signal::kill(pid, Signal::SIGTERM).is_err() {
            // Gone already (killed without cleaning up): its file is stale.
            let _ = fs::remove_file(&file);
            continue;
        }
        let gone = handoff_stack::wait_until(
            &format!("the starter {pid}"),
            std::time::Duration::from_secs(30),
            || nix::sys::signal::kill(pid, None).is_err(),
            || Ok(()),
        );
        if let Err(e) = gone {
            eprintln!("handoff-stack: {e}");
            status = 1;
        }
    }
    status
}
