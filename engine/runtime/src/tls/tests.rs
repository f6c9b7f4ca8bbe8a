//! The session against a rustls client, in memory: handshake, data both ways, records split
//! at every boundary and at random ones, garbage instead of a ClientHello.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::*;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pki(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

fn client(p: &Pki) -> rustls::ClientConnection {
    rustls::ClientConnection::new(p.client.clone(), ServerName::try_from("localhost").unwrap())
        .unwrap()
}

/// Everything the client wants to send.
fn client_out(c: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

fn client_in(c: &mut rustls::ClientConnection, bytes: &[u8]) -> Vec<u8> {
    let mut rd = bytes;
    let mut plain = Vec::new();
    while !rd.is_empty() {
        c.read_tls(&mut rd).unwrap();
        c.process_new_packets().unwrap();
        match c.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("client read: {e}"),
        }
    }
    plain
}

/// Feeds `bytes` to the server in pieces cut at `cuts`; returns the plaintext.
fn feed(s: &mut TlsSession, bytes: &[u8], cuts: &[usize], ev: &mut Received) -> Vec<u8> {
    let mut scratch = Vec::new();
    let mut plain = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let c = c.clamp(at, bytes.len());
        let r = s.receive(&bytes[at..c], &mut scratch, &mut plain).unwrap();
        ev.handshake_done |= r.handshake_done;
        ev.peer_closed |= r.peer_closed;
        at = c;
    }
    assert!(scratch.is_empty());
    plain
}

fn server_out(s: &mut TlsSession, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(s.encrypt(plain, &mut out) || plain.is_empty());
    out
}

/// Runs the handshake with every flight cut at `cut(len)`; returns both ends established.
fn handshake(p: &Pki, cut: &dyn Fn(usize) -> Vec<usize>) -> (rustls::ClientConnection, TlsSession) {
    let mut c = client(p);
    let mut s = TlsSession::new(&p.server).unwrap();
    let mut ev = Received::default();
    for _ in 0..10 {
        let hello = client_out(&mut c);
        if !hello.is_empty() {
            let plain = feed(&mut s, &hello, &cut(hello.len()), &mut ev);
            assert!(plain.is_empty());
        }
        let back = server_out(&mut s, &[]);
        if !back.is_empty() {
            client_in(&mut c, &back);
        }
        if !c.is_handshaking() && s.established() {
            break;
        }
    }
    assert!(ev.handshake_done && s.established());
    assert!(!c.is_handshaking());
    assert_eq!(s.alpn(), Some(&b"http/1.1"[..]));
    (c, s)
}

static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];

fn versions() -> [&'static [&'static rustls::SupportedProtocolVersion]; 2] {
    [&TLS13, &TLS12]
}

#[test]
fn handshake_and_echo_both_versions() {
    for v in versions() {
        let p = pki(v);
        let (mut c, mut s) = handshake(&p, &|_| Vec::new());
        c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let bytes = client_out(&mut c);
        let mut ev = Received::default();
        assert_eq!(
            feed(&mut s, &bytes, &[], &mut ev),
            b"GET / HTTP/1.1\r\n\r\n"
        );
        let out = server_out(&mut s, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(
            client_in(&mut c, &out),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        );
        // Idle: no I/O buffer held by the session.
        assert_eq!(s.buffered_capacity(), 0, "{v:?}");
    }
}

#[test]
fn records_split_at_every_boundary() {
    for v in versions() {
        let p = pki(v);
        // The handshake itself, flights cut in two at every point of the first flight.
        let mut c0 = client(&p);
        let hello_len = client_out(&mut c0).len();
        for at in (1..hello_len).step_by(7) {
            let _ = handshake(&p, &|_| vec![at]);
        }
        // Application data: three records, cut at every byte.
        let (mut c, mut s) = handshake(&p, &|_| Vec::new());
        let mut msg = Vec::new();
        for i in 0..3u8 {
            let chunk: Vec<u8> = (0..100)
                .map(|k| i.wrapping_mul(31).wrapping_add(k))
                .collect();
            c.writer().write_all(&chunk).unwrap();
            msg.extend_from_slice(&chunk);
            // One record per write.
        }
        let bytes = client_out(&mut c);
        let mut got = Vec::new();
        let mut ev = Received::default();
        for &b in &bytes {
            got.extend(feed(&mut s, &[b], &[], &mut ev));
        }
        assert_eq!(got, msg);
        assert_eq!(s.buffered_capacity(), 0);
    }
}

#[test]
fn records_split_at_random_boundaries() {
    let p = pki(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..50 {
        let (mut c, mut s) = handshake(&p, &|_| Vec::new());
        let mut msg = Vec::new();
        for i in 0..(1 + round % 5) {
            let len = 1 + (i * 977 + round * 131) % 20_000;
            let chunk: Vec<u8> = (0..len).map(|k| (k * 7 + i) as u8).collect();
            c.writer().write_all(&chunk).unwrap();
            msg.extend_from_slice(&chunk);
        }
        let bytes = client_out(&mut c);
        let mut cuts: Vec<usize> = (0..rnd(12)).map(|_| rnd(bytes.len())).collect();
        cuts.sort_unstable();
        let mut ev = Received::default();
        assert_eq!(feed(&mut s, &bytes, &cuts, &mut ev), msg, "round {round}");
        // And back: a large reply crosses record boundaries on the client side.
        let out = server_out(&mut s, &msg);
        assert_eq!(client_in(&mut c, &out), msg);
    }
}

#[test]
fn not_a_client_hello_fails_with_an_alert() {
    let p = pki(&[&rustls::version::TLS13]);
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        &[0x17; 64][..],
    ] {
        let mut s = TlsSession::new(&p.server).unwrap();
        let mut scratch = Vec::new();
        let mut plain = Vec::new();
        let err = match s.receive(junk, &mut scratch, &mut plain) {
            Err(e) => e,
            Ok(_) => panic!("{junk:?} accepted"),
        };
        assert!(err.during_handshake);
        assert!(plain.is_empty());
        // A fatal alert record (content type 21) is queued for the peer.
        let out = server_out(&mut s, &[]);
        assert_eq!(out.first(), Some(&21), "{junk:?}: {}", err.error);
        // Nothing more is accepted or produced.
        assert!(s.receive(b"more", &mut scratch, &mut plain).is_ok());
        assert!(!s.encrypt(b"data", &mut Vec::new()));
    }
}

#[test]
fn close_notify_reaches_the_client() {
    let p = pki(&[&rustls::version::TLS13]);
    let (mut c, mut s) = handshake(&p, &|_| Vec::new());
    s.close_notify();
    let out = server_out(&mut s, &[]);
    let mut rd = &out[..];
    c.read_tls(&mut rd).unwrap();
    let st = c.process_new_packets().unwrap();
    assert!(st.peer_has_closed());
    // The client's close_notify is seen by the server.
    c.send_close_notify();
    let bytes = client_out(&mut c);
    let mut ev = Received::default();
    feed(&mut s, &bytes, &[], &mut ev);
    assert!(ev.peer_closed);
}
