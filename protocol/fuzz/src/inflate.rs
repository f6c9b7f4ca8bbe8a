//! `deflate::Decompressor` on arbitrary bytes, and `Compressor` → `Decompressor` round trips.
//!
//! Part 1, arbitrary compressed messages (split into arbitrary pieces) under an arbitrary cap:
//! - output never grows past the cap: after every call a message has at most `max` bytes,
//!   and a failing call takes back its own output (what earlier calls gave stays);
//! - the allocation stays bounded too (capacity within a constant factor of the cap);
//! - compared with a reference inflater (flate2 raw inflate with a 32 KiB window, the
//!   `00 00 ff ff` tail appended, same context-takeover rules, no cap): if the reference
//!   inflates the message to at most `max` bytes ours gives the same bytes; if it gives more,
//!   ours fails with `MessageTooLarge`; if the data is corrupt within the first `max` bytes of
//!   output, ours fails with `InvalidDeflate`.
//!
//! Part 2, round trip: arbitrary messages through a `Compressor` (arbitrary level, window,
//! context takeover) and a `Decompressor` fed in arbitrary pieces, with the cap set to the
//! message's exact length, come back equal.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use edge_ws_protocol::deflate::{Compressor, Decompressor};
use edge_ws_protocol::ProtocolError;
use flate2::{Decompress, FlushDecompress, Status};

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Largest cap tried; bombs beyond it are cut by the reference too.
const MAX_CAP: usize = 1 << 20;

#[derive(Arbitrary, Debug)]
struct Message {
    data: Vec<u8>,
    splits: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    max: u32,
    no_context_takeover: bool,
    raw: Vec<Message>,
    level: u8,
    window_bits: u8,
    round_trip: Vec<Message>,
}

fn pieces<'a>(data: &'a [u8], splits: &[u16]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &s in splits {
        let n = usize::from(s) % (rest.len() + 1);
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out.push(rest);
    out
}

#[derive(Debug, PartialEq)]
enum Ref {
    Ok(Vec<u8>),
    /// More than `max` bytes of output.
    TooLarge,
    /// Corrupt data within the first `max + 1` bytes of output.
    Corrupt,
}

/// The reference: plain flate2 inflate of `data ++ 00 00 ff ff`, stopping at `max + 1` bytes.
fn reference(d: &mut Decompress, data: &[u8], max: usize, nct: bool) -> Ref {
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    // Room for one byte past the cap, not zero-filled (decompress_vec writes into capacity).
    let mut out = Vec::with_capacity(max + 1);
    let mut pos = 0;
    loop {
        let i0 = d.total_in();
        let r = d.decompress_vec(&input[pos..], &mut out, FlushDecompress::None);
        pos += (d.total_in() - i0) as usize;
        match r {
            // In stream order: output past the cap counts before corruption found after it.
            _ if out.len() > max => return Ref::TooLarge,
            Err(_) => return Ref::Corrupt,
            Ok(Status::StreamEnd) => {
                d.reset(false);
                return Ref::Ok(out);
            }
            Ok(_) if pos == input.len() => {
                if nct {
                    d.reset(false);
                }
                return Ref::Ok(out);
            }
            // Input left but no progress: only possible with the output full, handled above.
            Ok(Status::BufError) => panic!("reference stalled at {pos}/{}", input.len()),
            Ok(_) => {}
        }
    }
}

fn raw_messages(input: &Input) {
    let max = input.max as usize % (MAX_CAP + 1);
    let nct = input.no_context_takeover;
    let mut ours = Decompressor::new(15, nct);
    let mut theirs = Decompress::new_with_window_bits(false, 15);
    for (i, msg) in input.raw.iter().enumerate() {
        let expect = reference(&mut theirs, &msg.data, max, nct);
        let mut out = BytesMut::new();
        let mut result = Ok(());
        for piece in pieces(&msg.data, &msg.splits) {
            let before = out.len();
            result = ours.decompress(piece, &mut out, max);
            assert!(
                out.len() <= max,
                "message {i}: {} bytes out, cap {max}",
                out.len()
            );
            if result.is_err() {
                assert_eq!(out.len(), before, "failing call kept its output");
                break;
            }
        }
        if result.is_ok() {
            let before = out.len();
            result = ours.finish_message(&mut out, max);
            assert!(
                out.len() <= max,
                "message {i}: {} bytes out, cap {max}",
                out.len()
            );
            if result.is_err() {
                assert_eq!(out.len(), before, "failing finish kept its output");
            }
        }
        assert!(
            out.capacity() <= 2 * (max + 1) + (1 << 19) + 4096,
            "capacity {} for cap {max}",
            out.capacity()
        );
        match (&expect, &result) {
            (Ref::Ok(v), Ok(())) => assert_eq!(&out[..], &v[..], "message {i}: output differs"),
            (Ref::TooLarge, Err(ProtocolError::MessageTooLarge)) => return,
            (Ref::Corrupt, Err(ProtocolError::InvalidDeflate)) => return,
            _ => panic!("message {i}: reference {expect:?}, ours {result:?}"),
        }
    }
}

