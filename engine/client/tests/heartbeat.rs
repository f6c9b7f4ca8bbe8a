//! Pings both ways: the server's heartbeat is answered by a client that only sends, our
//! keepalive keeps a quiet connection up, and a server that never answers pings makes the
//! pong timeout fire.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use edge_ws::{Handler, Message as EngineMessage, Socket};
use edge_ws_client::{Client, Error, Side};
use edge_ws_protocol::Message as Frame;

/// Takes messages and answers nothing (so nothing but pings reaches the client).
struct Sink;

impl Handler for Sink {
    fn on_message(&mut self, _: &mut Socket<'_, '_>, _: EngineMessage) {}
}

#[tokio::test]
async fn a_client_that_only_sends_still_answers_the_servers_pings() {
    let mut cfg = engine_config();
    cfg.heartbeat_interval = Some(Duration::from_millis(100));
    cfg.heartbeat_timeout = Duration::from_millis(200);
    let engine = edge_ws::Engine::builder()
        .config(cfg)
        .build(|_| Sink)
        .unwrap();
    let ws = within(
        WAIT,
        Client::builder()
            .keepalive(None, Duration::from_secs(1))
            .connect(url(engine.local_addr(), "/")),
    )
    .await
    .unwrap();
    // Send every 400 ms for 3.2 s and never call recv. The engine scans its timers every
    // 250 ms and pings after 100 ms of silence, so at least once per gap.
    for i in 0..8 {
        ws.send(format!("tick {i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let m = engine.handle().metrics();
    assert_eq!(m.heartbeat_timeouts, 0);
    assert_eq!(m.messages_in, 8);
    assert_eq!(engine.handle().connections(), 1);
    let stats = ws.stats();
    assert!(stats.pongs_sent >= 6, "{stats:?}");
    assert_eq!(stats.pings_sent, 0);
    assert!(ws.close_info().is_none());
    within(WAIT, ws.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn keepalive_pings_keep_a_quiet_connection_up() {
    let engine = echo_engine(engine_config());
    let mut ws = within(
        WAIT,
        Client::builder()
            .keepalive(Some(Duration::from_millis(100)), Duration::from_millis(300))
            .connect(url(engine.local_addr(), "/")),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Nothing came from the server but pongs: about one ping per 100 ms of silence.
    let stats = ws.stats();
    assert!((5..=13).contains(&stats.pings_sent), "{stats:?}");
    assert!(ws.close_info().is_none());
    ws.send("alive").await.unwrap();
    assert_eq!(
        within(WAIT, ws.recv()).await.unwrap().unwrap().as_text(),
        Some("alive")
    );
    // The engine counted our pings (one more may have gone out since `stats`).
    let pings_in = engine.handle().metrics().pings_in;
    assert!(
        (stats.pings_sent..=stats.pings_sent + 1).contains(&pings_in),
        "{pings_in} vs {stats:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_pings_hits_the_pong_timeout() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut peer = RawPeer::accept(&listener).await;
        let mut frames = Vec::new();
        while let Some(f) = peer.next().await {
            frames.push(f);
        }
        frames
    });
    let start = Instant::now();
    let mut ws = within(
        WAIT,
        Client::builder()
            .keepalive(Some(Duration::from_millis(100)), Duration::from_millis(200))
            .connect(url(addr, "/")),
    )
    .await
    .unwrap();
    let end = within(WAIT, ws.recv()).await;
    let took = start.elapsed();
    assert!(matches!(end, Some(Err(Error::PongTimeout))), "{end:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(within(WAIT, ws.recv()).await.is_none());
    let info = ws.close_info().unwrap();
    assert_eq!(info.code.0, 4002);
    assert_eq!(info.initiated_by, Side::Local);
    assert!(!info.clean);
    // The server saw exactly one ping, then the 4002 close, then TCP closed.
    let frames = within(WAIT, server).await.unwrap();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0], Frame::Ping(Bytes::new()));
    assert!(matches!(&frames[1], Frame::Close(Some(c)) if c.code.0 == 4002));
    assert!(matches!(ws.send("late").await, Err(Error::Closed)));
    assert!(matches!(
        within(WAIT, ws.close(1000, "")).await,
        Err(Error::PongTimeout)
    ));
}
