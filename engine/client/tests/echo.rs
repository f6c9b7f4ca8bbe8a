//! Echo through the real engine: text, binary and 1 MiB messages with and without
//! permessage-deflate, subprotocols and headers, the Stream/Sink impls and split halves, on
//! current-thread and multi-thread runtimes.

mod common;

use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use common::*;
use edge_ws::{Rejection, Upgrade, UpgradeRequest};
use edge_ws_client::{Client, DeflateConfig, Error, Message};
use edge_ws_protocol::handshake::HandshakeError;
use futures_core::Stream;
use futures_sink::Sink;

/// 1 MiB of text that compresses well, and 1 MiB of bytes that do not (xorshift).
fn large_payloads() -> (String, Vec<u8>) {
    let text: String = (0..)
        .map(|i| format!("line {i} of a large message\n"))
        .take_while({
            let mut len = 0;
            move |l: &String| {
                len += l.len();
                len <= 1 << 20
            }
        })
        .collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bin = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (text, bin)
}

async fn echo_all(ws: &mut edge_ws_client::WebSocket) {
    let (text, bin) = large_payloads();
    let msgs = vec![
        Message::text("hello"),
        Message::binary(&b"\x00\x01\x02\xff"[..]),
        Message::text(""),
        Message::binary(Bytes::new()),
        Message::text("ünïcødé ✓"),
        Message::text(text),
        Message::binary(bin),
    ];
    for m in &msgs {
        within(WAIT, ws.send(m.clone())).await.unwrap();
    }
    for m in &msgs {
        let got = within(WAIT, ws.recv())
            .await
            .expect("open")
            .expect("no error");
        assert_eq!(&got, m);
    }
}

#[tokio::test]
async fn echoes_text_binary_and_large_without_deflate() {
    let engine = echo_engine(engine_config());
    let mut ws = within(
        WAIT,
        Client::builder()
            .deflate(None)
            .connect(url(engine.local_addr(), "/")),
    )
    .await
    .unwrap();
    assert_eq!(ws.info().deflate, None);
    assert_eq!(ws.protocol(), None);
    echo_all(&mut ws).await;
    let stats = ws.stats();
    assert_eq!(stats.messages_queued, 7);
    assert_eq!(stats.messages_sent, 7);
    assert_eq!(stats.messages_received, 7);
    assert_eq!(ws.buffered_amount(), 0);
    within(WAIT, ws.close(1000, "done")).await.unwrap();
    let m = engine.handle().metrics();
    assert_eq!((m.messages_in, m.compressed_out), (7, 0));
}

#[tokio::test]
async fn echoes_with_permessage_deflate() {
    let mut cfg = engine_config();
    cfg.deflate = Some(DeflateConfig::default());
    let engine = echo_engine(cfg);
    // The default builder offers permessage-deflate.
    let mut ws = within(WAIT, Client::connect(url(engine.local_addr(), "/")))
        .await
        .unwrap();
    let params = ws.info().deflate.expect("deflate agreed");
    assert_eq!(params.server_max_window_bits, 15);
    echo_all(&mut ws).await;
    within(WAIT, ws.close(1000, "")).await.unwrap();
    let m = engine.handle().metrics();
    assert_eq!(m.messages_in, 7);
    // The server compressed the two echoes above its 128-byte threshold (the 1 MiB ones);
    // they inflated back to what was sent.
    assert_eq!(m.compressed_out, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    let mut cfg = engine_config();
    cfg.deflate = Some(DeflateConfig::default());
    let engine = echo_engine(cfg);
    let mut ws = within(WAIT, Client::connect(url(engine.local_addr(), "/")))
        .await
        .unwrap();
    echo_all(&mut ws).await;
    within(WAIT, ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn subprotocols_and_headers() {
    struct NeedsToken;
    impl edge_ws::Handler for NeedsToken {
        fn on_upgrade(&mut self, req: &UpgradeRequest<'_>) -> Upgrade {
            match req.request.header("x-token") {
                Some("s3cret") => Upgrade::Accept(None),
                _ => Upgrade::Reject(Rejection::new(401, "no token")),
            }
        }
        fn on_message(&mut self, socket: &mut edge_ws::Socket<'_, '_>, m: edge_ws::Message) {
            let _ = socket.send(&m);
        }
    }
    let mut cfg = engine_config();
    cfg.subprotocols = vec!["b".into(), "c".into()];
    let engine = edge_ws::Engine::builder()
        .config(cfg)
        .build(|_| NeedsToken)
        .unwrap();
    let u = url(engine.local_addr(), "/room?id=7");

    let err = within(WAIT, Client::connect(&u)).await.unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::BadStatus(401))),
        "{err}"
    );

    let client = Client::builder().header("X-Token", "s3cret");
    let ws = within(WAIT, client.clone().protocols(["a", "c"]).connect(&u))
        .await
        .unwrap();
    assert_eq!(ws.protocol(), Some("c"));
    within(WAIT, ws.close(1000, "")).await.unwrap();

    let req = edge_ws_client::Request::new(&u).unwrap().protocol("x");
    let mut ws = within(WAIT, client.connect(req)).await.unwrap();
    assert_eq!(ws.protocol(), None);
    ws.send("still works").await.unwrap();
    assert_eq!(
        within(WAIT, ws.recv()).await.unwrap().unwrap(),
        Message::text("still works")
    );
}

