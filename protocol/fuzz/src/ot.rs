//! Operational transform laws: `edge_ws_ot::fuzzing::check` derives a document (ASCII, accents,
//! combining marks, surrogate pairs, ZWJ sequences, flags, JSON-hostile characters) and
//! concurrent operations on it from the input, and checks TP1 (`transform`), compose against
//! sequential apply, `invert` (and undo grouping), the JSON round trip against `serde_json`,
//! cursor and selection transforms, and that operations built from raw counts and the input's
//! tail parsed as JSON give errors, never panics or wrong results.
//!
//! The input is a plain byte string (no `Arbitrary` type): every byte string is a valid input.
//! The same function runs over pseudo-random inputs in `protocol/ot/tests/fuzz_check.rs`.

/// The target: checks one input, panicking on any failed check.
pub fn run(data: &[u8]) {
    edge_ws_ot::fuzzing::check(data);
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------
//
// The builder below writes the byte layout `check` reads: a document (a piece count, piece
// indices, a repeat count), operations `a` and `b` on it and `c` on `a`'s result (per step a
// kind byte, for a long run its length, for an insert its text; then an optional trailing
// insert), a cursor, raw components, and the rest as JSON. Any byte string is a valid input, so
// a change of that layout only makes these seeds less pointed.

/// Characters per piece of `check`'s piece table, by index: "a", "b", "z", " ", "\n", "é",
/// "e◌́", "◌́", "😀", "👩‍👩‍👧", "中", "文字", "𝄞", ZWJ, "🇫🇷", `"\`, U+0001, "ß".
const PIECE_CHARS: [usize; 18] = [1, 1, 1, 1, 1, 1, 2, 1, 1, 5, 1, 2, 1, 1, 2, 2, 1, 1];

// Piece indices used below.
const A: u8 = 0;
const B: u8 = 1;
const SPACE: u8 = 3;
const NEWLINE: u8 = 4;
const E_ACUTE: u8 = 5;
const E_COMBINING: u8 = 6;
const COMBINING: u8 = 7;
const GRIN: u8 = 8;
const FAMILY: u8 = 9;
const ZHONG: u8 = 10;
const CLEF: u8 = 12;
const ZWJ: u8 = 13;
const FLAG: u8 = 14;
const QUOTE_BACKSLASH: u8 = 15;
const CONTROL: u8 = 16;

/// One step of an operation: it covers `k` characters of the document (1..=4 short, up to 200
/// as a long run).
#[derive(Clone, Copy)]
enum Step<'a> {
    Retain(usize),
    Delete(usize),
    /// Inserts these pieces (at most 3), then retains `k` characters.
    Insert(&'a [u8], usize),
}

/// A raw component (lengths 0..=5, no care for the document).
enum Raw<'a> {
    Retain(u8),
    Delete(u8),
    Insert(&'a [u8]),
}

struct Seed {
    bytes: Vec<u8>,
    /// Characters of the document and of `a`'s result.
    doc: usize,
    after_a: usize,
}

fn chars(pieces: &[u8]) -> usize {
    pieces.iter().map(|&p| PIECE_CHARS[usize::from(p)]).sum()
}

impl Seed {
    /// The document: `pieces` (at most 24) repeated `repeat` (1..=8) times.
    fn new(pieces: &[u8], repeat: u8) -> Self {
        assert!(pieces.len() <= 24 && (1..=8).contains(&repeat));
        let mut s = Seed {
            bytes: Vec::new(),
            doc: chars(pieces) * usize::from(repeat),
            after_a: 0,
        };
        s.text(pieces, 24);
        s.bytes.push(repeat - 1);
        s
    }

    fn text(&mut self, pieces: &[u8], max: usize) {
        assert!(pieces.len() <= max);
        self.bytes.push(pieces.len() as u8);
        self.bytes.extend_from_slice(pieces);
    }

    /// One operation over a document of `len` characters; returns its result's length.
    fn op(&mut self, len: usize, steps: &[Step<'_>], tail: Option<&[u8]>) -> usize {
        let (mut at, mut out) = (0, 0);
        for &step in steps {
            assert!(at < len, "a step after the end of the document");
            let (t, k, insert) = match step {
                Step::Retain(k) => (0, k, None),
                Step::Delete(k) => (1, k, None),
                Step::Insert(p, k) => (2, k, Some(p)),
            };
            if (1..=4).contains(&k) {
                self.bytes.push(((k - 1) as u8) << 4 | t);
            } else {
                assert!((1..=200).contains(&k));
                self.bytes.extend([0xc0 | t, (k - 1) as u8]);
            }
            let covered = k.min(len - at);
            at += covered;
            if t != 1 {
                out += covered;
            }
            if let Some(p) = insert {
                self.text(p, 3);
                out += chars(p);
            }
        }
        assert_eq!(at, len, "the steps do not cover the document");
        match tail {
            Some(p) => {
                self.bytes.push(1);
                self.text(p, 3);
                out += chars(p);
            }
            None => self.bytes.push(0),
        }
        out
    }

    /// Operations `a` and `b` on the document.
    fn concurrent(mut self, a: &[Step<'_>], a_tail: Option<&[u8]>, b: &[Step<'_>]) -> Self {
        self.after_a = self.op(self.doc, a, a_tail);
        self.op(self.doc, b, None);
        self
    }

    /// Operation `c` on `a`'s result, then the cursor byte.
    fn then(mut self, c: &[Step<'_>], cursor: u8) -> Self {
        if self.after_a > 0 {
            self.op(self.after_a, c, None);
        } else {
            assert!(c.is_empty());
            self.bytes.push(0);
        }
        self.bytes.push(cursor);
        self
    }

    /// The raw components (at most 5), then the JSON tail.
    fn raw(mut self, raw: &[Raw<'_>], json: &[u8]) -> Vec<u8> {
        assert!(raw.len() <= 5);
        self.bytes.push(raw.len() as u8);
        for r in raw {
            match *r {
                Raw::Retain(n) => self.bytes.extend([n, 0]),
                Raw::Delete(n) => self.bytes.extend([n, 1]),
                Raw::Insert(p) => {
                    self.bytes.extend([0, 2]);
                    self.text(p, 2);
                }
            }
        }
        self.bytes.extend_from_slice(json);
        self.bytes
    }
}

/// Hand-built inputs: plain and emoji-dense documents, deletes and inserts across surrogate
/// pairs and ZWJ sequences, long runs over a repeated document, raw components of the wrong
/// length, valid and malformed JSON tails.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Step::{Delete, Insert, Retain};
    vec![
        ("empty", Vec::new()),
        ("all-ff", vec![0xff; 64]),
        (
            "ascii-insert-vs-delete",
            Seed::new(&[A, B, SPACE, A, NEWLINE], 1)
                .concurrent(&[Retain(2), Insert(&[B], 3)], None, &[Delete(1), Retain(4)])
                .then(&[Retain(4), Delete(2)], 3)
                .raw(&[], b"[2,\"x\",-1,2]"),
        ),
        (
            "emoji-pairs-and-zwj",
            Seed::new(&[GRIN, FAMILY, A, FLAG, CLEF, ZWJ, E_ACUTE], 1)
                .concurrent(
                    &[Retain(1), Delete(3), Insert(&[GRIN, ZWJ], 4), Retain(4)],
                    Some(&[FLAG]),
                    &[Insert(&[CLEF, CLEF, FAMILY], 4), Delete(4), Retain(4)],
                )
                .then(&[Delete(2), Retain(4), Insert(&[A], 4), Retain(4)], 7)
                .raw(
                    &[Raw::Retain(1), Raw::Insert(&[GRIN]), Raw::Delete(1)],
                    "[1,\"\u{1f600}\",-2]".as_bytes(),
                ),
        ),
        (
            "combining-marks-and-cjk",
            Seed::new(&[E_COMBINING, COMBINING, ZHONG, 11, 17, COMBINING], 2)
                .concurrent(
                    &[
                        Delete(2),
                        Retain(4),
                        Insert(&[COMBINING], 4),
                        Retain(4),
                        Retain(2),
                    ],
                    None,
                    &[Retain(4), Insert(&[ZHONG, 11], 4), Delete(4), Retain(4)],
                )
                .then(&[Retain(4), Retain(4), Delete(4), Retain(4)], 5)
                .raw(&[], b"[-1,\"e\\u0301\",3]"),
        ),
        (
            "long-runs-repeated-doc",
            Seed::new(
                &[
                    A,
                    GRIN,
                    B,
                    FAMILY,
                    SPACE,
                    FLAG,
                    ZHONG,
                    CLEF,
                    NEWLINE,
                    E_ACUTE,
                    A,
                    B,
                    A,
                    B,
                    QUOTE_BACKSLASH,
                    CONTROL,
                    A,
                    GRIN,
                    A,
                    GRIN,
                    A,
                    GRIN,
                    A,
                    B,
                ],
                8,
            )
            .concurrent(
                &[Retain(150), Delete(60), Insert(&[FAMILY], 20), Retain(10)],
                Some(&[GRIN, GRIN]),
                &[Delete(200), Insert(&[A, A, A], 39), Delete(1)],
            )
            .then(&[Retain(100), Delete(87)], 200)
            .raw(&[], b""),
        ),
        (
            "raw-wrong-length-and-split-pairs",
            Seed::new(&[GRIN, CLEF, A], 1)
                .concurrent(&[Retain(3)], None, &[Delete(1), Retain(2)])
                .then(&[Retain(3)], 1)
                .raw(
                    &[
                        Raw::Retain(1),
                        Raw::Delete(2),
                        Raw::Insert(&[FAMILY, FLAG]),
                        Raw::Retain(5),
                    ],
                    b"[1,-1]",
                ),
        ),
        (
            "json-malformed",
            Seed::new(&[A, B], 1)
                .concurrent(&[Retain(2)], None, &[Retain(2)])
                .then(&[Retain(2)], 0)
                .raw(
                    &[Raw::Delete(3)],
                    b"[1.5,{},\"\\ud83d\",-0,9007199254740993",
                ),
        ),
        (
            "json-lone-surrogate-escape",
            Seed::new(&[GRIN], 1)
                .concurrent(&[Delete(1)], Some(&[A]), &[Insert(&[B], 1)])
                .then(&[Retain(1)], 0)
                .raw(&[], b"[\"\\ud83d\",1]"),
        ),
        (
            "delete-everything",
            Seed::new(&[QUOTE_BACKSLASH, CONTROL, FAMILY], 3)
                .concurrent(&[Delete(200)], None, &[Insert(&[QUOTE_BACKSLASH], 200)])
                .then(&[], 0)
                .raw(&[Raw::Retain(0), Raw::Insert(&[])], b"[]"),
        ),
    ]
}
