//! Positioned channels: offsets and epochs, history, recovery, idempotent publish, in-process
//! subscribers, and the seam to a durable store.
//!
//! A channel whose namespace keeps history ([`ChannelPolicy::history_size`] > 0) is a
//! *stream*: every publication gets an offset (+1 each) within an epoch, the last
//! publications are kept, and a subscriber can ask for what it missed since a position. Its
//! order is made by **one owner core per channel** (a fixed hash of the name modulo the
//! cores): every publish to the channel, from any core, handler or outside thread, is handed
//! to the owner, which assigns the offset, keeps the publication (and, for a persistent
//! namespace, has it written to the [`StreamStore`] and waits for the commit), and only then
//! fans it out through the same per-core rings as any publish. Each (owner, core) ring is FIFO,
//! so every subscriber on every core sees the owner's order. The design record is
//! `docs/design/streams.md`.
//!
//! Channels without history are not sequenced: their publishes go straight from the publishing
//! core to the subscribers' cores (per-publisher order, no offsets), at no extra cost.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::ids::MessageKind;

/// Where a stream stands, or where a reader is in it: the last offset (0 before the first
/// publication) within an epoch. The epoch changes whenever the stream's past was lost
/// (a restart without persistence, a wiped store), so a reader holding another epoch cannot
/// recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The last offset published (or, for a reader, received).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: u64,
}

/// What a channel keeps, per namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Publications kept per channel (the seed's `maxQueueSize`). 0: no history, no offsets,
    /// no recovery (plain fan-out).
    pub history_size: usize,
    /// Publications older than this are dropped from history (the seed's `messageTTL`);
    /// `None` keeps them until `history_size` pushes them out.
    pub history_ttl: Option<Duration>,
    /// Write every publication to the [`StreamStore`] and fan it out (and acknowledge it) only
    /// once it is durable. Needs a store (`EngineBuilder::stream_store`) and a history.
    pub persist: bool,
    /// How long a publish's idempotency key is remembered: a repeat within it returns the
    /// first result and publishes nothing.
    pub idempotency_window: Duration,
    /// Track who is in each channel (read by the server's presence; the engine ignores it).
    pub presence: bool,
    /// Announce joins and leaves (a user's first connection in, last one out) to the
    /// channel's subscribers (read by the server's presence; the engine ignores it).
    pub join_leave: bool,
}

impl Default for ChannelPolicy {
    fn default() -> Self {
        ChannelPolicy {
            history_size: 0,
            history_ttl: None,
            persist: false,
            idempotency_window: Duration::from_secs(120),
            presence: false,
            join_leave: false,
        }
    }
}

impl ChannelPolicy {
    /// A memory history of `size` publications.
    pub fn history(size: usize) -> Self {
        ChannelPolicy {
            history_size: size,
            ..ChannelPolicy::default()
        }
    }

    /// With a time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = Some(ttl);
        self
    }

    /// With presence tracking and join/leave events.
    pub fn with_presence(mut self) -> Self {
        self.presence = true;
        self.join_leave = true;
        self
    }

    /// Persistent (written to the store before it is delivered and acknowledged).
    pub fn persistent(mut self) -> Self {
        self.persist = true;
        self
    }

    /// Whether channels under it are streams (sequenced, with history).
    pub fn is_stream(&self) -> bool {
        self.history_size > 0
    }
}

/// Channel names and the policies of their namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The policy of channels in no namespace.
    pub default: ChannelPolicy,
    /// `(prefix, policy)`: a channel whose name starts with `prefix` (e.g. `"chat:"`) gets its
    /// policy; the longest matching prefix wins.
    pub namespaces: Vec<(String, ChannelPolicy)>,
    /// Longest channel name, in bytes (1..=this). Names may not contain whitespace or control
    /// characters.
    pub max_name_len: usize,
    /// Most publications one history read or one recovery returns.
    pub max_history_read: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            default: ChannelPolicy::default(),
            namespaces: Vec::new(),
            max_name_len: 255,
            max_history_read: 10_000,
        }
    }
}