#[tokio::test]
async fn stream_sink_and_split_halves() {
    let engine = echo_engine(engine_config());
    let mut ws = within(WAIT, Client::connect(url(engine.local_addr(), "/")))
        .await
        .unwrap();

    // Sink: ready, send, flush (everything written), then Stream: the echo.
    within(
        WAIT,
        std::future::poll_fn(|cx| Sink::<Message>::poll_ready(Pin::new(&mut ws), cx)),
    )
    .await
    .unwrap();
    Pin::new(&mut ws).start_send("via sink").unwrap();
    within(
        WAIT,
        std::future::poll_fn(|cx| Sink::<Message>::poll_flush(Pin::new(&mut ws), cx)),
    )
    .await
    .unwrap();
    assert_eq!(ws.buffered_amount(), 0);
    let got = within(
        WAIT,
        std::future::poll_fn(|cx| Pin::new(&mut ws).poll_next(cx)),
    )
    .await;
    assert_eq!(got.unwrap().unwrap(), Message::text("via sink"));

    // Split: clones of the sender write from two tasks, the receiver reads all.
    let (tx, mut rx) = ws.split();
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    tx.send(format!("{t}:{i}")).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        within(WAIT, t).await.unwrap();
    }
    let mut next = [0, 0];
    for _ in 0..100 {
        let m = within(WAIT, rx.recv()).await.unwrap().unwrap();
        let (t, i) = m.as_text().unwrap().split_once(':').unwrap();
        let t: usize = t.parse().unwrap();
        // Each sender's messages arrive in its order.
        assert_eq!(i.parse::<usize>().unwrap(), next[t]);
        next[t] += 1;
    }
    assert_eq!(next, [50, 50]);

    // Sink::poll_close on a sender closes the connection with 1000.
    let mut tx = tx;
    within(
        WAIT,
        std::future::poll_fn(|cx| Sink::<Message>::poll_close(Pin::new(&mut tx), cx)),
    )
    .await
    .unwrap();
    assert!(within(WAIT, rx.recv()).await.is_none());
    let info = rx.close_info().unwrap();
    assert_eq!((info.code.0, info.clean), (1000, true));
    assert!(matches!(tx.try_send("late"), Err(Error::Closed)));
    // Stream ends too.
    let end = std::future::poll_fn(|cx| match Pin::new(&mut rx).poll_next(cx) {
        Poll::Ready(x) => Poll::Ready(x.is_none()),
        Poll::Pending => Poll::Ready(false),
    })
    .await;
    assert!(end);
}

#[tokio::test]
async fn dropping_every_handle_closes_with_1000() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let ws = within(WAIT, Client::connect(url(engine.local_addr(), "/")))
        .await
        .unwrap();
    let Seen::Open(id) = next_seen(&mut seen).await else {
        panic!("open first")
    };
    ws.send("last words").await.unwrap();
    drop(ws);
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Text(id, "last words".into())
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 1000, String::new())
    );
}
