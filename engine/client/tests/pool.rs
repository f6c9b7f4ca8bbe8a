//! The connection pool against real edge-ws engines and hand-written servers on 127.0.0.1:
//! reuse and counts, FIFO waiters and the acquire timeout, LRU idle eviction down to the
//! minimum, validation on checkout, graceful close, and every backend down.

mod common;

use std::time::Duration;

use common::*;
use edge_ws_client::{Backends, BreakerConfig, Client, Error, Message, Pool, PooledConnection};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn backends_for(addrs: &[std::net::SocketAddr]) -> edge_ws_client::BackendsBuilder {
    let mut b = Backends::builder().client(
        Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .handshake_timeout(Duration::from_secs(2)),
    );
    for a in addrs {
        b = b.url(url(*a, "/")).unwrap();
    }
    b
}

async fn echo_once(c: &PooledConnection, text: &str) {
    within(WAIT, c.send(Message::text(text))).await.unwrap();
}

#[tokio::test]
async fn reuses_released_connections_and_counts_them() {
    let engine = echo_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(2)
        .build()
        .unwrap();
    {
        let mut c = within(WAIT, pool.acquire()).await.unwrap();
        c.send(Message::text("one")).await.unwrap();
        let got = within(WAIT, c.recv()).await.unwrap().unwrap();
        assert_eq!(got, Message::text("one"));
        let s = pool.stats();
        assert_eq!((s.active, s.idle, s.total_created), (1, 0, 1));
    }
    let s = pool.stats();
    assert_eq!((s.active, s.idle), (0, 1), "released on drop");
    for _ in 0..5 {
        let c = within(WAIT, pool.acquire()).await.unwrap();
        assert_eq!(c.backend(), 0);
        assert!(c.stats().messages_queued >= 1, "the same connection again");
    }
    // Two at once: a second connection is made, never a third.
    let a = within(WAIT, pool.acquire()).await.unwrap();
    let b = within(WAIT, pool.acquire()).await.unwrap();
    let s = pool.stats();
    assert_eq!((s.active, s.idle, s.total_created), (2, 0, 2));
    assert!(pool.try_acquire().is_none(), "at the maximum, nothing idle");
    drop((a, b));
    assert_eq!(pool.stats().idle, 2);
    assert!(pool.try_acquire().is_some());
    assert_eq!(pool.backends().status()[0].connections, 2);
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served_and_time_out() {
    let engine = echo_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let held = within(WAIT, pool.acquire()).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (p, tx) = (pool.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let c = p.acquire().await.unwrap();
            tx.send(i).unwrap();
            // Hold it briefly so that the next waiter gets it only after this one.
            echo_once(&c, "x").await;
            drop(c);
        }));
        // Wait until it is queued, so the queue order is known.
        within(WAIT, async {
            while pool.stats().waiting != i + 1 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    assert_eq!(pool.stats().total_waited, 3);
    drop(held);
    let order: Vec<usize> = within(WAIT, async {
        let mut v = Vec::new();
        while v.len() < 3 {
            v.push(rx.recv().await.unwrap());
        }
        v
    })
    .await;
    assert_eq!(order, [0, 1, 2], "served in arrival order");
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(pool.stats().total_created, 1, "one connection passed along");

    // The acquire timeout, counted, and the waiter leaves the queue.
    let short = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let _held = within(WAIT, short.acquire()).await.unwrap();
    let start = Instant::now();
    let e = within(WAIT, short.acquire()).await.unwrap_err();
    assert!(
        matches!(e, Error::PoolTimeout(d) if d == Duration::from_millis(200)),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let s = short.stats();
    assert_eq!((s.acquire_timeouts, s.waiting), (1, 0));
}

#[tokio::test]
async fn a_cancelled_waiter_does_not_lose_the_connection() {
    let engine = echo_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(1)
        .build()
        .unwrap();
    let held = within(WAIT, pool.acquire()).await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.acquire().await.map(|_| ()) });
    within(WAIT, async {
        while pool.stats().waiting != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(pool.stats().waiting, 0);
    drop(held);
    let s = pool.stats();
    assert_eq!((s.idle, s.active), (1, 0), "back in the pool, not lost");
    assert!(pool.try_acquire().is_some());
}

#[tokio::test]
async fn idle_eviction_is_least_recently_used_first_and_keeps_the_minimum() {
    let engine = echo_engine(engine_config());
    let idle = Duration::from_secs(60);
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(4)
        .min_connections(1)
        .idle_timeout(Some(idle))
        .maintenance_interval(None)
        .build()
        .unwrap();
    // Three connections, told apart by how many messages each sent.
    let conns: Vec<PooledConnection> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(within(WAIT, pool.acquire()).await.unwrap());
        }
        v
    };
    for (i, c) in conns.iter().enumerate() {
        for _ in 0..=i {
            echo_once(c, "m").await;
        }
    }
    let mut conns = conns.into_iter();
    drop(conns.next()); // sent 1: released first
    let after_first = Instant::now();
    drop(conns.next()); // sent 2
    drop(conns.next()); // sent 3: released last
    assert_eq!(pool.stats().idle, 3);
    // Only the first is past the timeout at this instant.
    assert_eq!(pool.evict_expired(after_first + idle), 1);
    let s = pool.stats();
    assert_eq!((s.idle, s.evicted), (2, 1));
    // Most recently released first.
    let c = pool.try_acquire().unwrap();
    assert_eq!(c.stats().messages_queued, 3);
    drop(c);
    // Far in the future every idle one is expired, but the minimum of 1 stays.
    assert_eq!(pool.evict_expired(Instant::now() + idle * 10), 1);
    let s = pool.stats();
    assert_eq!((s.idle, s.evicted), (1, 2));
    assert_eq!(
        pool.try_acquire().unwrap().stats().messages_queued,
        3,
        "the hot one stays"
    );
}

