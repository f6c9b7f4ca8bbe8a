//! Several engines in one process, each with its own Redis broker (each one a node), against
//! a real redis-server: cross-node publish, users across nodes, recovery on another node,
//! Redis killed and restarted with nothing acknowledged lost.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_ws::broker::{Broker, BrokerState};
use edge_ws::{HistoryQuery, MessageKind, PublishOptions};
use edge_ws_cluster::user_channel;

mod common;
use common::{have_redis, wait, Node, Redis};

#[test]
fn a_publish_crosses_once_to_each_interested_node_and_is_not_delivered_twice() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b, c) = (
        Node::start(&redis.url()),
        Node::start(&redis.url()),
        Node::start(&redis.url()),
    );
    // Subscribers on A and B; C has none (and so no subscription at Redis).
    let mut on_a = a.connect();
    let mut on_b = b.connect();
    let mut on_b2 = b.connect();
    let mut on_c = c.connect();
    assert_eq!(on_a.subscribe("news", None).2, "live");
    assert_eq!(on_b.subscribe("news", None).2, "live");
    assert_eq!(on_b2.subscribe("news", None).2, "live");
    assert_eq!(on_c.subscribe("other", None).2, "live");
    a.wait_subscriptions(1);
    b.wait_subscriptions(1);
    c.wait_subscriptions(1);
    // A client on A publishes 50 messages; an outside thread on C publishes 50 more.
    let mut publisher = a.connect();
    for i in 0..50 {
        publisher.send(&format!("pub news a{i}"));
    }
    for i in 0..50 {
        c.handle.publish("news", &format!("c{i}"));
    }
    for client in [&mut on_a, &mut on_b, &mut on_b2] {
        let got: Vec<String> = (0..100).map(|_| client.recv()).collect();
        // Per publisher, in order; each exactly once.
        let from_a: Vec<&String> = got.iter().filter(|m| m.starts_with('a')).collect();
        let from_c: Vec<&String> = got.iter().filter(|m| m.starts_with('c')).collect();
        assert_eq!(
            from_a,
            (0..50)
                .map(|i| format!("a{i}"))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            from_c,
            (0..50)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            client.recv_within(Duration::from_millis(200)),
            None,
            "no duplicate"
        );
    }
    // C's subscriber to another channel got nothing.
    assert_eq!(on_c.recv_within(Duration::from_millis(100)), None);
    // Counted at the brokers: A sent 50 and ignored their echo, received C's 50; B received
    // all 100 once (one copy for its two subscribers); C received nothing on "news", its own
    // 50 went out and did not come back (it is not subscribed).
    wait("counts settle", || b.broker.stats().received == 100);
    let (sa, sb, sc) = (a.broker.stats(), b.broker.stats(), c.broker.stats());
    assert_eq!(sa.echoes_ignored, 50, "{sa:?}");
    assert_eq!(sa.received, 50, "{sa:?}");
    assert_eq!(sb.received, 100, "{sb:?}");
    assert_eq!(sc.received, 0, "{sc:?}");
    assert_eq!(sc.echoes_ignored, 0, "{sc:?}");
    assert_eq!(sa.published, 50);
    assert_eq!(sc.published, 50);
    // A broadcast to every connection reaches every node's connections once.
    b.handle
        .broadcast_all(b"to all", MessageKind::Text, PublishOptions::default());
    for client in [&mut on_a, &mut on_b, &mut on_b2, &mut on_c] {
        assert_eq!(client.recv(), "to all");
        assert_eq!(client.recv_within(Duration::from_millis(100)), None);
    }
    // The last subscriber leaving a node unsubscribes it at Redis.
    drop(on_b);
    drop(on_b2);
    b.wait_subscriptions(0);
    let before = b.broker.stats().received;
    a.handle.publish("news", "after");
    assert_eq!(on_a.recv(), "after");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        b.broker.stats().received,
        before,
        "B no longer receives news"
    );
}

