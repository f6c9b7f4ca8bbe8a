//! The runtime's TLS listener on real sockets (feature `tls`): a service that speaks first
//! (its greeting is queued at open, before the handshake, and goes out once the handshake is
//! done), an echo of what the client sends, urgent output queued ahead of plaintext, and
//! close_notify at the end; the plain listener beside it unaffected.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_ws_runtime::{ConnId, Io, Runtime, RuntimeConfig, Service, TlsListenerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

struct Greeter;

impl Service for Greeter {
    fn on_open(&mut self, io: &mut Io<'_>, id: ConnId, _peer: std::net::SocketAddr) {
        // Before any byte arrived: on a TLS connection this waits for the handshake.
        io.send(id, Bytes::from_static(b"hello;"));
    }
    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
        if data == b"bye" {
            io.send(id, Bytes::from_static(b"normal;"));
            io.send_urgent(id, Bytes::from_static(b"urgent;"));
            io.close(id);
            return;
        }
        io.send(id, Bytes::copy_from_slice(data));
    }
    fn on_close(&mut self, _io: &mut Io<'_>, _id: ConnId) {}
    fn on_tick(&mut self, _io: &mut Io<'_>, _now: Instant) {}
}

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    // No session tickets: after the client's Finished the server has nothing of its own to
    // send, so only the queued greeting can make the core send (the case this tests).
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// Reads until `want` bytes arrived or the stream ends (bounded by the socket timeout).
fn read_n(r: &mut impl Read, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e} after {got:?}"),
        }
    }
    got
}

#[test]
fn server_first_greeting_echo_urgent_and_close_notify() {
    let (server, client) = configs();
    let core = core_affinity::get_core_ids().unwrap()[0].id;
    let cfg = RuntimeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        cores: vec![core],
        pin: false,
        tick: Duration::from_millis(20),
        tls: Some(TlsListenerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            config: server,
            max_handshakes_per_core: 16,
        }),
        ..Default::default()
    };
    let rt = Runtime::start(cfg, |_, _| Greeter).unwrap();
    let tls_addr = rt.tls_local_addr().unwrap();

    let tcp = TcpStream::connect(tls_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn =
        rustls::ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The greeting queued before the handshake arrives first, in one piece.
    assert_eq!(read_n(&mut tls, 6), b"hello;");
    tls.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut tls, 4), b"ping");
    // Urgent output goes ahead of plaintext queued before it, both encrypted in wire order;
    // then close_notify ends the stream cleanly (read_to_end sees EOF, not an error).
    tls.write_all(b"bye").unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"urgent;normal;");

    // The plain listener beside it: the same service, no TLS.
    let mut plain = TcpStream::connect(rt.local_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_n(&mut plain, 6), b"hello;");

    let s = &rt.stats()[0];
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&s.tls_accepted), 1);
    assert_eq!(load(&s.tls_handshakes), 1);
    assert_eq!(load(&s.tls_handshake_failures), 0);
    rt.shutdown();
    rt.join().unwrap();
}
