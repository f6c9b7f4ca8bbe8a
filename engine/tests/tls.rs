//! `wss://` on real sockets (feature `tls`): a test CA made here with rcgen, rustls clients
//! over 127.0.0.1, the engine's TLS listener beside its plain one. Echo, SNI, both TLS
//! versions, large messages, fan-out to TLS and plain subscribers, and bad input: bytes that
//! are not a ClientHello, a stalled handshake, a handshake flood. Every test bounds its waits.
#![cfg(feature = "tls")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws::tls::TlsConfig;
use edge_ws::{Cores, Engine, EngineHandle, Handler, Message, Socket};
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::{client::IntoClientRequest, Message as WsMessage, WebSocket};

/// A CA and certificates it signed, made for this test run (nothing is read from disk).
struct Pki {
    ca_der: CertificateDer<'static>,
    ca: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "edge-ws test CA");
        let ca_der = ca.self_signed(&ca_key).unwrap().der().clone();
        Pki { ca_der, ca, ca_key }
    }

    /// `(cert PEM, key PEM, cert DER)` for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&self.ca, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

struct Echo;
impl Handler for Echo {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        if socket.path() == "/room" {
            socket.subscribe("room");
        }
    }
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        if socket.path() == "/room" {
            if let Message::Text(t) = &message {
                // A burst of publishes: the cork gathers them into one shared buffer, which
                // each TLS subscriber must get encrypted for itself.
                for i in 0..20 {
                    socket.publish("room", &format!("{}#{i}", String::from_utf8_lossy(t)));
                }
            }
            return;
        }
        let _ = socket.send(&message);
    }
}

fn engine(tls: TlsConfig, timeout: Duration) -> Engine {
    Engine::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .cores(Cores::Count(1))
        .pin(false)
        .handshake_timeout(timeout)
        .tick(Duration::from_millis(20))
        .tls(tls)
        .build(|_| Echo)
        .expect("engine starts")
}

fn tls_config(pki: &Pki) -> TlsConfig {
    let (cert, key, _) = pki.leaf(&["localhost"]);
    TlsConfig::from_pem(
        "127.0.0.1:0".parse().unwrap(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap()
}

type Wss = WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn connect_tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> Result<(Wss, rustls::ProtocolVersion), String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from(sni.to_string()).unwrap())
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Complete the TLS handshake first, to see its errors as such.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    let version = tls.conn.protocol_version().unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = format!("ws://{sni}{path}").into_client_request().unwrap();
    let (ws, _) = tungstenite::client(req, tls).map_err(|e| e.to_string())?;
    Ok((ws, version))
}

fn text(ws: &mut Wss) -> String {
    loop {
        match ws.read().expect("read") {
            WsMessage::Text(t) => return t.to_string(),
            WsMessage::Binary(b) => return format!("<{} bytes>", b.len()),
            _ => continue,
        }
    }
}

fn wait_for(handle: &EngineHandle, what: &str, f: impl Fn(&edge_ws::MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = handle.metrics();
        if f(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn wss_echo_beside_plain_ws_both_versions() {
    let pki = Pki::new();
    let e = engine(tls_config(&pki), Duration::from_secs(5));
    let tls_addr = e.tls_local_addr().expect("a TLS listener");
    assert_ne!(tls_addr, e.local_addr());
    for (versions, want, suite) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let (mut ws, v) =
            connect_tls(tls_addr, pki.client_config(versions), "localhost", "/").unwrap();
        assert_eq!(v, want);
        // The server's order wins: AES-128-GCM, though rustls clients list AES-256 first.
        let got = ws.get_ref().conn.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(got, suite);
        for i in 0..50 {
            ws.send(WsMessage::text(format!("hello {i}"))).unwrap();
            assert_eq!(text(&mut ws), format!("hello {i}"));
        }
        // A message far larger than one TLS record (16 KiB) and one receive buffer, both ways.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(WsMessage::binary(big.clone())).unwrap();
        match ws.read().unwrap() {
            WsMessage::Binary(b) => assert_eq!(&b[..], &big[..]),
            other => panic!("expected binary, got {other:?}"),
        }
        ws.close(None).unwrap();
        // The close handshake and close_notify end the stream cleanly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ws.read() {
                Ok(_) => assert!(Instant::now() < deadline),
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("unclean close: {e}"),
            }
        }
    }
    // The plain listener works at the same time.
    let (mut plain, _) = tungstenite::connect(format!("ws://{}/", e.local_addr())).unwrap();
    plain.send(WsMessage::text("plain")).unwrap();
    match plain.read().unwrap() {
        WsMessage::Text(t) => assert_eq!(t.as_str(), "plain"),
        other => panic!("{other:?}"),
    }
    let h = e.handle();
    wait_for(&h, "two handshakes", |m| {
        m.tls_handshakes == 2 && m.tls_accepted == 2
    });
    let m = h.metrics();
    assert_eq!(m.tls_handshake_failures, 0);
    // Both (TLS 1.3 and 1.2) left rustls for the runtime's record layer after the handshake.
    assert_eq!(m.tls_record_layer, 2);
    assert_eq!(m.tls_errors, 0);
    assert_eq!(
        m.ktls_available,
        u64::from(edge_ws::runtime::os::ktls_available())
    );
    h.shutdown();
    e.join().unwrap();
}

