//! Fan-out across cores over real sockets: exactly-once in-order delivery from publishers on
//! both cores and an outside thread, exclude and filter, unsubscribe and close, slow
//! subscribers, ring spills, and channels with no subscribers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::{
    Config, Engine, EngineHandle, Handler, Message, MessageKind, PublishOptions,
    SlowConsumerPolicy, Socket, Upgrade,
};
use edge_ws_protocol::OpCode;
use edge_ws_tests::*;

/// A tiny text protocol for the tests:
/// `sub T`, `unsub T`, `pub T BODY`, `pubx T BODY` (excluding the sender), `burst T N`
/// (N publishes `seq` 0..N), `core` (answers the core index), `vip` marks the socket.
struct PubSub;

struct Vip;

impl Handler for PubSub {
    fn on_upgrade(&mut self, req: &edge_ws::UpgradeRequest<'_>) -> Upgrade {
        if req.request.query_param("vip").is_some() {
            Upgrade::Accept(Some(Box::new(Vip)))
        } else {
            Upgrade::Accept(None)
        }
    }

    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let Some(text) = m.as_text() else { return };
        let mut parts = text.splitn(3, ' ');
        let (cmd, a, b) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        match cmd {
            "sub" => {
                s.subscribe(a);
                let _ = s.send_text("subscribed");
            }
            "unsub" => {
                s.unsubscribe(a);
                let _ = s.send_text("unsubscribed");
            }
            "pub" => s.publish(a, b),
            "pubx" => {
                let opts = PublishOptions {
                    exclude: Some(s.id()),
                    ..PublishOptions::default()
                };
                s.publish_with(a, b.as_bytes(), MessageKind::Text, opts);
            }
            "pubvip" => {
                let opts = PublishOptions {
                    filter: Some(Arc::new(|_, data| data.is_some_and(|d| d.is::<Vip>()))),
                    ..PublishOptions::default()
                };
                s.publish_with(a, b.as_bytes(), MessageKind::Text, opts);
            }
            "burst" => {
                let n: usize = b.parse().unwrap();
                let me = s.core();
                for i in 0..n {
                    s.publish(a, &format!("c{me} {i}"));
                }
            }
            "core" => {
                let c = s.core().to_string();
                let _ = s.send_text(&c);
            }
            // N publishes; the even ones exclude the sender.
            "burstx" => {
                let n: usize = b.parse().unwrap();
                for i in 0..n {
                    let opts = PublishOptions {
                        exclude: (i % 2 == 0).then(|| s.id()),
                        ..PublishOptions::default()
                    };
                    s.publish_with(a, format!("x {i}").as_bytes(), MessageKind::Text, opts);
                }
            }
            // Big (compressible) and small publishes, alternating, in one callback.
            "zmix" => {
                let n: usize = b.parse().unwrap();
                for i in 0..n {
                    s.publish(a, &big_text(i));
                    s.publish(a, &format!("small {i}"));
                }
            }
            // Interleaves publishes to two channels with direct sends, in one callback.
            "mix" => {
                let (t1, t2) = (a, b);
                for i in 0..100 {
                    s.publish(t1, &format!("a {i}"));
                    s.publish(t2, &format!("b {i}"));
                    let _ = s.send_text(&format!("d {i}"));
                }
            }
            // Membership changes between publishes in one callback.
            "flip" => {
                s.publish(a, "before-sub");
                s.subscribe(a);
                s.publish(a, "after-sub");
                s.unsubscribe(a);
                s.publish(a, "after-unsub");
                let _ = s.send_text("flipped");
            }
            // A plain, a filtered and a plain publish in a row: order must hold for the VIP.
            "pfp" => {
                s.publish(a, "p1");
                let opts = PublishOptions {
                    filter: Some(Arc::new(|_, data| data.is_some_and(|d| d.is::<Vip>()))),
                    ..PublishOptions::default()
                };
                s.publish_with(a, b"vip", MessageKind::Text, opts);
                s.publish(a, "p2");
            }
            // Publishes, then closes the sender (a subscriber): the close comes last.
            "pubclose" => {
                for i in 0..10 {
                    s.publish(a, &format!("{i}"));
                }
                s.close(edge_ws::CloseCode::NORMAL, "done");
            }
            _ => {}
        }
    }
}

/// A message well over the deflate threshold of [`deflate_room`], numbered `i`.
fn big_text(i: usize) -> String {
    format!("{i:04} {}", "compressible text ".repeat(20))
}

fn engine(cfg: Config) -> Engine {
    Engine::builder().config(cfg).build(|_| PubSub).unwrap()
}

