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
    pki_with(versions, provider())
}

fn pki_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Pki {
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
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
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
    let mut c =
        rustls::ClientConnection::new(p.client.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    c.set_buffer_limit(None);
    c
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
        // A piece at a time: rustls holds at most so much undelivered plaintext.
        let mut piece = &rd[..rd.len().min(8192)];
        c.read_tls(&mut piece).unwrap();
        rd = &rd[rd.len().min(8192) - piece.len()..];
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
        ev.record_layer |= r.record_layer;
        ev.key_updates += r.key_updates;
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

// --- The record layer (after the hand-off), against rustls as the peer --------------------

use std::sync::Mutex;

use rustls::crypto::ring::cipher_suite as cs;
use rustls::SupportedCipherSuite;

use super::records::{Cipher, Records, Secret, Version};

/// Every cipher suite of the ring provider, with its version.
fn suites() -> Vec<(
    SupportedCipherSuite,
    &'static rustls::SupportedProtocolVersion,
)> {
    vec![
        (cs::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13),
        (cs::TLS13_AES_256_GCM_SHA384, &rustls::version::TLS13),
        (cs::TLS13_CHACHA20_POLY1305_SHA256, &rustls::version::TLS13),
        (
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        ),
        (
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            &rustls::version::TLS12,
        ),
        (
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            &rustls::version::TLS12,
        ),
    ]
}

/// The client's key log: what a peer built from the client's secrets needs for KeyUpdate.
#[derive(Debug, Default)]
struct ClientKeys(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for ClientKeys {
    fn log(&self, label: &str, _random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label.to_string(), secret.to_vec()));
    }
}

struct SuitePki {
    pki: Pki,
    keys: Arc<ClientKeys>,
}

/// A PKI whose server offers only `suite` and whose configuration is prepared for the hand-off
/// (as the driver prepares it); the client extracts its secrets too.
fn suite_pki(
    suite: SupportedCipherSuite,
    version: &'static rustls::SupportedProtocolVersion,
) -> SuitePki {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let base = pki_with(&[version], Arc::new(provider));
    let server = (*base.server).clone();
    let mut client = (*base.client).clone();
    client.enable_secret_extraction = true;
    let keys = Arc::new(ClientKeys::default());
    client.key_log = keys.clone();
    SuitePki {
        pki: Pki {
            server: prepare_config(&Arc::new(server)),
            client: Arc::new(client),
        },
        keys,
    }
}

/// A peer speaking our record layer with the client's keys (to send what rustls would not).
fn client_records(c: rustls::ClientConnection, keys: &ClientKeys, v: Version) -> Records {
    let ex = c.dangerous_extract_secrets().unwrap();
    let log = keys.0.lock().unwrap();
    let find = |l: &str| {
        log.iter()
            .rev()
            .find(|(k, _)| k == l)
            .and_then(|(_, s)| Secret::new(s))
    };
    let secrets = match v {
        Version::Tls13 => Some((
            find("SERVER_TRAFFIC_SECRET_0").unwrap(),
            find("CLIENT_TRAFFIC_SECRET_0").unwrap(),
        )),
        Version::Tls12 => None,
    };
    let r = Records::new(v, (ex.tx.0, &ex.tx.1), (ex.rx.0, &ex.rx.1), secrets).unwrap();
    assert_eq!(r.key_update_supported(), v == Version::Tls13);
    r
}

fn version_of(v: &rustls::SupportedProtocolVersion) -> Version {
    if v.version == rustls::ProtocolVersion::TLSv1_3 {
        Version::Tls13
    } else {
        Version::Tls12
    }
}

#[test]
fn prepared_sessions_move_to_the_record_layer_for_every_suite() {
    for (suite, version) in suites() {
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        assert!(s.on_record_layer(), "{suite:?}");
        assert_eq!(
            c.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite.suite())
        );
        // Both ways, messages of every size class, across record boundaries.
        for len in [0usize, 1, 100, 16383, 16384, 16385, 70_000] {
            let msg: Vec<u8> = (0..len).map(|k| (k * 13 + len) as u8).collect();
            c.writer().write_all(&msg).unwrap();
            let bytes = client_out(&mut c);
            let mut ev = Received::default();
            assert_eq!(feed(&mut s, &bytes, &[], &mut ev), msg, "{suite:?} {len}");
            let out = server_out(&mut s, &msg);
            assert_eq!(client_in(&mut c, &out), msg, "{suite:?} {len}");
        }
        // Split at random points, many records in one buffer.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..20 {
            let mut msg = Vec::new();
            for i in 0..(1 + round % 6) {
                let chunk: Vec<u8> = (0..(1 + (i * 977 + round * 131) % 20_000))
                    .map(|k| (k * 7 + i) as u8)
                    .collect();
                c.writer().write_all(&chunk).unwrap();
                msg.extend_from_slice(&chunk);
            }
            let bytes = client_out(&mut c);
            let mut cuts: Vec<usize> = (0..rnd(12)).map(|_| rnd(bytes.len())).collect();
            cuts.sort_unstable();
            let mut ev = Received::default();
            assert_eq!(
                feed(&mut s, &bytes, &cuts, &mut ev),
                msg,
                "{suite:?} {round}"
            );
        }
        // Quiet: no I/O buffer, and once released no expanded key either.
        assert_eq!(s.buffered_capacity(), 0);
        assert!(s.records_mut().unwrap().holds_expanded_keys());
        s.release_idle();
        assert!(!s.records_mut().unwrap().holds_expanded_keys());
        // ... rebuilt when traffic comes.
        c.writer().write_all(b"after idle").unwrap();
        let bytes = client_out(&mut c);
        let mut ev = Received::default();
        assert_eq!(feed(&mut s, &bytes, &[], &mut ev), b"after idle");
        let out = server_out(&mut s, b"still here");
        assert_eq!(client_in(&mut c, &out), b"still here");
    }
}

