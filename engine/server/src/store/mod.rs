//! # The durable store
//!
//! An embedded, crash-safe store for what the product keeps across restarts: channel history
//! (ordered records per channel with retention), notifications, document operations and
//! snapshots. It sits on [redb](https://docs.rs/redb) (a copy-on-write B-tree in one file, pure
//! Rust) and is enabled by the default-on cargo feature `store`. Design and measurements:
//! `docs/design/store.md`.
//!
//! # Threads
//!
//! Every embedded store blocks (and none uses io_uring), so the engine's cores never touch the
//! disk themselves. [`Store::open`] starts **one store thread** per store; writes reach it
//! through a bounded queue and each comes with an [`Ack`], called on the store thread once the
//! write is durable (or has failed). The thread practises **group commit**: it takes every
//! write waiting in the queue (up to [`StoreOptions::max_batch`]) into one transaction and
//! commits it once, so the cost of a commit (one or two fsyncs) is shared by the whole batch
//! and throughput grows with load instead of being capped at one write per fsync.
//!
//! * The cores submit with the **non-blocking** forms ([`StoreHandle::try_append`],
//!   [`StoreHandle::try_submit`]): a full queue answers [`StoreError::QueueFull`] at once
//!   (backpressure: shed, delay or refuse the client's request) instead of blocking the core.
//!   The waiting forms ([`StoreHandle::append`], [`StoreHandle::submit`]) and the blocking ones
//!   ([`StoreHandle::append_blocking`], [`StoreHandle::submit_blocking`]) are for tools, tests
//!   and threads that may block.
//! * An ack runs **on the store thread**: it must be short and must not block (push into a
//!   core's command queue and return). A panicking ack is caught and counted. Acks of one batch
//!   run in submission order, after its commit.
//! * **Reads** ([`StoreHandle::read_since`], [`StoreHandle::position`], [`StoreHandle::get`],
//!   [`StoreHandle::range`], ...) run on the calling thread, in a redb read transaction (a
//!   consistent snapshot of the last commit), never on the store thread's write path. They may
//!   read from disk when the pages are not cached, so on a core they belong on a worker, or
//!   at startup ([`StoreHandle::load_all_positions`]).
//! * Dropping the last [`StoreHandle`] (or calling [`StoreHandle::shutdown`]) lets the thread
//!   drain the queue, commit what was pending, close the file and exit; the drop waits for it
//!   (except where the last handle is dropped by an ack, on the store thread itself: the thread
//!   then exits right after, unwaited).
//!
//! # Durability
//!
//! **An acknowledged write is on disk.** With [`Durability::Fsync`] (the default) the ack
//! with `Ok` runs after the commit that holds the write returned from its `fdatasync`: it
//! survives the death of the process and the loss of power (as far as the device honours
//! flushes). With [`Durability::Buffered`] the commit writes every page and the header into the
//! file but skips the fsync: an acknowledged write survives the death of the process (kill -9,
//! panic, OOM kill), **not** power loss or a kernel crash, where recent commits may be lost and
//! the file may need its repair pass (or, since writes reach the device in any order, fail it).
//! redb's own non-durable mode is not used at all: it keeps commits in memory and loses every
//! one of them on kill -9. Both guarantees are checked by kill -9 tests.
//!
//! A write acknowledged with an error was not applied (with one exception: an fsync that
//! fails after the header was written may leave the batch on disk; [`StoreHandle::position`]
//! tells). Nothing is dropped silently: every submitted write gets exactly one answer — the
//! `Err` of the submitting call (then the ack is not called), or one call of its ack.
//!
//! # Errors and recovery
//!
//! A failed commit (full disk, I/O error) fails the ack of every write of its batch with that
//! error ([`StoreError::Io`], see [`StoreError::is_storage_full`]) and the store keeps running:
//! it reopens the file (redb refuses every operation after an I/O error until then), reloads
//! the channel positions from what is on disk, and tries the next batch. While failures repeat,
//! batches arriving within a back-off (10 ms doubling to 1 s) are failed with the same error
//! without touching the disk. While the file is being reopened, reads answer
//! [`StoreError::Unavailable`].
//!
//! # Channels
//!
//! A channel is a stream of records `(offset → timestamp, payload)` within an epoch. The
//! offsets are assigned by the engine's sequencer, not by the store: [`Append`] carries them,
//! and the store refuses an offset that is not the channel's last + 1 within its epoch
//! ([`StoreError::OutOfOrder`], a sequencer bug detector; the rest of the batch is unaffected).
//! The first append of a channel may carry any offset; an append with another epoch (any
//! other: epochs are identifiers, not ordered) starts the stream anew at its offset, and the
//! old epoch's records are deleted in the same commit. After a failed commit the sequencer must
//! resend the same offsets (or consult [`StoreHandle::position`]).
//! Retention ([`Retention`]: a maximum length and a time to live, per channel) is applied in
//! the commit that appends; [`Write::Expire`] sweeps channels that stopped receiving.
//!
//! ```no_run
//! use edge_ws_server::store::{Append, Retention, Store, StoreOptions};
//!
//! let store = Store::open(std::path::Path::new("/var/lib/edge-ws"), StoreOptions::default())?;
//! // On a core: non-blocking, the ack runs on the store thread once the record is on disk.
//! let append = Append::new("chat:lobby", 7, 1, &b"hello"[..], 1_700_000_000_000)
//!     .retention(Retention::default().max_len(1000));
//! store.try_append(append, Box::new(|result| println!("durable: {result:?}")))?;
//! // Anywhere else: reads see the last commit.
//! let history = store.read_since("chat:lobby", 0, 100)?;
//! println!("{:?} {} records", history.position, history.records.len());
//! # Ok::<(), edge_ws_server::store::StoreError>(())
//! ```

