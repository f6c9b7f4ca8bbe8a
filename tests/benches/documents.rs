//! One document, 100 editors: `cargo bench -p edge-ws-tests --bench documents`.
//!
//! 100 real WebSocket clients (the ot.js client algorithm of `edge_ws_tests::ot_client`) each
//! make 20 edits per second with random delays for `DOC_BENCH_SECS` seconds (default 5)
//! against one document of an in-process server (2 engine cores, the documents thread, the
//! store with fsync). Prints the edit → ack latency (p50, p99, max), the server CPU per applied
//! operation (engine cores + documents thread + store thread, from /proc), the server-side
//! edit → ack latency (from the documents' own histogram), and checks that
//! every client ends with the server's text.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use edge_ws::{Config, Cores, Engine};
use edge_ws_server::documents::DocumentConfig;
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{Manager, Router};
use edge_ws_tests::ot_client::{random_op, OtClient, Rng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use edge_ws::runtime::os::threads_cpu_seconds as cpu_of;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("documents: bench");
        return;
    }
    let secs: u64 = std::env::var("DOC_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    const EDITORS: usize = 100;
    let dir = std::env::temp_dir().join(format!("edge-ws-doc-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    let manager = Manager::builder().build();
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = Cores::Count(2.min(core_affinity::get_core_ids().map_or(1, |c| c.len())));
    cfg.pin = false;
    let engine = manager
        .start(Engine::builder().config(cfg), |_| Router::new().channels())
        .unwrap();
    assert!(manager.start_documents(store.clone(), DocumentConfig::default()));
    let addr = engine.local_addr();
    let server = ["edge-ws-core", "edge-ws-docs", "edge-ws-store"];
    let barrier = Arc::new(Barrier::new(EDITORS + 1));
    let threads: Vec<_> = (0..EDITORS)
        .map(|k| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((k as u64 + 1) * 104_729));
                let mut c = OtClient::join(addr, "bench");
                barrier.wait();
                let end = Instant::now() + Duration::from_secs(secs);
                let mut edits = 0u64;
                while Instant::now() < end {
                    let op = random_op(&c.text, &mut rng);
                    c.local(op);
                    edits += 1;
                    // 20 per second on average, with random delays.
                    let pause = 25 + rng.below(50) as u64;
                    let until = Instant::now() + Duration::from_millis(pause);
                    while Instant::now() < until {
                        c.pump(Duration::from_millis(5));
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while !c.settled() && Instant::now() < deadline {
                    c.pump(Duration::from_millis(5));
                }
                (c, edits)
            })
        })
        .collect();
    barrier.wait();
    let cpu0 = cpu_of(&server);
    let t0 = Instant::now();
    let mut clients: Vec<(OtClient, u64)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wall = t0.elapsed();
    let cpu = cpu_of(&server) - cpu0;
    let (rev, text) = manager.documents().unwrap().text("bench").unwrap();
    // Let every client receive the last broadcasts, then compare.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (c, _) in clients.iter_mut() {
        while c.revision < rev && Instant::now() < deadline {
            c.pump(Duration::from_millis(5));
        }
        assert_eq!((c.revision, &c.text), (rev, &text), "converged");
    }
    let sent: u64 = clients.iter().map(|(_, e)| e).sum();
    let mut lat: Vec<Duration> = clients
        .iter()
        .flat_map(|(c, _)| c.ack_latencies.clone())
        .collect();
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let stats = manager.documents().unwrap().stats();
    let server = manager.documents().unwrap().ack_latency();
    println!(
        "documents_100_editors server side (edit arrives on its core → doc.ack handed to the engine, fsync included): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} edits",
        server.median_us as f64 / 1e3,
        server.p99_us as f64 / 1e3,
        server.max_us as f64 / 1e3,
        server.count
    );
    println!(
        "documents_100_editors: {sent} edits typed, {} operations applied ({} transformed) in {:.1} s; \
         edit→ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; server CPU {:.1} µs per applied op; \
         all {EDITORS} clients converged at revision {rev} ({} UTF-16 units)",
        stats.applied,
        stats.transformed,
        wall.as_secs_f64(),
        q(0.5),
        q(0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        cpu * 1e6 / stats.applied.max(1) as f64,
        text.encode_utf16().count()
    );
    drop(clients);
    engine.handle().shutdown();
    let _ = engine.join();
    let _ = std::fs::remove_dir_all(&dir);
}
