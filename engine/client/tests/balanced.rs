//! Balanced connects over real edge-ws engines and hand-written servers on 127.0.0.1:
//! distributions, failover past bad backends with clear errors (refused, silent, wrong
//! accept), circuit breaker transitions with their events, and active and passive health
//! checks against a small HTTP responder and the engine's `GET /health`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use edge_ws_client::balance::ip_key;
use edge_ws_client::health::CheckError;
use edge_ws_client::{
    BackendEvent, Backends, BackendsBuilder, BreakerConfig, BreakerState, Client, Error,
    HealthConfig, Message, Strategy,
};
use edge_ws_protocol::handshake::HandshakeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio::time::Instant;

fn builder(addrs: &[SocketAddr]) -> BackendsBuilder {
    let mut b = Backends::builder().client(
        Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .handshake_timeout(Duration::from_millis(500)),
    );
    for a in addrs {
        b = b.url(url(*a, "/")).unwrap();
    }
    b
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The next event, within [`WAIT`].
async fn next_event(rx: &mut broadcast::Receiver<BackendEvent>) -> BackendEvent {
    within(WAIT, rx.recv()).await.expect("events flowing")
}

#[tokio::test]
async fn round_robin_over_real_engines_is_exact_and_connections_work() {
    let engines: Vec<_> = (0..3).map(|_| echo_engine(engine_config())).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.local_addr()).collect();
    let backends = builder(&addrs).build().unwrap();
    let mut picks = Vec::new();
    let mut conns = Vec::new();
    for i in 0..6 {
        let mut c = within(WAIT, backends.connect(None)).await.unwrap();
        picks.push(c.backend());
        let text = format!("hello {i}");
        c.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            within(WAIT, c.recv()).await.unwrap().unwrap(),
            Message::text(text)
        );
        conns.push(c);
    }
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    let status = backends.status();
    assert!(status.iter().all(|s| s.connections == 2 && s.connects == 2));
    drop(conns);
    assert!(backends.status().iter().all(|s| s.connections == 0));
}

#[tokio::test]
async fn least_connections_balances_open_connections() {
    let engines: Vec<_> = (0..2).map(|_| echo_engine(engine_config())).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.local_addr()).collect();
    let backends = builder(&addrs)
        .strategy(Strategy::LeastConnections)
        .seed(3)
        .build()
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(within(WAIT, backends.connect(None)).await.unwrap());
    }
    // With two backends both are drawn every time, so the less loaded always wins.
    let on0 = conns.iter().filter(|c| c.backend() == 0).count();
    assert_eq!(on0, 3);
    // Free two on backend 0: the next two go there.
    let mut kept = Vec::new();
    let mut freed = 0;
    for c in conns {
        if c.backend() == 0 && freed < 2 {
            freed += 1;
        } else {
            kept.push(c);
        }
    }
    for _ in 0..2 {
        let c = within(WAIT, backends.connect(None)).await.unwrap();
        assert_eq!(c.backend(), 0);
        kept.push(c);
    }
}

#[tokio::test]
async fn ip_hash_is_sticky_and_draining_a_backend_moves_only_its_keys() {
    let engines: Vec<_> = (0..3).map(|_| echo_engine(engine_config())).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.local_addr()).collect();
    let backends = builder(&addrs).strategy(Strategy::IpHash).build().unwrap();
    let keys: Vec<Vec<u8>> = (0..300u32)
        .map(|i| ip_key(std::net::Ipv4Addr::from(0xc000_0200 + i).into()))
        .collect();
    let before: Vec<usize> = keys
        .iter()
        .map(|k| backends.peek(Some(k)).unwrap())
        .collect();
    // Real connects for a few keys land where peek said, twice.
    for k in keys.iter().take(6) {
        let want = backends.peek(Some(k)).unwrap();
        for _ in 0..2 {
            let c = within(WAIT, backends.connect(Some(k))).await.unwrap();
            assert_eq!(c.backend(), want);
        }
    }
    backends.set_enabled(1, false);
    let after: Vec<usize> = keys
        .iter()
        .map(|k| backends.peek(Some(k)).unwrap())
        .collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, before.iter().filter(|&&b| b == 1).count());
    assert!(moved > 0 && after.iter().all(|&b| b != 1));
    backends.set_enabled(1, true);
    let back: Vec<usize> = keys
        .iter()
        .map(|k| backends.peek(Some(k)).unwrap())
        .collect();
    assert_eq!(back, before);
}