#[tokio::test]
async fn the_maintenance_task_fills_the_minimum_and_evicts() {
    let engine = echo_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(4)
        .min_connections(2)
        .idle_timeout(Some(Duration::from_millis(200)))
        .maintenance_interval(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    within(WAIT, async {
        while pool.stats().idle < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A third one, released: evicted after the idle timeout, the two of the minimum stay.
    let (a, b, c) = (
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        within(WAIT, pool.acquire()).await.unwrap(),
    );
    drop((a, b, c));
    within(WAIT, async {
        while pool.stats().evicted < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let s = pool.stats();
    assert_eq!((s.idle, s.total_created), (2, 3));
}

#[tokio::test]
async fn validation_on_checkout_discards_a_connection_that_does_not_answer_pings() {
    // A server that completes upgrades and then never reads (so never answers a ping).
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut peers = Vec::new();
        loop {
            peers.push(RawPeer::accept(&listener).await);
        }
    });
    let pool = Pool::builder(
        backends_for(&[addr])
            .client(Client::builder().keepalive(None, Duration::from_secs(5)))
            .build()
            .unwrap(),
    )
    .max_connections(2)
    .validate_on_checkout(true)
    .validation_timeout(Duration::from_millis(200))
    .build()
    .unwrap();
    // A new connection is not validated.
    drop(within(WAIT, pool.acquire()).await.unwrap());
    let start = Instant::now();
    let c = within(WAIT, pool.acquire()).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "it waited for a pong"
    );
    let s = pool.stats();
    assert_eq!((s.validation_failed, s.total_created, s.active), (1, 2, 1));
    drop(c);
    server.abort();

    // An edge-ws engine answers the ping: validated, reused, nothing discarded.
    let engine = echo_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .validate_on_checkout(true)
        .validation_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..3 {
        drop(within(WAIT, pool.acquire()).await.unwrap());
    }
    let s = pool.stats();
    assert_eq!((s.validation_failed, s.total_created), (0, 1));
    let c = pool.acquire().await.unwrap();
    let rtt = within(WAIT, c.ping()).await.unwrap();
    assert!(rtt < Duration::from_secs(2));
    assert!(c.stats().pings_sent >= 3, "two validations and this ping");
}

#[tokio::test]
async fn close_refuses_acquires_closes_idle_and_released_connections() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .max_connections(2)
        .build()
        .unwrap();
    let a = within(WAIT, pool.acquire()).await.unwrap();
    let b = within(WAIT, pool.acquire()).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(next_seen(&mut seen).await, Seen::Open(_)));
    }
    // A waiter, failed by the close.
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.acquire().await.map(|_| ()) });
    within(WAIT, async {
        while pool.stats().waiting != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(a);
    // `a` went to the waiter, which dropped it back: idle again.
    assert!(within(WAIT, waiter).await.unwrap().is_ok());
    assert_eq!(pool.stats().idle, 1);

    let p = pool.clone();
    let late_waiter = {
        let b2 = within(WAIT, pool.acquire()).await.unwrap();
        let w = tokio::spawn(async move { p.acquire().await.map(|_| ()) });
        within(WAIT, async {
            while pool.stats().waiting != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        (w, b2)
    };
    within(WAIT, pool.close()).await;
    let e = within(WAIT, late_waiter.0).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::PoolClosed), "{e}");
    assert!(matches!(
        within(WAIT, pool.acquire()).await.unwrap_err(),
        Error::PoolClosed
    ));
    assert!(pool.stats().closed);
    // Both still checked out; releasing after the close closes them.
    drop(late_waiter.1);
    drop(b);
    let mut closes = Vec::new();
    while closes.len() < 2 {
        if let Seen::Closed(_, code, _) = next_seen(&mut seen).await {
            closes.push(code);
        }
    }
    assert_eq!(closes, [1000, 1000]);
    let s = pool.stats();
    assert_eq!((s.active, s.idle), (0, 0));
}

#[tokio::test]
async fn close_closes_idle_connections_with_a_reason() {
    let (engine, mut seen) = recorder_engine(engine_config());
    let pool = Pool::builder(backends_for(&[engine.local_addr()]).build().unwrap())
        .min_connections(2)
        .max_connections(2)
        .maintenance_interval(None)
        .build()
        .unwrap();
    within(WAIT, pool.fill()).await.unwrap();
    assert_eq!(pool.stats().idle, 2);
    within(WAIT, pool.close()).await;
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        if let Seen::Closed(_, code, reason) = next_seen(&mut seen).await {
            reasons.push((code, reason));
        }
    }
    assert!(reasons
        .iter()
        .all(|(c, r)| *c == 1000 && r == "pool closed"));
    assert_eq!(pool.stats().idle, 0);
}

#[tokio::test]
async fn every_backend_down_fails_at_once_then_the_breaker_refuses_without_connecting() {
    let dead = [closed_port(), closed_port()];
    let backends = backends_for(&dead)
        .breaker(BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let pool = Pool::builder(backends.clone())
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    let e = within(WAIT, pool.acquire()).await.unwrap_err();
    assert!(
        matches!(&e, Error::AllBackendsFailed { attempts: 2, last } if matches!(**last, Error::Connect(_))),
        "{e}"
    );
    let e = within(WAIT, pool.acquire()).await.unwrap_err();
    assert!(matches!(e, Error::NoBackendAvailable), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no wait for the acquire timeout"
    );
    let s = pool.stats();
    assert_eq!((s.connect_failed, s.active, s.connecting), (2, 0, 0));
    assert!(backends.status().iter().all(|b| b.connect_failures == 1));
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
