//! The per-core driver: ring setup, the event loop, completions, and the [`Io`] handle.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::MissedTickBehavior;

use super::bufring::BufRing;
use super::conn::{
    Output, SendPlan, SendVec, Slot, State, CLOSE_INFLIGHT, IN_DIRTY, IN_IDLE, IN_REARM, PAUSED,
    RECV_ARMED, SEND_INFLIGHT,
};
use super::{
    sys, ConnId, CoreWaker, IoConfig, RuntimeConfig, RuntimeError, RuntimeStats, Service,
    StartReport, GEN_MASK,
};

/// Completions handled per loop iteration before timers get a turn (pitfall 3).
const MAX_CQES_PER_ITER: usize = 4096;
/// Completions copied out of the ring at once.
const CQE_BATCH: usize = 256;
/// A busy loop yields to the tokio scheduler (timers, other tasks) at least this often.
const YIELD_EVERY: Duration = Duration::from_millis(1);
/// After `stop()`, the loop waits at most this long for in-flight operations.
const STOP_DRAIN: Duration = Duration::from_secs(5);
/// Pooled `SendVec`s kept per core.
const SENDVEC_POOL_MAX: usize = 256;
/// Buffer group id of the core's provided-buffer ring.
const BGID: u16 = 0;

// user_data layout: tag (4 bits) | generation (28 bits) | slot index (32 bits).
const TAG_SHIFT: u32 = 60;
const TAG_ACCEPT: u64 = 1;
const TAG_RECV: u64 = 2;
const TAG_SEND: u64 = 3;
const TAG_CLOSE: u64 = 4;
/// Cancels and the listener close: only counted.
const TAG_IGNORE: u64 = 5;

#[inline]
fn ud(tag: u64, generation: u32, idx: usize) -> u64 {
    (tag << TAG_SHIFT) | (u64::from(generation & GEN_MASK) << 32) | (idx as u64 & 0xffff_ffff)
}

#[inline]
fn ud_parts(ud: u64) -> (u64, u32, usize) {
    (
        ud >> TAG_SHIFT,
        ((ud >> 32) as u32) & GEN_MASK,
        (ud & 0xffff_ffff) as usize,
    )
}

/// What [`super::Runtime::start`] hands each core thread.
pub(super) struct CoreParams {
    pub(super) index: usize,
    pub(super) core_id: usize,
    pub(super) cfg: RuntimeConfig,
    pub(super) listener: Socket,
    /// The core's TLS listener (feature `tls`; always `None` without it).
    pub(super) tls_listener: Option<Socket>,
    pub(super) wakers: Arc<[CoreWaker]>,
    pub(super) stats: Arc<[RuntimeStats]>,
}

/// Body of a core thread.
pub(super) fn core_main<S, F>(p: CoreParams, factory: Arc<F>, tx: mpsc::Sender<StartReport>)
where
    S: Service,
    F: Fn(usize, Arc<[CoreWaker]>) -> S + Send + Sync + 'static,
{
    let index = p.index;
    let fail = move |tx: &mpsc::Sender<StartReport>, op: &'static str, source: io::Error| {
        let _ = tx.send((
            index,
            Err(RuntimeError::Core {
                core: index,
                op,
                source,
            }),
        ));
    };
    if p.cfg.pin && !core_affinity::set_for_current(core_affinity::CoreId { id: p.core_id }) {
        fail(
            &tx,
            "pin thread",
            io::Error::other("core_affinity::set_for_current failed"),
        );
        return;
    }
    let CoreParams {
        cfg,
        listener,
        tls_listener,
        wakers,
        stats,
        core_id,
        ..
    } = p;
    // Every event this thread logs carries its core.
    let _span = tracing::info_span!("core", index, cpu = core_id).entered();
    tokio_uring::start(async move {
        let waker = wakers[index].clone();
        let core = match Core::new(&cfg, index, stats, [Some(listener), tls_listener], &waker) {
            Ok(c) => c,
            Err((op, e)) => return fail(&tx, op, e),
        };
        // SAFETY: the eventfd is owned by the CoreWaker, which `run` keeps alive (and which
        // never closes or replaces it) until after this AsyncFd is dropped.
        let afd = match unsafe {
            AsyncFd::register_with_interest(EvFd(waker.eventfd()), Interest::READABLE)
        } {
            Ok(a) => a,
            Err(e) => return fail(&tx, "register eventfd with tokio", io::Error::from(e)),
        };
        let service = factory(index, wakers);
        let _ = tx.send((index, Ok(())));
        drop(tx);
        let tick = cfg.tick;
        run(Driver { core, service }, afd, waker, tick).await;
    });
}

/// Index of the plain listener in [`Core::listeners`] (and of its accept's user data).
const LISTENER_PLAIN: usize = 0;
/// Index of the TLS listener.
const LISTENER_TLS: usize = 1;

/// A core's TLS state (feature `tls`): the shared rustls configuration, the handshake count
/// and the scratch buffers every TLS connection of the core uses in turn.
#[cfg(feature = "tls")]
struct TlsCore {
    config: Arc<crate::tls::ServerConfig>,
    max_handshakes: usize,
    /// TLS connections whose handshake has not completed.
    handshaking: usize,
    /// Received bytes being decrypted in place; plaintext being gathered for encryption.
    scratch: Vec<u8>,
    /// Decrypted bytes being handed to the service.
    plain: Vec<u8>,
}

#[cfg(feature = "tls")]
impl TlsCore {
    fn new(cfg: &crate::TlsListenerConfig, listener: &Socket, stats: &RuntimeStats) -> Self {
        let _ = listener;
        let ktls = crate::os::ktls_available();
        RuntimeStats::set(&stats.ktls_available, u64::from(ktls));
        TlsCore {
            // Secret extraction on, for the record-layer hand-off after each handshake.
            config: crate::tls::prepare_config(&cfg.config),
            max_handshakes: cfg.max_handshakes_per_core,
            handshaking: 0,
            scratch: Vec::new(),
            plain: Vec::new(),
        }
    }
}

/// Scratch buffers above this capacity are released after use (one large burst does not pin
/// memory on the core).
#[cfg(feature = "tls")]
const TLS_SCRATCH_KEEP: usize = 64 * 1024;

/// The eventfd as seen by tokio (owned by the [`CoreWaker`]).
struct EvFd(RawFd);

