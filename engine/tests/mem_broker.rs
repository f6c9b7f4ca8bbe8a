//! The broker seam (`edge_ws::broker`) on in-memory engines joined by an in-process bus that
//! behaves as a cluster broker should (numbers streams, sends each publication to the
//! subscribed nodes), with hooks to lose publications and subscriptions on purpose: what the
//! engine tells a broker (first and last subscriber, publishes), and how an owner core keeps
//! its stream mirror (snapshot, held publications, gaps filled in order, epoch changes).
//! Needs no Redis; engine/cluster/tests run the same paths against a real one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use edge_ws::broker::{
    AppendAck, Broker, BrokerAck, BrokerEntry, BrokerSink, BrokerSnapshot, BrokerState,
    BrokerStats, StreamAppend,
};
use edge_ws::stream::PublicationFormat;
use edge_ws::testing::{MemClient, MemEngine, MemStreams};
use edge_ws::{
    ChannelConfig, ChannelPolicy, Config, Handler, Message, MessageKind, PublishOptions, Recovery,
    Socket, StreamPosition,
};

#[derive(Default)]
struct Stream {
    epoch: u64,
    entries: Vec<BrokerEntry>,
}

#[derive(Default)]
struct BusState {
    sinks: Vec<BrokerSink>,
    subscribed: Vec<HashSet<String>>,
    streams: HashMap<String, Stream>,
    /// `(node, event)` in order: `sub x`, `unsub x`, `pub x`.
    log: Vec<(usize, String)>,
    /// Node whose stream publications are not delivered (a broken subscription).
    deaf: Option<usize>,
    /// `(node, publications)` of every flush that sent held publications, in order.
    batches: Vec<(usize, usize)>,
}

/// The cluster: one bus, a `Node` handle per engine.
#[derive(Default, Clone)]
struct Bus(Arc<Mutex<BusState>>);

/// A publication held until its node's next flush: channel, payload, kind, ack.
type Held = (String, Vec<u8>, MessageKind, Option<BrokerAck>);

struct Node {
    bus: Bus,
    id: usize,
    held: Mutex<Vec<Held>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    fn node(&self) -> Arc<Node> {
        let mut s = self.0.lock().unwrap();
        s.subscribed.push(HashSet::new());
        Arc::new(Node {
            bus: self.clone(),
            id: s.subscribed.len() - 1,
            held: Mutex::default(),
        })
    }

    fn log(&self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.0.lock().unwrap().log)
    }

    fn batches(&self) -> Vec<(usize, usize)> {
        std::mem::take(&mut self.0.lock().unwrap().batches)
    }

    fn snapshot(&self, channel: &str) -> BrokerSnapshot {
        let mut s = self.0.lock().unwrap();
        let st = s.streams.entry(channel.to_string()).or_default();
        if st.epoch == 0 {
            st.epoch = 77;
        }
        BrokerSnapshot {
            position: StreamPosition {
                offset: st.entries.last().map_or(0, |e| e.offset),
                epoch: st.epoch,
            },
            entries: st.entries.clone(),
        }
    }
}

impl Broker for Node {
    fn start(&self, sink: BrokerSink) {
        let mut s = self.bus.0.lock().unwrap();
        while s.sinks.len() <= self.id {
            s.sinks.push(sink.clone());
        }
        s.sinks[self.id] = sink;
    }

    fn publish(&self, channel: &str, payload: &[u8], kind: MessageKind, done: Option<BrokerAck>) {
        let targets: Vec<BrokerSink> = {
            let mut s = self.bus.0.lock().unwrap();
            s.log.push((self.id, format!("pub {channel}")));
            (0..s.sinks.len())
                .filter(|&n| n != self.id && s.subscribed[n].contains(channel))
                .map(|n| s.sinks[n].clone())
                .collect()
        };
        for t in targets {
            t.deliver(channel, payload, kind);
        }
        if let Some(done) = done {
            done(Ok(()));
        }
    }

    /// Held until the node's flush, then sent as one batch (each target node gets it as one
    /// burst), as the Redis broker does.
    fn publish_held(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        done: Option<BrokerAck>,
    ) {
        let mut s = self.bus.0.lock().unwrap();
        s.log.push((self.id, format!("pub {channel}")));
        self.held
            .lock()
            .unwrap()
            .push((channel.to_string(), payload.to_vec(), kind, done));
    }

    fn flush(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        if held.is_empty() {
            return;
        }
        let (sinks, subscribed) = {
            let mut s = self.bus.0.lock().unwrap();
            s.batches.push((self.id, held.len()));
            (s.sinks.clone(), s.subscribed.clone())
        };
        let mut bursts: Vec<_> = sinks.iter().map(BrokerSink::burst).collect();
        for (channel, payload, kind, done) in held {
            for (n, burst) in bursts.iter_mut().enumerate() {
                if n != self.id && subscribed[n].contains(&channel) {
                    burst.deliver(&channel, &payload, kind);
                }
            }
            if let Some(done) = done {
                done(Ok(()));
            }
        }
    }

