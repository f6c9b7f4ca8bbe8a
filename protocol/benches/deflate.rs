//! permessage-deflate on JSON-like text: compress and inflate chat/notification messages of
//! ~200 B and a ~16 KiB history batch, at levels 1 and 6. Throughput is counted in
//! *uncompressed* bytes for both directions. Compression ratios are printed once (stderr),
//! both for a message on its own (no context takeover, what the timed loop does) and over a
//! stream of distinct messages with context takeover (what a long-lived connection sees).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws_protocol::deflate::{Compressor, Decompressor};

/// A small deterministic PRNG (xorshift64*), so every run benchmarks the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
];
const ROOMS: &[&str] = &[
    "general",
    "random",
    "dev-backend",
    "support",
    "announcements",
];
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "deploy", "is", "done", "can", "you", "check", "latency", "on", "eu-west", "looks",
    "good", "to", "me", "thanks", "!", "merged", "PR", "review", "please", "build", "failed",
    "again", "flaky", "test", "websocket", "reconnect", "issue", "fixed", "in", "v2.3.1",
    "lunch", "?", "meeting", "at", "3pm", "ok", "👍", "on-call", "tonight",
];
const KINDS: &[&str] = &["mention", "reaction", "reply", "invite", "system"];

/// One chat message event, ~200 bytes.
fn chat_message(rng: &mut Rng, id: u64) -> String {
    let user_id = 1000 + rng.below(USERS.len() as u64);
    let user = USERS[(user_id - 1000) as usize];
    let words = 4 + rng.below(10);
    let text: Vec<&str> = (0..words).map(|_| rng.pick(WORDS)).collect();
    format!(
        r#"{{"type":"message","id":"msg_{id:012x}","room":"{}","user":{{"id":{user_id},"name":"{user}","avatar":"https://cdn.example.com/u/{user_id}.png"}},"text":"{}","ts":{}}}"#,
        rng.pick(ROOMS),
        text.join(" "),
        1_700_000_000_000u64 + id * 1_337 + rng.below(1000),
    )
}

/// One notification event.
fn notification(rng: &mut Rng, id: u64) -> String {
    format!(
        r#"{{"type":"notification","id":{id},"kind":"{}","from":"{}","room":"{}","unread":{},"read":{}}}"#,
        rng.pick(KINDS),
        rng.pick(USERS),
        rng.pick(ROOMS),
        rng.below(50),
        rng.below(2) == 0,
    )
}

/// Makes the `id`-th message of a kind.
type Generator = fn(&mut Rng, u64) -> Vec<u8>;

/// A ~200-byte chat message.
fn small(rng: &mut Rng, id: u64) -> Vec<u8> {
    chat_message(rng, id).into_bytes()
}

/// A ~16 KiB history batch: messages and notifications in one JSON document.
fn large(rng: &mut Rng, id: u64) -> Vec<u8> {
    let mut s = String::from(r#"{"type":"history","events":["#);
    let mut i = 0;
    while s.len() < 16 * 1024 - 300 {
        if i > 0 {
            s.push(',');
        }
        if rng.below(4) == 0 {
            s += &notification(rng, id + i);
        } else {
            s += &chat_message(rng, id + i);
        }
        i += 1;
    }
    s += "]}";
    s.into_bytes()
}

fn compress(c: &mut Compressor, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(data.len());
    c.compress(data, &mut out);
    out
}

/// Compression ratios (compressed / original), printed once per size and level.
fn print_ratios(name: &str, make: Generator, level: u32) {
    let mut rng = Rng(0x5eed_0000 + u64::from(level));
    let msgs: Vec<Vec<u8>> = (0..200).map(|i| make(&mut rng, i * 1000)).collect();
    let plain: usize = msgs.iter().map(Vec::len).sum();
    let alone: usize = msgs
        .iter()
        .map(|m| compress(&mut Compressor::new(level, 15, true), m).len())
        .sum();
    let mut c = Compressor::new(level, 15, false);
    let takeover: usize = msgs.iter().map(|m| compress(&mut c, m).len()).sum();
    eprintln!(
        "deflate ratio {name} level {level}: avg {} B/msg; alone {:.3} ({:.1}x), \
         with context takeover {:.3} ({:.1}x)",
        plain / msgs.len(),
        alone as f64 / plain as f64,
        plain as f64 / alone as f64,
        takeover as f64 / plain as f64,
        plain as f64 / takeover as f64,
    );
}

fn deflate(c: &mut Criterion) {
    let sizes: [(&str, Generator); 2] = [("200B", small), ("16KiB", large)];
    for (name, make) in sizes {
        let data = make(&mut Rng(42), 1);
        for level in [1u32, 6] {
            print_ratios(name, make, level);
            let mut g = c.benchmark_group(format!("deflate/{name}/level{level}"));
            g.throughput(Throughput::Bytes(data.len() as u64));

            let mut comp = Compressor::new(level, 15, true);
            let mut out = BytesMut::with_capacity(2 * data.len() + 64);
            g.bench_function("compress", |b| {
                b.iter(|| {
                    out.clear();
                    comp.compress(black_box(&data), &mut out);
                    black_box(out.len())
                })
            });

            let z = compress(&mut Compressor::new(level, 15, true), &data);
            let mut dec = Decompressor::new(15, true);
            let mut plain = BytesMut::with_capacity(2 * data.len() + 64);
            g.bench_function("inflate", |b| {
                b.iter(|| {
                    plain.clear();
                    dec.decompress(black_box(&z), &mut plain, usize::MAX)
                        .expect("valid");
                    dec.finish_message(&mut plain, usize::MAX).expect("valid");
                    debug_assert_eq!(plain.len(), data.len());
                    black_box(plain.len())
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, deflate);
criterion_main!(benches);
