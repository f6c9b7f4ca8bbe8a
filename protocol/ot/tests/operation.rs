//! Unit tests of `TextOperation`, after ot.js's `test-text-operation.js`, plus the UTF-16 rule
//! and the error cases.

use edge_ws_ot::{utf16_len, Component, OtError, TextOperation, MAX_LEN};

fn op() -> TextOperation {
    TextOperation::new()
}

#[test]
fn lengths() {
    let mut o = op();
    assert_eq!((o.base_len(), o.target_len()), (0, 0));
    o = o.retain(5);
    assert_eq!((o.base_len(), o.target_len()), (5, 5));
    o = o.insert("abc");
    assert_eq!((o.base_len(), o.target_len()), (5, 8));
    o = o.retain(2);
    assert_eq!((o.base_len(), o.target_len()), (7, 10));
    o = o.delete(2);
    assert_eq!((o.base_len(), o.target_len()), (9, 10));
}

#[test]
fn lengths_count_utf16_units() {
    let o = op()
        .insert("😀")
        .insert("é")
        .insert("e\u{301}")
        .insert("👩‍👩‍👧");
    assert_eq!(o.target_len(), 2 + 1 + 2 + 8);
    assert_eq!(o.ops(), &[Component::Insert("😀ée\u{301}👩‍👩‍👧".into())]);
}

#[test]
fn chaining_and_empty_components() {
    let o = op()
        .retain(5)
        .retain(0)
        .insert("lorem")
        .insert("")
        .delete(3)
        .delete(3)
        .delete(0);
    assert_eq!(o.ops().len(), 3);
    let empty = op().retain(0).insert("").delete(0);
    assert!(empty.ops().is_empty());
    assert!(empty.is_noop());
}

#[test]
fn equals_after_normalization() {
    let op1 = op().delete(1).insert("lo").retain(2).retain(3);
    let op2 = op().delete(1).insert("l").insert("o").retain(5);
    assert_eq!(op1, op2);
    assert_ne!(op1.clone().delete(1), op2.clone().retain(1));
}

#[test]
fn ops_merging() {
    let mut o = op();
    assert_eq!(o.ops().len(), 0);
    o = o.retain(2);
    assert_eq!(o.ops(), &[Component::Retain(2)]);
    o = o.retain(3);
    assert_eq!(o.ops(), &[Component::Retain(5)]);
    o = o.insert("abc");
    assert_eq!(o.ops().last(), Some(&Component::Insert("abc".into())));
    o = o.insert("xyz");
    assert_eq!(o.ops().len(), 2);
    assert_eq!(o.ops().last(), Some(&Component::Insert("abcxyz".into())));
    o = o.delete(1);
    assert_eq!(o.ops().len(), 3);
    assert_eq!(o.ops().last(), Some(&Component::Delete(1)));
    o = o.delete(1);
    assert_eq!(o.ops().len(), 3);
    assert_eq!(o.ops().last(), Some(&Component::Delete(2)));
}

#[test]
fn insert_goes_before_delete() {
    let o = op().retain(1).delete(3).insert("x");
    assert_eq!(
        o.ops(),
        &[
            Component::Retain(1),
            Component::Insert("x".into()),
            Component::Delete(3)
        ]
    );
    // ... and joins an insert already there.
    let o = op().insert("a").delete(2).insert("b");
    assert_eq!(
        o.ops(),
        &[Component::Insert("ab".into()), Component::Delete(2)]
    );
    assert_eq!(o, op().delete(2).insert("ab"));
}

#[test]
fn push_and_try_from_normalize() {
    let mut o = op();
    o.push(Component::Retain(2));
    o.push(Component::Delete(1));
    o.push(Component::Delete(1));
    o.push(Component::Insert("cde".into()));
    assert_eq!(o, op().retain(2).insert("cde").delete(2));
    let from = TextOperation::try_from(vec![
        Component::Retain(2),
        Component::Delete(1),
        Component::Delete(1),
        Component::Insert("cde".into()),
    ])
    .unwrap();
    assert_eq!(from, o);
    assert_eq!(Vec::from(from).len(), 3);
}

