//! Per-message compression and decompression (RFC 7692 §7.2) over flate2's raw deflate.

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::params::{MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use crate::ProtocolError;

/// The empty stored block a sync flush ends with; stripped by the sender, re-appended by the
/// receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compressed form of an empty message: an empty stored block without its last 4 bytes
/// (RFC 7692 §7.2.3.6). Valid with or without context takeover.
const EMPTY_MESSAGE: u8 = 0x00;

/// Smallest output room handed to deflate/inflate per round (zlib wants more than 6 bytes for
/// a sync flush so that it does not repeat flush markers).
const MIN_ROUND: usize = 512;
/// Largest output room handed to inflate per round: bounds the zero-filled but unused tail.
const MAX_INFLATE_ROUND: usize = 256 << 10;
/// Past this much output in one buffer, inflate grows the buffer once to all the cap still
/// allows instead of doubling it: a doubling copy would hold two large buffers at once
/// (1.5 times the cap), and Vec's doubling overshoots the cap by up to 2 times.
const GROW_TO_CAP_AT: usize = 1 << 20;

/// Compresses our outgoing messages for one connection (either role).
///
/// Construct with our direction's parameters: a server uses `server_max_window_bits` and
/// `server_no_context_takeover` from the agreed [`DeflateParams`](super::DeflateParams), a
/// client the `client_*` pair.
///
/// Without context takeover the deflate state (a few hundred KiB with a 15-bit window) exists
/// only while a message is being compressed, so an idle connection holds none of it; call
/// [`keep_state`](Self::keep_state) for a compressor that compresses back to back (one shared
/// by many connections), to reset it in place instead.
#[derive(Debug)]
pub struct Compressor {
    /// `None` between messages when the state is released.
    inner: Option<Compress>,
    level: u32,
    window_bits: u8,
    no_context_takeover: bool,
    keep: bool,
}

impl Compressor {
    /// A compressor at deflate `level` (`0..=9`, higher values count as 9) using at most a
    /// `2^window_bits`-byte window, resetting its context after every message when
    /// `no_context_takeover`.
    ///
    /// `window_bits` is clamped to `8..=15`. With 8, which zlib cannot produce for raw deflate,
    /// the compressor writes stored (uncompressed) blocks only: they contain no back-references
    /// and so respect any window. Messages then grow by a few bytes instead of shrinking.
    pub fn new(level: u32, window_bits: u8, no_context_takeover: bool) -> Self {
        let window_bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let (level, window_bits) = if window_bits == MIN_WINDOW_BITS {
            (0, MIN_WINDOW_BITS + 1)
        } else {
            (level.min(9), window_bits)
        };
        Compressor {
            inner: None,
            level,
            window_bits,
            no_context_takeover,
            keep: false,
        }
    }

    /// Keep the deflate state between messages even without context takeover (reset in
    /// place): for a compressor used for message after message, where allocating the state
    /// per message would cost more than holding it.
    pub fn keep_state(&mut self) {
        self.keep = true;
    }

    /// Whether deflate state is allocated now.
    pub fn holds_state(&self) -> bool {
        self.inner.is_some()
    }

    /// Compresses one whole message payload and appends it to `out`, without the trailing
    /// `00 00 ff ff` of the sync flush (RFC 7692 §7.2.1). Resets the context afterwards if
    /// `no_context_takeover`.
    ///
    /// Deflates straight into `out`'s buffer: no per-message allocation beyond growing `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        if payload.is_empty() {
            // zlib refuses a second flush without new input (Z_BUF_ERROR, no output), so the
            // empty message is written by hand.
            out.extend_from_slice(&[EMPTY_MESSAGE]);
            return;
        }
        let start = out.len();
        let (level, bits) = (self.level, self.window_bits);
        let inner = self.inner.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        });
        let mut input = payload;
        // Enough for the output in one round unless the data is incompressible with tiny
        // blocks; the loop grows it otherwise.
        let mut room = payload.len() + payload.len() / 64 + 64;
        loop {
            let len = out.len();
            out.resize(len + room, 0);
            let (in0, out0) = (inner.total_in(), inner.total_out());
            let status = inner
                .compress(input, &mut out[len..], FlushCompress::Sync)
                // Deflate only fails on an inconsistent stream state, which safe use of
                // flate2 cannot produce.
                .expect("raw deflate with a sync flush cannot fail");
            let consumed = (inner.total_in() - in0) as usize;
            let written = (inner.total_out() - out0) as usize;
            out.truncate(len + written);
            input = &input[consumed..];
            // The flush is complete once deflate returns with output room to spare.
            if (input.is_empty() && written < room)
                || status == Status::BufError
                || (consumed == 0 && written == 0)
            {
                break;
            }
            room = room.max(MIN_ROUND * 8);
        }
        debug_assert!(
            out[start..].ends_with(&TAIL),
            "sync flush must end with 00 00 ff ff"
        );
        out.truncate(out.len() - TAIL.len());
        if self.no_context_takeover {
            self.reset();
        }
    }

    /// Drops the compression context, as if a fresh compressor were created (and its memory,
    /// unless [`keep_state`](Self::keep_state)).
    pub fn reset(&mut self) {
        if self.keep {
            if let Some(inner) = &mut self.inner {
                inner.reset();
            }
        } else {
            self.inner = None;
        }
    }
}

