//! The daemon's settings, one struct for all of them: `main` fills it from the command line,
//! start-up ([`crate::startup`]) and the handshake loop read it.

use std::path::PathBuf;
use std::time::Duration;

use crate::downloads::download_loop::Schedule;

/// Everything the loop needs to know; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// A download whose client takes no byte for this long is dropped.
    pub send_timeout: Duration,
    /// How long a finished download waits for the peer to close.
    pub linger_timeout: Duration,
    /// How long a worker may take between connecting and `Go`.
    pub handshake_timeout: Duration,
    /// How long running downloads may continue after SIGTERM / SIGINT.
    pub grace: Duration,
    /// Group to give the socket to (with `socket_mode` 0660: who may hand off).
    pub socket_group: Option<String>,
    /// Unprivileged user to become after binding (when started as root).
    pub user: Option<String>,
    /// Peers allowed by `SO_PEERCRED`, checked on every connection; both empty means any
    /// peer that the socket's permissions let in.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// Give up filesystem access with Landlock after start-up.
    pub sandbox: bool,
    /// Refuse new handoffs while this many downloads run or wait for their go (0: no
    /// limit but the fd limit).
    pub max_downloads: usize,
    /// Most handshakes held at once (connected workers that have not yet said go, or been
    /// refused); each may hold a 64 KiB job and two descriptors until `handshake_timeout`.
    pub max_handshakes: usize,
    /// Most worker connections kept idle between handoffs; past it the connection idle
    /// longest is closed (its worker reconnects on its next handoff).
    pub max_idle: usize,
    /// One-way handoffs that may wait for a place under `max_downloads`; more are answered
    /// with 503.
    pub max_waiting: usize,
    /// How long a one-way handoff may wait for a place before it is answered with 503.
    pub wait_timeout: Duration,
    /// JSON access log: a file, `-` for stderr, or none.
    pub access_log: Option<PathBuf>,
    /// Number of download loops (threads); 0 means one per CPU.
    pub threads: usize,
    /// Address for `/metrics` (Prometheus) and `/status` (JSON), e.g. 127.0.0.1:9901.
    pub metrics: Option<std::net::SocketAddr>,
    /// Take the socket path over from a running manager, which then drains.
    pub takeover: bool,
    /// Global bandwidth cap in bytes/s, shared evenly by the download loops (0: none).
    pub max_rate: u64,
    pub schedule: Schedule,
    /// Relay pacing ([`crate::downloads::pacing`]): the budget's floor and the first window.
    pub relay_start_rate: u64,
    pub relay_start_bytes: u64,
    /// Completion records POSTed to a local endpoint (`--on-complete`), if any.
    pub on_complete: Option<crate::reporting::completion::Settings>,
}