impl AsRawFd for EvFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Everything of a core except its service; [`Io`] borrows it during callbacks.
pub(super) struct Core {
    /// Dropped explicitly, before `bufs` and before the connections' send buffers.
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    conns: Slab<Slot>,
    /// Boxed so a `SendVec` keeps its address while the kernel reads it, even if the slab grows.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<SendVec>>,
    /// Slots with output to submit.
    dirty: Vec<u32>,
    /// Slots whose send queue emptied since the last tick, keeping its allocation: freed at the
    /// tick if still empty (idle connections hold no queue; busy ones do not allocate per send).
    idle_queues: Vec<ConnId>,
    /// Slots whose receive ended with ENOBUFS, re-armed a few per iteration (pitfall 4).
    rearm: VecDeque<u32>,
    rearm_per_iter: usize,
    /// The plain listener and the TLS listener (`None` once closed, or never opened).
    listeners: [Option<Socket>; 2],
    accept_armed: [bool; 2],
    accept_rearm_on_tick: bool,
    #[cfg(feature = "tls")]
    tls: Option<TlsCore>,
    /// Submitted operations whose final completion has not arrived.
    outstanding: u64,
    next_gen: u32,
    stopping: bool,
    stop_deadline: Option<Instant>,
    max_conns: usize,
    index: usize,
    stats: Arc<[RuntimeStats]>,
    cqes: Vec<cqueue::Entry>,
}

impl Core {
    fn new(
        cfg: &RuntimeConfig,
        index: usize,
        stats: Arc<[RuntimeStats]>,
        listeners: [Option<Socket>; 2],
        waker: &CoreWaker,
    ) -> Result<Core, (&'static str, io::Error)> {
        let (ring, deferred) =
            build_ring(cfg.io.ring_entries).map_err(|e| ("io_uring setup", e))?;
        RuntimeStats::set(&stats[index].ring_defer_taskrun, u64::from(deferred));
        ring.submitter()
            .register_eventfd(waker.eventfd())
            .map_err(|e| ("io_uring register eventfd", e))?;
        // `bufs` is only dropped after `ring` below, or leaked.
        let bufs = buffer_ring(&ring, &cfg.io)?;
        RuntimeStats::set(
            &stats[index].recv_incremental,
            u64::from(bufs.incremental()),
        );
        // Re-arming is paced by how many receives the pool can take at once: whole 4 KiB
        // buffers' worth (pitfall 4), however the pool is cut.
        let rearm_per_iter = (bufs.bytes() / 4096 / 4).max(1);
        let mut core = Core {
            ring: ManuallyDrop::new(ring),
            rearm_per_iter,
            bufs: ManuallyDrop::new(bufs),
            // Reserve the whole table up front: untouched capacity costs address space, not memory,
            // and a table that grew by doubling would leave every outgrown copy resident.
            conns: Slab::with_capacity(cfg.max_connections_per_core.clamp(1, 1 << 22)),
            pool: Vec::new(),
            dirty: Vec::new(),
            idle_queues: Vec::new(),
            rearm: VecDeque::new(),
            #[cfg(feature = "tls")]
            tls: match (&cfg.tls, &listeners[LISTENER_TLS]) {
                (Some(t), Some(l)) => Some(TlsCore::new(t, l, &stats[index])),
                _ => None,
            },
            listeners,
            accept_armed: [false; 2],
            accept_rearm_on_tick: false,
            outstanding: 0,
            next_gen: 0,
            stopping: false,
            stop_deadline: None,
            max_conns: cfg.max_connections_per_core,
            index,
            stats,
            cqes: Vec::with_capacity(CQE_BATCH),
        };
        // We start out working: the eventfd only matters while parked (pitfall 2).
        core.ring.completion().disable_eventfd();
        core.arm_accept();
        Ok(core)
    }

    #[inline]
    fn stats(&self) -> &RuntimeStats {
        &self.stats[self.index]
    }