/// Inflates the peer's messages for one connection (either role).
///
/// Construct with the peer's direction's parameters: a server uses `client_max_window_bits`
/// and `client_no_context_takeover`, a client the `server_*` pair.
///
/// Inflation always runs with a 32 KiB (15-bit) window, whatever was agreed: a larger window
/// inflates any stream made with a smaller one; zlib-rs allocates the full 32 KiB window for
/// any window size anyway, so a smaller one would save no memory; flate2 can reset a 15-bit
/// inflater in place but re-creates (re-allocates) any other; and peers whose zlib silently
/// turns a negotiated 8 into 9 still inflate.
///
/// Without context takeover the inflate state (its 32 KiB window and tables) exists only while
/// a message is being inflated: an idle connection holds none of it.
#[derive(Debug)]
pub struct Decompressor {
    /// `None` between messages without context takeover (and before the first).
    inner: Option<Decompress>,
    no_context_takeover: bool,
    /// Inflated bytes of the current message so far.
    message_len: usize,
    /// The peer ended the deflate stream (a block with BFINAL set) in this message.
    stream_ended: bool,
}

impl Decompressor {
    /// An inflater for the peer's direction. `window_bits` is the agreed window of that
    /// direction; it is accepted for symmetry with [`Compressor::new`] but inflation always
    /// uses 15 (see the type's docs). `no_context_takeover`: reset after every message.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        let _ = window_bits;
        Decompressor {
            inner: None,
            no_context_takeover,
            message_len: 0,
            stream_ended: false,
        }
    }

    /// Inflates compressed bytes of the current message (call per fragment, split anywhere),
    /// appending the output to `out`.
    ///
    /// `max` caps the inflated size of the whole message (all calls plus
    /// [`finish_message`](Self::finish_message)). Inflation stops as soon as the message would
    /// exceed it: `out` never grows by more than `max + 1` bytes of output (plus its allocator's
    /// slack), and [`ProtocolError::MessageTooLarge`] is returned. Corrupt data gives
    /// [`ProtocolError::InvalidDeflate`]. On either error `out` is truncated back to its length
    /// on entry to this call (output of earlier calls for the message stays) and the
    /// decompressor is [`reset`](Self::reset).
    ///
    /// If the peer ends the deflate stream inside the message (a block with BFINAL set, RFC 7692
    /// §7.2.3.4), the rest of the message's bytes are ignored and the context is reset at the
    /// end of the message: a new stream cannot refer to the old one.
    pub fn decompress(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let entry = out.len();
        self.decompress_keeping(input, out, max).inspect_err(|_| {
            out.truncate(entry);
        })
    }

    /// [`decompress`](Self::decompress), except that on an error `out` keeps what was inflated
    /// before it (at most one byte past `max`): the decoder validates that text first, so that
    /// the error it reports is the first in stream order however the input was split.
    pub(crate) fn decompress_keeping(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), ProtocolError> {
        if self.stream_ended || input.is_empty() {
            return Ok(());
        }
        let mut input = input;
        let mut round = input
            .len()
            .saturating_mul(4)
            .clamp(MIN_ROUND, MAX_INFLATE_ROUND);
        let inner = self
            .inner
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        loop {
            // One byte more than allowed, to see whether the limit is crossed.
            let rest = max.saturating_sub(self.message_len).saturating_add(1);
            let room = round.min(rest);
            let len = out.len();
            reserve_output(out, room, rest);
            out.resize(len + room, 0);
            let (in0, out0) = (inner.total_in(), inner.total_out());
            let result = inner.decompress(input, &mut out[len..], FlushDecompress::None);
            let consumed = (inner.total_in() - in0) as usize;
            let written = (inner.total_out() - out0) as usize;
            out.truncate(len + written);
            input = &input[consumed..];
            self.message_len += written;
            // Output past the cap comes first in stream order: it was produced before inflate
            // met the corrupt bits.
            if self.message_len > max {
                return Err(self.fail(ProtocolError::MessageTooLarge));
            }
            let status = match result {
                Ok(status) => status,
                Err(_) => return Err(self.fail(ProtocolError::InvalidDeflate)),
            };
            if status == Status::StreamEnd {
                self.stream_ended = true;
                return Ok(());
            }
            // Output room left over means inflate stopped for want of input.
            if written < room {
                return Ok(());
            }
            round = (round * 2).min(MAX_INFLATE_ROUND);
        }
    }

    /// Ends the current message: inflates the `00 00 ff ff` tail (RFC 7692 §7.2.2) into `out`,
    /// then resets the context if `no_context_takeover` (or the peer ended its stream).
    /// Subject to `max` like [`decompress`](Self::decompress).
    pub fn finish_message(&mut self, out: &mut BytesMut, max: usize) -> Result<(), ProtocolError> {
        let entry = out.len();
        self.finish_message_keeping(out, max).inspect_err(|_| {
            out.truncate(entry);
        })
    }

    /// [`finish_message`](Self::finish_message), keeping on an error what was inflated before
    /// it (see [`decompress_keeping`](Self::decompress_keeping)).
    pub(crate) fn finish_message_keeping(
        &mut self,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), ProtocolError> {
        self.decompress_keeping(&TAIL, out, max)?;
        if self.no_context_takeover || self.stream_ended {
            self.reset();
        } else {
            self.message_len = 0;
        }
        Ok(())
    }

    /// Drops the context and the current message's state, as if a fresh decompressor were
    /// created. Errors from this type do it themselves; call it when abandoning a message for
    /// another reason.
    pub fn reset(&mut self) {
        if self.no_context_takeover {
            // Nothing to carry into the next message: free the state until it has one.
            self.inner = None;
        } else if let Some(inner) = &mut self.inner {
            inner.reset(false);
        }
        self.message_len = 0;
        self.stream_ended = false;
    }

    /// Whether inflate state is allocated now.
    pub fn holds_state(&self) -> bool {
        self.inner.is_some()
    }

    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        self.reset();
        err
    }
}

