//! Cursors and selections, after ot.js's `test-selection.js`, plus UTF-16 positions and the
//! `is_own` tie rule.

mod common;

use common::{config, doc_and_op};
use edge_ws_ot::{
    transform_cursor, transform_index, utf16_len, utf16_to_byte, Range, Selection, TextOperation,
};
use proptest::prelude::*;

fn op() -> TextOperation {
    TextOperation::new()
}

#[test]
fn create_cursor() {
    assert_eq!(Selection::cursor(5), Selection::new(vec![Range::new(5, 5)]));
}

#[test]
fn something_selected() {
    let sel = Selection::new(vec![Range::new(7, 7), Range::new(10, 10)]);
    assert!(!sel.something_selected());
    let sel = Selection::new(vec![Range::new(7, 10)]);
    assert!(sel.something_selected());
    assert!(!Selection::default().something_selected());
}

#[test]
fn transform_as_ot_js() {
    let sel = Selection::new(vec![Range::new(3, 7)]);
    assert_eq!(
        sel.transform(&op().retain(3).insert("lorem").delete(2).retain(42)),
        Selection::new(vec![Range::new(8, 10)])
    );
    assert_eq!(sel.transform(&op().delete(45)), Selection::cursor(0));
}

#[test]
fn compose_takes_the_newer() {
    let a = Selection::new(vec![Range::new(3, 7)]);
    let b = Selection::cursor(4);
    assert_eq!(a.compose(b.clone()), b);
}

#[test]
fn range_helpers() {
    let r = Range::new(9, 4);
    assert_eq!((r.start(), r.end(), r.is_empty()), (4, 9, false));
    assert!(Range::cursor(3).is_empty());
    // A backwards range keeps its direction.
    let o = op().insert("ab").retain(10);
    assert_eq!(r.transform(&o), Range::new(11, 6));
}

#[test]
fn transform_index_cases() {
    let o = op().retain(3).insert("lorem").delete(2).retain(42);
    // before, at, inside and after the edit
    assert_eq!(transform_index(0, &o), 0);
    assert_eq!(transform_index(2, &o), 2);
    assert_eq!(transform_index(3, &o), 8);
    assert_eq!(transform_index(4, &o), 8);
    assert_eq!(transform_index(5, &o), 8);
    assert_eq!(transform_index(6, &o), 9);
    assert_eq!(transform_index(47, &o), 50);
    // Past the end of the base document: shifted by all of the operation, never a panic.
    assert_eq!(transform_index(100, &o), 103);
    assert_eq!(transform_index(usize::MAX, &op().insert("x")), usize::MAX);
    assert_eq!(transform_index(3, &op()), 3);
    // Replacement: the caret that was after the replaced text ends after the new text.
    let replace = op().retain(1).insert("XYZ").delete(2).retain(1);
    assert_eq!(transform_index(3, &replace), 4);
    assert_eq!(transform_index(1, &replace), 4);
}

#[test]
fn is_own_decides_inserts_at_the_cursor() {
    let o = op().retain(2).insert("xy").retain(3);
    assert_eq!(transform_cursor(2, &o, true), 4);
    assert_eq!(transform_cursor(2, &o, false), 2);
    assert_eq!(transform_cursor(1, &o, false), 1);
    assert_eq!(transform_cursor(3, &o, false), 5);
    // Deletes are the same either way.
    let d = op().retain(1).delete(3).retain(1);
    for pos in 0..=5 {
        assert_eq!(
            transform_cursor(pos, &d, true),
            transform_cursor(pos, &d, false)
        );
    }
    // A remote insert at a selection's start grows nothing; at its end extends nothing.
    let sel = Selection::new(vec![Range::new(2, 4)]);
    let at_start = op().retain(2).insert("ab").retain(3);
    assert_eq!(
        sel.transform_with(&at_start, false),
        Selection::new(vec![Range::new(2, 6)])
    );
    assert_eq!(
        sel.transform(&at_start),
        Selection::new(vec![Range::new(4, 6)])
    );
    let at_end = op().retain(4).insert("ab").retain(1);
    assert_eq!(
        sel.transform_with(&at_end, false),
        Selection::new(vec![Range::new(2, 4)])
    );
    assert_eq!(
        sel.transform(&at_end),
        Selection::new(vec![Range::new(2, 6)])
    );
}

#[test]
fn cursors_count_utf16_units() {
    // "😀x", caret after the emoji is offset 2; typing "é" before it moves it by 1, an emoji by 2.
    assert_eq!(transform_index(2, &op().insert("é").retain(3)), 3);
    assert_eq!(transform_index(2, &op().insert("🎉").retain(3)), 4);
    // Deleting the emoji before the caret moves it back by 2.
    assert_eq!(transform_index(3, &op().delete(2).retain(1)), 1);
}

proptest! {
    #![proptest_config(config(256))]

    /// A cursor on a character boundary stays on one, stays within the new document, and
    /// cursors keep their order.
    #[test]
    fn cursors_stay_on_boundaries_and_in_order((d, o) in doc_and_op(), own in any::<bool>()) {
        let after = o.apply(&d).unwrap();
        let mut last = 0;
        let mut pos = 0;
        let mut boundaries = vec![0];
        for c in d.chars() {
            pos += c.len_utf16();
            boundaries.push(pos);
        }
        for p in boundaries {
            let t = transform_cursor(p, &o, own);
            prop_assert!(t <= utf16_len(&after));
            prop_assert!(utf16_to_byte(&after, t).is_ok(), "{} -> {} splits a pair", p, t);
            prop_assert!(t >= last);
            prop_assert!(transform_cursor(p, &o, false) <= transform_index(p, &o));
            last = t;
        }
        prop_assert_eq!(transform_index(utf16_len(&d), &o), o.target_len());
    }
}
