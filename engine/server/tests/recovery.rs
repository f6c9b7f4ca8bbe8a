//! The client's channel layer (`edge_ws_client::ChannelClient`) against the real `edge-ws`
//! binary: a publisher publishes continuously to a persistent channel while the server is
//! killed with SIGKILL and restarted on the same port; the subscriber, resubscribing with its
//! recovery position after the reconnect, ends with every acknowledged publication exactly
//! once, in offset order.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_ws::testing::TempDir;
use edge_ws_client::channels::{ChannelClient, ChannelEvent, Recovery};
use edge_ws_client::{Backoff, Client, Jitter};

mod common;
use common::Server;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("edge-ws.toml");
    let text = format!(
        "[auth]\nquery_user = \"\"\n\n[rate_limit]\nmessages_per_second = 0\n\n[[channels.namespace]]\nprefix = \"h:\"\nhistory_size = 10000\npersist = true\n\n\
         [store]\ndir = {:?}\n",
        dir.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A constant delay between attempts.
fn backoff(ms: u64) -> Backoff {
    Backoff {
        base: Duration::from_millis(ms),
        factor: 1.0,
        cap: Duration::from_millis(ms),
        jitter: Jitter::None,
    }
}

const N: u64 = 1000;
const CHANNEL: &str = "h:feed";
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_publication_is_lost_or_duplicated_across_kill_9_and_reconnect() {
    let dir = TempDir::new("edge-ws-recovery");
    let cfg = config(dir.path());
    let addr = free_port();
    let url = format!("ws://{addr}/ws");
    let server = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Server::start_on(addr, 2, Some(&cfg)))
            .await
            .unwrap()
    };

    // The subscriber comes back later than the publisher (it retries every 1.5 s, the
    // publisher every 20 ms), so publications made meanwhile can only reach it by recovery.
    let mut sub = ChannelClient::start(
        Client::reconnecting(url.as_str())
            .backoff(backoff(1500))
            .reconnect_on_normal_close(true),
    )
    .unwrap();
    sub.subscribe(CHANNEL).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("subscribed within 10 s")
        .unwrap()
        .unwrap();
    let ChannelEvent::Subscribed {
        recovery: Recovery::Live,
        position: Some(start),
        ..
    } = first
    else {
        panic!("expected a live subscription, got {first:?}");
    };
    assert_eq!(start.offset, 0, "a fresh store");

    let acked = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));

    // The publisher: one publication every 2 ms, each with an id; acknowledgements recorded.
    let publisher = {
        let (acked, sent, url) = (acked.clone(), sent.clone(), url.clone());
        tokio::spawn(async move {
            let mut p = ChannelClient::start(
                Client::reconnecting(url.as_str())
                    .backoff(backoff(20))
                    .reconnect_on_normal_close(true),
            )
            .unwrap();
            let mut ids: HashMap<u64, u64> = HashMap::new();
            let mut acks: BTreeMap<u64, (u64, String)> = BTreeMap::new(); // n → (offset, epoch)
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut n = 0;
            let mut end_id = None;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                tokio::select! {
                    _ = tick.tick(), if end_id.is_none() => {
                        if n < N {
                            let id = p.publish(CHANNEL, &format!(r#"{{"n":{n}}}"#), None).await.unwrap();
                            ids.insert(id, n);
                            n += 1;
                            sent.store(n, Ordering::SeqCst);
                        } else {
                            // Wait for the last acks (those lost in the crash never come),
                            // then publish the end marker.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            end_id = Some(p.publish(CHANNEL, r#""end""#, None).await.unwrap());
                        }
                    }
                    ev = p.recv() => match ev.expect("publisher stopped").expect("publisher error") {
                        ChannelEvent::Published { id, position: Some(pos), duplicate, .. } => {
                            assert!(!duplicate);
                            if Some(id) == end_id {
                                return (acks, pos.offset);
                            }
                            let n = ids[&id];
                            assert!(acks.insert(n, (pos.offset, pos.epoch)).is_none());
                            acked.store(acks.len() as u64, Ordering::SeqCst);
                        }
                        ChannelEvent::Error { error, .. } => panic!("publish refused: {error}"),
                        _ => {}
                    },
                    _ = tokio::time::sleep_until(deadline) => panic!("publisher: no end within {DEADLINE:?}"),
                }
            }
        })
    };

    // Kill -9 mid-stream, restart on the same port.
    let killed_at = {
        let acked = acked.clone();
        let sent = sent.clone();
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let mut server = server;
            let t0 = std::time::Instant::now();
            while acked.load(Ordering::SeqCst) < 300 {
                assert!(t0.elapsed() < Duration::from_secs(30), "no acks");
                std::thread::sleep(Duration::from_millis(1));
            }
            server.kill9();
            let at = (acked.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(200));
            (Server::start_on(addr, 2, Some(&cfg)), at)
        })
    };

    // The subscriber: everything until the end marker.
    let mut got: Vec<(u64, String, String)> = Vec::new(); // (offset, epoch, data)
    let mut subscribed = Vec::new();
    let mut end_offset = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while end_offset.is_none() {
        let ev = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("the subscriber saw the end within the deadline")
            .expect("subscriber stopped")
            .expect("subscriber error");
        match ev {
            ChannelEvent::Publication(p) => {
                let offset = p.offset.expect("a stream publication has an offset");
                if p.data == r#""end""# {
                    end_offset = Some(offset);
                }
                got.push((offset, p.epoch.unwrap(), p.data));
            }
            ChannelEvent::Subscribed { recovery, .. } => subscribed.push(recovery),
            other => panic!("subscriber: unexpected {other:?}"),
        }
    }
    let (acks, end_ack) = tokio::time::timeout(DEADLINE, publisher)
        .await
        .unwrap()
        .unwrap();
    let (server, (acked_at_kill, sent_at_kill)) = killed_at.await.unwrap();

    // The kill was mid-stream: acks before it and after it.
    assert!(
        sent_at_kill < N,
        "killed after the last send ({sent_at_kill})"
    );
    assert!(
        (acks.len() as u64) > acked_at_kill,
        "acks after the restart"
    );
    assert_eq!(end_offset, Some(end_ack));
    // The subscriber reconnected and the server recovered what it had missed.
    assert!(sub.stats().connects >= 2, "{:?}", sub.stats());
    assert_eq!(subscribed.len(), 1, "one resubscribe: {subscribed:?}");
    let Recovery::Recovered { missed } = subscribed[0] else {
        panic!("not recovered: {subscribed:?}");
    };
    assert!(
        missed > 0,
        "publications made while the subscriber was away"
    );

    // In offset order, each offset once, no gap, one epoch (the channel is persistent).
    let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
    let want: Vec<u64> = (1..=end_ack).collect();
    assert_eq!(offsets, want, "every publication once, in order");
    let epoch = &got[0].1;
    assert!(got.iter().all(|g| &g.1 == epoch));
    // Every acknowledged publication is there, at its acknowledged offset, exactly once.
    let by_offset: HashMap<u64, &str> = got.iter().map(|g| (g.0, g.2.as_str())).collect();
    for (n, (offset, e)) in &acks {
        assert_eq!(e, epoch);
        assert_eq!(
            by_offset.get(offset).copied(),
            Some(format!(r#"{{"n":{n}}}"#).as_str())
        );
    }
    let mut ns: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns.len(), got.len(), "no publication twice");
    eprintln!(
        "acked {} of {N} ({} before the kill, {sent_at_kill} sent then), delivered {}, \
         recovered {missed}, duplicates dropped {}",
        acks.len(),
        acked_at_kill,
        got.len() - 1,
        sub.channel_stats().duplicates
    );
    drop(server);
}
