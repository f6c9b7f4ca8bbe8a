//! Writing a structured input as the exact bytes that `arbitrary` decodes back into it.
//!
//! The targets decode their input with `Input::arbitrary_take_rest(Unstructured::new(bytes))`
//! (what `libfuzzer_sys::fuzz_target!` does), so a seed file is that byte string. This module
//! mirrors the decoding rules of `arbitrary` 1.x (checked against 1.5, see `Cargo.lock`):
//!
//! - integers: `size_of` bytes, little-endian; `usize` as `u64`; `bool`: one byte, `& 1`;
//! - arrays and tuples: their elements in order;
//! - `Option<T>`: a `bool`, then `T` when `true`;
//! - `Vec<T>`: per element a `true` byte, then the element; a `false` byte ends it (the same
//!   when taking the rest of the input);
//! - `String`: a byte length read from the **end** of the data (1, 2 or 4 bytes depending on
//!   how much data is left, big-endian, modulo what is left), then the bytes; when taking the
//!   rest of the input: all remaining bytes, no length;
//! - derived structs: fields in order, the last one taking the rest at the top level;
//! - derived enums: a `u32` `x`, the variant is `(x * variants) >> 32`, then its fields.
//!
//! [`encode_seed`] checks every seed by decoding it back and comparing the `Debug` forms, so a
//! change in `arbitrary`'s format fails loudly instead of writing seeds that mean something
//! else.

use arbitrary::{Arbitrary, Unstructured};
use core::fmt::Debug;

/// One item of the byte string being built: bytes read from the front, or a byte length read
/// from the end.
#[derive(Debug)]
enum Op {
    Front(Vec<u8>),
    Len(usize),
}

/// Collects what a decoder will read, in reading order; [`Writer::finish`] lays it out.
#[derive(Debug, Default)]
pub struct Writer {
    ops: Vec<Op>,
}

/// How many bytes `Unstructured::arbitrary_byte_size` splits off the end when `remaining`
/// bytes are left.
fn len_width(remaining: usize) -> usize {
    match remaining {
        0 => 0,
        1..=256 => 1,
        257..=65_537 => 2,
        _ => 4,
    }
}

/// The bytes (big-endian, as `int_in_range` reads them) that make a byte length of `n` when
/// `remaining` bytes are left, `width` of them being the length itself.
fn len_bytes(n: usize, remaining: usize, width: usize) -> Vec<u8> {
    if remaining <= 1 {
        assert_eq!(n, 0, "length {n} with {remaining} byte(s) left");
        return vec![0; width];
    }
    let max = remaining - width;
    assert!(n <= max, "length {n} but only {max} bytes left");
    let bytes = (n as u64).to_be_bytes();
    // `int_in_range` reads only as many bytes as `max` needs; pad the rest with zeros.
    let used = (1..width)
        .find(|&k| (max as u64) >> (8 * k) == 0)
        .unwrap_or(width);
    let mut out = bytes[8 - used..].to_vec();
    out.resize(width, 0);
    out
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes read from the front.
    pub fn front(&mut self, bytes: &[u8]) {
        match self.ops.last_mut() {
            Some(Op::Front(v)) => v.extend_from_slice(bytes),
            _ => self.ops.push(Op::Front(bytes.to_vec())),
        }
    }

    /// A byte length `n` that the decoder reads from the end of the data.
    pub fn len(&mut self, n: usize) {
        self.ops.push(Op::Len(n));
    }

    /// The enum variant `index` of `count`.
    pub fn variant(&mut self, index: u32, count: u32) {
        assert!(index < count);
        // The smallest `x` with `(x * count) >> 32 == index`.
        let x = (u64::from(index) << 32).div_ceil(u64::from(count));
        self.front(&u32::try_from(x).unwrap().to_le_bytes());
    }

    /// The byte string: the front bytes in order, then the lengths, the first one read last.
    pub fn finish(self) -> Vec<u8> {
        let front_total: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Front(v) => v.len(),
                Op::Len(_) => 0,
            })
            .sum();
        let lens = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Len(_)))
            .count();
        // A length's width depends on how much data is left when it is read, which depends on
        // the other widths: iterate to a fixed point (widths only grow).
        let mut widths = vec![1usize; lens];
        for _ in 0..16 {
            let total = front_total + widths.iter().sum::<usize>();
            let (mut front, mut back) = (0, 0);
            let mut next = Vec::with_capacity(lens);
            for op in &self.ops {
                match op {
                    Op::Front(v) => front += v.len(),
                    Op::Len(_) => {
                        let w = len_width(total - front - back);
                        next.push(w);
                        back += w;
                    }
                }
            }
            if next == widths {
                let mut tail: Vec<Vec<u8>> = Vec::with_capacity(lens);
                let (mut front, mut back, mut i) = (0, 0, 0);
                let mut out = Vec::with_capacity(total);
                for op in &self.ops {
                    match op {
                        Op::Front(v) => {
                            out.extend_from_slice(v);
                            front += v.len();
                        }
                        Op::Len(n) => {
                            let remaining = total - front - back;
                            tail.push(len_bytes(*n, remaining, widths[i]));
                            back += widths[i];
                            i += 1;
                        }
                    }
                }
                for t in tail.iter().rev() {
                    out.extend_from_slice(t);
                }
                return out;
            }
            widths = next;
        }
        panic!("length widths do not settle");
    }
}