#![cfg(feature = "store")]

mod backend;
mod codec;
mod error;
pub(crate) mod stats;
mod writer;

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableError};

pub use self::error::StoreError;
pub use self::stats::{bucket_bounds, LatencyStats, StoreStats, LATENCY_BUCKETS};

use self::codec::{Meta, META, RECORDS};
use self::stats::Stats;
use self::writer::{Msg, Reply, Request, Writer};

/// The database file inside the store's directory.
pub const FILE_NAME: &str = "store.redb";

/// Longest channel name or key, in bytes.
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// Largest payload or value, in bytes.
pub const MAX_VALUE_LEN: usize = 1 << 30;

/// Called once on the store thread with the outcome of a write: `Ok` once the commit that holds
/// it is durable (see the [module docs](self) for what durable means in each
/// [`Durability`]), or the error that failed it. Keep it short and non-blocking.
pub type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// What an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Each commit ends with `fdatasync`: an acknowledged write survives process death and
    /// power loss.
    #[default]
    Fsync,
    /// Each commit writes its pages and header into the file without syncing: an acknowledged
    /// write survives process death (kill -9), not power loss or a kernel crash.
    Buffered,
}

/// How a store runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// What an acknowledged write survives (default [`Durability::Fsync`]).
    pub durability: Durability,
    /// Most writes in one commit (default 8192: a commit costs about the same whatever it
    /// holds when its writes touch many pages, so large batches keep up under load).
    pub max_batch: usize,
    /// Most writes waiting in the queue; beyond it the `try_` forms answer
    /// [`StoreError::QueueFull`] (default 65 536).
    pub queue_capacity: usize,
    /// redb's page cache, in bytes (default 64 MiB).
    pub cache_bytes: usize,
    /// redb's quick repair: each commit also saves the allocator state (two-phase, slower), so
    /// that reopening after a crash does not walk the whole file (default off).
    pub quick_repair: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Fsync,
            max_batch: 8192,
            queue_capacity: 65_536,
            cache_bytes: 64 << 20,
            quick_repair: false,
        }
    }
}

impl StoreOptions {
    /// Sets [`StoreOptions::durability`].
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets [`StoreOptions::max_batch`] (at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets [`StoreOptions::queue_capacity`] (at least 1).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Sets [`StoreOptions::cache_bytes`].
    pub fn cache_bytes(mut self, n: usize) -> Self {
        self.cache_bytes = n;
        self
    }

    /// Sets [`StoreOptions::quick_repair`].
    pub fn quick_repair(mut self, on: bool) -> Self {
        self.quick_repair = on;
        self
    }
}

/// How long a channel keeps its records. Both limits apply when both are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Retention {
    /// Keep at most this many of the newest records.
    pub max_len: Option<u64>,
    /// Delete records older than this, measured against the timestamp of the append (or of the
    /// [`Write::Expire`] sweep): a record expires when `timestamp + ttl < now`. Deletion
    /// stops at the first record still alive, so it assumes timestamps that do not go back.
    pub ttl: Option<Duration>,
}

