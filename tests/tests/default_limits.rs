//! The shipped limits hold together: a message of `max_message_size` is echoed and published
//! with every limit at its default, however the write-buffer limit compares to it.

use std::time::Duration;

use edge_ws::{Config, Engine, Handler, Message, MessageKind, Socket};
use edge_ws_protocol::OpCode;
use edge_ws_tests::{test_config, wait_until, RawClient};

/// `/sub` subscribes to "big"; `/pub` publishes every message there; other paths echo.
struct Relay;

impl Handler for Relay {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        if socket.path() == "/sub" {
            socket.subscribe("big");
        }
    }

    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        match socket.path() {
            "/pub" => {
                socket.publish_with(
                    "big",
                    message.payload(),
                    MessageKind::of(&message),
                    Default::default(),
                );
            }
            "/sub" => {}
            _ => {
                let _ = socket.send(&message);
            }
        }
    }
}

/// A payload of exactly `len` bytes that is not all one value (so truncation or reordering
/// would show).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn recv_data(c: &mut RawClient) -> Vec<u8> {
    loop {
        match c.recv() {
            Some(Message::Binary(b)) => return b.to_vec(),
            Some(Message::Close(f)) => panic!("closed instead: {f:?}"),
            Some(_) => continue,
            None => panic!("connection ended"),
        }
    }
}

#[test]
fn a_message_of_max_message_size_is_echoed_and_published_at_default_limits() {
    let defaults = Config::default();
    let max = defaults.max_message_size;
    // The point of the test: the write-buffer limit is below the message size by default.
    assert!(defaults.write_buffer_limit < max);
    let mut cfg = test_config(2);
    // Only the test plumbing differs from the defaults (port, cores, pinning, tick, buffers).
    cfg.max_message_size = max;
    let engine = Engine::builder().config(cfg).build(|_| Relay).unwrap();
    let addr = engine.local_addr();

    // Echo: two messages of the largest size, sent back to back before reading either.
    let mut echo = RawClient::connect(addr, "/echo", None);
    let (a, b) = (payload(max, 1), payload(max, 2));
    echo.send(OpCode::Binary, &a);
    echo.send(OpCode::Binary, &b);
    assert!(recv_data(&mut echo) == a, "first echo differs");
    assert!(recv_data(&mut echo) == b, "second echo differs");

    // Publish: subscribers on both cores get the whole message.
    let mut subs: Vec<RawClient> = (0..4)
        .map(|_| RawClient::connect(addr, "/sub", None))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        engine.handle().connections() == 5
    }));
    let mut publisher = RawClient::connect(addr, "/pub", None);
    let msg = payload(max, 3);
    publisher.send(OpCode::Binary, &msg);
    for s in &mut subs {
        assert!(recv_data(s) == msg, "published message differs");
    }
    let m = engine.handle().metrics();
    assert_eq!(m.slow_consumer_closes, 0);
    assert_eq!(m.slow_consumer_drops, 0);
    assert_eq!(m.too_big_errors, 0);

    // One byte more is refused with 1009, and everyone else is still served.
    // (The header alone announces it; the server answers before the payload would arrive.)
    let mut over = RawClient::connect(addr, "/echo", None);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(max as u64 + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    over.write_raw(&header);
    assert_eq!(over.expect_close(), Some(1009));
    echo.send(OpCode::Binary, b"still here");
    assert_eq!(recv_data(&mut echo), b"still here");
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn one_snapshot_holds_the_engine_and_the_runtime_counters() {
    let mut cfg = test_config(1);
    cfg.max_connections = 2;
    let engine = Engine::builder().config(cfg).build(|_| Relay).unwrap();
    let addr = engine.local_addr();
    let mut a = RawClient::connect(addr, "/echo", None);
    let _b = RawClient::connect(addr, "/echo", None);
    // The third is closed at accept by the runtime (the core is at its limit).
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut c, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the limit stayed open: {other:?}"),
    }
    a.send(OpCode::Binary, b"ping");
    assert_eq!(recv_data(&mut a), b"ping");
    let m = engine.handle().metrics();
    assert_eq!(m.rejected_over_limit, 1, "{m:?}");
    assert_eq!((m.accepted, m.opened), (2, 2));
    assert!(
        m.socket_bytes_in > m.bytes_in && m.socket_bytes_out > m.bytes_out,
        "{m:?}"
    );
    assert!(m.sends >= 3 && m.submissions > 0, "{m:?}");
    let names: Vec<&str> = m.fields().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"rejected_over_limit") && names.contains(&"opened"));
    assert_eq!(
        engine.handle().core_metrics(0).unwrap().rejected_over_limit,
        1
    );
    drop((a, _b));
    engine.handle().shutdown();
    engine.join().unwrap();
}