#[test]
fn sni_picks_the_certificate() {
    let pki = Pki::new();
    let (dc, dk, default_der) = pki.leaf(&["localhost"]);
    let (oc, ok, other_der) = pki.leaf(&["chat.example.test"]);
    let tls = TlsConfig::from_pem("127.0.0.1:0".parse().unwrap(), dc.as_bytes(), dk.as_bytes())
        .unwrap()
        .sni_pem("Chat.Example.Test", oc.as_bytes(), ok.as_bytes())
        .unwrap();
    assert_eq!(
        tls.sni_names().collect::<Vec<_>>(),
        vec!["chat.example.test"]
    );
    // A certificate for another name is refused for an SNI entry, with the name in the error.
    let err = tls
        .clone()
        .sni_pem("nope.example.test", oc.as_bytes(), ok.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("nope.example.test"), "{err}");
    let e = engine(tls, Duration::from_secs(5));
    let addr = e.tls_local_addr().unwrap();
    for (name, want) in [
        ("chat.example.test", &other_der),
        ("localhost", &default_der),
    ] {
        let (ws, _) = connect_tls(addr, pki.client_config(BOTH), name, "/").unwrap();
        let got = ws.get_ref().conn.peer_certificates().unwrap()[0].clone();
        assert_eq!(&got, want, "{name}");
    }
    // A name the default certificate does not cover fails verification on the client.
    let err = match connect_tls(addr, pki.client_config(BOTH), "unknown.example.test", "/") {
        Err(e) => e,
        Ok(_) => panic!("a certificate for the wrong name was accepted"),
    };
    assert!(
        err.contains("certificate") || err.contains("NotValidForName"),
        "{err}"
    );
    e.handle().shutdown();
    e.join().unwrap();
}

#[test]
fn fan_out_is_encrypted_per_connection() {
    let pki = Pki::new();
    let e = engine(tls_config(&pki), Duration::from_secs(5));
    let addr = e.tls_local_addr().unwrap();
    let cfg = pki.client_config(BOTH);
    let mut subs: Vec<Wss> = (0..4)
        .map(|_| {
            connect_tls(addr, cfg.clone(), "localhost", "/room")
                .unwrap()
                .0
        })
        .collect();
    let (mut plain, _) = tungstenite::connect(format!("ws://{}/room", e.local_addr())).unwrap();
    let h = e.handle();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.subscriber_count("room") < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    subs[0].send(WsMessage::text("m")).unwrap();
    for ws in subs.iter_mut() {
        for i in 0..20 {
            assert_eq!(text(ws), format!("m#{i}"));
        }
    }
    for i in 0..20 {
        match plain.read().unwrap() {
            WsMessage::Text(t) => assert_eq!(t.as_str(), format!("m#{i}")),
            other => panic!("{other:?}"),
        }
    }
    h.shutdown();
    e.join().unwrap();
}

/// Sends `bytes`, then reads until EOF (bounded); returns what the server answered.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("no EOF from the server: {e}"),
        }
    }
}

#[test]
fn not_a_client_hello_gets_an_alert_and_is_counted() {
    let pki = Pki::new();
    let e = engine(tls_config(&pki), Duration::from_secs(5));
    let addr = e.tls_local_addr().unwrap();
    let h = e.handle();
    // Plain HTTP on the TLS port, a truncated-then-bogus handshake record, random bytes.
    let inputs: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff],
        &[0x42; 300],
    ];
    for input in inputs {
        let answer = raw_exchange(addr, input);
        // One alert record (content type 21, fatal) and then EOF.
        assert_eq!(answer.first(), Some(&21), "{input:?} -> {answer:?}");
        assert_eq!(answer.get(5), Some(&2), "fatal alert level");
    }
    wait_for(&h, "three failures", |m| m.tls_handshake_failures == 3);
    // Everyone else is served.
    let (mut ws, _) = connect_tls(addr, pki.client_config(BOTH), "localhost", "/").unwrap();
    ws.send(WsMessage::text("still here")).unwrap();
    assert_eq!(text(&mut ws), "still here");
    h.shutdown();
    e.join().unwrap();
}

