//! An in-memory transport: a [`Service`] driven with no sockets and no io_uring, for testing
//! the layers above (WebSocket, fan-out, the cork, the connection manager) in plain unit tests.
//!
//! [`MemDriver`] plays one core. A test opens connections, feeds them bytes as if they came from
//! the network, runs ticks and wakes, and reads what the service sent. Output goes through the
//! same per-connection queue as the real driver (coalescing, urgent frames, what counts as
//! "handed to the kernel"), into a per-connection wire. Each connection has a *window*: how many
//! more bytes its peer accepts (unlimited by default). A send that meets a closed window stays
//! "in the kernel", as a send to a peer that does not read would, so slow consumers and stalled
//! control frames can be tested exactly.
//!
//! Every callback is followed by one loop iteration: `before_submit`, then sends, then the
//! `on_drained` and `on_close` callbacks they cause, until nothing more happens.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use slab::Slab;

use crate::conn::{Output, SendVec, Slot, State, SEND_INFLIGHT};
use crate::{ConnId, Io, RuntimeStats, Service, GEN_MASK};

/// One connection of the memory core: its queue and what the peer has been sent.
struct MemSlot {
    conn: Slot,
    /// Bytes delivered to the peer, not yet taken by the test.
    wire: Vec<u8>,
    /// How many more bytes the peer accepts; `None`: any number.
    window: Option<usize>,
    /// Output was queued since the queue was last empty (an `on_drained` is due when it empties).
    had_output: bool,
}

/// The memory core behind an [`Io`] of a [`MemDriver`].
pub struct MemCore {
    pub(crate) index: usize,
    slots: Slab<MemSlot>,
    next_gen: u32,
    pub(crate) stats: RuntimeStats,
    pub(crate) accepting: bool,
    stopped: bool,
    /// Slots that may have output to move.
    dirty: Vec<usize>,
    /// Slots torn down, whose `on_close` is due.
    closing: VecDeque<ConnId>,
    #[allow(clippy::vec_box)] // the same pool type as the real driver's
    pool: Vec<Box<SendVec>>,
    /// What closed connections' peers were sent and the test has not taken yet.
    leftovers: std::collections::HashMap<ConnId, Vec<u8>>,
}

impl std::fmt::Debug for MemCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemCore")
            .field("index", &self.index)
            .field("connections", &self.slots.len())
            .finish()
    }
}

impl MemCore {
    fn new(index: usize) -> Self {
        MemCore {
            index,
            slots: Slab::new(),
            next_gen: 0,
            stats: RuntimeStats::default(),
            accepting: true,
            stopped: false,
            dirty: Vec::new(),
            closing: VecDeque::new(),
            pool: Vec::new(),
            leftovers: std::collections::HashMap::new(),
        }
    }

    fn slot(&self, id: ConnId) -> Option<&MemSlot> {
        self.slots
            .get(id.index())
            .filter(|s| s.conn.generation == id.generation())
    }

