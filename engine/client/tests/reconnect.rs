//! The reconnecting client against the real engine: close codes decide (4000 reconnect, 4500
//! stop, 1000/1001 as configured), `on_connect` messages go first on every connection,
//! messages sent while disconnected wait for the next one, and a restarted server is found
//! again with growing, capped delays.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use edge_ws::CloseCode;
use edge_ws_client::{
    Backoff, Client, ClientBuilder, Error, Events, Jitter, Message, ReconnectEvent,
};
use tokio::sync::mpsc;

fn fast_backoff(base_ms: u64, cap_ms: u64) -> Backoff {
    Backoff {
        base: Duration::from_millis(base_ms),
        factor: 2.0,
        cap: Duration::from_millis(cap_ms),
        jitter: Jitter::None,
    }
}

async fn next_event(events: &mut Events) -> ReconnectEvent {
    within(WAIT, events.next()).await.expect("client running")
}

/// The next open connection's id, skipping nothing else.
async fn expect_open(seen: &mut mpsc::UnboundedReceiver<Seen>) -> edge_ws::ConnectionId {
    match next_seen(seen).await {
        Seen::Open(id) => id,
        other => panic!("expected an open, saw {other:?}"),
    }
}

#[tokio::test]
async fn close_4000_reconnects_and_resubscribes() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let mut client = Client::reconnecting(url(engine.local_addr(), "/feed"))
        .backoff(fast_backoff(20, 200))
        .on_connect(|_| vec![Message::text("sub:a"), Message::text("sub:b")])
        .start()
        .unwrap();
    // Queued before the first connection: goes after the on_connect messages.
    client.send("hello").await.unwrap();

    let id1 = expect_open(&mut seen).await;
    for t in ["sub:a", "sub:b", "hello"] {
        assert_eq!(next_seen(&mut seen).await, Seen::Text(id1, t.into()));
    }
    let ev = next_event(client.events()).await;
    assert!(
        matches!(ev, ReconnectEvent::Connected { connects: 1, .. }),
        "{ev:?}"
    );

    assert!(engine.handle().close(id1, CloseCode(4000), "move along"));
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id1, 4000, "move along".into())
    );
    let ev = next_event(client.events()).await;
    match ev {
        ReconnectEvent::Disconnected {
            code,
            reason,
            error,
            retry_in,
        } => {
            assert_eq!((code.0, reason.as_str()), (4000, "move along"));
            assert!(error.is_none());
            assert_eq!(retry_in, Some(Duration::from_millis(20)));
        }
        other => panic!("{other:?}"),
    }
    let ev = next_event(client.events()).await;
    assert!(
        matches!(ev, ReconnectEvent::Connected { connects: 2, .. }),
        "{ev:?}"
    );

    // The subscription is made again on the new connection, first.
    let id2 = expect_open(&mut seen).await;
    assert_ne!(id1, id2);
    assert_eq!(next_seen(&mut seen).await, Seen::Text(id2, "sub:a".into()));
    assert_eq!(next_seen(&mut seen).await, Seen::Text(id2, "sub:b".into()));
    client.send("echo:after").await.unwrap();
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Text(id2, "echo:after".into())
    );
    assert_eq!(
        within(WAIT, client.recv()).await.unwrap().unwrap(),
        Message::text("after")
    );

    // The application's close stops it: no reconnect.
    within(WAIT, client.close(1000, "done")).await.unwrap();
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id2, 1000, "done".into())
    );
    assert!(within(WAIT, client.recv()).await.is_none());
    assert!(within(WAIT, client.events().next()).await.is_none());
    let stats = client.stats();
    assert_eq!(stats.connects, 2);
    assert_eq!((stats.unsent, stats.lost_in_flight), (0, 0));
    assert!(matches!(client.try_send("x"), Err(Error::Closed)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.try_recv().is_err(), "no third connection");
}

