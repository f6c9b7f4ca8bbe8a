//! Cross-node publish against one process (`cargo bench -p edge-ws-cluster --bench cross_node`).
//!
//! Same run, same loopback subscribers (read by 2 client threads), the same 64-byte payload
//! published from an outside thread in rounds of 64 (each round waits until every subscriber
//! has every message):
//! - **single**: one engine (one core), no broker; the subscribers and the publisher on it.
//! - **cluster**: two engines (one core each) and a redis-server; the subscribers on node B,
//!   the publisher on node A, so every message goes A → Redis → B → the subscribers.
//!
//! Prints deliveries per second and CPU per delivery: the engine core threads, the broker
//! threads and (cluster) the redis-server process, each from /proc schedstat; and the
//! broker's counts (messages sent to Redis by A, received by B: once each). Knobs:
//! `CLUSTER_BENCH_SUBS` (default 500), `CLUSTER_BENCH_MSGS` per mode (default 4,096),
//! `CLUSTER_BENCH_ROUNDS` (default 3).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::broker::Broker;
use edge_ws::runtime::os::threads_cpu_seconds as cpu_of;
use edge_ws::{Config, Cores, Engine, EngineHandle, Handler, Message, Socket};
use edge_ws_cluster::testing::{have_redis, Redis};
use edge_ws_cluster::{RedisBroker, RedisConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAYLOAD: &str = "a 64-byte message for the cross-node fan-out bench, padded: ......";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Subscribes every connection to `room` when it opens.
struct Room;

impl Handler for Room {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        socket.subscribe("room");
    }
    fn on_message(&mut self, _: &mut Socket<'_, '_>, _: Message) {}
}

fn engine(broker: Option<RedisBroker>) -> Engine {
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = Cores::Count(1);
    cfg.pin = false;
    cfg.heartbeat_interval = None;
    let mut b = Engine::builder().config(cfg);
    if let Some(broker) = broker {
        b = b.broker(Arc::new(broker));
    }
    b.build(|_| Room).expect("engine starts")
}

/// Counts server frames (unmasked) on a nonblocking socket.
struct Frames {
    stream: TcpStream,
    head: Vec<u8>,
    skip: usize,
}

impl Frames {
    fn poll(&mut self, buf: &mut [u8]) -> u64 {
        let mut n = 0;
        while let Ok(len) = self.stream.read(buf) {
            if len == 0 {
                break;
            }
            let mut at = 0;
            while at < len {
                if self.skip > 0 {
                    let k = self.skip.min(len - at);
                    self.skip -= k;
                    at += k;
                    continue;
                }
                self.head.push(buf[at]);
                at += 1;
                let need = match self.head.get(1).map(|b| b & 0x7f) {
                    None => continue,
                    Some(126) => 4,
                    Some(127) => 10,
                    Some(_) => 2,
                };
                if self.head.len() < need {
                    continue;
                }
                self.skip = match need {
                    2 => usize::from(self.head[1] & 0x7f),
                    4 => usize::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                    _ => u64::from_be_bytes(self.head[2..10].try_into().unwrap()) as usize,
                };
                self.head.clear();
                n += 1;
            }
        }
        n
    }
}