fn text(c: &mut RawClient) -> String {
    loop {
        match c.recv().expect("connection open") {
            Message::Text(t) => return String::from_utf8(t.to_vec()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn cmd(c: &mut RawClient, s: &str) {
    c.send(OpCode::Text, s.as_bytes());
}

fn subscribe(c: &mut RawClient, channel: &str) {
    cmd(c, &format!("sub {channel}"));
    assert_eq!(text(c), "subscribed");
}

/// A client on core `want` (connect until the kernel's SO_REUSEPORT spread lands one there).
fn client_on_core(addr: std::net::SocketAddr, want: usize) -> RawClient {
    for _ in 0..200 {
        let mut c = RawClient::connect(addr, "/", None);
        cmd(&mut c, "core");
        if text(&mut c) == want.to_string() {
            return c;
        }
    }
    panic!("no connection landed on core {want}");
}

fn handle_metrics(h: &EngineHandle) -> edge_ws::MetricsSnapshot {
    h.metrics()
}

#[test]
fn every_subscriber_gets_every_message_once_in_order_from_every_publisher() {
    let engine = engine(test_config(2));
    let addr = engine.local_addr();
    let h = engine.handle();
    let mut subs: Vec<RawClient> = Vec::new();
    for core in [0, 1] {
        for _ in 0..6 {
            let mut c = client_on_core(addr, core);
            subscribe(&mut c, "room");
            subs.push(c);
        }
    }
    assert_eq!(h.subscriber_count("room"), 12);
    let mut p0 = client_on_core(addr, 0);
    let mut p1 = client_on_core(addr, 1);
    const N: usize = 300;
    cmd(&mut p0, &format!("burst room {N}"));
    cmd(&mut p1, &format!("burst room {N}"));
    let outside = {
        let h = h.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                h.publish("room", &format!("ext {i}"));
            }
        })
    };
    outside.join().unwrap();
    for (k, s) in subs.iter_mut().enumerate() {
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..3 * N {
            let t = text(s);
            let (who, seq) = t.split_once(' ').unwrap();
            let seq: usize = seq.parse().unwrap();
            let want = next.entry(who.to_string()).or_insert(0);
            assert_eq!(
                seq, *want,
                "subscriber {k}: {who} out of order or duplicated"
            );
            *want += 1;
        }
        assert_eq!(next.len(), 3, "three publishers");
        assert!(next.values().all(|&n| n == N));
    }
    let m = handle_metrics(&h);
    assert_eq!(m.deliveries, (3 * N * 12) as u64);
    h.shutdown();
    engine.join().unwrap();
}

#[test]
fn exclude_filter_unsubscribe_and_close() {
    let engine = engine(test_config(2));
    let addr = engine.local_addr();
    let mut a = RawClient::connect(addr, "/", None);
    let mut b = RawClient::connect(addr, "/?vip=1", None);
    let mut c = RawClient::connect(addr, "/", None);
    for x in [&mut a, &mut b, &mut c] {
        subscribe(x, "news");
    }
    // exclude: a's own message reaches b and c only
    cmd(&mut a, "pubx news from-a");
    assert_eq!(text(&mut b), "from-a");
    assert_eq!(text(&mut c), "from-a");
    // filter: only the VIP (b) gets it; then a marker proves a got nothing in between
    cmd(&mut a, "pubvip news vip-only");
    assert_eq!(text(&mut b), "vip-only");
    cmd(&mut c, "pub news marker");
    assert_eq!(text(&mut a), "marker");
    assert_eq!(text(&mut b), "marker");
    assert_eq!(text(&mut c), "marker");
    // unsubscribe stops delivery
    cmd(&mut c, "unsub news");
    assert_eq!(text(&mut c), "unsubscribed");
    cmd(&mut a, "pub news after-unsub");
    assert_eq!(text(&mut a), "after-unsub");
    assert_eq!(text(&mut b), "after-unsub");
    cmd(&mut c, "core");
    let core_answer = text(&mut c);
    assert!(
        core_answer == "0" || core_answer == "1",
        "c got {core_answer} instead of nothing"
    );
    // close leaves all channels
    assert_eq!(engine.handle().subscriber_count("news"), 2);
    drop(b);
    assert!(wait_until(Duration::from_secs(5), || engine
        .handle()
        .subscriber_count("news")
        == 1));
    let m = engine.handle().metrics();
    assert!(
        m.deliveries_filtered >= 3,
        "exclude + filter counted: {}",
        m.deliveries_filtered
    );
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn full_ring_spills_and_still_delivers_in_order() {
    let mut cfg = test_config(2);
    cfg.ring_capacity = 8;
    let engine = engine(cfg);
    let addr = engine.local_addr();
    let mut sub = client_on_core(addr, 1);
    subscribe(&mut sub, "t");
    let mut publisher = client_on_core(addr, 0);
    cmd(&mut publisher, "burst t 2000");
    for i in 0..2000 {
        assert_eq!(text(&mut sub), format!("c0 {i}"));
    }
    let m = engine.handle().metrics();
    assert!(m.spills > 0, "a ring of 8 must spill under a burst of 2000");
    assert!(m.ring_depth_hwm <= 8 * 2);
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn channel_without_subscribers_costs_no_cross_core_traffic() {
    let engine = engine(test_config(2));
    let addr = engine.local_addr();
    let mut local_sub = client_on_core(addr, 0);
    subscribe(&mut local_sub, "local-only");
    let mut p = client_on_core(addr, 0);
    let before = engine.handle().metrics();
    cmd(&mut p, "burst nobody 500");
    cmd(&mut p, "burst local-only 500");
    for i in 0..500 {
        assert_eq!(text(&mut local_sub), format!("c0 {i}"));
    }
    let after = engine.handle().metrics();
    assert_eq!(after.publishes - before.publishes, 1000);
    assert_eq!(
        after.forwarded, before.forwarded,
        "nothing crossed to core 1"
    );
    // From outside: a channel never subscribed is not even queued.
    engine.handle().publish("never", "x");
    assert_eq!(engine.handle().metrics().forwarded, after.forwarded);
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn slow_subscriber_does_not_slow_the_others() {
    for policy in [SlowConsumerPolicy::DropNewest, SlowConsumerPolicy::Close] {
        let mut cfg = test_config(2);
        cfg.write_buffer_limit = 64 * 1024;
        cfg.slow_consumer = policy;
        let engine = engine(cfg);
        let addr = engine.local_addr();
        let mut slow = RawClient::connect(addr, "/", None);
        subscribe(&mut slow, "feed");
        slow.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut fast = RawClient::connect(addr, "/", None);
        subscribe(&mut fast, "feed");
        let mut publisher = RawClient::connect(addr, "/", None);
        // 32 MiB in all: more than loopback's socket buffers can hide.
        let body = "x".repeat(16 * 1024);
        let mut worst = Duration::ZERO;
        for i in 0..2000 {
            let sent = Instant::now();
            cmd(&mut publisher, &format!("pub feed {i} {body}"));
            let got = text(&mut fast);
            worst = worst.max(sent.elapsed());
            assert!(got.starts_with(&format!("{i} ")));
        }
        assert!(
            worst < Duration::from_secs(2),
            "fast subscriber waited {worst:?}"
        );
        let m = engine.handle().metrics();
        match policy {
            SlowConsumerPolicy::DropNewest => assert!(m.slow_consumer_drops > 0),
            SlowConsumerPolicy::Close => {
                assert_eq!(m.slow_consumer_closes, 1);
                assert_eq!(
                    slow.expect_close(),
                    Some(edge_ws::config::CLOSE_SLOW_CONSUMER.0)
                );
            }
        }
        engine.handle().shutdown();
        drop(slow);
        engine.join().unwrap();
    }
}

#[test]
fn corked_runs_share_one_buffer_per_subscriber() {
    // One engine core, so every publish of a burst lands in the same corked run.
    let engine = engine(test_config(1));
    let addr = engine.local_addr();
    let mut subs: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut c = RawClient::connect(addr, "/", None);
            subscribe(&mut c, "ticks");
            c
        })
        .collect();
    let mut p = RawClient::connect(addr, "/", None);
    let before = engine.handle().metrics();
    cmd(&mut p, "burst ticks 1000");
    for s in subs.iter_mut() {
        for i in 0..1000 {
            assert_eq!(text(s), format!("c0 {i}"));
        }
    }
    let m = engine.handle().metrics();
    let deliveries = m.deliveries - before.deliveries;
    let runs = m.delivery_runs - before.delivery_runs;
    assert_eq!(deliveries, 4000);
    // ~12-byte frames: a 64 KiB run holds the whole burst; allow a few splits.
    assert!(
        runs <= 4 * 4,
        "1000 publishes in one callback should reach each subscriber in a few buffers, got {runs}"
    );
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn corked_publishes_keep_order_with_sends_membership_filters_and_close() {
    let engine = engine(test_config(1));
    let addr = engine.local_addr();
    // Publishes to two channels interleaved with direct sends reach a socket in call order.
    let mut me = RawClient::connect(addr, "/", None);
    subscribe(&mut me, "t1");
    subscribe(&mut me, "t2");
    cmd(&mut me, "mix t1 t2");
    for i in 0..100 {
        assert_eq!(text(&mut me), format!("a {i}"));
        assert_eq!(text(&mut me), format!("b {i}"));
        assert_eq!(text(&mut me), format!("d {i}"));
    }
    // A subscribe sees only later publishes; an unsubscribe still gets the earlier ones.
    let mut f = RawClient::connect(addr, "/", None);
    cmd(&mut f, "flip solo");
    assert_eq!(text(&mut f), "after-sub");
    assert_eq!(text(&mut f), "flipped");
    // A filtered publish between two plain ones: the VIP gets all three in order.
    let mut vip = RawClient::connect(addr, "/?vip=1", None);
    let mut plain = RawClient::connect(addr, "/", None);
    subscribe(&mut vip, "v");
    subscribe(&mut plain, "v");
    cmd(&mut plain, "pfp v");
    for want in ["p1", "vip", "p2"] {
        assert_eq!(text(&mut vip), want);
    }
    assert_eq!(text(&mut plain), "p1");
    assert_eq!(text(&mut plain), "p2");
    // Publishes made before a close reach the closing subscriber before its close frame.
    let mut c = RawClient::connect(addr, "/", None);
    subscribe(&mut c, "last");
    cmd(&mut c, "pubclose last");
    for i in 0..10 {
        assert_eq!(text(&mut c), i.to_string());
    }
    assert_eq!(c.expect_close(), Some(1000));
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn corked_runs_with_an_excluded_sender() {
    let engine = engine(test_config(1));
    let addr = engine.local_addr();
    let mut clients: Vec<RawClient> = (0..3)
        .map(|_| {
            let mut c = RawClient::connect(addr, "/", None);
            subscribe(&mut c, "room");
            c
        })
        .collect();
    let before = engine.handle().metrics();
    cmd(&mut clients[0], "burstx room 400");
    for c in clients[1..].iter_mut() {
        for i in 0..400 {
            assert_eq!(text(c), format!("x {i}"));
        }
    }
    // The sender gets only the publishes that did not exclude it, in order, and nothing else.
    for i in (1..400).step_by(2) {
        assert_eq!(text(&mut clients[0]), format!("x {i}"));
    }
    cmd(&mut clients[0], "core");
    assert_eq!(text(&mut clients[0]), "0");
    let m = engine.handle().metrics();
    assert_eq!(m.deliveries - before.deliveries, 400 * 2 + 200);
    assert_eq!(m.deliveries_filtered - before.deliveries_filtered, 200);
    // The two others share runs; only the sender gets its 200 messages one by one.
    let runs = m.delivery_runs - before.delivery_runs;
    assert!(runs <= 200 + 2 * 4, "{runs} buffers queued");
    engine.handle().shutdown();
    engine.join().unwrap();
}

/// Subscribers with and without permessage-deflate on one core; returns the engine, the
/// subscribers (deflate ones first) and a publisher.
fn deflate_room(
    server_no_context_takeover: bool,
    deflated: usize,
) -> (Engine, Vec<RawClient>, RawClient) {
    use edge_ws_protocol::deflate::DeflateConfig;
    let mut cfg = test_config(1);
    cfg.deflate = Some(DeflateConfig {
        enabled: true,
        threshold: 64,
        server_no_context_takeover,
        ..DeflateConfig::default()
    });
    let engine = engine(cfg);
    let addr = engine.local_addr();
    let client_cfg = DeflateConfig {
        enabled: true,
        ..DeflateConfig::default()
    };
    let mut subs = Vec::new();
    for _ in 0..deflated {
        let mut c = RawClient::connect_deflate(addr, "/", &client_cfg);
        subscribe(&mut c, "z");
        subs.push(c);
    }
    let mut plain = RawClient::connect(addr, "/", None);
    subscribe(&mut plain, "z");
    subs.push(plain);
    let publisher = RawClient::connect(addr, "/", None);
    (engine, subs, publisher)
}

#[test]
fn fan_out_with_deflate_shares_or_compresses_per_connection() {
    // Big (compressed) and small (below the threshold) publishes, interleaved: first one per
    // callback, then 40 in one callback (one corked run).
    for no_takeover in [true, false] {
        let (engine, mut subs, mut publisher) = deflate_room(no_takeover, 3);
        let before = engine.handle().metrics();
        for i in 0..20 {
            cmd(&mut publisher, &format!("pub z {}", big_text(i)));
            cmd(&mut publisher, &format!("pub z small {i}"));
        }
        cmd(&mut publisher, "zmix z 20");
        for s in subs.iter_mut() {
            for _ in 0..2 {
                for i in 0..20 {
                    assert_eq!(text(s), big_text(i));
                    assert_eq!(text(s), format!("small {i}"));
                }
            }
        }
        let m = engine.handle().metrics();
        let compressed = m.compressed_out - before.compressed_out;
        if no_takeover {
            // One compressed frame per big message, shared by the three deflate subscribers.
            assert_eq!(compressed, 40, "shared compression");
        } else {
            // Each deflate subscriber keeps its context: its own compressed frame per message.
            assert_eq!(compressed, 3 * 40, "per-connection compression");
        }
        assert_eq!(m.deliveries - before.deliveries, 4 * 80);
        engine.handle().shutdown();
        engine.join().unwrap();
    }
}
