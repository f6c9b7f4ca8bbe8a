//! UTF-16 lengths and offsets of UTF-8 strings.
//!
//! Browsers (and so ot.js, CodeMirror, Monaco, ProseMirror, …) measure text in UTF-16 code
//! units: `"😀".length === 2` in JavaScript. This crate keeps documents as Rust `String`s and
//! counts in the same units, so that an operation serialized by a browser means the same thing
//! here. The helpers below convert between the two worlds without allocating.

use crate::OtError;

/// The number of UTF-16 code units in `s`: what JavaScript's `s.length` would say.
///
/// Characters outside the Basic Multilingual Plane (four bytes in UTF-8, most emoji) count 2,
/// every other character counts 1.
///
/// ```
/// use edge_ws_ot::utf16_len;
/// assert_eq!(utf16_len("abc"), 3);
/// assert_eq!(utf16_len("é"), 1);
/// assert_eq!(utf16_len("e\u{301}"), 2); // e + combining acute accent
/// assert_eq!(utf16_len("😀"), 2);
/// assert_eq!(utf16_len("👩‍👩‍👧"), 8); // three emoji joined by two ZWJs
/// ```
#[must_use]
pub fn utf16_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if bytes.is_ascii() {
        return bytes.len();
    }
    let mut n = 0;
    let mut blocks = bytes.chunks_exact(BIG);
    for block in blocks.by_ref() {
        n += block_units(block);
    }
    n + blocks
        .remainder()
        .iter()
        .map(|&b| usize::from(unit_weight(b)))
        .sum::<usize>()
}

/// Bytes per block in [`utf16_len`] (at most 255, so that the counts fit a `u8`).
const BIG: usize = 128;

/// UTF-16 units contributed by a byte of UTF-8: one per byte that starts a character
/// (everything but `0b10xx_xxxx`), plus one more for a four-byte lead (`0xF0..=0xF4`), whose
/// character becomes a surrogate pair.
#[inline(always)]
fn unit_weight(b: u8) -> u8 {
    u8::from((b as i8) >= -0x40) + u8::from(b >= 0xF0)
}

/// Units whose lead byte lies in `block` (at most `block.len() + 1`; `block.len()` ≤ 255).
///
/// Two separate counting loops over `u8` accumulators: this is the shape LLVM vectorizes
/// (a single loop adding both predicates stays scalar, about twenty times slower).
#[inline(always)]
fn block_units(block: &[u8]) -> usize {
    let mut starts = 0u8;
    for &b in block {
        starts = starts.wrapping_add(u8::from((b as i8) >= -0x40));
    }
    let mut pairs = 0u8;
    for &b in block {
        pairs = pairs.wrapping_add(u8::from(b >= 0xF0));
    }
    usize::from(starts) + usize::from(pairs)
}

/// The byte index in `s` of the UTF-16 offset `pos`.
///
/// # Errors
///
/// [`OtError::PositionOutOfBounds`] if `pos > utf16_len(s)`, [`OtError::SplitsSurrogatePair`]
/// if `pos` falls between the two halves of a surrogate pair.
///
/// ```
/// use edge_ws_ot::{utf16_to_byte, OtError};
/// assert_eq!(utf16_to_byte("😀x", 2), Ok(4));
/// assert_eq!(utf16_to_byte("😀x", 3), Ok(5));
/// assert_eq!(
///     utf16_to_byte("😀x", 1),
///     Err(OtError::SplitsSurrogatePair { position: 1 })
/// );
/// ```
pub fn utf16_to_byte(s: &str, pos: usize) -> Result<usize, OtError> {
    match advance(s.as_bytes(), 0, pos) {
        Ok(byte) => Ok(byte),
        Err(Stop::End { .. }) => Err(OtError::PositionOutOfBounds {
            position: pos,
            len: utf16_len(s),
        }),
        Err(Stop::Split { before }) => Err(OtError::SplitsSurrogatePair {
            position: before + 1,
        }),
    }
}

/// The UTF-16 offset of byte index `byte` in `s`, or `None` if `byte` is not on a character
/// boundary (or past the end).
///
/// ```
/// use edge_ws_ot::byte_to_utf16;
/// assert_eq!(byte_to_utf16("😀x", 4), Some(2));
/// assert_eq!(byte_to_utf16("😀x", 5), Some(3));
/// assert_eq!(byte_to_utf16("😀x", 1), None);
/// ```
#[must_use]
pub fn byte_to_utf16(s: &str, byte: usize) -> Option<usize> {
    s.get(..byte).map(utf16_len)
}

/// Why [`advance`] stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The string ended with `left` units still to go.
    End { left: usize },
    /// The target falls inside a surrogate pair; `before` units were passed before the pair.
    Split { before: usize },
}

/// From byte index `start` (a character boundary) of `bytes` (valid UTF-8), move `units` UTF-16
/// code units forward and return the byte index reached.
#[inline]
pub(crate) fn advance(bytes: &[u8], start: usize, units: usize) -> Result<usize, Stop> {
    // Fast path: all ASCII, one byte per unit.
    if let Some(end) = start.checked_add(units) {
        if let Some(run) = bytes.get(start..end) {
            if run.is_ascii() {
                return Ok(end);
            }
        }
    }
    advance_slow(bytes, start, units)
}

#[cold]
fn advance_slow(bytes: &[u8], start: usize, units: usize) -> Result<usize, Stop> {
    let mut p = start;
    let mut left = units;
    // Whole blocks while they cannot reach the target: a block of `N` bytes holds at most
    // `N + 1` units (its last byte may be a four-byte lead). A block may end inside a
    // character; the byte loop below then skips the rest of it (continuation bytes count 0).
    while left > 64 + 1 {
        let Some(block) = bytes.get(p..).and_then(<[u8]>::first_chunk::<64>) else {
            break;
        };
        left -= block_units(block);
        p += 64;
    }
    while left > 16 + 1 {
        let Some(block) = bytes.get(p..).and_then(<[u8]>::first_chunk::<16>) else {
            break;
        };
        left -= block_units(block);
        p += 16;
    }
    while left > 0 {
        let Some(&lead) = bytes.get(p) else {
            return Err(Stop::End { left });
        };
        let (width, width16) = match lead {
            0x00..=0x7F => (1, 1),
            // The tail of a character whose lead byte ended the last block.
            0x80..=0xBF => (1, 0),
            0xC0..=0xDF => (2, 1),
            0xE0..=0xEF => (3, 1),
            _ => (4, 2),
        };
        if width16 > left {
            return Err(Stop::Split {
                before: units - left,
            });
        }
        p += width;
        left -= width16;
    }
    Ok(p)
}
