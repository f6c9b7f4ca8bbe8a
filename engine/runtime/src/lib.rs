//! # edge-ws-runtime
//!
//! The protocol-agnostic per-core io_uring transport under edge-ws, and the crate that holds
//! **every `unsafe` block of the engine**: io_uring submissions, the provided-buffer ring, the
//! eventfd doorbell, the coarse clock and signal handling ([`os`]). Each block carries a
//! `// SAFETY:` comment naming the check that makes it sound; the crates above are
//! `#![forbid(unsafe_code)]`.
//!
//! It knows nothing of WebSocket: it moves bytes between sockets and a [`Service`]. It does not
//! parse, frame or route anything, and it never blocks a core on disk or locks. With the `tls`
//! feature a second listener's connections are TLS (`TlsListenerConfig`): the core decrypts
//! what it receives and encrypts what it sends (rustls, sans-IO, module `tls`), and the
//! [`Service`] sees plaintext either way.
//!
//!
//! One OS thread per configured core (optionally pinned) runs a `tokio_uring` runtime, so tokio
//! timers, `tokio::net` and tokio-uring file operations work on that thread. Inside it a driver
//! task owns a raw [`io_uring::IoUring`] for the network hot path:
//!
//! * a `SO_REUSEPORT` listener per core with a multishot accept (`AcceptMulti`);
//! * a multishot receive (`RecvMulti`) per connection into one provided-buffer ring per core
//!   (`buf_count × buf_size` bytes in one allocation): an idle connection pins no read buffer;
//! * one send in flight per connection; everything queued meanwhile is coalesced into the next
//!   `Send`/`SendMsg` (up to [`MAX_IOVECS`] `Bytes` at once), short writes are resumed;
//! * teardown by `AsyncCancel` + `Close`, the slot is freed only once every operation that
//!   referenced it has completed, so a stale [`ConnId`] never reaches a new connection.
//!
//! The layer above (the WebSocket engine) implements [`Service`], one instance per core, and acts
//! on connections through [`Io`] during callbacks. Other threads reach a core through its
//! [`CoreWaker`]. See `docs/design/io-runtime.md` for the reasoning and measurements.

mod bufring;
mod conn;
pub mod counting;
mod driver;
pub mod mem;
pub mod os;
pub mod simd;
mod sys;
#[cfg(feature = "tls")]
pub mod tls;
mod waker;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use driver::{Io, Sent};
pub use waker::CoreWaker;

/// The most `Bytes` coalesced into one send operation (one `SendMsg` iovec array).
pub const MAX_IOVECS: usize = 64;

/// Bits of a [`ConnId`] generation (the rest of the 32 bits are reserved for io_uring tags).
const GEN_BITS: u32 = 28;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Identifies a connection on a core; carries a generation.
///
/// The index names a slot of the core's connection table; the generation changes every time the
/// slot is reused, so an id kept after its connection closed never reaches a new connection
/// (unless the same slot is reused 2^28 times in between).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// An id from its parts (for tests and for layers that keep ids in their own tables).
    pub fn new(index: usize, generation: u32) -> Self {
        debug_assert!(index <= u32::MAX as usize);
        ConnId {
            index: index as u32,
            generation: generation & GEN_MASK,
        }
    }

    /// Packs the id into a `u64` (generation in the high half, index in the low half).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks an id produced by [`ConnId::to_u64`].
    pub fn from_u64(v: u64) -> Self {
        ConnId {
            index: v as u32,
            generation: ((v >> 32) as u32) & GEN_MASK,
        }
    }

    /// The slot index in the core's connection table (dense, reused after close).
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The slot's generation.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.index, self.generation)
    }
}

