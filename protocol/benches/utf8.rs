//! Incremental UTF-8 validation (`Utf8Validator`) against `std::str::from_utf8` on the same
//! bytes: ASCII and multi-byte text, 1 KiB and 64 KiB; the validator also fed in
//! 1460-byte pieces (one TCP segment's worth), as the decoder does with data as it arrives.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws_protocol::utf8::Utf8Validator;

/// `len` bytes (or a few less, to end on a character boundary) of `sample` repeated.
fn text(sample: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 8);
    'outer: loop {
        for ch in sample.chars() {
            if s.len() + ch.len_utf8() > len {
                break 'outer;
            }
            s.push(ch);
        }
    }
    s.into_bytes()
}

const ASCII: &str = "{\"type\":\"message\",\"room\":\"general\",\"text\":\"The quick brown fox jumps over the lazy dog\"} ";
const MULTI: &str = "Κόσμε, привет мир, こんにちは世界, 안녕하세요, مرحبا, 🚀🎉 ok; ";

fn utf8(c: &mut Criterion) {
    for (kind, sample) in [("ascii", ASCII), ("multibyte", MULTI)] {
        for (size, label) in [(1024, "1KiB"), (64 * 1024, "64KiB")] {
            let data = text(sample, size);
            let mut g = c.benchmark_group(format!("utf8/{kind}/{label}"));
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function("validator", |b| {
                let mut v = Utf8Validator::new();
                b.iter(|| {
                    v.feed(black_box(&data)).expect("valid");
                    v.finish().expect("complete");
                })
            });
            g.bench_function("validator_1460B_pieces", |b| {
                let mut v = Utf8Validator::new();
                b.iter(|| {
                    for piece in black_box(&data).chunks(1460) {
                        v.feed(piece).expect("valid");
                    }
                    v.finish().expect("complete");
                })
            });
            g.bench_function("std_from_utf8", |b| {
                b.iter(|| core::str::from_utf8(black_box(&data)).is_ok())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, utf8);
criterion_main!(benches);
