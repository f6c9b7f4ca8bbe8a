//! [`TextOperation`]: building, applying, inverting, composing and transforming.

use std::fmt;
use std::slice;

use crate::utf16::{advance, utf16_len, Stop};
use crate::{OtError, MAX_LEN};

/// One step of an operation, as the imaginary cursor walks over the document.
///
/// Counts are UTF-16 code units. In ot.js's JSON form a retain is a positive integer, an insert
/// a string and a delete a negative integer (see the [crate docs](crate#wire-form)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    /// Keep the next `n` code units of the document.
    Retain(usize),
    /// Insert this text at the current position.
    Insert(String),
    /// Remove the next `n` code units of the document.
    Delete(usize),
}

impl Component {
    /// How many code units of the base document this component consumes (0 for an insert).
    #[must_use]
    pub fn base_len(&self) -> usize {
        match self {
            Self::Retain(n) | Self::Delete(n) => *n,
            Self::Insert(_) => 0,
        }
    }

    /// How many code units this component contributes to the resulting document (0 for a
    /// delete).
    #[must_use]
    pub fn target_len(&self) -> usize {
        match self {
            Self::Retain(n) => *n,
            Self::Insert(s) => utf16_len(s),
            Self::Delete(_) => 0,
        }
    }

    /// Whether this is a [`Component::Retain`].
    #[must_use]
    pub fn is_retain(&self) -> bool {
        matches!(self, Self::Retain(_))
    }

    /// Whether this is a [`Component::Insert`].
    #[must_use]
    pub fn is_insert(&self) -> bool {
        matches!(self, Self::Insert(_))
    }

    /// Whether this is a [`Component::Delete`].
    #[must_use]
    pub fn is_delete(&self) -> bool {
        matches!(self, Self::Delete(_))
    }
}

/// An edit of a plain-text document: a sequence of [`Component`]s that together walk over the
/// whole document, exactly like ot.js's `TextOperation`.
///
/// An operation is always kept in ot.js's normal form, whichever way it was built (builders,
/// [`push`](Self::push), [`from_components`](Self::from_components), `TryFrom<Vec<Component>>`,
/// JSON): no empty components, no two adjacent components of the same kind, and an insert
/// never directly after a delete (`delete 3, insert "x"` is stored as `insert "x", delete 3`).
/// So two operations with the same effect on every document compare equal with `==`, as
/// ot.js's `equals` does.
///
/// [`base_len`](Self::base_len) is the length of every document the operation applies to,
/// [`target_len`](Self::target_len) the length of the result, both in UTF-16 code units.
///
/// ```
/// use edge_ws_ot::TextOperation;
///
/// let op = TextOperation::new().retain(2).insert("😀").delete(1).retain(1);
/// assert_eq!((op.base_len(), op.target_len()), (4, 5));
/// assert_eq!(op.apply("ab-c").unwrap(), "ab😀c");
/// assert_eq!(op.to_json(), r#"[2,"😀",-1,1]"#);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TextOperation {
    ops: Vec<Component>,
    base_len: usize,
    target_len: usize,
}

/// `a + b`, if it stays within [`MAX_LEN`].
#[inline]
fn add_len(a: usize, b: usize) -> Result<usize, OtError> {
    match a.checked_add(b) {
        Some(sum) if sum <= MAX_LEN => Ok(sum),
        _ => Err(OtError::LengthOverflow),
    }
}

#[track_caller]
fn or_panic(result: Result<(), OtError>) {
    if let Err(e) = result {
        panic!("{e}");
    }
}

