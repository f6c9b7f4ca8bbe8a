//! Channels with history on in-memory cores: offsets in one order for every subscriber
//! whoever publishes, recovery after a reconnect (true and false), size and TTL, idempotent
//! publish, history reads, in-process subscribers, and a store that fails. No socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_ws::stream::{CommitAck, PublicationFormat, StoredPublication, StreamStore};
use edge_ws::testing::{MemClient, MemEngine, MemStreams};
use edge_ws::{
    ChannelConfig, ChannelPolicy, Config, Handler, HistoryQuery, Message, MessageKind,
    PublishOptions, Recovery, Socket, StreamError, StreamPosition,
};

/// Publications reach clients as "<offset> <epoch> <payload>".
struct Fmt;

impl PublicationFormat for Fmt {
    fn encode(
        &self,
        _channel: &str,
        p: StreamPosition,
        payload: &[u8],
        kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind> {
        out.extend_from_slice(format!("{} {} ", p.offset, p.epoch).as_bytes());
        out.extend_from_slice(payload);
        Some(kind)
    }
}

/// Text commands: `sub CH [OFFSET EPOCH]`, `pub CH TEXT`, `apub CH KEY|- TEXT`, `burst CH N`,
/// `hist CH N`, `unsub CH`.
struct App {
    /// Publishes made by `burst` on this core (numbers them).
    n: usize,
}

impl Handler for App {
    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let text = m.as_text().unwrap().to_owned();
        let parts: Vec<&str> = text.splitn(4, ' ').collect();
        match parts[0] {
            "sub" => {
                let since = (parts.len() == 4).then(|| StreamPosition {
                    offset: parts[2].parse().unwrap(),
                    epoch: parts[3].parse().unwrap(),
                });
                s.subscribe_with(parts[1], since, |s, r| {
                    let reply = match r {
                        Ok(sub) => {
                            let what = match sub.recovery {
                                Recovery::NotRequested => "live".to_string(),
                                Recovery::Recovered { missed } => format!("recovered:{missed}"),
                                Recovery::Failed(f) => format!("failed:{f:?}"),
                            };
                            let pos = sub.position.map_or("none".to_string(), |p| {
                                format!("{} {}", p.offset, p.epoch)
                            });
                            format!("subscribed {what} {pos}")
                        }
                        Err(e) => format!("error {e}"),
                    };
                    let _ = s.send_text(&reply);
                });
            }
            "unsub" => {
                s.unsubscribe(parts[1]);
            }
            "pub" => s.publish(parts[1], parts[2]),
            "burst" => {
                let core = s.core();
                for _ in 0..parts[2].parse::<usize>().unwrap() {
                    s.publish(parts[1], &format!("c{core}-{}", self.n));
                    self.n += 1;
                }
            }
            "apub" => {
                let opts = PublishOptions {
                    idempotency_key: (parts[2] != "-").then(|| parts[2].into()),
                    ..PublishOptions::default()
                };
                let payload = parts.get(3).copied().unwrap_or("");
                s.publish_acked(
                    parts[1],
                    payload.as_bytes(),
                    MessageKind::Text,
                    opts,
                    |s, r| {
                        let reply = match r {
                            Ok(p) => format!(
                                "ack {} dup={}",
                                p.position.map_or(0, |p| p.offset),
                                p.duplicate
                            ),
                            Err(e) => format!("error {e} retry={}", e.is_retryable()),
                        };
                        let _ = s.send_text(&reply);
                    },
                );
            }
            "hist" => {
                let n = parts[2].parse().unwrap();
                s.read_history(parts[1], HistoryQuery::Last(n), |s, r| {
                    let reply = match r {
                        Ok(page) => format!(
                            "hist {} first={} [{}]",
                            page.position.offset,
                            page.first_offset,
                            page.publications
                                .iter()
                                .map(|p| p.offset.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        Err(e) => format!("error {e}"),
                    };
                    let _ = s.send_text(&reply);
                });
            }
            other => panic!("unknown command {other}"),
        }
    }
}

fn config(channels: ChannelConfig) -> Config {
    let mut c = Config::default();
    c.channels = channels;
    c
}

fn streams() -> ChannelConfig {
    ChannelConfig::default()
        .namespace("h:", ChannelPolicy::history(1000))
        .namespace("small:", ChannelPolicy::history(3))
        .namespace(
            "ttl:",
            ChannelPolicy::history(100).ttl(Duration::from_millis(30)),
        )
}

fn engine(cores: usize) -> MemEngine<App> {
    let s = MemStreams {
        format: Some(Arc::new(Fmt)),
        ..MemStreams::default()
    };
    MemEngine::with_streams(config(streams()), cores, s, |_| App { n: 0 })
}

fn texts(c: &mut MemClient) -> Vec<String> {
    std::iter::from_fn(|| c.recv_text()).collect()
}

/// `(offset, epoch, payload)` of a publication message.
fn parse(p: &str) -> (u64, u64, String) {
    let mut it = p.splitn(3, ' ');
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().to_string(),
    )
}

/// Subscribes and returns the reply.
fn sub(engine: &MemEngine<App>, c: &mut MemClient, cmd: &str) -> String {
    c.send_text(cmd);
    engine.pump();
    c.recv_text().expect("a subscribe reply")
}

#[test]
fn every_subscriber_sees_one_order_whoever_publishes() {
    let engine = engine(3);
    let channel = "h:order";
    let mut subs: Vec<MemClient> = (0..3).map(|core| engine.connect(core, "/")).collect();
    for c in subs.iter_mut() {
        let r = sub(&engine, c, &format!("sub {channel}"));
        assert!(r.starts_with("subscribed live 0 "), "{r}");
    }
    let mut pubs: Vec<MemClient> = (0..3).map(|core| engine.connect(core, "/")).collect();
    // Publishers on every core and on two outside threads, all at once.
    let handle = engine.handle();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let h = handle.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    h.publish(channel, &format!("t{t}-{i}"));
                }
            })
        })
        .collect();
    for round in 0..4 {
        for p in pubs.iter_mut() {
            p.send_text(&format!("burst {channel} 25"));
        }
        if round == 1 {
            for t in &threads {
                while !t.is_finished() {
                    std::thread::yield_now();
                }
            }
        }
        engine.pump();
    }
    for t in threads {
        t.join().unwrap();
    }
    engine.pump();
    let total = 3 * 4 * 25 + 2 * 100;
    let mut first: Option<Vec<String>> = None;
    for c in subs.iter_mut() {
        let got = texts(c);
        assert_eq!(got.len(), total);
        let offsets: Vec<u64> = got.iter().map(|p| parse(p).0).collect();
        assert_eq!(
            offsets,
            (1..=total as u64).collect::<Vec<_>>(),
            "no gap, no reorder"
        );
        // Per-publisher order within the one order.
        for src in ["c0-", "c1-", "c2-", "t0-", "t1-"] {
            let seq: Vec<usize> = got
                .iter()
                .map(|p| parse(p).2)
                .filter(|p| p.starts_with(src))
                .map(|p| p[3..].parse().unwrap())
                .collect();
            let mut sorted = seq.clone();
            sorted.sort_unstable();
            assert_eq!(seq, sorted, "{src} in its order");
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "every subscriber sees the same sequence"),
        }
    }
    assert_eq!(engine.metrics().stream_published, total as u64);
}