    /// Pushes one SQE, submitting first if the queue is full.
    fn push(&mut self, e: squeue::Entry) {
        let mut tries = 0;
        loop {
            // SAFETY: every SQE we build references memory that stays valid until its
            // completion: socket fds we own, provided buffers (BufRing outlives the ring),
            // `Bytes` kept in the connection queue and `SendVec`s kept in the slot until the
            // send's completion, and nothing for cancel/close/accept.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                self.outstanding += 1;
                return;
            }
            tries += 1;
            assert!(tries < 1000, "io_uring submission queue stays full");
            match self.ring.submit() {
                Ok(_) => RuntimeStats::add(&self.stats().submissions, 1),
                Err(e) if is_transient(&e) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// Arms the multishot accept of every open listener that has none.
    fn arm_accept(&mut self) {
        for which in [LISTENER_PLAIN, LISTENER_TLS] {
            let Some(l) = &self.listeners[which] else {
                continue;
            };
            if self.accept_armed[which] || self.stopping {
                continue;
            }
            let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(TAG_ACCEPT, 0, which));
            self.push(e);
            self.accept_armed[which] = true;
        }
    }

    fn arm_recv(&mut self, idx: usize) {
        let bgid = self.bufs.bgid();
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.has(RECV_ARMED) || c.has(PAUSED) || c.state != State::Open {
            return;
        }
        c.set(RECV_ARMED);
        let e = opcode::RecvMulti::new(types::Fd(c.fd), bgid)
            .build()
            .user_data(ud(TAG_RECV, c.generation, idx));
        self.push(e);
    }

    /// Stops receiving for `id`: cancels its multishot receive (completions already made still
    /// arrive) and arms none until [`Core::resume_recv`].
    pub(crate) fn pause_recv(&mut self, id: ConnId) {
        let idx = id.index();
        let Some(c) = self.conn_mut(id) else {
            return;
        };
        if c.has(PAUSED) || c.state != State::Open {
            return;
        }
        c.set(PAUSED);
        if c.has(RECV_ARMED) {
            let g = c.generation;
            self.push(
                opcode::AsyncCancel::new(ud(TAG_RECV, g, idx))
                    .build()
                    .user_data(ud(TAG_IGNORE, 0, 0)),
            );
        }
    }

    /// Receives for `id` again (arms its receive unless one is still in the kernel).
    pub(crate) fn resume_recv(&mut self, id: ConnId) {
        let idx = id.index();
        let Some(c) = self.conn_mut(id) else {
            return;
        };
        if !c.has(PAUSED) {
            return;
        }
        c.clear(PAUSED);
        self.arm_recv(idx);
    }

    fn submit_send(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        #[cfg(feature = "tls")]
        let plan = match (&c.tls, &mut self.tls) {
            (Some(_), Some(t)) => match c.plan_send_tls(&mut t.scratch) {
                Some(p) => p,
                None => return,
            },
            _ => c.plan_send(&mut self.pool),
        };
        #[cfg(not(feature = "tls"))]
        let plan = c.plan_send(&mut self.pool);
        let fd = types::Fd(c.fd);
        let e = match plan {
            SendPlan::Single { ptr, len } => opcode::Send::new(fd, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            SendPlan::Vectored { n } => {
                debug_assert!((2..=super::MAX_IOVECS).contains(&n));
                let hdr: *const libc::msghdr = match &c.sendvec {
                    Some(sv) => &sv.hdr,
                    None => unreachable!("vectored plan without SendVec"),
                };
                opcode::SendMsg::new(fd, hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
        }
        .user_data(ud(TAG_SEND, c.generation, idx));
        self.push(e);
        RuntimeStats::add(&self.stats().sends, 1);
    }

    #[inline]
    fn conn(&self, id: ConnId) -> Option<&Slot> {
        self.conns
            .get(id.index())
            .filter(|c| c.generation == id.generation())
    }

    #[inline]
    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.conns
            .get_mut(id.index())
            .filter(|c| c.generation == id.generation())
    }

    /// Queues `out` (a unit of `len` bytes, not empty) for `id` unless the write-buffer rule
    /// of [`Io::send_parts_within`] refuses it, with one lookup of the slot for both.
    #[inline]
    fn send_within(&mut self, id: ConnId, out: Output<'_>, len: usize, limit: usize) -> Sent {
        let Some(c) = self.conn_mut(id) else {
            return Sent::Closed;
        };
        if c.state != State::Open {
            return Sent::Closed;
        }
        if c.over_limit(len, limit) {
            return Sent::OverLimit;
        }
        c.put(out);
        if !c.has(IN_DIRTY) && !c.has(SEND_INFLIGHT) {
            c.set(IN_DIRTY);
            self.dirty.push(id.index() as u32);
        }
        Sent::Queued
    }

    /// Queues `out` for `id` with no limit (nothing, if it is empty); false if `id` is dead
    /// or closing.
    #[inline]
    fn send(&mut self, id: ConnId, out: Output<'_>) -> bool {
        if out.is_empty() {
            return self.conn(id).is_some_and(|c| c.state == State::Open);
        }
        // No unit is over an unbounded limit, so its length is not needed.
        self.send_within(id, out, 0, usize::MAX) == Sent::Queued
    }

    fn close(&mut self, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.state != State::Open {
            return;
        }
        if !c.has_output() && !c.has(SEND_INFLIGHT) {
            // (A TLS connection owes a close_notify first: `has_output` says so.)
            #[cfg(feature = "tls")]
            if c.tls.is_some() {
                c.state = State::Flushing;
                if c.has_output() {
                    self.mark_dirty(id.index());
                    return;
                }
            }
            self.teardown(id.index());
        } else {
            c.state = State::Flushing;
            self.mark_dirty(id.index());
        }
    }

    /// Puts a slot on the dirty list (unless it is there or has a send in flight).
    fn mark_dirty(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.has(IN_DIRTY) && !c.has(SEND_INFLIGHT) {
                c.set(IN_DIRTY);
                self.dirty.push(idx as u32);
            }
        }
    }

    fn abort(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if c.state != State::TearingDown {
                self.teardown(id.index());
            }
        }
    }

    /// Starts closing a slot: drop unsent output, cancel what is in flight, close the fd
    /// (pitfall 6). The slot is freed when the last completion arrives ([`Core::try_free`]).
    fn teardown(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.state == State::TearingDown {
            return;
        }
        c.state = State::TearingDown;
        c.drop_unsent();
        c.clear(IN_REARM);
        c.set(CLOSE_INFLIGHT);
        let (fd, generation, flags) = (c.fd, c.generation, c.flags);
        let cancel = |tag| {
            opcode::AsyncCancel::new(ud(tag, generation, idx))
                .build()
                .user_data(ud(TAG_IGNORE, 0, 0))
        };
        if flags & RECV_ARMED != 0 {
            self.push(cancel(TAG_RECV));
        }
        if flags & SEND_INFLIGHT != 0 {
            self.push(cancel(TAG_SEND));
        }
        self.push(
            opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(ud(TAG_CLOSE, generation, idx)),
        );
    }

    /// The peer closed its side (EOF, or a TLS close_notify): flush what is queued, then close.
    fn peer_closed(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.state == State::Open {
            if !c.has_output() && !c.has(SEND_INFLIGHT) {
                self.teardown(idx);
            } else {
                c.state = State::Flushing;
                self.mark_dirty(idx);
            }
        }
    }

    /// Frees a closing slot once nothing in the kernel references it; returns its id.
    fn try_free(&mut self, idx: usize) -> Option<ConnId> {
        let c = self.conns.get(idx)?;
        if c.state != State::TearingDown || c.has(RECV_ARMED | SEND_INFLIGHT | CLOSE_INFLIGHT) {
            return None;
        }
        let mut c = self.conns.remove(idx);
        #[cfg(feature = "tls")]
        if let (Some(s), Some(t)) = (&c.tls, &mut self.tls) {
            if !s.established() {
                t.handshaking -= 1;
            }
        }
        if let Some(sv) = c.sendvec.take() {
            if self.pool.len() < SENDVEC_POOL_MAX {
                self.pool.push(sv);
            }
        }
        let st = &self.stats[self.index];
        RuntimeStats::add(&st.closed, 1);
        RuntimeStats::set(&st.connections, self.conns.len() as u64);
        Some(ConnId::new(idx, c.generation))
    }

    fn stop_accepting(&mut self) {
        self.accept_rearm_on_tick = false;
        for which in [LISTENER_PLAIN, LISTENER_TLS] {
            let Some(l) = self.listeners[which].take() else {
                continue;
            };
            if self.accept_armed[which] {
                self.push(
                    opcode::AsyncCancel::new(ud(TAG_ACCEPT, 0, which))
                        .build()
                        .user_data(ud(TAG_IGNORE, 0, 0)),
                );
            }
            // The accept holds a file reference: the socket stops listening when the cancel
            // completes and this Close has removed the descriptor.
            let fd = l.into_raw_fd();
            self.push(
                opcode::Close::new(types::Fd(fd))
                    .build()
                    .user_data(ud(TAG_IGNORE, 0, 0)),
            );
        }
    }

    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stop_accepting();
        self.stopping = true;
        self.stop_deadline = Some(Instant::now() + STOP_DRAIN);
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in ids {
            self.teardown(idx);
        }
    }

