//! Whole-message decode, server role (masked client frames): 64 B and 16 KiB, text and
//! binary, one message per buffer; and a buffer holding 100 × 64 B frames decoded in a loop.
//!
//! Each iteration gets a fresh copy of the wire bytes (the decoder unmasks in place and
//! consumes its input); making that copy is not timed.
//!
//! `receive/*`: a connection fed the way the engine feeds it, one receive buffer at a time:
//! through its read buffer (`Connection::poll_event`, every byte appended first) against
//! straight from the receive (`Connection::poll_event_from`) against views first
//! (`Connection::poll_view_from`, then `poll_event_from` for what it leaves: the engine's way).
//! 100 × 64 B frames in one receive, and 8 × 4 KiB frames cut into 4 KiB receives (every frame
//! straddles two, so none comes as a view).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edge_ws_protocol::{
    Connection, ConnectionConfig, Decoder, DecoderConfig, Encoder, Event, Message, OpCode, Role,
};

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

fn receive(c: &mut Criterion) {
    let cfg = ConnectionConfig {
        role: Role::Server,
        limits: DecoderConfig::default(),
        heartbeat_interval: None,
        heartbeat_timeout: 100,
        idle_timeout: None,
        close_timeout: 100,
    };
    for (label, size, count, cut) in [
        ("100x64B", 64, 100, usize::MAX),
        ("8x4KiB_in_4KiB_receives", 4096, 8, 4096),
    ] {
        let frames = wire(OpCode::Binary, &binary(size), count);
        let receives: Vec<Vec<u8>> = frames
            .chunks(cut.min(frames.len()))
            .map(<[u8]>::to_vec)
            .collect();
        let mut g = c.benchmark_group(format!("receive/{label}"));
        g.throughput(Throughput::Elements(count as u64));
        for (slices, views) in [(false, false), (true, false), (true, true)] {
            let mut conn = Connection::new(0);
            let mut scratch = cfg.decoder();
            let mut rbuf = BytesMut::new();
            let name = match (slices, views) {
                (true, true) => "views_from_receive",
                (true, false) => "from_receive",
                _ => "through_read_buffer",
            };
            g.bench_function(name, |b| {
                b.iter_batched_ref(
                    || receives.clone(),
                    |receives| {
                        let mut n = 0;
                        for r in receives.iter_mut() {
                            let mut input: &mut [u8] = r;
                            if !slices {
                                rbuf.extend_from_slice(input);
                                input = &mut [];
                            }
                            loop {
                                if views {
                                    match conn.poll_view_from(&cfg, &scratch, &rbuf, &mut input, 1)
                                    {
                                        Some(Ok(v)) => {
                                            black_box(v);
                                            n += 1;
                                            continue;
                                        }
                                        Some(Err(e)) => panic!("invalid: {e}"),
                                        None => {}
                                    }
                                }
                                let e = if slices {
                                    conn.poll_event_from(
                                        &cfg,
                                        &mut scratch,
                                        &mut rbuf,
                                        &mut input,
                                        1,
                                    )
                                } else {
                                    conn.poll_event(&cfg, &mut scratch, &mut rbuf, 1)
                                };
                                match e.expect("valid") {
                                    Some(Event::Message(m)) => {
                                        black_box(m);
                                        n += 1;
                                    }
                                    Some(other) => panic!("unexpected {other:?}"),
                                    None => break,
                                }
                            }
                        }
                        assert_eq!(n, count);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, decode, receive);
criterion_main!(benches);