impl ChannelConfig {
    /// The policy of `channel` (longest matching namespace prefix, else the default).
    pub fn policy(&self, channel: &str) -> &ChannelPolicy {
        self.namespaces
            .iter()
            .filter(|(p, _)| channel.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(&self.default, |(_, pol)| pol)
    }

    /// Adds (or replaces) a namespace.
    pub fn namespace(mut self, prefix: impl Into<String>, policy: ChannelPolicy) -> Self {
        let prefix = prefix.into();
        self.namespaces.retain(|(p, _)| *p != prefix);
        self.namespaces.push((prefix, policy));
        self
    }

    /// Checks a channel name against the rules.
    pub fn check_name(&self, channel: &str) -> Result<(), StreamError> {
        if channel.is_empty() || channel.len() > self.max_name_len {
            return Err(StreamError::InvalidChannel(format!(
                "channel names are 1 to {} bytes, got {}",
                self.max_name_len,
                channel.len()
            )));
        }
        if channel.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StreamError::InvalidChannel(
                "channel names may not contain whitespace or control characters".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(&self, has_store: Option<bool>) -> Result<(), String> {
        if self.max_name_len == 0 {
            return Err("channels.max_name_len must be at least 1".into());
        }
        if self.max_history_read == 0 {
            return Err("channels.max_history_read must be at least 1".into());
        }
        for (name, p) in std::iter::once(("default", &self.default))
            .chain(self.namespaces.iter().map(|(n, p)| (n.as_str(), p)))
        {
            if p.persist && p.history_size == 0 {
                return Err(format!(
                    "channel namespace {name:?}: persist needs a history_size of at least 1"
                ));
            }
            if p.persist && has_store == Some(false) {
                return Err(format!(
                    "channel namespace {name:?} persists, but the engine has no stream store"
                ));
            }
            if p.join_leave && !p.presence {
                return Err(format!(
                    "channel namespace {name:?}: join_leave needs presence"
                ));
            }
            if p.history_ttl == Some(Duration::ZERO) {
                return Err(format!(
                    "channel namespace {name:?}: history_ttl must be longer than zero"
                ));
            }
        }
        Ok(())
    }
}

/// One publication of a stream, as subscribers received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its offset.
    pub offset: u64,
    /// When the owner core sequenced it, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Text or binary.
    pub kind: MessageKind,
    /// The message subscribers received: the published payload, or what the engine's
    /// [`PublicationFormat`] made of it.
    pub data: Bytes,
}

/// A history read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The last `n` publications, oldest first.
    Last(usize),
    /// Publications after offset `after`, oldest first, at most `limit`.
    Since {
        /// The last offset the reader has.
        after: u64,
        /// Most publications returned.
        limit: usize,
    },
    /// The newest publications first, at most `limit`.
    NewestFirst(usize),
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The stream's position when it was read.
    pub position: StreamPosition,
    /// The oldest offset still kept (`position.offset + 1` when none is).
    pub first_offset: u64,
    /// The publications asked for (capped at `ChannelConfig::max_history_read`).
    pub publications: Vec<Publication>,
}

/// Why a subscriber's missed publications could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryFailure {
    /// The stream's epoch is not the reader's: its past was lost (restart without
    /// persistence, wiped store). Reload state and continue from the new position.
    EpochChanged,
    /// Publications after the reader's offset are no longer kept (size or TTL).
    TooOld,
    /// The reader's offset is beyond the stream's last one.
    Ahead,
    /// The channel keeps no history (its namespace has `history_size` 0).
    NoHistory,
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No position was given: live publications from now on.
    NotRequested,
    /// Every publication after the reader's position follows, in order, before live ones:
    /// `missed` of them.
    Recovered {
        /// How many publications are replayed.
        missed: usize,
    },
    /// Nothing is replayed; live publications follow `position` of [`Subscribed`].
    Failed(RecoveryFailure),
}