    fn slot_mut(&mut self, id: ConnId) -> Option<&mut MemSlot> {
        self.slots
            .get_mut(id.index())
            .filter(|s| s.conn.generation == id.generation())
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Slot> {
        self.slot(id).map(|s| &s.conn)
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.slot_mut(id).map(|s| &mut s.conn)
    }

    pub(crate) fn connections(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn send(&mut self, id: ConnId, out: Output<'_>) -> bool {
        let Some(s) = self.slot_mut(id) else {
            return false;
        };
        if s.conn.state != State::Open {
            return false;
        }
        if out.is_empty() {
            return true;
        }
        s.conn.put(out);
        s.had_output = true;
        self.dirty.push(id.index());
        true
    }

    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(s) = self.slot_mut(id) else { return };
        if s.conn.state != State::Open {
            return;
        }
        s.conn.state = State::Flushing;
        self.dirty.push(id.index());
    }

    pub(crate) fn abort(&mut self, id: ConnId) {
        let Some(s) = self.slot_mut(id) else { return };
        if s.conn.state == State::TearingDown {
            return;
        }
        s.conn.state = State::TearingDown;
        s.conn.drop_unsent();
        self.closing.push_back(id);
    }

    pub(crate) fn stop(&mut self) {
        self.accepting = false;
        self.stopped = true;
        let ids: Vec<ConnId> = self
            .slots
            .iter()
            .map(|(i, s)| ConnId::new(i, s.conn.generation))
            .collect();
        for id in ids {
            self.abort(id);
        }
    }

    /// Moves queued output of the dirty slots to their wires, as far as each window allows.
    /// A send is "in the kernel" from when it is planned until all of it was written; one that
    /// meets a closed window stays there.
    fn flush(&mut self) -> Vec<ConnId> {
        let mut drained = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for idx in dirty {
            let Some(s) = self.slots.get_mut(idx) else {
                continue;
            };
            if s.conn.state == State::TearingDown {
                continue;
            }
            loop {
                if !s.conn.has(SEND_INFLIGHT) {
                    if s.conn.queue.is_empty() {
                        break;
                    }
                    let _ = s.conn.plan_send(&mut self.pool);
                    RuntimeStats::add(&self.stats.sends, 1);
                }
                let in_kernel: usize = s
                    .conn
                    .queue
                    .iter()
                    .take(usize::from(s.conn.committed))
                    .map(|b| b.len())
                    .sum();
                let n = s.window.map_or(in_kernel, |w| w.min(in_kernel));
                if n == 0 {
                    break; // stays in the kernel until the peer reads
                }
                let mut left = n;
                'wire: for b in s.conn.queue.iter() {
                    for piece in b.parts() {
                        let k = piece.len().min(left);
                        s.wire.extend_from_slice(&piece[..k]);
                        left -= k;
                        if left == 0 {
                            break 'wire;
                        }
                    }
                }
                if let Some(w) = s.window.as_mut() {
                    *w -= n;
                }
                if let Some(sv) = s.conn.sendvec.take() {
                    self.pool.push(sv);
                }
                s.conn.complete_send(n);
                RuntimeStats::add(&self.stats.bytes_out, n as u64);
            }
            let id = ConnId::new(idx, s.conn.generation);
            if s.conn.queue.is_empty() && !s.conn.has(SEND_INFLIGHT) {
                match s.conn.state {
                    State::Flushing => {
                        s.conn.state = State::TearingDown;
                        self.closing.push_back(id);
                    }
                    State::Open if s.had_output => {
                        s.had_output = false;
                        drained.push(id);
                    }
                    _ => {}
                }
            }
        }
        drained
    }
}

/// One core's [`Service`] on the in-memory transport (see the [module docs](self)).
#[derive(Debug)]
pub struct MemDriver<S> {
    core: MemCore,
    service: S,
}

impl<S: Service> MemDriver<S> {
    /// A memory core with index `index` (what [`Io::core_index`] reports) running `service`.
    pub fn new(index: usize, service: S) -> Self {
        MemDriver {
            core: MemCore::new(index),
            service,
        }
    }

    /// The service, to inspect or drive directly.
    pub fn service(&mut self) -> &mut S {
        &mut self.service
    }

    /// This core's runtime counters.
    pub fn stats(&self) -> &RuntimeStats {
        &self.core.stats
    }

    /// Whether the service called [`Io::stop`].
    pub fn stopped(&self) -> bool {
        self.core.stopped
    }

    /// Whether the service still accepts connections (it has not called
    /// [`Io::stop_accepting`] or [`Io::stop`]).
    pub fn accepting(&self) -> bool {
        self.core.accepting
    }

    /// Connections in the table (including those closing).
    pub fn connections(&self) -> usize {
        self.core.slots.len()
    }