impl Retention {
    /// Keeps at most `n` records.
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = Some(n);
        self
    }

    /// Deletes records older than `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// One record to append to a channel, with the offset and epoch its sequencer assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Append {
    /// The channel.
    pub channel: String,
    /// The channel's epoch: a new epoch starts the stream anew.
    pub epoch: u64,
    /// The record's offset: the channel's last + 1 within the epoch (any for the first).
    /// `u64::MAX` is refused.
    pub offset: u64,
    /// The record.
    pub payload: Bytes,
    /// When it was published, in milliseconds (the clock of retention by age).
    pub timestamp_ms: u64,
    /// Sets the channel's retention (kept for later appends) before this one is applied.
    pub retention: Option<Retention>,
}

impl Append {
    /// A record for `channel` at `offset` of `epoch`.
    pub fn new(
        channel: impl Into<String>,
        epoch: u64,
        offset: u64,
        payload: impl Into<Bytes>,
        timestamp_ms: u64,
    ) -> Append {
        Append {
            channel: channel.into(),
            epoch,
            offset,
            payload: payload.into(),
            timestamp_ms,
            retention: None,
        }
    }

    /// Sets the channel's retention along with this append.
    pub fn retention(mut self, r: Retention) -> Append {
        self.retention = Some(r);
        self
    }
}

/// The tables of the store. The channel tables are written only by appends (they have their
/// own types and invariants); the others are keyed tables of bytes, written with
/// [`Write::Put`] and [`Write::Delete`] and read with [`StoreHandle::get`] and
/// [`StoreHandle::range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Table {
    /// `(channel, offset) → (timestamp_ms, payload)`.
    ChannelRecords,
    /// `channel → (epoch, first offset, last offset, retention)`.
    ChannelMeta,
    /// Notifications (keyed; for example `user ∥ time ∥ id`).
    Notifications,
    /// Document operations (keyed; for example `document ∥ revision`).
    DocumentOps,
    /// Document snapshots (keyed; for example `document ∥ revision`).
    DocumentSnapshots,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::ChannelRecords,
        Table::ChannelMeta,
        Table::Notifications,
        Table::DocumentOps,
        Table::DocumentSnapshots,
    ];

    /// The table's name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Table::ChannelRecords => "channel_records",
            Table::ChannelMeta => "channel_meta",
            Table::Notifications => "notifications",
            Table::DocumentOps => "document_ops",
            Table::DocumentSnapshots => "document_snapshots",
        }
    }

    /// Whether it is a keyed table of bytes (everything but the two channel tables).
    pub fn is_keyed(self) -> bool {
        self.keyed_index().is_some()
    }

    pub(crate) fn keyed_index(self) -> Option<usize> {
        match self {
            Table::ChannelRecords | Table::ChannelMeta => None,
            Table::Notifications => Some(0),
            Table::DocumentOps => Some(1),
            Table::DocumentSnapshots => Some(2),
        }
    }
}

/// A write for the store thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Write {
    /// Appends a record to a channel.
    Append(Append),
    /// Sets a channel's retention and applies it at once (age measured against the channel's
    /// newest record).
    SetRetention {
        /// The channel.
        channel: String,
        /// Its retention from now on.
        retention: Retention,
    },
    /// Applies retention by age to every channel with a time to live, at time `now_ms` (for
    /// channels that stopped receiving appends; call it periodically).
    Expire {
        /// Now, in milliseconds, on the clock of the appends' timestamps.
        now_ms: u64,
    },
    /// Sets `key` to `value` in a keyed table.
    Put {
        /// The table (keyed).
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Bytes,
    },
    /// Deletes `key` from a keyed table (no error if absent).
    Delete {
        /// The table (keyed).
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
}

