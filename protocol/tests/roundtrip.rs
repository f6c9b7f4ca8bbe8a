//! Property tests: whatever the encoder writes, the decoder of the other role reads back,
//! whatever the split points of the byte stream, with and without permessage-deflate.

use bytes::{Bytes, BytesMut};
use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::{Decoder, DecoderConfig, Encoder, Message, OpCode, Role};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Item {
    Text(String, Vec<usize>),
    Binary(Vec<u8>, Vec<usize>),
    Ping(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (".{0,300}", prop::collection::vec(1usize..64, 0..4)).prop_map(|(s, f)| Item::Text(s, f)),
        (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::collection::vec(1usize..700, 0..4)
        )
            .prop_map(|(b, f)| Item::Binary(b, f)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Item::Ping),
    ]
}

fn params(no_takeover: bool, bits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: no_takeover,
        client_no_context_takeover: no_takeover,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    }
}

/// Encodes the items; fragment sizes cut a message into frames (a control frame may go
/// between two fragments).
fn encode(enc: &mut Encoder, items: &[Item]) -> (BytesMut, Vec<Message>) {
    let mut wire = BytesMut::new();
    let mut expect = Vec::new();
    for it in items {
        let (op, data, frags) = match it {
            Item::Text(s, f) => (OpCode::Text, s.as_bytes(), f),
            Item::Binary(b, f) => (OpCode::Binary, b.as_slice(), f),
            Item::Ping(p) => {
                enc.encode(OpCode::Ping, p, &mut wire);
                expect.push(Message::Ping(Bytes::copy_from_slice(p)));
                continue;
            }
        };
        let msg = if op == OpCode::Text {
            Message::Text(Bytes::copy_from_slice(data))
        } else {
            Message::Binary(Bytes::copy_from_slice(data))
        };
        if frags.is_empty() {
            enc.encode(op, data, &mut wire);
            expect.push(msg);
            continue;
        }
        let mut rest = data;
        let mut first = true;
        for (i, &n) in frags.iter().enumerate() {
            let n = n.min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let opcode = if first { op } else { OpCode::Continuation };
            enc.encode_fragment(opcode, chunk, false, &mut wire);
            first = false;
            if i == 0 {
                // an interleaved control frame inside the fragmented message
                enc.encode(OpCode::Pong, b"mid", &mut wire);
                expect.push(Message::Pong(Bytes::from_static(b"mid")));
            }
        }
        enc.encode_fragment(OpCode::Continuation, rest, true, &mut wire);
        expect.push(msg);
    }
    (wire, expect)
}

fn decode_split(dec: &mut Decoder, wire: &[u8], splits: &[usize]) -> Vec<Message> {
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[at..cut]);
        at = cut;
        while let Some(m) = dec.decode(&mut buf).expect("decode") {
            got.push(m);
        }
    }
    assert!(buf.is_empty());
    got
}

fn key_source() -> impl FnMut() -> [u8; 4] + Send {
    let mut n: u32 = 0x1234_5678;
    move || {
        n = n.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        n.to_le_bytes()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn client_to_server(items in prop::collection::vec(item(), 1..8), splits in prop::collection::vec(any::<usize>(), 0..12)) {
        let mut enc = Encoder::client(key_source());
        let (wire, expect) = encode(&mut enc, &items);
        let mut dec = Decoder::new(Role::Server, DecoderConfig::default());
        prop_assert_eq!(decode_split(&mut dec, &wire, &splits), expect);
    }

    #[test]
    fn server_to_client(items in prop::collection::vec(item(), 1..8), splits in prop::collection::vec(any::<usize>(), 0..12)) {
        let mut enc = Encoder::server();
        let (wire, expect) = encode(&mut enc, &items);
        let mut dec = Decoder::new(Role::Client, DecoderConfig::default());
        prop_assert_eq!(decode_split(&mut dec, &wire, &splits), expect);
    }

    #[test]
    fn with_deflate_both_roles(
        items in prop::collection::vec(item(), 1..8),
        splits in prop::collection::vec(any::<usize>(), 0..12),
        no_takeover in any::<bool>(),
        bits in 9u8..=15,
        threshold in prop_oneof![Just(0usize), Just(64), Just(1024)],
    ) {
        let p = params(no_takeover, bits);
        for (mut enc, role) in [(Encoder::client(key_source()), Role::Server), (Encoder::server(), Role::Client)] {
            enc.set_deflate(&p, 6, threshold);
            let (wire, expect) = encode(&mut enc, &items);
            let mut dec = Decoder::new(role, DecoderConfig::default());
            dec.set_deflate(&p);
            prop_assert_eq!(decode_split(&mut dec, &wire, &splits), expect);
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let items = vec![
        Item::Text("héllo wörld".repeat(20), vec![]),
        Item::Binary(vec![7; 70_000], vec![]),
        Item::Text("fragmented ✓".repeat(5), vec![3, 10, 1]),
        Item::Ping(b"p".to_vec()),
        Item::Binary(vec![], vec![]),
    ];
    for deflate in [false, true] {
        let mut enc = Encoder::client(key_source());
        let mut dec = Decoder::new(Role::Server, DecoderConfig::default());
        if deflate {
            enc.set_deflate(&params(false, 15), 1, 16);
            dec.set_deflate(&params(false, 15));
        }
        let (wire, expect) = encode(&mut enc, &items);
        let splits: Vec<usize> = (0..wire.len()).collect();
        assert_eq!(
            decode_split(&mut dec, &wire, &splits),
            expect,
            "deflate {deflate}"
        );
    }
}

#[test]
fn unfragmented_payload_is_not_copied() {
    // The payload Bytes must point into the read buffer's memory.
    let mut enc = Encoder::client(key_source());
    let mut wire = BytesMut::new();
    enc.encode(OpCode::Binary, &[5u8; 4096], &mut wire);
    let base = wire.as_ptr() as usize;
    let mut dec = Decoder::new(Role::Server, DecoderConfig::default());
    let m = dec.decode(&mut wire).unwrap().unwrap();
    let p = m.payload().as_ptr() as usize;
    assert_eq!(p, base + 8, "payload should be a slice of the read buffer");
    assert_eq!(m.payload().len(), 4096);
}