#[test]
fn a_reconnecting_subscriber_recovers_in_order_while_publishing_goes_on() {
    let engine = engine(3);
    let channel = "h:recover";
    // Whichever core owns the channel: a subscriber on every core in turn.
    for core in 0..3 {
        let mut first = engine.connect(core, "/");
        let r = sub(&engine, &mut first, &format!("sub {channel}"));
        assert!(r.starts_with("subscribed live "), "{r}");
        let mut publisher = engine.connect((core + 1) % 3, "/");
        publisher.send_text(&format!("burst {channel} 10"));
        engine.pump();
        let seen = texts(&mut first);
        assert_eq!(seen.len(), 10);
        let (last, epoch, _) = parse(seen.last().unwrap());
        // Gone; 20 more are published; back with its position while 15 more are published
        // in the same pump from another core.
        drop(first);
        publisher.send_text(&format!("burst {channel} 20"));
        engine.pump();
        let mut again = engine.connect(core, "/");
        again.send_text(&format!("sub {channel} {last} {epoch}"));
        publisher.send_text(&format!("burst {channel} 15"));
        engine.pump();
        let got = texts(&mut again);
        assert!(got[0].starts_with("subscribed recovered:"), "{}", got[0]);
        let offsets: Vec<u64> = got[1..].iter().map(|p| parse(p).0).collect();
        assert_eq!(
            offsets,
            ((last + 1)..=(last + 35)).collect::<Vec<_>>(),
            "replay then live: no duplicate, no gap at the switch"
        );
        let missed: usize = got[0]
            .split(' ')
            .nth(1)
            .unwrap()
            .trim_start_matches("recovered:")
            .parse()
            .unwrap();
        assert!((20..=35).contains(&missed), "{missed}");
    }
    assert!(engine.metrics().stream_replayed >= 60);
}