    fn finished(&self) -> bool {
        self.stopping
            && ((self.conns.is_empty() && self.outstanding == 0)
                || self.stop_deadline.is_some_and(|d| Instant::now() >= d))
    }

    /// Turns pending work into SQEs: sends of dirty slots, a few re-arms, returned buffers.
    fn flush(&mut self) {
        if !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            for &idx in &dirty {
                let idx = idx as usize;
                let Some(c) = self.conns.get_mut(idx) else {
                    continue;
                };
                if !c.has(IN_DIRTY) {
                    continue;
                }
                c.clear(IN_DIRTY);
                if c.state != State::TearingDown && !c.has(SEND_INFLIGHT) && c.has_output() {
                    self.submit_send(idx);
                }
            }
            dirty.clear();
            if self.dirty.is_empty() {
                self.dirty = dirty;
            }
        }
        let mut budget = self.rearm_per_iter;
        while budget > 0 {
            let Some(idx) = self.rearm.pop_front() else {
                break;
            };
            let idx = idx as usize;
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            if !c.has(IN_REARM) {
                continue;
            }
            c.clear(IN_REARM);
            self.arm_recv(idx);
            budget -= 1;
        }
        self.bufs.publish();
    }

    fn has_pending_work(&mut self) -> bool {
        !self.dirty.is_empty() || !self.rearm.is_empty() || !self.ring.submission().is_empty()
    }

    /// Submits queued SQEs and, when completions may be waiting in the kernel (deferred task
    /// work, overflow, or a wakeup), reaps them: one `io_uring_enter` at most.
    fn enter(&mut self, woke: bool) {
        let (to_submit, kernel_work) = {
            let sq = self.ring.submission();
            (sq.len(), sq.taskrun() || sq.cq_overflow())
        };
        if to_submit == 0 && !woke && !kernel_work {
            return;
        }
        let flags = io_uring::EnterFlags::GETEVENTS.bits();
        loop {
            // SAFETY: plain io_uring_enter with no argument struct; the SQEs it submits were
            // validated when pushed (see `Core::push`).
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit as u32, 0, flags, None)
            };
            RuntimeStats::add(&self.stats().submissions, 1);
            match r {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // CQ full / no memory: drain and retry on the next iteration.
                Err(e) if is_transient(&e) => return,
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
        }
    }

    /// Whether the loop may sleep: nothing in the CQ, no deferred task work, SQ submitted.
    fn idle(&mut self) -> bool {
        let sq = self.ring.submission();
        if !sq.is_empty() || sq.taskrun() || sq.cq_overflow() {
            return false;
        }
        drop(sq);
        self.ring.completion().is_empty()
    }

    fn set_eventfd(&mut self, enabled: bool) {
        let cq = self.ring.completion();
        if enabled {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let drained = self.outstanding == 0;
        if drained {
            self.bufs.unregister(&self.ring.submitter());
        }
        // SAFETY: the ring is dropped exactly once, here, and not used afterwards. It goes first
        // so that the kernel releases the provided buffers and send buffers before we free them.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        // Sockets whose Close never went out are closed here.
        for (_, c) in self.conns.iter() {
            if !c.has(CLOSE_INFLIGHT) {
                sys::close_fd(c.fd);
            }
        }
        if drained {
            // SAFETY: dropped exactly once; with no operation outstanding the kernel no longer
            // references the buffer memory, and the ring is gone.
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        } else {
            // Operations were still in flight (stop deadline passed, or a panic unwound): ring
            // teardown completes asynchronously in the kernel, so leak rather than free memory
            // it might still write or read.
            // SAFETY: taken exactly once and never used again.
            let bufs = unsafe { ManuallyDrop::take(&mut self.bufs) };
            bufs.leak();
            std::mem::forget(std::mem::take(&mut self.conns));
        }
    }
}

/// The core's provided-buffer ring, registered with `ring`: consumed incrementally when
/// `io.buf_incremental` and the kernel has it; else the same bytes cut into buffers of at most
/// 4 KiB, since each receive then takes a whole buffer.
fn buffer_ring(ring: &IoUring, io: &IoConfig) -> Result<BufRing, (&'static str, io::Error)> {
    let new = |count, size| BufRing::new(count, size, BGID).map_err(|e| ("buffer ring", e));
    if io.buf_incremental {
        let mut bufs = new(io.buf_count, io.buf_size)?;
        match bufs.register(&ring.submitter(), true) {
            Ok(()) => return Ok(bufs),
            Err(e) => tracing::info!(
                error = %e,
                "incremental receive buffers refused by the kernel: whole buffers instead"
            ),
        }
    }
    let (count, size) = whole_buffers(io.buf_count, io.buf_size, io.buf_incremental);
    let mut bufs = new(count, size)?;
    bufs.register(&ring.submitter(), false)
        .map_err(|e| ("io_uring register buffer ring", e))?;
    Ok(bufs)
}

/// The pool of `count × size` bytes as whole-use buffers: as configured when incremental use
/// was not asked for, else cut into buffers of at most 4 KiB (a power of two of them, at most
/// 32768, at least the configured count).
fn whole_buffers(count: u16, size: u32, incremental: bool) -> (u16, u32) {
    const WHOLE_MAX: u32 = 4096;
    if !incremental || size <= WHOLE_MAX {
        return (count, size);
    }
    let bytes = u64::from(count) * u64::from(size);
    let n = (bytes / u64::from(WHOLE_MAX)).clamp(u64::from(count), 32768);
    // The largest power of two not above n.
    let n = 1u64 << (63 - n.leading_zeros());
    (n as u16, WHOLE_MAX)
}

