//! `handoff-manager`: parses the command line into a [`Config`], starts the daemon
//! (`handoff_manager::startup`) and runs its handshake loop until it stops.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use handoff_manager::config::Config;
use handoff_manager::downloads::download_loop::Schedule;
use handoff_manager::reporting::completion::{self, Endpoint};
use handoff_manager::startup;

/// Streams the files that PHP's send_file() hands over, so that PHP workers are free at once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket the PHP extension connects to (php.ini `handoff.socket`).
    #[arg(long, default_value = "/run/handoff/manager.sock")]
    socket: PathBuf,
    /// Permissions of the socket, in octal: who may hand off downloads.
    #[arg(long, default_value = "0660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Seconds a client may accept no byte before its download is dropped. Only a
    /// connection that refuses bytes counts: waiting for a rate (send_file()'s `rate`, a
    /// rate group, --max-rate, relay pacing) never does, and none of those waits lasts
    /// for ever.
    #[arg(long, default_value_t = 60)]
    send_timeout: u64,
    /// Seconds a finished download waits for the peer to close before closing anyway.
    #[arg(long, default_value_t = 5)]
    linger_timeout: u64,
    /// Seconds a PHP worker may take between connecting and saying go (keep it above
    /// handoff.timeout_ms; a go sent in time is never lost either way).
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds running downloads may continue after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Group (name or id) that owns the socket, e.g. the PHP workers' group.
    #[arg(long)]
    socket_group: Option<String>,
    /// User (name or id) to run as after creating the socket, when started as root.
    #[arg(long)]
    user: Option<String>,
    /// Accept handoffs only from this peer uid (name or id; repeatable). With neither
    /// --allow-uid nor --allow-gid, the socket's permissions decide.
    #[arg(long = "allow-uid", value_parser = parse_uid)]
    allow_uids: Vec<u32>,
    /// Accept handoffs only from peers with this primary gid (name or id; repeatable).
    #[arg(long = "allow-gid", value_parser = parse_gid)]
    allow_gids: Vec<u32>,
    /// Keep filesystem access after start-up (by default Landlock removes it where the
    /// kernel supports it).
    #[arg(long)]
    no_sandbox: bool,
    /// Most downloads running or waiting for their go (0 = no limit). Beyond it a one-way
    /// handoff waits (--max-waiting, --wait-timeout), and a confirmed one
    /// (handoff.confirm) is refused and served by PHP itself, or throws, per
    /// handoff.fallback.
    #[arg(long, default_value_t = 0)]
    max_downloads: usize,
    /// Most handshakes held at once (each may hold a 64 KiB job for up to
    /// --handshake-timeout); more connections are refused at once. Connections idle
    /// between handoffs do not count.
    #[arg(long, default_value_t = 1024)]
    max_handshakes: usize,
    /// Most worker connections kept open idle between handoffs (each PHP process keeps
    /// one); past it the connection idle longest is closed, without losing a handoff
    /// queued on it, and its worker reconnects on its next handoff.
    #[arg(long, default_value_t = 1024)]
    max_idle_connections: usize,
    /// One-way handoffs that may wait for a place while --max-downloads downloads run
    /// (smallest first); past it the client gets 503 with Retry-After, written by the
    /// manager.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
    /// Seconds a one-way handoff may wait for a place before its client gets 503.
    #[arg(long, default_value_t = 10)]
    wait_timeout: u64,
    /// Write one JSON line per finished download to this file (`-` = stderr).
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Download loops (threads); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Serve /metrics (Prometheus) and /status (JSON) on this local address, e.g.
    /// 127.0.0.1:9901.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Upgrade without cutting downloads: take the socket path over from the manager
    /// running there, which stops taking handoffs and finishes its downloads.
    #[arg(long)]
    takeover: bool,
    /// Global bandwidth cap in bytes per second (0 = none), split evenly between the
    /// download loops; every write asks it first, so over any window of T seconds at most
    /// rate x (T + 1/20 s) plus one FastCGI record leaves. Per-download limits come from
    /// send_file()'s `rate` option.
    #[arg(long, default_value_t = 0)]
    max_rate: u64,
    /// Who gets the bandwidth first under --max-rate: `srpt` (shortest remaining first,
    /// with a 1 s starvation bound) or `fair` (round robin). Either way every other turn
    /// goes round robin, so a running download keeps a fair part of the cap however many
    /// new downloads arrive.
    #[arg(long, default_value = "srpt", value_parser = parse_schedule)]
    schedule: Schedule,
    /// Relay pacing behind a web server (FastCGI): after its first window
    /// (--relay-start-bytes) a relayed download gets bytes as fast as its connection drains,
    /// and all of them together at most 1.5 x what the web server relayed in the last
    /// 25 ms, measured from how fast the manager's sockets drain; this is the floor of that
    /// budget in bytes per second (what a quiet site starts with), split evenly over the
    /// download loops (0 = pacing off, the default: it doubles the manager's CPU and helped
    /// only with several nginx workers, docs/configuration.md; 67108864 switches it on).
    #[arg(long, default_value_t = 0)]
    relay_start_rate: u64,
    /// The first window of a relayed download, written at once (it carries the head);
    /// downloads no longer than this are never paced (0 = pacing off).
    #[arg(long, default_value_t = 64 << 10)]
    relay_start_bytes: u64,
    /// POST one JSON completion record per finished download to this http:// URL on a
    /// loopback address (the application's own endpoint), e.g.
    /// http://127.0.0.1/handoff-done.php, or over a Unix socket that speaks HTTP, e.g.
    /// 'unix:/run/app/http.sock|/handoff-done.php' (the request path defaults to /).
    #[arg(long, value_parser = parse_endpoint)]
    on_complete: Option<Endpoint>,
    /// Sign every completion record with HMAC-SHA256 under the key in this file (at least
    /// 16 bytes; a final newline is ignored): headers Handoff-Timestamp and
    /// Handoff-Signature (php/src/CompletionRecord.php verifies them).
    #[arg(long, requires = "on_complete")]
    on_complete_secret: Option<PathBuf>,
    /// Completion records that may wait for delivery; more are dropped (and counted).
    #[arg(long, default_value_t = 10_000)]
    on_complete_queue: usize,
    /// How long range requests of one tag and file are joined into one download, e.g.
    /// 24h, 90m, 3600s (a plain number is seconds).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    join_window: Duration,
    /// Most (tag, file) unions kept for joining; the oldest is evicted first. Each takes at
    /// most about 1 KiB.
    #[arg(long, default_value_t = 65_536)]
    join_entries: usize,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// `90`, `90s`, `15m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?}: expected a number with s, m, h or d"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s).map_err(|e| e.to_string())
}

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    match s {
        "srpt" => Ok(Schedule::Srpt),
        "fair" => Ok(Schedule::Fair),
        other => Err(format!("{other:?}: expected srpt or fair")),
    }
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Print the running downloads of a manager started with --metrics.
    Status {
        /// The manager's --metrics address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        metrics: SocketAddr,
    },
    /// Exit 0 if the manager started with --metrics takes handoffs (`GET /healthz` answers
    /// 200), 1 otherwise: a probe for Kubernetes and Docker health checks.
    Health {
        /// The manager's --metrics address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        metrics: SocketAddr,
    },
}

