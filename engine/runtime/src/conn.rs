//! One connection slot and its send queue (pure bookkeeping, no syscalls).

use std::collections::VecDeque;
use std::os::fd::RawFd;

use bytes::{Buf, Bytes};

use super::MAX_IOVECS;

/// Queued buffers up to this size are copied into one contiguous buffer before a send: the
/// kernel walks an iovec per buffer, and for small WebSocket frames one copy here is cheaper
/// (echo of 64 B frames, 8 per send: see docs/design/io-runtime.md).
pub(super) const COALESCE_MAX: usize = 2048;

/// Most bytes one coalesced buffer gathers.
const COALESCE_TOTAL: usize = 64 * 1024;

/// The first allocation of an owned queue entry that small frames are copied into (it grows
/// up to [`COALESCE_TOTAL`]): eight 64-byte frames fit without a reallocation.
const OWNED_MIN: usize = 1024;

/// The longest WebSocket frame header (RFC 6455 §5.2): what a [`Chunk::Framed`] holds inline.
pub(super) const FRAME_HEADER_MAX: usize = 14;

/// The most bytes handed to one send operation (its result is an `i32`).
pub(super) const MAX_SEND_BYTES: usize = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum State {
    /// Receiving and sending.
    Open,
    /// `close()` was called: sending what is queued, then tearing down. Received data is dropped.
    Flushing,
    /// Cancel/close submitted; the slot is freed when every operation completed.
    TearingDown,
}

/// A multishot receive is in the kernel.
pub(super) const RECV_ARMED: u8 = 1;
/// A send is in the kernel.
pub(super) const SEND_INFLIGHT: u8 = 2;
/// The `Close` is in the kernel.
pub(super) const CLOSE_INFLIGHT: u8 = 4;
/// The slot is in the core's dirty list (a send may be due).
pub(super) const IN_DIRTY: u8 = 8;
/// The slot is in the core's re-arm queue (its receive ended with ENOBUFS).
pub(super) const IN_REARM: u8 = 16;
/// Receiving is paused: no receive is armed for it (the kernel's socket buffer and then TCP
/// flow control hold the peer back).
pub(super) const PAUSED: u8 = 32;
/// The slot is in the core's list of queues to release at the next tick (its queue emptied
/// with an allocation kept for the next send).
pub(super) const IN_IDLE: u8 = 64;

/// The iovec array and header of one `SendMsg`; pooled per core, lent to a connection only while
/// its send is in flight.
pub(super) struct SendVec {
    pub(super) hdr: libc::msghdr,
    pub(super) iov: [libc::iovec; MAX_IOVECS],
}