/// Redis's `total_reads_processed` (the reads of every client, this one's included).
fn redis_reads(admin: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(admin).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

#[test]
fn a_burst_published_on_one_node_is_one_pipeline_and_one_buffer_per_subscriber_elsewhere() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    let mut subs = [b.connect(), b.connect(), b.connect()];
    for s in &mut subs {
        assert_eq!(s.subscribe("news", None).2, "live");
    }
    b.wait_subscriptions(1);
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let reads = redis_reads(&mut admin);
    let before = b.handle.metrics();
    // 32 publishes in one write: A's core reads them at once.
    let mut publisher = a.connect();
    publisher.send_burst((0..32).map(|i| format!("pub news m{i}")));
    for _ in 0..32 {
        assert_eq!(publisher.recv(), "ack 0");
    }
    let want: Vec<String> = (0..32).map(|i| format!("m{i}")).collect();
    for s in &mut subs {
        let got: Vec<String> = (0..32).map(|_| s.recv()).collect();
        assert_eq!(got, want, "every message once, in order");
    }
    wait("B received the burst", || b.broker.stats().received == 32);
    assert_eq!(a.broker.stats().published, 32);
    // One pipeline from A's broker (plus this connection's own INFO).
    assert_eq!(
        redis_reads(&mut admin) - reads,
        2,
        "one read for the 32 PUBLISHes"
    );
    // B handed the burst to its core at once: one queued buffer per subscriber.
    let after = b.handle.metrics();
    assert_eq!(after.deliveries - before.deliveries, 3 * 32);
    assert_eq!(after.delivery_runs - before.delivery_runs, 3);
}

#[test]
fn send_to_user_reaches_the_users_connections_on_every_node() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b, c) = (
        Node::start(&redis.url()),
        Node::start(&redis.url()),
        Node::start(&redis.url()),
    );
    // User u1 is connected to B (twice) and C; user u2 to C.
    let ch1 = user_channel("u1");
    let ch2 = user_channel("u2");
    let mut u1_b = b.connect();
    let mut u1_b2 = b.connect();
    let mut u1_c = c.connect();
    let mut u2_c = c.connect();
    u1_b.subscribe(&ch1, None);
    u1_b2.subscribe(&ch1, None);
    u1_c.subscribe(&ch1, None);
    u2_c.subscribe(&ch2, None);
    b.wait_subscriptions(1);
    c.wait_subscriptions(2);
    // Sent from A, where the user has no connection.
    let r = a.handle.publish_blocking(
        &ch1,
        b"hello u1",
        MessageKind::Text,
        PublishOptions::default(),
    );
    assert!(r.is_ok(), "{r:?}");
    for c in [&mut u1_b, &mut u1_b2, &mut u1_c] {
        assert_eq!(c.recv(), "hello u1");
    }
    assert_eq!(u2_c.recv_within(Duration::from_millis(200)), None);
    // In-process subscribers (a server's notification code) count as local interest too.
    let (tx, rx) = std::sync::mpsc::channel();
    let sub = a
        .handle
        .subscribe_fn(&ch2, move |_, p| {
            let _ = tx.send(String::from_utf8_lossy(&p.data).to_string());
        })
        .unwrap();
    a.wait_subscriptions(1);
    c.handle.publish(&ch2, "hello u2");
    assert_eq!(u2_c.recv(), "hello u2");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "hello u2"
    );
    drop(sub);
    a.wait_subscriptions(0);
}

