//! One child process of a stack or a test: output in a log file, stopped in `Drop`.

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::read_lossy;

/// One child process: stdout and stderr go to `log`; stopped (signal, then SIGKILL) in Drop.
pub struct Proc {
    pub name: String,
    pub cmdline: String,
    pub log: PathBuf,
    child: std::process::Child,
    stop_signal: Signal,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, stop_signal: Signal) -> Proc {
        let cmdline = describe(&cmd);
        // Appended to: a restarted daemon (the benchmark's manager, a demo run again in the
        // same directory) keeps the earlier runs' lines.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = out.try_clone().expect("dup log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {cmdline}: {e}"));
        Proc {
            name: name.to_string(),
            cmdline,
            log,
            child,
            stop_signal,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the exit status if the process is gone.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited early: {status}", self.name)),
            Err(e) => Err(format!("{}: wait: {e}", self.name)),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Waits for the process to exit by itself, at most `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, and waits until it is gone (reaped).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // nginx and php-fpm masters take their workers down on SIGTERM; a SIGKILL would
        // leave those orphaned.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, self.stop_signal);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command line as it could be typed, environment first.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    let _ = write!(s, "{}", cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}
