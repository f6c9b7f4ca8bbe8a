//! Cursors and selections, moved through operations as ot.js's `Selection` does.

use serde::{Deserialize, Serialize};

use crate::operation::{Component, TextOperation};
use crate::utf16::utf16_len;
use crate::OtError;

/// Where a cursor (or a selection's ends) lands after `op`, ot.js's `transformIndex`:
/// text inserted at or before `index` pushes it right, text deleted before it pulls it left,
/// and an index inside deleted text moves to where the deletion started.
///
/// Same as [`transform_cursor(index, op, true)`](transform_cursor). Never fails: an index past
/// the end of `op`'s base document is shifted by everything the operation does before it.
///
/// ```
/// use edge_ws_ot::{transform_index, TextOperation};
///
/// let op = TextOperation::new().retain(3).insert("lorem").delete(2).retain(42);
/// assert_eq!(transform_index(3, &op), 8); // insert at the index: pushed
/// assert_eq!(transform_index(4, &op), 8); // inside the deletion
/// assert_eq!(transform_index(7, &op), 10);
/// ```
#[must_use]
pub fn transform_index(index: usize, op: &TextOperation) -> usize {
    transform_cursor(index, op, true)
}

/// Where a cursor at UTF-16 offset `pos` lands after `op`.
///
/// `is_own` says whether `op` was made by the cursor's owner:
///
/// - `true`: text inserted exactly at the cursor goes before it (the caret follows what its
///   owner types). This is ot.js's `transformIndex`, which ot.js uses for every selection.
/// - `false`: text someone else inserts exactly at the cursor goes after it, so a remote user's
///   typing does not drag a local caret along. Everywhere else both modes agree.
///
/// ```
/// use edge_ws_ot::{transform_cursor, TextOperation};
///
/// let op = TextOperation::new().retain(2).insert("xy").retain(3);
/// assert_eq!(transform_cursor(2, &op, true), 4);
/// assert_eq!(transform_cursor(2, &op, false), 2);
/// assert_eq!(transform_cursor(3, &op, false), 5);
/// ```
#[must_use]
pub fn transform_cursor(pos: usize, op: &TextOperation, is_own: bool) -> usize {
    // `left`: base units still between the walk and `pos`; `new`: the transformed position.
    let mut left = pos;
    let mut new = pos;
    for c in op.ops() {
        match c {
            Component::Retain(n) => {
                if *n > left {
                    break;
                }
                left -= n;
            }
            Component::Insert(s) => {
                if left == 0 && !is_own {
                    break;
                }
                new = new.saturating_add(utf16_len(s));
            }
            Component::Delete(n) => {
                new -= left.min(*n);
                if *n > left {
                    break;
                }
                left -= n;
            }
        }
    }
    new
}

/// One selected range, or a cursor when `anchor == head`, in UTF-16 code units (ot.js
/// `Selection.Range`; wire form `{"anchor":3,"head":5}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Range {
    /// The end that stays fixed while the selection is extended.
    pub anchor: usize,
    /// The end where the caret is.
    pub head: usize,
}

impl Range {
    /// A range from `anchor` to `head`.
    #[must_use]
    pub const fn new(anchor: usize, head: usize) -> Self {
        Self { anchor, head }
    }

    /// An empty range (a caret) at `pos`.
    #[must_use]
    pub const fn cursor(pos: usize) -> Self {
        Self {
            anchor: pos,
            head: pos,
        }
    }

    /// Whether nothing is selected (`anchor == head`).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.anchor == self.head
    }

    /// The smaller end.
    #[must_use]
    pub fn start(&self) -> usize {
        self.anchor.min(self.head)
    }

    /// The larger end.
    #[must_use]
    pub fn end(&self) -> usize {
        self.anchor.max(self.head)
    }

    /// Both ends moved through `op` with [`transform_index`] (ot.js `Range.transform`).
    #[must_use]
    pub fn transform(&self, op: &TextOperation) -> Self {
        self.transform_with(op, true)
    }

    /// Both ends moved through `op` with [`transform_cursor`]`(_, op, is_own)`.
    #[must_use]
    pub fn transform_with(&self, op: &TextOperation, is_own: bool) -> Self {
        let anchor = transform_cursor(self.anchor, op, is_own);
        if self.is_empty() {
            return Self::cursor(anchor);
        }
        Self::new(anchor, transform_cursor(self.head, op, is_own))
    }
}

/// A user's selection: one or more ranges (ot.js `Selection`; wire form
/// `{"ranges":[{"anchor":3,"head":5}]}`).
///
/// ```
/// use edge_ws_ot::{Range, Selection, TextOperation};
///
/// let sel = Selection::new(vec![Range::new(3, 7)]);
/// let op = TextOperation::new().retain(3).insert("lorem").delete(2).retain(42);
/// assert_eq!(sel.transform(&op), Selection::new(vec![Range::new(8, 10)]));
/// assert_eq!(sel.to_json(), r#"{"ranges":[{"anchor":3,"head":7}]}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Selection {
    /// The ranges, in the order the editor reported them.
    pub ranges: Vec<Range>,
}

impl Selection {
    /// A selection of these ranges.
    #[must_use]
    pub fn new(ranges: Vec<Range>) -> Self {
        Self { ranges }
    }

    /// A single caret at `pos` (ot.js `Selection.createCursor`).
    #[must_use]
    pub fn cursor(pos: usize) -> Self {
        Self {
            ranges: vec![Range::cursor(pos)],
        }
    }

    /// Whether any range is non-empty (ot.js `somethingSelected`).
    #[must_use]
    pub fn something_selected(&self) -> bool {
        self.ranges.iter().any(|r| !r.is_empty())
    }

    /// The more recent of two selections, i.e. `other` (ot.js `compose`).
    #[must_use]
    pub fn compose(self, other: Self) -> Self {
        other
    }

    /// Every range moved through `op` (ot.js `Selection.transform`).
    #[must_use]
    pub fn transform(&self, op: &TextOperation) -> Self {
        self.transform_with(op, true)
    }

    /// Every range moved through `op` with [`transform_cursor`]`(_, op, is_own)`.
    #[must_use]
    pub fn transform_with(&self, op: &TextOperation, is_own: bool) -> Self {
        Self {
            ranges: self
                .ranges
                .iter()
                .map(|r| r.transform_with(op, is_own))
                .collect(),
        }
    }

    /// ot.js's JSON form, `{"ranges":[{"anchor":3,"head":5}]}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(12 + self.ranges.len() * 28);
        out.push_str(r#"{"ranges":["#);
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, r#"{{"anchor":{},"head":{}}}"#, r.anchor, r.head);
        }
        out.push_str("]}");
        out
    }

    /// Parses ot.js's JSON form.
    ///
    /// # Errors
    ///
    /// [`OtError::Malformed`] if `json` is not an object with a `ranges` array of
    /// `{anchor, head}` objects holding non-negative integers.
    pub fn from_json(json: &str) -> Result<Self, OtError> {
        serde_json::from_str(json).map_err(|e| OtError::Malformed {
            message: e.to_string(),
        })
    }
}