impl TextOperation {
    /// The empty operation (applies to the empty document only).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ops: Vec::new(),
            base_len: 0,
            target_len: 0,
        }
    }

    /// An empty operation with room for `n` components.
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
            base_len: 0,
            target_len: 0,
        }
    }

    /// Appends a retain of `n` code units (ot.js `retain`); `0` is a no-op.
    ///
    /// # Panics
    ///
    /// If a length would exceed [`MAX_LEN`]; use [`try_push`](Self::try_push) to get an error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn retain(mut self, n: usize) -> Self {
        or_panic(self.push_retain(n));
        self
    }

    /// Appends an insert of `text` (ot.js `insert`); `""` is a no-op.
    ///
    /// # Panics
    ///
    /// If the target length would exceed [`MAX_LEN`].
    #[must_use]
    #[track_caller]
    pub fn insert(mut self, text: impl AsRef<str> + Into<String>) -> Self {
        let len = utf16_len(text.as_ref());
        or_panic(self.push_insert(text, len));
        self
    }

    /// Appends a delete of `n` code units (ot.js `delete`); `0` is a no-op.
    ///
    /// # Panics
    ///
    /// If the base length would exceed [`MAX_LEN`].
    #[must_use]
    #[track_caller]
    pub fn delete(mut self, n: usize) -> Self {
        or_panic(self.push_delete(n));
        self
    }

    /// Appends `component`, keeping the normal form.
    ///
    /// # Panics
    ///
    /// If a length would exceed [`MAX_LEN`].
    #[track_caller]
    pub fn push(&mut self, component: Component) {
        or_panic(self.try_push(component));
    }

    /// Appends `component`, keeping the normal form.
    ///
    /// # Errors
    ///
    /// [`OtError::LengthOverflow`] if a length would exceed [`MAX_LEN`]; the operation is then
    /// unchanged.
    pub fn try_push(&mut self, component: Component) -> Result<(), OtError> {
        match component {
            Component::Retain(n) => self.push_retain(n),
            Component::Insert(s) => {
                let len = utf16_len(&s);
                self.push_insert(s, len)
            }
            Component::Delete(n) => self.push_delete(n),
        }
    }

    /// Builds a normalized operation from any sequence of components (ot.js `fromJSON`
    /// without the JSON).
    ///
    /// # Errors
    ///
    /// [`OtError::LengthOverflow`] if a length would exceed [`MAX_LEN`].
    pub fn from_components<I>(components: I) -> Result<Self, OtError>
    where
        I: IntoIterator<Item = Component>,
    {
        let iter = components.into_iter();
        let mut op = Self::with_capacity(iter.size_hint().0.min(1024));
        for c in iter {
            op.try_push(c)?;
        }
        Ok(op)
    }

    pub(crate) fn push_retain(&mut self, n: usize) -> Result<(), OtError> {
        if n == 0 {
            return Ok(());
        }
        let base = add_len(self.base_len, n)?;
        let target = add_len(self.target_len, n)?;
        self.base_len = base;
        self.target_len = target;
        // A component never exceeds the operation's lengths, so merging cannot overflow.
        match self.ops.last_mut() {
            Some(Component::Retain(last)) => *last += n,
            _ => self.ops.push(Component::Retain(n)),
        }
        Ok(())
    }

    /// `len` must be `utf16_len(text)`.
    pub(crate) fn push_insert<S>(&mut self, text: S, len: usize) -> Result<(), OtError>
    where
        S: AsRef<str> + Into<String>,
    {
        let s = text.as_ref();
        if s.is_empty() {
            return Ok(());
        }
        self.target_len = add_len(self.target_len, len)?;
        let n = self.ops.len();
        match self.ops.as_mut_slice() {
            [.., Component::Insert(last)] => last.push_str(s),
            // Insert goes before a trailing delete (ot.js's normal form)...
            [.., Component::Insert(prev), Component::Delete(_)] => prev.push_str(s),
            [.., Component::Delete(_)] => self.ops.insert(n - 1, Component::Insert(text.into())),
            _ => self.ops.push(Component::Insert(text.into())),
        }
        Ok(())
    }

    pub(crate) fn push_delete(&mut self, n: usize) -> Result<(), OtError> {
        if n == 0 {
            return Ok(());
        }
        self.base_len = add_len(self.base_len, n)?;
        match self.ops.last_mut() {
            Some(Component::Delete(last)) => *last += n,
            _ => self.ops.push(Component::Delete(n)),
        }
        Ok(())
    }

    /// The components, in normal form.
    #[must_use]
    pub fn ops(&self) -> &[Component] {
        &self.ops
    }

    /// The components, in normal form, by value.
    #[must_use]
    pub fn into_ops(self) -> Vec<Component> {
        self.ops
    }

    /// Length (UTF-16 code units) of every document this operation applies to.
    #[must_use]
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Length (UTF-16 code units) of the document that applying this operation gives.
    #[must_use]
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    /// Whether applying this operation changes nothing (no components, or a single retain).
    #[must_use]
    pub fn is_noop(&self) -> bool {
        matches!(self.ops.as_slice(), [] | [Component::Retain(_)])
    }

    /// Applies the operation to `doc` and returns the new document.
    ///
    /// # Errors
    ///
    /// - [`OtError::BaseLengthMismatch`] if `utf16_len(doc) != self.base_len()`;
    /// - [`OtError::SplitsSurrogatePair`] if a retain or delete boundary falls inside a
    ///   surrogate pair of `doc`.
    ///
    /// ```
    /// use edge_ws_ot::{OtError, TextOperation};
    ///
    /// // As a browser builds it: "😀" is two units, so "after the emoji" is offset 2.
    /// let op = TextOperation::new().retain(2).insert("!").retain(1);
    /// assert_eq!(op.apply("😀x"), Ok("😀!x".to_string()));
    ///
    /// let bad = TextOperation::new().retain(1).insert("!").retain(1);
    /// assert_eq!(bad.apply("😀"), Err(OtError::SplitsSurrogatePair { position: 1 }));
    /// ```
    pub fn apply(&self, doc: &str) -> Result<String, OtError> {
        let bytes = doc.as_bytes();
        // Units never outnumber bytes, and every unit takes at most three bytes.
        if bytes.len() < self.base_len || bytes.len() / 3 > self.base_len {
            return Err(self.length_error(doc));
        }
        let inserted: usize = self
            .ops
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.len(),
                _ => 0,
            })
            .sum();
        let mut out = String::with_capacity(bytes.len() + inserted);
        let mut at = 0; // byte index into `doc`
        let mut unit = 0; // UTF-16 offset into `doc`
        for c in &self.ops {
            match c {
                Component::Retain(n) => {
                    let end = self.step(doc, at, unit, *n)?;
                    out.push_str(&doc[at..end]);
                    at = end;
                    unit += n;
                }
                Component::Insert(s) => out.push_str(s),
                Component::Delete(n) => {
                    at = self.step(doc, at, unit, *n)?;
                    unit += n;
                }
            }
        }
        if at != bytes.len() {
            return Err(self.length_error(doc));
        }
        Ok(out)
    }

    /// The inverse of this operation on `doc` (the document it is about to be applied to):
    /// applying the result to `self.apply(doc)` gives `doc` back. This is what an undo stack
    /// stores.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply): the document must have the base length and no boundary may
    /// split a surrogate pair.
    ///
    /// ```
    /// use edge_ws_ot::TextOperation;
    ///
    /// let doc = "hello world";
    /// let op = TextOperation::new().retain(6).delete(5).insert("there");
    /// let undo = op.invert(doc).unwrap();
    /// assert_eq!(undo, TextOperation::new().retain(6).insert("world").delete(5));
    /// assert_eq!(undo.apply(&op.apply(doc).unwrap()).unwrap(), doc);
    /// ```
    pub fn invert(&self, doc: &str) -> Result<Self, OtError> {
        let bytes = doc.as_bytes();
        if bytes.len() < self.base_len || bytes.len() / 3 > self.base_len {
            return Err(self.length_error(doc));
        }
        let mut inverse = Self::with_capacity(self.ops.len());
        let mut at = 0;
        let mut unit = 0;
        for c in &self.ops {
            match c {
                Component::Retain(n) => {
                    at = self.step(doc, at, unit, *n)?;
                    unit += n;
                    inverse.push_retain(*n)?;
                }
                Component::Insert(s) => inverse.push_delete(utf16_len(s))?,
                Component::Delete(n) => {
                    let end = self.step(doc, at, unit, *n)?;
                    inverse.push_insert(&doc[at..end], *n)?;
                    at = end;
                    unit += n;
                }
            }
        }
        if at != bytes.len() {
            return Err(self.length_error(doc));
        }
        Ok(inverse)
    }

    /// Moves `n` units on from byte `at` (UTF-16 offset `unit`) of `doc`.
    #[inline]
    fn step(&self, doc: &str, at: usize, unit: usize, n: usize) -> Result<usize, OtError> {
        advance(doc.as_bytes(), at, n).map_err(|stop| self.stop_error(doc, unit, stop))
    }

    /// A wrong length is reported as such even when a split pair was met first.
    #[cold]
    fn stop_error(&self, doc: &str, unit: usize, stop: Stop) -> OtError {
        match stop {
            Stop::Split { before } if utf16_len(doc) == self.base_len => {
                OtError::SplitsSurrogatePair {
                    position: unit + before + 1,
                }
            }
            _ => self.length_error(doc),
        }
    }

    #[cold]
    fn length_error(&self, doc: &str) -> OtError {
        OtError::BaseLengthMismatch {
            expected: self.base_len,
            actual: utf16_len(doc),
        }
    }

    /// Composes this operation with the one that follows it: the result does in one step what
    /// `self` then `next` do, i.e. `apply(s, a.compose(b)) == apply(apply(s, a), b)` (ot.js
    /// `compose`).
    ///
    /// # Errors
    ///
    /// - [`OtError::ComposeLengthMismatch`] if `self.target_len() != next.base_len()`;
    /// - [`OtError::SplitsSurrogatePair`] if `next` cuts text that `self` inserts in the middle
    ///   of a surrogate pair (a split inside retained text cannot be seen without the document;
    ///   [`apply`](Self::apply) reports it).
    ///
    /// ```
    /// use edge_ws_ot::TextOperation;
    ///
    /// let a = TextOperation::new().retain(3).insert("def");
    /// let b = TextOperation::new().delete(2).retain(4);
    /// let ab = a.compose(&b).unwrap();
    /// assert_eq!(ab, TextOperation::new().delete(2).retain(1).insert("def"));
    /// assert_eq!(ab.apply("abc").unwrap(), "cdef");
    /// ```
    pub fn compose(&self, next: &Self) -> Result<Self, OtError> {
        if self.target_len != next.base_len {
            return Err(OtError::ComposeLengthMismatch {
                first_target: self.target_len,
                second_base: next.base_len,
            });
        }
        let mismatch = || OtError::ComposeLengthMismatch {
            first_target: self.target_len,
            second_base: next.base_len,
        };
        let mut out = Self::with_capacity(self.ops.len() + next.ops.len());
        let mut a = Pieces::new(&self.ops);
        let mut b = Pieces::new(&next.ops);
        // UTF-16 offset, in the intermediate document, of the start of `a.cur`.
        let mut mid = 0;
        loop {
            match (a.cur, b.cur) {
                (None, None) => break,
                (Some(Piece::Delete(n)), _) => {
                    out.push_delete(n)?;
                    a.next();
                }
                (_, Some(Piece::Insert(s, len))) => {
                    out.push_insert(s, len)?;
                    b.next();
                }
                (None, _) | (_, None) => return Err(mismatch()),
                (Some(Piece::Retain(x)), Some(Piece::Retain(y))) => {
                    let m = x.min(y);
                    out.push_retain(m)?;
                    a.consume(m);
                    b.consume(m);
                    mid += m;
                }
                (Some(Piece::Insert(s, len)), Some(Piece::Delete(d))) => {
                    // `next` deletes (part of) what `self` inserted: both vanish.
                    let m = len.min(d);
                    if m < len {
                        let cut = split_at_units(s, m, mid)?;
                        a.cur = Some(Piece::Insert(&s[cut..], len - m));
                    } else {
                        a.next();
                    }
                    b.consume(m);
                    mid += m;
                }
                (Some(Piece::Insert(s, len)), Some(Piece::Retain(r))) => {
                    let m = len.min(r);
                    if m < len {
                        let cut = split_at_units(s, m, mid)?;
                        out.push_insert(&s[..cut], m)?;
                        a.cur = Some(Piece::Insert(&s[cut..], len - m));
                    } else {
                        out.push_insert(s, len)?;
                        a.next();
                    }
                    b.consume(m);
                    mid += m;
                }
                (Some(Piece::Retain(r)), Some(Piece::Delete(d))) => {
                    let m = r.min(d);
                    out.push_delete(m)?;
                    a.consume(m);
                    b.consume(m);
                    mid += m;
                }
            }
        }
        Ok(out)
    }

    /// Transforms two concurrent operations `a = self` and `b = other` (both made on the same
    /// document) into `(a', b')` such that `apply(apply(s, a), b') == apply(apply(s, b), a')`
    /// and `a.compose(b') == b.compose(a')` (ot.js `TextOperation.transform`).
    ///
    /// When both insert at the same position, `a`'s text goes first: in a client–server setup
    /// the server's operation is `a`.
    ///
    /// # Errors
    ///
    /// [`OtError::TransformLengthMismatch`] if the base lengths differ;
    /// [`OtError::LengthOverflow`] if a result would be longer than [`MAX_LEN`].
    ///
    /// ```
    /// use edge_ws_ot::TextOperation;
    ///
    /// let doc = "go";
    /// let a = TextOperation::new().retain(2).insert("!");
    /// let b = TextOperation::new().insert("let's ").retain(2);
    /// let (a2, b2) = a.transform(&b).unwrap();
    /// let left = b2.apply(&a.apply(doc).unwrap()).unwrap();
    /// let right = a2.apply(&b.apply(doc).unwrap()).unwrap();
    /// assert_eq!(left, "let's go!");
    /// assert_eq!(left, right);
    /// ```
    pub fn transform(&self, other: &Self) -> Result<(Self, Self), OtError> {
        if self.base_len != other.base_len {
            return Err(OtError::TransformLengthMismatch {
                left: self.base_len,
                right: other.base_len,
            });
        }
        let mismatch = || OtError::TransformLengthMismatch {
            left: self.base_len,
            right: other.base_len,
        };
        let cap = self.ops.len() + other.ops.len();
        let mut a2 = Self::with_capacity(cap);
        let mut b2 = Self::with_capacity(cap);
        let mut a = Pieces::new(&self.ops);
        let mut b = Pieces::new(&other.ops);
        loop {
            match (a.cur, b.cur) {
                (None, None) => break,
                // Inserts first, `self`'s before `other`'s.
                (Some(Piece::Insert(s, len)), _) => {
                    a2.push_insert(s, len)?;
                    b2.push_retain(len)?;
                    a.next();
                }
                (_, Some(Piece::Insert(s, len))) => {
                    a2.push_retain(len)?;
                    b2.push_insert(s, len)?;
                    b.next();
                }
                (None, _) | (_, None) => return Err(mismatch()),
                (Some(Piece::Retain(x)), Some(Piece::Retain(y))) => {
                    let m = x.min(y);
                    a2.push_retain(m)?;
                    b2.push_retain(m)?;
                    a.consume(m);
                    b.consume(m);
                }
                // Both delete the same text: nothing left to do for either.
                (Some(Piece::Delete(x)), Some(Piece::Delete(y))) => {
                    let m = x.min(y);
                    a.consume(m);
                    b.consume(m);
                }
                (Some(Piece::Delete(x)), Some(Piece::Retain(y))) => {
                    let m = x.min(y);
                    a2.push_delete(m)?;
                    a.consume(m);
                    b.consume(m);
                }
                (Some(Piece::Retain(x)), Some(Piece::Delete(y))) => {
                    let m = x.min(y);
                    b2.push_delete(m)?;
                    a.consume(m);
                    b.consume(m);
                }
            }
        }
        Ok((a2, b2))
    }
}

