//! Transform + apply of small concurrent edits, the work a collaborative-editing server does
//! for every keystroke it receives: a one-character insert `a` made on document `s` arrives
//! after a concurrent one-character delete `b` was applied; the server computes
//! `(a', _) = transform(a, b)` and applies `a'` to `apply(s, b)`. Documents are 1–4 KiB,
//! positions random (fixed-seed xorshift, 256 cases cycled). Also each half alone, and the same
//! on text full of multi-byte characters and emoji (the UTF-16 walk's slow path).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws_ot::{utf16_len, TextOperation};

const ASCII: &str = "fn main() { let greeting = \"Hello, world!\"; println!(\"{greeting}\"); }\n\
                     The quick brown fox jumps over the lazy dog. ";
const MIXED: &str = "Grüße, привет 😀 — こんにちは世界 👩‍👩‍👧 e\u{301}t\u{e9} ok; ";

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Case {
    a: TextOperation,
    b: TextOperation,
    after_b: String,
}

/// UTF-16 offset of the start of a random character of `doc`, and that character's length.
fn random_char(rng: &mut XorShift, doc: &str) -> (usize, usize) {
    let n = doc.chars().count();
    let k = rng.below(n);
    let before: usize = doc.chars().take(k).map(char::len_utf16).sum();
    let len = doc.chars().nth(k).map_or(0, char::len_utf16);
    (before, len)
}

fn cases(sample: &str, seed: u64) -> Vec<Case> {
    let mut rng = XorShift(seed);
    (0..256)
        .map(|_| {
            let bytes = 1024 + rng.below(3 * 1024);
            let mut doc = String::with_capacity(bytes + 8);
            'fill: loop {
                for ch in sample.chars() {
                    if doc.len() + ch.len_utf8() > bytes {
                        break 'fill;
                    }
                    doc.push(ch);
                }
            }
            let len = utf16_len(&doc);
            let (pa, _) = random_char(&mut rng, &doc);
            let a = TextOperation::new().retain(pa).insert("x").retain(len - pa);
            let (pb, w) = random_char(&mut rng, &doc);
            let b = TextOperation::new()
                .retain(pb)
                .delete(w)
                .retain(len - pb - w);
            let after_b = b.apply(&doc).expect("valid delete");
            Case { a, b, after_b }
        })
        .collect()
}

fn ot(c: &mut Criterion) {
    for (kind, sample, seed) in [("ascii", ASCII, 0x1234_5678), ("mixed", MIXED, 0x9abc_def0)] {
        let cases = cases(sample, seed);
        let mut g = c.benchmark_group(format!("ot/{kind}/1-4KiB"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("transform+apply", |bench| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) % cases.len();
                let case = &cases[i];
                let (a2, _b2) = black_box(&case.a).transform(black_box(&case.b)).unwrap();
                a2.apply(black_box(&case.after_b)).unwrap()
            })
        });
        g.bench_function("transform", |bench| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) % cases.len();
                let case = &cases[i];
                black_box(&case.a).transform(black_box(&case.b)).unwrap()
            })
        });
        let primes: Vec<TextOperation> = cases
            .iter()
            .map(|case| case.a.transform(&case.b).unwrap().0)
            .collect();
        g.bench_function("apply", |bench| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) % cases.len();
                black_box(&primes[i])
                    .apply(black_box(&cases[i].after_b))
                    .unwrap()
            })
        });
        g.bench_function("compose", |bench| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) % cases.len();
                let case = &cases[i];
                black_box(&case.b).compose(black_box(&primes[i])).unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, ot);
criterion_main!(benches);