    /// A peer at `peer` connects: [`Service::on_open`], then one loop iteration. `None` when the
    /// core no longer accepts.
    pub fn connect(&mut self, peer: SocketAddr) -> Option<ConnId> {
        if !self.core.accepting {
            return None;
        }
        self.core.next_gen = (self.core.next_gen + 1) & GEN_MASK;
        let generation = self.core.next_gen;
        let idx = self.core.slots.insert(MemSlot {
            conn: Slot::new(-1, generation),
            wire: Vec::new(),
            window: None,
            had_output: false,
        });
        let id = ConnId::new(idx, generation);
        RuntimeStats::add(&self.core.stats.accepted, 1);
        let mut io = Io::memory(&mut self.core);
        self.service.on_open(&mut io, id, peer);
        self.run();
        Some(id)
    }

    /// `data` arrives on `id` (ignored once the connection is closing, as on a socket):
    /// [`Service::on_data`], then one loop iteration.
    pub fn receive(&mut self, id: ConnId, data: &[u8]) {
        let open = self
            .core
            .slot(id)
            .is_some_and(|s| s.conn.state == State::Open);
        if open {
            RuntimeStats::add(&self.core.stats.bytes_in, data.len() as u64);
            let mut io = Io::memory(&mut self.core);
            // A receive buffer of its own, as the kernel's provided buffer is.
            let mut received = data.to_vec();
            self.service.on_data(&mut io, id, &mut received);
        }
        self.run();
    }

    /// The peer hangs up (or the connection fails): [`Service::on_close`] follows.
    pub fn hang_up(&mut self, id: ConnId) {
        self.core.abort(id);
        self.run();
    }

    /// A timer tick at `now`: [`Service::on_tick`], then one loop iteration.
    pub fn tick(&mut self, now: Instant) {
        let mut io = Io::memory(&mut self.core);
        self.service.on_tick(&mut io, now);
        self.run();
    }

    /// A doorbell rang: [`Service::on_wake`], then one loop iteration.
    pub fn wake(&mut self) {
        let mut io = Io::memory(&mut self.core);
        self.service.on_wake(&mut io);
        self.run();
    }

    /// Shutdown was requested: [`Service::on_shutdown`], then one loop iteration.
    pub fn shutdown(&mut self) {
        let mut io = Io::memory(&mut self.core);
        self.service.on_shutdown(&mut io);
        self.run();
    }

