//! The daemon's start-up, in the order it must happen: take a socket systemd passed (before
//! any other descriptor is opened), block SIGTERM/SIGINT into a signal descriptor, raise the
//! open file limit, open the access log, create the listening socket (or take the path over
//! from a running manager), give up root and filesystem access, start the download loops,
//! the completion record thread and the metrics listener, and tell systemd the manager is
//! ready. What it returns is the handshake loop ([`Server`]), ready to run.
//!
//! Everything that may need privileges or the filesystem happens here, before the sandbox;
//! nothing after start-up opens a path.

use std::io;
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::Config;
use crate::downloads::download_loop::{self, LoopConfig};
use crate::error::{io_err, ServerError};
use crate::handoffs::listener::{listen_on, tell_previous_to_drain, Bound, Listening};
use crate::handoffs::server::Server;
use crate::reporting::access_log::AccessLog;
use crate::reporting::stats::Counters;
use crate::sandbox;

/// Creates the socket (replacing a stale one), blocks SIGTERM/SIGINT into a signalfd and
/// registers both. Call from the main thread before any other thread starts.
pub fn start(config: Config) -> Result<Server, ServerError> {
    // First, before this process opens any descriptor: a socket systemd passed is
    // descriptor 3.
    let inherited = crate::systemd::listen_socket()?;
    let notifier = crate::systemd::Notifier::from_env();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(ServerError::Signal)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ServerError::Signal)?;

    raise_fd_limit();
    crate::sys::single_malloc_arena();
    let access_log = Arc::new(Mutex::new(
        AccessLog::open(config.access_log.as_deref()).map_err(io_err("opening the access log"))?,
    ));
    let (listener, socket_ino) = match inherited {
        Some((sock, path)) => {
            let path = path.unwrap_or_default();
            info!("using the socket systemd passed: {}", path.display());
            if path != config.socket {
                warn!(
                    "--socket {} is not the socket systemd passed ({}): handoff.socket \
                     must name the latter",
                    config.socket.display(),
                    path.display()
                );
            }
            (sock, None)
        }
        None => {
            let Bound {
                sock,
                ino,
                previous,
            } = listen_on(&config.socket, config.socket_mode, config.takeover)?;
            if let Some(prev) = previous {
                tell_previous_to_drain(&prev);
            }
            // systemd sets a passed socket's group itself (SocketGroup=).
            if let Some(group) = &config.socket_group {
                let group = sandbox::lookup_group(group)?;
                sandbox::set_socket_group(&config.socket, &group)?;
            }
            (sock, Some(ino))
        }
    };
    if let Some(user) = &config.user {
        let user = sandbox::lookup_user(user)?;
        sandbox::drop_to(&user, &config.socket)?;
    }
    // Listed later by the metrics thread, but opened now, before the sandbox.
    let open_fds = config
        .metrics
        .map(|_| crate::reporting::metrics::OpenFds::open());
    if config.sandbox {
        // A container's seccomp profile may forbid Landlock's system calls: run
        // unsandboxed then, and say so, rather than not at all.
        if let Err(e) = sandbox::restrict_filesystem(&config.socket) {
            warn!("{e}: filesystem access not restricted");
        }
    }
    let poll = Server::handshake_poll(&listener, &signals)?;
    let counters = Arc::new(Counters::default());
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.threads
    };
    let loop_config = LoopConfig {
        send_timeout: config.send_timeout,
        linger_timeout: config.linger_timeout,
        max_rate: config.max_rate.div_ceil(threads as u64),
        schedule: config.schedule,
        pacing: crate::downloads::pacing::PaceConfig {
            rate: config.relay_start_rate.div_ceil(threads as u64),
            start_bytes: config.relay_start_bytes,
        },
    };
    let completions = match &config.on_complete {
        Some(settings) => Some(
            crate::reporting::completion::Completions::start(settings.clone(), counters.clone())
                .map_err(io_err("starting the completion record thread"))?,
        ),
        None => None,
    };
    let groups = crate::downloads::rate_group::Groups::new(counters.clone());
    let loops = (0..threads)
        .map(|i| {
            download_loop::spawn(
                i,
                loop_config,
                counters.clone(),
                access_log.clone(),
                completions.clone(),
                groups.clone(),
            )
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("starting download loops"))?;
    if let (Some(addr), Some(open_fds)) = (config.metrics, open_fds) {
        let boards = loops.iter().map(|w| w.board.clone()).collect();
        crate::reporting::metrics::serve(addr, counters.clone(), boards, open_fds)
            .map_err(io_err("starting the metrics listener"))?;
        info!(
            "metrics on http://{addr}/metrics, status on http://{addr}/status, \
             health on http://{addr}/healthz"
        );
    }
    info!(
        "listening on {} (mode {:o}), {threads} download loop(s)",
        config.socket.display(),
        config.socket_mode
    );
    notifier.notify("READY=1");
    Ok(Server::new(
        config,
        poll,
        Listening {
            sock: listener,
            ino: socket_ino,
        },
        signals,
        notifier,
        loops,
        counters,
    ))
}

/// Each download holds two descriptors: take the whole hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!("open file limit raised from {soft} to {hard}"),
            Err(e) => warn!("cannot raise the open file limit from {soft}: {e}"),
        },
        Ok((soft, _)) => debug!("open file limit {soft}"),
        Err(e) => warn!("reading the open file limit: {e}"),
    }
}