/// Each core's I/O resources: its ring, its receive buffers, its listener's backlog. One
/// definition with one set of defaults, for the runtime and the engine's `Config` alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoConfig {
    /// Submission queue entries of each core's ring (the completion queue gets 4×). Default
    /// 4096.
    pub ring_entries: u32,
    /// Provided receive buffers per core (power of two, at most 32768). Default 64.
    pub buf_count: u16,
    /// Size of one provided receive buffer in bytes. Default 65536 (so 4 MiB per core).
    pub buf_size: u32,
    /// Consume receive buffers incrementally (`IOU_PBUF_RING_INC`, Linux 6.12): a receive
    /// takes only the bytes it needs from a buffer and the next goes on after them, so a few
    /// large buffers serve any mix of message sizes. Default true. Where the kernel refuses it
    /// (or with false), each receive uses a whole buffer, and the pool's bytes are cut into
    /// buffers of at most 4 KiB (`buf_count × buf_size / 4096` of them, at most 32768) so
    /// that many connections can receive at once.
    pub buf_incremental: bool,
    /// `listen(2)` backlog of each core's listener. Default 1024.
    pub backlog: i32,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            ring_entries: 4096,
            buf_count: 64,
            buf_size: 64 * 1024,
            buf_incremental: true,
            backlog: 1024,
        }
    }
}

impl IoConfig {
    /// Checks the values the runtime can work with, naming the first that cannot.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.buf_count == 0 || !self.buf_count.is_power_of_two() || self.buf_count > 32768 {
            return Err("buf_count must be a power of two in 1..=32768");
        }
        if self.buf_size == 0 {
            return Err("buf_size must be positive");
        }
        if self.ring_entries < 8 {
            return Err("ring_entries must be at least 8");
        }
        Ok(())
    }
}

/// Configuration of the per-core runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Address every core's listener binds (`SO_REUSEPORT`); port 0 picks a free port shared by
    /// all cores.
    pub addr: SocketAddr,
    /// Core ids (as reported by `core_affinity::get_core_ids`), one thread per entry.
    pub cores: Vec<usize>,
    /// Pin each thread to its core.
    pub pin: bool,
    /// Each core's ring, receive buffers and listen backlog.
    pub io: IoConfig,
    /// Connections one core keeps at most; accepts beyond it are closed at once and counted in
    /// [`RuntimeStats::rejected_over_limit`].
    pub max_connections_per_core: usize,
    /// How often [`Service::on_tick`] runs.
    pub tick: Duration,
    /// A second listener whose connections speak TLS (feature `tls`); `None`: plain only.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsListenerConfig>,
}

