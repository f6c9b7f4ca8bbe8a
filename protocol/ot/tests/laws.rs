//! Property tests of the OT laws on documents full of multi-unit characters: TP1, compose,
//! invert, JSON round trip, normal form, and agreement with a UTF-16 reference model.

mod common;

use common::{
    config, doc, doc_and_op, long_doc_and_op, operation, reference_apply, script, text, Reference,
};
use edge_ws_ot::{utf16_len, Component, OtError, TextOperation};
use proptest::prelude::*;

/// ot.js's normal form: no empty components, no neighbours of one kind, no delete before an
/// insert.
fn assert_normal(op: &TextOperation) {
    for c in op.ops() {
        match c {
            Component::Retain(n) | Component::Delete(n) => assert_ne!(*n, 0, "{op}"),
            Component::Insert(s) => assert!(!s.is_empty(), "{op}"),
        }
    }
    for w in op.ops().windows(2) {
        let same = std::mem::discriminant(&w[0]) == std::mem::discriminant(&w[1]);
        assert!(!same, "adjacent components of one kind in {op}");
        assert!(
            !(w[0].is_delete() && w[1].is_insert()),
            "delete before insert in {op}"
        );
    }
    let base: usize = op.ops().iter().map(Component::base_len).sum();
    let target: usize = op.ops().iter().map(Component::target_len).sum();
    assert_eq!((op.base_len(), op.target_len()), (base, target), "{op}");
}