#[test]
fn recovery_fails_with_the_reason_when_the_past_is_gone() {
    let engine = engine(2);
    let mut c = engine.connect(0, "/");
    let mut p = engine.connect(1, "/");
    p.send_text("burst small:x 10");
    engine.pump();
    // Size 3 keeps offsets 8..=10: from 5, too old; from 7, recovered.
    let r = sub(&engine, &mut c, "sub small:x 0 1");
    assert!(r.starts_with("subscribed failed:EpochChanged 10 "), "{r}");
    let epoch: u64 = r.rsplit(' ').next().unwrap().parse().unwrap();
    c.send_text("unsub small:x");
    let r = sub(&engine, &mut c, &format!("sub small:x 5 {epoch}"));
    assert_eq!(r, format!("subscribed failed:TooOld 10 {epoch}"));
    c.send_text("unsub small:x");
    let r = sub(&engine, &mut c, &format!("sub small:x 11 {epoch}"));
    assert_eq!(r, format!("subscribed failed:Ahead 10 {epoch}"));
    c.send_text("unsub small:x");
    c.send_text(&format!("sub small:x 7 {epoch}"));
    engine.pump();
    let got = texts(&mut c);
    assert_eq!(got[0], format!("subscribed recovered:3 10 {epoch}"));
    assert_eq!(
        got[1..].iter().map(|p| parse(p).0).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    // A channel without history: no position, recovery impossible, told so.
    let r = sub(&engine, &mut c, "sub plain 3 4");
    assert_eq!(r, "subscribed failed:NoHistory none");
    assert_eq!(engine.metrics().stream_recovery_failed, 3);
}

#[test]
fn history_is_bounded_by_size_and_ttl() {
    let engine = engine(2);
    let mut c = engine.connect(0, "/");
    c.send_text("burst small:s 7");
    c.send_text("hist small:s 10");
    engine.pump();
    assert_eq!(texts(&mut c), vec!["hist 7 first=5 [5,6,7]"]);
    c.send_text("burst ttl:t 4");
    engine.pump();
    c.send_text("hist ttl:t 10");
    engine.pump();
    assert_eq!(texts(&mut c), vec!["hist 4 first=1 [1,2,3,4]"]);
    std::thread::sleep(Duration::from_millis(60));
    c.send_text("hist ttl:t 10");
    engine.pump();
    assert_eq!(
        texts(&mut c),
        vec!["hist 4 first=5 []"],
        "expired after 30 ms"
    );
    c.send_text("hist plain 1");
    engine.pump();
    assert_eq!(
        texts(&mut c),
        vec!["error channel \"plain\" keeps no history"]
    );
}

#[test]
fn an_idempotency_key_publishes_once_and_answers_the_first_result() {
    let engine = engine(2);
    let mut listener = engine.connect(1, "/");
    assert!(sub(&engine, &mut listener, "sub h:idem").starts_with("subscribed live"));
    let mut c = engine.connect(0, "/");
    c.send_text("apub h:idem k1 first");
    c.send_text("apub h:idem k1 again");
    c.send_text("apub h:idem - other");
    engine.pump();
    c.send_text("apub h:idem k1 later");
    engine.pump();
    assert_eq!(
        texts(&mut c),
        vec![
            "ack 1 dup=false",
            "ack 1 dup=true",
            "ack 2 dup=false",
            "ack 1 dup=true"
        ]
    );
    let got: Vec<String> = texts(&mut listener).iter().map(|p| parse(p).2).collect();
    assert_eq!(got, vec!["first", "other"]);
    assert_eq!(engine.metrics().stream_duplicates, 2);
    // Keys need a stream.
    c.send_text("apub plain k1 x");
    engine.pump();
    assert_eq!(
        texts(&mut c),
        vec!["error channel \"plain\" keeps no history retry=false"]
    );
}

#[test]
fn bad_channel_names_are_refused_with_a_clear_error() {
    let engine = engine(1);
    let mut c = engine.connect(0, "/");
    let long = "x".repeat(300);
    for bad in [long.as_str(), "h:tab\there"] {
        c.send_text(&format!("sub {bad}"));
        c.send_text(&format!("apub {bad} - x"));
        c.send_text(&format!("hist {bad} 1"));
    }
    engine.pump();
    let got = texts(&mut c);
    assert_eq!(got.len(), 6);
    assert!(
        got.iter().all(|r| r.starts_with("error invalid channel")),
        "{got:?}"
    );
}

#[test]
fn in_process_subscribers_and_handle_reads_see_the_stream() {
    let engine = engine(3);
    let handle = engine.handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let subscription = handle
        .subscribe_fn("h:inproc", move |ch, p| {
            s2.lock().unwrap().push((ch.to_string(), p.offset));
        })
        .unwrap();
    let plain = Arc::new(Mutex::new(Vec::new()));
    let p2 = plain.clone();
    let _plain_sub = handle
        .subscribe_fn("plain", move |_, p| p2.lock().unwrap().push(p.data.clone()))
        .unwrap();
    let mut c = engine.connect(2, "/");
    c.send_text("burst h:inproc 5");
    c.send_text("pub plain hello");
    engine.pump();
    handle.publish("h:inproc", "from a thread");
    engine.pump();
    let want: Vec<(String, u64)> = (1..=6).map(|o| ("h:inproc".to_string(), o)).collect();
    assert_eq!(*seen.lock().unwrap(), want);
    assert_eq!(
        *plain.lock().unwrap(),
        vec![bytes::Bytes::from_static(b"hello")]
    );
    drop(subscription);
    c.send_text("burst h:inproc 1");
    engine.pump();
    assert_eq!(seen.lock().unwrap().len(), 6, "not called after the drop");
    // History through the handle, answered on the owner core.
    let page = Arc::new(Mutex::new(None));
    let p3 = page.clone();
    handle.history("h:inproc", HistoryQuery::NewestFirst(2), move |r| {
        *p3.lock().unwrap() = Some(r);
    });
    engine.pump();
    let page = page.lock().unwrap().take().unwrap().unwrap();
    assert_eq!(page.position.offset, 7);
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![7, 6]);
    assert!(page.publications[1].data.ends_with(b"from a thread"));
    assert!(matches!(
        handle.subscribe_fn("", |_, _| {}),
        Err(StreamError::InvalidChannel(_))
    ));
}

