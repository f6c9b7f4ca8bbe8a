//! Frame header decode and encode (frames/s) for each length form, masked (client → server).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_ws_protocol::frame::MAX_HEADER_LEN;
use edge_ws_protocol::{FrameHeader, OpCode};

fn header(len: u64) -> FrameHeader {
    FrameHeader {
        mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        ..FrameHeader::new(OpCode::Binary, len)
    }
}

fn frame(c: &mut Criterion) {
    // 7-bit, 16-bit and 64-bit length forms.
    let cases = [("len7", 100u64), ("len16", 16 * 1024), ("len64", 1 << 20)];

    let mut g = c.benchmark_group("frame_header/decode");
    g.throughput(Throughput::Elements(1));
    for (name, len) in cases {
        let mut wire = [0u8; MAX_HEADER_LEN];
        let n = header(len).encode(&mut wire);
        let wire = wire[..n].to_vec();
        g.bench_function(name, |b| {
            b.iter(|| FrameHeader::decode(black_box(&wire[..])).expect("valid header"))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frame_header/encode");
    g.throughput(Throughput::Elements(1));
    for (name, len) in cases {
        let h = header(len);
        let mut out = [0u8; MAX_HEADER_LEN];
        g.bench_function(name, |b| {
            b.iter(|| black_box(&h).encode(black_box(&mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, frame);
criterion_main!(benches);