    fn broadcast(&self, _payload: &[u8], _kind: MessageKind) {
        self.bus.0.lock().unwrap().log.push((self.id, "all".into()));
    }

    fn subscribe(&self, channel: &str) {
        let mut s = self.bus.0.lock().unwrap();
        s.log.push((self.id, format!("sub {channel}")));
        let sink = s.sinks[self.id].clone();
        if sink.interested(channel) && s.subscribed[self.id].insert(channel.to_string()) {
            let stream = sink.policy(channel).is_stream();
            drop(s);
            if stream {
                let snap = self.bus.snapshot(channel);
                sink.synced(channel, Ok(snap), true);
            }
        }
    }

    fn unsubscribe(&self, channel: &str) {
        let mut s = self.bus.0.lock().unwrap();
        s.log.push((self.id, format!("unsub {channel}")));
        let sink = s.sinks[self.id].clone();
        if !sink.interested(channel) && s.subscribed[self.id].remove(channel) {
            drop(s);
            sink.desynced(channel);
        }
    }

    fn sequences_streams(&self) -> bool {
        true
    }

    fn stream_append(&self, a: StreamAppend, done: AppendAck) {
        let (entry, epoch, targets) = {
            let mut s = self.bus.0.lock().unwrap();
            let deaf = s.deaf;
            let st = s.streams.entry(a.channel.to_string()).or_default();
            if st.epoch == 0 {
                st.epoch = 77;
            }
            let entry = BrokerEntry {
                offset: st.entries.last().map_or(0, |e| e.offset) + 1,
                timestamp_ms: a.timestamp_ms,
                kind: a.kind,
                payload: a.payload.clone(),
            };
            st.entries.push(entry.clone());
            let epoch = st.epoch;
            let targets: Vec<BrokerSink> = (0..s.sinks.len())
                .filter(|&n| s.subscribed[n].contains(&*a.channel) && Some(n) != deaf)
                .map(|n| s.sinks[n].clone())
                .collect();
            (entry, epoch, targets)
        };
        let position = StreamPosition {
            offset: entry.offset,
            epoch,
        };
        for t in targets {
            t.stream_publication(&a.channel, entry.clone(), epoch);
        }
        done(Ok(edge_ws::Published {
            position: Some(position),
            duplicate: false,
        }));
    }

    fn stream_sync(&self, channel: &str, _max: usize) {
        let (sink, live) = {
            let s = self.bus.0.lock().unwrap();
            (
                s.sinks[self.id].clone(),
                s.subscribed[self.id].contains(channel),
            )
        };
        sink.synced(channel, Ok(self.bus.snapshot(channel)), live);
    }

    fn state(&self) -> BrokerState {
        BrokerState::Up
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats::default()
    }
}

/// `<offset>|<payload>` for stream publications.
struct Fmt;

impl PublicationFormat for Fmt {
    fn encode(
        &self,
        _: &str,
        p: StreamPosition,
        payload: &[u8],
        kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind> {
        out.extend_from_slice(format!("{}|", p.offset).as_bytes());
        out.extend_from_slice(payload);
        Some(kind)
    }
}

/// `sub <ch> [<offset> <epoch>]`, `unsub <ch>`, `pub <ch> <text>`.
struct App;

impl Handler for App {
    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let Message::Text(t) = m else { return };
        let t = String::from_utf8_lossy(&t).to_string();
        let p: Vec<&str> = t.splitn(4, ' ').collect();
        match p[0] {
            "sub" => {
                let since = (p.len() == 4).then(|| StreamPosition {
                    offset: p[2].parse().unwrap(),
                    epoch: p[3].parse().unwrap(),
                });
                s.subscribe_with(p[1], since, |s, r| {
                    let r = r.unwrap();
                    let what = match r.recovery {
                        Recovery::NotRequested => "live".to_string(),
                        Recovery::Recovered { missed } => format!("recovered:{missed}"),
                        Recovery::Failed(f) => format!("failed:{f:?}"),
                    };
                    let at = r.position.map_or(0, |p| p.offset);
                    let _ = s.send_text(&format!("subscribed {at} {what}"));
                });
            }
            "unsub" => {
                s.unsubscribe(p[1]);
            }
            "pub" => s.publish(p[1], p[2]),
            other => panic!("unknown {other}"),
        }
    }
}