/// A store whose commits the test completes by hand (in order, like the real one), or fails.
#[derive(Default)]
struct HandStore {
    queue: Mutex<VecDeque<(u64, CommitAck)>>,
    durable: Mutex<Vec<u64>>,
    refuse: AtomicBool,
}

impl HandStore {
    /// Completes every queued commit with `ok`.
    fn complete(&self, ok: bool) -> usize {
        let drained: Vec<_> = self.queue.lock().unwrap().drain(..).collect();
        let n = drained.len();
        for (offset, ack) in drained {
            if ok {
                self.durable.lock().unwrap().push(offset);
                ack(Ok(()));
            } else {
                ack(Err(StreamError::Store("disk full".into())));
            }
        }
        n
    }
}

impl StreamStore for HandStore {
    fn append(&self, p: StoredPublication<'_>, done: CommitAck) -> Result<(), StreamError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(StreamError::Store("queue full".into()));
        }
        self.queue.lock().unwrap().push_back((p.offset, done));
        Ok(())
    }

    fn position(&self, _channel: &str) -> Result<Option<StreamPosition>, StreamError> {
        let d = self.durable.lock().unwrap();
        // The epoch is not known to this store; answer none so the stream keeps its own.
        Ok(d.last().map(|&o| StreamPosition {
            offset: o,
            epoch: 0,
        }))
    }
}

