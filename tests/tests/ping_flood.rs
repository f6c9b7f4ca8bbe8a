//! A client that floods pings and never reads: the server holds at most one pong for it, its
//! memory stays flat over 1,000,000 pings, and the flood is closed by the slow-consumer policy
//! with whole frames only. Shipped defaults (only test plumbing differs). Alone in its test
//! binary so that nothing else moves the process's RSS.

use std::io::Write;
use std::time::Duration;

use edge_ws::config::CLOSE_SLOW_CONSUMER;
use edge_ws::Message;
use edge_ws_protocol::OpCode;
use edge_ws_tests::{echo_engine, masked_frame, rss_bytes, test_config, wait_until, RawClient};

const PINGS: usize = 1_000_000;

#[test]
fn a_million_pings_from_a_client_that_never_reads_keep_memory_flat() {
    let cfg = test_config(1);
    let heartbeat_timeout = cfg.heartbeat_timeout;
    let engine = echo_engine(cfg);
    let addr = engine.local_addr();
    let handle = engine.handle();
    let mut c = RawClient::connect(addr, "/", None);

    // First stall the connection's output: a 16 MiB echo the client does not read fills the
    // socket buffers, so the server's send stays in the kernel and no pong can follow it.
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    c.send(OpCode::Binary, &big);
    assert!(wait_until(Duration::from_secs(10), || handle
        .metrics()
        .messages_out
        == 1));
    std::thread::sleep(Duration::from_millis(200));

    // 1,000,000 pings of 8 bytes, written in one go (about 14 MB on the wire).
    let one = masked_frame(0x89, b"ping1234");
    let wire = one.repeat(PINGS);
    let before = rss_bytes();
    c.stream.write_all(&wire).expect("write pings");
    assert!(
        wait_until(Duration::from_secs(60), || handle.metrics().pings_in
            == PINGS as u64),
        "server saw {} pings",
        handle.metrics().pings_in
    );
    let after = rss_bytes();
    let m = handle.metrics();
    eprintln!(
        "RSS before {} KiB, after {} KiB; pongs superseded {}",
        before >> 10,
        after >> 10,
        m.pongs_superseded
    );
    // Before bounded pongs, 1,000,000 queued pongs cost ~170 MiB.
    assert!(
        after.saturating_sub(before) <= 8 << 20,
        "RSS grew by {} KiB over {PINGS} pings",
        (after - before) >> 10
    );
    assert!(m.pongs_superseded >= PINGS as u64 - 1000, "{m:?}");

    // The pong cannot be written for the heartbeat timeout: closed by policy, counted.
    assert!(
        wait_until(heartbeat_timeout + Duration::from_secs(5), || {
            handle.metrics().ping_flood_closes == 1
        }),
        "flood not closed: {:?}",
        handle.metrics()
    );
    assert_eq!(handle.metrics().slow_consumer_closes, 1);

    // Now read: the 16 MiB echo arrives whole (the close never cuts a frame), then the pong the
    // kernel already had, if any, then the close with 4001.
    let mut got_echo = false;
    let code = loop {
        match c.recv() {
            Some(Message::Binary(b)) => {
                assert!(b[..] == big[..], "echo cut or altered");
                got_echo = true;
            }
            Some(Message::Pong(p)) => assert_eq!(&p[..], b"ping1234"),
            Some(Message::Close(f)) => break f.map(|f| f.code),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("connection ended without a close frame"),
        }
    };
    assert!(got_echo);
    assert_eq!(code, Some(CLOSE_SLOW_CONSUMER));
    handle.shutdown();
    engine.join().unwrap();
}
