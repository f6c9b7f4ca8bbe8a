//! The provided-buffer ring of one core: `count` buffers of `size` bytes in one allocation,
//! shared by every connection's multishot receive.
//!
//! Registered for incremental consumption (`IOU_PBUF_RING_INC`, Linux 6.12) where the kernel
//! has it: a receive then takes only the bytes it needs from the buffer at the ring's head,
//! and the next receive goes on in the same buffer after them, so a few large buffers serve
//! receives of any size (a 64 B message does not use up a buffer, a 4 KiB one arrives whole
//! with the frames around it). The kernel reports each piece with the buffer's id and
//! `IORING_CQE_F_BUF_MORE` while the buffer has room left; the ring keeps each buffer's
//! offset, so a piece's bytes start where the previous piece of that buffer ended, and the
//! buffer goes back to the ring after its last piece (no `BUF_MORE`).

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
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// Per buffer: bytes of it already handed out by earlier pieces (incremental only).
    offsets: Box<[u32]>,
}

/// `IOU_PBUF_RING_INC`: buffers consumed incrementally (Linux 6.12).
const IOU_PBUF_RING_INC: u16 = 2;

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
            incremental: false,
            offsets: vec![0; usize::from(count)].into_boxed_slice(),
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group `bgid`, for incremental
    /// consumption if `incremental` (an error if the kernel refuses it: the caller then sizes
    /// a ring for whole-buffer use).
    pub(super) fn register(
        &mut self,
        submitter: &Submitter<'_>,
        incremental: bool,
    ) -> io::Result<()> {
        let flags = if incremental { IOU_PBUF_RING_INC } else { 0 };
        // SAFETY: the ring memory is page aligned, holds `mask + 1` entries and lives until
        // this BufRing is dropped, which the driver does only after dropping the io_uring
        // (or after unregistering the group).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.mask.wrapping_add(1),
                self.bgid,
                flags,
            )?
        };
        self.registered = true;
        self.incremental = incremental;
        Ok(())
    }

    /// Whether buffers are consumed incrementally.
    pub(super) fn incremental(&self) -> bool {
        self.incremental
    }

    pub(super) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Bytes of buffer memory (count × size).
    pub(super) fn bytes(&self) -> usize {
        (usize::from(self.mask) + 1) * self.size as usize
    }

    /// The bytes the kernel wrote into buffer `bid` for a completion of `len` bytes with CQE
    /// `flags`, writable: they are the caller's until it calls [`BufRing::release`] for the
    /// completion (the service unmasks payloads in place). With incremental consumption they
    /// start where the buffer's previous piece ended.
    ///
    /// # Safety
    /// `bid` and `len` must come from a receive completion (with `len > 0`) not passed here
    /// before, taken in completion order, and [`BufRing::release`] must follow for it before
    /// the next completion's bytes are taken; the slice must not outlive that release. (The
    /// kernel may meanwhile write further pieces of the same buffer, past this one's end.)
    pub(super) unsafe fn data<'a>(&mut self, bid: u16, len: usize, flags: u32) -> &'a mut [u8] {
        let b = usize::from(bid & self.mask);
        let start = self.take_piece(b, len, flags);
        // SAFETY: b < count and start + len <= size (checked just above), so the range lies
        // inside the buffer memory, which this ring allocated and owns (writable); the kernel
        // finished writing these bytes before posting the completion and, until the caller
        // releases the buffer, writes only past them (a later piece of the same buffer) or not
        // at all; the caller holds the only slice of them (one per completion).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mem.as_ptr().add(b * self.size as usize + start),
                len,
            )
        }
    }

    /// Where the piece of `len` bytes a completion took from buffer `b` starts, moving the
    /// buffer's offset past it (to 0 after its last piece). Panics if the piece would end past
    /// the buffer, which the kernel never reports.
    fn take_piece(&mut self, b: usize, len: usize, flags: u32) -> usize {
        let start = if self.incremental {
            let at = self.offsets[b] as usize;
            self.offsets[b] = if io_uring::cqueue::buffer_more(flags) {
                (at + len) as u32
            } else {
                0
            };
            at
        } else {
            0
        };
        assert!(
            start + len <= self.size as usize,
            "a receive completion past its buffer's end"
        );
        start
    }

    /// [`BufRing::release`] for a completion whose bytes nobody reads (its connection is
    /// gone): the buffer's offset still moves past them.
    pub(super) fn discard(&mut self, bid: u16, flags: u32, len: i32) {
        if len > 0 {
            self.take_piece(usize::from(bid & self.mask), len as usize, flags);
        }
        self.release(bid, flags, len);
    }

    /// Done with a completion that carried buffer `bid` and CQE `flags` (its bytes, if any,
    /// taken with [`BufRing::data`]): the buffer goes back to the ring unless the kernel still
    /// fills it (incremental consumption with `BUF_MORE`, or an incremental completion with
    /// no bytes: the kernel consumed nothing of the buffer, which stays at its head).
    #[inline]
    pub(super) fn release(&mut self, bid: u16, flags: u32, len: i32) {
        if self.incremental && (len <= 0 || io_uring::cqueue::buffer_more(flags)) {
            return;
        }
        self.push(bid);
    }

    /// Gives buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    #[inline]
    fn push(&mut self, bid: u16) {
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
