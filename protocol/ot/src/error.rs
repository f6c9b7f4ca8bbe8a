//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong when building, applying, composing, transforming, inverting or
/// decoding an operation.
///
/// All lengths and positions are in UTF-16 code units. Bad input of any kind (a document of the
/// wrong length, a boundary inside a surrogate pair, malformed JSON, lengths too large to be
/// exact in JavaScript) is reported here; nothing in this crate panics on input it is handed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OtError {
    /// The document is not as long as the operation's base length
    /// ([`TextOperation::apply`](crate::TextOperation::apply) and
    /// [`TextOperation::invert`](crate::TextOperation::invert)).
    #[error(
        "the operation's base length is {expected} UTF-16 code units but the document has {actual}"
    )]
    BaseLengthMismatch {
        /// The operation's base length.
        expected: usize,
        /// The document's length.
        actual: usize,
    },

    /// [`TextOperation::compose`](crate::TextOperation::compose) was given operations that are
    /// not consecutive: the second does not start from the first one's result.
    #[error(
        "cannot compose: the first operation's target length ({first_target}) is not the second \
         operation's base length ({second_base})"
    )]
    ComposeLengthMismatch {
        /// Target length of the first operation.
        first_target: usize,
        /// Base length of the second operation.
        second_base: usize,
    },

    /// [`TextOperation::transform`](crate::TextOperation::transform) was given operations that
    /// are not concurrent: they do not start from documents of the same length.
    #[error("cannot transform: the operations' base lengths differ ({left} and {right})")]
    TransformLengthMismatch {
        /// Base length of the first (left, winning) operation.
        left: usize,
        /// Base length of the second operation.
        right: usize,
    },

    /// A retain or delete boundary would fall between the two halves of a surrogate pair (a
    /// character outside the Basic Multilingual Plane, such as most emoji).
    #[error("a component boundary at UTF-16 offset {position} splits a surrogate pair")]
    SplitsSurrogatePair {
        /// The offending boundary, in UTF-16 code units from the start of the document the
        /// operation was applied to (for [`compose`](crate::TextOperation::compose): of the
        /// intermediate document, inside text the first operation inserted).
        position: usize,
    },

    /// A position given to a conversion helper lies past the end of the string.
    #[error("UTF-16 offset {position} is past the end of a string of {len} code units")]
    PositionOutOfBounds {
        /// The requested offset.
        position: usize,
        /// The string's length.
        len: usize,
    },

    /// A base or target length would exceed [`MAX_LEN`](crate::MAX_LEN), the largest length
    /// that is exact in a JavaScript number.
    #[error("operation lengths would exceed the maximum of {max} UTF-16 code units", max = crate::MAX_LEN)]
    LengthOverflow,

    /// Wire input that is not an operation (or selection) in ot.js's JSON form: not JSON, not an
    /// array, a zero or fractional number, an object, `null`, ….
    #[error("malformed wire input: {message}")]
    Malformed {
        /// What was wrong, with the position in the input where the JSON parser knows it.
        message: String,
    },
}