impl TextOperation {
    /// Undo grouping (ot.js `shouldBeComposedWith`): whether `other`, made right after `self`,
    /// continues the same edit, so that an undo stack should store `self.compose(other)` as one
    /// entry: consecutive typing, or deleting with backspace or the delete key at one place.
    /// A no-op on either side always composes. Time since the last edit is the caller's
    /// business.
    #[must_use]
    pub fn should_be_composed_with(&self, other: &Self) -> bool {
        if self.is_noop() || other.is_noop() {
            return true;
        }
        let (start_a, start_b) = (self.start_index(), other.start_index());
        match (self.simple_component(), other.simple_component()) {
            (Some(Component::Insert(a)), Some(Component::Insert(_))) => {
                start_a + utf16_len(a) == start_b
            }
            (Some(Component::Delete(_)), Some(Component::Delete(b))) => {
                start_b + b == start_a || start_a == start_b
            }
            _ => false,
        }
    }

    /// [`should_be_composed_with`](Self::should_be_composed_with) for inverted operations, as
    /// a redo stack holds them (ot.js `shouldBeComposedWithInverted`):
    /// `a.should_be_composed_with(b) == b⁻¹.should_be_composed_with_inverted(a⁻¹)`.
    #[must_use]
    pub fn should_be_composed_with_inverted(&self, other: &Self) -> bool {
        if self.is_noop() || other.is_noop() {
            return true;
        }
        let (start_a, start_b) = (self.start_index(), other.start_index());
        match (self.simple_component(), other.simple_component()) {
            (Some(Component::Insert(a)), Some(Component::Insert(_))) => {
                start_a + utf16_len(a) == start_b || start_a == start_b
            }
            (Some(Component::Delete(_)), Some(Component::Delete(b))) => start_b + b == start_a,
            _ => false,
        }
    }

