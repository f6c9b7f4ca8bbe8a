//! Generators shared by the property tests: documents mixing ASCII, multi-unit characters,
//! combining marks and CJK, and random valid operations on a given document.
#![allow(dead_code)]

use edge_ws_ot::TextOperation;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed};

/// What documents and inserts are made of. Lengths in UTF-16 units: 1, 1, 1, 1, 1, 1, 1
/// (precomposed é), 2 (e + combining acute), 1 (a lone combining mark), 2 (😀), 8 (family
/// ZWJ sequence), 1, 3, 2 (𝄞), 4 (flag), 1, 1.
pub(crate) const PIECES: &[&str] = &[
    "a",
    "b",
    "c",
    "x",
    " ",
    "\n",
    "é",
    "e\u{301}",
    "\u{301}",
    "😀",
    "👩‍👩‍👧",
    "中",
    "日本語",
    "𝄞",
    "🇫🇷",
    "\"",
    "\\",
];

/// A fixed seed and no failure files: the same cases on every run and machine.
pub(crate) fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x07_5eed),
        failure_persistence: None,
        ..Config::default()
    }
}

pub(crate) fn text(max_pieces: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(PIECES), 0..=max_pieces).prop_map(|v| v.concat())
}

pub(crate) fn doc() -> impl Strategy<Value = String> {
    text(24)
}

/// One step of an operation script; counts are in characters (code points), so a script
/// turned into an operation never splits a surrogate pair.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Retain(usize),
    Delete(usize),
    Insert(String),
}

pub(crate) fn script() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (1..5usize).prop_map(Step::Retain),
        2 => (1..5usize).prop_map(Step::Delete),
        2 => text(3).prop_map(Step::Insert),
    ];
    prop::collection::vec(step, 0..10)
}

/// The operation `script` describes on `doc`: counts clamp to what is left, and whatever the
/// script leaves over is retained.
pub(crate) fn operation(doc: &str, script: &[Step]) -> TextOperation {
    let mut chars = doc.chars();
    let mut op = TextOperation::new();
    for step in script {
        match step {
            Step::Retain(k) => op = op.retain(chars.by_ref().take(*k).map(char::len_utf16).sum()),
            Step::Delete(k) => op = op.delete(chars.by_ref().take(*k).map(char::len_utf16).sum()),
            Step::Insert(s) => op = op.insert(s.as_str()),
        }
    }
    op.retain(chars.map(char::len_utf16).sum())
}

/// A document and a valid operation on it.
pub(crate) fn doc_and_op() -> impl Strategy<Value = (String, TextOperation)> {
    (doc(), script()).prop_map(|(d, s)| {
        let op = operation(&d, &s);
        (d, op)
    })
}

/// What [`reference_apply`] makes of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    Applied(String),
    WrongLength,
    SplitsPair,
}

/// Reference semantics on UTF-16 code units (a `Vec<u16>`), independent of the crate's UTF-8
/// walking: the components need not be normalized.
pub(crate) fn reference_apply(doc: &str, components: &[edge_ws_ot::Component]) -> Reference {
    use edge_ws_ot::Component;
    let units: Vec<u16> = doc.encode_utf16().collect();
    let base: usize = components.iter().map(Component::base_len).sum();
    if base != units.len() {
        return Reference::WrongLength;
    }
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let mut out = Vec::new();
    let mut i = 0;
    for c in components {
        match c {
            Component::Retain(n) => {
                out.extend_from_slice(&units[i..i + n]);
                i += n;
            }
            Component::Insert(s) => out.extend(s.encode_utf16()),
            Component::Delete(n) => i += n,
        }
        if i > 0 && i < units.len() && is_high(units[i - 1]) {
            return Reference::SplitsPair;
        }
    }
    Reference::Applied(String::from_utf16(&out).expect("no split pair, so valid UTF-16"))
}

/// Longer documents (up to ~2 KB) and operations with long runs, for the block-wise UTF-16
/// walk (64- and 16-byte blocks, blocks ending inside a character).
pub(crate) fn long_doc_and_op() -> impl Strategy<Value = (String, TextOperation)> {
    let step = prop_oneof![
        3 => (1..300usize).prop_map(Step::Retain),
        2 => (1..80usize).prop_map(Step::Delete),
        2 => text(3).prop_map(Step::Insert),
    ];
    (text(400), prop::collection::vec(step, 0..8)).prop_map(|(d, s)| {
        let op = operation(&d, &s);
        (d, op)
    })
}