#[test]
fn a_stream_is_numbered_in_redis_and_recovers_on_any_node() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b, c) = (
        Node::start(&redis.url()),
        Node::start(&redis.url()),
        Node::start(&redis.url()),
    );
    let mut on_a = a.connect();
    let (o, epoch, rec) = on_a.subscribe("chat:1", None);
    assert_eq!((o, rec.as_str()), (0, "live"));
    assert_ne!(epoch, 0);
    let mut on_b = b.connect();
    let (o, epoch_b, _) = on_b.subscribe("chat:1", None);
    assert_eq!((o, epoch_b), (0, epoch), "one epoch cluster-wide");
    // Publishers on two nodes: the offsets are one sequence.
    let mut pa = a.connect();
    let mut pc = c.connect();
    let mut acked = Vec::new();
    for i in 0..5 {
        pa.send(&format!("pub chat:1 a{i}"));
        acked.push(pa.recv());
        pc.send(&format!("pub chat:1 c{i}"));
        acked.push(pc.recv());
    }
    let offsets: Vec<u64> = acked
        .iter()
        .map(|r| r.strip_prefix("ack ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "{acked:?}");
    // Every subscriber on every node sees the same order, each publication once.
    let a_got: Vec<String> = (0..10).map(|_| on_a.recv()).collect();
    let b_got: Vec<String> = (0..10).map(|_| on_b.recv()).collect();
    assert_eq!(a_got, b_got);
    for (i, m) in a_got.iter().enumerate() {
        assert!(m.starts_with(&format!("{}|", i + 1)), "{a_got:?}");
    }
    assert_eq!(on_a.recv_within(Duration::from_millis(200)), None);
    // A client that had offset 4 reconnects to C (no subscriber there yet): it recovers 5..10.
    let mut again = c.connect();
    let (o, e, rec) = again.subscribe("chat:1", Some((4, epoch)));
    assert_eq!((o, e, rec.as_str()), (10, epoch, "recovered:6"));
    let replay: Vec<String> = (0..6).map(|_| again.recv()).collect();
    assert_eq!(replay, a_got[4..].to_vec());
    // ... and then receives live publications after them, from any node.
    b.handle.publish("chat:1", "live");
    assert_eq!(again.recv(), "11|live");
    assert_eq!(on_a.recv(), "11|live");
    // An idempotency key: a repeat (in flight or after the answer) publishes nothing.
    let keyed = || PublishOptions {
        idempotency_key: Some("k1".into()),
        ..PublishOptions::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let tx = tx.clone();
        b.handle
            .publish_acked("chat:1", b"once", MessageKind::Text, keyed(), move |r| {
                let _ = tx.send(r);
            });
    }
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    let second = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(first.position, second.position);
    assert!(second.duplicate && !first.duplicate);
    let third = b
        .handle
        .publish_blocking("chat:1", b"once", MessageKind::Text, keyed())
        .unwrap();
    assert!(third.duplicate);
    assert_eq!(third.position, first.position);
    // ... and through another node too (a client retrying elsewhere after a failover).
    let elsewhere = c
        .handle
        .publish_blocking("chat:1", b"once", MessageKind::Text, keyed())
        .unwrap();
    assert!(elsewhere.duplicate, "{elsewhere:?}");
    assert_eq!(elsewhere.position, first.position);
    assert_eq!(again.recv(), "12|once");
    assert_eq!(on_a.recv(), "12|once");
    assert_eq!(again.recv_within(Duration::from_millis(200)), None);
    // A position of another epoch cannot be recovered.
    let mut stale = b.connect();
    let (_, _, rec) = stale.subscribe("chat:1", Some((3, epoch ^ 1)));
    assert_eq!(rec, "failed:EpochChanged");
    // History read on a node without subscribers comes from Redis.
    let d = Node::start(&redis.url());
    let page = d
        .handle
        .history_blocking("chat:1", HistoryQuery::Last(3))
        .unwrap();
    assert_eq!(page.position.offset, 12);
    assert_eq!(page.position.epoch, epoch);
    let texts: Vec<String> = page
        .publications
        .iter()
        .map(|p| String::from_utf8_lossy(&p.data).to_string())
        .collect();
    assert_eq!(texts, vec!["10|c4", "11|live", "12|once"]);
    assert_eq!(d.broker.stats().subscriptions, 0);
}

#[test]
fn redis_killed_and_restarted_loses_no_acknowledged_publication() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start();
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    let mut sub = b.connect();
    let (_, epoch, _) = sub.subscribe("chat:x", None);
    b.wait_subscriptions(1);
    assert_eq!(a.health().0, 200);
    assert!(
        a.health().1.contains("\"state\":\"up\""),
        "{:?}",
        a.health()
    );
    // A publisher thread on A: 400 publishes, 5 ms apart, recording every answer.
    let handle = a.handle.clone();
    let publisher = std::thread::spawn(move || {
        let mut acked = BTreeMap::new();
        let mut errors = 0;
        for i in 0..400 {
            match handle.publish_blocking(
                "chat:x",
                format!("m{i}").as_bytes(),
                MessageKind::Text,
                PublishOptions::default(),
            ) {
                Ok(p) => {
                    acked.insert(p.position.unwrap().offset, format!("m{i}"));
                }
                Err(_) => errors += 1,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (acked, errors)
    });
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    // While Redis is down: /health says so, plain publishes to other nodes fail clearly.
    wait("A sees the broker down", || {
        a.broker.state() == BrokerState::Down
    });
    let (status, body) = a.health();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"state\":\"down\""), "{body}");
    let r = a.handle.publish_blocking(
        "news",
        b"lost?",
        MessageKind::Text,
        PublishOptions::default(),
    );
    assert!(
        r.is_err(),
        "a plain publish while Redis is down fails: {r:?}"
    );
    let mut client = a.connect();
    client.send("pub news from-a-client");
    let reply = client.recv();
    assert!(
        reply.starts_with("error "),
        "a client's publish fails too: {reply}"
    );
    std::thread::sleep(Duration::from_millis(300));
    redis.restart();
    let (acked, errors) = publisher.join().unwrap();
    assert!(errors > 0, "some publishes were refused during the outage");
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    wait("A reconnects", || a.broker.state() == BrokerState::Up);
    wait("B reconnects", || b.broker.state() == BrokerState::Up);
    assert!(a.broker.stats().reconnects >= 1);
    assert!(a.broker.stats().publish_errors >= errors);
    assert_eq!(a.health().0, 200);
    let (_, metrics) = a.get("/metrics");
    assert!(metrics.contains("edge_ws_broker_up 1"), "{metrics}");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edge_ws_broker_publish_errors "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(refused >= errors, "{refused} publish errors counted");
    // The subscriber on B received every acknowledged publication, in offset order, once
    // (what it missed during the outage was read back from the stream on reconnect).
    let last = *acked.keys().last().unwrap();
    let mut got = BTreeMap::new();
    let mut prev = 0;
    while prev < last {
        let m = sub.recv();
        let (o, text) = m.split_once('|').unwrap();
        let o: u64 = o.parse().unwrap();
        assert!(o > prev, "in order, no duplicate: {o} after {prev}");
        prev = o;
        got.insert(o, text.to_string());
    }
    for (o, text) in &acked {
        assert_eq!(got.get(o), Some(text), "acknowledged offset {o} delivered");
    }
    // Redis kept the stream through the restart (fsync always): same epoch, every offset.
    let page = b
        .handle
        .history_blocking(
            "chat:x",
            HistoryQuery::Since {
                after: 0,
                limit: 1000,
            },
        )
        .unwrap();
    assert_eq!(page.position.epoch, epoch);
    for o in acked.keys() {
        assert!(
            page.publications.iter().any(|p| p.offset == *o),
            "offset {o} kept"
        );
    }
}

