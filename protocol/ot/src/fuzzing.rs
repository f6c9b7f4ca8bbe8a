//! A self-contained fuzzing entry point: `check(bytes)` for any byte string, panicking exactly
//! when a property fails. Usable from a cargo-fuzz target
//! (`fuzz_target!(|data: &[u8]| edge_ws_ot::fuzzing::check(data))`), from a stable test that
//! feeds it pseudo-random bytes, or from any other harness; it needs nothing beyond this crate.

use crate::{
    transform_cursor, transform_index, utf16_len, Component, OtError, Selection, TextOperation,
};

/// Pieces documents and inserts are made of: ASCII, two-byte and three-byte characters,
/// surrogate pairs, combining marks, ZWJ sequences, a flag, JSON-hostile characters.
const PIECES: &[&str] = &[
    "a",
    "b",
    "z",
    " ",
    "\n",
    "é",
    "e\u{301}",
    "\u{301}",
    "😀",
    "👩‍👩‍👧",
    "中",
    "文字",
    "𝄞",
    "\u{200d}",
    "🇫🇷",
    "\"\\",
    "\u{1}",
    "ß",
];

/// Reads the input a byte at a time; zeros once it runs out, so every input is usable.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    fn text(&mut self, max_pieces: usize) -> String {
        let n = self.below(max_pieces + 1);
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(PIECES[self.below(PIECES.len())]);
        }
        s
    }

    /// A valid operation on `doc`: walks its characters, retaining, deleting and inserting,
    /// never splitting a surrogate pair (it may split grapheme clusters, as a browser can).
    fn operation(&mut self, doc: &str) -> TextOperation {
        let mut op = TextOperation::new();
        let mut chars = doc.chars().peekable();
        while chars.peek().is_some() {
            let kind = self.byte();
            // Mostly a few characters; sometimes a long run, so that long documents exercise
            // the block-wise UTF-16 walk.
            let k = if kind >> 6 == 3 {
                1 + self.below(200)
            } else {
                1 + usize::from(kind >> 4) % 4
            };
            let units: usize = chars.by_ref().take(k).map(char::len_utf16).sum();
            match kind % 4 {
                0 | 3 => op = op.retain(units),
                1 => op = op.delete(units),
                _ => {
                    op = op.insert(self.text(3)).retain(units);
                }
            }
        }
        if self.byte() % 2 == 1 {
            op = op.insert(self.text(3));
        }
        op
    }
}

