//! `apply_mask` (word at a time) must equal `apply_mask_bytewise` (the reference byte loop)
//! for any buffer, key, payload offset and start alignment; masking in two pieces must equal
//! masking the whole; masking twice must give the original back.

use arbitrary::Arbitrary;
use edge_ws_protocol::mask::{apply_mask, apply_mask_bytewise};

#[derive(Arbitrary, Debug)]
pub struct Input {
    key: [u8; 4],
    /// Payload offset; the full range, so offsets beyond `u32` wrap the key phase too.
    offset: usize,
    /// Where the slice starts inside its allocation (alignment of the word loop).
    start: u8,
    /// Where to cut the buffer for the two-piece check.
    cut: u16,
    data: Vec<u8>,
}

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
    let Input {
        key,
        offset,
        start,
        cut,
        data,
    } = input;
    let start = usize::from(start % 8).min(data.len());

    let mut fast = data.clone();
    let mut slow = data.clone();
    apply_mask(&mut fast[start..], key, offset);
    apply_mask_bytewise(&mut slow[start..], key, offset);
    assert_eq!(
        fast, slow,
        "apply_mask != bytewise (start {start}, offset {offset})"
    );
    assert_eq!(
        fast[..start],
        data[..start],
        "bytes before the slice touched"
    );

    // Two pieces with the second's offset advanced by the first's length.
    let body = &data[start..];
    let cut = usize::from(cut) % (body.len() + 1);
    let mut pieces = body.to_vec();
    let (a, b) = pieces.split_at_mut(cut);
    apply_mask(a, key, offset);
    apply_mask(b, key, offset.wrapping_add(cut));
    assert_eq!(pieces[..], slow[start..], "pieces != whole (cut {cut})");

    // XOR is an involution.
    apply_mask(&mut fast[start..], key, offset);
    assert_eq!(fast, data, "masking twice is not the identity");
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

crate::encode_struct!(Input { key, offset, start, cut ; data });

fn case(offset: usize, start: u8, cut: u16, len: usize) -> Input {
    Input {
        key: [0x37, 0xfa, 0x21, 0x3d],
        offset,
        start,
        cut,
        data: (0..len).map(|i| (i * 7) as u8).collect(),
    }
}

/// Every key phase and alignment, lengths around the word size, offsets near the wrap.
pub fn seeds() -> Vec<(&'static str, Input)> {
    vec![
        ("offset-0-64-bytes", case(0, 0, 0, 64)),
        ("offset-1-start-3", case(1, 3, 13, 37)),
        ("offset-2-start-5", case(2, 5, 8, 33)),
        ("offset-3-start-7", case(3, 7, 1, 100)),
        (
            "offset-usize-max",
            Input {
                key: [0xff; 4],
                ..case(usize::MAX, 1, 4, 9)
            },
        ),
        ("offset-past-u32", case((1 << 32) + 3, 2, 7, 20)),
        ("empty", case(5, 4, 3, 0)),
        ("shorter-than-a-word", case(1, 0, 3, 7)),
        ("one-word-cut-at-end", case(0, 0, 8, 8)),
        ("long-cut-unaligned", case(6, 1, 333, 1000)),
    ]
}