    /// The one insert or delete of an operation that is nothing else, with optional retains
    /// around it.
    fn simple_component(&self) -> Option<&Component> {
        match self.ops.as_slice() {
            [c] => Some(c),
            [Component::Retain(_), c] | [c, Component::Retain(_)] => Some(c),
            [Component::Retain(_), c, Component::Retain(_)] => Some(c),
            _ => None,
        }
    }

    /// Where the operation's first change is, if it starts with a retain.
    fn start_index(&self) -> usize {
        match self.ops.first() {
            Some(Component::Retain(n)) => *n,
            _ => 0,
        }
    }
}

/// Byte index of UTF-16 offset `units` (strictly inside) of inserted text `s`; `mid` is where
/// `s` starts in the intermediate document, for the error.
fn split_at_units(s: &str, units: usize, mid: usize) -> Result<usize, OtError> {
    advance(s.as_bytes(), 0, units).map_err(|stop| match stop {
        Stop::Split { before } => OtError::SplitsSurrogatePair {
            position: mid + before + 1,
        },
        // `units` is below the text's length, so it cannot run off its end.
        Stop::End { .. } => OtError::SplitsSurrogatePair { position: mid },
    })
}

/// A component, or what is left of one, with an insert's UTF-16 length measured once.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Retain(usize),
    Insert(&'a str, usize),
    Delete(usize),
}