impl Write {
    /// A [`Write::Put`].
    pub fn put(table: Table, key: impl Into<Vec<u8>>, value: impl Into<Bytes>) -> Write {
        Write::Put {
            table,
            key: key.into(),
            value: value.into(),
        }
    }

    /// A [`Write::Delete`].
    pub fn delete(table: Table, key: impl Into<Vec<u8>>) -> Write {
        Write::Delete {
            table,
            key: key.into(),
        }
    }

    /// A [`Write::SetRetention`].
    pub fn set_retention(channel: impl Into<String>, retention: Retention) -> Write {
        Write::SetRetention {
            channel: channel.into(),
            retention,
        }
    }

    /// A [`Write::Expire`].
    pub fn expire(now_ms: u64) -> Write {
        Write::Expire { now_ms }
    }

    /// Refuses what no state of the store would accept.
    fn check(&self) -> Result<(), StoreError> {
        let key = |what: &str, n: usize| {
            if n > MAX_KEY_LEN {
                Err(StoreError::Invalid(format!(
                    "{what} of {n} bytes (at most {MAX_KEY_LEN})"
                )))
            } else {
                Ok(())
            }
        };
        let value = |n: usize| {
            if n > MAX_VALUE_LEN {
                Err(StoreError::Invalid(format!(
                    "value of {n} bytes (at most {MAX_VALUE_LEN})"
                )))
            } else {
                Ok(())
            }
        };
        let keyed = |t: Table| {
            if t.is_keyed() {
                Ok(())
            } else {
                Err(StoreError::Invalid(format!(
                    "table {} is written by appends only",
                    t.name()
                )))
            }
        };
        match self {
            Write::Append(a) => {
                key("channel name", a.channel.len())?;
                value(a.payload.len())?;
                if a.offset == u64::MAX {
                    return Err(StoreError::Invalid("offset u64::MAX".into()));
                }
                Ok(())
            }
            Write::SetRetention { channel, .. } => key("channel name", channel.len()),
            Write::Expire { .. } => Ok(()),
            Write::Put {
                table,
                key: k,
                value: v,
            } => {
                keyed(*table)?;
                key("key", k.len())?;
                value(v.len())
            }
            Write::Delete { table, key: k } => {
                keyed(*table)?;
                key("key", k.len())
            }
        }
    }
}

impl From<Append> for Write {
    fn from(a: Append) -> Write {
        Write::Append(a)
    }
}

/// One stored record of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// Its offset.
    pub offset: u64,
    /// Its timestamp, in milliseconds.
    pub timestamp_ms: u64,
    /// Its payload.
    pub payload: Bytes,
}

/// Where a channel's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Position {
    /// The current epoch.
    pub epoch: u64,
    /// The oldest record still kept (`last_offset + 1` when retention removed them all).
    pub first_offset: u64,
    /// The last offset appended.
    pub last_offset: u64,
}