fn node(bus: &Bus, cores: usize) -> (MemEngine<App>, Arc<Node>) {
    let n = bus.node();
    let mut c = Config::default();
    c.channels = ChannelConfig::default().namespace("h:", ChannelPolicy::history(100));
    let s = MemStreams {
        format: Some(Arc::new(Fmt)),
        broker: Some(n.clone()),
        ..MemStreams::default()
    };
    (MemEngine::with_streams(c, cores, s, |_| App), n)
}

fn texts(c: &mut MemClient) -> Vec<String> {
    std::iter::from_fn(|| c.recv_text()).collect()
}

fn pump(engines: &[&MemEngine<App>]) {
    for _ in 0..8 {
        for e in engines {
            e.pump();
        }
    }
}

#[test]
fn the_broker_hears_of_the_first_and_last_subscriber_and_gets_each_publish_once() {
    let bus = Bus::default();
    let (a, _) = node(&bus, 2);
    let (b, _) = node(&bus, 2);
    // Two subscribers on B on two cores, one on A.
    let mut b0 = b.connect(0, "/");
    let mut b1 = b.connect(1, "/");
    let mut a0 = a.connect(0, "/");
    for c in [&mut b0, &mut b1, &mut a0] {
        c.send_text("sub news");
    }
    pump(&[&a, &b]);
    for c in [&mut b0, &mut b1, &mut a0] {
        assert_eq!(texts(c), vec!["subscribed 0 live"]);
    }
    // One subscription per node, not per subscriber or core.
    let mut log = bus.log();
    log.sort();
    assert_eq!(log, vec![(0, "sub news".into()), (1, "sub news".into())]);
    // A publish on A: once to the broker, delivered on A at once and on B through it.
    a0.send_text("pub news hello");
    pump(&[&a, &b]);
    assert_eq!(bus.log(), vec![(0, "pub news".to_string())]);
    for c in [&mut b0, &mut b1, &mut a0] {
        assert_eq!(texts(c), vec!["hello"]);
    }
    // A publish from a handle reaches the broker even where nobody subscribes.
    b.handle().publish("elsewhere", "x");
    assert_eq!(bus.log(), vec![(1, "pub elsewhere".to_string())]);
    // A publish with a filter (a closure over this node's connections) stays on its node.
    let filtered = || PublishOptions {
        filter: Some(Arc::new(|_, _| true)),
        ..PublishOptions::default()
    };
    a.handle()
        .publish_with("news", b"mine", MessageKind::Text, filtered());
    a.handle()
        .broadcast_all(b"mine too", MessageKind::Text, filtered());
    pump(&[&a, &b]);
    assert_eq!(bus.log(), vec![]);
    assert_eq!(texts(&mut a0), vec!["mine", "mine too"]);
    assert_eq!(texts(&mut b0), Vec::<String>::new());
    a.handle()
        .broadcast_all(b"everyone", MessageKind::Text, PublishOptions::default());
    pump(&[&a, &b]);
    assert_eq!(bus.log(), vec![(0, "all".to_string())]);
    assert_eq!(texts(&mut a0), vec!["everyone"]);
    // The last subscriber leaving B unsubscribes B (the first leaving does not).
    b0.send_text("unsub news");
    pump(&[&a, &b]);
    assert_eq!(bus.log(), vec![]);
    b1.send_text("unsub news");
    pump(&[&a, &b]);
    assert_eq!(bus.log(), vec![(1, "unsub news".to_string())]);
    a0.send_text("pub news again");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut a0), vec!["again"]);
    assert_eq!(texts(&mut b0), Vec::<String>::new());
}

/// `n` masked text frames (mask key 0) in one buffer, as a client writes a burst at once.
fn frames(texts: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        assert!(t.len() < 126);
        out.extend_from_slice(&[0x81, 0x80 | t.len() as u8, 0, 0, 0, 0]);
        out.extend_from_slice(t.as_bytes());
    }
    out
}

#[test]
fn what_a_core_publishes_in_one_read_crosses_as_one_batch_and_one_buffer_per_subscriber() {
    let bus = Bus::default();
    let (a, _) = node(&bus, 1);
    let (b, _) = node(&bus, 2);
    let mut b0 = b.connect(0, "/");
    let mut b1 = b.connect(1, "/");
    for c in [&mut b0, &mut b1] {
        c.send_text("sub news");
    }
    pump(&[&a, &b]);
    for c in [&mut b0, &mut b1] {
        assert_eq!(texts(c), vec!["subscribed 0 live"]);
    }
    bus.log();
    let before = b.metrics();
    // 32 publishes in one read of the publisher's connection on A.
    let mut publisher = a.connect(0, "/");
    publisher.send_raw(&frames((0..32).map(|i| format!("pub news m{i}"))));
    pump(&[&a, &b]);
    // One flush of A's core carried all 32 (B got them as one burst).
    assert_eq!(bus.batches(), vec![(0, 32)]);
    assert_eq!(bus.log().len(), 32);
    let want: Vec<String> = (0..32).map(|i| format!("m{i}")).collect();
    for c in [&mut b0, &mut b1] {
        assert_eq!(texts(c), want);
    }
    // Each of B's two subscribers got the 32 as one queued buffer.
    let after = b.metrics();
    assert_eq!(after.deliveries - before.deliveries, 64);
    assert_eq!(after.delivery_runs - before.delivery_runs, 2);
    // A handle's publish is flushed at once (no core loop follows it).
    a.handle().publish("news", "from a handle");
    assert_eq!(bus.batches(), vec![(0, 1)]);
    pump(&[&a, &b]);
    for c in [&mut b0, &mut b1] {
        assert_eq!(texts(c), vec!["from a handle"]);
    }
}