impl SendVec {
    pub(super) fn new() -> Box<Self> {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero bytes (null pointers,
        // zero lengths) are valid values.
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// What to submit for a connection's next send.
pub(super) enum SendPlan {
    /// One buffer: `opcode::Send`.
    Single { ptr: *const u8, len: u32 },
    /// Several buffers: `opcode::SendMsg` over `sendvec.hdr` (`n` iovecs).
    Vectored { n: usize },
}

/// One entry of a connection's send queue.
///
/// `Shared` is a buffer queued as it is (a broadcast frame shared by many connections, a frame
/// the application encoded). `Owned` holds bytes the queue copied in ([`Slot::push_copy`]: the
/// frames of echo-style sends, header and payload written straight into it, no allocation per
/// frame), merged small entries and TLS records; frames copied in later are appended to the
/// last `Owned` entry while it was not handed to the kernel.
pub(super) enum Chunk {
    /// Queued by reference count.
    Shared(Bytes),
    /// Owned bytes; `pos` is how much of `buf` was already sent.
    Owned { buf: Vec<u8>, pos: usize },
    /// A frame of two pieces sent as one unit: its header, copied here (`head` of its
    /// `header_len` bytes already sent), and its payload by reference count.
    Framed {
        header: [u8; FRAME_HEADER_MAX],
        header_len: u8,
        head: u8,
        payload: Bytes,
    },
}

impl Chunk {
    /// Drops the first `n` bytes (sent).
    #[inline]
    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Shared(b) => b.advance(n),
            Chunk::Owned { pos, .. } => *pos += n,
            Chunk::Framed {
                header_len,
                head,
                payload,
                ..
            } => {
                let in_header = usize::from(*header_len - *head);
                if n <= in_header {
                    *head += n as u8;
                } else {
                    *head = *header_len;
                    payload.advance(n - in_header);
                }
            }
        }
    }

    /// The bytes still to send, in order: one piece, or two for a [`Chunk::Framed`] (either
    /// may be empty).
    #[inline]
    pub(super) fn parts(&self) -> [&[u8]; 2] {
        match self {
            Chunk::Shared(b) => [b, &[]],
            Chunk::Owned { buf, pos } => [&buf[*pos..], &[]],
            Chunk::Framed {
                header,
                header_len,
                head,
                payload,
            } => [
                &header[usize::from(*head)..usize::from(*header_len)],
                payload,
            ],
        }
    }

    /// How many bytes are still to send.
    #[inline]
    pub(super) fn len(&self) -> usize {
        let [a, b] = self.parts();
        a.len() + b.len()
    }
}

/// Output handed to a slot.
pub(crate) enum Output<'a> {
    /// Queued by reference count, after everything queued.
    Buf(Bytes),
    /// Queued ahead of output not yet handed to the kernel, after earlier urgent output.
    Urgent(Bytes),
    /// Copied, the parts in order as one unit, after everything queued.
    Copy(&'a [&'a [u8]]),
    /// A frame header (copied, at most [`FRAME_HEADER_MAX`] bytes) and its payload (by
    /// reference count), as one unit after everything queued.
    Framed(&'a [u8], Bytes),
}

impl Output<'_> {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Output::Buf(b) | Output::Urgent(b) => b.is_empty(),
            Output::Copy(parts) => parts.iter().all(|p| p.is_empty()),
            Output::Framed(h, p) => h.is_empty() && p.is_empty(),
        }
    }
}

/// A connection slot. Idle cost: this struct (see `docs/design/io-runtime.md`), no buffers.
pub(super) struct Slot {
    /// Output: entries `[0, committed)` were handed to the kernel (the first may be partially
    /// sent, already advanced); then `urgent` urgent entries; then normal ones.
    pub(super) queue: VecDeque<Chunk>,
    /// Lent while a vectored send is in flight.
    pub(super) sendvec: Option<Box<SendVec>>,
    /// Bytes queued or in flight.
    pub(super) queued: usize,
    pub(super) fd: RawFd,
    pub(super) generation: u32,
    pub(super) urgent: u32,
    pub(super) committed: u8,
    pub(super) state: State,
    pub(super) flags: u8,
    /// The connection's TLS session (a connection of the TLS listener): the queue then holds
    /// plaintext behind its committed entries, which are ciphertext ([`Slot::plan_send_tls`]).
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Box<crate::tls::TlsSession>>,
}

