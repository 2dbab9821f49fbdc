//! Taking handoffs: the listening socket and the handshake loop that reads what PHP workers
//! send on their kept connections, checks it, and gives each started download to a
//! download loop, or has it wait for a place, or refuses it.
//!
//! - `listener`: creating the listening socket with exactly the requested mode, `--takeover`
//!   of a running manager's socket path, removing the socket file at shutdown.
//! - [`server`]: the handshake loop (one thread, one mio `Poll` over the listener, the
//!   signal descriptor and every worker connection); its guarantees are listed there.
//! - [`waiting`]: one-way handoffs waiting for a place under `--max-downloads`, smallest
//!   first, and the 503 / 500 responses the manager writes when it must refuse one.

pub(crate) mod listener;
pub mod server;
pub mod waiting;
