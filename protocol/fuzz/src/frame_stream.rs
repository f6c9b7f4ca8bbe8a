//! The decoder at arbitrary split points.
//!
//! A stream of frames (structured, so that valid streams are common, but with arbitrary header
//! bits, lengths in any form, wrong masking, compressed payloads, plus arbitrary trailing bytes)
//! is decoded by a server-role and by a client-role `Decoder`, with permessage-deflate switched
//! on when the input says so. Each stream is decoded three ways:
//!
//! - reference: all bytes in one buffer, `decode` until it needs more or fails;
//! - in pieces cut at arbitrary points, decoding after each piece;
//! - one byte at a time.
//!
//! All three must yield the same messages and then the same error (or none), and without an
//! error leave the same bytes unconsumed and the same `is_closed`. Every message must also obey
//! the protocol: text is UTF-8, control payloads are at most 125 bytes, close reasons are UTF-8,
//! data messages are within `max_message_size`.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use edge_ws_protocol::deflate::{Compressor, DeflateParams};
use edge_ws_protocol::mask::apply_mask_bytewise;
use edge_ws_protocol::{Decoder, DecoderConfig, Message, ProtocolError, Role};

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    /// The opcode, biased towards the defined ones (see [`first_byte`]).
    op: u8,
    /// FIN and RSV1-3 (see [`first_byte`]).
    flags: u8,
    /// 0-4: minimal length form, 5: 16-bit form, 6: 64-bit form, 7: 64-bit form with
    /// `declared` as the length whatever the payload (truncated frames, top bit set, huge
    /// lengths).
    len_form: u8,
    declared: u64,
    key: [u8; 4],
    /// 1: mask the way the role does not accept (client frames unmasked, server frames masked).
    wrong_mask: u8,
    /// Compress the payload with the connection's compressor and set RSV1.
    compress: bool,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct DeflateSpec {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
    level: u8,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    deflate: Option<DeflateSpec>,
    /// (max_frame_size, max_message_size, max_fragments); `None`: the defaults.
    limits: Option<(u16, u16, u8)>,
    frames: Vec<FrameSpec>,
    trailing: Vec<u8>,
    /// Piece lengths, each taken modulo what is left (0 feeds an empty piece).
    splits: Vec<u16>,
}

fn params(d: &DeflateSpec) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: d.server_no_context_takeover,
        client_no_context_takeover: d.client_no_context_takeover,
        server_max_window_bits: 8 + d.server_max_window_bits % 8,
        client_max_window_bits: 8 + d.client_max_window_bits % 8,
    }
}

/// The first header byte: mostly defined opcodes with FIN set and no RSV bits, so that long
/// valid streams are common, but every combination stays reachable.
fn first_byte(f: &FrameSpec) -> u8 {
    let opcode = match f.op % 16 {
        0..=2 => 0x1,   // text
        3..=5 => 0x2,   // binary
        6..=8 => 0x0,   // continuation
        9 => 0x8,       // close
        10 | 11 => 0x9, // ping
        12 => 0xA,      // pong
        _ => f.op >> 4, // any nibble, reserved ones included
    };
    let fin = f.flags & 0b11 != 0; // 3 in 4
    let rsv1 = f.flags & 0b1100 == 0b1100; // 1 in 4
    let rsv2 = f.flags & 0b111_0000 == 0b111_0000; // 1 in 8
    let rsv3 = f.flags & 0b1111_0000 == 0b1000_0000; // 1 in 16
    (u8::from(fin) << 7)
        | (u8::from(rsv1) << 6)
        | (u8::from(rsv2) << 5)
        | (u8::from(rsv3) << 4)
        | opcode
}

