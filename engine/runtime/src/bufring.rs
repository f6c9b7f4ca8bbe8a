//! The provided-buffer ring of one core: `count` buffers of `size` bytes in one allocation,
//! shared by every connection's multishot receive.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

const PAGE: usize = 4096;

pub(super) struct BufRing {
    /// `count` ring entries, page aligned, shared with the kernel.
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    /// `count * size` bytes of buffer memory.
    mem: NonNull<u8>,
    mem_layout: Layout,
    size: u32,
    mask: u16,
    /// Our tail (entries written so far); published to the kernel by [`BufRing::publish`].
    tail: u16,
    published: u16,
    bgid: u16,
    registered: bool,
}

impl BufRing {
    pub(super) fn new(count: u16, size: u32, bgid: u16) -> io::Result<Self> {
        assert!(count.is_power_of_two() && count <= 32768);
        let page = page_size();
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            page,
        )
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring layout"))?;
        let mem_bytes = usize::from(count)
            .checked_mul(size as usize)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "buffer memory too large")
            })?;
        let mem_layout = Layout::from_size_align(mem_bytes, page)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer memory layout"))?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1 checked by the
        // caller's config validation) and a valid power-of-two alignment.
        let (ring, mem) = unsafe {
            (
                alloc::alloc_zeroed(ring_layout),
                alloc::alloc_zeroed(mem_layout),
            )
        };
        let (Some(ring), Some(mem)) =
            (NonNull::new(ring.cast::<BufRingEntry>()), NonNull::new(mem))
        else {
            alloc::handle_alloc_error(mem_layout);
        };
        // Fault the pool in now: it is a fixed per-core cost (count × size), and touching it
        // here keeps it out of the per-connection memory a load test measures later, when the
        // kernel would otherwise first write each buffer.
        let page_size = page.max(1);
        for off in (0..mem_bytes).step_by(page_size) {
            // SAFETY: off < mem_bytes, the size of the allocation `mem` points to.
            unsafe { mem.as_ptr().add(off).write_volatile(0) };
        }
        let mut br = BufRing {
            ring,
            ring_layout,
            mem,
            mem_layout,
            size,
            mask: count - 1,
            tail: 0,
            published: 0,
            bgid,
            registered: false,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group `bgid`.
    pub(super) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is page aligned, holds `mask + 1` entries and lives until
        // this BufRing is dropped, which the driver does only after dropping the io_uring
        // (or after unregistering the group).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.mask.wrapping_add(1),
                self.bgid,
                0,
            )?
        };
        self.registered = true;
        Ok(())
    }

    pub(super) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Number of buffers in the ring.
    pub(super) fn count(&self) -> usize {
        usize::from(self.mask) + 1
    }

    /// The bytes the kernel wrote into buffer `bid`, writable: the buffer is the caller's
    /// until it gives it back (the service unmasks payloads in place).
    ///
    /// # Safety
    /// `bid` must have been handed out by the kernel in a completion with `len` bytes and not yet
    /// been given back with [`BufRing::push`]; the slice must not outlive that, and no other
    /// slice of the same buffer may be alive (one per completion).
    pub(super) unsafe fn data<'a>(&self, bid: u16, len: usize) -> &'a mut [u8] {
        debug_assert!(usize::from(bid) <= usize::from(self.mask) && len <= self.size as usize);
        // SAFETY: bid < count and len <= size (kernel contract, checked in debug), so the range
        // lies inside the buffer memory, which this ring allocated and owns (writable); the
        // kernel finished writing it before posting the completion and will not touch it again
        // until the caller gives the buffer back, and the caller holds the only slice of it.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mem.as_ptr().add(usize::from(bid) * self.size as usize),
                len,
            )
        }
    }

    /// Gives buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    #[inline]
    pub(super) fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & self.mask);
        // SAFETY: slot < count, so the entry lies inside the ring allocation; the kernel only
        // reads entries between its head and the published tail, and this slot is past the
        // published tail, so nobody else accesses it now.
        let e = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: bid < count, so the offset stays inside the buffer allocation.
        let addr = unsafe {
            self.mem
                .as_ptr()
                .add(usize::from(bid & self.mask) * self.size as usize)
        };
        e.set_addr(addr as u64);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the entries pushed since the last call (one release store).
    #[inline]
    pub(super) fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: `ring` is the first entry of a live, page-aligned, initialised buffer ring.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) };
        // SAFETY: the tail field is a naturally aligned u16 inside the ring allocation that the
        // kernel only reads; all accesses from our side go through this atomic.
        let tail = unsafe { AtomicU16::from_ptr(tail.cast_mut()) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// Unregisters the group (before the ring is gone); errors are ignored.
    pub(super) fn unregister(&mut self, submitter: &Submitter<'_>) {
        if self.registered {
            let _ = submitter.unregister_buf_ring(self.bgid);
            self.registered = false;
        }
    }

    /// Leaks the memory instead of freeing it (the kernel might still write into it).
    pub(super) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both blocks were allocated in `new` with exactly these layouts; the driver
        // drops this only after the io_uring that used them is gone (or the group was
        // unregistered), so the kernel no longer references them.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.mem.as_ptr(), self.mem_layout);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        (p as usize).max(PAGE)
    } else {
        PAGE
    }
}