#[test]
fn record_layer_split_at_every_byte() {
    for (suite, version) in suites() {
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        assert!(s.on_record_layer());
        let mut msg = Vec::new();
        for i in 0..3u8 {
            let chunk: Vec<u8> = (0..50)
                .map(|k| i.wrapping_mul(31).wrapping_add(k))
                .collect();
            c.writer().write_all(&chunk).unwrap();
            msg.extend_from_slice(&chunk);
        }
        let bytes = client_out(&mut c);
        let mut got = Vec::new();
        let mut ev = Received::default();
        for &b in &bytes {
            got.extend(feed(&mut s, &[b], &[], &mut ev));
        }
        assert_eq!(got, msg, "{suite:?}");
        assert_eq!(s.buffered_capacity(), 0);
    }
}

#[test]
fn unprepared_configurations_stay_on_rustls() {
    // The fallback: a configuration without secret extraction keeps rustls' record layer.
    for v in versions() {
        let p = pki(v);
        let (mut c, mut s) = handshake(&p, &|_| Vec::new());
        assert!(!s.on_record_layer());
        c.writer().write_all(b"ping").unwrap();
        let bytes = client_out(&mut c);
        let mut ev = Received::default();
        assert_eq!(feed(&mut s, &bytes, &[], &mut ev), b"ping");
        assert_eq!(client_in(&mut c, &server_out(&mut s, b"pong")), b"pong");
    }
}

#[test]
fn data_in_the_handshakes_last_flight_reaches_the_record_layer() {
    // The client's Finished and its first records (the upgrade request) in one buffer, and
    // the first record cut so that its rest comes with the next receive.
    for (suite, version) in suites() {
        let sp = suite_pki(suite, version);
        let mut c = client(&sp.pki);
        let mut s = TlsSession::new(&sp.pki.server).unwrap();
        let mut ev = Received::default();
        let mut got = Vec::new();
        let mut sent = false;
        for _ in 0..10 {
            let mut bytes = client_out(&mut c);
            if !c.is_handshaking() && !sent {
                c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                bytes.extend(client_out(&mut c));
                sent = true;
                let cut = bytes.len() - 7;
                got.extend(feed(&mut s, &bytes, &[cut], &mut ev));
            } else if !bytes.is_empty() {
                got.extend(feed(&mut s, &bytes, &[], &mut ev));
            }
            let back = server_out(&mut s, &[]);
            if !back.is_empty() {
                client_in(&mut c, &back);
            }
            if sent && !c.is_handshaking() && s.established() {
                break;
            }
        }
        assert!(ev.record_layer, "{suite:?}");
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n", "{suite:?}");
    }
}