/// The bytes the peer of a `role` decoder would send for `input`.
fn wire(role: Role, input: &Input) -> Vec<u8> {
    // The peer compresses with its own direction's parameters.
    let mut compressor = input.deflate.as_ref().map(|d| {
        let p = params(d);
        let (bits, nct) = match role {
            Role::Server => (p.client_max_window_bits, p.client_no_context_takeover),
            Role::Client => (p.server_max_window_bits, p.server_no_context_takeover),
        };
        Compressor::new(u32::from(d.level % 10), bits, nct)
    });
    let mut out = Vec::new();
    for f in &input.frames {
        let mut b0 = first_byte(f);
        let mut payload = f.payload.clone();
        if f.compress {
            if let Some(c) = compressor.as_mut() {
                let mut z = BytesMut::new();
                c.compress(&payload, &mut z);
                payload = z.to_vec();
                b0 |= 0x40;
            }
        }
        let masked = (role == Role::Server) != (f.wrong_mask == 1);
        let mask_bit = if masked { 0x80 } else { 0 };
        let len = payload.len() as u64;
        out.push(b0);
        match f.len_form % 8 {
            5 if len <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            6 => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            7 => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&f.declared.to_be_bytes());
            }
            _ => {
                if len < 126 {
                    out.push(mask_bit | len as u8);
                } else if len <= 0xFFFF {
                    out.push(mask_bit | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    out.push(mask_bit | 127);
                    out.extend_from_slice(&len.to_be_bytes());
                }
            }
        }
        if masked {
            out.extend_from_slice(&f.key);
            apply_mask_bytewise(&mut payload, f.key, 0);
        }
        out.extend_from_slice(&payload);
    }
    out.extend_from_slice(&input.trailing);
    out
}

#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<ProtocolError>,
    /// Unconsumed bytes and `is_closed` (only compared when there was no error).
    rest: Option<(BytesMut, bool)>,
}

fn decoder(role: Role, config: DecoderConfig, input: &Input) -> Decoder {
    let mut d = Decoder::new(role, config);
    if let Some(spec) = &input.deflate {
        d.set_deflate(&params(spec));
    }
    d
}

/// Feeds `pieces` in order, decoding everything available after each.
fn feed<'a>(mut dec: Decoder, pieces: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        messages,
                        error: Some(e),
                        rest: None,
                    }
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
        rest: Some((buf, dec.is_closed())),
    }
}

fn split<'a>(data: &'a [u8], splits: &'a [u16]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::with_capacity(splits.len() + 1);
    let mut rest = data;
    for &s in splits {
        let n = usize::from(s) % (rest.len() + 1);
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    pieces
}

fn check_messages(out: &Outcome, config: &DecoderConfig) {
    for m in &out.messages {
        match m {
            Message::Text(b) => {
                assert!(core::str::from_utf8(b).is_ok(), "text message not UTF-8");
                assert!(b.len() <= config.max_message_size, "text over the limit");
            }
            Message::Binary(b) => {
                assert!(b.len() <= config.max_message_size, "binary over the limit")
            }
            Message::Ping(b) | Message::Pong(b) => assert!(b.len() <= 125, "control > 125"),
            Message::Close(c) => {
                if let Some(c) = c {
                    assert!(c.code.is_valid_on_wire(), "close code {:?}", c.code);
                    assert!(c.reason.len() <= 123, "close reason > 123");
                    assert!(core::str::from_utf8(&c.reason).is_ok(), "close reason");
                }
            }
        }
    }
    // Nothing is decoded after a close.
    if let Some(i) = out
        .messages
        .iter()
        .position(|m| matches!(m, Message::Close(_)))
    {
        assert_eq!(i + 1, out.messages.len(), "message after close");
        assert!(out.error.is_none(), "error after close");
    }
}

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
    let config = match input.limits {
        Some((frame, message, fragments)) => DecoderConfig {
            max_frame_size: usize::from(frame),
            max_message_size: usize::from(message),
            max_fragments: usize::from(fragments),
        },
        None => DecoderConfig::default(),
    };
    for role in [Role::Server, Role::Client] {
        let bytes = wire(role, &input);
        let whole = feed(decoder(role, config, &input), core::iter::once(&bytes[..]));
        check_messages(&whole, &config);

        let pieces = split(&bytes, &input.splits);
        let split_run = feed(decoder(role, config, &input), pieces.iter().copied());
        assert_eq!(
            split_run,
            whole,
            "{role:?}: split decode differs from whole (pieces {:?})",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );

        if bytes.len() <= 4096 {
            let bytewise = feed(decoder(role, config, &input), bytes.chunks(1));
            assert_eq!(
                bytewise, whole,
                "{role:?}: byte-at-a-time differs from whole"
            );
        }
    }
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