#[test]
fn stalled_handshake_times_out() {
    let pki = Pki::new();
    let e = engine(tls_config(&pki), Duration::from_millis(300));
    let addr = e.tls_local_addr().unwrap();
    let h = e.handle();
    // Half a ClientHello, then silence.
    let mut conn = rustls::ClientConnection::new(
        pki.client_config(BOTH),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    wait_for(&h, "the timeout", |m| m.handshake_timeouts == 1);
    // A TLS handshake done but no HTTP upgrade is also bounded by the same timeout.
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(
        pki.client_config(BOTH),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let mut rest = Vec::new();
    let r = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{r:?}");
    wait_for(&h, "the second timeout", |m| m.handshake_timeouts == 2);
    h.shutdown();
    e.join().unwrap();
}

#[test]
fn handshake_flood_is_refused_beyond_the_limit_and_others_are_served() {
    let pki = Pki::new();
    let e = engine(
        tls_config(&pki).max_handshakes_per_core(8),
        Duration::from_millis(500),
    );
    let addr = e.tls_local_addr().unwrap();
    let h = e.handle();
    // 40 connections that never finish their handshake: 8 occupy the core's handshake
    // slots, the rest are closed at accept.
    let stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            s
        })
        .collect();
    wait_for(&h, "refusals", |m| {
        m.tls_accepted == 40 && m.tls_refused == 32
    });
    // Once the stalled ones time out, handshakes are served again, many at once.
    wait_for(&h, "timeouts", |m| m.handshake_timeouts == 8);
    drop(stalled);
    let cfg = pki.client_config(BOTH);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let (mut ws, _) = connect_tls(addr, cfg, "localhost", "/").unwrap();
                ws.send(WsMessage::text(format!("t{i}"))).unwrap();
                text(&mut ws)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), format!("t{i}"));
    }
    wait_for(&h, "handshakes", |m| m.tls_handshakes == 6);
    h.shutdown();
    e.join().unwrap();
}

#[test]
fn pem_errors_are_clear() {
    let pki = Pki::new();
    let (c1, k1, _) = pki.leaf(&["localhost"]);
    let (_, k2, _) = pki.leaf(&["localhost"]);
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let e = TlsConfig::from_pem(addr, b"not pem", k1.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("no usable certificate"), "{e}");
    let e = TlsConfig::from_pem(addr, c1.as_bytes(), b"").unwrap_err();
    assert!(e.to_string().contains("no usable private key"), "{e}");
    let e = TlsConfig::from_pem(addr, c1.as_bytes(), k2.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let e = TlsConfig::from_pem_files(addr, "/nonexistent/cert.pem", "/nonexistent/key.pem")
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    // From files.
    let dir = TempDir::new("edge-ws-tls-test");
    std::fs::write(dir.path().join("cert.pem"), &c1).unwrap();
    std::fs::write(dir.path().join("key.pem"), &k1).unwrap();
    let ok = TlsConfig::from_pem_files(
        addr,
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    drop(dir);
    assert!(ok.is_ok());
}

#[test]
fn certificates_reload_without_dropping_connections() {
    let pki = Pki::new();
    let (c1, k1, d1) = pki.leaf(&["localhost"]);
    let (c2, k2, d2) = pki.leaf(&["localhost"]);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let tls = TlsConfig::from_pem(any, c1.as_bytes(), k1.as_bytes()).unwrap();
    let reloader = tls.reloader();
    let e = engine(tls, Duration::from_secs(5));
    let addr = e.tls_local_addr().unwrap();
    let cfg = pki.client_config(BOTH);
    let peer = |ws: &Wss| ws.get_ref().conn.peer_certificates().unwrap()[0].clone();
    let (mut old, _) = connect_tls(addr, cfg, "localhost", "/").unwrap();
    assert_eq!(peer(&old), d1);
    reloader.reload(&TlsConfig::from_pem(any, c2.as_bytes(), k2.as_bytes()).unwrap());
    // A fresh client (a shared one would resume its earlier session, which sends no
    // certificate).
    let (mut new, _) = connect_tls(addr, pki.client_config(BOTH), "localhost", "/").unwrap();
    assert_eq!(peer(&new), d2);
    // The connection opened before the reload goes on with its session.
    for ws in [&mut old, &mut new] {
        ws.send(WsMessage::text("after reload")).unwrap();
        assert_eq!(text(ws), "after reload");
    }
    e.handle().shutdown();
    e.join().unwrap();
}
