//! Connecting fails with a clear error: bad URLs and headers, a refused connection, a server
//! that does not answer, and every kind of bad 101.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::*;
use edge_ws_client::{Client, Error};
use edge_ws_protocol::deflate::NegotiationError;
use edge_ws_protocol::handshake::{accept_key, HandshakeError};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn bad_urls_headers_and_settings() {
    let mut cases = vec![
        ("http://127.0.0.1/", "InvalidUrl"),
        ("ws//127.0.0.1/", "InvalidUrl"),
        ("ws://127.0.0.1:99999/", "InvalidUrl"),
        ("ws://127.0.0.1/#x", "InvalidUrl"),
    ];
    // With the `tls` feature wss:// is served (tests/tls.rs).
    if !cfg!(feature = "tls") {
        cases.push(("wss://127.0.0.1/", "TlsNotSupported"));
    }
    for (u, want) in cases {
        let e = Client::connect(u).await.unwrap_err();
        let got = match e {
            Error::InvalidUrl(_) => "InvalidUrl",
            Error::TlsNotSupported => "TlsNotSupported",
            ref other => panic!("{u}: {other}"),
        };
        assert_eq!(got, want, "{u}");
    }
    let e = Client::builder()
        .header("Sec-WebSocket-Key", "x")
        .connect("ws://127.0.0.1:9/")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidHeader(ref n) if n == "Sec-WebSocket-Key"),
        "{e}"
    );
    let e = Client::builder()
        .protocols(["has space"])
        .connect("ws://127.0.0.1:9/")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidProtocol(_)), "{e}");
    let e = Client::builder()
        .write_queue_limit(0)
        .connect("ws://127.0.0.1:9/")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

#[tokio::test]
async fn a_refused_connection() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = within(WAIT, Client::connect(url(addr, "/")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e}");
    assert_eq!(e.io_error().unwrap().kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    let start = Instant::now();
    let e = within(
        WAIT,
        Client::builder()
            .handshake_timeout(Duration::from_millis(200))
            .connect(url(addr, "/")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::HandshakeTimeout(d) if d == Duration::from_millis(200)),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    server.abort();
}

/// A server that reads the upgrade request and answers with `answer(key)`, then closes.
async fn answering(answer: impl Fn(&str) -> String + Send + 'static) -> std::net::SocketAddr {
    let (listener, addr) = raw_listener().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (req, _) = read_request(&mut s).await;
        s.write_all(answer(&req.key).as_bytes()).await.unwrap();
    });
    addr
}

/// How a test server answers an upgrade request with key `key`.
type Answer = Box<dyn Fn(&str) -> String + Send>;

fn switching(key: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_key(key.as_bytes())
    )
}

#[tokio::test]
async fn bad_answers_to_the_upgrade() {
    let cases: Vec<(Answer, &str)> = vec![
        (
            Box::new(|_| "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into()),
            "status 403",
        ),
        (
            Box::new(|_| {
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                    .into()
            }),
            "bad accept",
        ),
        (
            Box::new(|k| switching(k, "").replace("Upgrade: websocket\r\n", "")),
            "missing upgrade",
        ),
        (
            Box::new(|k| switching(k, "Sec-WebSocket-Protocol: never-offered\r\n")),
            "unexpected protocol",
        ),
        (
            Box::new(|k| {
                switching(
                    k,
                    "Sec-WebSocket-Extensions: permessage-deflate; bogus=1\r\n",
                )
            }),
            "bad deflate answer",
        ),
        (Box::new(|_| "HTTP/1.1 101 Switch".into()), "closed early"),
        (Box::new(|_| "NOT HTTP AT ALL\r\n\r\n".into()), "malformed"),
    ];
    for (answer, what) in cases {
        let addr = answering(answer).await;
        let e = within(WAIT, Client::connect(url(addr, "/")))
            .await
            .unwrap_err();
        let ok = match what {
            "status 403" => matches!(e, Error::Handshake(HandshakeError::BadStatus(403))),
            "bad accept" => matches!(e, Error::Handshake(HandshakeError::BadAccept)),
            "missing upgrade" => matches!(e, Error::Handshake(HandshakeError::MissingUpgrade)),
            "unexpected protocol" => {
                matches!(e, Error::Handshake(HandshakeError::UnexpectedProtocol))
            }
            "bad deflate answer" => {
                matches!(e, Error::Deflate(NegotiationError::UnknownParam(ref p)) if p == "bogus")
            }
            "closed early" => matches!(e, Error::HandshakeEof),
            "malformed" => matches!(e, Error::Handshake(HandshakeError::Malformed)),
            _ => unreachable!(),
        };
        assert!(ok, "{what}: got {e:?}");
    }
    // Without a deflate offer, a deflate answer is refused by the handshake itself.
    let addr =
        answering(|k| switching(k, "Sec-WebSocket-Extensions: permessage-deflate\r\n")).await;
    let e = within(
        WAIT,
        Client::builder().deflate(None).connect(url(addr, "/")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::Handshake(HandshakeError::UnexpectedExtension)),
        "{e:?}"
    );
}
