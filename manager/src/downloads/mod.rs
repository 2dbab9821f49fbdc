//! Downloads: running a started download to its end. A download loop owns each download it
//! is given and drives its state machine (head, body by `sendfile` or in FastCGI records,
//! lingering close) under the rates that apply to it; nothing here reads a worker's
//! socket, so the handshake loop depends on downloads and never the other way round.

pub mod download;
pub mod download_loop;
pub mod fcgi;
pub mod pacing;
pub mod rate_group;