/// A value that can be written the way `arbitrary` reads it.
pub trait Encode {
    /// As read by `Arbitrary::arbitrary`.
    fn encode(&self, w: &mut Writer);
    /// As read by `Arbitrary::arbitrary_take_rest` (the last field of the top-level input).
    fn encode_rest(&self, w: &mut Writer) {
        self.encode(w);
    }
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.front(&self.to_le_bytes());
            }
        }
    )*};
}
encode_int!(u8, u16, u32, u64);

impl Encode for usize {
    fn encode(&self, w: &mut Writer) {
        (*self as u64).encode(w);
    }
}

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        w.front(&[u8::from(*self)]);
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, w: &mut Writer) {
        for x in self {
            x.encode(w);
        }
    }
}

impl<A: Encode, B: Encode, C: Encode> Encode for (A, B, C) {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
        self.1.encode(w);
        self.2.encode(w);
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            None => false.encode(w),
            Some(x) => {
                true.encode(w);
                x.encode(w);
            }
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        for x in self {
            true.encode(w);
            x.encode(w);
        }
        false.encode(w);
    }
}

impl Encode for String {
    fn encode(&self, w: &mut Writer) {
        w.len(self.len());
        w.front(self.as_bytes());
    }
    fn encode_rest(&self, w: &mut Writer) {
        w.front(self.as_bytes());
    }
}

/// `impl Encode` for a struct: its fields in declaration order, the last one after `;`.
#[macro_export]
macro_rules! encode_struct {
    ($ty:ty { $($field:ident),* ; $last:ident }) => {
        impl $crate::seed::Encode for $ty {
            fn encode(&self, w: &mut $crate::seed::Writer) {
                $( $crate::seed::Encode::encode(&self.$field, w); )*
                $crate::seed::Encode::encode(&self.$last, w);
            }
            fn encode_rest(&self, w: &mut $crate::seed::Writer) {
                $( $crate::seed::Encode::encode(&self.$field, w); )*
                $crate::seed::Encode::encode_rest(&self.$last, w);
            }
        }
    };
}

/// The bytes that decode (`arbitrary_take_rest`) back into `input`.
///
/// # Panics
///
/// If they do not decode back into a value with the same `Debug` form.
pub fn encode_seed<T>(input: &T) -> Vec<u8>
where
    T: Encode + Debug + for<'a> Arbitrary<'a>,
{
    let mut w = Writer::new();
    input.encode_rest(&mut w);
    let bytes = w.finish();
    let back = T::arbitrary_take_rest(Unstructured::new(&bytes))
        .unwrap_or_else(|e| panic!("seed does not decode ({e}): {input:?}"));
    let (want, got) = (format!("{input:?}"), format!("{back:?}"));
    assert_eq!(got, want, "seed decodes into something else");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Arbitrary, Debug)]
    struct Nested {
        a: u16,
        s: String,
        v: Vec<u8>,
    }

    #[derive(Arbitrary, Debug)]
    enum E {
        A(u8),
        B {
            s: String,
            n: Option<(u16, u16, u8)>,
        },
        C,
    }

    #[derive(Arbitrary, Debug)]
    struct Top {
        e: Vec<E>,
        n: Vec<Nested>,
        k: [u8; 4],
        z: usize,
        rest: String,
    }

    encode_struct!(Nested { a, s ; v });
    encode_struct!(Top { e, n, k, z ; rest });

    impl Encode for E {
        fn encode(&self, w: &mut Writer) {
            match self {
                E::A(x) => {
                    w.variant(0, 3);
                    x.encode(w);
                }
                E::B { s, n } => {
                    w.variant(1, 3);
                    s.encode(w);
                    n.encode(w);
                }
                E::C => w.variant(2, 3),
            }
        }
    }

    #[test]
    fn strings_of_every_length_class_round_trip() {
        for len in [
            0, 1, 2, 100, 250, 254, 255, 256, 257, 300, 1000, 65_000, 70_000,
        ] {
            let top = Top {
                e: vec![
                    E::B {
                        s: "é".repeat(len / 2),
                        n: Some((1, 65_535, 7)),
                    },
                    E::A(9),
                    E::C,
                    E::B {
                        s: String::new(),
                        n: None,
                    },
                ],
                n: vec![Nested {
                    a: 513,
                    s: "x".repeat(len),
                    v: vec![1, 2, 3],
                }],
                k: [1, 2, 3, 4],
                z: usize::MAX,
                rest: "tail".into(),
            };
            encode_seed(&top);
        }
    }
}
