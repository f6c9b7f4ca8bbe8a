//! Vector kernels chosen at run time, for the codec above to plug in.
//!
//! The protocol crate is `forbid(unsafe_code)`, so its WebSocket payload masking is portable
//! code that the compiler vectorises for the baseline target only (16-byte SSE2 on x86-64).
//! Calling a function compiled for wider vector units is `unsafe` (the CPU must have them),
//! so those kernels live here: [`mask_kernel`] detects the CPU's features once and hands out a
//! safe function pointer, which the engine installs with
//! `edge_ws_protocol::mask::set_accelerated`. The kernel is equal byte for byte to the
//! portable one (tests below, for every length up to 300 and every offset and alignment).

/// A masking kernel: XORs `buf` in place with `key` repeated, as if `buf` started `offset`
/// bytes into the payload (RFC 6455 §5.3). The same signature as
/// `edge_ws_protocol::mask::MaskFn`.
pub type MaskKernel = fn(&mut [u8], [u8; 4], usize);

/// The fastest masking kernel this CPU runs, if it is better than the portable one: AVX2
/// (32 bytes per instruction, two per step) on x86-64. `None` elsewhere.
pub fn mask_kernel() -> Option<MaskKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(x86::mask_avx2_checked);
        }
    }
    None
}

/// The key as it meets a slice starting `offset` bytes into the payload.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::rotate_key;
    use std::arch::x86_64::{
        __m256i, _mm256_load_si256, _mm256_set1_epi32, _mm256_store_si256, _mm256_xor_si256,
    };

    /// The safe entry point that [`super::mask_kernel`] hands out.
    pub(super) fn mask_avx2_checked(buf: &mut [u8], key: [u8; 4], offset: usize) {
        debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
        // SAFETY: this function is only handed out by `mask_kernel` after
        // `is_x86_feature_detected!("avx2")` returned true, so the CPU executes AVX2.
        unsafe { mask_avx2(buf, key, offset) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        // Up to the first 32-byte boundary word by word (32-byte accesses that straddle two
        // cache lines cost twice), then aligned 32-byte steps, then the tail word by word.
        let head = (buf.as_ptr() as usize).wrapping_neg() & 31;
        let (first, body) = buf.split_at_mut(head.min(buf.len()));
        mask_words(first, rotate_key(key, offset));
        let key = rotate_key(key, offset + first.len());
        // Every step is a multiple of 4 bytes, so each 4-byte lane meets the key from its start.
        let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut steps = body.chunks_exact_mut(64);
        for step in &mut steps {
            let p = step.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `step` is 64 writable bytes at a 32-byte boundary (`body` starts at one
            // and steps are 64 bytes), so `p` and `p + 1` are in bounds and aligned as the
            // aligned load and store require.
            unsafe {
                let a = _mm256_load_si256(p);
                let b = _mm256_load_si256(p.add(1));
                _mm256_store_si256(p, _mm256_xor_si256(a, k));
                _mm256_store_si256(p.add(1), _mm256_xor_si256(b, k));
            }
        }
        let rest = steps.into_remainder();
        let mut halves = rest.chunks_exact_mut(32);
        for half in &mut halves {
            let p = half.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `half` is 32 writable bytes at a 32-byte boundary (it follows whole
            // 64-byte steps from one).
            unsafe { _mm256_store_si256(p, _mm256_xor_si256(_mm256_load_si256(p), k)) };
        }
        // Fewer than 32 bytes left; the phase is unchanged (steps of 32).
        mask_words(halves.into_remainder(), key);
    }

    /// Masks a short piece 8 bytes at a time, then byte by byte; `key` meets its first byte.
    #[inline]
    fn mask_words(piece: &mut [u8], key: [u8; 4]) {
        let k64 = u64::from_ne_bytes([
            key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
        ]);
        let mut words = piece.chunks_exact_mut(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            w.copy_from_slice(&(u64::from_ne_bytes(a) ^ k64).to_ne_bytes());
        }
        for (i, b) in words.into_remainder().iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) & 3];
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn kernel_equals_the_byte_loop_for_every_length_offset_and_alignment() {
        let Some(kernel) = mask_kernel() else {
            eprintln!("no accelerated masking kernel on this CPU: nothing to compare");
            return;
        };
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..=300 {
            for offset in 0..=5 {
                for start in 0..=3 {
                    let mut fast = pattern(len + start);
                    let mut slow = fast.clone();
                    kernel(&mut fast[start..], key, offset);
                    bytewise(&mut slow[start..], key, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} start {start}");
                }
            }
        }
        for len in [4096, 65_537] {
            let mut fast = pattern(len);
            let mut slow = fast.clone();
            kernel(&mut fast, key, 3);
            bytewise(&mut slow, key, 3);
            assert!(fast == slow, "len {len}");
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