fn parse_uid(s: &str) -> Result<u32, String> {
    if let Ok(uid) = s.parse() {
        return Ok(uid);
    }
    handoff_manager::sandbox::lookup_user(s)
        .map(|u| u.uid.as_raw())
        .map_err(|e| e.to_string())
}

fn parse_gid(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse() {
        return Ok(gid);
    }
    handoff_manager::sandbox::lookup_group(s)
        .map(|g| g.gid.as_raw())
        .map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0660"))
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match args.command {
        Some(Cmd::Status { metrics }) => {
            return handoff_manager::reporting::metrics::print_status(
                metrics,
                &mut std::io::stdout(),
            )
            .with_context(|| format!("reading status from {metrics}"));
        }
        Some(Cmd::Health { metrics }) => {
            let (healthy, answer) = handoff_manager::reporting::metrics::health(metrics)
                .with_context(|| format!("asking {metrics} for /healthz"))?;
            print!("{answer}");
            std::process::exit(if healthy { 0 } else { 1 });
        }
        None => {}
    }
    let secret = match &args.on_complete_secret {
        Some(path) => Some(completion::Secret::read(path).context("--on-complete-secret")?),
        None => None,
    };
    let config = Config {
        socket: args.socket,
        socket_mode: args.socket_mode,
        send_timeout: Duration::from_secs(args.send_timeout),
        linger_timeout: Duration::from_secs(args.linger_timeout),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        grace: Duration::from_secs(args.grace),
        socket_group: args.socket_group,
        user: args.user,
        allow_uids: args.allow_uids,
        allow_gids: args.allow_gids,
        sandbox: !args.no_sandbox,
        max_downloads: args.max_downloads,
        max_handshakes: args.max_handshakes.max(1),
        max_idle: args.max_idle_connections.max(1),
        max_waiting: args.max_waiting,
        wait_timeout: Duration::from_secs(args.wait_timeout),
        access_log: args.access_log,
        threads: args.threads,
        metrics: args.metrics,
        takeover: args.takeover,
        max_rate: args.max_rate,
        relay_start_rate: args.relay_start_rate,
        relay_start_bytes: args.relay_start_bytes,
        schedule: args.schedule,
        on_complete: args.on_complete.map(|endpoint| completion::Settings {
            endpoint,
            secret,
            queue: args.on_complete_queue,
            join_window: args.join_window,
            join_entries: args.join_entries,
        }),
    };
    let mut server = startup::start(config).context("starting handoff-manager")?;
    server.run().context("running handoff-manager")?;
    Ok(())
}
