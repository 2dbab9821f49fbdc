//! Benchmark: mean completion time under a bandwidth cap, shortest-remaining-first
//! against round robin.
//!
//! Starts `target/release/handoff-manager` with `--max-rate` and each `--schedule`, hands
//! it a batch of downloads of mixed sizes at once (over socketpairs, so that only the
//! manager's scheduling is measured), reads them all concurrently and reports the mean and
//! the largest completion time. Run with:
//!
//! ```text
//! cargo build --release && cargo run --release --example srpt [runs]
//! ```

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use handoff_core::head::Head;
use handoff_core::plan::Piece;
use handoff_core::protocol::{Framing, Job, Offer};

const CAP: u64 = 64 * 1024 * 1024;
/// 24 downloads: 8 small, 8 medium, 8 large, interleaved.
const SIZES: [u64; 3] = [256 * 1024, 4 * 1024 * 1024, 32 * 1024 * 1024];

fn one_run(manager: &Path, dir: &Path, schedule: &str) -> anyhow::Result<(f64, f64)> {
    let socket = dir.join(format!("{schedule}.sock"));
    let mut child = Command::new(manager)
        .args(["--socket", &socket.to_string_lossy(), "--threads", "1"])
        .args(["--max-rate", &CAP.to_string(), "--schedule", schedule])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("starting handoff-manager")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Offer::connect(&socket, Duration::from_secs(1)).is_err() {
        if Instant::now() > deadline {
            bail!("manager did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let file_path = dir.join("data.bin");
    let file = std::fs::File::open(&file_path)?;
    let start = Instant::now();
    let mut readers = Vec::new();
    for i in 0..24 {
        let size = SIZES[i % 3];
        let (ours, mut client) = UnixStream::pair()?;
        let job = Job {
            framing: Framing::Http,
            request_id: 0,
            keep_conn: false,
            head: Head::new(200),
            body: vec![Piece::File {
                offset: 0,
                length: size,
            }],
            rate: 0,
            client: "bench".into(),
            file_name: "data.bin".into(),
            fallbacks: Default::default(),
            tag: String::new(),
            rate_group: String::new(),
        };
        let offer = Offer::connect(&socket, Duration::from_secs(5))?;
        offer.propose(&job, ours.as_fd(), file.as_fd())?;
        drop(ours);
        offer.go()?;
        readers.push(std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink);
            start.elapsed().as_secs_f64()
        }));
    }
    let times: Vec<f64> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or(f64::NAN))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let max = times.iter().cloned().fold(0.0, f64::max);
    Ok((mean, max))
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manager = root.join("target/release/handoff-manager");
    if !manager.exists() {
        bail!("build first: cargo build --release");
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("data.bin"), vec![7u8; SIZES[2] as usize])?;
    println!(
        "24 downloads (8 × 256 KiB, 8 × 4 MiB, 8 × 32 MiB) at once under --max-rate {} MiB/s, {runs} runs\n",
        CAP >> 20
    );
    println!("| schedule | mean completion s (min / median / max) | last completion s (median) |");
    println!("|---|---|---|");
    for schedule in ["fair", "srpt"] {
        let mut means = Vec::new();
        let mut maxes = Vec::new();
        for _ in 0..runs {
            let (mean, max) = one_run(&manager, dir.path(), schedule)?;
            means.push(mean);
            maxes.push(max);
        }
        means.sort_by(f64::total_cmp);
        maxes.sort_by(f64::total_cmp);
        println!(
            "| {schedule} | {:.2} / {:.2} / {:.2} | {:.2} |",
            means[0],
            means[means.len() / 2],
            means[means.len() - 1],
            maxes[maxes.len() / 2]
        );
    }
    Ok(())
}
