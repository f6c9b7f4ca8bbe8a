//! The product path against the bare engine, publish → 1,000 subscribers
//! (`cargo bench -p edge-ws-server --bench product_fanout`).
//!
//! Same run, one engine core each, the same 1,000 loopback subscribers' worth of sockets read
//! by 4 client threads, the same 64-byte JSON payload published from an outside thread in
//! rounds of 64 (each round waits until every subscriber has every message):
//! - **bare**: an `edge_ws::Handler` that subscribes each connection to `room` on open;
//!   `EngineHandle::publish`.
//! - **product**: the connection manager with JWT authentication (HS256, `?token=`), the
//!   JSON envelope router (`subscribe` message), a channel namespace with memory history (100)
//!   and presence on (each subscriber a distinct user); `EngineHandle::publish_acked` (the
//!   owner core sequences it, keeps it, wraps it in the publication envelope with its offset).
//!
//! Prints server CPU per delivery (the engine core thread, from /proc) for each, and the ratio,
//! per round and the median (`PRODUCT_BENCH_ROUNDS`, default 5; `PRODUCT_BENCH_MSGS` per round
//! and mode, default 2,000; `PRODUCT_BENCH_SUBS`, default 1,000).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::runtime::os::threads_cpu_seconds as cpu_of;
use edge_ws::{
    ChannelConfig, ChannelPolicy, Config, Cores, Engine, Handler, Message, MessageKind,
    PublishOptions, Socket,
};
use edge_ws_server::{Auth, JwtAuth, Manager, Router, TokenSource};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SECRET: &[u8] = b"product-bench-secret";
const PAYLOAD: &str = r#"{"user":"publisher","text":"a 64-byte chat line for the fan-out bench"}"#;

struct Bare;

impl Handler for Bare {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        socket.subscribe("room");
    }
    fn on_message(&mut self, _: &mut Socket<'_, '_>, _: Message) {}
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = Cores::Count(1);
    cfg.pin = false;
    cfg.heartbeat_interval = None;
    cfg
}

/// Counts WebSocket frames (server frames are unmasked) on a nonblocking stream.
struct FrameCounter {
    stream: TcpStream,
    /// Bytes still to skip of the current frame's payload.
    skip: usize,
    /// A partial header.
    head: Vec<u8>,
}

impl FrameCounter {
    /// Reads what is there; returns the frames completed.
    fn poll(&mut self, buf: &mut [u8]) -> u64 {
        let mut frames = 0;
        loop {
            let n = match self.stream.read(buf) {
                Ok(0) => return frames,
                Ok(n) => n,
                Err(_) => return frames,
            };
            let mut i = 0;
            while i < n {
                if self.skip > 0 {
                    let take = self.skip.min(n - i);
                    self.skip -= take;
                    i += take;
                    if self.skip == 0 {
                        frames += 1;
                    }
                    continue;
                }
                self.head.push(buf[i]);
                i += 1;
                if self.head.len() < 2 {
                    continue;
                }
                let len7 = (self.head[1] & 0x7f) as usize;
                let need = match len7 {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                if self.head.len() < need {
                    continue;
                }
                let len = match len7 {
                    126 => u16::from_be_bytes([self.head[2], self.head[3]]) as usize,
                    127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap()) as usize,
                    l => l,
                };
                self.head.clear();
                if len == 0 {
                    frames += 1;
                } else {
                    self.skip = len;
                }
            }
        }
    }
}

/// Opens `n` WebSockets to `addr` (`path_for(i)`), sends `after_open(i)` on each, and counts
/// every frame they receive from then on in `frames` (4 reader threads).
fn subscribers(
    addr: SocketAddr,
    n: usize,
    path_for: impl Fn(usize) -> String,
    after_open: impl Fn(usize) -> Option<String>,
    frames: Arc<AtomicU64>,
) {
    let mut groups: Vec<Vec<FrameCounter>> = (0..4).map(|_| Vec::new()).collect();
    for i in 0..n {
        let stream = TcpStream::connect(addr).unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}{}", path_for(i)), stream).expect("upgrade");
        if let Some(text) = after_open(i) {
            ws.send(tungstenite::Message::text(text)).unwrap();
        }
        let stream = ws.into_inner();
        stream.set_nonblocking(true).unwrap();
        groups[i % 4].push(FrameCounter {
            stream,
            skip: 0,
            head: Vec::new(),
        });
    }
    for mut group in groups {
        let frames = frames.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let mut got = 0;
                for c in &mut group {
                    got += c.poll(&mut buf);
                }
                if got > 0 {
                    frames.fetch_add(got, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
    }
}

fn wait_for(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "deliveries stalled");
        std::thread::yield_now();
    }
}

