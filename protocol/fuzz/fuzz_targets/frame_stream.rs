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
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use edge_ws_protocol::deflate::{Compressor, DeflateParams};
use edge_ws_protocol::mask::apply_mask_bytewise;
use edge_ws_protocol::{Decoder, DecoderConfig, Message, ProtocolError, Role};
use libfuzzer_sys::fuzz_target;

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
struct Input {
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
fn run<'a>(mut dec: Decoder, pieces: impl Iterator<Item = &'a [u8]>) -> Outcome {
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

fuzz_target!(|input: Input| {
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
        let whole = run(decoder(role, config, &input), core::iter::once(&bytes[..]));
        check_messages(&whole, &config);

        let pieces = split(&bytes, &input.splits);
        let split_run = run(decoder(role, config, &input), pieces.iter().copied());
        assert_eq!(
            split_run,
            whole,
            "{role:?}: split decode differs from whole (pieces {:?})",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );

        if bytes.len() <= 4096 {
            let bytewise = run(decoder(role, config, &input), bytes.chunks(1));
            assert_eq!(
                bytewise, whole,
                "{role:?}: byte-at-a-time differs from whole"
            );
        }
    }
});