impl Position {
    /// How many records the channel keeps.
    pub fn len(&self) -> u64 {
        (self.last_offset + 1).saturating_sub(self.first_offset)
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records of one channel with its position, from one snapshot (so a reader recovering a
/// client can tell whether the client's offset is still covered: `epoch` unchanged and
/// `first_offset <= client_offset + 1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// The channel's position; `None` if it never had an append.
    pub position: Option<Position>,
    /// The records asked for.
    pub records: Vec<Record>,
}

/// The order of a [`StoreHandle::range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Smallest key first.
    #[default]
    Ascending,
    /// Largest key first.
    Descending,
}

/// Opens stores.
#[derive(Debug)]
pub struct Store {
    _private: (),
}

impl Store {
    /// Opens (or creates) the store in directory `dir` (created if missing; the file is
    /// [`FILE_NAME`] inside) and starts its thread. Opening a file that was not closed cleanly
    /// runs redb's repair first (it reads the whole file unless
    /// [`StoreOptions::quick_repair`] was on). Fails with [`StoreError::AlreadyOpen`] if
    /// another store holds the file.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<StoreHandle, StoreError> {
        if options.max_batch == 0 || options.queue_capacity == 0 {
            return Err(StoreError::Invalid(
                "max_batch and queue_capacity must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let stats = Arc::new(Stats::new());
        let db = writer::open_database(&path, &options, &stats)?;
        let metas = writer::load_metas(&db)?;
        let (tx, rx) = mpsc::sync_channel(options.queue_capacity);
        let core = Arc::new(Core {
            db: RwLock::new(Some(Arc::new(db))),
            closed: AtomicBool::new(false),
            stats,
            path,
            options,
        });
        let writer = Writer::new(core.clone(), rx, metas);
        let thread = thread::Builder::new()
            .name("edge-ws-store".into())
            .spawn(move || writer.run())?;
        Ok(StoreHandle {
            shared: Arc::new(Shared {
                tx: Some(tx),
                thread_id: thread.thread().id(),
                thread: Mutex::new(Some(thread)),
                core,
            }),
        })
    }
}

/// What the handles and the store thread share.
pub(crate) struct Core {
    /// The open database; `None` while it is reopened after an error, and once closed.
    pub(crate) db: RwLock<Option<Arc<Database>>>,
    pub(crate) closed: AtomicBool,
    pub(crate) stats: Arc<Stats>,
    pub(crate) path: PathBuf,
    pub(crate) options: StoreOptions,
}

impl Core {
    pub(crate) fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Database>>> {
        self.db.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the handles share: the queue's sending side and the thread.
struct Shared {
    tx: Option<SyncSender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    core: Arc<Core>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Disconnects the queue: the thread drains it, commits, closes the file and exits.
        drop(self.tx.take());
        if thread::current().id() == self.thread_id {
            return; // the last handle was dropped by an ack: the thread exits by itself
        }
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// A handle on an open store (`Clone + Send + Sync`, cheap to clone). See the
/// [module docs](self) for the threads and the guarantees.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.shared.core;
        f.debug_struct("StoreHandle")
            .field("path", &core.path)
            .field("durability", &core.options.durability)
            .field("closed", &core.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

const _: fn() = || {
    fn shared<T: Send + Sync + Clone>() {}
    shared::<StoreHandle>();
};

impl StoreHandle {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.core.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.core.options
    }

    fn on_store_thread(&self) -> bool {
        thread::current().id() == self.shared.thread_id
    }

    fn enqueue(&self, write: Write, ack: Ack, wait: bool) -> Result<(), StoreError> {
        write.check()?;
        let core = &self.shared.core;
        let Some(tx) = &self.shared.tx else {
            return Err(StoreError::Closed);
        };
        if core.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let msg = Msg::Write(Request {
            write,
            reply: Reply::new(ack),
        });
        // On the store thread a wait for room would wait for itself.
        let sent = if wait && !self.on_store_thread() {
            tx.send(msg).map_err(|e| (e.0, StoreError::Closed))
        } else {
            tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(m) => (m, StoreError::QueueFull),
                TrySendError::Disconnected(m) => (m, StoreError::Closed),
            })
        };
        match sent {
            Ok(()) => {
                core.stats.queued();
                Ok(())
            }
            Err((msg, err)) => {
                if let Msg::Write(r) = msg {
                    r.reply.defuse(); // the error is the answer
                }
                if matches!(err, StoreError::QueueFull) {
                    core.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(err)
            }
        }
    }

    /// Queues `write` without blocking: [`StoreError::QueueFull`] if the queue is full. On `Ok`
    /// the ack will be called exactly once; on `Err` it is not called. **The form for the
    /// engine's cores.**
    pub fn try_submit(&self, write: impl Into<Write>, ack: Ack) -> Result<(), StoreError> {
        self.enqueue(write.into(), ack, false)
    }

    /// Queues `write`, waiting for room in the queue if it is full (not for a core; on the store
    /// thread itself it does not wait and may answer [`StoreError::QueueFull`]).
    pub fn submit(&self, write: impl Into<Write>, ack: Ack) -> Result<(), StoreError> {
        self.enqueue(write.into(), ack, true)
    }

    /// Queues `write` and waits for its ack: returns once it is durable, or with its error.
    /// Refused on the store thread (an ack calling it would wait for itself).
    pub fn submit_blocking(&self, write: impl Into<Write>) -> Result<(), StoreError> {
        if self.on_store_thread() {
            return Err(StoreError::Invalid(
                "a blocking call on the store thread".into(),
            ));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            write,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// [`StoreHandle::try_submit`] of an append: never blocks.
    pub fn try_append(&self, append: Append, ack: Ack) -> Result<(), StoreError> {
        self.try_submit(append, ack)
    }

    /// [`StoreHandle::submit`] of an append: waits for room in the queue.
    pub fn append(&self, append: Append, ack: Ack) -> Result<(), StoreError> {
        self.submit(append, ack)
    }

    /// [`StoreHandle::submit_blocking`] of an append: returns once it is durable.
    pub fn append_blocking(&self, append: Append) -> Result<(), StoreError> {
        self.submit_blocking(append)
    }

    /// [`StoreHandle::submit`] of a [`Write::Put`].
    pub fn put(
        &self,
        table: Table,
        key: &[u8],
        value: impl Into<Bytes>,
        ack: Ack,
    ) -> Result<(), StoreError> {
        self.submit(Write::put(table, key, value), ack)
    }

    /// [`StoreHandle::submit`] of a [`Write::Delete`].
    pub fn delete(&self, table: Table, key: &[u8], ack: Ack) -> Result<(), StoreError> {
        self.submit(Write::delete(table, key), ack)
    }

    /// [`StoreHandle::submit`] of a [`Write::SetRetention`].
    pub fn set_retention(
        &self,
        channel: &str,
        retention: Retention,
        ack: Ack,
    ) -> Result<(), StoreError> {
        self.submit(Write::set_retention(channel, retention), ack)
    }

    /// Stops the store for every handle: later writes answer [`StoreError::Closed`], the thread
    /// commits what was queued, closes the file and exits; returns once it has. Reads answer
    /// [`StoreError::Closed`] afterwards.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        if self.on_store_thread() {
            return Err(StoreError::Invalid("shutdown on the store thread".into()));
        }
        let core = &self.shared.core;
        core.closed.store(true, Ordering::Release);
        if let Some(tx) = &self.shared.tx {
            let _ = tx.send(Msg::Shutdown);
        }
        let t = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            t.join()
                .map_err(|_| StoreError::Other("the store thread panicked".into()))?;
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        self.shared.core.stats.snapshot()
    }

    // ---- reads ----

    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        let core = &self.shared.core;
        let db = core
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match db {
            Some(db) => Ok(db.begin_read()?),
            None if core.closed.load(Ordering::Acquire) => Err(StoreError::Closed),
            None => Err(StoreError::Unavailable),
        }
    }

    /// Records of `channel` with offsets after `after` (the last one the reader has), oldest
    /// first, at most `limit`.
    pub fn read_since(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<History, StoreError> {
        self.history(channel, Pick::After(after, limit))
    }

    /// The last `n` records of `channel`, oldest first.
    pub fn read_last(&self, channel: &str, n: usize) -> Result<History, StoreError> {
        self.history(channel, Pick::Last(n))
    }

    /// The newest records of `channel`, newest first, at most `limit`.
    pub fn read_newest_first(&self, channel: &str, limit: usize) -> Result<History, StoreError> {
        self.history(channel, Pick::NewestFirst(limit))
    }

    fn history(&self, channel: &str, pick: Pick) -> Result<History, StoreError> {
        let txn = self.read_txn()?;
        let position = read_meta(&txn, channel)?.and_then(|m| m.stream.map(|s| s.position()));
        let records = match txn.open_table(RECORDS) {
            Ok(t) => {
                let lo = match pick {
                    Pick::After(after, _) => after.checked_add(1),
                    _ => Some(0),
                };
                let Some(lo) = lo else {
                    return Ok(History {
                        position,
                        records: Vec::new(),
                    });
                };
                let range = t.range((channel, lo)..=(channel, u64::MAX))?;
                let record = |item: Result<_, redb::StorageError>| {
                    let (k, v): RecordGuards<'_> = item?;
                    let (timestamp_ms, payload) = v.value();
                    Ok::<_, StoreError>(Record {
                        offset: k.value().1,
                        timestamp_ms,
                        payload: Bytes::copy_from_slice(payload),
                    })
                };
                match pick {
                    Pick::After(_, limit) => {
                        range.take(limit).map(record).collect::<Result<_, _>>()?
                    }
                    Pick::Last(n) => {
                        let mut v: Vec<Record> =
                            range.rev().take(n).map(record).collect::<Result<_, _>>()?;
                        v.reverse();
                        v
                    }
                    Pick::NewestFirst(limit) => range
                        .rev()
                        .take(limit)
                        .map(record)
                        .collect::<Result<_, _>>()?,
                }
            }
            Err(TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(History { position, records })
    }

    /// Where `channel` stands: its epoch and offsets, `None` if it never had an append.
    pub fn position(&self, channel: &str) -> Result<Option<Position>, StoreError> {
        let txn = self.read_txn()?;
        Ok(read_meta(&txn, channel)?.and_then(|m| m.stream.map(|s| s.position())))
    }

    /// The retention `channel` keeps.
    pub fn retention(&self, channel: &str) -> Result<Retention, StoreError> {
        let txn = self.read_txn()?;
        Ok(read_meta(&txn, channel)?
            .map(|m| m.retention)
            .unwrap_or_default())
    }

    /// Every channel's position, sorted by channel (for the sequencer at startup).
    pub fn load_all_positions(&self) -> Result<Vec<(String, Position)>, StoreError> {
        let txn = self.read_txn()?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let meta = Meta::decode(k.value(), v.value())?;
            if let Some(s) = meta.stream {
                out.push((k.value().to_owned(), s.position()));
            }
        }
        Ok(out)
    }

    /// The value of `key` in a keyed table.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let def = keyed_def(table)?;
        let txn = self.read_txn()?;
        let t = match txn.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Entries of a keyed table whose key starts with `prefix`, in `order`, at most `limit`;
    /// with `after`, only keys after it in that order (the last key of the previous page).
    pub fn range(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Entry>, StoreError> {
        let def = keyed_def(table)?;
        let end = codec::prefix_end(prefix);
        let mut lo: Bound<&[u8]> = Bound::Included(prefix);
        let mut hi: Bound<&[u8]> = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        match (order, after) {
            (Order::Ascending, Some(a)) if a >= prefix => lo = Bound::Excluded(a),
            (Order::Descending, Some(a)) if end.as_deref().is_none_or(|e| a < e) => {
                hi = Bound::Excluded(a)
            }
            _ => {}
        }
        let empty = match (lo, hi) {
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h)) => l >= h,
            _ => false,
        };
        if empty || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.read_txn()?;
        let t = match txn.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let range = t.range::<&[u8]>((lo, hi))?;
        let entry = |item: Result<_, redb::StorageError>| {
            let (k, v): KeyedGuards<'_> = item?;
            Ok::<_, StoreError>((k.value().to_vec(), v.value().to_vec()))
        };
        match order {
            Order::Ascending => range.take(limit).map(entry).collect(),
            Order::Descending => range.rev().take(limit).map(entry).collect(),
        }
    }

    /// How many entries `table` holds.
    pub fn table_len(&self, table: Table) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.read_txn()?;
        let r = match table.keyed_index() {
            Some(_) => txn.open_table(keyed_def(table)?).map(|t| t.len()),
            None if table == Table::ChannelRecords => txn.open_table(RECORDS).map(|t| t.len()),
            None => txn.open_table(META).map(|t| t.len()),
        };
        match r {
            Ok(n) => Ok(n?),
            Err(TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// A key and its value, from a keyed table.
pub type Entry = (Vec<u8>, Vec<u8>);

type RecordGuards<'a> = (
    redb::AccessGuard<'a, (&'static str, u64)>,
    redb::AccessGuard<'a, (u64, &'static [u8])>,
);
type KeyedGuards<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

enum Pick {
    After(u64, usize),
    Last(usize),
    NewestFirst(usize),
}

fn keyed_def(
    table: Table,
) -> Result<redb::TableDefinition<'static, &'static [u8], &'static [u8]>, StoreError> {
    codec::keyed(table)
        .ok_or_else(|| StoreError::Invalid(format!("table {} is not a keyed table", table.name())))
}

fn read_meta(txn: &ReadTransaction, channel: &str) -> Result<Option<Meta>, StoreError> {
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = table.get(channel)?;
    v.map(|v| Meta::decode(channel, v.value())).transpose()
}

#[cfg(test)]
mod tests;