/// Makes room for `room` more bytes of inflated output in `out`, when at most `rest` more may
/// come. Small buffers grow as `BytesMut` grows them (doubling); a buffer past
/// [`GROW_TO_CAP_AT`] grows once to hold all `rest` bytes (allocated, not yet touched, so it
/// costs no memory until written), so a message never costs more than its cap plus the
/// buffer it had reached when the jump was made.
fn reserve_output(out: &mut BytesMut, room: usize, rest: usize) {
    let len = out.len();
    if out.capacity() - len >= room {
        return;
    }
    // Jump only when the cap is a sane multiple of what is there (an unbounded cap doubles).
    if len >= GROW_TO_CAP_AT && rest <= len.saturating_mul(64) {
        out.reserve(rest.max(room));
    } else {
        out.reserve(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = usize::MAX;

    fn compress(c: &mut Compressor, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        c.compress(payload, &mut out);
        out.to_vec()
    }

    fn inflate(d: &mut Decompressor, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut out = BytesMut::new();
        d.decompress(data, &mut out, MAX)?;
        d.finish_message(&mut out, MAX)?;
        Ok(out.to_vec())
    }

    #[test]
    fn without_context_takeover_no_state_is_held_between_messages() {
        let (mut c, mut d) = (Compressor::new(1, 15, true), Decompressor::new(15, true));
        assert!(
            !c.holds_state() && !d.holds_state(),
            "nothing before the first message"
        );
        for i in 0..5 {
            let msg = sample(i, 3000);
            let z = compress(&mut c, &msg);
            assert!(!c.holds_state(), "compressor released after message {i}");
            assert_eq!(inflate(&mut d, &z).unwrap(), msg);
            assert!(!d.holds_state(), "inflater released after message {i}");
        }
        // Mid-message the inflater holds its state; a corrupt message releases it too.
        let z = compress(&mut c, &sample(9, 3000));
        let mut out = BytesMut::new();
        d.decompress(&z[..z.len() / 2], &mut out, MAX).unwrap();
        assert!(d.holds_state());
        d.decompress(&z[z.len() / 2..], &mut out, MAX).unwrap();
        d.finish_message(&mut out, MAX).unwrap();
        assert_eq!(&out[..], &sample(9, 3000)[..]);
        assert!(!d.holds_state());
        // A reserved block type (BTYPE 11) is an error, and the state goes with it.
        assert!(inflate(&mut d, &[0x07, 0x00]).is_err());
        assert!(!d.holds_state());
        // With context takeover both keep their window, and messages still round-trip.
        let (mut c, mut d) = (Compressor::new(1, 15, false), Decompressor::new(15, false));
        for i in 0..5 {
            let msg = sample(i, 3000);
            let z = compress(&mut c, &msg);
            assert_eq!(inflate(&mut d, &z).unwrap(), msg);
            assert!(c.holds_state() && d.holds_state());
        }
        // A shared compressor keeps its state without context takeover.
        let mut shared = Compressor::new(1, 15, true);
        shared.keep_state();
        let z = compress(&mut shared, &sample(1, 500));
        assert!(shared.holds_state());
        assert_eq!(
            inflate(&mut Decompressor::new(15, true), &z).unwrap(),
            sample(1, 500)
        );
    }

    /// Varied, somewhat compressible text.
    fn sample(seed: u32, len: usize) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"{\"id\":",
            b"\"price\":",
            b"1234.5",
            b"\"symbol\":\"EDGE\"",
            b"}, ",
            b"[true,false]",
            b"null",
            b" websocket ",
        ];
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut v = Vec::with_capacity(len + 16);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.extend_from_slice(words[(x % 8) as usize]);
            if x.is_multiple_of(5) {
                v.push((x >> 8) as u8);
            }
        }
        v.truncate(len);
        v
    }

    /// Pseudo-random bytes (incompressible).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    #[test]
    fn rfc7692_hello_examples() {
        // §7.2.3.1: a message compressed on its own.
        let mut d = Decompressor::new(15, false);
        assert_eq!(inflate(&mut d, &HELLO).unwrap(), b"Hello");
        // §7.2.3.2: the same message again, sharing the window of the first.
        assert_eq!(
            inflate(&mut d, &[0xf2, 0x00, 0x11, 0x00, 0x00]).unwrap(),
            b"Hello"
        );
        // §7.2.3.3: stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(
            inflate(&mut Decompressor::new(15, true), &stored).unwrap(),
            b"Hello"
        );
        // §7.2.3.4: a block with BFINAL set; the appended tail lies past the stream's end, and
        // the next message starts a new stream.
        let mut d = Decompressor::new(15, false);
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut d, &final_block).unwrap(), b"Hello");
        assert_eq!(
            inflate(&mut d, &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]).unwrap(),
            b"Hello"
        );
        assert_eq!(inflate(&mut d, &HELLO).unwrap(), b"Hello");
        // §7.2.3.6: the empty message.
        assert_eq!(inflate(&mut d, &[0x00]).unwrap(), b"");
    }

    #[test]
    fn compresses_hello_like_the_rfc() {
        let mut c = Compressor::new(1, 15, false);
        let first = compress(&mut c, b"Hello");
        let second = compress(&mut c, b"Hello");
        assert!(second.len() < first.len(), "{first:02x?} vs {second:02x?}");
        let mut d = Decompressor::new(15, false);
        assert_eq!(inflate(&mut d, &first).unwrap(), b"Hello");
        assert_eq!(inflate(&mut d, &second).unwrap(), b"Hello");

        // Without context takeover every message compresses alike and stands alone.
        let mut c = Compressor::new(1, 15, true);
        let a = compress(&mut c, b"Hello");
        let b = compress(&mut c, b"Hello");
        assert_eq!(a, b);
        assert_eq!(
            inflate(&mut Decompressor::new(15, true), &b).unwrap(),
            b"Hello"
        );
        // At the default zlib level the output is the RFC's byte for byte.
        let mut c = Compressor::new(6, 15, true);
        assert_eq!(compress(&mut c, b"Hello"), HELLO);
    }

    #[test]
    fn round_trip_with_context_takeover() {
        for level in [0, 1, 6, 9] {
            let mut c = Compressor::new(level, 15, false);
            let mut d = Decompressor::new(15, false);
            let mut total_in = 0;
            let mut total_out = 0;
            for i in 0..200 {
                let msg = sample(i % 7, (i as usize * 37) % 3000);
                let z = compress(&mut c, &msg);
                total_in += msg.len();
                total_out += z.len();
                assert_eq!(
                    inflate(&mut d, &z).unwrap(),
                    msg,
                    "level {level} message {i}"
                );
            }
            if level > 0 {
                assert!(
                    total_out * 4 < total_in,
                    "level {level}: {total_out} of {total_in}"
                );
            }
        }
    }

    #[test]
    fn round_trip_without_context_takeover() {
        let mut c = Compressor::new(1, 15, true);
        let mut shared = Decompressor::new(15, true);
        for i in 0..50 {
            let msg = sample(3, 500 + i * 13);
            let z = compress(&mut c, &msg);
            // Each message stands alone: a brand-new inflater decodes it.
            assert_eq!(inflate(&mut Decompressor::new(15, false), &z).unwrap(), msg);
            assert_eq!(inflate(&mut shared, &z).unwrap(), msg);
        }
    }

    #[test]
    fn empty_and_incompressible_messages() {
        let mut c = Compressor::new(1, 15, false);
        let mut d = Decompressor::new(15, false);
        for msg in [
            Vec::new(),
            b"x".to_vec(),
            Vec::new(),
            noise(7, 200_000),
            Vec::new(),
            sample(1, 100_000),
        ] {
            let z = compress(&mut c, &msg);
            if msg.is_empty() {
                assert_eq!(z, [0x00]);
            }
            assert_eq!(inflate(&mut d, &z).unwrap(), msg);
        }
    }

    #[test]
    fn compress_appends_to_existing_output() {
        let mut c = Compressor::new(1, 15, false);
        let mut out = BytesMut::from(&b"head"[..]);
        let _ = out.split_to(2); // a shared, offset buffer
        c.compress(b"Hello Hello Hello", &mut out);
        assert_eq!(&out[..2], b"ad");
        let mut d = Decompressor::new(15, false);
        let mut plain = BytesMut::from(&b"xy"[..]);
        d.decompress(&out[2..], &mut plain, 100).unwrap();
        d.finish_message(&mut plain, 100).unwrap();
        assert_eq!(&plain[..], b"xyHello Hello Hello");
    }

    #[test]
    fn decompress_at_every_split_point() {
        let mut c = Compressor::new(6, 15, false);
        let first = sample(11, 2000);
        let msg = sample(5, 3000);
        let z1 = compress(&mut c, &first);
        let z = compress(&mut c, &msg);
        // Two pieces, split anywhere.
        for cut in 0..=z.len() {
            let mut d = Decompressor::new(15, false);
            assert_eq!(inflate(&mut d, &z1).unwrap(), first);
            let mut out = BytesMut::new();
            d.decompress(&z[..cut], &mut out, MAX).unwrap();
            d.decompress(&z[cut..], &mut out, MAX).unwrap();
            d.finish_message(&mut out, MAX).unwrap();
            assert_eq!(out, msg, "cut at {cut}");
        }
        // One byte at a time.
        let mut d = Decompressor::new(15, false);
        assert_eq!(inflate(&mut d, &z1).unwrap(), first);
        let mut out = BytesMut::new();
        for b in z.chunks(1) {
            d.decompress(b, &mut out, MAX).unwrap();
        }
        d.finish_message(&mut out, MAX).unwrap();
        assert_eq!(out, msg);
    }

    #[test]
    fn a_large_limit_is_never_overshot_by_buffer_growth() {
        // 64 MiB of zeros under a 16 MiB cap: the buffer holds at most the cap plus one round,
        // not the 32 MiB a doubling Vec would reach.
        let zeros = vec![0u8; 64 << 20];
        let z = compress(&mut Compressor::new(1, 15, false), &zeros);
        const LIMIT: usize = 16 << 20;
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        for piece in z.chunks(4096) {
            if d.decompress(piece, &mut out, LIMIT).is_err() {
                break;
            }
            assert!(out.len() <= LIMIT);
            assert!(
                out.capacity() <= LIMIT + GROW_TO_CAP_AT + MAX_INFLATE_ROUND,
                "capacity {} for a {LIMIT}-byte cap",
                out.capacity()
            );
        }
        // A message within the cap comes out whole with the same bound.
        let mut d = Decompressor::new(15, false);
        let z = compress(&mut Compressor::new(1, 15, false), &zeros[..LIMIT]);
        let mut out = BytesMut::new();
        for piece in z.chunks(4096) {
            d.decompress(piece, &mut out, LIMIT).unwrap();
        }
        d.finish_message(&mut out, LIMIT).unwrap();
        assert_eq!(out.len(), LIMIT);
        assert!(out.capacity() <= LIMIT + GROW_TO_CAP_AT + MAX_INFLATE_ROUND);
    }

    #[test]
    fn inflate_bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 10_000_000];
        let z = compress(&mut Compressor::new(9, 15, false), &zeros);
        assert!(z.len() < 20_000, "{}", z.len());
        const LIMIT: usize = 1 << 20;

        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        let err = d.decompress(&z, &mut out, LIMIT).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge);
        assert_eq!(err.close_code(), crate::CloseCode::TOO_BIG);
        assert!(out.is_empty());
        // Never inflated (nor allocated) much past the limit.
        assert!(
            out.capacity() <= 2 * LIMIT + MAX_INFLATE_ROUND,
            "{}",
            out.capacity()
        );

        // Fed in fragments, the limit holds across calls.
        let mut out = BytesMut::from(&b"keep"[..]);
        let mut result = Ok(());
        for piece in z.chunks(100) {
            result = d.decompress(piece, &mut out, LIMIT);
            assert!(out.len() <= 4 + LIMIT);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ProtocolError::MessageTooLarge));
        // The failing call took back its own output; earlier calls' output stays.
        assert!(
            out.starts_with(b"keep") && out.len() <= 4 + LIMIT,
            "{}",
            out.len()
        );
        assert!(out[4..].iter().all(|&b| b == 0));

        // The decompressor was reset: it works again afterwards.
        let ok = compress(&mut Compressor::new(1, 15, false), b"fine");
        assert_eq!(inflate(&mut d, &ok).unwrap(), b"fine");
    }

    #[test]
    fn limit_is_exact() {
        let msg = sample(2, 5000);
        let z = compress(&mut Compressor::new(1, 15, true), &msg);
        let mut d = Decompressor::new(15, true);
        let mut out = BytesMut::new();
        d.decompress(&z, &mut out, msg.len()).unwrap();
        d.finish_message(&mut out, msg.len()).unwrap();
        assert_eq!(out, msg);

        let mut out = BytesMut::new();
        let r = d
            .decompress(&z, &mut out, msg.len() - 1)
            .and_then(|()| d.finish_message(&mut out, msg.len() - 1));
        assert_eq!(r, Err(ProtocolError::MessageTooLarge));
        assert!(out.is_empty());
    }

    #[test]
    fn corrupt_input_is_invalid_deflate() {
        let mut d = Decompressor::new(15, false);
        let mut out = BytesMut::new();
        // BTYPE=11 is reserved.
        assert_eq!(
            d.decompress(&[0xff, 0xff, 0xff], &mut out, MAX),
            Err(ProtocolError::InvalidDeflate)
        );
        // A stored block whose NLEN is not the complement of LEN.
        assert_eq!(
            inflate(&mut d, &[0x00, 0x05, 0x00, 0x00, 0x00, b'x']),
            Err(ProtocolError::InvalidDeflate)
        );
        // A back-reference before the start of the stream.
        assert_eq!(
            inflate(
                &mut Decompressor::new(15, true),
                &[0xf2, 0x00, 0x11, 0x00, 0x00]
            ),
            Err(ProtocolError::InvalidDeflate)
        );
        // Real data whose first block type is made reserved (BTYPE=11).
        let z = compress(&mut Compressor::new(6, 15, true), &sample(9, 4000));
        let mut bad = z.clone();
        bad[0] |= 0x06;
        assert_eq!(
            inflate(&mut Decompressor::new(15, true), &bad),
            Err(ProtocolError::InvalidDeflate)
        );
        assert_eq!(out.len(), 0);
        // After an error the decompressor works again.
        assert_eq!(inflate(&mut d, &HELLO).unwrap(), b"Hello");
    }

    #[test]
    fn every_window_size_round_trips_and_respects_the_window() {
        // Matches at distances up to 4 KiB: a compressor that ignored its window would emit
        // references a strict small-window inflater rejects.
        let mut msg = Vec::new();
        for i in 0..6 {
            let block = noise(i % 3, 1 << (8 + i));
            msg.extend_from_slice(&block);
            msg.extend_from_slice(&block);
        }
        for bits in 9..=15u8 {
            for nct in [false, true] {
                let mut c = Compressor::new(1, bits, nct);
                let mut d = Decompressor::new(bits, nct);
                let mut strict = Decompress::new_with_window_bits(false, bits);
                for round in 0..3 {
                    let z = compress(&mut c, &msg);
                    assert_eq!(
                        inflate(&mut d, &z).unwrap(),
                        msg,
                        "bits {bits} round {round}"
                    );
                    // The peer might inflate with exactly the agreed window.
                    let mut input = z.clone();
                    input.extend_from_slice(&TAIL);
                    let mut plain = Vec::with_capacity(msg.len() + 64);
                    strict
                        .decompress_vec(&input, &mut plain, FlushDecompress::Sync)
                        .unwrap_or_else(|e| panic!("bits {bits}: {e}"));
                    assert_eq!(plain, msg, "bits {bits} nct {nct} round {round}");
                    if nct {
                        strict.reset(false);
                    }
                }
            }
        }
    }

    /// Walks a raw deflate stream made of stored blocks only; panics on any other block type.
    fn stored_blocks_payload(mut data: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !data.is_empty() {
            // Stored blocks end byte-aligned, so every header starts a byte.
            assert_eq!((data[0] >> 1) & 0b11, 0, "BTYPE must be 00 (stored)");
            if data.len() == 1 {
                break; // the stripped empty block of the sync flush
            }
            let len = u16::from_le_bytes([data[1], data[2]]) as usize;
            let nlen = u16::from_le_bytes([data[3], data[4]]);
            assert_eq!(!nlen as usize, len);
            plain.extend_from_slice(&data[5..5 + len]);
            data = &data[5 + len..];
        }
        plain
    }

    #[test]
    fn window_8_uses_stored_blocks_only() {
        for nct in [false, true] {
            let mut c = Compressor::new(9, 8, nct);
            let mut d = Decompressor::new(8, nct);
            for i in 0..4 {
                let msg = if i % 2 == 0 {
                    sample(i, 70_000)
                } else {
                    vec![b'a'; 1000]
                };
                let z = compress(&mut c, &msg);
                assert!(z.len() >= msg.len());
                assert_eq!(stored_blocks_payload(&z), msg);
                assert_eq!(inflate(&mut d, &z).unwrap(), msg);
            }
        }
    }
}