fn round_trip(input: &Input) {
    let nct = input.no_context_takeover;
    let bits = 8 + input.window_bits % 8;
    let mut c = Compressor::new(u32::from(input.level % 10), bits, nct);
    let mut d = Decompressor::new(bits, nct);
    for (i, msg) in input.round_trip.iter().enumerate() {
        let mut z = BytesMut::new();
        c.compress(&msg.data, &mut z);
        let mut out = BytesMut::new();
        let max = msg.data.len();
        for piece in pieces(&z, &msg.splits) {
            d.decompress(piece, &mut out, max)
                .unwrap_or_else(|e| panic!("message {i}: {e:?}"));
        }
        d.finish_message(&mut out, max)
            .unwrap_or_else(|e| panic!("message {i}: finish {e:?}"));
        assert_eq!(
            &out[..],
            &msg.data[..],
            "message {i} (level {}, bits {bits})",
            input.level % 10
        );
    }
}

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
    raw_messages(&input);
    round_trip(&input);
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

crate::encode_struct!(Message { data ; splits });
crate::encode_struct!(Input { max, no_context_takeover, raw, level, window_bits ; round_trip });

fn msg(data: &[u8], splits: &[u16]) -> Message {
    Message {
        data: data.to_vec(),
        splits: splits.to_vec(),
    }
}

/// `messages` through one `Compressor` (level 6, 15-bit window), as RFC 7692 frames carry
/// them (no `00 00 ff ff`).
fn deflated(no_context_takeover: bool, messages: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut c = Compressor::new(6, 15, no_context_takeover);
    messages
        .iter()
        .map(|m| {
            let mut z = BytesMut::new();
            c.compress(m, &mut z);
            z.to_vec()
        })
        .collect()
}

/// A complete raw deflate stream (last block has BFINAL set), as some peers send.
fn final_block(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Finish)
        .unwrap();
    out
}

fn raw_input(max: u32, no_context_takeover: bool, raw: Vec<Message>) -> Input {
    Input {
        max,
        no_context_takeover,
        raw,
        level: 0,
        window_bits: 7,
        round_trip: Vec::new(),
    }
}

fn round_trip_input(level: u8, window_bits: u8, nct: bool, messages: &[&[u8]]) -> Input {
    Input {
        max: 0,
        no_context_takeover: nct,
        raw: Vec::new(),
        level,
        window_bits,
        round_trip: messages.iter().map(|m| msg(m, &[7, 1])).collect(),
    }
}

/// Valid, over-the-cap and corrupt compressed messages; round trips at several levels and
/// windows.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let hello: &[u8] = b"Hello, Hello, Hello, Hello!";
    let ramp: Vec<u8> = (0..=255u8).collect();
    let text = b"the quick brown fox jumps over the lazy dog; ".repeat(8);
    let takeover = deflated(false, &[hello, hello, b"Hello!"]);
    let nct = deflated(true, &[hello, hello]);
    let zeros = deflated(false, &[&[0u8; 65_536]]);
    let sixty = b"abcdef".repeat(10);
    let capped = deflated(false, &[&sixty, &[&sixty[..], b"g"].concat()]);
    let mut corrupt_tail = deflated(false, &[hello]).remove(0);
    corrupt_tail.push(0xff);
    vec![
        (
            "raw-hello-split",
            raw_input(1024, false, vec![msg(&deflated(false, &[hello])[0], &[3])]),
        ),
        (
            "raw-context-takeover",
            raw_input(1024, false, takeover.iter().map(|z| msg(z, &[1])).collect()),
        ),
        (
            "raw-no-context-takeover",
            raw_input(1024, true, nct.iter().map(|z| msg(z, &[])).collect()),
        ),
        (
            "raw-empty-and-stored-block",
            raw_input(
                100,
                false,
                vec![
                    msg(&[], &[]),
                    msg(&[0x00], &[]),
                    // A non-final stored block holding "hello".
                    msg(
                        &[0x00, 0x05, 0x00, 0xfa, 0xff, b'h', b'e', b'l', b'l', b'o'],
                        &[4],
                    ),
                ],
            ),
        ),
        (
            "raw-bomb-over-cap",
            raw_input(1000, false, vec![msg(&zeros[0], &[10])]),
        ),
        (
            "raw-exact-cap-then-one-over",
            raw_input(60, false, capped.iter().map(|z| msg(z, &[])).collect()),
        ),
        (
            "raw-corrupt",
            raw_input(1024, false, vec![msg(&[0xff, 0xff, 0xff], &[])]),
        ),
        (
            "raw-corrupt-after-output",
            raw_input(1024, false, vec![msg(&corrupt_tail, &[2])]),
        ),
        (
            "raw-final-blocks",
            raw_input(
                4096,
                false,
                vec![
                    msg(&final_block(&text), &[20]),
                    msg(&final_block(hello), &[]),
                ],
            ),
        ),
        (
            "raw-cap-zero",
            raw_input(
                0,
                false,
                vec![msg(&[0x00], &[]), msg(&deflated(false, &[b"a"])[0], &[])],
            ),
        ),
        (
            "round-trip-level-9-window-15",
            round_trip_input(9, 7, false, &[hello, &ramp, b"", &text, hello]),
        ),
        (
            "round-trip-level-1-window-8-nct",
            round_trip_input(1, 0, true, &[&text, &text]),
        ),
        (
            "round-trip-level-0-window-10",
            round_trip_input(0, 2, false, &[&ramp, &text]),
        ),
        (
            "round-trip-window-9",
            round_trip_input(6, 1, false, &[&text, b"x", &text]),
        ),
    ]
}