/// Derives a document and operations from `data` and checks, panicking on a failure:
///
/// - the generated operations apply, with the right target lengths;
/// - TP1: `apply(apply(s, a), b') == apply(apply(s, b), a')` and `a ∘ b' == b ∘ a'` for
///   `(a', b') = transform(a, b)`;
/// - compose ≡ sequential apply;
/// - `invert` undoes, inverting twice gives the operation back, and undo grouping agrees with
///   its inverted form;
/// - JSON round trip, and `to_json` equals `serde_json`'s output;
/// - cursors stay within the new document;
/// - operations built from raw counts (which may split pairs or have the wrong length) and raw
///   bytes parsed as JSON give errors, never panics, and whatever they do apply satisfies the
///   same laws.
pub fn check(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    // Up to 24 pieces, repeated up to 8 times: up to about 1.5 KB.
    let doc = input.text(24).repeat(1 + input.below(8));
    let a = input.operation(&doc);
    let b = input.operation(&doc);

    let after_a = applied(&a, &doc);
    let after_b = applied(&b, &doc);

    // TP1.
    let (a2, b2) = a.transform(&b).expect("transform of concurrent operations");
    assert_eq!(
        applied(&b2, &after_a),
        applied(&a2, &after_b),
        "TP1 fails: doc {doc:?}, a {a}, b {b}"
    );
    assert_eq!(
        a.compose(&b2).expect("a then b'"),
        b.compose(&a2).expect("b then a'"),
        "a∘b' != b∘a': doc {doc:?}, a {a}, b {b}"
    );

    // Compose against a third operation made on a's result.
    let c = input.operation(&after_a);
    let ac = a.compose(&c).expect("compose consecutive operations");
    assert_eq!(
        applied(&ac, &doc),
        applied(&c, &after_a),
        "compose: a {a}, c {c}"
    );

    // Invert.
    let inv = a.invert(&doc).expect("invert on the base document");
    assert_eq!(applied(&inv, &after_a), doc, "invert: a {a}");
    assert_eq!(
        inv.invert(&after_a).expect("invert the inverse"),
        a,
        "double inverse: a {a}"
    );
    let c_inv = c.invert(&after_a).expect("invert c");
    assert_eq!(
        a.should_be_composed_with(&c),
        c_inv.should_be_composed_with_inverted(&inv),
        "undo grouping: a {a}, c {c}"
    );

    // JSON.
    for op in [&a, &b, &a2, &b2, &ac, &inv] {
        let json = op.to_json();
        assert_eq!(Some(&json), serde_json::to_string(op).ok().as_ref());
        assert_eq!(
            TextOperation::from_json(&json).as_ref(),
            Ok(op),
            "JSON round trip of {json}"
        );
    }

    // Cursors.
    for pos in [0, input.below(utf16_len(&doc) + 1), utf16_len(&doc)] {
        let own = transform_index(pos, &a);
        let other = transform_cursor(pos, &a, false);
        assert!(
            own <= a.target_len() && other <= own,
            "cursor {pos} through {a}"
        );
        let sel = Selection::from_json(&Selection::cursor(pos).to_json()).expect("selection JSON");
        assert_eq!(sel.transform(&a), Selection::cursor(own));
    }

    // Malformed: raw counts, no care for the document's length or its surrogate pairs.
    let mut raw = TextOperation::new();
    for _ in 0..input.below(6) {
        let n = input.below(6);
        let c = match input.byte() % 3 {
            0 => Component::Retain(n),
            1 => Component::Delete(n),
            _ => Component::Insert(input.text(2)),
        };
        raw.try_push(c).expect("small lengths");
    }
    exercise(&raw, &doc, &a);

    // Malformed: the remaining bytes as JSON.
    if let Ok(text) = std::str::from_utf8(input.rest()) {
        match TextOperation::from_json(text) {
            Ok(op) => {
                assert_eq!(TextOperation::from_json(&op.to_json()), Ok(op.clone()));
                exercise(&op, &doc, &a);
            }
            Err(e) => assert!(matches!(e, OtError::Malformed { .. }), "{e:?}"),
        }
        let _ = Selection::from_json(text);
    }
}

fn applied(op: &TextOperation, doc: &str) -> String {
    let out = op
        .apply(doc)
        .unwrap_or_else(|e| panic!("{op} on {doc:?}: {e}"));
    assert_eq!(utf16_len(&out), op.target_len(), "target length of {op}");
    out
}

/// Everything on an operation of unknown validity: errors are fine, panics and wrong results
/// are not.
fn exercise(op: &TextOperation, doc: &str, valid: &TextOperation) {
    match op.apply(doc) {
        Ok(out) => {
            assert_eq!(utf16_len(&out), op.target_len());
            let inv = op.invert(doc).expect("invert where apply worked");
            assert_eq!(inv.apply(&out).as_deref(), Ok(doc));
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    OtError::BaseLengthMismatch { .. } | OtError::SplitsSurrogatePair { .. }
                ),
                "{e:?}"
            );
            assert_eq!(op.invert(doc).err(), Some(e));
        }
    }
    let _ = op.compose(valid);
    let _ = valid.compose(op);
    if let Ok((x, y)) = op.transform(valid) {
        if let (Ok(after_op), Ok(after_valid)) = (op.apply(doc), valid.apply(doc)) {
            assert_eq!(y.apply(&after_op), x.apply(&after_valid), "TP1 on {op}");
        }
    }
    let _ = transform_index(utf16_len(doc), op);
}
