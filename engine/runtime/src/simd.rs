//! Vector kernels chosen at run time, for the codec above to plug in.
//!
//! The protocol crate is `forbid(unsafe_code)`, so its WebSocket payload masking is portable
//! code that the compiler vectorises for the baseline target only (16-byte SSE2 on x86-64).
//! Calling a function compiled for wider vector units is `unsafe` (the CPU must have them),
//! so those kernels live here: [`mask_kernel`] detects the CPU's features once and hands out a
//! safe function pointer, which the engine installs with
//! `edge_ws_protocol::mask::set_accelerated`. A kernel is only the vector loop over a prefix;
//! the protocol crate does the key's phase, alignment and tail (tested together in
//! `engine/tests/mask_kernel.rs`).

/// A bulk masking kernel, the signature of `edge_ws_protocol::mask::MaskFn`: XORs the longest
/// prefix of `buf` whose length is a multiple of 32 with `key` repeated (the key meeting its
/// first byte) and returns that length. The protocol crate does the key's phase, the alignment
/// and the tail.
pub type MaskKernel = fn(&mut [u8], [u8; 4]) -> usize;

/// The fastest masking kernel this CPU runs, if it is better than the portable one: AVX2
/// (32 bytes per instruction) on x86-64. `None` elsewhere.
pub fn mask_kernel() -> Option<MaskKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(x86::mask_avx2_checked);
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// The safe entry point that [`super::mask_kernel`] hands out.
    pub(super) fn mask_avx2_checked(buf: &mut [u8], key: [u8; 4]) -> usize {
        debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
        // SAFETY: this function is only handed out by `mask_kernel` after
        // `is_x86_feature_detected!("avx2")` returned true, so the CPU executes AVX2.
        unsafe { mask_avx2(buf, key) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4]) -> usize {
        // Every step is a multiple of 4 bytes, so each 4-byte lane meets the key from its start.
        let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut steps = buf.chunks_exact_mut(32);
        for step in &mut steps {
            let p = step.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `step` is 32 writable bytes, one unaligned 32-byte load and store (any
            // address; the caller aligns `buf` for speed only).
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k)) };
        }
        let left = steps.into_remainder().len();
        buf.len() - left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn kernel_masks_the_whole_32_byte_prefix_and_leaves_the_rest() {
        let Some(kernel) = mask_kernel() else {
            eprintln!("no accelerated masking kernel on this CPU: nothing to compare");
            return;
        };
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in (0..=300).chain([4096, 65_537]) {
            for start in 0..=3 {
                let orig = pattern(len + start);
                let mut fast = orig.clone();
                let done = kernel(&mut fast[start..], key);
                assert_eq!(done, len - len % 32, "len {len} start {start}");
                for (i, (&f, &o)) in fast[start..].iter().zip(&orig[start..]).enumerate() {
                    let want = if i < done { o ^ key[i & 3] } else { o };
                    assert_eq!(f, want, "len {len} start {start} byte {i}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_kernel_is_offered_exactly_when_the_cpu_has_avx2() {
        assert_eq!(
            mask_kernel().is_some(),
            std::arch::is_x86_feature_detected!("avx2")
        );
    }
}
