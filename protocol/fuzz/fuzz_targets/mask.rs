//! `apply_mask` (word at a time) must equal `apply_mask_bytewise` (the reference byte loop)
//! for any buffer, key, payload offset and start alignment; masking in two pieces must equal
//! masking the whole; masking twice must give the original back.
#![no_main]

use arbitrary::Arbitrary;
use edge_ws_protocol::mask::{apply_mask, apply_mask_bytewise};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    key: [u8; 4],
    /// Payload offset; the full range, so offsets beyond `u32` wrap the key phase too.
    offset: usize,
    /// Where the slice starts inside its allocation (alignment of the word loop).
    start: u8,
    /// Where to cut the buffer for the two-piece check.
    cut: u16,
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
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
});