fn raw_component() -> impl Strategy<Value = Component> {
    prop_oneof![
        (0..6usize).prop_map(Component::Retain),
        (0..6usize).prop_map(Component::Delete),
        text(2).prop_map(Component::Insert),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn apply_gives_target_length((d, op) in doc_and_op()) {
        prop_assert_eq!(op.base_len(), utf16_len(&d));
        let out = op.apply(&d).unwrap();
        prop_assert_eq!(utf16_len(&out), op.target_len());
        assert_normal(&op);
    }

    #[test]
    fn apply_agrees_with_utf16_reference((d, op) in doc_and_op()) {
        prop_assert_eq!(reference_apply(&d, op.ops()), Reference::Applied(op.apply(&d).unwrap()));
    }

    #[test]
    fn tp1(d in doc(), sa in script(), sb in script()) {
        let a = operation(&d, &sa);
        let b = operation(&d, &sb);
        let (a2, b2) = a.transform(&b).unwrap();
        let via_a = b2.apply(&a.apply(&d).unwrap()).unwrap();
        let via_b = a2.apply(&b.apply(&d).unwrap()).unwrap();
        prop_assert_eq!(&via_a, &via_b);
        // ot.js's own test: the composed operations are equal, not only their results.
        prop_assert_eq!(a.compose(&b2).unwrap(), b.compose(&a2).unwrap());
        assert_normal(&a2);
        assert_normal(&b2);
    }

    #[test]
    fn transform_insert_tie_puts_left_first(d in doc(), pos in 0..25usize, x in text(2), y in text(2)) {
        prop_assume!(!x.is_empty() && !y.is_empty());
        let chars: Vec<char> = d.chars().collect();
        let pos = pos.min(chars.len());
        let before: usize = chars[..pos].iter().map(|c| c.len_utf16()).sum();
        let rest = utf16_len(&d) - before;
        let a = TextOperation::new().retain(before).insert(x.as_str()).retain(rest);
        let b = TextOperation::new().retain(before).insert(y.as_str()).retain(rest);
        let (a2, b2) = a.transform(&b).unwrap();
        let head: String = chars[..pos].iter().collect();
        let tail: String = chars[pos..].iter().collect();
        let expected = format!("{head}{x}{y}{tail}");
        prop_assert_eq!(b2.apply(&a.apply(&d).unwrap()).unwrap(), expected.clone());
        prop_assert_eq!(a2.apply(&b.apply(&d).unwrap()).unwrap(), expected);
    }

    #[test]
    fn compose_is_sequential_apply(d in doc(), sa in script(), sb in script()) {
        let a = operation(&d, &sa);
        let after_a = a.apply(&d).unwrap();
        let b = operation(&after_a, &sb);
        let ab = a.compose(&b).unwrap();
        prop_assert_eq!((ab.base_len(), ab.target_len()), (a.base_len(), b.target_len()));
        prop_assert_eq!(ab.apply(&d).unwrap(), b.apply(&after_a).unwrap());
        assert_normal(&ab);
    }

    #[test]
    fn compose_is_associative(d in doc(), sa in script(), sb in script(), sc in script()) {
        let a = operation(&d, &sa);
        let d1 = a.apply(&d).unwrap();
        let b = operation(&d1, &sb);
        let d2 = b.apply(&d1).unwrap();
        let c = operation(&d2, &sc);
        let left = a.compose(&b).unwrap().compose(&c).unwrap();
        let right = a.compose(&b.compose(&c).unwrap()).unwrap();
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(left.apply(&d).unwrap(), c.apply(&d2).unwrap());
    }

    #[test]
    fn invert_undoes((d, op) in doc_and_op()) {
        let inv = op.invert(&d).unwrap();
        prop_assert_eq!((inv.base_len(), inv.target_len()), (op.target_len(), op.base_len()));
        let after = op.apply(&d).unwrap();
        prop_assert_eq!(inv.apply(&after).unwrap(), d);
        prop_assert_eq!(inv.invert(&after).unwrap(), op);
        assert_normal(&inv);
    }

    /// ot.js's testShouldBeComposedWithInverted.
    #[test]
    fn should_be_composed_with_inverted(d in doc(), sa in script(), sb in script()) {
        let a = operation(&d, &sa);
        let a_inv = a.invert(&d).unwrap();
        let after_a = a.apply(&d).unwrap();
        let b = operation(&after_a, &sb);
        let b_inv = b.invert(&after_a).unwrap();
        prop_assert_eq!(
            a.should_be_composed_with(&b),
            b_inv.should_be_composed_with_inverted(&a_inv)
        );
    }

    #[test]
    fn json_round_trip((_d, op) in doc_and_op()) {
        let json = op.to_json();
        prop_assert_eq!(&json, &serde_json::to_string(&op).unwrap());
        prop_assert_eq!(&TextOperation::from_json(&json).unwrap(), &op);
        prop_assert_eq!(&serde_json::from_str::<TextOperation>(&json).unwrap(), &op);
        // The shape ot.js produces: positive ints, strings, negative ints, nothing else.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let items = value.as_array().unwrap();
        prop_assert_eq!(items.len(), op.ops().len());
        for (item, c) in items.iter().zip(op.ops()) {
            match c {
                Component::Retain(n) => prop_assert_eq!(item.as_u64(), Some(*n as u64)),
                Component::Insert(s) => prop_assert_eq!(item.as_str(), Some(s.as_str())),
                Component::Delete(n) => prop_assert_eq!(item.as_i64(), Some(-(*n as i64))),
            }
        }
    }

    /// Building from arbitrary (unnormalized, possibly invalid) components: the result is in
    /// normal form, applies exactly when the UTF-16 model says it does, and does what the
    /// unnormalized components do.
    #[test]
    fn normalization_and_reference(d in doc(), raw in prop::collection::vec(raw_component(), 0..12)) {
        let op = TextOperation::from_components(raw.clone()).unwrap();
        assert_normal(&op);
        let mine = op.apply(&d);
        match reference_apply(&d, op.ops()) {
            Reference::Applied(s) => prop_assert_eq!(mine, Ok(s)),
            Reference::WrongLength => {
                let is_mismatch = matches!(mine, Err(OtError::BaseLengthMismatch { .. }));
                prop_assert!(is_mismatch, "{:?}", mine);
            }
            Reference::SplitsPair => {
                let is_split = matches!(mine, Err(OtError::SplitsSurrogatePair { .. }));
                prop_assert!(is_split, "{:?}", mine);
            }
        }
        if let Reference::Applied(s) = reference_apply(&d, &raw) {
            prop_assert_eq!(op.apply(&d).unwrap(), s);
        }
        // The wire form normalizes the same way (zero counts are not valid on the wire).
        let wire: Vec<serde_json::Value> = raw
            .iter()
            .filter(|c| c.base_len() > 0 || c.is_insert())
            .map(|c| match c {
                Component::Retain(n) => serde_json::json!(n),
                Component::Insert(s) => serde_json::json!(s),
                Component::Delete(n) => serde_json::json!(-(*n as i64)),
            })
            .collect();
        let json = serde_json::Value::Array(wire).to_string();
        prop_assert_eq!(TextOperation::from_json(&json).unwrap(), op);
    }

    /// Applying with the boundary exactly where the reference model puts a split pair must
    /// report the split's offset.
    #[test]
    fn split_position_is_reported(prefix in text(6), suffix in text(6)) {
        let d = format!("{prefix}😀{suffix}");
        let at = utf16_len(&prefix) + 1;
        let op = TextOperation::new().retain(at).insert("!").retain(utf16_len(&d) - at);
        prop_assert_eq!(op.apply(&d), Err(OtError::SplitsSurrogatePair { position: at }));
        let del = TextOperation::new().retain(at - 1).delete(1).retain(utf16_len(&d) - at);
        prop_assert_eq!(del.apply(&d), Err(OtError::SplitsSurrogatePair { position: at }));
        prop_assert_eq!(del.invert(&d), Err(OtError::SplitsSurrogatePair { position: at }));
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn long_documents((d, a) in long_doc_and_op(), (_, b) in long_doc_and_op()) {
        prop_assert_eq!(reference_apply(&d, a.ops()), Reference::Applied(a.apply(&d).unwrap()));
        let inv = a.invert(&d).unwrap();
        prop_assert_eq!(inv.apply(&a.apply(&d).unwrap()).unwrap(), d.clone());
        // `b` was made on another document; rebuild it on this one from its shape.
        let b = TextOperation::from_components(b.into_ops().into_iter().map(|c| match c {
            Component::Insert(s) => Component::Insert(s),
            _ => Component::Retain(0),
        }))
        .unwrap()
        .retain(utf16_len(&d));
        let (a2, b2) = a.transform(&b).unwrap();
        prop_assert_eq!(
            b2.apply(&a.apply(&d).unwrap()).unwrap(),
            a2.apply(&b.apply(&d).unwrap()).unwrap()
        );
        // A split right after every surrogate pair's first half is reported there.
        let mut unit = 0;
        for c in d.chars().take(200) {
            if c.len_utf16() == 2 {
                let op = TextOperation::new().retain(unit + 1).delete(utf16_len(&d) - unit - 1);
                prop_assert_eq!(op.apply(&d), Err(OtError::SplitsSurrogatePair { position: unit + 1 }));
            }
            unit += c.len_utf16();
        }
    }
}