crate::encode_struct!(FrameSpec {
    op, flags, len_form, declared, key, wrong_mask, compress ; payload
});
crate::encode_struct!(DeflateSpec {
    server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    client_max_window_bits ; level
});
crate::encode_struct!(Input { deflate, limits, frames, trailing ; splits });

/// `FrameSpec::op` values that [`first_byte`] maps to each opcode.
const TEXT: u8 = 0;
const BINARY: u8 = 3;
const CONTINUATION: u8 = 6;
const CLOSE: u8 = 9;
const PING: u8 = 10;
const PONG: u8 = 12;
/// `FrameSpec::flags`: FIN, no RSV bits / no FIN / FIN + RSV1 / RSV1 without FIN.
const FIN: u8 = 0b01;
const MORE: u8 = 0b00;
const FIN_RSV1: u8 = 0b1101;
const RSV1_MORE: u8 = 0b1100;

fn frame(op: u8, flags: u8, payload: &[u8]) -> FrameSpec {
    FrameSpec {
        op,
        flags,
        len_form: 0,
        declared: 0,
        key: [0x37, 0xfa, 0x21, 0x3d],
        wrong_mask: 0,
        compress: false,
        payload: payload.to_vec(),
    }
}

fn compressed(op: u8, payload: &[u8]) -> FrameSpec {
    FrameSpec {
        compress: true,
        ..frame(op, FIN, payload)
    }
}

fn stream(frames: Vec<FrameSpec>, splits: &[u16]) -> Input {
    Input {
        deflate: None,
        limits: None,
        frames,
        trailing: Vec::new(),
        splits: splits.to_vec(),
    }
}

/// permessage-deflate with both windows `8 + bits % 8`.
fn deflate(bits: u8, no_context_takeover: bool, level: u8) -> Option<DeflateSpec> {
    Some(DeflateSpec {
        server_no_context_takeover: no_context_takeover,
        client_no_context_takeover: no_context_takeover,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
        level,
    })
}

