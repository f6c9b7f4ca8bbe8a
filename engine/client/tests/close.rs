//! The close handshake both ways with codes and reasons, its timeout, and a server that breaks
//! the protocol.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edge_ws_client::{Client, Error, Side};
use edge_ws_protocol::codec::server_frame;
use edge_ws_protocol::{FrameHeader, OpCode, ProtocolError};

#[tokio::test]
async fn the_client_closes_with_a_code_and_reason() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let mut ws = within(WAIT, Client::connect(url(engine.local_addr(), "/")))
        .await
        .unwrap();
    let Seen::Open(id) = next_seen(&mut seen).await else {
        panic!("open first")
    };
    ws.send("before close").await.unwrap();
    within(WAIT, ws.close(4321, "see you")).await.unwrap();
    // What was queued before the close arrived before it.
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Text(id, "before close".into())
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 4321, "see you".into())
    );
    let info = ws.close_info().unwrap();
    assert_eq!(info.code.0, 4321);
    assert_eq!(info.reason, "see you");
    assert_eq!(info.initiated_by, Side::Local);
    assert!(info.clean);
    assert_eq!(info.peer(), None);
    assert!(within(WAIT, ws.recv()).await.is_none());
    assert!(matches!(ws.send("after").await, Err(Error::Closed)));
    assert!(matches!(ws.try_send("after"), Err(Error::Closed)));
    // Closing again reports the same clean end.
    within(WAIT, ws.close(1000, "")).await.unwrap();
    assert!(
        wait_for(|| engine.handle().connections() == 0).await,
        "the server saw TCP closed"
    );
}

#[tokio::test]
async fn the_server_closes_with_a_code_and_reason() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let u = url(engine.local_addr(), "/");

    // The handler closes from on_message.
    let mut ws = within(WAIT, Client::connect(&u)).await.unwrap();
    let Seen::Open(_) = next_seen(&mut seen).await else {
        panic!("open first")
    };
    ws.send("echo:one").await.unwrap();
    ws.send("close:4100").await.unwrap();
    assert_eq!(
        within(WAIT, ws.recv()).await.unwrap().unwrap().as_text(),
        Some("one")
    );
    assert!(within(WAIT, ws.recv()).await.is_none());
    let info = ws.close_info().unwrap();
    assert_eq!(
        info.peer(),
        Some((edge_ws_client::CloseCode(4100), "asked to"))
    );
    assert!(info.clean);
    within(WAIT, ws.close(1000, "")).await.unwrap();

    // The engine's handle closes it from outside.
    let mut ws = within(WAIT, Client::connect(&u)).await.unwrap();
    let id = loop {
        if let Seen::Open(id) = next_seen(&mut seen).await {
            break id;
        }
    };
    assert!(engine
        .handle()
        .close(id, edge_ws::CloseCode(3001), "from outside"));
    assert!(within(WAIT, ws.recv()).await.is_none());
    let info = ws.close_info().unwrap();
    assert_eq!((info.code.0, info.reason.as_str()), (3001, "from outside"));
    assert_eq!(info.initiated_by, Side::Peer);
    assert!(matches!(ws.send("late").await, Err(Error::Closed)));
}

#[tokio::test]
async fn the_close_handshake_times_out_against_a_silent_server() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut peer = RawPeer::accept(&listener).await;
        // Read the close and never answer it; keep the socket open.
        let close = peer.next().await;
        let end = peer.next().await;
        (close, end)
    });
    let ws = within(
        WAIT,
        Client::builder()
            .close_timeout(Duration::from_millis(300))
            .connect(url(addr, "/")),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let r = within(WAIT, ws.close(1000, "bye")).await;
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::CloseTimeout)), "{r:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let (close, end) = within(WAIT, server).await.unwrap();
    assert!(matches!(close, Some(edge_ws_protocol::Message::Close(Some(c))) if c.code.0 == 1000));
    assert_eq!(end, None, "the client dropped TCP after the timeout");
    let info = ws.close_info().unwrap();
    assert_eq!((info.code.0, info.clean), (1000, false));
}

#[tokio::test]
async fn a_server_protocol_error_fails_the_connection_with_its_code() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut peer = RawPeer::accept(&listener).await;
        peer.write(&server_frame(OpCode::Text, b"fine")).await;
        // Servers must not mask (RFC 6455 §5.1).
        let header = FrameHeader {
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::new(OpCode::Text, 3)
        };
        let mut frame = bytes::BytesMut::new();
        header.encode_into(&mut frame);
        frame.extend_from_slice(b"bad");
        peer.write(&frame).await;
        let close = peer.next().await;
        let end = peer.next().await;
        (close, end)
    });
    let mut ws = within(WAIT, Client::connect(url(addr, "/"))).await.unwrap();
    assert_eq!(
        within(WAIT, ws.recv()).await.unwrap().unwrap().as_text(),
        Some("fine")
    );
    let r = within(WAIT, ws.recv()).await;
    assert!(
        matches!(r, Some(Err(Error::Protocol(ProtocolError::MaskedFrame)))),
        "{r:?}"
    );
    assert!(within(WAIT, ws.recv()).await.is_none());
    let (close, end) = within(WAIT, server).await.unwrap();
    assert!(matches!(close, Some(edge_ws_protocol::Message::Close(Some(c))) if c.code.0 == 1002));
    assert_eq!(end, None, "the client closed TCP after its close frame");
    let info = ws.close_info().unwrap();
    assert_eq!(
        (info.code.0, info.initiated_by, info.clean),
        (1002, Side::Local, false)
    );
}

#[tokio::test]
async fn a_lost_connection_is_reported() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let peer = RawPeer::accept(&listener).await;
        drop(peer);
    });
    let mut ws = within(WAIT, Client::connect(url(addr, "/"))).await.unwrap();
    within(WAIT, server).await.unwrap();
    let r = within(WAIT, ws.recv()).await;
    assert!(matches!(r, Some(Err(Error::ConnectionLost))), "{r:?}");
    assert!(within(WAIT, ws.recv()).await.is_none());
    let info = ws.close_info().unwrap();
    assert_eq!((info.code.0, info.clean), (1006, false));
}

/// Polls `f` every 10 ms for up to [`WAIT`].
async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
