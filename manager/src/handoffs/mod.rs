//! Taking handoffs: the listening socket and the handshake loop that reads what PHP workers
//! send on their kept connections, checks it, and gives each started download to a
//! download loop, or has it wait for a place, or refuses it.

pub(crate) mod listener;
pub mod server;
pub mod waiting;