/// `subs` subscribers on `addr`, read by two threads; returns the delivered-frame counter
/// and the stop flag.
fn subscribers(
    addr: SocketAddr,
    subs: usize,
    handle: &EngineHandle,
) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let mut conns = Vec::with_capacity(subs);
    for _ in 0..subs {
        let s = TcpStream::connect(addr).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), s).expect("handshake");
        let s = ws.into_inner();
        s.set_nonblocking(true).unwrap();
        conns.push(Frames {
            stream: s,
            head: Vec::new(),
            skip: 0,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.subscriber_count("room") < subs {
        assert!(Instant::now() < deadline, "subscribers did not join");
        std::thread::sleep(Duration::from_millis(5));
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let per = subs.div_ceil(2);
    let mut chunks = Vec::new();
    while !conns.is_empty() {
        let rest = conns.split_off(per.min(conns.len()));
        chunks.push(std::mem::replace(&mut conns, rest));
    }
    for mut chunk in chunks {
        let (count, stop) = (count.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-client".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let mut got = 0;
                    for c in &mut chunk {
                        got += c.poll(&mut buf);
                    }
                    if got == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    } else {
                        count.fetch_add(got, Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
    }
    (count, stop)
}

/// Redis's CPU seconds (all its threads).
fn redis_cpu(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

struct Run {
    deliveries_per_s: f64,
    engine_us: f64,
    broker_us: f64,
    redis_us: f64,
}

impl Run {
    fn total_us(&self) -> f64 {
        self.engine_us + self.broker_us + self.redis_us
    }
}

/// Publishes `msgs` from `from` in rounds of 64, waiting for each round's deliveries.
fn measure(
    from: &EngineHandle,
    count: &AtomicU64,
    subs: usize,
    msgs: usize,
    redis: Option<u32>,
) -> Run {
    let cpu0 = (
        cpu_of(&["edge-ws-core"]),
        cpu_of(&["edge-ws-broker"]),
        redis_cpu(redis),
    );
    let start = Instant::now();
    let base = count.load(Ordering::Relaxed);
    let mut sent = 0;
    while sent < msgs {
        for _ in 0..64 {
            from.publish("room", PAYLOAD);
        }
        sent += 64;
        let want = base + (sent * subs) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "deliveries stalled");
            std::thread::yield_now();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let deliveries = (msgs * subs) as f64;
    let us = |a: f64, b: f64| (b - a) * 1e6 / deliveries;
    Run {
        deliveries_per_s: deliveries / secs,
        engine_us: us(cpu0.0, cpu_of(&["edge-ws-core"])),
        broker_us: us(cpu0.1, cpu_of(&["edge-ws-broker"])),
        redis_us: us(cpu0.2, redis_cpu(redis)),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("cross_node: benchmark");
        return;
    }
    if !have_redis() {
        return;
    }
    let subs = env("CLUSTER_BENCH_SUBS", 500);
    let msgs = env("CLUSTER_BENCH_MSGS", 4096);
    let rounds = env("CLUSTER_BENCH_ROUNDS", 3);
    edge_ws::runtime::os::raise_nofile_limit(65_536);

    let single = engine(None);
    let (single_count, single_stop) = subscribers(single.local_addr(), subs, &single.handle());

    let redis = Redis::start();
    let broker = |url: &str| RedisBroker::new(RedisConfig::new(url)).unwrap();
    let (ba, bb) = (broker(&redis.url()), broker(&redis.url()));
    let a = engine(Some(ba.clone()));
    let b = engine(Some(bb.clone()));
    let (count, stop) = subscribers(b.local_addr(), subs, &b.handle());
    let deadline = Instant::now() + Duration::from_secs(10);
    while bb.stats().subscriptions < 1 {
        assert!(Instant::now() < deadline, "B did not subscribe at Redis");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Warm up both paths.
    measure(&single.handle(), &single_count, subs, 256, None);
    measure(&a.handle(), &count, subs, 256, redis.pid());
    let (sent0, recv0) = (ba.stats().published, bb.stats().received);
    let runs = |h: &EngineHandle| {
        let m = h.metrics();
        (m.deliveries, m.delivery_runs)
    };
    let (single0, b0) = (runs(&single.handle()), runs(&b.handle()));

    println!(
        "cross_node: {subs} subscribers, {msgs} messages of {} bytes per mode and round",
        PAYLOAD.len()
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let s = measure(&single.handle(), &single_count, subs, msgs, None);
        let c = measure(&a.handle(), &count, subs, msgs, redis.pid());
        let ratio = c.total_us() / s.engine_us;
        ratios.push(ratio);
        println!(
            "round {round}: single {:>9.0} deliveries/s {:.3} µs/delivery | cluster {:>9.0} deliveries/s \
             {:.3} µs/delivery (engines {:.3} + brokers {:.3} + redis {:.3}) | cluster/single CPU {:.2}x",
            s.deliveries_per_s,
            s.engine_us,
            c.deliveries_per_s,
            c.total_us(),
            c.engine_us,
            c.broker_us,
            c.redis_us,
            ratio
        );
    }
    let per_run = |now: (u64, u64), then: (u64, u64)| {
        (now.0 - then.0) as f64 / (now.1 - then.1).max(1) as f64
    };
    println!(
        "messages per queued buffer (cork runs): single {:.1}, cluster node B {:.1}",
        per_run(runs(&single.handle()), single0),
        per_run(runs(&b.handle()), b0)
    );
    let sent = ba.stats().published - sent0;
    let received = bb.stats().received - recv0;
    ratios.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "cluster/single CPU per delivery, median {:.2}x; sent to Redis by A: {sent}, received by B: {received} (messages: {})",
        ratios[ratios.len() / 2],
        rounds * msgs
    );
    stop.store(true, Ordering::Relaxed);
    single_stop.store(true, Ordering::Relaxed);
    for e in [single, a, b] {
        e.handle().shutdown();
        let _ = e.join();
    }
    ba.stop();
    bb.stop();
}