/// The presence list as `client=info` strings, read through `node`'s broker.
fn presence(node: &Node, channel: &str) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    node.handle.broker().expect("a broker").presence_list(
        channel,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|m| format!("{}={}", m.client, String::from_utf8_lossy(&m.info)))
        .collect()
}

#[test]
fn presence_spans_the_nodes_and_a_dead_nodes_entries_expire() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let ttl = Duration::from_millis(600);
    let (a, b, c) = (
        Node::start_with(&redis.url(), ttl),
        Node::start_with(&redis.url(), ttl),
        Node::start(&redis.url()),
    );
    let pa = a.handle.broker().unwrap();
    let pb = b.handle.broker().unwrap();
    pa.presence_join("room", "c1", b"u1");
    pa.presence_join("room", "c3", b"u1");
    pb.presence_join("room", "c2", b"u2");
    wait("three members", || presence(&c, "room").len() == 3);
    assert_eq!(presence(&c, "room"), vec!["c1=u1", "c2=u2", "c3=u1"]);
    pa.presence_leave("room", "c3");
    wait("c3 left", || presence(&c, "room").len() == 2);
    // Entries of a live node outlive the TTL (its broker refreshes them).
    std::thread::sleep(ttl * 2);
    assert_eq!(presence(&c, "room"), vec!["c1=u1", "c2=u2"]);
    // B dies without leaving: its member expires within the TTL; A's stays.
    b.broker.stop();
    // A stopped broker answers at once: nothing waits for it.
    let r = b.handle.publish_blocking(
        "chat:after-stop",
        b"x",
        MessageKind::Text,
        PublishOptions::default(),
    );
    assert!(r.is_err(), "{r:?}");
    wait("B's member expired", || {
        presence(&c, "room") == vec!["c1=u1"]
    });
    std::thread::sleep(ttl);
    assert_eq!(presence(&a, "room"), vec!["c1=u1"]);
}