/// The outcome of [`crate::Socket::subscribe_with`]: where the stream stood when the subscription
/// became live. Every publication after `position` reaches the subscriber, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The stream's position (`None` for a channel without history).
    pub position: Option<StreamPosition>,
    /// Whether missed publications follow.
    pub recovery: Recovery,
}

impl Subscribed {
    /// Whether the reader lost nothing: recovery asked for and complete.
    pub fn recovered(&self) -> bool {
        matches!(self.recovery, Recovery::Recovered { .. })
    }
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The channel name breaks the rules.
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
    /// The channel keeps no history (its namespace has `history_size` 0), so it has no
    /// positions, history or idempotency.
    #[error("channel {0:?} keeps no history")]
    NoHistory(String),
    /// The durable store refused or failed the write; nothing was published.
    #[error("store: {0}")]
    Store(String),
    /// The channel's stream is recovering from a store failure; retry shortly.
    #[error("channel {0:?} is unavailable after a store failure; retry")]
    Unavailable(String),
    /// The connection was already subscribed to the channel.
    #[error("already subscribed to {0:?}")]
    AlreadySubscribed(String),
    /// The connection is closing or gone.
    #[error("connection closed")]
    Closed,
}

impl StreamError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StreamError::Store(_) | StreamError::Unavailable(_))
    }
}

/// One publication handed to the [`StreamStore`].
#[derive(Debug)]
pub struct StoredPublication<'a> {
    /// The channel.
    pub channel: &'a str,
    /// Its stream's epoch.
    pub epoch: u64,
    /// Its offset.
    pub offset: u64,
    /// Its timestamp (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Text or binary.
    pub kind: MessageKind,
    /// The payload as published (before any [`PublicationFormat`]).
    pub payload: &'a Bytes,
    /// The channel's retention (history size and TTL).
    pub policy: &'a ChannelPolicy,
}

/// Called once, from any thread, with the outcome of a [`StreamStore::append`]: `Ok` once the
/// publication is durable.
pub type CommitAck = Box<dyn FnOnce(Result<(), StreamError>) + Send + 'static>;

/// Where persistent channels are written. The engine calls it on the owner core, so
/// [`StreamStore::append`] must not block: queue the write and call `done` from the writer
/// (see `edge_ws_server::store`, whose store thread group-commits with an fsync before the
/// ack).
pub trait StreamStore: Send + Sync + 'static {
    /// Queues `publication`; `done` must be called exactly once unless this returns `Err`.
    /// Appends of one channel are made in offset order and must be committed in that order.
    fn append(
        &self,
        publication: StoredPublication<'_>,
        done: CommitAck,
    ) -> Result<(), StreamError>;

    /// The channel's last durable position, `None` if it has none (read after a failed
    /// commit, to continue from what is on disk).
    fn position(&self, channel: &str) -> Result<Option<StreamPosition>, StreamError>;
}

/// Turns a published payload into the message subscribers receive, once per publication on
/// the owner core (e.g. the server's JSON envelope carrying the channel, offset and epoch).
pub trait PublicationFormat: Send + Sync + 'static {
    /// Writes the message for `payload` at `position` into `out` (empty) and returns its kind,
    /// or returns `None` to send `payload` as published (for channels it does not format).
    fn encode(
        &self,
        channel: &str,
        position: StreamPosition,
        payload: &[u8],
        kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind>;
}

/// A stream read back from the store at startup, handed to the engine so that its owner core
/// continues it (same epoch, next offset) and serves its history.
#[derive(Debug, Clone)]
pub struct RestoredStream {
    /// The channel.
    pub channel: String,
    /// Where it stands.
    pub position: StreamPosition,
    /// Its kept publications, oldest first, as published (`data` is the payload; the engine
    /// formats it again): `(offset, timestamp_ms, kind, payload)`.
    pub publications: Vec<(u64, u64, MessageKind, Bytes)>,
}

/// A callback of an in-process subscriber.
pub type ChannelCallback = Arc<dyn Fn(&str, &Publication) + Send + Sync + 'static>;

