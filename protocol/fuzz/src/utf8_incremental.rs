//! `Utf8Validator` fed in arbitrary pieces must agree with `std::str::from_utf8` on the whole
//! input, fail fast (on exactly the piece that holds the first byte after which no valid
//! continuation exists), and report `is_incomplete` exactly when the bytes so far end inside a
//! sequence. A validator that failed or finished is reused for a second message.

use arbitrary::Arbitrary;
use edge_ws_protocol::utf8::Utf8Validator;

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Piece lengths (taken modulo what is left; 0 feeds an empty piece).
    splits: Vec<u8>,
    data: Vec<u8>,
    /// A second message, validated with the same validator after the first.
    second: Vec<u8>,
}

/// The index of the first byte at which `data` stops being a prefix of valid UTF-8, if any.
fn first_fatal_byte(data: &[u8]) -> Option<usize> {
    let err = core::str::from_utf8(data).err()?;
    err.error_len()?;
    let v = err.valid_up_to();
    // The invalid sequence starts at `v`; it is known to be invalid within its first 4 bytes.
    (v..data.len().min(v + 4)).find(|&i| {
        core::str::from_utf8(&data[..=i])
            .err()
            .is_some_and(|e| e.error_len().is_some())
    })
}

/// Feeds `data` in pieces; checks the fail-fast point and `is_incomplete`; returns the verdict.
fn check(v: &mut Utf8Validator, data: &[u8], splits: &[u8]) -> bool {
    let fatal = first_fatal_byte(data);
    let mut pos = 0;
    let mut sizes = splits.iter();
    loop {
        let left = data.len() - pos;
        let n = match sizes.next() {
            Some(&s) => usize::from(s) % (left + 1),
            None => left,
        };
        let piece = &data[pos..pos + n];
        let result = v.feed(piece);
        let end = pos + n;
        match fatal {
            Some(f) if f < end => {
                assert!(
                    result.is_err(),
                    "piece {pos}..{end} holds fatal byte {f} but was accepted"
                );
                v.reset();
                return false;
            }
            _ => assert!(
                result.is_ok(),
                "piece {pos}..{end} rejected but the first fatal byte is {fatal:?}"
            ),
        }
        let incomplete = core::str::from_utf8(&data[..end]).is_err();
        assert_eq!(
            v.is_incomplete(),
            incomplete,
            "is_incomplete after {end} bytes"
        );
        pos = end;
        if pos == data.len() && sizes.len() == 0 {
            break;
        }
        if pos == data.len() {
            // Feed the remaining (empty) pieces too: an empty piece must change nothing.
            continue;
        }
    }
    v.finish().is_ok()
}

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
    let mut v = Utf8Validator::new();
    let ok = check(&mut v, &input.data, &input.splits);
    assert_eq!(
        ok,
        core::str::from_utf8(&input.data).is_ok(),
        "first message"
    );
    // Same validator, next message (after finish or reset).
    let ok = check(&mut v, &input.second, &input.splits);
    assert_eq!(
        ok,
        core::str::from_utf8(&input.second).is_ok(),
        "second message"
    );
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

crate::encode_struct!(Input { splits, data ; second });

fn case(data: &[u8], splits: &[u8], second: &[u8]) -> Input {
    Input {
        splits: splits.to_vec(),
        data: data.to_vec(),
        second: second.to_vec(),
    }
}

/// UTF-8 edge cases: every sequence length cut at every point, the classic invalid forms
/// (overlong, surrogate, above U+10FFFF, bad continuation, bad lead), incomplete tails, reuse.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let mixed = "a\u{e9}\u{20ac}\u{1f600}z".as_bytes();
    vec![
        ("ascii", case(b"Hello, world", &[5], b"")),
        (
            "two-byte-split",
            case("caf\u{e9}".as_bytes(), &[4], "\u{e9}".as_bytes()),
        ),
        (
            "three-byte-byte-at-a-time",
            case("\u{20ac}".as_bytes(), &[1, 1, 1], "\u{20ac}uro".as_bytes()),
        ),
        (
            "four-byte-splits",
            case(
                "\u{1f600}".as_bytes(),
                &[2, 1],
                "\u{10ffff}\u{10000}".as_bytes(),
            ),
        ),
        (
            "incomplete-tail",
            case(&[b'a', b'b', 0xe2, 0x82], &[3], b"ok"),
        ),
        ("overlong", case(&[0xc0, 0x80], &[1], &[0xe0, 0x80, 0xaf])),
        (
            "surrogate",
            case(&[0xed, 0xa0, 0x80], &[2], &[0xed, 0x9f, 0xbf]),
        ),
        (
            "above-max",
            case(
                &[0xf4, 0x90, 0x80, 0x80],
                &[1, 2],
                &[0xf4, 0x8f, 0xbf, 0xbf],
            ),
        ),
        (
            "bad-continuation",
            case(&[0xe2, 0x28, 0xa1], &[1], &[0xf0, 0x9f, 0x98, b'a']),
        ),
        (
            "bad-lead-bytes",
            case(&[b'x', 0xf5, 0x80, 0x80, 0x80], &[], &[0xff]),
        ),
        ("mixed-one-byte-pieces", case(mixed, &[1; 12], mixed)),
        (
            "lone-continuation",
            case(&[0xc3, 0xa9, 0xa9], &[2], &[0x80]),
        ),
        ("empty-pieces", case(b"", &[0, 0, 0], b"")),
        (
            "incomplete-then-reuse",
            case(&[0xf0, 0x9f, 0x98], &[1, 0, 2], "\u{e9}\u{20ac}".as_bytes()),
        ),
    ]
}
