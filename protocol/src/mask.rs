//! Payload masking (RFC 6455 §5.3), a word at a time with safe code, or with a faster kernel
//! installed by the caller.
//!
//! Masking is an XOR with the 4-byte key repeated; `offset` says how many payload bytes came
//! before `buf`, so a payload can be unmasked in pieces as it arrives.
//!
//! This crate has no `unsafe`, so its own loop is what the compiler vectorises for the
//! baseline target (16-byte SSE2 on x86-64). A program may install a kernel that uses the
//! CPU's wider vector units once, at start ([`set_accelerated`]); the edge-ws engine installs
//! the runtime crate's AVX2 kernel where the CPU has AVX2.

use std::sync::OnceLock;

/// A bulk masking kernel: XORs a prefix of `buf` in place with `key` repeated (the key meeting
/// the prefix's first byte), a prefix whose length is a multiple of 4, and returns that length;
/// the rest of `buf` is left as it is. [`apply_mask`] does the key's phase, the alignment and
/// the tail, so a kernel is only the vector loop.
pub type MaskFn = fn(&mut [u8], [u8; 4]) -> usize;

static ACCELERATED: OnceLock<MaskFn> = OnceLock::new();

/// Pieces shorter than this are masked by the portable loop even when a kernel is installed:
/// below it the call and the alignment work cost what the wider vectors save (the runtime's
/// AVX2 kernel breaks even at about 1 KiB; `engine/benches/mask.rs`).
pub const ACCELERATED_MIN: usize = 1024;

/// Installs `kernel` for every [`apply_mask`] of at least [`ACCELERATED_MIN`] bytes, process
/// wide. The first installation wins; returns whether this one did. What the kernel masks must
/// equal [`apply_mask_bytewise`] (masking is on every frame's path).
pub fn set_accelerated(kernel: MaskFn) -> bool {
    ACCELERATED.set(kernel).is_ok()
}

/// The installed kernel, if any.
pub fn accelerated() -> Option<MaskFn> {
    ACCELERATED.get().copied()
}

/// XORs `buf` in place with `key`, as if `buf` started `offset` bytes into the payload: with
/// the installed kernel ([`set_accelerated`]) for larger buffers, else [`apply_mask_portable`].
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() >= ACCELERATED_MIN {
        if let Some(kernel) = ACCELERATED.get() {
            // Portably up to a 32-byte boundary (vector accesses across two cache lines cost
            // twice), the kernel's prefix of the rest, portably what it leaves.
            let head = (buf.as_ptr() as usize).wrapping_neg() & 31;
            let (first, body) = buf.split_at_mut(head);
            apply_mask_portable(first, key, offset);
            let offset = offset + head;
            let done = kernel(body, rotate_key(key, offset)).min(body.len()) & !3;
            apply_mask_portable(&mut body[done..], key, offset + done);
            return;
        }
    }
    apply_mask_portable(buf, key, offset);
}

/// The crate's own masking loop: 8 bytes at a time on `u64` words (safe `chunks_exact_mut`),
/// which the compiler vectorises. Checked against [`apply_mask_bytewise`] for every length
/// 0..=64 and offset 0..=3.
#[inline]
pub fn apply_mask_portable(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    if buf.len() < 16 {
        apply_mask_bytewise(buf, key, 0);
        return;
    }
    // The key repeated twice as a native-endian word: byte i of the word meets key[i % 4].
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for word in chunk.chunks_exact_mut(8) {
            let w = u64::from_ne_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]) ^ k64;
            word.copy_from_slice(&w.to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        let w = u64::from_ne_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]) ^ k64;
        word.copy_from_slice(&w.to_ne_bytes());
    }
    // Whole words consumed a multiple of 8 bytes, so the key phase is unchanged.
    apply_mask_bytewise(words.into_remainder(), key, 0);
}

/// The reference byte loop; what [`apply_mask`] must equal.
#[inline]
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i.wrapping_add(offset) & 3];
    }
}

#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn matches_byte_loop_for_all_small_lengths_and_offsets() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..=64 {
            for offset in 0..=3 {
                // also vary the alignment of the slice start within its allocation
                for start in 0..=3 {
                    let mut fast = pattern(len + start);
                    let mut slow = fast.clone();
                    apply_mask(&mut fast[start..], key, offset);
                    apply_mask_bytewise(&mut slow[start..], key, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} start {start}");
                }
            }
        }
    }

    #[test]
    fn matches_byte_loop_for_large_buffers() {
        let key = [0x01, 0x80, 0xff, 0x5a];
        for len in [1000, 4096, 65_537, 1 << 20] {
            for offset in 0..=3 {
                let mut fast = pattern(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, key, offset);
                apply_mask_bytewise(&mut slow, key, offset);
                assert!(fast == slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [9, 8, 7, 6];
        let orig = pattern(300);
        let mut whole = orig.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1, 2, 3, 5, 17, 150, 299] {
            let mut pieces = orig.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello" with key 37 fa 21 3d
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
