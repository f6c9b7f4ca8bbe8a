//! A global allocator wrapper that counts the bytes requested and not yet freed, for benches
//! and tests that measure what a structure holds (`live_bytes` before and after).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Wraps allocator `A`, counting live requested bytes (not the allocator's own rounding).
#[derive(Debug)]
pub struct CountingAlloc<A> {
    inner: A,
    live: AtomicIsize,
}

impl<A> CountingAlloc<A> {
    /// Over `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAlloc {
            inner,
            live: AtomicIsize::new(0),
        }
    }

    /// Bytes requested and not yet freed through this allocator.
    pub fn live_bytes(&self) -> isize {
        self.live.load(Ordering::Relaxed)
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged, so `inner`'s
// guarantees hold; the counting touches only an atomic.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.live.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` (non-zero size) is passed on unchanged.
        unsafe { self.inner.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.live.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `inner` (through `alloc`/`realloc` above) with `l`.
        unsafe { self.inner.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        self.live
            .fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `inner` with layout `l`; `new` is the caller's checked size.
        unsafe { self.inner.realloc(p, l, new) }
    }
}