#[test]
fn a_node_that_stopped_listening_recovers_from_redis_when_it_listens_again() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    let mut first = b.connect();
    let (_, epoch, _) = first.subscribe("chat:y", None);
    b.wait_subscriptions(1);
    for i in 1..=3 {
        let r = a.handle.publish_blocking(
            "chat:y",
            format!("p{i}").as_bytes(),
            MessageKind::Text,
            PublishOptions::default(),
        );
        assert_eq!(r.unwrap().position.unwrap().offset, i);
    }
    for i in 1..=3 {
        assert_eq!(first.recv(), format!("{i}|p{i}"));
    }
    // B's last subscriber leaves: B unsubscribes and forgets its copy.
    drop(first);
    b.wait_subscriptions(0);
    for i in 4..=6 {
        a.handle.publish("chat:y", &format!("p{i}"));
    }
    wait("published", || {
        a.handle
            .history_blocking("chat:y", HistoryQuery::Last(1))
            .is_ok_and(|p| p.position.offset == 6)
    });
    // A client that had offset 3 comes back to B: recovered from Redis, then live.
    let mut back = b.connect();
    let (o, e, rec) = back.subscribe("chat:y", Some((3, epoch)));
    assert_eq!((o, e, rec.as_str()), (6, epoch, "recovered:3"));
    for i in 4..=6 {
        assert_eq!(back.recv(), format!("{i}|p{i}"));
    }
    a.handle.publish("chat:y", "p7");
    assert_eq!(back.recv(), "7|p7");
    assert_eq!(back.recv_within(Duration::from_millis(200)), None);
}

#[test]
fn a_broken_subscription_is_restored_and_the_missed_stream_publications_follow_in_order() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    let mut sub = b.connect();
    sub.subscribe("chat:gap", None);
    b.wait_subscriptions(1);
    let publish = |text: &str| -> u64 {
        // Retried while A's broker reconnects (it refuses at once while down).
        for _ in 0..500 {
            if let Ok(p) = a.handle.publish_blocking(
                "chat:gap",
                text.as_bytes(),
                MessageKind::Text,
                PublishOptions::default(),
            ) {
                return p.position.unwrap().offset;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{text} never acknowledged");
    };
    assert_eq!(publish("one"), 1);
    assert_eq!(sub.recv(), "1|one");
    // Redis drops every subscription connection; publications go on meanwhile.
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut admin)
        .unwrap();
    assert!(killed >= 2, "{killed} subscription connections killed");
    let offsets: Vec<u64> = (2..=30).map(|i| publish(&format!("m{i}"))).collect();
    assert_eq!(offsets, (2..=30).collect::<Vec<_>>());
    // B resubscribed, read the stream's tail and delivered what it missed, in order, once.
    for i in 2..=30 {
        assert_eq!(sub.recv(), format!("{i}|m{i}"));
    }
    assert_eq!(sub.recv_within(Duration::from_millis(200)), None);
    assert!(b.broker.stats().reconnects >= 1);
    assert!(b.broker.stats().syncs >= 2);
}

