//! Whole-message decode, server role (masked client frames): 64 B and 16 KiB, text and
//! binary, one message per buffer; and a buffer holding 100 × 64 B frames decoded in a loop.
//!
//! Each iteration gets a fresh copy of the wire bytes (the decoder unmasks in place and
//! consumes its input); making that copy is not timed.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edge_ws_protocol::{Decoder, DecoderConfig, Encoder, Message, OpCode, Role};

/// JSON-ish ASCII text of `len` bytes.
fn text(len: usize) -> Vec<u8> {
    let unit = br#"{"type":"message","room":"general","user":"alice","text":"hello there, how is it going?"},"#;
    unit.iter().copied().cycle().take(len).collect()
}

fn binary(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Masked frames as a client sends them.
fn wire(opcode: OpCode, payload: &[u8], count: usize) -> BytesMut {
    let mut n = 0u32;
    let mut enc = Encoder::client(move || {
        n = n.wrapping_add(0x9e37_79b9);
        n.to_le_bytes()
    });
    let mut out = BytesMut::new();
    for _ in 0..count {
        enc.encode(opcode, payload, &mut out);
    }
    out
}

fn decode(c: &mut Criterion) {
    let config = DecoderConfig::default();
    for (size, label) in [(64, "64B"), (16 * 1024, "16KiB")] {
        let mut g = c.benchmark_group(format!("decode/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        for (name, opcode, payload) in [
            ("text", OpCode::Text, text(size)),
            ("binary", OpCode::Binary, binary(size)),
        ] {
            let frame = wire(opcode, &payload, 1);
            let mut dec = Decoder::new(Role::Server, config);
            g.bench_function(name, |b| {
                b.iter_batched_ref(
                    || frame.clone(),
                    |buf| {
                        let msg = dec.decode(buf).expect("valid").expect("complete");
                        debug_assert!(matches!(msg, Message::Text(_) | Message::Binary(_)));
                        black_box(msg)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("decode/stream_100x64B");
    g.throughput(Throughput::Elements(100));
    for (name, opcode, payload) in [
        ("text", OpCode::Text, text(64)),
        ("binary", OpCode::Binary, binary(64)),
    ] {
        let frames = wire(opcode, &payload, 100);
        let mut dec = Decoder::new(Role::Server, config);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || frames.clone(),
                |buf| {
                    let mut n = 0;
                    while let Some(msg) = dec.decode(buf).expect("valid") {
                        black_box(msg);
                        n += 1;
                    }
                    assert_eq!(n, 100);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
