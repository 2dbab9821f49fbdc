//! Sampling `/proc`: peak resident memory and CPU time of process groups, machine-wide CPU
//! time, and the peak size of a directory tree (nginx's temp files).
//!
//! A group is a root pid and all its descendants at each sample (nginx master + workers,
//! php-fpm master + children). RSS is the sum of the members' `VmRSS`, so pages shared
//! between members (php-fpm's opcache) count once per member. CPU time is user + system
//! ticks (`USER_HZ` = 100 on Linux), summed over members, from the first sample to the last.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const USER_HZ: f64 = 100.0;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct GroupStats {
    pub rss_first: u64,
    pub rss_peak: u64,
    pub cpu_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub groups: BTreeMap<String, GroupStats>,
    pub machine_cpu_s: f64,
    pub dir_peak_bytes: u64,
}

struct Proc {
    ppid: u32,
    ticks: u64,
}

fn read_procs() -> HashMap<u32, Proc> {
    let mut procs = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return procs;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] = state, f[1] = ppid, f[11] = utime, f[12] = stime.
        if f.len() < 13 {
            continue;
        }
        let num = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        procs.insert(
            pid,
            Proc {
                ppid: num(1) as u32,
                ticks: num(11) + num(12),
            },
        );
    }
    procs
}

fn members(root: u32, procs: &HashMap<u32, Proc>) -> Vec<u32> {
    let mut out = vec![];
    if !procs.contains_key(&root) {
        return out;
    }
    out.push(root);
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|(_, p)| p.ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out
}

fn rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * PAGE
}

fn machine_busy_ticks() -> u64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    // cpu user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait.
    line.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum()
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(dir) = fs::read_dir(path) else {
        return 0;
    };
    dir.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of the files that `pid` holds open whose path lies under `dir` (deleted or not).
fn open_bytes_under(pid: u32, dir: &Path) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        // stat() through /proc/PID/fd/N reaches the inode even after an unlink.
        .map(|fd| fs::metadata(fd.path()).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Samples every `every` until `stop` is set.
pub fn sample(
    groups: &[(String, u32)],
    dir: Option<PathBuf>,
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> Report {
    let mut report = Report::default();
    // Per group: ticks of each member at its first and its latest sample.
    let mut first: Vec<HashMap<u32, u64>> = vec![HashMap::new(); groups.len()];
    let mut last: Vec<HashMap<u32, u64>> = vec![HashMap::new(); groups.len()];
    let busy_start = machine_busy_ticks();
    let mut sampled_once = false;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let procs = read_procs();
        for (g, (name, root)) in groups.iter().enumerate() {
            let pids = members(*root, &procs);
            let total: u64 = pids.iter().map(|&p| rss(p)).sum();
            let stats = report.groups.entry(name.clone()).or_default();
            if !sampled_once {
                stats.rss_first = total;
            }
            stats.rss_peak = stats.rss_peak.max(total);
            for pid in pids {
                let ticks = procs[&pid].ticks;
                first[g]
                    .entry(pid)
                    .or_insert(if sampled_once { 0 } else { ticks });
                last[g].insert(pid, ticks);
            }
        }
        if let Some(d) = &dir {
            // nginx unlinks its temp files right after creating them: count the files
            // still in the tree plus those the group members hold open under it.
            let held: u64 = groups
                .iter()
                .flat_map(|(_, root)| members(*root, &procs))
                .map(|pid| open_bytes_under(pid, d))
                .sum();
            report.dir_peak_bytes = report.dir_peak_bytes.max(dir_bytes(d) + held);
        }
        sampled_once = true;
        if stopping {
            break;
        }
        std::thread::sleep(every);
    }
    for (g, (name, _)) in groups.iter().enumerate() {
        let ticks: u64 = last[g]
            .iter()
            .map(|(pid, t)| t.saturating_sub(first[g][pid]))
            .sum();
        if let Some(stats) = report.groups.get_mut(name) {
            stats.cpu_s = ticks as f64 / USER_HZ;
        }
    }
    report.machine_cpu_s = machine_busy_ticks().saturating_sub(busy_start) as f64 / USER_HZ;
    report
}