/// Builds the core's ring; returns it and whether DEFER_TASKRUN is in use.
///
/// SINGLE_ISSUER + DEFER_TASKRUN + TASKRUN_FLAG, waited on through the registered eventfd
/// (measured fastest on the dev VM); COOP_TASKRUN + TASKRUN_FLAG where that is refused (or when
/// the environment variable `EDGE_WS_URING_COOP=1` asks for it, a diagnostic/benchmark knob).
fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    let cq = entries.saturating_mul(4);
    let force_coop = std::env::var_os("EDGE_WS_URING_COOP").is_some_and(|v| v == "1");
    if !force_coop {
        let deferred = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_clamp()
            .setup_cqsize(cq)
            .build(entries);
        if let Ok(ring) = deferred {
            return Ok((ring, true));
        }
    }
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all()
        .setup_clamp()
        .setup_cqsize(cq)
        .build(entries)
        .map(|ring| (ring, false))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

/// A core's state plus its service.
struct Driver<S> {
    core: Core,
    service: S,
}

impl<S: Service> Driver<S> {
    /// Lets the service queue held-back output, then turns pending work into SQEs.
    fn flush(&mut self) {
        let (s, mut io) = self.io();
        s.before_submit(&mut io);
        self.core.flush();
    }

    #[inline]
    fn io(&mut self) -> (&mut S, Io<'_>) {
        (&mut self.service, Io::uring(&mut self.core))
    }

    fn check_flags(&mut self, waker: &CoreWaker) {
        if waker.stop_requested() && !self.core.stopping {
            self.core.stop();
        }
        if waker.take_shutdown() && !self.core.stopping {
            let (s, mut io) = self.io();
            s.on_shutdown(&mut io);
        }
        if waker.take_wake() && !self.core.stopping {
            let (s, mut io) = self.io();
            s.on_wake(&mut io);
        }
    }

    fn tick(&mut self) {
        if self.core.stopping {
            return;
        }
        if self.core.accept_rearm_on_tick {
            self.core.accept_rearm_on_tick = false;
            self.core.arm_accept();
        }
        self.release_idle_queues();
        let (s, mut io) = self.io();
        s.on_tick(&mut io, Instant::now());
    }

    /// Frees the send-queue allocations of the connections that stayed quiet since their queue
    /// emptied (at most one tick ago).
    fn release_idle_queues(&mut self) {
        let core = &mut self.core;
        for id in core.idle_queues.drain(..) {
            if let Some(c) = core
                .conns
                .get_mut(id.index())
                .filter(|c| c.generation == id.generation())
            {
                c.clear(IN_IDLE);
                c.release_idle_queue();
            }
        }
    }

