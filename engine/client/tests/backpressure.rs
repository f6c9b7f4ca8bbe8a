//! Bounded queues both ways: a server that does not read makes `send` wait and `try_send`
//! fail with the client's memory bounded; an application that does not read makes the client
//! stop reading, so a flooding server is held back by TCP.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use edge_ws_client::{Client, Error, Message};
use edge_ws_protocol::codec::server_frame;
use edge_ws_protocol::OpCode;

const LIMIT: usize = 256 << 10;
const MSG: usize = 64 << 10;

fn numbered(i: u64) -> Message {
    let mut payload = vec![0u8; MSG];
    payload[..8].copy_from_slice(&i.to_be_bytes());
    Message::binary(payload)
}

#[tokio::test]
async fn a_server_that_does_not_read_makes_send_wait() {
    let (listener, addr) = raw_listener().await;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut peer = RawPeer::accept(&listener).await;
        // Do not read until told to.
        go_rx.await.unwrap();
        let mut numbers = Vec::new();
        while let Some(m) = peer.next().await {
            match m {
                edge_ws_protocol::Message::Binary(b) => {
                    assert_eq!(b.len(), MSG);
                    numbers.push(u64::from_be_bytes(b[..8].try_into().unwrap()));
                }
                edge_ws_protocol::Message::Close(_) => {
                    // Answer the close, then close TCP first, as a server does.
                    peer.write(&server_frame(OpCode::Close, &1000u16.to_be_bytes()))
                        .await;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        numbers
    });
    let ws = within(
        WAIT,
        Client::builder()
            .deflate(None)
            .write_queue_limit(LIMIT)
            .connect(url(addr, "/")),
    )
    .await
    .unwrap();

    // Fill the kernel's buffers, then the client's queue, with try_send.
    let mut sent = 0u64;
    let deadline = Instant::now() + WAIT;
    let mut blocked_since = None;
    loop {
        assert!(Instant::now() < deadline, "the write queue never filled");
        assert!(sent < 2000, "128 MiB accepted: the queue is not bounded");
        match ws.try_send(numbered(sent)) {
            Ok(()) => {
                sent += 1;
                blocked_since = None;
                // Memory stays bounded: at most the limit plus one message waits.
                assert!(
                    ws.buffered_amount() < LIMIT + 2 * MSG,
                    "{}",
                    ws.buffered_amount()
                );
            }
            Err(Error::WouldBlock) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let held = ws.buffered_amount();
    assert!((LIMIT..LIMIT + 2 * MSG).contains(&held), "{held}");
    // send() waits while the queue is full.
    let r = tokio::time::timeout(Duration::from_millis(300), ws.send(numbered(sent))).await;
    assert!(r.is_err(), "send returned while the queue was full");

    // Once the server reads, the waiting send goes through and everything arrives in order.
    go_tx.send(()).unwrap();
    within(WAIT, ws.send(numbered(sent))).await.unwrap();
    sent += 1;
    within(WAIT, ws.close(1000, "")).await.unwrap();
    let numbers = within(WAIT, server).await.unwrap();
    assert_eq!(numbers, (0..sent).collect::<Vec<_>>());
    let stats = ws.stats();
    assert_eq!(
        (stats.messages_sent, stats.unsent, stats.lost_in_flight),
        (sent, 0, 0)
    );
}

#[tokio::test]
async fn an_application_that_does_not_read_holds_the_server_back() {
    const N: u64 = 2048;
    const SIZE: usize = 16 << 10;
    let (listener, addr) = raw_listener().await;
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let server = tokio::spawn(async move {
        let mut peer = RawPeer::accept(&listener).await;
        // Flood: a ping, then 32 MiB of 16 KiB messages as fast as the client takes them.
        peer.write(&server_frame(OpCode::Ping, b"are you there"))
            .await;
        for i in 0..N {
            let mut payload = vec![b'x'; SIZE];
            payload[..8].copy_from_slice(&i.to_be_bytes());
            peer.write(&server_frame(OpCode::Binary, &payload)).await;
            counter.fetch_add(SIZE as u64, Ordering::Relaxed);
        }
        let mut frames = Vec::new();
        while let Some(m) = peer.next().await {
            let close = matches!(m, edge_ws_protocol::Message::Close(_));
            frames.push(m);
            if close {
                peer.write(&server_frame(OpCode::Close, &1000u16.to_be_bytes()))
                    .await;
                break;
            }
        }
        frames
    });
    let mut ws = within(
        WAIT,
        Client::builder()
            .deflate(None)
            .read_queue_limit(64, 256 << 10)
            .connect(url(addr, "/")),
    )
    .await
    .unwrap();
    // Do not read for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = written.load(Ordering::Relaxed);
    // Without backpressure all 32 MiB would be through by now; with it, the server is stuck
    // behind the client's bounded queue and the kernel's socket buffers.
    assert!(out < 24 << 20, "{out} bytes went out unread");
    let stats = ws.stats();
    // 256 KiB of 16 KiB messages, plus the one that crossed the limit.
    assert!(stats.messages_received <= 17, "{stats:?}");
    assert_eq!(
        stats.pongs_sent, 1,
        "the ping read before the flood was answered"
    );

    // Now read everything, in order.
    for i in 0..N {
        let m = within(WAIT, ws.recv()).await.unwrap().unwrap();
        let Message::Binary(b) = m else {
            panic!("binary expected")
        };
        assert_eq!(b.len(), SIZE);
        assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), i);
    }
    within(WAIT, ws.close(1000, "")).await.unwrap();
    let frames = within(WAIT, server).await.unwrap();
    assert_eq!(
        frames[0],
        edge_ws_protocol::Message::Pong(Bytes::from_static(b"are you there"))
    );
    assert!(matches!(&frames[1], edge_ws_protocol::Message::Close(Some(c)) if c.code.0 == 1000));
    assert_eq!(ws.stats().messages_received, N);
}