impl Slot {
    pub(super) fn new(fd: RawFd, generation: u32) -> Self {
        Slot {
            queue: VecDeque::new(),
            sendvec: None,
            queued: 0,
            fd,
            generation,
            urgent: 0,
            committed: 0,
            state: State::Open,
            flags: 0,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Whether a send may be due: queued output, or (TLS) ciphertext the session produced or a
    /// close_notify owed before the socket closes.
    #[inline]
    pub(super) fn has_output(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return !self.queue.is_empty()
                || t.has_output()
                || (self.state == State::Flushing && t.owes_close_notify());
        }
        !self.queue.is_empty()
    }

    /// Plans the next send of a TLS connection: the committed head (ciphertext, possibly
    /// partly sent) if there is one; otherwise the session's pending records followed by the
    /// waiting plaintext (up to [`crate::tls::MAX_PLAINTEXT_PER_SEND`]) encrypted now, in queue
    /// order, into one buffer. Encrypting at plan time keeps urgent frames able to go ahead of
    /// queued plaintext while the ciphertext order (record sequence numbers) is the wire order.
    /// `None`: nothing can be sent (e.g. plaintext queued before the handshake completed).
    #[cfg(feature = "tls")]
    pub(super) fn plan_send_tls(&mut self, scratch: &mut Vec<u8>) -> Option<SendPlan> {
        debug_assert!(!self.has(SEND_INFLIGHT));
        if self.committed == 0 {
            let tls = self.tls.as_mut()?;
            let mut n = 0;
            let mut bytes = 0usize;
            for b in &self.queue {
                if n > 0 && bytes + b.len() > crate::tls::MAX_PLAINTEXT_PER_SEND {
                    break;
                }
                bytes += b.len();
                n += 1;
            }
            let mut out = Vec::new();
            let parts = self.queue.iter().take(n).flat_map(Chunk::parts);
            let encrypted = tls.encrypt_parts(parts, scratch, &mut out);
            if encrypted && n > 0 {
                for _ in 0..n {
                    if let Some(b) = self.queue.pop_front() {
                        self.queued -= b.len().min(self.queued);
                    }
                }
                self.urgent = self.urgent.saturating_sub(n as u32);
            } else if !encrypted && (tls.is_dead() || self.state == State::Flushing) {
                // Plaintext that can never go out: the session failed or closed, or the
                // connection is closing before its handshake completed.
                self.drop_waiting();
            }
            let tls = self.tls.as_mut()?;
            if self.state == State::Flushing && self.queue.is_empty() && tls.owes_close_notify() {
                tls.close_notify();
                tls.encrypt(&[], &mut out);
            }
            if out.is_empty() {
                return None;
            }
            self.queued += out.len();
            self.queue.push_front(Chunk::Owned { buf: out, pos: 0 });
            self.committed = 1;
        }
        // The committed head is ciphertext: one owned piece.
        let [head, _] = self.queue[0].parts();
        let plan = SendPlan::Single {
            ptr: head.as_ptr(),
            len: head.len().min(MAX_SEND_BYTES) as u32,
        };
        self.set(SEND_INFLIGHT);
        Some(plan)
    }

    #[inline]
    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    pub(super) fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }

    #[inline]
    pub(super) fn clear(&mut self, flag: u8) {
        self.flags &= !flag;
    }

    /// Queues `out` (see [`Output`]).
    #[inline]
    pub(super) fn put(&mut self, out: Output<'_>) {
        match out {
            Output::Buf(b) => self.push(b),
            Output::Urgent(b) => self.push_urgent(b),
            Output::Copy(parts) => self.push_copy(parts),
            Output::Framed(header, payload) => self.push_framed(header, payload),
        }
    }

    /// Appends a frame whose payload is queued by reference behind its copied header, as one
    /// unit (urgent output never goes between the two).
    pub(super) fn push_framed(&mut self, header: &[u8], payload: Bytes) {
        if header.len() > FRAME_HEADER_MAX {
            self.push_copy(&[header, &payload]);
            return;
        }
        self.queued += header.len() + payload.len();
        let mut h = [0u8; FRAME_HEADER_MAX];
        h[..header.len()].copy_from_slice(header);
        self.queue.push_back(Chunk::Framed {
            header: h,
            header_len: header.len() as u8,
            head: 0,
            payload,
        });
    }

    /// Appends normal output.
    pub(super) fn push(&mut self, data: Bytes) {
        self.queued += data.len();
        self.queue.push_back(Chunk::Shared(data));
    }

    /// Inserts output ahead of queued-but-not-submitted normal data, after earlier urgent data.
    pub(super) fn push_urgent(&mut self, data: Bytes) {
        self.queued += data.len();
        let pos = usize::from(self.committed) + self.urgent as usize;
        self.queue
            .insert(pos.min(self.queue.len()), Chunk::Shared(data));
        self.urgent += 1;
    }

