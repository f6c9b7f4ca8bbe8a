//! `wss://` against the real engine's TLS listener, with a CA made by this test (rcgen):
//! echo (small, 1 MiB, compressed), SNI, the reconnecting client, and clear errors for a
//! certificate that is expired, for another name, or from a CA the client does not trust.

mod common;

use std::time::Duration;

use common::*;
use edge_ws::tls::TlsConfig;
use edge_ws::Engine;
use edge_ws_client::{Client, ClientBuilder, Error, Message, ReconnectEvent};

/// A test CA and leaf certificates it signs.
struct Pki {
    ca: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "edge-ws client test CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        Pki { ca, ca_key, ca_pem }
    }

    /// `(cert PEM, key PEM)` for `names`, valid over `[from, to]` (years) when given.
    fn leaf(&self, names: &[&str], years: Option<(i32, i32)>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let issuer = rcgen::Issuer::from_params(&self.ca, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client(&self) -> ClientBuilder {
        Client::builder()
            .tls_ca_pem(self.ca_pem.as_bytes())
            .unwrap()
    }
}

fn tls_engine(cert: &str, key: &str) -> Engine {
    let mut cfg = engine_config();
    cfg.deflate = Some(Default::default());
    cfg.tls = Some(
        TlsConfig::from_pem(
            "127.0.0.1:0".parse().unwrap(),
            cert.as_bytes(),
            key.as_bytes(),
        )
        .unwrap(),
    );
    echo_engine(cfg)
}

fn wss(e: &Engine, path: &str) -> String {
    format!(
        "wss://localhost:{}{path}",
        e.tls_local_addr().unwrap().port()
    )
}

#[tokio::test]
async fn wss_echo_with_a_private_ca() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"], None);
    let e = tls_engine(&cert, &key);
    for deflate in [None, Some(edge_ws_client::DeflateConfig::default())] {
        let mut ws = within(
            WAIT,
            pki.client().deflate(deflate.clone()).connect(wss(&e, "/")),
        )
        .await
        .unwrap();
        assert_eq!(ws.info().deflate.is_some(), deflate.is_some());
        for i in 0..20 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            let m = within(WAIT, ws.recv()).await.unwrap().unwrap();
            assert_eq!(m.as_text(), Some(format!("hello {i}").as_str()));
        }
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        let m = within(WAIT, ws.recv()).await.unwrap().unwrap();
        assert_eq!(m.as_bytes(), &big[..]);
        within(WAIT, ws.close(1000, "done")).await.unwrap();
    }
    let m = e.handle().metrics();
    assert_eq!(m.tls_handshakes, 2);
    e.handle().shutdown();
}

#[tokio::test]
async fn reconnecting_client_over_wss() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"], None);
    let e = tls_engine(&cert, &key);
    let mut c = pki
        .client()
        .reconnecting(wss(&e, "/"))
        .max_attempts(Some(3))
        .start()
        .unwrap();
    match within(WAIT, c.events().next()).await {
        Some(ReconnectEvent::Connected { connects: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
    c.send(Message::text("over tls")).await.unwrap();
    let m = within(WAIT, c.recv()).await.unwrap().unwrap();
    assert_eq!(m.as_text(), Some("over tls"));
    within(WAIT, c.close(1000, "bye")).await.unwrap();
    e.handle().shutdown();
}

async fn tls_error(builder: ClientBuilder, url: String) -> String {
    match within(WAIT, builder.connect(url)).await {
        Err(Error::Tls { host, reason }) => {
            assert_eq!(host, "localhost");
            reason
        }
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("connected with a bad certificate"),
    }
}

#[tokio::test]
async fn bad_certificates_fail_clearly() {
    let pki = Pki::new();
    // Expired.
    let (cert, key) = pki.leaf(&["localhost"], Some((2001, 2002)));
    let e = tls_engine(&cert, &key);
    let reason = tls_error(pki.client(), wss(&e, "/")).await;
    assert!(reason.to_lowercase().contains("expired"), "{reason}");
    e.handle().shutdown();
    // For another name.
    let (cert, key) = pki.leaf(&["other.example.test"], None);
    let e = tls_engine(&cert, &key);
    let reason = tls_error(pki.client(), wss(&e, "/")).await;
    assert!(reason.contains("not valid for name"), "{reason}");
    // From a CA the client does not trust: the default roots (Mozilla's) do not know it.
    let (cert, key) = pki.leaf(&["localhost"], None);
    let e2 = tls_engine(&cert, &key);
    let reason = tls_error(Client::builder(), wss(&e2, "/")).await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    // The server counted the failed handshakes (the client's alerts) and serves on.
    let deadline = std::time::Instant::now() + WAIT;
    while e2.handle().metrics().tls_handshake_failures < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ws = within(WAIT, pki.client().connect(wss(&e2, "/")))
        .await
        .unwrap();
    within(WAIT, ws.close(1000, "")).await.unwrap();
    e.handle().shutdown();
    e2.handle().shutdown();
}

#[tokio::test]
async fn ca_pem_errors_are_clear() {
    let e = Client::builder().tls_ca_pem(b"no pem here").unwrap_err();
    assert!(
        matches!(e, Error::Config(ref s) if s.contains("CA PEM")),
        "{e}"
    );
}
