//! Unmasking (`apply_mask`) against a plain `memcpy` of the same size and the reference byte
//! loop, in the same group so the ratio to memory-copy speed can be read off directly.
//!
//! The `memcpy` baseline places source and destination 2 KiB apart modulo 4 KiB. When
//! `(dst - src) % 4096` is small, glibc's `rep movsb` path (used from 2 KiB up on CPUs with
//! ERMS/FSRM) falls off a cliff on AMD Zen 3 (measured here: ~1.5 GiB/s instead of ~40 GiB/s
//! at 64 KiB); two equal-sized heap buffers often land exactly like that, so a naive baseline
//! would be 20× too slow. `memcpy_4k_aliased` shows that case (`dst - src ≡ 16 mod 4096`).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws_protocol::mask::{apply_mask, apply_mask_bytewise};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// A source and a destination of `size` bytes in one allocation, with
/// `(dst - src) % 4096 == distance`.
struct CopyBufs {
    mem: Vec<u8>,
    size: usize,
    src: usize,
    dst: usize,
}

impl CopyBufs {
    fn new(size: usize, distance: usize) -> Self {
        let mem: Vec<u8> = (0..2 * size + 3 * 4096).map(|i| i as u8).collect();
        // Page-align the source, then put the destination past it at the wanted distance.
        let src = (4096 - mem.as_ptr() as usize % 4096) % 4096;
        let dst = src + size + 4096 + (distance + 4096 - size % 4096) % 4096;
        assert_eq!((dst - src) % 4096, distance);
        assert!(dst + size <= mem.len());
        CopyBufs {
            mem,
            size,
            src,
            dst,
        }
    }

    fn copy(&mut self) {
        let (head, tail) = self.mem.split_at_mut(self.dst);
        let src = &head[self.src..self.src + self.size];
        black_box(&mut tail[..self.size]).copy_from_slice(black_box(src));
    }
}

fn mask(c: &mut Criterion) {
    for size in [64, 1024, 4096, 64 * 1024] {
        let mut g = c.benchmark_group(format!("mask/{}", label(size)));
        g.throughput(Throughput::Bytes(size as u64));
        let src: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let mut buf = src.clone();
        let mut copy = CopyBufs::new(size, 2048);
        let mut aliased = CopyBufs::new(size, 16);

        g.bench_function("apply_mask", |b| {
            b.iter(|| apply_mask(black_box(&mut buf[..]), black_box(KEY), black_box(0)))
        });
        // A payload that arrived in pieces: the key phase is not 0.
        g.bench_function("apply_mask_offset1", |b| {
            b.iter(|| apply_mask(black_box(&mut buf[..]), black_box(KEY), black_box(1)))
        });
        // What the decoder does with a received payload: copy it into the message's buffer,
        // then unmask it there.
        let mut dst = BytesMut::with_capacity(size);
        g.bench_function("copy_then_mask", |b| {
            b.iter(|| {
                dst.clear();
                dst.extend_from_slice(black_box(&src));
                apply_mask(&mut dst[..], black_box(KEY), 0);
                black_box(&dst);
            })
        });
        g.bench_function("memcpy", |b| b.iter(|| copy.copy()));
        g.bench_function("memcpy_4k_aliased", |b| b.iter(|| aliased.copy()));
        g.bench_function("bytewise", |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf[..]), black_box(KEY), black_box(0)))
        });
        g.finish();
    }
}

criterion_group!(benches, mask);
criterion_main!(benches);