#[test]
fn is_noop() {
    let mut o = op();
    assert!(o.is_noop());
    o = o.retain(5);
    assert!(o.is_noop());
    o = o.retain(3);
    assert!(o.is_noop());
    o = o.insert("lorem");
    assert!(!o.is_noop());
}

#[test]
fn display_is_ot_js_to_string() {
    let o = op().retain(2).insert("lorem").delete(5).retain(5);
    assert_eq!(
        o.to_string(),
        "retain 2, insert 'lorem', delete 5, retain 5"
    );
}

#[test]
fn apply_examples() {
    let o = op().retain(6).delete(5).insert("there");
    assert_eq!(o.apply("hello world").unwrap(), "hello there");
    assert_eq!(op().apply("").unwrap(), "");
    assert_eq!(op().insert("x").apply("").unwrap(), "x");
    assert_eq!(op().delete(2).apply("😀").unwrap(), "");
}

/// What a browser running ot.js sends for typing "!" after the emoji in "😀x": the emoji is two
/// units, so the insert comes after `retain 2`.
#[test]
fn utf16_op_built_as_ot_js_does() {
    let o = TextOperation::from_json(r#"[2,"!",1]"#).unwrap();
    assert_eq!(o.base_len(), 3);
    assert_eq!(o.apply("😀x").unwrap(), "😀!x");
    let family = "👩‍👩‍👧";
    assert_eq!(utf16_len(family), 8);
    let o = op().retain(8).insert("🎉").retain(1);
    assert_eq!(o.apply("👩‍👩‍👧x").unwrap(), "👩‍👩‍👧🎉x");
    // Inside a ZWJ sequence or between a letter and its combining mark is allowed, as in JS.
    let o = op().retain(2).insert("|").retain(6);
    assert_eq!(o.apply(family).unwrap(), "👩|\u{200d}👩\u{200d}👧");
    let o = op().retain(1).insert("|").retain(1);
    assert_eq!(o.apply("e\u{301}").unwrap(), "e|\u{301}");
}

#[test]
fn retain_into_a_surrogate_pair_is_an_error() {
    let o = op().retain(1).insert("x").retain(1);
    assert_eq!(
        o.apply("😀"),
        Err(OtError::SplitsSurrogatePair { position: 1 })
    );
    let o = op().delete(1).retain(1);
    assert_eq!(
        o.apply("😀"),
        Err(OtError::SplitsSurrogatePair { position: 1 })
    );
    let o = op().retain(3).delete(1).retain(2);
    assert_eq!(
        o.apply("ab😀😀"),
        Err(OtError::SplitsSurrogatePair { position: 3 })
    );
    assert_eq!(
        o.invert("ab😀😀"),
        Err(OtError::SplitsSurrogatePair { position: 3 })
    );
}

#[test]
fn base_length_mismatch() {
    let o = op().retain(3).insert("x");
    assert_eq!(
        o.apply("ab"),
        Err(OtError::BaseLengthMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        o.apply("abcd"),
        Err(OtError::BaseLengthMismatch {
            expected: 3,
            actual: 4
        })
    );
    // Three bytes but two units: the length is reported even where a pair is split too.
    assert_eq!(
        op().retain(1).delete(2).apply("😀"),
        Err(OtError::BaseLengthMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        op().retain(1).apply(&"x".repeat(30)),
        Err(OtError::BaseLengthMismatch {
            expected: 1,
            actual: 30
        })
    );
    assert_eq!(
        o.invert("abcd"),
        Err(OtError::BaseLengthMismatch {
            expected: 3,
            actual: 4
        })
    );
}

#[test]
fn compose_example_and_errors() {
    let a = op().retain(3).insert("😀");
    let b = op().retain(2).delete(3);
    assert_eq!(a.compose(&b).unwrap(), op().retain(2).delete(1));
    assert_eq!(
        b.compose(&a),
        Err(OtError::ComposeLengthMismatch {
            first_target: 2,
            second_base: 3
        })
    );
    // The second operation cuts the first one's emoji in half.
    let cut = op().retain(4).insert("|").retain(1);
    assert_eq!(
        a.compose(&cut),
        Err(OtError::SplitsSurrogatePair { position: 4 })
    );
    let cut = op().retain(3).delete(1).retain(1);
    assert_eq!(
        a.compose(&cut),
        Err(OtError::SplitsSurrogatePair { position: 4 })
    );
}

#[test]
fn transform_of_different_base_lengths() {
    let a = op().retain(3);
    let b = op().retain(4);
    assert_eq!(
        a.transform(&b),
        Err(OtError::TransformLengthMismatch { left: 3, right: 4 })
    );
}

#[test]
fn transform_examples() {
    // Both delete overlapping text: each keeps only what the other did not delete.
    let a = op().retain(1).delete(3).retain(2);
    let b = op().retain(2).delete(3).retain(1);
    let (a2, b2) = a.transform(&b).unwrap();
    assert_eq!(a2, op().retain(1).delete(1).retain(1));
    assert_eq!(b2, op().retain(1).delete(1).retain(1));
    assert_eq!(b2.apply(&a.apply("abcdef").unwrap()).unwrap(), "af");
    // Insert inside a range the other deletes survives.
    let a = op().retain(2).insert("X").retain(2);
    let b = op().retain(1).delete(2).retain(1);
    let (a2, b2) = a.transform(&b).unwrap();
    assert_eq!(a2.apply(&b.apply("abcd").unwrap()).unwrap(), "aXd");
    assert_eq!(b2.apply(&a.apply("abcd").unwrap()).unwrap(), "aXd");
}

#[test]
fn lengths_beyond_max_len_are_errors() {
    let mut o = op().retain(MAX_LEN);
    assert_eq!(
        o.try_push(Component::Retain(1)),
        Err(OtError::LengthOverflow)
    );
    assert_eq!(
        o.try_push(Component::Delete(1)),
        Err(OtError::LengthOverflow)
    );
    assert_eq!(
        o.try_push(Component::Insert("x".into())),
        Err(OtError::LengthOverflow)
    );
    assert_eq!(o, op().retain(MAX_LEN), "a failed push changes nothing");
    assert_eq!(
        TextOperation::from_components([Component::Delete(MAX_LEN), Component::Delete(1)]),
        Err(OtError::LengthOverflow)
    );
    // Huge operations against small documents fail fast, without walking or allocating.
    assert!(matches!(
        o.apply("abc"),
        Err(OtError::BaseLengthMismatch { .. })
    ));
    // A transform whose result would be too long.
    let a = op().retain(1).insert("x".repeat(8));
    let b = op().insert("y").retain(1);
    assert!(a.transform(&b).is_ok());
    let big_a = op().insert("x").retain(MAX_LEN - 1);
    let big_b = op().insert("y").retain(MAX_LEN - 1);
    assert_eq!(big_a.transform(&big_b), Err(OtError::LengthOverflow));
}

#[test]
#[should_panic(expected = "exceed")]
fn builder_panics_beyond_max_len() {
    let _ = op().retain(MAX_LEN).retain(1);
}

/// ot.js's testShouldBeComposedWith.
#[test]
fn should_be_composed_with() {
    let a = op().retain(3);
    let b = op().retain(1).insert("tag").retain(2);
    assert!(a.should_be_composed_with(&b));
    assert!(b.should_be_composed_with(&a));

    let a = op().retain(1).insert("a").retain(2);
    let b = op().retain(2).insert("b").retain(2);
    assert!(a.should_be_composed_with(&b));
    let a = a.delete(3);
    assert!(!a.should_be_composed_with(&b));

    let a = op().retain(1).insert("b").retain(2);
    let b = op().retain(1).insert("a").retain(3);
    assert!(!a.should_be_composed_with(&b));

    let a = op().retain(4).delete(3).retain(10);
    let b = op().retain(2).delete(2).retain(10);
    assert!(a.should_be_composed_with(&b));
    let b = op().retain(4).delete(7).retain(3);
    assert!(a.should_be_composed_with(&b));
    let b = op().retain(2).delete(9).retain(3);
    assert!(!a.should_be_composed_with(&b));

    // Typing an emoji then a letter: the next insert starts 2 units later.
    let a = op().retain(1).insert("😀").retain(2);
    assert!(a.should_be_composed_with(&op().retain(3).insert("x").retain(2)));
    assert!(!a.should_be_composed_with(&op().retain(2).insert("x").retain(3)));
}