#[tokio::test]
async fn close_4500_stops_with_the_reason() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let mut client = Client::reconnecting(url(engine.local_addr(), "/"))
        .backoff(fast_backoff(10, 100))
        .start()
        .unwrap();
    let id = expect_open(&mut seen).await;
    assert!(matches!(
        next_event(client.events()).await,
        ReconnectEvent::Connected { connects: 1, .. }
    ));
    assert!(engine.handle().close(id, CloseCode(4500), "banned"));
    let ev = next_event(client.events()).await;
    assert!(
        matches!(&ev, ReconnectEvent::Disconnected { code, reason, retry_in: None, .. }
            if code.0 == 4500 && reason == "banned"),
        "{ev:?}"
    );
    let ev = next_event(client.events()).await;
    assert!(
        matches!(&ev, ReconnectEvent::GaveUp { error: Error::ServerStopped { code, reason } }
            if code.0 == 4500 && reason == "banned"),
        "{ev:?}"
    );
    let r = within(WAIT, client.recv()).await;
    assert!(
        matches!(&r, Some(Err(Error::ServerStopped { code, .. })) if code.0 == 4500),
        "{r:?}"
    );
    assert!(within(WAIT, client.recv()).await.is_none());
    assert!(within(WAIT, client.events().next()).await.is_none());
    assert!(matches!(
        client.send("x").await,
        Err(Error::ServerStopped { .. })
    ));
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 4500, "banned".into())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "it did not reconnect");
}

#[tokio::test]
async fn a_normal_close_reconnects_only_if_configured() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let u = url(engine.local_addr(), "/");

    let mut stays = Client::reconnecting(&u)
        .backoff(fast_backoff(10, 100))
        .start()
        .unwrap();
    let id = expect_open(&mut seen).await;
    stays.send("close:1000").await.unwrap();
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Text(id, "close:1000".into())
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 1000, "asked to".into())
    );
    let r = within(WAIT, stays.recv()).await;
    assert!(
        matches!(&r, Some(Err(Error::ServerClosed { code, .. })) if code.0 == 1000),
        "{r:?}"
    );

    let mut goes = Client::reconnecting(&u)
        .backoff(fast_backoff(10, 100))
        .reconnect_on_normal_close(true)
        .start()
        .unwrap();
    let id = expect_open(&mut seen).await;
    goes.send("close:1000").await.unwrap();
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Text(id, "close:1000".into())
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 1000, "asked to".into())
    );
    let id2 = expect_open(&mut seen).await;
    assert_ne!(id, id2);
    let events: Vec<_> = [
        next_event(goes.events()).await,
        next_event(goes.events()).await,
        next_event(goes.events()).await,
    ]
    .into();
    assert!(matches!(
        events[0],
        ReconnectEvent::Connected { connects: 1, .. }
    ));
    assert!(
        matches!(&events[1], ReconnectEvent::Disconnected { code, retry_in: Some(_), .. } if code.0 == 1000)
    );
    assert!(matches!(
        events[2],
        ReconnectEvent::Connected { connects: 2, .. }
    ));
    within(WAIT, goes.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn going_away_1001_reconnects_by_default() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let mut client = Client::reconnecting(url(engine.local_addr(), "/"))
        .backoff(fast_backoff(10, 100))
        .start()
        .unwrap();
    let id = expect_open(&mut seen).await;
    assert!(engine.handle().close(id, CloseCode(1001), "restarting"));
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Closed(id, 1001, "restarting".into())
    );
    let id2 = expect_open(&mut seen).await;
    assert_ne!(id, id2, "a second connection after 1001");
    let ev = [
        next_event(client.events()).await,
        next_event(client.events()).await,
        next_event(client.events()).await,
    ];
    assert!(
        matches!(&ev[1], ReconnectEvent::Disconnected { code, retry_in: Some(_), .. } if code.0 == 1001),
        "{ev:?}"
    );
    assert!(matches!(
        ev[2],
        ReconnectEvent::Connected { connects: 2, .. }
    ));
    within(WAIT, client.close(1000, "")).await.unwrap();
}