#[tokio::test]
async fn failover_past_a_refused_backend_opens_its_breaker() {
    let engine = echo_engine(engine_config());
    let dead = closed_port();
    let backends = builder(&[dead, engine.local_addr()])
        .breaker(BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let mut events = backends.subscribe();
    let c = within(WAIT, backends.connect(None)).await.unwrap();
    assert_eq!(c.backend(), 1, "failed over");
    assert_eq!(
        next_event(&mut events).await,
        BackendEvent::Breaker {
            backend: 0,
            name: url(dead, "/"),
            state: BreakerState::Open
        }
    );
    for _ in 0..4 {
        let c = within(WAIT, backends.connect(None)).await.unwrap();
        assert_eq!(c.backend(), 1);
    }
    let status = backends.status();
    assert_eq!(status[0].breaker, BreakerState::Open);
    assert_eq!(
        status[0].connect_failures, 1,
        "skipped while open, never retried"
    );
    assert_eq!(status[1].connects, 5);
}

#[tokio::test]
async fn a_backend_that_comes_back_is_probed_half_open_and_closes_its_breaker() {
    let dead = closed_port();
    let engine = echo_engine(engine_config());
    let backends = builder(&[dead, engine.local_addr()])
        .breaker(BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_millis(100),
        })
        .build()
        .unwrap();
    let mut events = backends.subscribe();
    assert_eq!(
        within(WAIT, backends.connect(None))
            .await
            .unwrap()
            .backend(),
        1
    );
    // Start a server on the dead port.
    let mut cfg = engine_config();
    cfg.addr = dead;
    let revived = echo_engine(cfg);
    assert_eq!(revived.local_addr(), dead);
    // Round-robin comes back to backend 0 once its recovery timeout has passed.
    let c = within(WAIT, async {
        loop {
            let c = backends.connect(None).await.unwrap();
            if c.backend() == 0 {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(c.backend_name(), url(dead, "/"));
    let mut states = Vec::new();
    while states.len() < 3 {
        if let BackendEvent::Breaker {
            backend: 0, state, ..
        } = next_event(&mut events).await
        {
            states.push(state);
        }
    }
    assert_eq!(
        states,
        [
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
    assert_eq!(backends.status()[0].breaker, BreakerState::Closed);
}

#[tokio::test]
async fn a_backend_that_accepts_tcp_and_never_answers_times_out_in_the_handshake_timeout() {
    // The kernel completes the TCP handshake into the backlog; nobody ever reads or writes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backends = builder(&[silent.local_addr().unwrap()]).build().unwrap();
    let start = Instant::now();
    let e = within(WAIT, backends.connect(None)).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&e, Error::AllBackendsFailed { attempts: 1, last }
            if matches!(**last, Error::HandshakeTimeout(d) if d == Duration::from_millis(500))),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn a_wrong_sec_websocket_accept_is_a_clear_error() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = read_request(&mut s).await;
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .unwrap();
        }
    });
    let backends = builder(&[addr]).build().unwrap();
    let e = within(WAIT, backends.connect(None)).await.unwrap_err();
    assert!(
        matches!(&e, Error::AllBackendsFailed { last, .. }
            if matches!(**last, Error::Handshake(HandshakeError::BadAccept))),
        "{e}"
    );
    assert!(e.to_string().contains("Sec-WebSocket-Accept"), "{e}");
    server.abort();
}

#[tokio::test]
async fn no_backend_eligible_fails_at_once() {
    let engine = echo_engine(engine_config());
    let backends = builder(&[engine.local_addr()]).build().unwrap();
    backends.set_enabled(0, false);
    let start = Instant::now();
    let e = within(WAIT, backends.connect(None)).await.unwrap_err();
    assert!(matches!(e, Error::NoBackendAvailable), "{e}");
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(matches!(
        Backends::builder().build().unwrap_err(),
        Error::Config(_)
    ));
}

/// A tiny HTTP responder: answers every request with the status in `status`, and counts
/// the paths it was asked for.
async fn http_responder(status: Arc<AtomicU16>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = raw_listener().await;
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let path_ok = buf.starts_with(b"GET /healthz HTTP/1.1\r\n");
                let code = if path_ok {
                    status.load(Ordering::Relaxed)
                } else {
                    404
                };
                let reply =
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn active_checks_turn_a_backend_unhealthy_and_back_with_events_and_status() {
    let status = Arc::new(AtomicU16::new(200));
    let (addr, server) = http_responder(status.clone()).await;
    let backends = builder(&[addr])
        .health(HealthConfig {
            path: "/healthz".into(),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..HealthConfig::default()
        })
        .build()
        .unwrap();
    let mut events = backends.subscribe();
    let latency = within(WAIT, backends.check(0)).await.unwrap();
    let s = &backends.status()[0];
    assert!(s.healthy);
    assert_eq!(s.last_latency, Some(latency));
    assert!(s.last_check.is_some());

    status.store(503, Ordering::Relaxed);
    assert_eq!(
        within(WAIT, backends.check(0)).await,
        Err(CheckError::Status(503))
    );
    assert!(
        backends.status()[0].healthy,
        "one failure is under the threshold"
    );
    assert_eq!(
        within(WAIT, backends.check(0)).await,
        Err(CheckError::Status(503))
    );
    match next_event(&mut events).await {
        BackendEvent::Unhealthy {
            backend, reason, ..
        } => {
            assert_eq!(backend, 0);
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let s = &backends.status()[0];
    assert!(!s.healthy);
    assert_eq!(s.last_error, Some(CheckError::Status(503)));
    assert_eq!(
        (s.checks, s.failed_checks, s.consecutive_failures),
        (3, 2, 2)
    );
    // Unhealthy: not picked, and the connect fails at once.
    assert!(matches!(
        within(WAIT, backends.connect(None)).await.unwrap_err(),
        Error::NoBackendAvailable
    ));

    status.store(200, Ordering::Relaxed);
    within(WAIT, backends.check(0)).await.unwrap();
    within(WAIT, backends.check(0)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        BackendEvent::Healthy {
            backend: 0,
            name: url(addr, "/")
        }
    );
    assert!(backends.status()[0].healthy);
    server.abort();
}

#[tokio::test]
async fn the_checker_runs_on_its_interval_and_reports_a_silent_backend() {
    let status = Arc::new(AtomicU16::new(200));
    let (good, server) = http_responder(status.clone()).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backends = builder(&[good, silent.local_addr().unwrap()])
        .health(HealthConfig {
            path: "/healthz".into(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            passive: true,
        })
        .build()
        .unwrap();
    let mut events = backends.subscribe();
    let checker = backends.start_health_checks();
    match next_event(&mut events).await {
        BackendEvent::Unhealthy {
            backend, reason, ..
        } => {
            assert_eq!(backend, 1);
            assert!(reason.contains("timed out"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let s = backends.status();
    assert!(s[0].healthy && !s[1].healthy);
    assert!(s[0].checks >= 2 && s[0].last_latency.is_some());
    assert_eq!(
        s[1].last_error,
        Some(CheckError::Timeout(Duration::from_millis(200)))
    );
    // The good one goes down too, then comes back.
    status.store(500, Ordering::Relaxed);
    loop {
        if let BackendEvent::Unhealthy { backend: 0, .. } = next_event(&mut events).await {
            break;
        }
    }
    status.store(200, Ordering::Relaxed);
    loop {
        if let BackendEvent::Healthy { backend: 0, .. } = next_event(&mut events).await {
            break;
        }
    }
    drop(checker);
    drop(silent);
    server.abort();
}

#[tokio::test]
async fn active_check_against_the_engines_health_endpoint_and_a_refused_port() {
    let engine = echo_engine(engine_config());
    let dead = closed_port();
    let backends = builder(&[engine.local_addr(), dead])
        .health(HealthConfig::default())
        .build()
        .unwrap();
    let out = within(WAIT, backends.check_all()).await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert!(
        matches!(&out[1], Err(CheckError::Connect(_))),
        "{:?}",
        out[1]
    );
}

#[tokio::test]
async fn passive_reports_turn_a_refused_backend_unhealthy() {
    let engine = echo_engine(engine_config());
    let dead = closed_port();
    let backends = builder(&[dead, engine.local_addr()])
        .health(HealthConfig {
            unhealthy_threshold: 1,
            ..HealthConfig::default()
        })
        .build()
        .unwrap();
    let mut events = backends.subscribe();
    assert_eq!(
        within(WAIT, backends.connect(None))
            .await
            .unwrap()
            .backend(),
        1
    );
    let mut saw_unhealthy = false;
    while let Ok(ev) = events.try_recv() {
        if let BackendEvent::Unhealthy {
            backend: 0, reason, ..
        } = ev
        {
            assert!(reason.contains("connect"), "{reason}");
            saw_unhealthy = true;
        }
    }
    assert!(saw_unhealthy);
    let s = backends.status();
    assert!(!s[0].healthy && s[1].healthy);
    assert!(matches!(s[0].last_error, Some(CheckError::Passive(_))));
    assert!(
        s[1].last_latency.is_some(),
        "a connect counts as a passive success"
    );
}
