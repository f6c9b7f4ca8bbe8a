//! Core-to-core fan-out lane throughput: publishes/s from one pinned thread to another through
//! the same ring + spill path the engine uses (encode once, `Arc` per publish).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws::fanout::bench_support::lane_transfer;

fn ring(c: &mut Criterion) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let pin = (cores.len() >= 2).then(|| (cores[0].id, cores[1].id));
    let mut g = c.benchmark_group("fanout_lane");
    g.sample_size(10);
    const N: usize = 100_000;
    g.throughput(Throughput::Elements(N as u64));
    for (name, cap) in [("ring4096", 4096usize), ("ring64_spilling", 64)] {
        g.bench_function(format!("{name}_64B"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| lane_transfer(N, cap, &[7u8; 64], pin).0)
                    .sum()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