    /// Handles up to `budget` completions; returns how many.
    fn drain(&mut self, budget: &mut usize) -> usize {
        let mut total = 0;
        let mut batch = std::mem::take(&mut self.core.cqes);
        while *budget > 0 {
            batch.clear();
            batch.extend(self.core.ring.completion().take(CQE_BATCH.min(*budget)));
            if batch.is_empty() {
                break;
            }
            *budget -= batch.len();
            total += batch.len();
            for e in &batch {
                self.complete(e.user_data(), e.result(), e.flags());
            }
        }
        self.core.cqes = batch;
        total
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            self.core.outstanding -= 1;
        }
        let (tag, generation, idx) = ud_parts(user_data);
        match tag {
            TAG_ACCEPT => self.on_accept(idx, res, more),
            TAG_RECV => self.on_recv(ConnId::new(idx, generation), res, flags, more),
            TAG_SEND => self.on_send(ConnId::new(idx, generation), res),
            TAG_CLOSE => {
                if let Some(c) = self.core.conn_mut(ConnId::new(idx, generation)) {
                    c.clear(CLOSE_INFLIGHT);
                }
                self.maybe_free(idx);
            }
            _ => {}
        }
    }

    fn maybe_free(&mut self, idx: usize) {
        if let Some(id) = self.core.try_free(idx) {
            let (s, mut io) = self.io();
            s.on_close(&mut io, id);
        }
    }

    fn on_accept(&mut self, which: usize, res: i32, more: bool) {
        let which = which.min(LISTENER_TLS);
        let core = &mut self.core;
        let listening = core.listeners[which].is_some();
        if !more {
            core.accept_armed[which] = false;
            if res >= 0 {
                core.arm_accept(); // pitfall 5: a multishot that ended is simply re-armed
            } else if listening && !core.stopping {
                core.accept_rearm_on_tick = true; // e.g. EMFILE: don't spin
            }
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if listening && !core.stopping && !is_transient(&e) {
                tracing::warn!(error = %e, "accept failed");
            }
            return;
        }
        let fd = res;
        if core.stopping || !listening {
            sys::close_fd(fd);
            return;
        }
        if core.conns.len() >= core.max_conns {
            sys::close_fd(fd);
            RuntimeStats::add(&core.stats().rejected_over_limit, 1);
            tracing::info!(
                limit = core.max_conns,
                "connection refused: core at its limit"
            );
            return;
        }
        let peer = match sys::setup_accepted(fd) {
            Ok(p) => p,
            Err(e) => {
                sys::close_fd(fd);
                tracing::warn!(error = %e, "accepted socket setup failed");
                return;
            }
        };
        #[allow(unused_mut)]
        let mut slot = Slot::new(fd, 0);
        #[cfg(feature = "tls")]
        if which == LISTENER_TLS {
            let Some(t) = core.tls.as_mut() else {
                sys::close_fd(fd);
                return;
            };
            let st = &core.stats[core.index];
            RuntimeStats::add(&st.tls_accepted, 1);
            if t.handshaking >= t.max_handshakes {
                sys::close_fd(fd);
                RuntimeStats::add(&st.tls_refused, 1);
                tracing::debug!(
                    limit = t.max_handshakes,
                    "TLS connection refused: core at its handshake limit"
                );
                return;
            }
            match crate::tls::TlsSession::new(&t.config) {
                Ok(sess) => slot.tls = Some(Box::new(sess)),
                Err(e) => {
                    sys::close_fd(fd);
                    tracing::warn!(error = %e, "TLS session setup failed");
                    return;
                }
            }
            t.handshaking += 1;
        }
        core.next_gen = (core.next_gen + 1) & GEN_MASK;
        let generation = core.next_gen;
        slot.generation = generation;
        let idx = core.conns.insert(slot);
        let st = &core.stats[core.index];
        RuntimeStats::add(&st.accepted, 1);
        RuntimeStats::set(&st.connections, core.conns.len() as u64);
        let id = ConnId::new(idx, generation);
        let (s, mut io) = self.io();
        s.on_open(&mut io, id, peer);
        self.core.arm_recv(idx);
    }

    fn on_recv(&mut self, id: ConnId, res: i32, flags: u32, more: bool) {
        let idx = id.index();
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.core.conn_mut(id) else {
            if let Some(bid) = bid {
                self.core.bufs.discard(bid, flags, res);
            }
            return;
        };
        if !more {
            c.clear(RECV_ARMED);
        }
        if res > 0 {
            let state = c.state;
            #[cfg(feature = "tls")]
            let tls = c.tls.is_some();
            #[cfg(not(feature = "tls"))]
            let tls = false;
            RuntimeStats::add(&self.core.stats().bytes_in, res as u64);
            let Some(bid) = bid else {
                // Cannot happen with buffer select; treat as a broken connection.
                self.core.teardown(idx);
                return self.maybe_free(idx);
            };
            if state == State::Open {
                // SAFETY: the kernel filled `res` bytes of `bid` for this completion, taken here
                // once and in completion order (`on_recv` runs for each CQE as it is reaped);
                // the release below comes after `on_data` returns, and `data` does not escape
                // the call (its lifetime is bound to it by the `Service` signature).
                let data = unsafe { self.core.bufs.data(bid, res as usize, flags) };
                if tls {
                    #[cfg(feature = "tls")]
                    self.on_tls_data(id, data);
                } else {
                    let (s, mut io) = self.io();
                    s.on_data(&mut io, id, data);
                }
                self.core.bufs.release(bid, flags, res);
            } else {
                self.core.bufs.discard(bid, flags, res);
            }
            if !more {
                self.core.arm_recv(idx);
            }
        } else {
            if let Some(bid) = bid {
                self.core.bufs.release(bid, flags, res);
            }
            if res == 0 {
                // Peer closed its side: flush what is queued, then close.
                self.core.peer_closed(idx);
            } else if res == -libc::ENOBUFS {
                RuntimeStats::add(&self.core.stats().recv_enobufs, 1);
                let c = self.core.conns.get_mut(idx).expect("checked above");
                if !more && c.state == State::Open && !c.has(IN_REARM) {
                    c.set(IN_REARM);
                    self.core.rearm.push_back(idx as u32);
                }
            } else if res == -libc::ECANCELED {
                // A pause's cancel; if receiving resumed meanwhile, arm again (a no-op while
                // paused or closing).
                if !more {
                    self.core.arm_recv(idx);
                }
            } else {
                self.core.teardown(idx);
            }
        }
        self.maybe_free(idx);
    }

    /// Received bytes of a TLS connection: decrypt, hand the plaintext to the service, queue
    /// the handshake's answers; a failed session sends its alert and closes.
    #[cfg(feature = "tls")]
    fn on_tls_data(&mut self, id: ConnId, data: &[u8]) {
        let idx = id.index();
        let core = &mut self.core;
        let (Some(t), Some(c)) = (core.tls.as_mut(), core.conns.get_mut(idx)) else {
            return;
        };
        let Some(sess) = c.tls.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut t.plain);
        let result = sess.receive(data, &mut t.scratch, &mut plain);
        if t.scratch.capacity() > TLS_SCRATCH_KEEP {
            t.scratch = Vec::new();
        }
        let mut has_output = sess.has_output();
        let st = &core.stats[core.index];
        let mut peer_closed = false;
        match result {
            Ok(ev) => {
                if ev.handshake_done {
                    t.handshaking -= 1;
                    RuntimeStats::add(&st.tls_handshakes, 1);
                    // Plaintext queued before the handshake completed can go now.
                    has_output |= !c.queue.is_empty();
                }
                if ev.record_layer {
                    RuntimeStats::add(&st.tls_record_layer, 1);
                }
                if ev.key_updates > 0 {
                    RuntimeStats::add(&st.tls_key_updates, u64::from(ev.key_updates));
                }
                peer_closed = ev.peer_closed;
            }
            Err(f) => {
                if f.during_handshake {
                    RuntimeStats::add(&st.tls_handshake_failures, 1);
                    tracing::debug!(error = %f.error, "TLS handshake failed");
                } else {
                    RuntimeStats::add(&st.tls_errors, 1);
                    tracing::debug!(error = %f.error, "TLS record failed");
                }
                plain.clear();
                c.drop_waiting();
                c.state = State::Flushing;
                if !c.has_output() && !c.has(SEND_INFLIGHT) {
                    core.teardown(idx);
                }
            }
        }
        if has_output {
            core.mark_dirty(idx);
        }
        if !plain.is_empty() {
            let (s, mut io) = self.io();
            s.on_data(&mut io, id, &mut plain);
        }
        if peer_closed {
            self.core.peer_closed(idx);
        }
        plain.clear();
        if plain.capacity() > TLS_SCRATCH_KEEP {
            plain = Vec::new();
        }
        if let Some(t) = self.core.tls.as_mut() {
            t.plain = plain;
        }
    }

    fn on_send(&mut self, id: ConnId, res: i32) {
        let idx = id.index();
        let core = &mut self.core;
        let Some(c) = core
            .conns
            .get_mut(idx)
            .filter(|c| c.generation == id.generation())
        else {
            return;
        };
        if let Some(sv) = c.sendvec.take() {
            if core.pool.len() < SENDVEC_POOL_MAX {
                core.pool.push(sv);
            }
        }
        let mut failed = false;
        if res >= 0 {
            c.complete_send(res as usize);
            if c.holds_idle_queue() && !c.has(IN_IDLE) {
                c.set(IN_IDLE);
                core.idle_queues.push(id);
            }
            let st = &core.stats[core.index];
            RuntimeStats::add(&st.bytes_out, res as u64);
        } else {
            c.complete_send(0);
            failed = !matches!(-res, libc::EINTR | libc::EAGAIN);
        }
        match c.state {
            State::TearingDown => {
                c.drop_unsent();
                self.maybe_free(idx);
            }
            _ if failed => {
                core.teardown(idx);
                self.maybe_free(idx);
            }
            _ if c.has_output() => {
                if !c.has(IN_DIRTY) {
                    c.set(IN_DIRTY);
                    core.dirty.push(idx as u32);
                }
            }
            State::Flushing => {
                core.teardown(idx);
            }
            State::Open => {
                let (s, mut io) = self.io();
                s.on_drained(&mut io, id);
            }
        }
    }
}