    /// Runs `f` with the service and an [`Io`], as a callback would, then one loop iteration
    /// (for acting on the service from a test, e.g. a send from outside a callback).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut S, &mut Io<'_>) -> R) -> R {
        let mut io = Io::memory(&mut self.core);
        let r = f(&mut self.service, &mut io);
        self.run();
        r
    }

    /// Takes the bytes sent to `id`'s peer so far, also after it closed (empty for an unknown
    /// id).
    pub fn take_sent(&mut self, id: ConnId) -> Vec<u8> {
        match self.core.slot_mut(id) {
            Some(s) => std::mem::take(&mut s.wire),
            None => self.core.leftovers.remove(&id).unwrap_or_default(),
        }
    }

    /// Sets how many more bytes `id`'s peer accepts (`None`: any number), then lets queued
    /// output move: `Some(0)` makes a peer that does not read.
    pub fn set_window(&mut self, id: ConnId, window: Option<usize>) {
        if let Some(s) = self.core.slot_mut(id) {
            s.window = window;
            self.core.dirty.push(id.index());
        }
        self.run();
    }

    /// Whether `id` is still in the table (not yet closed and freed).
    pub fn is_open(&self, id: ConnId) -> bool {
        self.core.slot(id).is_some()
    }

    /// Bytes queued for `id` and not yet delivered to its peer.
    pub fn queued(&self, id: ConnId) -> usize {
        self.core.slot(id).map_or(0, |s| s.conn.queued)
    }

    /// One loop iteration and the callbacks it causes, until nothing more happens.
    fn run(&mut self) {
        loop {
            let mut io = Io::memory(&mut self.core);
            self.service.before_submit(&mut io);
            let drained = self.core.flush();
            let closing: Vec<ConnId> = self.core.closing.drain(..).collect();
            if drained.is_empty() && closing.is_empty() && self.core.dirty.is_empty() {
                return;
            }
            for id in drained {
                let mut io = Io::memory(&mut self.core);
                self.service.on_drained(&mut io, id);
            }
            for id in closing {
                if self.core.slot(id).is_none() {
                    continue;
                }
                let mut io = Io::memory(&mut self.core);
                self.service.on_close(&mut io, id);
                let slot = self.core.slots.remove(id.index());
                if !slot.wire.is_empty() {
                    self.core.leftovers.insert(id, slot.wire);
                }
                RuntimeStats::add(&self.core.stats.closed, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Echoes, queues a control frame on "!", closes on "bye", and records callbacks.
    #[derive(Default)]
    struct Probe {
        opened: Vec<ConnId>,
        closed: Vec<ConnId>,
        drained: usize,
    }

    impl Service for Probe {
        fn on_open(&mut self, _io: &mut Io<'_>, id: ConnId, _peer: SocketAddr) {
            self.opened.push(id);
        }
        fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
            match &*data {
                b"bye" => io.close(id),
                b"!" => {
                    io.send_urgent(id, Bytes::from_static(b"!"));
                }
                _ => {
                    io.send(id, Bytes::copy_from_slice(data));
                }
            }
        }
        fn on_close(&mut self, _io: &mut Io<'_>, id: ConnId) {
            self.closed.push(id);
        }
        fn on_drained(&mut self, _io: &mut Io<'_>, _id: ConnId) {
            self.drained += 1;
        }
        fn on_tick(&mut self, _io: &mut Io<'_>, _now: Instant) {}
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1234".parse().unwrap()
    }

    #[test]
    fn echo_close_and_stale_ids() {
        let mut d = MemDriver::new(0, Probe::default());
        let id = d.connect(peer()).unwrap();
        d.receive(id, b"hello");
        assert_eq!(d.take_sent(id), b"hello");
        assert_eq!(d.service().drained, 1);
        d.receive(id, b"bye");
        assert!(!d.is_open(id));
        assert_eq!(d.service().closed, vec![id]);
        // The slot is reused with a new generation: the old id reaches nothing.
        let id2 = d.connect(peer()).unwrap();
        assert_eq!(id2.index(), id.index());
        assert_ne!(id2, id);
        d.receive(id, b"stale");
        assert!(d.take_sent(id2).is_empty());
    }

    #[test]
    fn a_closed_window_keeps_a_send_in_the_kernel() {
        let mut d = MemDriver::new(0, Probe::default());
        let id = d.connect(peer()).unwrap();
        d.set_window(id, Some(3));
        d.receive(id, b"abcdef");
        assert_eq!(d.take_sent(id), b"abc");
        // The rest is in the kernel: what waits behind it counts, it does not.
        d.receive(id, b"xyz");
        let (waiting, queued, urgent) = d.with(|_, io| {
            (
                io.waiting_bytes(id),
                io.queued_bytes(id),
                io.urgent_blocked(id),
            )
        });
        assert_eq!((waiting, queued, urgent), (3, 6, false));
        d.receive(id, b"!");
        assert!(d.with(|_, io| io.urgent_blocked(id)));
        // Discarding keeps the partly sent frame whole.
        d.with(|_, io| io.discard_unsent(id));
        d.set_window(id, None);
        assert_eq!(d.take_sent(id), b"def");
    }

    #[test]
    fn close_flushes_first_and_stop_aborts_everything() {
        let mut d = MemDriver::new(0, Probe::default());
        let a = d.connect(peer()).unwrap();
        let b = d.connect(peer()).unwrap();
        d.set_window(a, Some(0));
        d.receive(a, b"pending");
        d.with(|_, io| io.close(a));
        assert!(d.is_open(a), "still flushing");
        d.set_window(a, None);
        assert_eq!(d.take_sent(a), b"pending");
        assert!(!d.is_open(a));
        d.with(|_, io| io.stop());
        assert!(d.stopped());
        assert!(!d.is_open(b));
        assert_eq!(d.service().closed.len(), 2);
        assert!(d.connect(peer()).is_none());
    }
}
