//! ot.js's JSON wire form: exact examples, normalization on input, and malformed input.

use edge_ws_ot::{Component, OtError, Range, Selection, TextOperation, MAX_LEN};

fn op() -> TextOperation {
    TextOperation::new()
}

#[test]
fn exact_wire_examples() {
    let cases: &[(TextOperation, &str)] = &[
        (op(), "[]"),
        (op().retain(1).insert("abc").delete(2), r#"[1,"abc",-2]"#),
        (op().retain(2).insert("😀").retain(1), r#"[2,"😀",1]"#),
        (op().delete(2), "[-2]"),
        (
            op().insert("\"quoted\"\n\\\u{1}"),
            r#"["\"quoted\"\n\\\u0001"]"#,
        ),
        (op().retain(MAX_LEN), "[9007199254740991]"),
    ];
    for (o, json) in cases {
        assert_eq!(&o.to_json(), json);
        assert_eq!(&serde_json::to_string(o).unwrap(), json);
        assert_eq!(&TextOperation::from_json(json).unwrap(), o);
    }
}

#[test]
fn input_is_normalized_like_ot_js_from_json() {
    // ot.js's testFromJSON: [2, -1, -1, 'cde'] → 3 ops, base 4, target 5.
    let o = TextOperation::from_json(r#"[2,-1,-1,"cde"]"#).unwrap();
    assert_eq!(o.ops().len(), 3);
    assert_eq!((o.base_len(), o.target_len()), (4, 5));
    assert_eq!(o.to_json(), r#"[2,"cde",-2]"#);
    // Empty strings are no-ops in ot.js too; neighbours merge.
    let o = TextOperation::from_json(r#"["",1,1,"a","b",""]"#).unwrap();
    assert_eq!(
        o.ops(),
        &[Component::Retain(2), Component::Insert("ab".into())]
    );
    // Surrounding whitespace and escapes are fine.
    let o = TextOperation::from_json(" [ 1 , \"\\ud83d\\ude00\" ] ").unwrap();
    assert_eq!(o, op().retain(1).insert("😀"));
    // Integers written with an exponent or a fraction part are floats in JSON: rejected.
    assert!(TextOperation::from_json("[1e2]").is_err());
}

fn malformed(json: &str) -> String {
    match TextOperation::from_json(json) {
        Err(OtError::Malformed { message }) => message,
        other => panic!("{json}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn malformed_input_is_an_error() {
    for (json, needle) in [
        ("[0]", "0 is not an operation component"),
        ("[-0]", "floating point"), // serde_json reads -0 as a float
        ("[1.5]", "floating point"),
        ("[1.0]", "floating point"),
        ("[-2.5]", "floating point"),
        ("[{}]", "map"),
        (r#"[{"insert":"x"}]"#, "map"),
        ("[null]", "null"),
        ("[true]", "boolean"),
        ("[[1]]", "sequence"),
        (r#""x""#, "string"),
        ("{}", "map"),
        ("1", "integer"),
        ("null", "null"),
        ("", "EOF"),
        ("[1,", "EOF"),
        ("[1] [2]", "trailing"),
        ("[9007199254740992]", "exceeds"),
        ("[-9007199254740992]", "exceeds"),
        ("[18446744073709551615]", "exceeds"),
        ("[18446744073709551616]", "floating point"),
        ("[9007199254740991,1]", "exceed"),
        ("[-9007199254740991,-1]", "exceed"),
        // A lone surrogate is a valid JS string but cannot be a Rust `String`: rejected.
        ("[\"\\ud83d\"]", "escape"),
        ("[\"\\ude00x\"]", "surrogate"),
    ] {
        let message = malformed(json);
        assert!(
            message.contains(needle),
            "{json}: message {message:?} lacks {needle:?}"
        );
    }
    // The ot.js test: a valid prefix followed by garbage.
    assert!(TextOperation::from_json(r#"[2,-1,-1,"cde",{"insert":"x"}]"#).is_err());
    assert!(TextOperation::from_json(r#"[2,-1,-1,"cde",null]"#).is_err());
}

#[test]
fn component_serde() {
    assert_eq!(serde_json::to_string(&Component::Retain(3)).unwrap(), "3");
    assert_eq!(serde_json::to_string(&Component::Delete(3)).unwrap(), "-3");
    assert_eq!(
        serde_json::to_string(&Component::Insert("a".into())).unwrap(),
        r#""a""#
    );
    assert_eq!(
        serde_json::from_str::<Component>("-7").unwrap(),
        Component::Delete(7)
    );
    assert!(serde_json::from_str::<Component>("0").is_err());
    // A lone component beyond what an operation can hold does not serialize to a wrong value.
    assert!(serde_json::to_string(&Component::Delete(usize::MAX)).is_err());
    assert!(serde_json::to_string(&Component::Retain(MAX_LEN + 1)).is_err());
}

#[test]
fn selection_wire_form() {
    // ot.js's testFromJSON.
    let sel = Selection::from_json(r#"{"ranges":[{"anchor":3,"head":5},{"anchor":11,"head":23}]}"#)
        .unwrap();
    assert_eq!(sel.ranges, vec![Range::new(3, 5), Range::new(11, 23)]);
    let json = r#"{"ranges":[{"anchor":3,"head":5},{"anchor":11,"head":23}]}"#;
    assert_eq!(sel.to_json(), json);
    assert_eq!(serde_json::to_string(&sel).unwrap(), json);
    assert_eq!(Selection::default().to_json(), r#"{"ranges":[]}"#);
    for bad in [
        r#"{"ranges":[{"anchor":-1,"head":0}]}"#,
        r#"{"ranges":[{"anchor":1.5,"head":0}]}"#,
        r#"{"ranges":[{"anchor":1}]}"#,
        r#"{"ranges":{}}"#,
        "[]",
        "",
    ] {
        assert!(
            matches!(Selection::from_json(bad), Err(OtError::Malformed { .. })),
            "{bad}"
        );
    }
}