/// The event loop of one core.
async fn run<S: Service>(mut drv: Driver<S>, afd: AsyncFd<EvFd>, waker: CoreWaker, tick: Duration) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut woke = true;
    let mut last_yield = Instant::now();
    loop {
        drv.check_flags(&waker);
        drv.flush();
        drv.core.enter(woke);
        woke = false;
        let mut budget = MAX_CQES_PER_ITER;
        let handled = drv.drain(&mut budget);
        if drv.core.finished() {
            break;
        }
        if handled > 0 || drv.core.has_pending_work() {
            if budget == 0 || last_yield.elapsed() >= YIELD_EVERY {
                // Submit leftovers before giving timers and other tasks a turn (pitfall 3).
                drv.flush();
                drv.core.enter(false);
                tokio::select! {
                    biased;
                    _ = interval.tick() => drv.tick(),
                    _ = tokio::task::yield_now() => {}
                }
                last_yield = Instant::now();
            }
            continue;
        }
        // Nothing to do: re-enable the eventfd, then re-check before sleeping (pitfall 2).
        drv.core.set_eventfd(true);
        fence(Ordering::SeqCst);
        if !drv.core.idle() || !waker.park() {
            drv.core.set_eventfd(false);
            continue;
        }
        tokio::select! {
            r = afd.readable() => {
                // The eventfd counter is not read back: tokio registers it edge-triggered and
                // every eventfd signal/write raises a new edge even while the counter is
                // non-zero, so clearing tokio's readiness is enough and saves a read(2) per
                // wakeup (the 64-bit counter cannot realistically overflow).
                if let Ok(mut guard) = r {
                    guard.clear_ready();
                }
                woke = true;
                RuntimeStats::add(&drv.core.stats().wakeups, 1);
            }
            _ = interval.tick() => drv.tick(),
        }
        waker.unpark();
        drv.core.set_eventfd(false);
        last_yield = Instant::now();
    }
    // Deregister from tokio while the eventfd is certainly open; then `drv` drops the ring
    // before the buffers (see `Core::drop`).
    drop(afd);
    drop(drv);
    drop(waker);
}

/// Handle into the core's driver, valid during a [`Service`] callback.
///
/// Actions are recorded and submitted together at the end of the loop iteration. Behind it is
/// either a core's io_uring driver or the in-memory transport of [`crate::mem`] (tests of the
/// layers above with no sockets): a two-way `match` per call, which keeps the hot path free of
/// dynamic dispatch and the layers above free of a generic parameter.
pub struct Io<'a> {
    backend: Backend<'a>,
}

enum Backend<'a> {
    Uring(&'a mut Core),
    Memory(&'a mut crate::mem::MemCore),
}

impl<'a> Io<'a> {
    pub(crate) fn uring(core: &'a mut Core) -> Self {
        Io {
            backend: Backend::Uring(core),
        }
    }

    pub(crate) fn memory(core: &'a mut crate::mem::MemCore) -> Self {
        Io {
            backend: Backend::Memory(core),
        }
    }

    /// The queue of `id`, whichever the backend.
    #[inline]
    fn slot(&self, id: ConnId) -> Option<&Slot> {
        match &self.backend {
            Backend::Uring(c) => c.conn(id),
            Backend::Memory(m) => m.conn(id),
        }
    }
}

impl fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io")
            .field("core_index", &self.core_index())
            .field("connections", &self.connections())
            .finish()
    }
}

/// What [`Io::send_parts_within`] did with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued.
    Queued,
    /// Refused by the write-buffer limit; nothing was queued.
    OverLimit,
    /// The connection is dead or closing; nothing was queued.
    Closed,
}