/// Publishes `msgs` in rounds of 64 with `publish`, waiting for every delivery after each;
/// returns the engine core's CPU seconds per delivery.
fn run(msgs: usize, subs: usize, frames: &AtomicU64, publish: &dyn Fn()) -> f64 {
    let core = ["edge-ws-core"];
    let mut expected = frames.load(Ordering::Relaxed);
    let c0 = cpu_of(&core);
    let mut sent = 0;
    while sent < msgs {
        let batch = 64.min(msgs - sent);
        for _ in 0..batch {
            publish();
        }
        sent += batch;
        expected += (batch * subs) as u64;
        wait_for(frames, expected);
    }
    (cpu_of(&core) - c0) / (msgs * subs) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("product_fanout: bench");
        return;
    }
    let rounds = env("PRODUCT_BENCH_ROUNDS", 5);
    let msgs = env("PRODUCT_BENCH_MSGS", 2_000);
    let subs = env("PRODUCT_BENCH_SUBS", 1_000);
    // Two servers' and their clients' sockets in one process.
    edge_ws::runtime::os::raise_nofile_limit((4 * subs + 256) as u64);

    // The bare engine.
    let bare = Engine::builder().config(config()).build(|_| Bare).unwrap();
    let bare_frames = Arc::new(AtomicU64::new(0));
    subscribers(
        bare.local_addr(),
        subs,
        |_| "/".into(),
        |_| None,
        bare_frames.clone(),
    );
    while bare.handle().subscriber_count("room") < subs {
        std::thread::sleep(Duration::from_millis(5));
    }

    // The product path.
    let jwt = JwtAuth::hs256(SECRET).sources([TokenSource::Query("token".into())]);
    let signer = JwtAuth::hs256(SECRET);
    let manager = Manager::builder().auth(Auth::jwt(jwt)).build();
    let mut cfg = config();
    let policy = ChannelPolicy {
        history_size: 100,
        presence: true,
        ..ChannelPolicy::default()
    };
    cfg.channels = ChannelConfig::default().namespace("chat:", policy);
    let product = manager
        .start(Engine::builder().config(cfg), |_| Router::new().channels())
        .unwrap();
    let product_frames = Arc::new(AtomicU64::new(0));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    subscribers(
        product.local_addr(),
        subs,
        |i| {
            let token = signer.sign(&format!(r#"{{"sub":"user{i}","exp":{exp}}}"#));
            format!("/ws?token={token}")
        },
        |_| Some(r#"{"type":"subscribe","data":{"channel":"chat:room"}}"#.into()),
        product_frames.clone(),
    );
    let ph = product.handle();
    while ph.subscriber_count("chat:room") < subs {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The `subscribed` replies have gone out when the count stops moving: count from here.
    let mut last = u64::MAX;
    while product_frames.load(Ordering::Relaxed) != last {
        last = product_frames.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
    }

    let bh = bare.handle();
    let publish_bare = || bh.publish("room", PAYLOAD);
    let pending = Arc::new(AtomicUsize::new(0));
    let publish_product = || {
        pending.fetch_add(1, Ordering::AcqRel);
        let p = pending.clone();
        ph.publish_acked(
            "chat:room",
            PAYLOAD.as_bytes(),
            MessageKind::Text,
            PublishOptions::default(),
            move |r| {
                assert!(r.is_ok(), "{r:?}");
                p.fetch_sub(1, Ordering::AcqRel);
            },
        );
    };
    // Warm-up.
    run(200, subs, &bare_frames, &publish_bare);
    run(200, subs, &product_frames, &publish_product);
    let mut ratios = Vec::new();
    let mut rows = Vec::new();
    for round in 0..rounds {
        let b = run(msgs, subs, &bare_frames, &publish_bare);
        let p = run(msgs, subs, &product_frames, &publish_product);
        println!(
            "round {round}: server CPU per delivery: bare engine {:.4} µs, product path {:.4} µs ({:.2}x)",
            b * 1e6,
            p * 1e6,
            p / b
        );
        ratios.push(p / b);
        rows.push((b, p));
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut bs: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut ps: Vec<f64> = rows.iter().map(|r| r.1).collect();
    bs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "product_fanout median: bare {:.4} µs, product {:.4} µs per delivery; median ratio {:.2}x ({} subscribers, {} publishes per round)",
        bs[rounds / 2] * 1e6,
        ps[rounds / 2] * 1e6,
        ratios[rounds / 2],
        subs,
        msgs
    );
    assert_eq!(
        pending.load(Ordering::Acquire),
        0,
        "every publish acknowledged"
    );
}
