//! The floor: a raw TCP echo server on io_uring, no WebSocket framing — what the kernel allows.
//!
//! One thread, one ring (SINGLE_ISSUER + DEFER_TASKRUN, falling back to no flags), a multishot
//! accept, a multishot recv per connection into one shared provided-buffer ring (so an idle
//! connection holds no read buffer), and one send in flight per connection: bytes that arrive
//! meanwhile collect in a pending buffer and go out in the next send (coalescing). Every
//! completion batch ends with one submit + wait (`submit_and_wait(1)`).
//! Shape, flags and pitfalls follow docs/design/io-runtime.md.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::ops::{Index, IndexMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::sys;

const BGID: u16 = 0;
/// Provided buffers (a power of two) and their size.
const BUF_COUNT: u16 = 4096;
const BUF_SIZE: usize = 4096;
/// At most this many recvs that ended in ENOBUFS are re-armed per batch (pitfall 4).
const REARM_PER_BATCH: usize = BUF_COUNT as usize / 4;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CLOSE: u64 = 4;

fn ud(op: u64, idx: u32, gen: u32) -> u64 {
    op | (u64::from(idx) << 8) | (u64::from(gen & 0xff_ffff) << 40)
}

fn ud_parts(u: u64) -> (u64, u32, u32) {
    (u & 0xff, ((u >> 8) & 0xffff_ffff) as u32, (u >> 40) as u32)
}

/// One connection's state.
#[derive(Debug, Default)]
struct Slot {
    fd: RawFd,
    gen: u32,
    used: bool,
    recv_armed: bool,
    sending: bool,
    closing: bool,
    close_submitted: bool,
    /// Bytes handed to the kernel by the send in flight (owned until its completion).
    inflight: Vec<u8>,
    inflight_off: usize,
    /// Bytes received since, to go out with the next send.
    pending: Vec<u8>,
    dirty: bool,
}

/// Anonymous private memory straight from mmap: page aligned, and resident only once touched
/// (so the idle-memory figure counts only what connections really use).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping made in `new` and unmapped only here; the ring
        // that used it is dropped first (field order in `Server`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The provided-buffer ring: entries (page aligned, shared with the kernel) and buffer memory.
struct BufRing {
    entries: Mapping,
    mem: Mapping,
    tail: u16,
    staged: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let mut r = BufRing {
            entries: Mapping::new(
                usize::from(BUF_COUNT) * std::mem::size_of::<types::BufRingEntry>(),
            )?,
            mem: Mapping::new(usize::from(BUF_COUNT) * BUF_SIZE)?,
            tail: 0,
            staged: 0,
        };
        for bid in 0..BUF_COUNT {
            r.stage(bid);
        }
        r.publish();
        Ok(r)
    }

    fn base(&self) -> *mut types::BufRingEntry {
        self.entries.ptr.cast()
    }

    /// Queues buffer `bid` for return to the kernel (visible after `publish`).
    fn stage(&mut self, bid: u16) {
        let idx = usize::from(self.tail.wrapping_add(self.staged) & (BUF_COUNT - 1));
        // SAFETY: `idx` < BUF_COUNT, the number of entries mapped; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let e = unsafe { &mut *self.base().add(idx) };
        e.set_addr(self.mem.ptr as u64 + (usize::from(bid) * BUF_SIZE) as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.staged += 1;
    }

    /// Makes every staged buffer visible to the kernel with one tail store.
    fn publish(&mut self) {
        if self.staged == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.staged);
        self.staged = 0;
        // SAFETY: `base()` is the page-aligned start of the ring; the tail field overlaps the
        // first entry's reserved field, which set_addr/set_len/set_bid never write. The kernel
        // reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.base()).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to us.
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUF_COUNT);
        // SAFETY: buffer `bid` lies inside `mem` (bid < BUF_COUNT, BUF_SIZE each); the kernel
        // filled it and will not write it again until we stage it back, after this borrow.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.ptr.add(usize::from(bid) * BUF_SIZE),
                len.min(BUF_SIZE),
            )
        }
    }
}

/// Connection slots in fixed chunks, allocated as connections arrive (no reallocation).
struct Slots {
    chunks: Vec<Box<[Slot]>>,
}

const CHUNK: usize = 1024;

