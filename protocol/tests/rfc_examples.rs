//! RFC 6455 §5.7 and RFC 7692 §7.2.3 examples, byte for byte, through the public codec.

use bytes::{Bytes, BytesMut};
use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::{Decoder, DecoderConfig, Encoder, Message, OpCode, Role};

fn decode_all(role: Role, wire: &[u8]) -> Vec<Message> {
    let mut d = Decoder::new(role, DecoderConfig::default());
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(m) = d.decode(&mut buf).unwrap() {
        out.push(m);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    out
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

#[test]
fn single_frame_unmasked_text() {
    let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(
        decode_all(Role::Client, &wire),
        vec![Message::Text(Bytes::from_static(b"Hello"))]
    );
    let mut out = BytesMut::new();
    Encoder::server().encode(OpCode::Text, b"Hello", &mut out);
    assert_eq!(&out[..], &wire);
}

#[test]
fn single_frame_masked_text() {
    let wire = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode_all(Role::Server, &wire),
        vec![Message::Text(Bytes::from_static(b"Hello"))]
    );
    let mut out = BytesMut::new();
    Encoder::client(|| MASK).encode(OpCode::Text, b"Hello", &mut out);
    assert_eq!(&out[..], &wire);
}

#[test]
fn fragmented_unmasked_text() {
    let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    assert_eq!(
        decode_all(Role::Client, &wire),
        vec![Message::Text(Bytes::from_static(b"Hello"))]
    );
    let mut out = BytesMut::new();
    let mut e = Encoder::server();
    e.encode_fragment(OpCode::Text, b"Hel", false, &mut out);
    e.encode_fragment(OpCode::Continuation, b"lo", true, &mut out);
    assert_eq!(&out[..], &wire);
}

#[test]
fn ping_and_masked_pong() {
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(
        decode_all(Role::Client, &ping),
        vec![Message::Ping(Bytes::from_static(b"Hello"))]
    );
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode_all(Role::Server, &pong),
        vec![Message::Pong(Bytes::from_static(b"Hello"))]
    );
    let mut out = BytesMut::new();
    Encoder::client(|| MASK).encode(OpCode::Pong, b"Hello", &mut out);
    assert_eq!(&out[..], &pong);
}

#[test]
fn binary_256_bytes_and_64_kib() {
    let payload = vec![0xAB; 256];
    let mut out = BytesMut::new();
    Encoder::server().encode(OpCode::Binary, &payload, &mut out);
    assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
    assert_eq!(
        decode_all(Role::Client, &out),
        vec![Message::Binary(Bytes::from(payload))]
    );

    let payload = vec![0xCD; 65536];
    let mut out = BytesMut::new();
    Encoder::server().encode(OpCode::Binary, &payload, &mut out);
    assert_eq!(&out[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
    assert_eq!(
        decode_all(Role::Client, &out),
        vec![Message::Binary(Bytes::from(payload))]
    );
}

fn deflate_params(no_takeover: bool) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: no_takeover,
        client_no_context_takeover: no_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

#[test]
fn rfc7692_compressed_hello() {
    // RFC 7692 §7.2.3.1: "Hello" compressed, one frame.
    let wire = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mut d = Decoder::new(Role::Client, DecoderConfig::default());
    d.set_deflate(&deflate_params(false));
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Text(Bytes::from_static(b"Hello")))
    );

    // §7.2.3.2: the same "Hello" sent in two fragments, only the first with RSV1.
    let wire = [
        0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00,
    ];
    let mut d = Decoder::new(Role::Client, DecoderConfig::default());
    d.set_deflate(&deflate_params(false));
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Text(Bytes::from_static(b"Hello")))
    );
}

#[test]
fn rfc7692_context_takeover_shrinks_the_second_message() {
    let mut e = Encoder::server();
    e.set_deflate(&deflate_params(false), 6, 0);
    let mut first = BytesMut::new();
    e.encode(OpCode::Text, b"Hello", &mut first);
    let mut second = BytesMut::new();
    e.encode(OpCode::Text, b"Hello", &mut second);
    assert_eq!(first[0], 0xc1, "RSV1 set");
    assert!(second.len() < first.len(), "{first:?} vs {second:?}");
    // RFC 7692 §7.2.3.2 gives the second message as f2 00 11 00 00 with a shared window.
    assert_eq!(&second[2..], &[0xf2, 0x00, 0x11, 0x00, 0x00]);

    let mut d = Decoder::new(Role::Client, DecoderConfig::default());
    d.set_deflate(&deflate_params(false));
    let mut buf = first;
    buf.extend_from_slice(&second);
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Text(Bytes::from_static(b"Hello")))
    );
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Text(Bytes::from_static(b"Hello")))
    );
}