/// An in-process subscription (`EngineHandle::subscribe_fn`); dropping it or calling
/// [`LocalSubscription::unsubscribe`] removes the callback.
pub struct LocalSubscription {
    pub(crate) channel: Arc<str>,
    pub(crate) inproc: Arc<Inproc>,
    pub(crate) id: u64,
}

impl fmt::Debug for LocalSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSubscription")
            .field("channel", &self.channel)
            .field("id", &self.id)
            .finish()
    }
}

impl LocalSubscription {
    /// Removes the callback (it may still be running on another thread; it is not called
    /// again after this returns).
    pub fn unsubscribe(self) {}
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.inproc.remove(self.id);
    }
}

/// The in-process subscribers of one channel.
#[derive(Default)]
pub(crate) struct Inproc {
    count: AtomicUsize,
    list: Mutex<Vec<(u64, ChannelCallback)>>,
    /// Called when the last callback is removed (tells the cluster broker).
    pub(crate) on_empty: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Inproc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inproc")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl Inproc {
    /// Adds a callback; returns whether it is the first.
    pub(crate) fn add(&self, id: u64, cb: ChannelCallback) -> bool {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        l.push((id, cb));
        self.count.store(l.len(), Ordering::Release);
        l.len() == 1
    }

    fn remove(&self, id: u64) {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|(i, _)| *i != id);
        self.count.store(l.len(), Ordering::Release);
        let last = l.is_empty();
        drop(l);
        if last {
            if let Some(f) = self.on_empty.get() {
                f();
            }
        }
    }

    /// In-process subscribers now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Calls every callback with `p` (one atomic load when there are none).
    pub(crate) fn call(&self, channel: &str, p: impl FnOnce() -> Publication) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let cbs: Vec<ChannelCallback> = {
            let l = self.list.lock().unwrap_or_else(|e| e.into_inner());
            l.iter().map(|(_, c)| c.clone()).collect()
        };
        let p = p();
        for cb in cbs {
            cb(channel, &p);
        }
    }
}

/// Stream parts of the engine shared by every core: the store, the format, the streams to
/// continue.
pub(crate) struct StreamShared {
    pub(crate) store: Option<Arc<dyn StreamStore>>,
    pub(crate) format: Option<Arc<dyn PublicationFormat>>,
    pub(crate) restore: Mutex<HashMap<String, RestoredStream>>,
    pub(crate) next_local_id: std::sync::atomic::AtomicU64,
}

/// What the builder is given for streams.
#[derive(Default, Clone)]
pub(crate) struct StreamSetup {
    pub(crate) store: Option<Arc<dyn StreamStore>>,
    pub(crate) format: Option<Arc<dyn PublicationFormat>>,
    pub(crate) restore: Vec<RestoredStream>,
}

impl StreamShared {
    pub(crate) fn new(setup: StreamSetup) -> Self {
        StreamShared {
            store: setup.store,
            format: setup.format,
            restore: Mutex::new(
                setup
                    .restore
                    .into_iter()
                    .map(|r| (r.channel.clone(), r))
                    .collect(),
            ),
            next_local_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

/// The owner core of `channel` among `cores`: FNV-1a of the name, so every core (and every
/// process with the same core count) agrees.
pub(crate) fn owner_of(channel: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % cores.max(1) as u64) as usize
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random epoch (never 0).
pub(crate) fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and per instance: mixed with the
    // clock and a counter it gives distinct, unpredictable-enough epochs without a dependency.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u64(std::process::id() as u64);
    h.finish().max(1)
}

/// One kept publication: the unmasked server frame subscribers got (shared with the live
/// delivery) and its timestamp. Its offset is its place in the history (entries are
/// contiguous), its kind and payload are read from the frame: 40 bytes per entry.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) ts_ms: u64,
    pub(crate) frame: Bytes,
}

impl Entry {
    /// Length of the frame's header (an unmasked server frame: 2, 4 or 10 bytes).
    pub(crate) fn header_len(&self) -> usize {
        match self.frame.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        }
    }

    /// Whether it is a text message.
    pub(crate) fn is_text(&self) -> bool {
        self.frame.first().is_some_and(|b| b & 0x0f == 1)
    }