    /// Appends normal output by copying `parts`, in order, as one unit: into the last queue
    /// entry when it is owned, not handed to the kernel, not urgent and has room (small units
    /// may grow it up to [`COALESCE_TOTAL`]); otherwise into a new owned entry.
    pub(super) fn push_copy(&mut self, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.queued += total;
        let normal_waiting = self.queue.len() > usize::from(self.committed) + self.urgent as usize;
        if normal_waiting {
            if let Some(Chunk::Owned { buf, .. }) = self.queue.back_mut() {
                let room = buf.len() + total <= buf.capacity()
                    || (total <= COALESCE_MAX && buf.len() + total <= COALESCE_TOTAL);
                if room {
                    for p in parts {
                        buf.extend_from_slice(p);
                    }
                    return;
                }
            }
        }
        let mut buf = Vec::with_capacity(if total <= COALESCE_MAX {
            total.max(OWNED_MIN)
        } else {
            total
        });
        for p in parts {
            buf.extend_from_slice(p);
        }
        self.queue.push_back(Chunk::Owned { buf, pos: 0 });
    }

    /// Plans the next send from the head of the queue and marks the covered entries committed.
    /// The queue must be non-empty and no send in flight. A vectored plan borrows a [`SendVec`]
    /// from `pool` (kept in `self.sendvec` until the completion).
    #[allow(clippy::vec_box)] // boxed: the kernel reads it in place while the slab may grow
    pub(super) fn plan_send(&mut self, pool: &mut Vec<Box<SendVec>>) -> SendPlan {
        debug_assert!(!self.queue.is_empty() && !self.has(SEND_INFLIGHT));
        self.coalesce_head();
        let [first, second] = self.queue[0].parts();
        let one_piece = first.is_empty() || second.is_empty();
        let plan = if (self.queue.len() == 1 && one_piece) || first.len() >= MAX_SEND_BYTES {
            let piece = if first.is_empty() { second } else { first };
            let (ptr, len) = (piece.as_ptr(), piece.len().min(MAX_SEND_BYTES) as u32);
            self.commit(1);
            SendPlan::Single { ptr, len }
        } else {
            let mut sv = self
                .sendvec
                .take()
                .or_else(|| pool.pop())
                .unwrap_or_else(SendVec::new);
            // iovecs `n`, over the first `chunks` entries (a `Framed` one takes two, and is
            // committed even when only its header fits: the rest goes in the next send).
            let mut n = 0;
            let mut chunks = 0;
            let mut bytes = 0usize;
            'fill: for c in self.queue.iter() {
                let mut took = false;
                for piece in c.parts() {
                    if piece.is_empty() {
                        continue;
                    }
                    if n == MAX_IOVECS || (n > 0 && bytes + piece.len() > MAX_SEND_BYTES) {
                        chunks += usize::from(took);
                        break 'fill;
                    }
                    sv.iov[n] = libc::iovec {
                        iov_base: piece.as_ptr() as *mut libc::c_void,
                        iov_len: piece.len(),
                    };
                    bytes += piece.len();
                    n += 1;
                    took = true;
                }
                chunks += 1;
            }
            sv.hdr.msg_iov = sv.iov.as_mut_ptr();
            sv.hdr.msg_iovlen = n as _;
            self.sendvec = Some(sv);
            self.commit(chunks);
            SendPlan::Vectored { n }
        };
        self.set(SEND_INFLIGHT);
        plan
    }

    /// Merges the small buffers at the head of the queue (none of them handed to the kernel
    /// yet) into one, keeping their order: into the head itself when it is owned (frames copied
    /// in), otherwise into a new owned buffer.
    fn coalesce_head(&mut self) {
        if self.committed != 0 || self.queue.len() < 2 {
            return;
        }
        let owned_head = matches!(self.queue[0], Chunk::Owned { .. });
        let mut k = 0;
        let mut total = 0;
        for (i, b) in self.queue.iter().enumerate() {
            // A frame queued by reference stays as it is.
            let small = !matches!(b, Chunk::Framed { .. })
                && (b.len() <= COALESCE_MAX || (i == 0 && owned_head));
            if !small || total + b.len() > COALESCE_TOTAL {
                break;
            }
            total += b.len();
            k += 1;
        }
        if k < 2 {
            return;
        }
        let mut rest = self.queue.drain(..k);
        let mut merged = match rest.next() {
            Some(Chunk::Owned { mut buf, pos }) => {
                buf.drain(..pos);
                buf.reserve(total - buf.len());
                buf
            }
            Some(other) => {
                let mut v = Vec::with_capacity(total);
                for piece in other.parts() {
                    v.extend_from_slice(piece);
                }
                v
            }
            None => return,
        };
        for b in rest {
            for piece in b.parts() {
                merged.extend_from_slice(piece);
            }
        }
        self.queue.push_front(Chunk::Owned {
            buf: merged,
            pos: 0,
        });
        // The urgent entries among the merged ones are now (part of) one entry.
        let urgent_merged = (self.urgent as usize).min(k);
        if urgent_merged > 0 {
            self.urgent -= (urgent_merged - 1) as u32;
        }
    }

    fn commit(&mut self, n: usize) {
        let old = usize::from(self.committed);
        if n > old {
            self.urgent = self.urgent.saturating_sub((n - old) as u32);
            self.committed = n as u8;
        }
    }

    /// Accounts a send completion of `sent` bytes: drops fully sent entries, advances a partially
    /// sent one. Entries submitted but not sent stay committed (resent first, never reordered).
    pub(super) fn complete_send(&mut self, mut sent: usize) {
        self.clear(SEND_INFLIGHT);
        self.queued -= sent.min(self.queued);
        while sent > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if sent >= front.len() {
                sent -= front.len();
                self.queue.pop_front();
                self.committed = self.committed.saturating_sub(1);
            } else {
                front.advance(sent);
                sent = 0;
            }
        }
        if self.queue.is_empty() {
            self.committed = 0;
            self.urgent = 0;
            // Don't keep a large queue allocation on an idle connection.
            if self.queue.capacity() > 16 {
                self.queue = VecDeque::new();
            }
        }
    }

    /// The write-buffer rule: a unit of `len` bytes is refused once the bytes queued plus
    /// its own would exceed `limit` and at least `limit` bytes already wait behind what the
    /// kernel is writing (cheap test first: while everything fits there is nothing to count).
    #[inline]
    pub(super) fn over_limit(&self, len: usize, limit: usize) -> bool {
        self.queued + len > limit && self.waiting() >= limit
    }

    /// Bytes queued behind the entries handed to the kernel (which may be partly sent).
    pub(super) fn waiting(&self) -> usize {
        let in_kernel: usize = self
            .queue
            .iter()
            .take(usize::from(self.committed))
            .map(|b| b.len())
            .sum();
        self.queued - in_kernel.min(self.queued)
    }

    /// Whether the queue is empty but still holds an allocation (kept so that a busy
    /// connection does not allocate per send; the core frees it at its next tick if the
    /// connection stayed quiet, so an idle connection holds none).
    pub(super) fn holds_idle_queue(&self) -> bool {
        self.queue.is_empty() && self.queue.capacity() > 0
    }

    /// Frees the queue's allocation if the queue is still empty and nothing is in flight.
    pub(super) fn release_idle_queue(&mut self) {
        if self.queue.is_empty() && !self.has(SEND_INFLIGHT) {
            self.queue = VecDeque::new();
            // TLS: the quiet connection keeps its raw keys only (expanded ones rebuilt on use).
            #[cfg(feature = "tls")]
            if let Some(t) = &mut self.tls {
                t.release_idle();
            }
        }
    }

    /// Drops every entry not yet handed to the kernel, keeping the committed ones even between
    /// a partial send and its resubmission: the first of them may be partly on the wire, and
    /// what follows it must be the rest of that frame (the stream carries whole frames only).
    pub(super) fn drop_waiting(&mut self) {
        let keep = usize::from(self.committed);
        while self.queue.len() > keep {
            if let Some(b) = self.queue.pop_back() {
                self.queued -= b.len().min(self.queued);
            }
        }
        self.urgent = 0;
        if keep == 0 {
            self.queued = 0;
            self.queue = VecDeque::new();
        }
    }

    /// Drops everything not in flight (abort / teardown).
    pub(super) fn drop_unsent(&mut self) {
        let keep = if self.has(SEND_INFLIGHT) {
            usize::from(self.committed)
        } else {
            0
        };
        while self.queue.len() > keep {
            if let Some(b) = self.queue.pop_back() {
                self.queued -= b.len().min(self.queued);
            }
        }
        self.urgent = 0;
        if keep == 0 {
            self.committed = 0;
            self.queued = 0;
            self.queue = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn contents(c: &Slot) -> Vec<String> {
        c.queue
            .iter()
            .map(|b| String::from_utf8(b.parts().concat()).unwrap())
            .collect()
    }

    #[test]
    fn slot_size() {
        // Printed for docs/design/io-runtime.md (idle-connection cost).
        println!("size_of::<Slot>() = {}", std::mem::size_of::<Slot>());
        // Same shape as slab's private `Entry<T>`.
        #[allow(dead_code)]
        enum SlabEntry {
            Vacant(usize),
            Occupied(Slot),
        }
        println!(
            "size_of::<slab entry>() = {}",
            std::mem::size_of::<SlabEntry>()
        );
        assert!(std::mem::size_of::<Slot>() <= 72);
    }

    #[test]
    fn coalesces_small_buffers_into_one_send() {
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push(b("hello "));
        c.push(b("world"));
        c.push_urgent(b("!"));
        assert_eq!(c.queued, 12);
        match c.plan_send(&mut sv) {
            SendPlan::Single { len, .. } => assert_eq!(len, 12),
            SendPlan::Vectored { .. } => panic!("small buffers should be merged"),
        }
        // urgent data first, then the rest in order, as one buffer
        assert_eq!(contents(&c), vec!["!hello world"]);
        c.complete_send(12);
        assert!(c.queue.is_empty());
    }

    #[test]
    fn vectored_send_handles_short_writes() {
        let big = |ch: u8| Bytes::from(vec![ch; COALESCE_MAX + 1]);
        let n = COALESCE_MAX + 1;
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push(big(b'a'));
        c.push(big(b'b'));
        assert_eq!(c.queued, 2 * n);
        match c.plan_send(&mut sv) {
            SendPlan::Vectored { n } => assert_eq!(n, 2),
            SendPlan::Single { .. } => panic!("expected vectored"),
        }
        assert_eq!(c.committed, 2);
        c.push(b("!"));
        c.complete_send(n + 2); // all of "a…", two bytes of "b…"
        assert_eq!(c.queue.len(), 2);
        assert_eq!(c.queue[0].len(), n - 2);
        assert_eq!(c.queued, n - 2 + 1);
        assert_eq!(c.committed, 1);
        // the partially sent buffer is never merged with later ones
        match c.plan_send(&mut sv) {
            SendPlan::Vectored { n } => assert_eq!(n, 2),
            SendPlan::Single { .. } => panic!("expected vectored"),
        }
        c.complete_send(n - 1);
        assert!(c.queue.is_empty());
        assert_eq!(c.queued, 0);
    }

    #[test]
    fn urgent_goes_after_committed_and_earlier_urgent() {
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push(b("a"));
        let _ = c.plan_send(&mut sv); // "a" in flight
        c.push(b("b"));
        c.push(b("c"));
        c.push_urgent(b("U1"));
        c.push_urgent(b("U2"));
        assert_eq!(contents(&c), vec!["a", "U1", "U2", "b", "c"]);
        c.complete_send(0);
        // "a" still committed: urgent data never goes ahead of it.
        c.push_urgent(b("U3"));
        assert_eq!(contents(&c), vec!["a", "U1", "U2", "U3", "b", "c"]);
        let _ = c.plan_send(&mut sv);
        assert_eq!(c.urgent, 0);
        c.push_urgent(b("U4"));
        assert_eq!(contents(&c).last().unwrap(), "U4");
    }

    #[test]
    fn drop_waiting_keeps_a_partly_sent_frame() {
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push(Bytes::from(vec![7u8; 4000]));
        c.push(Bytes::from(vec![8u8; 4000]));
        let _ = c.plan_send(&mut sv);
        // The kernel took 1000 bytes of the first frame; the send is no longer in flight, the
        // rest waits to be resubmitted.
        c.complete_send(1000);
        assert!(!c.has(SEND_INFLIGHT));
        c.push(b("late"));
        assert_eq!(c.waiting(), 4);
        c.drop_waiting();
        // The rest of the committed frames stays whole; only what was never submitted goes.
        assert_eq!(c.queued, 7000);
        assert_eq!(c.queue.iter().map(|b| b.len()).sum::<usize>(), 7000);
        assert_eq!(c.waiting(), 0);
        c.push(b("close"));
        assert_eq!(c.waiting(), 5);
    }

    #[test]
    fn drop_unsent_keeps_in_flight() {
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push(b("abc"));
        let _ = c.plan_send(&mut sv);
        c.push(b("def"));
        c.drop_unsent();
        assert_eq!(contents(&c), vec!["abc"]);
        assert_eq!(c.queued, 3);
        c.complete_send(3);
        assert_eq!(c.queued, 0);
        c.push(b("x"));
        c.drop_unsent();
        assert!(c.queue.is_empty());
        assert_eq!(c.queued, 0);
    }

    #[test]
    fn framed_frames_are_one_unit_of_two_iovecs() {
        let payload = |ch: u8| Bytes::from(vec![ch; COALESCE_MAX + 1]);
        let n = COALESCE_MAX + 1;
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push_framed(b"H1", payload(b'a'));
        assert_eq!(c.queued, n + 2);
        // One frame alone still needs two iovecs.
        match c.plan_send(&mut sv) {
            SendPlan::Vectored { n } => assert_eq!(n, 2),
            SendPlan::Single { .. } => panic!("a framed entry is two pieces"),
        }
        // A short write inside the header, then inside the payload.
        c.complete_send(1);
        assert_eq!(c.queue[0].parts()[0], b"1");
        assert_eq!(c.queue[0].len(), n + 1);
        let _ = c.plan_send(&mut sv);
        c.complete_send(11);
        assert_eq!(c.queue[0].parts()[0], b"");
        assert_eq!(c.queue[0].len(), n - 10);
        // Only the payload is left: one piece, a plain send.
        match c.plan_send(&mut sv) {
            SendPlan::Single { len, .. } => assert_eq!(len as usize, n - 10),
            SendPlan::Vectored { .. } => panic!("one piece left"),
        }
        c.complete_send(n - 10);
        assert!(c.queue.is_empty());
        assert_eq!(c.queued, 0);

        // When the iovecs run out after a header, its frame is committed whole, so urgent
        // output can never go between a header and its payload.
        let frames = MAX_IOVECS / 2 + 1;
        for i in 0..frames {
            c.push_framed(&[b'H', i as u8], payload(b'p'));
        }
        c.push(b("tail"));
        // Make the iovec limit fall after a header: one entry of one piece first.
        c.queue.push_front(Chunk::Shared(b("first")));
        c.queued += 5;
        match c.plan_send(&mut sv) {
            SendPlan::Vectored { n } => assert_eq!(n, MAX_IOVECS),
            SendPlan::Single { .. } => panic!("expected vectored"),
        }
        // "first", then MAX_IOVECS / 2 - 1 whole frames and one header: all those entries are
        // committed, the last frame is not.
        assert_eq!(usize::from(c.committed), 1 + MAX_IOVECS / 2);
        c.push_urgent(b("U"));
        let pos = c
            .queue
            .iter()
            .position(|e| e.parts().concat() == b"U")
            .unwrap();
        assert_eq!(pos, usize::from(c.committed));
        assert!(matches!(c.queue[pos - 1], Chunk::Framed { .. }));
        let total = c.queued;
        let mut sent = 0;
        let mut wire = Vec::new();
        while !c.queue.is_empty() {
            if !c.has(SEND_INFLIGHT) {
                let _ = c.plan_send(&mut sv);
            }
            let k = (total - sent).min(3000);
            // What the kernel would write: the committed entries' pieces in order.
            let mut left = k;
            'w: for e in c.queue.iter().take(usize::from(c.committed)) {
                for p in e.parts() {
                    let t = p.len().min(left);
                    wire.extend_from_slice(&p[..t]);
                    left -= t;
                    if left == 0 {
                        break 'w;
                    }
                }
            }
            let k = k - left;
            c.complete_send(k);
            sent += k;
        }
        assert_eq!(sent, total);
        // The stream: "first", every frame whole and in order with the urgent "U" after the
        // committed ones, then "tail".
        let mut want = b"first".to_vec();
        for i in 0..frames {
            if i == MAX_IOVECS / 2 {
                want.extend_from_slice(b"U");
            }
            want.extend_from_slice(&[b'H', i as u8]);
            want.extend_from_slice(&vec![b'p'; n]);
        }
        want.extend_from_slice(b"tail");
        assert_eq!(wire, want);
    }

    #[test]
    fn copied_frames_share_one_owned_entry_until_it_is_submitted() {
        let mut c = Slot::new(-1, 1);
        let mut sv = Vec::new();
        c.push_copy(&[b"h1", b"payload-1"]);
        c.push_copy(&[b"h2", b"payload-2"]);
        // One entry, one allocation, both frames in order.
        assert_eq!(contents(&c), vec!["h1payload-1h2payload-2"]);
        assert!(matches!(c.queue[0], Chunk::Owned { .. }));
        // An urgent frame goes ahead of it; a frame copied in after the urgent one still joins
        // the normal entry (behind the urgent one), never the urgent entry.
        c.push_urgent(b("U"));
        c.push_copy(&[b"h3", b"p3"]);
        assert_eq!(contents(&c), vec!["U", "h1payload-1h2payload-2h3p3"]);
        assert_eq!(c.queued, 1 + 22 + 4);
        match c.plan_send(&mut sv) {
            SendPlan::Single { len, .. } => assert_eq!(len, 27),
            SendPlan::Vectored { .. } => panic!("small entries should be merged"),
        }
        // Submitted: what is copied in now goes to a new entry, the submitted bytes are
        // never touched while the kernel reads them.
        c.push_copy(&[b"h4", b"p4"]);
        assert_eq!(contents(&c), vec!["Uh1payload-1h2payload-2h3p3", "h4p4"]);
        // A short write: the rest of the submitted entry stays first and whole.
        c.complete_send(5);
        assert_eq!(contents(&c), vec!["yload-1h2payload-2h3p3", "h4p4"]);
        c.push_copy(&[b"h5", b"p5"]);
        assert_eq!(contents(&c), vec!["yload-1h2payload-2h3p3", "h4p4h5p5"]);
        assert_eq!(c.queued, 22 + 8);
        let _ = c.plan_send(&mut sv);
        c.complete_send(30);
        assert!(c.queue.is_empty());
        assert_eq!(c.queued, 0);
    }

    #[test]
    fn large_copied_frames_get_their_own_entry_and_a_shared_one_is_not_appended_to() {
        let mut c = Slot::new(-1, 1);
        let big = vec![b'x'; COALESCE_MAX + 1];
        c.push_copy(&[b"s", b"mall"]);
        c.push_copy(&[b"H", &big]);
        // Behind a small owned entry with room for it? Only while it fits the entry's
        // capacity: a large frame starts its own, exactly sized.
        assert_eq!(c.queue.len(), 1 + usize::from(OWNED_MIN < COALESCE_MAX + 6));
        c.push(b("shared"));
        c.push_copy(&[b"after"]);
        let last = contents(&c).pop().unwrap();
        assert_eq!(last, "after");
        let all: String = contents(&c).concat();
        assert_eq!(all.len(), 5 + 1 + big.len() + 6 + 5);
        assert!(all.starts_with("smallHx") && all.ends_with("xsharedafter"));
    }
}
