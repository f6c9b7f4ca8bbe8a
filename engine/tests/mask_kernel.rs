//! The runtime's masking kernel installed in the codec, as the engine does at start: the
//! protocol's `apply_mask` (key phase, alignment head, kernel prefix, tail) must equal the
//! reference byte loop for every length around and above the threshold, every offset and
//! alignment.

use edge_ws::protocol::mask::{
    accelerated, apply_mask, apply_mask_bytewise, set_accelerated, ACCELERATED_MIN,
};
use edge_ws::runtime::simd::mask_kernel;

#[test]
fn installed_kernel_masks_like_the_byte_loop() {
    let Some(kernel) = mask_kernel() else {
        eprintln!("no accelerated masking kernel on this CPU: nothing to compare");
        return;
    };
    set_accelerated(kernel);
    assert!(accelerated().is_some());
    let key = [0x01, 0x80, 0xff, 0x5a];
    let lens = (ACCELERATED_MIN - 2..ACCELERATED_MIN + 70).chain([4096, 4104, 65_537]);
    for len in lens {
        for offset in 0..=5 {
            for start in 0..=33 {
                let orig: Vec<u8> = (0..len + start).map(|i| (i * 31 + 7) as u8).collect();
                let mut fast = orig.clone();
                let mut slow = orig;
                apply_mask(&mut fast[start..], key, offset);
                apply_mask_bytewise(&mut slow[start..], key, offset);
                assert!(fast == slow, "len {len} offset {offset} start {start}");
            }
        }
    }
}