/// Walks an operation's components, allowing the current one to be partly consumed.
#[derive(Debug)]
struct Pieces<'a> {
    iter: slice::Iter<'a, Component>,
    cur: Option<Piece<'a>>,
}

impl<'a> Pieces<'a> {
    fn new(ops: &'a [Component]) -> Self {
        let mut p = Self {
            iter: ops.iter(),
            cur: None,
        };
        p.next();
        p
    }

    #[inline]
    fn next(&mut self) {
        self.cur = self.iter.next().map(|c| match c {
            Component::Retain(n) => Piece::Retain(*n),
            Component::Insert(s) => Piece::Insert(s, utf16_len(s)),
            Component::Delete(n) => Piece::Delete(*n),
        });
    }

    /// Consumes `m` units of the current retain or delete (`m` ≤ its count).
    #[inline]
    fn consume(&mut self, m: usize) {
        match &mut self.cur {
            Some(Piece::Retain(n) | Piece::Delete(n)) if *n > m => *n -= m,
            _ => self.next(),
        }
    }
}

impl TryFrom<Vec<Component>> for TextOperation {
    type Error = OtError;

    fn try_from(components: Vec<Component>) -> Result<Self, OtError> {
        Self::from_components(components)
    }
}

impl From<TextOperation> for Vec<Component> {
    fn from(op: TextOperation) -> Self {
        op.ops
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retain(n) => write!(f, "retain {n}"),
            Self::Insert(s) => write!(f, "insert '{s}'"),
            Self::Delete(n) => write!(f, "delete {n}"),
        }
    }
}

/// ot.js's `toString`: `retain 2, insert 'lorem', delete 5, retain 5`.
impl fmt::Display for TextOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Display::fmt(c, f)?;
        }
        Ok(())
    }
}