#[test]
fn persistent_publications_are_delivered_and_acked_only_once_durable() {
    let store = Arc::new(HandStore::default());
    let channels =
        ChannelConfig::default().namespace("p:", ChannelPolicy::history(100).persistent());
    let s = MemStreams {
        store: Some(store.clone()),
        format: Some(Arc::new(Fmt)),
        ..MemStreams::default()
    };
    let engine = MemEngine::with_streams(config(channels), 2, s, |_| App { n: 0 });
    let mut listener = engine.connect(0, "/");
    assert!(sub(&engine, &mut listener, "sub p:a").starts_with("subscribed live 0"));
    let mut c = engine.connect(1, "/");
    c.send_text("apub p:a - one");
    c.send_text("apub p:a - two");
    engine.pump();
    assert!(texts(&mut c).is_empty(), "no ack before the commit");
    assert!(
        texts(&mut listener).is_empty(),
        "no delivery before the commit"
    );
    assert_eq!(store.complete(true), 2);
    engine.pump();
    assert_eq!(texts(&mut c), vec!["ack 1 dup=false", "ack 2 dup=false"]);
    let got: Vec<(u64, String)> = texts(&mut listener)
        .iter()
        .map(|p| (parse(p).0, parse(p).2))
        .collect();
    assert_eq!(got, vec![(1, "one".into()), (2, "two".into())]);

    // A failed commit: the publisher gets the error, the stream refuses until it resyncs from
    // the store, then continues after what is durable.
    c.send_text("apub p:a - three");
    engine.pump();
    assert_eq!(store.complete(false), 1);
    engine.pump();
    assert_eq!(texts(&mut c), vec!["error store: disk full retry=true"]);
    c.send_text("apub p:a - four");
    engine.pump();
    store.complete(true);
    engine.pump();
    assert_eq!(
        texts(&mut c),
        vec!["ack 3 dup=false"],
        "offset 3 reused: it never existed"
    );
    // Refused at submission: answered at once, nothing consumed.
    store.refuse.store(true, Ordering::Relaxed);
    c.send_text("apub p:a - five");
    engine.pump();
    assert_eq!(texts(&mut c), vec!["error store: queue full retry=true"]);
    store.refuse.store(false, Ordering::Relaxed);
    c.send_text("apub p:a - six");
    engine.pump();
    store.complete(true);
    engine.pump();
    assert_eq!(texts(&mut c), vec!["ack 4 dup=false"]);
    let got: Vec<u64> = texts(&mut listener).iter().map(|p| parse(p).0).collect();
    assert_eq!(got, vec![3, 4]);
    assert_eq!(engine.metrics().stream_store_errors, 2);
    assert_eq!(*store.durable.lock().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn a_persistent_namespace_without_a_store_is_refused() {
    let channels = ChannelConfig::default().namespace("p:", ChannelPolicy::history(1).persistent());
    let r = std::panic::catch_unwind(|| {
        MemEngine::with_streams(config(channels), 1, MemStreams::default(), |_| App { n: 0 })
    });
    let msg = r
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap();
    assert!(msg.contains("no stream store"), "{msg}");
}
