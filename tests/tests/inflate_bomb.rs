//! A 1 GiB permessage-deflate bomb against the shipped defaults with compression on: refused
//! with 1009 after at most one inflate round past the 16 MiB limit, with the server's memory
//! bounded by the limit plus a small constant. Alone in its test binary so that nothing else
//! moves the process's peak RSS.

use std::io::Write;
use std::time::Duration;

use edge_ws::Message;
use edge_ws_protocol::deflate::DeflateConfig;
use edge_ws_protocol::OpCode;
use edge_ws_tests::{
    echo_engine, masked_frame, peak_rss_bytes, test_config, wait_until, RawClient,
};
use flate2::{Compress, Compression, FlushCompress};

/// 1 GiB of zeros as one raw deflate stream of about 1 MiB: a MiB compressed after a full
/// flush (the compressor forgets its window, so every MiB compresses to the same bytes),
/// repeated 1024 times.
fn bomb() -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let mut one = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut one, FlushCompress::Full)
        .unwrap();
    one.repeat(1024)
}

#[test]
fn a_one_gib_bomb_is_refused_with_bounded_memory() {
    let mut cfg = test_config(1);
    cfg.deflate = Some(DeflateConfig::default());
    let limit = cfg.max_message_size as u64;
    let engine = echo_engine(cfg);
    let addr = engine.local_addr();
    let handle = engine.handle();
    let mut c = RawClient::connect_deflate(addr, "/", &DeflateConfig::default());
    // The connection works: a plain message echoes.
    c.send(OpCode::Text, b"hello");
    assert!(matches!(c.recv(), Some(Message::Text(t)) if &t[..] == b"hello"));

    let wire = masked_frame(0xC2, &bomb()); // FIN, RSV1 (compressed), binary
    assert!(wire.len() < 2 << 20);
    let before = peak_rss_bytes();
    // The server refuses early and closes; the rest of the write may fail (reset): expected.
    let mut sent = 0;
    for chunk in wire.chunks(64 << 10) {
        if c.stream.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        wait_until(Duration::from_secs(20), || handle.metrics().too_big_errors
            == 1),
        "not refused: {:?}",
        handle.metrics()
    );
    let peak = peak_rss_bytes();
    eprintln!(
        "peak RSS {} KiB -> {} KiB (+{} KiB) for a {} KiB limit; client wrote {sent} of {} bytes",
        before >> 10,
        peak >> 10,
        (peak - before) >> 10,
        limit >> 10,
        wire.len()
    );
    // Before streaming inflate the server's RSS rose ~59 MiB for this bomb.
    assert!(
        peak.saturating_sub(before) <= limit + (8 << 20),
        "peak RSS grew by {} KiB for a {} KiB limit",
        (peak - before) >> 10,
        limit >> 10
    );
    // The close says why, unless the reset of the unread bomb overtook it.
    loop {
        match c.recv() {
            Some(Message::Close(f)) => {
                assert_eq!(f.map(|f| f.code.0), Some(1009));
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    // The server keeps serving.
    let mut other = RawClient::connect_deflate(addr, "/", &DeflateConfig::default());
    other.send(OpCode::Text, b"after the bomb");
    assert!(matches!(other.recv(), Some(Message::Text(t)) if &t[..] == b"after the bomb"));
    handle.shutdown();
    engine.join().unwrap();
}