/// Hand-built streams: every opcode, fragmentation, compression, limits and broken frames.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let ramp: Vec<u8> = (0..=255u8).cycle().take(300).collect();
    // A compressed message cut into two fragments (RSV1 on the first only), compressed here
    // with a 15-bit window so that the frames carry it as is.
    let mut z = BytesMut::new();
    Compressor::new(6, 15, false).compress(
        b"fragmented and compressed, fragmented and compressed",
        &mut z,
    );
    let (z1, z2) = z.split_at(z.len() / 2);
    vec![
        ("text-hello", stream(vec![frame(TEXT, FIN, b"Hello")], &[3])),
        (
            "binary-16bit-and-64bit-lengths",
            stream(
                vec![
                    frame(BINARY, FIN, &ramp),
                    FrameSpec {
                        len_form: 6,
                        ..frame(BINARY, FIN, b"64-bit length form")
                    },
                    FrameSpec {
                        len_form: 5,
                        ..frame(TEXT, FIN, b"16-bit form")
                    },
                ],
                &[1, 140, 9],
            ),
        ),
        (
            "fragmented-text-with-ping",
            stream(
                vec![
                    frame(TEXT, MORE, b"Hel"),
                    frame(PING, FIN, b"ping"),
                    frame(CONTINUATION, MORE, b"lo, "),
                    frame(CONTINUATION, FIN, b"world"),
                ],
                &[1, 2, 5, 9],
            ),
        ),
        (
            "utf8-split-across-fragments",
            stream(
                vec![
                    frame(TEXT, MORE, &[b'a', 0xf0, 0x9f]),
                    frame(CONTINUATION, MORE, &[0x98]),
                    frame(CONTINUATION, FIN, &[0x80, 0xe2, 0x82, 0xac]),
                ],
                &[7],
            ),
        ),
        (
            "text-invalid-utf8",
            stream(vec![frame(TEXT, FIN, &[b'o', b'k', 0xc3, 0x28])], &[]),
        ),
        (
            "close-1000-reason-then-more",
            stream(
                vec![
                    frame(CLOSE, FIN, &[0x03, 0xe8, b'b', b'y', b'e']),
                    frame(TEXT, FIN, b"after close"),
                ],
                &[4],
            ),
        ),
        (
            "close-invalid-codes",
            stream(
                vec![frame(PING, FIN, b""), frame(CLOSE, FIN, &[0x03, 0xed])],
                &[],
            ),
        ),
        (
            "ping-pong-empty-close",
            stream(
                vec![
                    frame(PING, FIN, b""),
                    frame(PONG, FIN, b"x"),
                    frame(CLOSE, FIN, b""),
                ],
                &[],
            ),
        ),
        (
            "control-too-long",
            stream(vec![frame(PING, FIN, &[b'p'; 126])], &[]),
        ),
        (
            "control-fragmented",
            stream(vec![frame(PONG, MORE, b"pong")], &[]),
        ),
        (
            "reserved-opcode-and-rsv2",
            stream(
                vec![frame(0x3d, FIN, b"opcode 3"), frame(TEXT, 0x71, b"rsv2")],
                &[],
            ),
        ),
        (
            "wrong-mask",
            stream(
                vec![
                    frame(TEXT, FIN, b"fine"),
                    FrameSpec {
                        wrong_mask: 1,
                        ..frame(TEXT, FIN, b"masked the wrong way")
                    },
                ],
                &[],
            ),
        ),
        (
            "declared-lengths",
            stream(
                vec![
                    FrameSpec {
                        len_form: 7,
                        declared: 3,
                        ..frame(BINARY, FIN, b"abc")
                    },
                    FrameSpec {
                        len_form: 7,
                        declared: 1 << 63,
                        ..frame(BINARY, FIN, b"top bit set")
                    },
                ],
                &[],
            ),
        ),
        (
            "deflate-context-takeover",
            Input {
                deflate: deflate(7, false, 6),
                ..stream(
                    vec![
                        compressed(TEXT, b"Hello Hello Hello Hello"),
                        compressed(TEXT, b"Hello Hello Hello Hello"),
                        compressed(BINARY, &ramp[..64]),
                        frame(TEXT, FIN, b"uncompressed"),
                    ],
                    &[5, 3],
                )
            },
        ),
        (
            "deflate-no-context-takeover-window-8",
            Input {
                deflate: deflate(0, true, 1),
                ..stream(
                    vec![
                        compressed(TEXT, b"abcabcabcabcabcabc"),
                        compressed(TEXT, b""),
                        compressed(BINARY, b"abcabcabcabcabcabc"),
                    ],
                    &[],
                )
            },
        ),
        (
            "deflate-fragmented",
            Input {
                deflate: deflate(7, false, 6),
                ..stream(
                    vec![
                        frame(TEXT, RSV1_MORE, z1),
                        frame(PING, FIN, b"between"),
                        frame(CONTINUATION, FIN, z2),
                        compressed(TEXT, b"next"),
                    ],
                    &[2, 11],
                )
            },
        ),
        (
            "rsv1-without-deflate",
            stream(vec![frame(TEXT, FIN_RSV1, b"not compressed")], &[]),
        ),
        (
            "small-limits",
            Input {
                limits: Some((16, 32, 2)),
                ..stream(
                    vec![
                        frame(TEXT, MORE, b"0123456789"),
                        frame(CONTINUATION, MORE, b"0123456789"),
                        frame(CONTINUATION, FIN, b"0123456789"),
                        frame(BINARY, FIN, b"0123456789abcdefg"),
                    ],
                    &[],
                )
            },
        ),
        (
            "trailing-partial-frame",
            Input {
                trailing: vec![0x81, 0x85, 0x01, 0x02],
                ..stream(vec![frame(TEXT, FIN, b"ok")], &[1, 1])
            },
        ),
    ]
}