/// The TLS listener of every core (feature `tls`): its connections are decrypted and
/// encrypted on their core (rustls, sans-IO) and reach the [`Service`] as plaintext, exactly
/// like plain connections.
#[cfg(feature = "tls")]
#[derive(Clone, Debug)]
pub struct TlsListenerConfig {
    /// Address of every core's TLS listener (`SO_REUSEPORT`); port 0 picks a free port.
    pub addr: SocketAddr,
    /// The rustls configuration (certificates, ALPN, versions) shared by all connections.
    pub config: Arc<tls::ServerConfig>,
    /// TLS handshakes one core runs at once at most; connections accepted beyond it are closed
    /// at once and counted in [`RuntimeStats::tls_refused`] (a handshake flood costs the core
    /// its key exchanges, not its memory).
    pub max_handshakes_per_core: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            cores: vec![0],
            pin: true,
            io: IoConfig::default(),
            max_connections_per_core: 100_000,
            tick: Duration::from_millis(100),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Implemented by the layer above, one instance per core (created on that core's thread, need
/// not be `Send`).
///
/// Callbacks run on the core's thread, inside its driver loop; they must not block. Actions taken
/// through [`Io`] are submitted together at the end of the loop iteration.
pub trait Service: 'static {
    /// A connection was accepted; `id` is valid until [`Service::on_close`] returns for it.
    fn on_open(&mut self, io: &mut Io<'_>, id: ConnId, peer: SocketAddr);
    /// Bytes arrived on `id`.
    ///
    /// `data` is only valid during the call (it lives in a provided buffer that is returned to
    /// the ring right after); the service may change it in place (unmask a payload before
    /// copying it out, say). Not called once the connection is closing.
    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]);
    /// The peer closed, an error happened, or io.close/abort finished: the id is dead after this
    /// returns. Called exactly once per opened connection.
    fn on_close(&mut self, io: &mut Io<'_>, id: ConnId);
    /// All queued output of `id` reached the kernel (called only when the queue becomes empty
    /// after being non-empty, and only while the connection is open). Default: nothing.
    fn on_drained(&mut self, _io: &mut Io<'_>, _id: ConnId) {}
    /// Every `tick` (timers: heartbeats, timeouts). `now` = `Instant::now()` once per call.
    fn on_tick(&mut self, io: &mut Io<'_>, now: Instant);
    /// Called once per loop iteration after one or more [`CoreWaker::wake`] calls (a burst of
    /// wakes costs one call): drain cross-core queues here. Default: nothing.
    fn on_wake(&mut self, _io: &mut Io<'_>) {}
    /// Called once per loop iteration, before the output queued during it is turned into
    /// submissions: the place to queue output held back to batch it (a cork). Default: nothing.
    fn before_submit(&mut self, _io: &mut Io<'_>) {}
    /// Shutdown requested via [`CoreWaker::shutdown`] or [`Runtime::shutdown`]: the default
    /// calls [`Io::stop`] immediately; a layer that drains first overrides it and calls
    /// [`Io::stop`] later (e.g. from `on_tick`).
    fn on_shutdown(&mut self, io: &mut Io<'_>) {
        io.stop()
    }
}

/// Errors of [`Runtime::start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// `cores` is empty.
    #[error("no cores configured")]
    NoCores,
    /// A configured core id is not among `core_affinity::get_core_ids()`.
    #[error("core {0} does not exist on this machine")]
    NoSuchCore(usize),
    /// A core id appears twice in `cores`.
    #[error("core {0} is configured twice")]
    DuplicateCore(usize),
    /// A configuration value is out of range.
    #[error("invalid runtime configuration: {0}")]
    InvalidConfig(&'static str),
    /// Binding or listening on the address failed (e.g. the port is in use).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// A system call needed to start the runtime failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A core failed while starting (ring setup, buffer registration, pinning).
    #[error("core #{core} failed to start: {op}: {source}")]
    Core {
        /// Index into `cores` of the failing core.
        core: usize,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A core thread panicked or exited before it was up (e.g. the service factory panicked).
    #[error("core #{0} exited during start-up")]
    CoreExited(usize),
}

/// Per-core counters, updated by the owning core only (Relaxed load + store, no locked
/// read-modify-write), readable from anywhere with `load(Ordering::Relaxed)`.
///
/// Each core's block is 64-byte aligned so cores never write the same cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct RuntimeStats {
    /// Connections accepted and opened.
    pub accepted: AtomicU64,
    /// Connections accepted and closed at once because `max_connections_per_core` was reached.
    pub rejected_over_limit: AtomicU64,
    /// Connections closed (each opened connection counts once, when its slot is freed).
    pub closed: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes the kernel accepted for sending.
    pub bytes_out: AtomicU64,
    /// Multishot receives that ended because the provided-buffer ring was empty.
    pub recv_enobufs: AtomicU64,
    /// Send operations (`Send` or `SendMsg`) submitted.
    pub sends: AtomicU64,
    /// `io_uring_enter` calls made by the core.
    pub submissions: AtomicU64,
    /// Times the core woke from its parked state (eventfd readiness).
    pub wakeups: AtomicU64,
    /// Connections currently in the table (including those closing).
    pub connections: AtomicU64,
    /// 1 if the core's ring runs with DEFER_TASKRUN, 0 if it fell back to COOP_TASKRUN.
    pub ring_defer_taskrun: AtomicU64,
    /// 1 if the core's receive buffers are consumed incrementally (`IoConfig::buf_incremental`
    /// and a kernel that has it), 0 if each receive uses a whole buffer.
    pub recv_incremental: AtomicU64,
    /// TLS connections accepted on the TLS listener.
    pub tls_accepted: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (not a ClientHello, no common version or cipher, bad
    /// record, ...): answered with an alert and closed.
    pub tls_handshake_failures: AtomicU64,
    /// Established TLS connections closed because a record failed (decryption, protocol).
    pub tls_errors: AtomicU64,
    /// TLS connections closed at accept because the core already ran its most handshakes.
    pub tls_refused: AtomicU64,
    /// Established TLS connections handed from rustls to the runtime's own record layer
    /// (the rest stay on rustls: see `docs/design/tls.md`, "Record layer").
    pub tls_record_layer: AtomicU64,
    /// TLS 1.3 KeyUpdate messages received and followed by the record layer.
    pub tls_key_updates: AtomicU64,
    /// 1 if the kernel offers the `tls` TCP upper-layer protocol (kTLS), 0 if not; probed at
    /// start on each core with a TLS listener (the connections use user-space TLS either way).
    pub ktls_available: AtomicU64,
}

impl RuntimeStats {
    /// Adds `n` to a counter; only the owning core writes, so a plain load + store suffices.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }
}

/// Handle to the running cores.
///
/// Dropping it without [`Runtime::join`] asks every core to shut down and waits for them.
pub struct Runtime {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    wakers: Arc<[CoreWaker]>,
    stats: Arc<[RuntimeStats]>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("local_addr", &self.local_addr)
            .field("cores", &self.wakers.len())
            .finish()
    }
}

/// What a core thread reports once it is up (or why it is not).
type StartReport = (usize, Result<(), RuntimeError>);

impl Runtime {
    /// Validates the config, binds one listener per core, spawns the core threads and returns
    /// once every core is up, or with the first error.
    ///
    /// Errors: zero cores, a core id not in `core_affinity::get_core_ids()`, a duplicate core,
    /// a bad buffer configuration, the address in use (reported here, before threads start; note
    /// that another `SO_REUSEPORT` socket of the same user does *not* count as "in use"), or a
    /// core failing to set up its ring. `factory(core_index, wakers)` runs on each core's own
    /// thread to build its [`Service`].
    pub fn start<S, F>(cfg: RuntimeConfig, factory: F) -> Result<Runtime, RuntimeError>
    where
        S: Service,
        F: Fn(usize, Arc<[CoreWaker]>) -> S + Send + Sync + 'static,
    {
        validate(&cfg)?;
        let listeners = sys::bind_listeners(cfg.addr, cfg.cores.len(), cfg.io.backlog)?;
        let local_addr = sys::local_addr(&listeners[0]).map_err(|source| RuntimeError::Io {
            op: "getsockname",
            source,
        })?;
        #[cfg(feature = "tls")]
        let mut tls_listeners: Vec<Option<socket2::Socket>> = match &cfg.tls {
            Some(t) => sys::bind_listeners(t.addr, cfg.cores.len(), cfg.io.backlog)?
                .into_iter()
                .map(Some)
                .collect(),
            None => (0..cfg.cores.len()).map(|_| None).collect(),
        };
        #[cfg(not(feature = "tls"))]
        let mut tls_listeners: Vec<Option<socket2::Socket>> =
            (0..cfg.cores.len()).map(|_| None).collect();
        let tls_local_addr = match tls_listeners.first() {
            Some(Some(l)) => Some(sys::local_addr(l).map_err(|source| RuntimeError::Io {
                op: "getsockname",
                source,
            })?),
            _ => None,
        };

        let mut wakers = Vec::with_capacity(cfg.cores.len());
        for i in 0..cfg.cores.len() {
            wakers.push(CoreWaker::new(i).map_err(|source| RuntimeError::Io {
                op: "eventfd",
                source,
            })?);
        }
        let wakers: Arc<[CoreWaker]> = wakers.into();
        let stats: Arc<[RuntimeStats]> = (0..cfg.cores.len())
            .map(|_| RuntimeStats::default())
            .collect();
        let factory = Arc::new(factory);
        let (tx, rx) = mpsc::channel::<StartReport>();

        let mut threads = Vec::with_capacity(cfg.cores.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let core = driver::CoreParams {
                index,
                core_id: cfg.cores[index],
                cfg: cfg.clone(),
                listener,
                tls_listener: tls_listeners[index].take(),
                wakers: wakers.clone(),
                stats: stats.clone(),
            };
            let factory = factory.clone();
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("edge-ws-core-{index}"))
                .spawn(move || driver::core_main(core, factory, tx));
            match spawned {
                Ok(h) => threads.push(h),
                Err(source) => {
                    let rt = Runtime {
                        local_addr,
                        tls_local_addr,
                        wakers,
                        stats,
                        threads,
                    };
                    rt.force_stop_and_join();
                    return Err(RuntimeError::Io {
                        op: "spawn core thread",
                        source,
                    });
                }
            }
        }
        drop(tx);

        let rt = Runtime {
            local_addr,
            tls_local_addr,
            wakers,
            stats,
            threads,
        };
        let mut up = 0;
        while up < rt.threads.len() {
            let err = match rx.recv() {
                Ok((_, Ok(()))) => {
                    up += 1;
                    continue;
                }
                Ok((_, Err(e))) => e,
                // Every sender is gone before all cores reported: one panicked during start-up.
                Err(_) => {
                    let dead = rt.threads.iter().position(|h| h.is_finished()).unwrap_or(0);
                    RuntimeError::CoreExited(dead)
                }
            };
            rt.force_stop_and_join();
            return Err(err);
        }
        Ok(rt)
    }

    fn force_stop_and_join(mut self) {
        for w in self.wakers.iter() {
            w.force_stop();
        }
        for h in std::mem::take(&mut self.threads) {
            let _ = h.join();
        }
    }

    /// The address the listeners are bound to (with the real port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the TLS listeners are bound to, if there are any (feature `tls`).
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// The doorbells of all cores, indexed like `cfg.cores`.
    pub fn wakers(&self) -> Arc<[CoreWaker]> {
        self.wakers.clone()
    }

    /// The counters of all cores, indexed like `cfg.cores`.
    pub fn stats(&self) -> Arc<[RuntimeStats]> {
        self.stats.clone()
    }

    /// Asks every core to shut down ([`Service::on_shutdown`]).
    pub fn shutdown(&self) {
        for w in self.wakers.iter() {
            w.shutdown();
        }
    }

    /// Waits for all core threads to end; returns the first panic payload, if any.
    pub fn join(mut self) -> std::thread::Result<()> {
        let mut result = Ok(());
        for h in std::mem::take(&mut self.threads) {
            if let Err(e) = h.join() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shutdown();
        for h in std::mem::take(&mut self.threads) {
            let _ = h.join();
        }
    }
}

fn validate(cfg: &RuntimeConfig) -> Result<(), RuntimeError> {
    if cfg.cores.is_empty() {
        return Err(RuntimeError::NoCores);
    }
    let available: Vec<usize> = match core_affinity::get_core_ids() {
        Some(ids) => ids.into_iter().map(|c| c.id).collect(),
        None => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    };
    for (i, &c) in cfg.cores.iter().enumerate() {
        if !available.contains(&c) {
            return Err(RuntimeError::NoSuchCore(c));
        }
        if cfg.cores[..i].contains(&c) {
            return Err(RuntimeError::DuplicateCore(c));
        }
    }
    cfg.io.validate().map_err(RuntimeError::InvalidConfig)?;
    if cfg.tick.is_zero() {
        return Err(RuntimeError::InvalidConfig("tick must be positive"));
    }
    #[cfg(feature = "tls")]
    if cfg
        .tls
        .as_ref()
        .is_some_and(|t| t.max_handshakes_per_core == 0)
    {
        return Err(RuntimeError::InvalidConfig(
            "tls.max_handshakes_per_core must be positive",
        ));
    }
    if cfg.max_connections_per_core > (u32::MAX as usize) {
        return Err(RuntimeError::InvalidConfig(
            "max_connections_per_core must fit in u32",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_roundtrip() {
        let id = ConnId::new(12345, 0x0abc_def1);
        assert_eq!(ConnId::from_u64(id.to_u64()), id);
        assert_eq!(id.index(), 12345);
        let id = ConnId::new(u32::MAX as usize, GEN_MASK);
        assert_eq!(ConnId::from_u64(id.to_u64()), id);
    }

    #[test]
    fn stats_are_cache_line_separated() {
        assert_eq!(std::mem::align_of::<RuntimeStats>(), 64);
        assert_eq!(std::mem::size_of::<RuntimeStats>() % 64, 0);
    }

    #[test]
    fn validate_rejects_bad_buffers() {
        let cfg = RuntimeConfig {
            io: IoConfig {
                buf_count: 500,
                ..IoConfig::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            validate(&cfg),
            Err(RuntimeError::InvalidConfig(_))
        ));
    }
}
