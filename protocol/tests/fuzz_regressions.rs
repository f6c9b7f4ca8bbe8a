//! Inputs found by the cargo-fuzz targets in `protocol/fuzz` (see its README), kept as plain
//! tests so that stable `cargo test` guards them. Each test fails without its fix.

use edge_ws_protocol::mask::{apply_mask, apply_mask_bytewise};

/// fuzz target `mask`: `apply_mask_bytewise` computed `(i + offset) & 3` and overflowed
/// (a panic in debug builds) for offsets near `usize::MAX`; `apply_mask` only looks at
/// `offset & 3`. Fixed by `i.wrapping_add(offset) & 3` (2^64 is a multiple of 4, so the key
/// phase is still right).
#[test]
fn mask_bytewise_with_offset_near_usize_max() {
    let key = [0xff, 0xff, 0xff, 0xff];
    let data: Vec<u8> = (0..40u8).collect();
    for offset in [usize::MAX, usize::MAX - 1, usize::MAX - 2, usize::MAX - 3] {
        let mut slow = data.clone();
        let mut fast = data.clone();
        apply_mask_bytewise(&mut slow, key, offset);
        apply_mask(&mut fast, key, offset);
        assert_eq!(slow, fast, "offset {offset}");
        // Phase check against a small offset with the same residue mod 4.
        let mut same_phase = data.clone();
        apply_mask_bytewise(&mut same_phase, key, offset & 3);
        assert_eq!(slow, same_phase, "offset {offset}");
    }
    let key = [1, 2, 4, 8];
    let mut buf = [0u8; 6];
    apply_mask_bytewise(&mut buf, key, usize::MAX); // phase 3
    assert_eq!(buf, [8, 1, 2, 4, 8, 1]);
}
