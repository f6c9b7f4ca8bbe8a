//! What an idle permessage-deflate connection holds, measured with a counting allocator on
//! in-memory cores: connections negotiate deflate as a browser offers it
//! (`permessage-deflate; client_max_window_bits`), each sends one compressed message and reads
//! the compressed echo, then idles. Without context takeover (the server answers
//! `server_no_context_takeover; client_no_context_takeover`) neither the compressor's nor the
//! inflater's state stays: ≤ 4 KiB per idle connection. With context takeover both keep their
//! windows; the test measures that too, so the difference is the windows.

use std::alloc::System;

use bytes::BytesMut;
use edge_ws::protocol::deflate::{client_accept, DeflateConfig};
use edge_ws::protocol::handshake::ClientRequest;
use edge_ws::protocol::{Decoder, DecoderConfig, Encoder, Message, OpCode, Role};
use edge_ws::runtime::counting::CountingAlloc;
use edge_ws::testing::{MemClient, MemEngine};
use edge_ws::{Config, Handler, Socket};

#[global_allocator]
static ALLOC: CountingAlloc<System> = CountingAlloc::new(System);

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let _ = socket.send(&message);
    }
}

const N: usize = 200;

/// Live heap bytes per connection for `N` idle deflate connections, each after one
/// compressed round trip, with the server answering `no_context_takeover` or not.
fn per_idle_connection(no_context_takeover: bool) -> isize {
    let deflate = DeflateConfig {
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        threshold: 0,
        ..DeflateConfig::default()
    };
    let mut config = Config::default();
    config.deflate = Some(deflate);
    let engine = MemEngine::new(config, 1, |_| Echo);
    // Warm the core's shared state (buffers, tables) with one connection first.
    let mut warm = open(&engine);
    warm.0.hang_up();
    engine.pump();
    let before = ALLOC.live_bytes();
    let mut clients: Vec<(MemClient, Encoder, Decoder)> = (0..N).map(|_| open(&engine)).collect();
    let payload =
        br#"{"type":"chat","room":"lobby","text":"hello from a browser tab, compressed"}"#;
    for (c, enc, _) in &mut clients {
        let mut out = BytesMut::new();
        enc.encode(OpCode::Text, payload, &mut out);
        c.send_raw(&out);
    }
    engine.pump();
    for (c, _, dec) in &mut clients {
        let mut raw = BytesMut::from(&c.take_raw()[..]);
        match dec.decode(&mut raw) {
            Ok(Some(Message::Text(t))) => assert_eq!(&t[..], &payload[..]),
            other => panic!("no echo: {other:?}"),
        }
    }
    // The test's own deflate state goes before counting: what is left is the server's (and
    // the in-memory transport's buffers, which only makes the bound stricter).
    let clients: Vec<MemClient> = clients.into_iter().map(|(c, _, _)| c).collect();
    let after = ALLOC.live_bytes();
    let per = (after - before) / N as isize;
    drop(clients);
    per
}

fn open(engine: &MemEngine<Echo>) -> (MemClient, Encoder, Decoder) {
    let mut c = engine.open(0).expect("a transport connection");
    let offer = "permessage-deflate; client_max_window_bits";
    c.send_upgrade(&ClientRequest {
        host: "example.test",
        path: "/",
        key: [3; 16],
        protocols: &[],
        extensions: Some(offer),
        extra_headers: &[],
    });
    engine.pump();
    let response = c.finish_upgrade().expect("upgraded").expect("a 101");
    let params = client_accept(&response.extensions, &DeflateConfig::default())
        .expect("a valid answer")
        .expect("deflate agreed");
    let mut enc = Encoder::client(|| [1, 2, 3, 4]);
    enc.set_deflate(&params, 1, 0);
    let mut dec = Decoder::new(Role::Client, DecoderConfig::default());
    dec.set_deflate(&params);
    (c, enc, dec)
}

#[test]
fn an_idle_deflate_connection_without_context_takeover_holds_at_most_4_kib() {
    let released = per_idle_connection(true);
    let kept = per_idle_connection(false);
    println!("per idle deflate connection: {released} B without context takeover, {kept} B with");
    assert!(
        released <= 4096,
        "{released} B per idle connection without context takeover"
    );
    // With context takeover the windows stay (tens of KiB at least): the measurement sees them.
    assert!(
        kept > released + 16 * 1024,
        "with context takeover {kept} B, without {released} B"
    );
}