    pub(crate) fn publication(&self, offset: u64) -> Publication {
        Publication {
            offset,
            timestamp_ms: self.ts_ms,
            kind: if self.is_text() {
                MessageKind::Text
            } else {
                MessageKind::Binary
            },
            data: self.frame.slice(self.header_len()..),
        }
    }
}

/// What an acknowledged publish became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its position in the channel's stream (`None` for a channel without history: it was
    /// handed to the subscribers' cores).
    pub position: Option<StreamPosition>,
    /// A repeat of an idempotency key seen within the window: nothing was published again,
    /// `position` is the first publish's.
    pub duplicate: bool,
}

/// The result of an acknowledged publish.
pub type PublishResult = Result<Published, StreamError>;

/// The history kept by a channel's owner core and its position.
pub(crate) struct History {
    pub(crate) policy: ChannelPolicy,
    pub(crate) epoch: u64,
    /// The last offset assigned (persisted publishes may still be waiting for their commit).
    pub(crate) assigned: u64,
    /// The last offset published (fanned out, in history).
    pub(crate) published: u64,
    pub(crate) history: VecDeque<Entry>,
    pub(crate) idem: HashMap<Arc<str>, Idem>,
    pub(crate) idem_order: VecDeque<(u64, Arc<str>)>,
}

pub(crate) enum Idem {
    Done(PublishResult),
    Waiting,
}

/// Most idempotency keys a channel remembers (the oldest are forgotten first).
pub(crate) const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

