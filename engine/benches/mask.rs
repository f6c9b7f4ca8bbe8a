//! Payload unmasking: the codec's portable loop (what the compiler vectorises for the baseline
//! target) against `apply_mask` with the runtime's kernel for this CPU installed
//! (`edge_ws::runtime::simd::mask_kernel`, AVX2 on x86-64), as the engine does at start; below
//! `ACCELERATED_MIN` that is the portable loop too. Both mask a buffer in place, as the
//! decoder does with a received payload: one that starts 8 bytes into its allocation, where a
//! client frame's header (2 + 2 length + 4 key bytes) leaves a 126..65,535-byte payload.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edge_ws::runtime::simd::mask_kernel;
use edge_ws_protocol::mask::{apply_mask, apply_mask_portable, set_accelerated};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let Some(kernel) = mask_kernel() else {
        eprintln!("no accelerated masking kernel on this CPU: nothing to compare");
        return;
    };
    set_accelerated(kernel);
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 256, 512, 1024, 4096, 65_536] {
        let mut frame = vec![0x5au8; size + 8];
        let buf = &mut frame[8..];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("portable", size), &size, |b, _| {
            b.iter(|| apply_mask_portable(black_box(&mut buf[..]), black_box(KEY), 0))
        });
        g.bench_with_input(
            BenchmarkId::new("with_runtime_kernel", size),
            &size,
            |b, _| b.iter(|| apply_mask(black_box(&mut buf[..]), black_box(KEY), 0)),
        );
    }
    g.finish();
}

criterion_group!(benches, mask);
criterion_main!(benches);
