//! # edge-ws-ot
//!
//! Sans-IO operational transformation (OT) for collaborative plain-text editing, with the
//! semantics of [ot.js]'s `TextOperation` and `Selection` and its JSON wire form, so that a
//! Rust server can sit between browser clients running ot.js (or anything speaking its format).
//!
//! What it does:
//! - [`TextOperation`]: an edit as a sequence of [`Component`]s (retain / insert / delete),
//!   always kept in ot.js's normal form; [`apply`](TextOperation::apply),
//!   [`invert`](TextOperation::invert) (undo), [`compose`](TextOperation::compose) (two
//!   consecutive edits as one) and [`transform`](TextOperation::transform) (two concurrent
//!   edits made consistent, the first one winning ties), and ot.js's undo-grouping test
//!   [`should_be_composed_with`](TextOperation::should_be_composed_with).
//! - [`Selection`], [`Range`], [`transform_index`] and [`transform_cursor`]: carets and
//!   selections moved through operations.
//! - The wire form, via serde or [`TextOperation::to_json`] / [`TextOperation::from_json`].
//! - [`utf16_len`], [`utf16_to_byte`], [`byte_to_utf16`]: the unit conversions.
//!
//! What it refuses to do: it performs **no I/O** and keeps **no state** beyond the values you
//! hold. It has no sockets, no async runtime, no clock and no random number generator; it does
//! not track revisions, buffer unacknowledged operations or decide who wins (the client/server
//! protocol around OT belongs to the caller). It handles plain text only, no rich-text
//! attributes. It does not panic on bad input: every malformed operation, document of the wrong
//! length or split character is an [`OtError`].
//!
//! ## The UTF-16 rule
//!
//! All lengths, counts and positions are **UTF-16 code units**, as JavaScript's `String.length`
//! and every browser editor count them: `"😀"` is 2, `"é"` is 1, `"e\u{301}"` is 2. Documents are
//! ordinary Rust `String`s. An operation that would put a boundary between the two halves of a
//! surrogate pair (a character outside the BMP) is rejected with
//! [`OtError::SplitsSurrogatePair`], never applied half-way; boundaries inside grapheme clusters
//! (between `e` and a combining accent, inside a ZWJ emoji sequence) are fine, as in JavaScript.
//!
//! ## Wire form
//!
//! An operation is a JSON array: a positive integer retains that many units, a string inserts
//! itself, a negative integer deletes that many units. `[1,"abc",-2]` keeps the first unit,
//! inserts `abc` and deletes the next two. A selection is `{"ranges":[{"anchor":1,"head":4}]}`.
//! Input is normalized as ot.js's `fromJSON` does; `0`, fractions, `null`, objects and counts
//! beyond [`MAX_LEN`] are errors.
//!
//! ## Example
//!
//! ```
//! use edge_ws_ot::{transform_index, TextOperation};
//!
//! let doc = "Hi 😀";
//! // Two users edit concurrently: one appends "!", the other replaces "Hi" by "Hello".
//! let a = TextOperation::from_json(r#"[5,"!"]"#).unwrap();
//! let b = TextOperation::from_json(r#"["Hello",-2,3]"#).unwrap();
//! let (a2, b2) = a.transform(&b).unwrap();
//! let at_a = b2.apply(&a.apply(doc).unwrap()).unwrap();
//! let at_b = a2.apply(&b.apply(doc).unwrap()).unwrap();
//! assert_eq!(at_a, "Hello 😀!");
//! assert_eq!(at_a, at_b);
//! // A caret after the emoji (offset 5) follows the replacement.
//! assert_eq!(transform_index(5, &b), 8);
//! ```
//!
//! [ot.js]: https://github.com/Operational-Transformation/ot.js
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod operation;
mod selection;
mod utf16;
mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use error::OtError;
pub use operation::{Component, TextOperation};
pub use selection::{transform_cursor, transform_index, Range, Selection};
pub use utf16::{byte_to_utf16, utf16_len, utf16_to_byte};

/// The largest base or target length of an operation, in UTF-16 code units: 2^53 - 1
/// (JavaScript's `Number.MAX_SAFE_INTEGER`, the largest length ot.js can count exactly), or
/// `usize::MAX` where that is smaller.
pub const MAX_LEN: usize = if usize::BITS >= 64 {
    ((1u64 << 53) - 1) as usize
} else {
    usize::MAX
};