impl Slots {
    fn len(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Adds a chunk; returns the index range of its slots.
    fn grow(&mut self) -> std::ops::Range<u32> {
        let start = self.len() as u32;
        self.chunks
            .push((0..CHUNK).map(|_| Slot::default()).collect());
        start..start + CHUNK as u32
    }

    fn get_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        let i = idx as usize;
        self.chunks.get_mut(i / CHUNK).map(|c| &mut c[i % CHUNK])
    }

    fn get(&self, idx: u32) -> Option<&Slot> {
        let i = idx as usize;
        self.chunks.get(i / CHUNK).map(|c| &c[i % CHUNK])
    }
}

impl Index<u32> for Slots {
    type Output = Slot;
    fn index(&self, idx: u32) -> &Slot {
        let i = idx as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl IndexMut<u32> for Slots {
    fn index_mut(&mut self, idx: u32) -> &mut Slot {
        let i = idx as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

struct Server {
    ring: IoUring,
    bufs: BufRing,
    slots: Slots,
    free: Vec<u32>,
    listen_fd: RawFd,
    nobufs: Vec<u32>,
    dirty: Vec<u32>,
}

/// Runs the floor server on `addr` forever (until killed).
pub fn run(addr: SocketAddr, core: Option<usize>) -> io::Result<()> {
    sys::raise_nofile();
    if let Some(c) = core {
        sys::pin_current(c);
    }
    let listener = listen(addr)?;
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(65536)
        .build(4096)
        .or_else(|_| IoUring::builder().setup_cqsize(65536).build(4096))?;
    let bufs = BufRing::new()?;
    // SAFETY: `bufs.base()` is a page-aligned mapping of BUF_COUNT entries owned by `bufs`,
    // which outlives the ring (the Server drops `ring` before `bufs`, declared first).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.base() as u64, BUF_COUNT, BGID, 0)?;
    }
    let mut s = Server {
        ring,
        bufs,
        slots: Slots { chunks: Vec::new() },
        free: Vec::new(),
        listen_fd: listener.as_raw_fd(),
        nobufs: Vec::new(),
        dirty: Vec::new(),
    };
    eprintln!("tcp-echo-floor listening on {addr} (io_uring)");
    s.arm_accept();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(65536);
    loop {
        match s.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(
            s.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(u, res, flags) in &cqes {
            s.complete(u, res, flags);
        }
        s.bufs.publish();
        s.rearm_nobufs();
        s.send_dirty();
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

impl Server {
    fn push(&mut self, e: squeue::Entry) {
        for _ in 0..1000 {
            // SAFETY: every entry pushed here references memory that outlives its completion:
            // send buffers live in their slot until the send completes (one in flight per slot,
            // slots are never freed while sending), recv uses the registered buffer ring.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // Full: hand what we have to the kernel and retry.
            let _ = self.ring.submit();
        }
        panic!("submission queue stuck full");
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listen_fd))
            .build()
            .user_data(ud(OP_ACCEPT, 0, 0));
        self.push(e);
    }

    fn arm_recv(&mut self, idx: u32) {
        let s = &mut self.slots[idx];
        s.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(s.fd), BGID)
            .build()
            .user_data(ud(OP_RECV, idx, s.gen));
        self.push(e);
    }

    fn alloc(&mut self, fd: RawFd) -> u32 {
        if self.free.is_empty() {
            let range = self.slots.grow();
            self.free.extend(range.rev());
        }
        let idx = self.free.pop().expect("a free slot after growing");
        let s = &mut self.slots[idx];
        let gen = s.gen;
        *s = Slot {
            fd,
            gen,
            used: true,
            ..Slot::default()
        };
        idx
    }

    fn slot_ok(&self, idx: u32, gen: u32) -> bool {
        self.slots
            .get(idx)
            .is_some_and(|s| s.used && (s.gen & 0xff_ffff) == gen)
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let (op, idx, gen) = ud_parts(u);
        match op {
            OP_ACCEPT => {
                if res >= 0 {
                    let _ = sys::set_nodelay(res);
                    let i = self.alloc(res);
                    self.arm_recv(i);
                } else if res != -libc::ECANCELED {
                    eprintln!("accept: {}", io::Error::from_raw_os_error(-res));
                }
                if !cqueue::more(flags) {
                    self.arm_accept();
                }
            }
            OP_RECV => {
                if !self.slot_ok(idx, gen) {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.stage(bid);
                    }
                    return;
                }
                let more = cqueue::more(flags);
                if res > 0 {
                    let bid = cqueue::buffer_select(flags).expect("recv without a buffer");
                    let data = self.bufs.buf(bid, res as usize);
                    let s = &mut self.slots[idx];
                    s.pending.extend_from_slice(data);
                    self.bufs.stage(bid);
                    if !s.dirty {
                        s.dirty = true;
                        self.dirty.push(idx);
                    }
                    if !more {
                        // The multishot ended after data (e.g. CQ pressure): re-arm (pitfall 5).
                        s.recv_armed = false;
                        if !s.closing {
                            self.arm_recv(idx);
                        }
                    }
                } else if res == -libc::ENOBUFS {
                    self.slots[idx].recv_armed = false;
                    self.nobufs.push(idx);
                } else {
                    // EOF or error: this connection is done reading.
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.stage(bid);
                    }
                    if !more {
                        self.slots[idx].recv_armed = false;
                    }
                    self.begin_close(idx);
                }
            }
            OP_SEND => {
                if !self.slot_ok(idx, gen) {
                    return;
                }
                let s = &mut self.slots[idx];
                if res < 0 {
                    s.sending = false;
                    s.inflight.clear();
                    self.begin_close(idx);
                    return;
                }
                s.inflight_off += res as usize;
                if s.inflight_off < s.inflight.len() && !s.closing {
                    // Short send: the remainder goes first (pitfall 7).
                    let e = self.send_entry(idx);
                    self.push(e);
                    return;
                }
                s.sending = false;
                s.inflight.clear();
                s.inflight_off = 0;
                if s.closing {
                    self.maybe_submit_close(idx);
                } else if !s.pending.is_empty() && !s.dirty {
                    s.dirty = true;
                    self.dirty.push(idx);
                }
            }
            OP_CLOSE => {
                if let Some(s) = self.slots.get_mut(idx) {
                    if s.used && (s.gen & 0xff_ffff) == gen {
                        s.used = false;
                        s.gen = s.gen.wrapping_add(1);
                        s.inflight = Vec::new();
                        s.pending = Vec::new();
                        self.free.push(idx);
                    }
                }
            }
            _ => {}
        }
    }

    fn send_entry(&self, idx: u32) -> squeue::Entry {
        let s = &self.slots[idx];
        let rest = &s.inflight[s.inflight_off..];
        opcode::Send::new(types::Fd(s.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(OP_SEND, idx, s.gen))
    }

    fn begin_close(&mut self, idx: u32) {
        let s = &mut self.slots[idx];
        s.closing = true;
        s.pending.clear();
        if s.recv_armed {
            // Still receiving: stop it so its socket can go (pitfall 6).
            // SAFETY: shutdown on a socket we own; no memory is involved.
            unsafe { libc::shutdown(s.fd, libc::SHUT_RDWR) };
            return;
        }
        self.maybe_submit_close(idx);
    }

    fn maybe_submit_close(&mut self, idx: u32) {
        let s = &mut self.slots[idx];
        if s.sending || s.recv_armed || s.close_submitted {
            return;
        }
        s.close_submitted = true;
        let e = opcode::Close::new(types::Fd(s.fd))
            .build()
            .user_data(ud(OP_CLOSE, idx, s.gen));
        self.push(e);
    }

    fn rearm_nobufs(&mut self) {
        let n = self.nobufs.len().min(REARM_PER_BATCH);
        let batch: Vec<u32> = self.nobufs.drain(..n).collect();
        for idx in batch {
            let s = &self.slots[idx];
            if s.used && !s.closing && !s.recv_armed {
                self.arm_recv(idx);
            }
        }
    }

    fn send_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            let s = &mut self.slots[idx];
            s.dirty = false;
            if !s.used || s.closing || s.sending || s.pending.is_empty() {
                continue;
            }
            std::mem::swap(&mut s.inflight, &mut s.pending);
            s.inflight_off = 0;
            s.sending = true;
            let e = self.send_entry(idx);
            self.push(e);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }
}
