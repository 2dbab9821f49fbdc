//! The load engine over HTTPS against a real TLS 1.3 server on a loopback socket: a rustls
//! server thread with a certificate from a CA that openssl makes in a temp dir, as
//! bench/run.sh does. Checks that fast and rate-limited readers receive every body byte,
//! that keep-alive reuses the TLS session, that each response head's wait is recorded, and
//! that a server the CA did not sign is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use handoff_bench::engine::{self, Config};
use handoff_bench::tls::Tls;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const BODY: usize = 3 * 1024 * 1024 + 17;

fn body() -> Vec<u8> {
    (0..BODY).map(|i| (i % 251) as u8).collect()
}

/// A temp dir of its own for the test `name` with ca.pem, server.pem and server.key (the
/// commands of bench/run.sh).
fn certs(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handoff-bench-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    dir
}

/// Serves `body()` with a Content-Length to every GET, keep-alive, TLS 1.3 only, one thread
/// per connection; returns the address.
fn serve(dir: &Path) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            let (config, body) = (config.clone(), body.clone());
            std::thread::spawn(move || {
                let Ok(conn) = ServerConnection::new(config) else {
                    return;
                };
                let mut tls = BufReader::new(StreamOwned::new(conn, sock));
                loop {
                    // Read one request head, answer it; stop at EOF or any error.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match tls.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let out = tls.get_mut();
                    if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(addr: SocketAddr, tls: Tls) -> Config {
    Config {
        addr,
        path: "/f".into(),
        conns: 3,
        rate: None,
        repeat: false,
        duration: Duration::from_secs(20),
        ramp: Duration::ZERO,
        max_requests: 3,
        read_buf: 1024 * 1024,
        rcvbuf: None,
        close: false,
        tick: Duration::from_millis(50),
        tls: Some(tls),
    }
}

#[test]
fn https_downloads_arrive_whole() {
    let dir = certs("whole");
    let addr = serve(&dir);
    let tls = Tls::new(&dir.join("ca.pem"), "127.0.0.1").unwrap();

    // Fast readers, one download each: every body byte, nothing failed.
    let out = engine::run(&config(addr, tls.clone())).unwrap();
    assert_eq!((out.requests, out.failed), (3, 0), "{:?}", out.errors);
    assert_eq!(out.bytes, 3 * BODY as u64);
    // One head wait per response, none still waiting.
    assert_eq!((out.head_waits_ms.len(), out.heads_waiting), (3, 0));
    assert!(
        out.tls.as_deref().is_some_and(|t| t.starts_with("TLSv1_3")),
        "{:?}",
        out.tls
    );

    // Rate-limited readers (the S1 path): reads capped by the token bucket.
    let slow = Config {
        rate: Some(8 * 1024 * 1024),
        ..config(addr, tls.clone())
    };
    let out = engine::run(&slow).unwrap();
    assert_eq!((out.requests, out.failed), (3, 0), "{:?}", out.errors);
    assert_eq!(out.bytes, 3 * BODY as u64);

    // Keep-alive (the S2 path): 2 connections, 6 requests, no new connection needed.
    let keep = Config {
        conns: 2,
        repeat: true,
        max_requests: 6,
        ..config(addr, tls)
    };
    let out = engine::run(&keep).unwrap();
    assert_eq!(out.failed, 0, "{:?}", out.errors);
    assert!(out.requests >= 6);
    assert_eq!(out.opened, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_server_the_ca_did_not_sign_is_refused() {
    let dir = certs("refused");
    let addr = serve(&dir);
    // The server's own certificate is not a CA: verification must fail, not be skipped.
    let tls = Tls::new(&dir.join("server.pem"), "127.0.0.1").unwrap();
    let cfg = Config {
        duration: Duration::from_millis(500),
        repeat: true,
        ..config(addr, tls)
    };
    let out = engine::run(&cfg).unwrap();
    assert_eq!(out.requests, 0);
    assert!(out.failed > 0);
    assert!(
        out.errors
            .keys()
            .all(|e| e.contains("invalid peer certificate")),
        "{:?}",
        out.errors
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