#[test]
fn key_update_from_rustls_is_followed() {
    for (suite, version) in suites()
        .into_iter()
        .filter(|(_, v)| version_of(v) == Version::Tls13)
    {
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        for round in 0..3 {
            c.refresh_traffic_keys().unwrap();
            c.writer().write_all(b"after key update").unwrap();
            let bytes = client_out(&mut c);
            let mut ev = Received::default();
            // One byte at a time: the KeyUpdate record and the next one cut everywhere.
            let cuts: Vec<usize> = (1..bytes.len()).collect();
            assert_eq!(feed(&mut s, &bytes, &cuts, &mut ev), b"after key update");
            assert_eq!(ev.key_updates, 1, "{suite:?} {round}");
            // The client did not ask for ours: our keys and numbering stay.
            let out = server_out(&mut s, b"reply");
            assert_eq!(client_in(&mut c, &out), b"reply");
            assert_eq!(
                s.records_mut().unwrap().seqs().1,
                1,
                "rx numbering restarts"
            );
        }
    }
}

#[test]
fn key_update_requested_is_answered_and_both_keys_move() {
    for (suite, version) in suites()
        .into_iter()
        .filter(|(_, v)| version_of(v) == Version::Tls13)
    {
        let sp = suite_pki(suite, version);
        let (c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let mut peer = client_records(c, &sp.keys, Version::Tls13);
        for _ in 0..3 {
            let mut bytes = Vec::new();
            // KeyUpdate(update_requested); the peer's own send key moves after it.
            peer.seal_raw(22, &[24, 0, 0, 1, 1], &mut bytes);
            peer.update_tx();
            let mut ev = Received::default();
            assert!(feed(&mut s, &bytes, &[], &mut ev).is_empty());
            assert_eq!(ev.key_updates, 1);
            let tx_before = s.records_mut().unwrap().seqs().0;
            assert_eq!(tx_before, 0, "our key moved: numbering restarts");
            let mut out = Vec::new();
            assert!(s.encrypt(b"under the new key", &mut out));
            // The peer reads our KeyUpdate (sealed with the old key), follows it, then the data.
            let mut plain = Vec::new();
            let mut answers = Vec::new();
            let o = peer.open(&out, &mut plain, &mut answers).unwrap();
            assert_eq!(o.key_updates, 1);
            assert!(answers.is_empty(), "ours was update_not_requested");
            assert_eq!(plain, b"under the new key");
            let mut bytes = Vec::new();
            peer.seal(b"client data", &mut bytes).unwrap();
            let mut ev = Received::default();
            assert_eq!(feed(&mut s, &bytes, &[], &mut ev), b"client data");
        }
    }
}

#[test]
fn our_key_update_at_the_confidentiality_limit_is_followed_by_rustls() {
    for (suite, version) in suites() {
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let r = s.records_mut().unwrap();
        let tx = r.seqs().0;
        r.set_tx_limit(tx + 3);
        let mut out = Vec::new();
        let ok = s.encrypt(&vec![7u8; 16384 * 5], &mut out);
        match version_of(version) {
            Version::Tls13 => {
                assert!(ok, "{suite:?}");
                assert_eq!(client_in(&mut c, &out), vec![7u8; 16384 * 5]);
                // The new key restarted the numbering, and two records went under it.
                assert_eq!(s.records_mut().unwrap().seqs().0, 2);
            }
            Version::Tls12 => {
                // No key update in TLS 1.2: the connection ends, with close_notify.
                assert!(!ok, "{suite:?}");
                assert!(s.is_dead());
                // Nothing of the send that hit the limit goes out, only the close_notify.
                assert!(client_in(&mut c, &out).is_empty(), "{suite:?}");
                assert!(c.process_new_packets().unwrap().peer_has_closed());
            }
        }
    }
}

#[test]
fn close_notify_both_ways_on_the_record_layer() {
    for (suite, version) in suites() {
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        assert!(s.owes_close_notify());
        s.close_notify();
        assert!(!s.owes_close_notify());
        let out = server_out(&mut s, &[]);
        let mut rd = &out[..];
        c.read_tls(&mut rd).unwrap();
        assert!(
            c.process_new_packets().unwrap().peer_has_closed(),
            "{suite:?}"
        );
        assert!(!s.encrypt(b"late", &mut Vec::new()));
        // The client's data then close_notify, then bytes after it (ignored).
        c.writer().write_all(b"last words").unwrap();
        c.send_close_notify();
        let mut bytes = client_out(&mut c);
        bytes.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let mut ev = Received::default();
        assert_eq!(feed(&mut s, &bytes, &[], &mut ev), b"last words");
        assert!(ev.peer_closed);
    }
}

/// The session failed with `want`, queued an alert record for the peer and accepts nothing
/// more.
fn assert_failed(s: &mut TlsSession, bytes: &[u8], want: &str) -> Vec<u8> {
    let mut scratch = Vec::new();
    let mut plain = Vec::new();
    let err = match s.receive(bytes, &mut scratch, &mut plain) {
        Err(e) => e,
        Ok(_) => panic!("{want}: accepted"),
    };
    assert!(!err.during_handshake);
    assert!(plain.is_empty(), "{want}: no plaintext of a failed record");
    assert!(
        format!("{}", err.error).contains(want),
        "{want}: got {}",
        err.error
    );
    assert!(s.is_dead());
    let mut out = Vec::new();
    s.encrypt(&[], &mut out);
    assert!(s.receive(b"more", &mut scratch, &mut plain).is_ok());
    assert!(plain.is_empty());
    assert!(!s.encrypt(b"data", &mut Vec::new()));
    out
}

#[test]
fn bad_records_fail_with_an_alert() {
    for (suite, version) in suites() {
        let v = version_of(version);
        let sp = suite_pki(suite, version);
        // A flipped bit in the ciphertext or the tag: bad_record_mac, and the client is told.
        for flip in [6usize, 20, 40] {
            let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
            c.writer().write_all(&[0x55; 30]).unwrap();
            let mut bytes = client_out(&mut c);
            let at = flip.min(bytes.len() - 1);
            bytes[at] ^= 0x01;
            let alert = assert_failed(&mut s, &bytes, "decrypt");
            let mut rd = &alert[..];
            c.read_tls(&mut rd).unwrap();
            let err = c.process_new_packets().unwrap_err();
            assert!(
                format!("{err}").contains("BadRecordMac"),
                "{suite:?}: {err}"
            );
        }
        // A record announcing more than a record may hold: refused before it is buffered.
        let (_, mut s) = handshake(&sp.pki, &|_| Vec::new());
        assert_failed(&mut s, &[23, 3, 3, 0x48, 0x01], "excess record size");
        // A plaintext alert or change_cipher_spec after the handshake (TLS 1.3: unencrypted;
        // TLS 1.2: not authenticated).
        let (_, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let want = if v == Version::Tls13 {
            "unencrypted"
        } else {
            "decrypt"
        };
        assert_failed(&mut s, &[21, 3, 3, 0, 2, 2, 40], want);
        let (_, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let want = if v == Version::Tls13 {
            "unencrypted"
        } else {
            "decrypt"
        };
        assert_failed(&mut s, &[20, 3, 3, 0, 1, 1], want);
        // Authentic records the record layer refuses, sent by a peer with the client's keys.
        let refused: Vec<(u8, Vec<u8>, &str)> = match v {
            Version::Tls13 => vec![
                (21, vec![2, 40], "received fatal alert: HandshakeFailure"),
                (21, vec![1, 40], "received fatal alert: HandshakeFailure"),
                (21, vec![1], "malformed TLS alert"),
                (22, vec![4, 0, 0, 1, 0], "type 4 not accepted"),
                (22, vec![24, 0, 0, 1, 2], "invalid request_update"),
                (22, vec![24, 0, 0, 1, 0, 24, 0, 0, 1, 0], "not alone"),
                (22, vec![24, 0, 0], "malformed"),
                (20, vec![1], "unexpected TLS record type"),
                (0, vec![], "without a content type"),
            ],
            Version::Tls12 => vec![
                (21, vec![2, 40], "received fatal alert: HandshakeFailure"),
                (21, vec![1, 0, 0], "malformed TLS alert"),
                (22, vec![1, 0, 0, 0], "renegotiation"),
                (20, vec![1], "unexpected TLS record type"),
            ],
        };
        for (typ, body, want) in refused {
            let (c, mut s) = handshake(&sp.pki, &|_| Vec::new());
            let mut peer = client_records(c, &sp.keys, v);
            let mut bytes = Vec::new();
            if typ == 0 {
                // Inner plaintext of zeros only: padding without a content type.
                peer.seal_raw(0, &[0, 0, 0], &mut bytes);
            } else {
                peer.seal_raw(typ, &body, &mut bytes);
            }
            let alert = assert_failed(&mut s, &bytes, want);
            if !want.starts_with("received fatal alert") {
                // Our fatal alert reaches the peer, authenticated.
                let mut plain = Vec::new();
                match peer.open(&alert, &mut plain, &mut Vec::new()) {
                    Err(e) => assert!(
                        format!("{}", e.error).contains("received fatal alert"),
                        "{suite:?} {want}: {}",
                        e.error
                    ),
                    Ok(o) => panic!("{suite:?} {want}: no alert ({o:?})"),
                }
            }
        }
        // Warnings the peer may send are not errors: user_canceled (and, TLS 1.2, any warning).
        let (c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let mut peer = client_records(c, &sp.keys, v);
        let mut bytes = Vec::new();
        peer.seal_raw(21, &[1, 90], &mut bytes);
        peer.seal(b"still talking", &mut bytes).unwrap();
        let mut ev = Received::default();
        assert_eq!(feed(&mut s, &bytes, &[], &mut ev), b"still talking");
    }
}

#[test]
fn mutated_records_never_panic_and_fail_cleanly() {
    // A small fuzz loop over the record boundary handling: valid traffic with one byte
    // changed, bytes dropped or duplicated, fed in random pieces. Every outcome is either the
    // exact plaintext or a counted failure with nothing half-delivered after it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    let all = suites();
    for round in 0..120 {
        let (suite, version) = all[round % all.len()];
        let sp = suite_pki(suite, version);
        let (mut c, mut s) = handshake(&sp.pki, &|_| Vec::new());
        let mut msg = Vec::new();
        for i in 0..(1 + rnd(4)) {
            let chunk: Vec<u8> = (0..(1 + rnd(20_000))).map(|k| (k ^ i) as u8).collect();
            c.writer().write_all(&chunk).unwrap();
            msg.extend_from_slice(&chunk);
        }
        let mut bytes = client_out(&mut c);
        let pristine = bytes.clone();
        match rnd(3) {
            0 => {
                let at = rnd(bytes.len());
                bytes[at] ^= 1 << rnd(8);
            }
            1 => {
                let at = rnd(bytes.len());
                bytes.remove(at);
            }
            _ => {
                let at = rnd(bytes.len());
                let b = bytes[at];
                bytes.insert(at, b);
            }
        }
        let mut cuts: Vec<usize> = (0..rnd(8)).map(|_| rnd(bytes.len())).collect();
        cuts.sort_unstable();
        let mut scratch = Vec::new();
        let mut plain = Vec::new();
        let mut at = 0;
        let mut failed = false;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            if s.receive(&bytes[at..cut.max(at)], &mut scratch, &mut plain)
                .is_err()
            {
                failed = true;
                break;
            }
            at = cut.max(at);
        }
        assert!(failed || bytes == pristine || plain.len() < msg.len() || plain == msg);
        // What was delivered is a prefix of what was sent: nothing forged got through.
        assert_eq!(&msg[..plain.len()], &plain[..], "round {round} {suite:?}");
    }
}

#[test]
fn idle_record_layer_session_is_small() {
    let sp = suite_pki(cs::TLS13_AES_256_GCM_SHA384, &rustls::version::TLS13);
    let (_, mut s) = handshake(&sp.pki, &|_| Vec::new());
    s.release_idle();
    // The whole session: raw keys, IVs, secrets and sequence numbers inline, no heap beside.
    assert!(s.on_record_layer());
    assert_eq!(s.buffered_capacity(), 0);
    assert!(!s.records_mut().unwrap().holds_expanded_keys());
    assert!(
        std::mem::size_of::<TlsSession>() <= 384,
        "{}",
        std::mem::size_of::<TlsSession>()
    );
    let _ = Cipher::Aes128Gcm;
}

#[test]
fn queue_entries_are_sealed_across_record_boundaries() {
    // The send queue's entries go into records as one stream (a record may span entries, an
    // entry several records), on the record layer and on the rustls fallback alike.
    let sizes = [1usize, 16383, 2, 40_000, 0, 5, 16384, 64];
    let parts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|k| (k * 3 + i) as u8).collect())
        .collect();
    let whole: Vec<u8> = parts.concat();
    let prepared = suite_pki(cs::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13);
    let tls12 = suite_pki(
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        &rustls::version::TLS12,
    );
    let plain_rustls = pki(&TLS13);
    for (p, on_records) in [
        (&prepared.pki, true),
        (&tls12.pki, true),
        (&plain_rustls, false),
    ] {
        let (mut c, mut s) = handshake(p, &|_| Vec::new());
        assert_eq!(s.on_record_layer(), on_records);
        let before = s.records_mut().map(|r| r.seqs().0);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        assert!(s.encrypt_parts(parts.iter().map(|v| &v[..]), &mut scratch, &mut out));
        assert!(scratch.is_empty());
        assert_eq!(client_in(&mut c, &out), whole);
        if let (Some(before), Some(r)) = (before, s.records_mut()) {
            // Full records of 16 KiB whatever the entries, the last one short.
            assert_eq!(r.seqs().0 - before, whole.len().div_ceil(16384) as u64);
        }
    }
}

#[test]
fn resumed_sessions_move_to_the_record_layer_too() {
    // A resumed handshake (TLS 1.3 PSK, TLS 1.2 session ID) logs its own traffic secrets and
    // hands off like a full one; KeyUpdate works on it.
    for (suite, version) in [
        (cs::TLS13_AES_256_GCM_SHA384, &rustls::version::TLS13),
        (
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        ),
    ] {
        let sp = suite_pki(suite, version);
        let (mut c1, s1) = handshake(&sp.pki, &|_| Vec::new());
        assert_eq!(c1.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert!(s1.on_record_layer());
        // Let the client read everything (TLS 1.3 tickets came with the handshake).
        c1.process_new_packets().unwrap();
        let (mut c2, mut s2) = handshake(&sp.pki, &|_| Vec::new());
        assert_eq!(
            c2.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{suite:?}"
        );
        assert!(s2.on_record_layer(), "{suite:?}");
        if version_of(version) == Version::Tls13 {
            assert!(s2.records_mut().unwrap().key_update_supported());
            c2.refresh_traffic_keys().unwrap();
        }
        c2.writer().write_all(b"resumed").unwrap();
        let bytes = client_out(&mut c2);
        let mut ev = Received::default();
        assert_eq!(feed(&mut s2, &bytes, &[], &mut ev), b"resumed");
        assert_eq!(client_in(&mut c2, &server_out(&mut s2, b"ok")), b"ok");
    }
}
