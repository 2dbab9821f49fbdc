//! HTTPS for the load connections: a rustls client that speaks TLS 1.3 only and verifies the
//! server against one CA certificate (the throwaway CA that bench/run.sh generates per run),
//! plus the two non-blocking helpers [`crate::conn::Conn`] drives it with.
//!
//! rustls is used without its stream wrapper: the engine's sockets are non-blocking and
//! edge-triggered, so every helper here reports `WouldBlock` only when the socket itself did,
//! which is what lets the connection wait for the next readiness event safely.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use mio::net::TcpStream;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// What a TLS connection needs: the shared client configuration and the name the server's
/// certificate must carry (an IP address for 127.0.0.1).
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// TLS 1.3 only, the ring provider's default cipher suites, verification against the
    /// certificates in the PEM file `ca` (no system roots, nothing disabled).
    pub fn new(ca: &Path, server_name: &str) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| anyhow!("{}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| anyhow!("{}: {e}", ca.display()))?;
            roots.add(cert).context("adding the CA certificate")?;
        }
        if roots.is_empty() {
            anyhow::bail!("{}: no certificate in it", ca.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow!("TLS server name {server_name:?}: {e}"))?;
        Ok(Tls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A new client session (its ClientHello is queued, nothing is sent yet).
    pub fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// Reads decrypted bytes into `buf`: first what rustls already holds, else records from the
/// socket. `Ok(0)` = the server closed cleanly (close_notify); an EOF without it is
/// `UnexpectedEof`; `WouldBlock` only when the socket had nothing more.
pub fn read(
    stream: &mut TcpStream,
    tls: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Nothing decrypted is waiting: take more records from the socket. After an EOF
        // (read_tls returns 0) the reader above answers Ok(0) or UnexpectedEof.
        tls.read_tls(stream)?;
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// Writes what rustls has queued (handshake messages, encrypted requests) until it has
/// nothing more or the socket would block.
pub fn flush(stream: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(stream)?;
    }
    stream.flush()
}

/// Queues plaintext (the request) in rustls; it is sent by [`flush`] once the handshake is
/// done. Never blocks.
pub fn queue(tls: &mut ClientConnection, data: &[u8]) -> io::Result<usize> {
    tls.writer().write(data)
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384": what a finished handshake agreed on.
pub fn describe(tls: &ClientConnection) -> Option<String> {
    Some(format!(
        "{:?} {:?}",
        tls.protocol_version()?,
        tls.negotiated_cipher_suite()?.suite()
    ))
}
