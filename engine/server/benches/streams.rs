//! Durable publishes through the engine: `cargo bench -p edge-ws-server --bench streams`.
//!
//! One engine core owns a persistent channel (memory history + the redb store with fsync
//! before the ack); one thread outside the cores publishes 64 B payloads with up to
//! `STREAMS_BENCH_WINDOW` (default 8192) unacknowledged at once, `STREAMS_BENCH_N` (default
//! 300,000) in total, `STREAMS_BENCH_RUNS` runs (default 3). Prints per run: acknowledged
//! publishes/s, the publish→ack latency (median, p99), records per commit and the disk's own
//! fsync time (median, p99) from the store's counters; then the medians.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws::{ChannelConfig, ChannelPolicy, Cores, Engine, Handler, Message, MessageKind, Socket};
use edge_ws_server::channels::StoreStreams;
use edge_ws_server::store::{Store, StoreOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Idle;

impl Handler for Idle {
    fn on_message(&mut self, _: &mut Socket<'_, '_>, _: Message) {}
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    per_s: f64,
    ack_median_us: u64,
    ack_p99_us: u64,
    per_commit: f64,
    fsync_median_us: u64,
    fsync_p99_us: u64,
}

fn run(n: usize, window: usize) -> Row {
    let dir = TempDir::new("edge-ws-streams-bench");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let channels =
        ChannelConfig::default().namespace("p:", ChannelPolicy::history(1000).persistent());
    let engine = Engine::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .cores(Cores::Count(1))
        .channels(channels)
        .stream_store(Arc::new(StoreStreams::new(store.clone())))
        .build(|_| Idle)
        .unwrap();
    let h = engine.handle();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<u32>();
    let payload = [b'x'; 64];
    let start = Instant::now();
    for _ in 0..n {
        while in_flight.load(Ordering::Acquire) >= window {
            std::thread::yield_now();
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (tx, f) = (tx.clone(), in_flight.clone());
        let t0 = Instant::now();
        h.publish_acked(
            "p:bench",
            &payload,
            MessageKind::Text,
            Default::default(),
            move |r| {
                assert!(r.is_ok(), "{r:?}");
                let _ = tx.send(t0.elapsed().as_micros() as u32);
                f.fetch_sub(1, Ordering::AcqRel);
            },
        );
    }
    drop(tx);
    let mut lat: Vec<u32> = rx.iter().collect();
    let took = start.elapsed();
    assert_eq!(lat.len(), n);
    lat.sort_unstable();
    let stats = store.stats();
    h.shutdown();
    engine.join().unwrap();
    drop(store);
    drop(dir);
    Row {
        per_s: n as f64 / took.as_secs_f64(),
        ack_median_us: lat[n / 2] as u64,
        ack_p99_us: lat[n * 99 / 100] as u64,
        per_commit: stats.records as f64 / stats.commits.max(1) as f64,
        fsync_median_us: stats.fsync_latency.median_us,
        fsync_p99_us: stats.fsync_latency.p99_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("durable_publish: bench");
        return;
    }
    let n = env("STREAMS_BENCH_N", 300_000);
    let window = env("STREAMS_BENCH_WINDOW", 8192);
    let runs = env("STREAMS_BENCH_RUNS", 3);
    let mut rows = Vec::new();
    for i in 0..runs {
        let r = run(n, window);
        println!(
            "run {i}: {:.0} acked publishes/s (64 B, window {window}); ack median {} µs, p99 {} µs; \
             {:.0} records/commit; fsync median {} µs, p99 {} µs",
            r.per_s, r.ack_median_us, r.ack_p99_us, r.per_commit, r.fsync_median_us, r.fsync_p99_us
        );
        rows.push(r);
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    println!(
        "durable_publish median of {runs}: {:.0}/s, ack p99 {:.0} µs, fsync median {:.0} µs, p99 {:.0} µs",
        m(|r| r.per_s),
        m(|r| r.ack_p99_us as f64),
        m(|r| r.fsync_median_us as f64),
        m(|r| r.fsync_p99_us as f64)
    );
}