impl Io<'_> {
    /// Queues `data` for `id`; coalesced with other queued output into one send. Returns false
    /// if `id` is dead or closing.
    #[inline]
    pub fn send(&mut self, id: ConnId, data: Bytes) -> bool {
        self.output(id, Output::Buf(data))
    }

    /// Queues the bytes of `parts`, in order, for `id` as one unit (like one [`Io::send`] of
    /// their concatenation), by copying them into the connection's queue: small frames go
    /// straight into the buffer that is sent, with no allocation of their own (a frame header
    /// and its payload, say). Returns false if `id` is dead or closing.
    #[inline]
    pub fn send_parts(&mut self, id: ConnId, parts: &[&[u8]]) -> bool {
        self.output(id, Output::Copy(parts))
    }

    /// [`Io::send_parts`] under a write-buffer limit, with one lookup of the connection: the
    /// unit is refused ([`Sent::OverLimit`], nothing queued) when the bytes queued plus the
    /// unit's would exceed `limit` and at least `limit` bytes already wait behind what the
    /// kernel is writing ([`Io::queued_bytes`], [`Io::waiting_bytes`]), so a unit of any size
    /// goes out once nothing else waits.
    #[inline]
    pub fn send_parts_within(&mut self, id: ConnId, parts: &[&[u8]], limit: usize) -> Sent {
        let len = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            // Nothing to queue, nothing over any limit: only whether `id` is alive.
            return if self.output(id, Output::Copy(parts)) {
                Sent::Queued
            } else {
                Sent::Closed
            };
        }
        match &mut self.backend {
            Backend::Uring(c) => c.send_within(id, Output::Copy(parts), len, limit),
            Backend::Memory(m) => {
                if m.conn(id).is_some_and(|c| c.over_limit(len, limit)) {
                    Sent::OverLimit
                } else if m.send(id, Output::Copy(parts)) {
                    Sent::Queued
                } else {
                    Sent::Closed
                }
            }
        }
    }

    /// Queues a frame for `id` as one unit: its `header` (at most 14 bytes) copied, its
    /// `payload` by reference count, so a large payload is not copied again before the kernel
    /// reads it. Returns false if `id` is dead or closing.
    #[inline]
    pub fn send_framed(&mut self, id: ConnId, header: &[u8], payload: Bytes) -> bool {
        self.output(id, Output::Framed(header, payload))
    }

    #[inline]
    fn output(&mut self, id: ConnId, out: Output<'_>) -> bool {
        match &mut self.backend {
            Backend::Uring(c) => c.send(id, out),
            Backend::Memory(m) => m.send(id, out),
        }
    }

    /// Queues `data` ahead of queued-but-not-yet-submitted output (after earlier urgent data and
    /// after anything already handed to the kernel): for control frames. Returns false if `id`
    /// is dead or closing.
    ///
    /// Each `Bytes` passed to [`Io::send`] is a unit: urgent data is only ever inserted between
    /// units, so a frame that must stay contiguous has to be one `send` call, not several.
    #[inline]
    pub fn send_urgent(&mut self, id: ConnId, data: Bytes) -> bool {
        self.output(id, Output::Urgent(data))
    }

    /// Drops the output queued for `id` that has not been handed to the kernel yet (what is in
    /// flight completes). For a close that must go out now: discard, then `send`.
    ///
    /// Output already handed to the kernel stays queued even if only part of it was sent, so
    /// the peer never sees a frame cut short: after a discard the stream resumes at a frame
    /// boundary.
    pub fn discard_unsent(&mut self, id: ConnId) {
        let c = match &mut self.backend {
            Backend::Uring(c) => c.conn_mut(id),
            Backend::Memory(m) => m.conn_mut(id),
        };
        if let Some(c) = c {
            c.drop_waiting();
        }
    }

    /// Bytes queued or in flight for `id` (0 if dead).
    #[inline]
    pub fn queued_bytes(&self, id: ConnId) -> usize {
        self.slot(id).map_or(0, |c| c.queued)
    }

    /// Whether a unit of `len` bytes for `id` meets the write-buffer rule of
    /// [`Io::send_parts_within`] (refused once `limit` bytes already wait behind what the
    /// kernel is writing); false if `id` is dead.
    #[inline]
    pub fn over_write_limit(&self, id: ConnId, len: usize, limit: usize) -> bool {
        self.slot(id).is_some_and(|c| c.over_limit(len, limit))
    }

    /// Bytes queued for `id` behind the output handed to the kernel (0 if dead): what a
    /// write-buffer limit counts, so that a frame of any size, once being written, never
    /// counts against the frames queued after it.
    pub fn waiting_bytes(&self, id: ConnId) -> usize {
        self.slot(id).map_or(0, Slot::waiting)
    }

    /// Whether urgent output queued for `id` waits behind output the kernel is still writing:
    /// the peer is not taking what was sent, so more control frames would only pile up. (Urgent
    /// output queued while nothing is in the kernel goes out with the next send and is not
    /// blocked.)
    #[inline]
    pub fn urgent_blocked(&self, id: ConnId) -> bool {
        self.slot(id)
            .is_some_and(|c| c.urgent > 0 && c.committed > 0)
    }

    /// Flushes queued output, then closes the socket; [`Service::on_close`] follows. Received
    /// data is no longer delivered. A peer that never reads keeps the connection flushing: use
    /// [`Io::abort`] after a timeout.
    pub fn close(&mut self, id: ConnId) {
        match &mut self.backend {
            Backend::Uring(c) => c.close(id),
            Backend::Memory(m) => m.close(id),
        }
    }

    /// Drops queued output and closes now (cancelling in-flight operations);
    /// [`Service::on_close`] follows.
    pub fn abort(&mut self, id: ConnId) {
        match &mut self.backend {
            Backend::Uring(c) => c.abort(id),
            Backend::Memory(m) => m.abort(id),
        }
    }

    /// Stops receiving for `id` (backpressure): no more receives are armed, so the kernel's
    /// socket buffer fills and TCP flow control holds the peer back. Data already received may
    /// still be delivered once. In-memory backend: bytes keep being delivered (a test's peer
    /// writes what it writes); the caller holds them.
    pub fn pause_receive(&mut self, id: ConnId) {
        match &mut self.backend {
            Backend::Uring(c) => c.pause_recv(id),
            Backend::Memory(_) => {}
        }
    }

    /// Receives for `id` again after [`Io::pause_receive`].
    pub fn resume_receive(&mut self, id: ConnId) {
        match &mut self.backend {
            Backend::Uring(c) => c.resume_recv(id),
            Backend::Memory(_) => {}
        }
    }

    /// Whether `id` is open (not dead, not closing).
    #[inline]
    pub fn is_alive(&self, id: ConnId) -> bool {
        self.slot(id).is_some_and(|c| c.state == State::Open)
    }

    /// Connections in this core's table (including those closing).
    pub fn connections(&self) -> usize {
        match &self.backend {
            Backend::Uring(c) => c.conns.len(),
            Backend::Memory(m) => m.connections(),
        }
    }

    /// Index of this core into `cfg.cores`.
    pub fn core_index(&self) -> usize {
        match &self.backend {
            Backend::Uring(c) => c.index,
            Backend::Memory(m) => m.index,
        }
    }

    /// This core's counters.
    pub fn stats(&self) -> &RuntimeStats {
        match &self.backend {
            Backend::Uring(c) => c.stats(),
            Backend::Memory(m) => &m.stats,
        }
    }

    /// Aborts all connections (each gets [`Service::on_close`]), stops accepting, and leaves the
    /// loop once everything in flight completed (at most 5 s); the core thread then ends.
    pub fn stop(&mut self) {
        match &mut self.backend {
            Backend::Uring(c) => c.stop(),
            Backend::Memory(m) => m.stop(),
        }
    }

    /// Cancels the multishot accept and closes this core's listener (graceful shutdown); open
    /// connections are unaffected.
    pub fn stop_accepting(&mut self) {
        match &mut self.backend {
            Backend::Uring(c) => c.stop_accepting(),
            Backend::Memory(m) => m.accepting = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_buffers_cut_the_pool_into_4k() {
        // Asked for as configured: kept.
        assert_eq!(whole_buffers(64, 65536, false), (64, 65536));
        // The incremental default, refused: the same 4 MiB in 4 KiB buffers.
        assert_eq!(whole_buffers(64, 65536, true), (1024, 4096));
        // Already small buffers stay as they are.
        assert_eq!(whole_buffers(8, 1000, true), (8, 1000));
        // Not a power of two's worth: rounded down, never below the configured count.
        assert_eq!(whole_buffers(4, 12288, true), (8, 4096));
        assert_eq!(whole_buffers(2, 5000, true), (2, 4096));
        // At most 32768 buffers.
        assert_eq!(whole_buffers(32768, 1 << 20, true), (32768, 4096));
    }

    #[test]
    fn user_data_roundtrip() {
        let u = ud(TAG_SEND, GEN_MASK, 0xffff_ffff);
        assert_eq!(ud_parts(u), (TAG_SEND, GEN_MASK, 0xffff_ffff));
        let u = ud(TAG_RECV, 7, 3);
        assert_eq!(ud_parts(u), (TAG_RECV, 7, 3));
    }
}
