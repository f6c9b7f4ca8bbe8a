//! Store throughput and commit latency: `cargo bench -p edge-ws-server --bench store`.
//!
//! For each durability, payload size (100 B, 1 KiB) and number of appending threads (1, 8, 64),
//! every thread appends to its own channel and waits for each ack before the next append (a
//! closed loop: the thread count is the concurrency the store sees, so the batches grow with
//! it), for `STORE_BENCH_SECS` seconds (default 1) per run, `STORE_BENCH_RUNS` runs (default
//! 3); prints the median of the runs: records/s, records per commit, the commit latency and
//! the latency of an append to its ack. A last row per durability is one thread keeping up to
//! 4096 appends in flight (the way a core uses the non-blocking form), the store's ceiling.
//! `STORE_BENCH_QUICK_REPAIR=1` turns on redb's quick repair; `STORE_BENCH_MODES=fsync` (or
//! `buffered`) runs one durability only. Temporary files go under the system temp dir and are
//! removed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws_server::store::{Append, Durability, Store, StoreError, StoreOptions};

struct Run {
    records_per_s: f64,
    per_commit: f64,
    commit_median_us: u64,
    commit_p99_us: u64,
    ack_median_us: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory for one run's store, removed when dropped.
fn dir(tag: &str) -> TempDir {
    TempDir::new(&format!("edge-ws-store-bench-{tag}"))
}

/// `threads` closed-loop writers (`window` 1), or one writer with `window` appends in flight.
fn run(d: Durability, size: usize, threads: usize, window: usize, secs: u64) -> Run {
    let path = dir("run");
    let options = StoreOptions::default()
        .durability(d)
        .quick_repair(env("STORE_BENCH_QUICK_REPAIR", 0) == 1);
    let store = Store::open(path.path(), options).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let payload = vec![0xabu8; size];
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, stop, start, payload) =
                (store.clone(), stop.clone(), start.clone(), payload.clone());
            std::thread::spawn(move || {
                let channel = format!("bench-{t}");
                let in_flight = Arc::new(AtomicU64::new(0));
                let (tx, rx) = mpsc::channel::<Duration>();
                let mut latencies = Vec::new();
                let mut offset = 0u64;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    if in_flight.load(Ordering::Acquire) as usize >= window {
                        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                            latencies.push(l);
                        }
                        continue;
                    }
                    offset += 1;
                    let append = Append::new(channel.as_str(), 1, offset, payload.clone(), 0);
                    let (tx, in_flight2, sent) = (tx.clone(), in_flight.clone(), Instant::now());
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let r = store.try_append(
                        append,
                        Box::new(move |r: Result<(), StoreError>| {
                            r.unwrap();
                            in_flight2.fetch_sub(1, Ordering::AcqRel);
                            let _ = tx.send(sent.elapsed());
                        }),
                    );
                    if let Err(e) = r {
                        assert!(matches!(e, StoreError::QueueFull), "{e}");
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        offset -= 1;
                        std::thread::yield_now();
                    }
                    latencies.extend(rx.try_iter());
                }
                while in_flight.load(Ordering::Acquire) > 0 {
                    if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                        latencies.push(l);
                    }
                }
                latencies.extend(rx.try_iter());
                latencies
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let before = store.stats();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut acks: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = t0.elapsed();
    let s = store.stats();
    drop(store);
    drop(path);
    acks.sort_unstable();
    let records = s.records - before.records;
    let commits = (s.commits - before.commits).max(1);
    Run {
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        per_commit: records as f64 / commits as f64,
        commit_median_us: s.commit_latency.median_us,
        commit_p99_us: s.commit_latency.p99_us,
        ack_median_us: acks.get(acks.len() / 2).map_or(0, |d| d.as_micros() as u64),
    }
}

fn median_by<T: Copy + PartialOrd>(runs: &[Run], f: impl Fn(&Run) -> T) -> T {
    let mut v: Vec<T> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick { 0 } else { env("STORE_BENCH_SECS", 1) };
    let runs = if quick { 1 } else { env("STORE_BENCH_RUNS", 3) };
    println!(
        "store bench: {runs} runs of {secs} s each, medians; commit latency is the redb commit \
         (pages, header, fsync), ack latency is append to ack"
    );
    println!(
        "{:<9} {:>7} {:>8} {:>7} {:>12} {:>10} {:>12} {:>12} {:>12}",
        "mode",
        "payload",
        "threads",
        "window",
        "records/s",
        "per commit",
        "commit p50",
        "commit p99",
        "ack p50"
    );
    let modes = std::env::var("STORE_BENCH_MODES").unwrap_or_else(|_| "fsync,buffered".into());
    for d in [Durability::Fsync, Durability::Buffered] {
        let mode = match d {
            Durability::Fsync => "fsync",
            _ => "buffered",
        };
        if !modes.split(',').any(|m| m == mode) {
            continue;
        }
        let mut cases: Vec<(usize, usize, usize)> = Vec::new();
        for size in [100, 1024] {
            for threads in [1, 8, 64] {
                cases.push((size, threads, 1));
            }
        }
        cases.push((100, 1, 4096));
        for (size, threads, window) in cases {
            let results: Vec<Run> = (0..runs)
                .map(|_| run(d, size, threads, window, secs))
                .collect();
            println!(
                "{:<9} {:>7} {:>8} {:>7} {:>12.0} {:>10.1} {:>9} µs {:>9} µs {:>9} µs",
                mode,
                size,
                threads,
                window,
                median_by(&results, |r| r.records_per_s),
                median_by(&results, |r| r.per_commit),
                median_by(&results, |r| r.commit_median_us),
                median_by(&results, |r| r.commit_p99_us),
                median_by(&results, |r| r.ack_median_us),
            );
            if quick {
                return;
            }
        }
    }
}