#[test]
fn a_stream_mirror_recovers_fills_gaps_in_order_and_resyncs_after_an_outage() {
    let bus = Bus::default();
    let (a, _) = node(&bus, 2);
    let (b, nb) = node(&bus, 2);
    // Three publications before B listens.
    let acks = Arc::new(Mutex::new(Vec::new()));
    for i in 1..=3 {
        let acks = acks.clone();
        a.handle().publish_acked(
            "h:x",
            format!("p{i}").as_bytes(),
            MessageKind::Text,
            PublishOptions::default(),
            move |r| {
                acks.lock()
                    .unwrap()
                    .push(r.unwrap().position.unwrap().offset)
            },
        );
    }
    pump(&[&a, &b]);
    assert_eq!(*acks.lock().unwrap(), vec![1, 2, 3]);
    // A subscriber on B recovering from offset 1 (on the core that does not own the channel
    // and on the one that does: both wait for the snapshot).
    let mut s0 = b.connect(0, "/");
    let mut s1 = b.connect(1, "/");
    s0.send_text("sub h:x 1 77");
    s1.send_text("sub h:x 0 77");
    pump(&[&a, &b]);
    assert_eq!(
        texts(&mut s0),
        vec!["subscribed 3 recovered:2", "2|p2", "3|p3"]
    );
    assert_eq!(
        texts(&mut s1),
        vec!["subscribed 3 recovered:3", "1|p1", "2|p2", "3|p3"]
    );
    // Live, numbered by the broker, delivered from it.
    let mut pub_a = a.connect(0, "/");
    pub_a.send_text("pub h:x p4");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut s0), vec!["4|p4"]);
    assert_eq!(texts(&mut s1), vec!["4|p4"]);
    // B misses 5 and 6 (its subscription broke without it noticing); 7 arrives: the owner
    // sees the gap, reads the broker's tail and delivers 5, 6, 7 in order.
    bus.0.lock().unwrap().deaf = Some(nb.id);
    pub_a.send_text("pub h:x p5");
    pub_a.send_text("pub h:x p6");
    pump(&[&a, &b]);
    bus.0.lock().unwrap().deaf = None;
    pub_a.send_text("pub h:x p7");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut s0), vec!["5|p5", "6|p6", "7|p7"]);
    assert_eq!(texts(&mut s1), vec!["5|p5", "6|p6", "7|p7"]);
    // An outage the broker reports: desynced, 8 published meanwhile, then the broker is
    // back and hands a snapshot: 8 is delivered, then live again.
    let sink = bus.0.lock().unwrap().sinks[nb.id].clone();
    bus.0.lock().unwrap().deaf = Some(nb.id);
    sink.desynced("h:x");
    pub_a.send_text("pub h:x p8");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut s0), Vec::<String>::new());
    bus.0.lock().unwrap().deaf = None;
    sink.synced("h:x", Ok(bus.snapshot("h:x")), true);
    pub_a.send_text("pub h:x p9");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut s0), vec!["8|p8", "9|p9"]);
    assert_eq!(texts(&mut s1), vec!["8|p8", "9|p9"]);
    // A new subscriber on B recovers from B's mirror, with no broker read.
    let mut late = b.connect(1, "/");
    late.send_text("sub h:x 7 77");
    pump(&[&a, &b]);
    assert_eq!(
        texts(&mut late),
        vec!["subscribed 9 recovered:2", "8|p8", "9|p9"]
    );
    // The broker lost the stream (a Redis restarted empty): a new epoch; live subscribers
    // continue in it, an old position fails.
    {
        let mut s = bus.0.lock().unwrap();
        let st = s.streams.get_mut("h:x").unwrap();
        st.epoch = 78;
        st.entries.clear();
    }
    pub_a.send_text("pub h:x fresh");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut s0), vec!["1|fresh"]);
    let mut old = b.connect(0, "/");
    old.send_text("sub h:x 9 77");
    pump(&[&a, &b]);
    assert_eq!(texts(&mut old), vec!["subscribed 1 failed:EpochChanged"]);
}
