//! Streams on in-memory cores (server work only, no sockets): recovery of one subscriber that
//! missed 10,000 publications, 1,000 subscribers recovering 100 each at once, and the memory a
//! retained 64 B publication costs (printed as `retained_bytes_per_publication`).
//!
//! The timed part is the subscribe requests (the in-memory client encoding them, a few hundred
//! nanoseconds each) and the engine's pump (owner core: recover; subscriber's core: queue the
//! replayed frames into the in-memory transport); reading the frames on the client side is done
//! outside the timing.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use edge_ws::runtime::counting::CountingAlloc;
use edge_ws::testing::{MemClient, MemEngine};
use edge_ws::{ChannelConfig, ChannelPolicy, Config, Handler, Message, Socket, StreamPosition};

/// mimalloc, counting the bytes requested and not yet freed.
#[global_allocator]
static GLOBAL: CountingAlloc<mimalloc::MiMalloc> = CountingAlloc::new(mimalloc::MiMalloc);

/// `sub CHANNEL OFFSET EPOCH` subscribes from a position; `burst CHANNEL N` publishes N × 64 B.
struct App;

impl Handler for App {
    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let t = m.as_text().unwrap().to_owned();
        let p: Vec<&str> = t.split(' ').collect();
        match p[0] {
            "sub" => {
                let since = StreamPosition {
                    offset: p[2].parse().unwrap(),
                    epoch: p[3].parse().unwrap(),
                };
                s.subscribe_with(p[1], Some(since), |s, r| {
                    assert!(r.unwrap().recovered());
                    let _ = s.send_text("ok");
                });
            }
            "burst" => {
                let payload = [b'x'; 64];
                let text = std::str::from_utf8(&payload).unwrap();
                for _ in 0..p[2].parse::<usize>().unwrap() {
                    s.publish(p[1], text);
                }
            }
            _ => {}
        }
    }
}

fn engine(history: usize) -> MemEngine<App> {
    let mut c = Config::default();
    c.channels = ChannelConfig::default().namespace("h:", ChannelPolicy::history(history));
    c.write_buffer_limit = 64 << 20;
    MemEngine::new(c, 2, |_| App)
}

/// The channel's epoch, read through the handle.
fn epoch(e: &MemEngine<App>, channel: &str) -> u64 {
    let got = std::sync::Arc::new(std::sync::Mutex::new(None));
    let g = got.clone();
    e.handle()
        .history(channel, edge_ws::HistoryQuery::Last(0), move |r| {
            *g.lock().unwrap() = Some(r.unwrap().position.epoch)
        });
    e.pump();
    let v = got.lock().unwrap().take().unwrap();
    v
}

fn drain(c: &mut MemClient) -> usize {
    std::iter::from_fn(|| c.recv()).count()
}

fn recovery(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_recovery");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    // One subscriber (on the other core than most publishers) missing 10,000.
    let e = engine(10_000);
    let mut p = e.connect(0, "/");
    p.send_text("burst h:r 10000");
    e.pump();
    let ep = epoch(&e, "h:r");
    g.bench_function("one_client_10000_missed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut c = e.connect(1, "/");
                let t = Instant::now();
                c.send_text(&format!("sub h:r 0 {ep}"));
                e.pump();
                total += t.elapsed();
                assert_eq!(drain(&mut c), 10_001);
            }
            total
        })
    });
    // 1,000 subscribers reconnecting at once, 100 missed each.
    let e = engine(1000);
    let mut p = e.connect(0, "/");
    p.send_text("burst h:m 1000");
    e.pump();
    let ep = epoch(&e, "h:m");
    g.bench_function("1000_clients_100_missed_each", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut cs: Vec<MemClient> = (0..1000).map(|i| e.connect(i % 2, "/")).collect();
                let t = Instant::now();
                for c in cs.iter_mut() {
                    c.send_text(&format!("sub h:m 900 {ep}"));
                }
                e.pump();
                total += t.elapsed();
                for c in cs.iter_mut() {
                    assert_eq!(drain(c), 101);
                }
            }
            total
        })
    });
    g.finish();
}

/// Bytes held per retained 64 B publication (frame 66 B): 200 channels keeping 1,000 each
/// (the default history size), 200,000 retained in all.
fn retained_memory() {
    const CHANNELS: usize = 200;
    const PER: usize = 1000;
    let e = engine(PER);
    let mut p = e.connect(0, "/");
    // Warm the core's buffers first.
    p.send_text("burst h:warm 1");
    e.pump();
    let before = GLOBAL.live_bytes();
    for c in 0..CHANNELS {
        p.send_text(&format!("burst h:mem{c} {PER}"));
        e.pump();
    }
    let after = GLOBAL.live_bytes();
    let n = CHANNELS * PER;
    let per = (after - before) as f64 / n as f64;
    println!(
        "retained_bytes_per_publication: {per:.1} B for a 66 B frame ({:.2}x), {n} retained \
         in {CHANNELS} channels",
        per / 66.0
    );
}

criterion_group!(benches, recovery);

fn main() {
    retained_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