impl History {
    pub(crate) fn new(policy: ChannelPolicy, epoch: u64, last: u64) -> Self {
        History {
            policy,
            epoch,
            assigned: last,
            published: last,
            history: VecDeque::new(),
            idem: HashMap::new(),
            idem_order: VecDeque::new(),
        }
    }

    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.published,
            epoch: self.epoch,
        }
    }

    /// The oldest kept offset (`published + 1` when none is kept): entries are contiguous and
    /// end at `published`.
    pub(crate) fn first_offset(&self) -> u64 {
        self.published + 1 - self.history.len() as u64
    }

    /// Drops what size and TTL no longer keep.
    pub(crate) fn trim(&mut self, now_ms: u64) {
        while self.history.len() > self.policy.history_size {
            self.history.pop_front();
        }
        if let Some(ttl) = self.policy.history_ttl {
            let oldest = now_ms.saturating_sub(ttl.as_millis() as u64);
            while self.history.front().is_some_and(|e| e.ts_ms < oldest) {
                self.history.pop_front();
            }
        }
    }

    /// Keeps `e` as offset `published + 1`. The deque grows by doubling up to exactly
    /// `history_size`, so a full history holds no spare capacity.
    pub(crate) fn push(&mut self, e: Entry, now_ms: u64) {
        self.published += 1;
        let (len, cap) = (self.history.len(), self.history.capacity());
        if len == cap && len < self.policy.history_size {
            let more = len.max(8).min(self.policy.history_size - len);
            self.history.reserve_exact(more);
        }
        self.history.push_back(e);
        self.trim(now_ms);
    }

    /// The first result of `key`, if it is remembered (`Some(None)`: still waiting).
    pub(crate) fn idem_lookup(&mut self, key: &str, now_ms: u64) -> Option<Option<PublishResult>> {
        while let Some((exp, _)) = self.idem_order.front() {
            if *exp > now_ms && self.idem_order.len() <= MAX_IDEMPOTENCY_KEYS {
                break;
            }
            let (_, k) = self.idem_order.pop_front().expect("front exists");
            if matches!(self.idem.get(&k), Some(Idem::Done(_))) {
                self.idem.remove(&k);
            }
        }
        match self.idem.get(key)? {
            Idem::Done(r) => Some(Some(r.clone())),
            Idem::Waiting => Some(None),
        }
    }

    pub(crate) fn idem_record(&mut self, key: Arc<str>, r: Option<PublishResult>, now_ms: u64) {
        let exp = now_ms + self.policy.idempotency_window.as_millis() as u64;
        let fresh = !self.idem.contains_key(&key);
        self.idem.insert(
            key.clone(),
            match r {
                Some(r) => Idem::Done(r),
                None => Idem::Waiting,
            },
        );
        if fresh {
            self.idem_order.push_back((exp, key));
        }
    }

    /// Publications for `q`, capped at `max`.
    pub(crate) fn read(&self, q: HistoryQuery, max: usize) -> HistoryPage {
        let first = self.first_offset();
        let with_offsets = self
            .history
            .iter()
            .enumerate()
            .map(|(i, e)| (first + i as u64, e));
        let publications = match q {
            HistoryQuery::Last(n) => {
                let n = n.min(max).min(self.history.len());
                with_offsets
                    .skip(self.history.len() - n)
                    .map(|(o, e)| e.publication(o))
                    .collect()
            }
            HistoryQuery::Since { after, limit } => with_offsets
                .skip((after + 1).saturating_sub(first) as usize)
                .take(limit.min(max))
                .map(|(o, e)| e.publication(o))
                .collect(),
            HistoryQuery::NewestFirst(limit) => with_offsets
                .rev()
                .take(limit.min(max))
                .map(|(o, e)| e.publication(o))
                .collect(),
        };
        HistoryPage {
            position: self.position(),
            first_offset: self.first_offset(),
            publications,
        }
    }

    /// Kept entries after offset `after`, oldest first.
    pub(crate) fn since(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let first = self.first_offset();
        let skip = (after + 1).saturating_sub(first) as usize;
        self.history.iter().skip(skip)
    }

    /// What a subscriber at `since` gets: the outcome and the entries to replay.
    pub(crate) fn recover(
        &self,
        since: Option<StreamPosition>,
        max: usize,
    ) -> (Subscribed, Vec<Entry>) {
        let position = Some(self.position());
        let Some(since) = since else {
            return (
                Subscribed {
                    position,
                    recovery: Recovery::NotRequested,
                },
                Vec::new(),
            );
        };
        let fail = |f| {
            (
                Subscribed {
                    position,
                    recovery: Recovery::Failed(f),
                },
                Vec::new(),
            )
        };
        if since.epoch != self.epoch {
            return fail(RecoveryFailure::EpochChanged);
        }
        if since.offset > self.published {
            return fail(RecoveryFailure::Ahead);
        }
        if since.offset + 1 < self.first_offset() || self.published - since.offset > max as u64 {
            return fail(RecoveryFailure::TooOld);
        }
        let entries: Vec<Entry> = self.since(since.offset).cloned().collect();
        (
            Subscribed {
                position,
                recovery: Recovery::Recovered {
                    missed: entries.len(),
                },
            },
            entries,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, ts_ms: u64) -> Entry {
        Entry {
            ts_ms,
            frame: Bytes::from(vec![0x81, 1, offset as u8]),
        }
    }

    #[test]
    fn namespaces_pick_the_longest_prefix_and_names_are_checked() {
        let c = ChannelConfig::default()
            .namespace("chat:", ChannelPolicy::history(10))
            .namespace("chat:vip:", ChannelPolicy::history(100).persistent());
        assert_eq!(c.policy("chat:lobby").history_size, 10);
        assert_eq!(c.policy("chat:vip:1").history_size, 100);
        assert!(!c.policy("news").is_stream());
        assert!(c.check_name("chat:lobby").is_ok());
        for bad in ["", "a b", "tab\there", "nl\n", &"x".repeat(256)] {
            assert!(
                matches!(c.check_name(bad), Err(StreamError::InvalidChannel(_))),
                "{bad:?}"
            );
        }
        assert!(c.validate(Some(false)).unwrap_err().contains("chat:vip:"));
        assert!(c.validate(Some(true)).is_ok());
        let bad = ChannelConfig::default().namespace("x", ChannelPolicy::default().persistent());
        assert!(bad
            .validate(Some(true))
            .unwrap_err()
            .contains("history_size"));
    }

    #[test]
    fn owners_spread_and_are_stable() {
        assert_eq!(owner_of("chat:lobby", 1), 0);
        let mut seen = [0usize; 4];
        for i in 0..4000 {
            seen[owner_of(&format!("c{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c: fixed across releases and processes.
        assert_eq!(
            owner_of("a", 1 << 20),
            (0xaf63_dc4c_8601_ec8c_u64 % (1 << 20)) as usize
        );
    }

    #[test]
    fn history_keeps_size_and_ttl_and_recovery_says_why_not() {
        let mut s = History::new(ChannelPolicy::history(3).ttl(Duration::from_secs(10)), 7, 0);
        for o in 1..=5 {
            s.assigned = o;
            s.push(entry(o, 1_000 * o), 5_000);
        }
        assert_eq!(s.first_offset(), 3);
        assert_eq!(
            s.position(),
            StreamPosition {
                offset: 5,
                epoch: 7
            }
        );
        let (ok, e) = s.recover(
            Some(StreamPosition {
                offset: 2,
                epoch: 7,
            }),
            100,
        );
        assert_eq!(ok.recovery, Recovery::Recovered { missed: 3 });
        assert_eq!(
            e.iter().map(|e| u64::from(e.frame[2])).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let (up, e) = s.recover(
            Some(StreamPosition {
                offset: 5,
                epoch: 7,
            }),
            100,
        );
        assert_eq!(up.recovery, Recovery::Recovered { missed: 0 });
        assert!(e.is_empty());
        let why = |s: &History, since, max| s.recover(Some(since), max).0.recovery;
        let p = |offset, epoch| StreamPosition { offset, epoch };
        assert_eq!(
            why(&s, p(1, 7), 100),
            Recovery::Failed(RecoveryFailure::TooOld)
        );
        assert_eq!(
            why(&s, p(4, 8), 100),
            Recovery::Failed(RecoveryFailure::EpochChanged)
        );
        assert_eq!(
            why(&s, p(6, 7), 100),
            Recovery::Failed(RecoveryFailure::Ahead)
        );
        assert_eq!(
            why(&s, p(2, 7), 2),
            Recovery::Failed(RecoveryFailure::TooOld)
        );
        // Reads.
        let off = |q| {
            s.read(q, 100)
                .publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>()
        };
        assert_eq!(off(HistoryQuery::Last(2)), vec![4, 5]);
        assert_eq!(off(HistoryQuery::Since { after: 3, limit: 1 }), vec![4]);
        assert_eq!(off(HistoryQuery::NewestFirst(5)), vec![5, 4, 3]);
        assert_eq!(s.read(HistoryQuery::Last(3), 2).publications.len(), 2);
        assert_eq!(
            s.read(HistoryQuery::Last(1), 9).publications[0].data,
            &[5u8][..]
        );
        // TTL 10 s: at 14.5 s, offsets 3 and 4 (stamped 3 s and 4 s) are too old.
        s.trim(14_500);
        assert_eq!(s.first_offset(), 5);
        s.trim(100_000);
        assert_eq!(s.first_offset(), 6);
        assert_eq!(
            why(&s, p(4, 7), 100),
            Recovery::Failed(RecoveryFailure::TooOld)
        );
        assert_eq!(why(&s, p(5, 7), 100), Recovery::Recovered { missed: 0 });
    }

    #[test]
    fn idempotency_keys_expire_after_their_window() {
        let mut s = History::new(ChannelPolicy::history(3), 1, 0);
        let key: Arc<str> = "k".into();
        assert!(s.idem_lookup("k", 0).is_none());
        s.idem_record(key.clone(), None, 0);
        assert_eq!(s.idem_lookup("k", 1), Some(None));
        let r = Ok(Published {
            position: Some(StreamPosition {
                offset: 1,
                epoch: 1,
            }),
            duplicate: false,
        });
        s.idem_record(key, Some(r.clone()), 1);
        assert_eq!(s.idem_lookup("k", 119_999), Some(Some(r)));
        assert!(s.idem_lookup("k", 120_001).is_none());
    }
}
