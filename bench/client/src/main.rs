//! `handoff-bench`: parses the command line, runs the engines, the probe and the `/proc`
//! sampler from the library side by side, and prints one JSON report on stdout.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use handoff_bench::engine::{self, Outcome};
use handoff_bench::stats::{median_u64, percentile, sorted};
use handoff_bench::tls::Tls;
use handoff_bench::{probe, procstat};
use serde_json::json;

/// Load client for bench/run.sh. Every run is bounded by --duration (and --max-requests).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// Path of the download (or of the small file) to request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Concurrent connections (0 = probe only).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Read at most this many bytes per second per connection (slow readers; each
    /// connection then makes one download). Without it, connections read as fast as they
    /// can and send the next request when one ends.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds the run lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds over which connections are opened.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Stop after this many completed requests in total (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
    /// Bytes per read() call.
    #[arg(long, default_value_t = 256 * 1024)]
    read_buf: usize,
    /// SO_RCVBUF of each connection, set before connecting (default: the kernel's).
    #[arg(long)]
    rcvbuf: Option<usize>,
    /// Send `Connection: close` (a new connection per request).
    #[arg(long)]
    close: bool,
    /// Slow readers: milliseconds between two reads of a connection (each read takes what
    /// the rate allowed since the last one).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Engine threads; connections are split between them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Speak HTTPS (TLS 1.3 only) on the load connections, verifying the server against the
    /// CA certificate(s) in this PEM file. The probe stays plain HTTP.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: --addr's IP address).
    #[arg(long, requires = "tls_ca")]
    tls_name: Option<String>,
    /// Probe: path of a tiny page requested every --probe-interval-ms.
    #[arg(long)]
    probe_path: Option<String>,
    /// Probe address (default: --addr).
    #[arg(long)]
    probe_addr: Option<SocketAddr>,
    #[arg(long, default_value_t = 100)]
    probe_interval_ms: u64,
    /// A probe slower than this counts as failed.
    #[arg(long, default_value_t = 1000)]
    probe_timeout_ms: u64,
    /// Write the probe samples here as CSV (t_s,latency_ms; empty latency = failed).
    #[arg(long)]
    probe_csv: Option<PathBuf>,
    /// Process group to sample, NAME=PID (the pid and its descendants); repeatable.
    #[arg(long = "group", value_parser = parse_group)]
    groups: Vec<(String, u32)>,
    /// Directory whose peak total size is reported (nginx's fastcgi_temp_path).
    #[arg(long)]
    watch_dir: Option<PathBuf>,
    /// Labels copied into the report, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_group(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_string(), pid.parse().map_err(|_| "bad pid")?))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for addr in [Some(args.addr), args.probe_addr].into_iter().flatten() {
        if !addr.ip().is_loopback() {
            bail!("{addr}: handoff-bench only talks to loopback addresses");
        }
    }
    if !(0.0..=3600.0).contains(&args.duration) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    let duration = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let deadline = start + duration;
    let stop = Arc::new(AtomicBool::new(false));

    let sampler = {
        let (groups, dir, stop) = (args.groups.clone(), args.watch_dir.clone(), stop.clone());
        std::thread::spawn(move || {
            procstat::sample(&groups, dir, Duration::from_millis(250), &stop)
        })
    };
    let prober = args.probe_path.clone().map(|path| {
        let addr = args.probe_addr.unwrap_or(args.addr);
        let interval = Duration::from_millis(args.probe_interval_ms);
        let timeout = Duration::from_millis(args.probe_timeout_ms);
        let stop = stop.clone();
        std::thread::spawn(move || probe::run(addr, &path, interval, timeout, deadline, &stop))
    });

    let tls = match &args.tls_ca {
        Some(ca) => {
            let name = args
                .tls_name
                .clone()
                .unwrap_or_else(|| args.addr.ip().to_string());
            Some(Tls::new(ca, &name).context("TLS client configuration")?)
        }
        None => None,
    };

    let threads = args.threads.clamp(1, 64);
    let mut engines = Vec::new();
    if args.conns > 0 {
        for t in 0..threads {
            let conns = args.conns / threads + usize::from(t < args.conns % threads);
            let max_requests = if args.max_requests == 0 {
                0
            } else {
                (args.max_requests / threads as u64).max(1)
            };
            let cfg = engine::Config {
                addr: args.addr,
                path: args.path.clone(),
                conns,
                rate: args.rate,
                repeat: args.rate.is_none(),
                duration,
                ramp: Duration::from_secs_f64(args.ramp),
                max_requests,
                read_buf: args.read_buf,
                rcvbuf: args.rcvbuf,
                close: args.close,
                tick: Duration::from_millis(args.tick_ms.clamp(1, 1000)),
                tls: tls.clone(),
            };
            engines.push(std::thread::spawn(move || engine::run(&cfg)));
        }
    }
    let mut total = Outcome::default();
    for e in engines {
        let o = e
            .join()
            .expect("engine thread panicked")
            .context("engine")?;
        merge(&mut total, o);
    }
    let probes = match prober {
        Some(p) => {
            // The probe runs for the whole duration, also when the engines stopped early.
            p.join().expect("probe thread panicked")
        }
        None => Vec::new(),
    };
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let proc_report = sampler.join().expect("sampler thread panicked");
    let client = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let client_cpu = client.user_time().tv_sec() as f64
        + client.user_time().tv_usec() as f64 / 1e6
        + client.system_time().tv_sec() as f64
        + client.system_time().tv_usec() as f64 / 1e6;

    if let Some(path) = &args.probe_csv {
        let mut csv = String::from("t_s,latency_ms\n");
        for s in &probes {
            let lat = s.latency_ms.map(|l| format!("{l:.3}")).unwrap_or_default();
            csv.push_str(&format!("{:.3},{lat}\n", s.at_s));
        }
        std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?;
    }

    let secs = total.elapsed.as_secs_f64().max(1e-9);
    let lat = sorted(std::mem::take(&mut total.latencies_ms));
    let heads = sorted(std::mem::take(&mut total.head_waits_ms));
    // Waits for a response head over 100 ms, counting connections
    // still waiting at the end that had waited that long.
    let heads_over_100ms =
        heads.iter().filter(|&&ms| ms > 100.0).count() as u64 + total.heads_waiting_over_100ms;
    // Failed probes sort last (as +inf): a p99 that lands on one is reported as null.
    let probe_failed = probes.iter().filter(|s| s.latency_ms.is_none()).count();
    let probe_lat = sorted(
        probes
            .iter()
            .map(|s| s.latency_ms.unwrap_or(f64::INFINITY))
            .collect(),
    );
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let groups: serde_json::Map<String, serde_json::Value> = proc_report
        .groups
        .iter()
        .map(|(name, g)| {
            (
                name.clone(),
                json!({"rss_first": g.rss_first, "rss_peak": g.rss_peak, "cpu_s": g.cpu_s}),
            )
        })
        .collect();
    let labels: serde_json::Map<String, serde_json::Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let report = json!({
        "labels": labels,
        "conns": args.conns,
        "rate": args.rate,
        "path": args.path,
        "elapsed_s": elapsed.as_secs_f64(),
        "engine_s": secs,
        "opened": total.opened,
        "requests": total.requests,
        "bytes": total.bytes,
        "gb_per_s": total.bytes as f64 / secs / 1e9,
        "req_per_s": total.requests as f64 / secs,
        "lat_p50_ms": percentile(&lat, 50.0),
        "lat_p99_ms": percentile(&lat, 99.0),
        "lat_max_ms": lat.last(),
        "head_n": heads.len(),
        "head_p50_ms": percentile(&heads, 50.0),
        "head_p99_ms": percentile(&heads, 99.0),
        "head_max_ms": heads.last(),
        "heads_waiting": total.heads_waiting,
        "heads_waiting_max_ms": total.heads_waiting_max_ms,
        "heads_over_100ms": heads_over_100ms,
        "failed": total.failed,
        "errors": total.errors,
        "alive": total.alive,
        "starved": total.starved,
        "progressing_median": median_u64(&total.progressing),
        "progressing_min": total.progressing.iter().min(),
        "probe_n": probes.len(),
        "probe_failed": probe_failed,
        "probe_p50_ms": finite(percentile(&probe_lat, 50.0)),
        "probe_p99_ms": finite(percentile(&probe_lat, 99.0)),
        "groups": groups,
        "machine_cpu_s": proc_report.machine_cpu_s,
        "client_cpu_s": client_cpu,
        "dir_peak_bytes": proc_report.dir_peak_bytes,
        "tls": total.tls,
    });
    println!("{report}");
    Ok(())
}

fn merge(total: &mut Outcome, o: Outcome) {
    total.opened += o.opened;
    total.requests += o.requests;
    total.bytes += o.bytes;
    total.latencies_ms.extend(o.latencies_ms);
    total.head_waits_ms.extend(o.head_waits_ms);
    total.heads_waiting += o.heads_waiting;
    total.heads_waiting_over_100ms += o.heads_waiting_over_100ms;
    total.heads_waiting_max_ms = total.heads_waiting_max_ms.max(o.heads_waiting_max_ms);
    total.failed += o.failed;
    for (k, v) in o.errors {
        *total.errors.entry(k).or_default() += v;
    }
    total.starved += o.starved;
    total.alive += o.alive;
    for (i, n) in o.progressing.into_iter().enumerate() {
        if i < total.progressing.len() {
            total.progressing[i] += n;
        } else {
            total.progressing.push(n);
        }
    }
    total.elapsed = total.elapsed.max(o.elapsed);
    if total.tls.is_none() {
        total.tls = o.tls;
    }
}