#[tokio::test]
async fn a_restarted_server_is_found_again_with_growing_capped_delays() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let addr = engine.local_addr();
    let cap = Duration::from_millis(320);
    let mut client = ClientBuilder::new()
        .connect_timeout(Duration::from_secs(1))
        .reconnecting(url(addr, "/"))
        .backoff(fast_backoff(40, 320))
        .reconnect_on_normal_close(true)
        .on_connect(|_| vec![Message::text("sub")])
        .start()
        .unwrap();
    let id = expect_open(&mut seen).await;
    assert_eq!(next_seen(&mut seen).await, Seen::Text(id, "sub".into()));
    assert!(matches!(
        next_event(client.events()).await,
        ReconnectEvent::Connected { connects: 1, .. }
    ));

    // Graceful shutdown: the engine sends 1001 and stops listening. Every client of a server
    // going away leaves at once, so the first delay comes from two steps up (4 × 40 ms).
    engine.handle().shutdown();
    engine.join().unwrap();
    let ev = next_event(client.events()).await;
    assert!(
        matches!(&ev, ReconnectEvent::Disconnected { code, retry_in: Some(d), .. }
            if code.0 == 1001 && *d == Duration::from_millis(160)),
        "{ev:?}"
    );
    // Sent while the server is down: held for the next connection.
    client.send("while down 1").await.unwrap();
    client.send("while down 2").await.unwrap();

    // Refused attempts back off further: 320 ms, the cap, from then on.
    let mut delays = Vec::new();
    while delays.len() < 5 {
        match next_event(client.events()).await {
            ReconnectEvent::ConnectFailed {
                error,
                attempt,
                retry_in,
            } => {
                assert_eq!(attempt as usize, delays.len() + 1);
                let refused = error
                    .io_error()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
                assert!(refused, "{error}");
                delays.push(retry_in.unwrap());
            }
            other => panic!("{other:?}"),
        }
    }
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(delays, [ms(320), ms(320), ms(320), ms(320), ms(320)]);
    assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    assert!(delays.iter().all(|d| *d <= cap));

    // The server comes back on the same port.
    let mut cfg = engine_config();
    cfg.addr = addr;
    let (engine, mut seen) = recorder_engine(cfg);
    loop {
        match next_event(client.events()).await {
            ReconnectEvent::ConnectFailed { retry_in, .. } => {
                assert_eq!(retry_in, Some(cap));
            }
            ReconnectEvent::Connected { connects: 2, .. } => break,
            other => panic!("{other:?}"),
        }
    }
    let id = expect_open(&mut seen).await;
    for t in ["sub", "while down 1", "while down 2"] {
        assert_eq!(next_seen(&mut seen).await, Seen::Text(id, t.into()));
    }
    within(WAIT, client.close(1000, "")).await.unwrap();
    let stats = client.stats();
    assert_eq!((stats.connects, stats.unsent), (2, 0));
    drop(engine);
}

#[tokio::test]
async fn it_gives_up_after_max_attempts_and_stops_at_once_on_a_bad_url() {
    // A port nobody listens on.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut client = Client::reconnecting(url(addr, "/"))
        .backoff(fast_backoff(5, 20))
        .max_attempts(Some(3))
        .start()
        .unwrap();
    client.send("never delivered").await.unwrap();
    for n in 1..=3u32 {
        match next_event(client.events()).await {
            ReconnectEvent::ConnectFailed {
                attempt, retry_in, ..
            } => {
                assert_eq!(attempt, n);
                assert_eq!(retry_in.is_none(), n == 3);
            }
            other => panic!("{other:?}"),
        }
    }
    let ev = next_event(client.events()).await;
    assert!(
        matches!(&ev, ReconnectEvent::GaveUp { error: Error::RetriesExhausted { attempts: 3, last } }
            if matches!(**last, Error::Connect(_))),
        "{ev:?}"
    );
    let r = within(WAIT, client.recv()).await;
    assert!(
        matches!(r, Some(Err(Error::RetriesExhausted { .. }))),
        "{r:?}"
    );
    assert!(within(WAIT, client.recv()).await.is_none());
    // The message queued while disconnected is not silently dropped: it is counted.
    assert_eq!(client.stats().unsent, 1);

    #[cfg(not(feature = "tls"))]
    assert!(matches!(
        Client::reconnecting("wss://127.0.0.1/").start(),
        Err(Error::TlsNotSupported)
    ));
    assert!(matches!(
        Client::reconnecting("ws://127.0.0.1:1/")
            .max_attempts(None)
            .backoff(Backoff {
                factor: 0.5,
                ..Backoff::default()
            })
            .start(),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn close_while_waiting_to_retry_stops_at_once() {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut client = Client::reconnecting(url(addr, "/"))
        .backoff(fast_backoff(10_000, 10_000))
        .start()
        .unwrap();
    let ev = next_event(client.events()).await;
    assert!(
        matches!(ev, ReconnectEvent::ConnectFailed { retry_in: Some(d), .. } if d == Duration::from_secs(10))
    );
    let start = std::time::Instant::now();
    within(Duration::from_secs(2), client.close(1000, ""))
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(within(WAIT, client.recv()).await.is_none());
}