/// Waits for a broker callback's answer.
fn answer<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(Result<T, edge_ws::broker::BrokerError>) + Send>),
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an answer")
        .expect("no broker error")
}

#[test]
fn a_log_takes_only_its_next_entry_from_any_node_and_reads_back_from_a_snapshot() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = (Node::start(&redis.url()), Node::start(&redis.url()));
    let (la, lb) = (a.handle.broker().unwrap(), b.handle.broker().unwrap());
    // B listens to the log's channel: every accepted entry is published there, once.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let _sub = b
        .handle
        .subscribe_fn("doc#x", move |_, p| g.lock().unwrap().push(p.data.clone()))
        .unwrap();
    b.wait_subscriptions(1);
    let append = |l: &std::sync::Arc<dyn edge_ws::broker::Broker>, seq: u64, rec: &str| {
        answer(|done| l.log_append("doc#x", seq, rec.as_bytes(), 3, "doc#x", done))
    };
    assert_eq!(append(la, 1, "one"), Ok(1));
    // The same revision from another node: refused with the log's last one.
    assert_eq!(append(lb, 1, "other"), Err(1));
    assert_eq!(append(lb, 3, "gap"), Err(1));
    assert_eq!(append(lb, 2, "two"), Ok(2));
    assert_eq!(append(la, 3, "three"), Ok(3));
    wait("three publications at B", || got.lock().unwrap().len() == 3);
    assert_eq!(
        got.lock()
            .unwrap()
            .iter()
            .map(|b| b.to_vec())
            .collect::<Vec<_>>(),
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    let read = answer(|done| la.log_read("doc#x", 1, done));
    assert_eq!((read.last, read.snapshot.clone()), (3, None));
    let seqs: Vec<u64> = read.entries.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![2, 3]);
    // A snapshot at 2: a reader from 0 starts from it; an older one does not replace it.
    // (Each node's requests are in order; two nodes' are not, so each reads through the
    // broker that wrote.)
    la.log_snapshot("doc#x", 2, b"snap-2");
    let read = answer(|done| la.log_read("doc#x", 0, done));
    assert_eq!(read.snapshot.map(|(s, _)| s), Some(2));
    lb.log_snapshot("doc#x", 1, b"snap-1");
    let read = answer(|done| lb.log_read("doc#x", 0, done));
    assert_eq!(
        read.snapshot,
        Some((2, bytes::Bytes::from_static(b"snap-2")))
    );
    assert_eq!(
        read.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3]
    );
    // A snapshot beyond an (emptied) log's end becomes its last entry: the next append follows.
    la.log_snapshot("doc#y", 5, b"snap-5");
    assert_eq!(answer(|done| la.log_read("doc#y", 0, done)).last, 5);
    assert_eq!(
        answer(|done| la.log_append("doc#y", 6, b"six", 3, "doc#y", done)),
        Ok(6)
    );
    // Only the last `keep` (3) entries stay.
    assert_eq!(append(la, 4, "four"), Ok(4));
    let read = answer(|done| la.log_read("doc#x", 0, done));
    assert_eq!(
        read.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 4]
    );
    // A reader at 1 still finds 2 in the log: the entries, no snapshot; once 2 is trimmed
    // away it starts from the snapshot.
    let read = answer(|done| la.log_read("doc#x", 1, done));
    assert_eq!(read.snapshot, None);
    assert_eq!(
        read.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(append(la, 5, "five"), Ok(5));
    let read = answer(|done| la.log_read("doc#x", 1, done));
    assert_eq!(read.snapshot.map(|(s, _)| s), Some(2), "2 was trimmed away");
    assert_eq!(
        read.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}
