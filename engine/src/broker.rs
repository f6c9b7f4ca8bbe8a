//! The broker seam: how several edge-ws processes (nodes) act as one.
//!
//! Without a broker (the default) a process is its own world: publishes fan out to its cores
//! through the per-core rings, streams are sequenced by their owner core, and nothing leaves
//! the process. The engine then pays nothing for this module: one `Option` test on the
//! publish and the first-subscriber paths.
//!
//! With a [`Broker`] (`EngineBuilder::broker`, e.g. the Redis broker of the `edge-ws-cluster`
//! crate) the engine tells it, at the fan-out layer:
//! - every publish to a channel without history made on this node ([`Broker::publish`]),
//!   *after* delivering it to this node's subscribers: a node delivers its own publications
//!   at once and the broker ignores their echo;
//! - when a channel gets its first local subscriber in the process, and when it loses its last
//!   ([`Broker::subscribe`], [`Broker::unsubscribe`]), so a node receives a channel's traffic
//!   only while someone here listens;
//! - for channels with history when the broker sequences them
//!   ([`Broker::sequences_streams`]): every publication ([`Broker::stream_append`]), which the
//!   broker numbers cluster-wide and sends to every interested node, this one included: stream
//!   publications are delivered only from the broker, in the broker's order.
//!
//! Beside the fan-out, a broker offers the product layer cluster-wide presence
//! ([`Broker::presence_join`] and the like, entries expiring with their node) and sequenced
//! logs ([`Broker::log_append`]: a compare-and-append that makes the broker the sequencer of,
//! e.g., a collaborative document), and [`user_channel`] names the channel of a user's sends.
//!
//! The broker hands what it receives back through the [`BrokerSink`] it is given at start:
//! plain publications go to the node's cores with subscribers, stream publications to the
//! channel's owner core, which keeps a mirror of the stream's history while the node listens
//! (see docs/CLUSTER.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::ids::MessageKind;
use crate::stream::{ChannelPolicy, Published, StreamError, StreamPosition};

/// The prefix of every per-user channel ([`user_channel`]).
pub const USER_CHANNEL_PREFIX: &str = "user#";

/// The channel that carries what is sent to `user` on any node: a node where the user has a
/// connection subscribes to it, and a send to the user is a publish to it. Applications that
/// let clients name channels should refuse names starting with [`USER_CHANNEL_PREFIX`] (the
/// server product's channel routes do).
pub fn user_channel(user: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{user}")
}

/// Why the broker could not take a publication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker is not connected (it reconnects with backoff); nothing was sent.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error, or the connection broke while the request was in
    /// flight (it may or may not have been applied).
    #[error("broker: {0}")]
    Failed(String),
}

impl From<BrokerError> for StreamError {
    fn from(e: BrokerError) -> Self {
        StreamError::Store(e.to_string())
    }
}

/// Called once, from any thread, with the outcome of a [`Broker::publish`].
pub type BrokerAck = Box<dyn FnOnce(Result<(), BrokerError>) + Send + 'static>;

/// Called once, from any thread, with the position the broker gave a stream publication
/// (`duplicate`: its idempotency key was seen within the window, on any node, and nothing was
/// published; the position is the first publication's).
pub type AppendAck = Box<dyn FnOnce(Result<Published, BrokerError>) + Send + 'static>;

/// One member of a channel's presence across the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// The client (e.g. a connection or session id).
    pub client: String,
    /// What it joined with (e.g. the user id and its info, as JSON).
    pub info: Bytes,
}

/// Called once with a presence list.
pub type PresenceAck = Box<dyn FnOnce(Result<Vec<PresenceMember>, BrokerError>) + Send + 'static>;

/// Called once with the outcome of a [`Broker::log_append`]: `Ok(Ok(seq))` appended as `seq`;
/// `Ok(Err(last))` refused because the log's last entry is `last`, not `seq - 1` (nothing was
/// appended or published).
pub type LogAppendAck = Box<dyn FnOnce(Result<Result<u64, u64>, BrokerError>) + Send + 'static>;

/// A sequenced log as [`Broker::log_read`] returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The log's last sequence number.
    pub last: u64,
    /// The newest snapshot `(seq, data)`, when the reader starts from it (see
    /// [`Broker::log_read`]).
    pub snapshot: Option<(u64, Bytes)>,
    /// The entries after the snapshot, or after `after` without one, oldest first.
    pub entries: Vec<(u64, Bytes)>,
}

/// Called once with a [`Broker::log_read`].
pub type LogReadAck = Box<dyn FnOnce(Result<LogRead, BrokerError>) + Send + 'static>;

/// Whether the broker is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Not connected yet (starting).
    Connecting,
    /// Connected: publications cross to the other nodes.
    Up,
    /// Disconnected: publications to other nodes fail with an error until it reconnects.
    Down,
}

impl BrokerState {
    /// `"connecting"`, `"up"` or `"down"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connecting => "connecting",
            BrokerState::Up => "up",
            BrokerState::Down => "down",
        }
    }
}

/// A broker's counters (served on `/metrics` as `edge_ws_broker_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Publications sent to the broker (plain and stream).
    pub published: u64,
    /// Publications the broker refused or could not take (each answered with an error).
    pub publish_errors: u64,
    /// Publications received from the broker and handed to the cores.
    pub received: u64,
    /// This node's own publications coming back from the broker, ignored (already delivered).
    pub echoes_ignored: u64,
    /// Messages from the broker that could not be read (malformed), dropped.
    pub malformed: u64,
    /// Channels this node is subscribed to at the broker.
    pub subscriptions: u64,
    /// Connections re-established after a failure.
    pub reconnects: u64,
    /// Stream syncs (position and kept history read after a subscription started or came back).
    pub syncs: u64,
    /// Publications received for a channel nobody here listens to any more (in flight when
    /// the node unsubscribed), dropped.
    pub unrouted: u64,
}

impl BrokerStats {
    /// The `"broker"` object of `GET /health`: `{"state":…,"subscriptions":…,…}`.
    pub fn health_json(&self, state: BrokerState) -> String {
        format!(
            r#"{{"state":"{}","subscriptions":{},"reconnects":{},"publish_errors":{}}}"#,
            state.as_str(),
            self.subscriptions,
            self.reconnects,
            self.publish_errors
        )
    }

    /// `(name, value)` of every counter (gauges: `subscriptions`).
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("published", self.published),
            ("publish_errors", self.publish_errors),
            ("received", self.received),
            ("echoes_ignored", self.echoes_ignored),
            ("malformed", self.malformed),
            ("subscriptions", self.subscriptions),
            ("reconnects", self.reconnects),
            ("syncs", self.syncs),
            ("unrouted", self.unrouted),
        ]
    }
}

/// A publication to a channel with history, for the broker to number and store.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The channel.
    pub channel: Arc<str>,
    /// The payload as published (the owner cores of the nodes format it).
    pub payload: Bytes,
    /// Text or binary.
    pub kind: MessageKind,
    /// When it was published (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Publications the channel keeps.
    pub history_size: usize,
    /// How long they are kept (`None`: until `history_size` pushes them out).
    pub history_ttl: Option<Duration>,
    /// The publish's idempotency key: a repeat within `idempotency_window`, through any
    /// node, publishes nothing and gets the first one's position.
    pub idempotency_key: Option<Arc<str>>,
    /// How long the key is remembered.
    pub idempotency_window: Duration,
}

/// One publication of a stream as the broker keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEntry {
    /// Its offset.
    pub offset: u64,
    /// When it was published (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Text or binary.
    pub kind: MessageKind,
    /// The payload as published.
    pub payload: Bytes,
}

/// A stream as the broker has it: the position and the last kept publications (oldest first,
/// contiguous, ending at the position when any are kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSnapshot {
    /// The stream's position.
    pub position: StreamPosition,
    /// The kept publications, oldest first.
    pub entries: Vec<BrokerEntry>,
}

/// A distributed broker joining several engine processes (see the module docs). Every method
/// is called on a core or a handle's thread and must not block: queue the work for the
/// broker's own thread.
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Called once when the engine starts, with the sink for what the broker receives.
    fn start(&self, sink: BrokerSink);

    /// Sends a publication to a channel without history to the other nodes (this node has
    /// delivered it already and must not get it again). `done`, if given, is called once with
    /// the outcome.
    fn publish(&self, channel: &str, payload: &[u8], kind: MessageKind, done: Option<BrokerAck>);

    /// [`Broker::publish`] made on a core: the broker may hold it (and the core's other held
    /// calls, in order) until the core's next [`Broker::flush`], so that what a core publishes
    /// in one loop iteration (e.g. the burst one read of a client brought) reaches the broker,
    /// and the other nodes, as one batch. The default publishes at once.
    fn publish_held(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        done: Option<BrokerAck>,
    ) {
        self.publish(channel, payload, kind, done)
    }

    /// Sends what this thread's [`Broker::publish_held`] and [`Broker::stream_append`] calls
    /// left held. The engine calls it on every core once per loop iteration (after the
    /// iteration's work, before the core submits its I/O), and right after a held call made
    /// on another thread. Cheap when nothing is held. The default does nothing.
    fn flush(&self) {}

    /// Sends a message for every open connection on every other node.
    fn broadcast(&self, payload: &[u8], kind: MessageKind);

    /// `channel` got its first subscriber in this process. Calls for one channel may arrive
    /// out of order from different cores: decide from [`BrokerSink::interested`] when acting
    /// on it.
    fn subscribe(&self, channel: &str);

    /// `channel` lost its last subscriber in this process (see [`Broker::subscribe`]).
    fn unsubscribe(&self, channel: &str);

    /// Whether the broker numbers and keeps the channels with history (then every node's
    /// owner core publishes through [`Broker::stream_append`] and delivers what the broker
    /// sends back). `false`: streams stay per process.
    fn sequences_streams(&self) -> bool {
        false
    }

    /// Numbers and keeps a stream publication and sends it to every interested node (this one
    /// included); `done` gets its position. Only called when
    /// [`Broker::sequences_streams`], on the channel's owner core, which calls
    /// [`Broker::flush`] at the end of its loop iteration: the broker may hold the append
    /// until then (as [`Broker::publish_held`]).
    fn stream_append(&self, append: StreamAppend, done: AppendAck) {
        done(Err(BrokerError::Failed(format!(
            "this broker does not sequence streams ({})",
            append.channel
        ))));
    }

    /// Reads the stream's position and its last `max` kept publications. The answer goes to
    /// [`BrokerSink::synced`]. Only called when [`Broker::sequences_streams`]; the default
    /// answers nothing.
    fn stream_sync(&self, channel: &str, max: usize) {
        let _ = (channel, max);
    }

    /// Adds (or refreshes) `client` with `info` to `channel`'s presence across the cluster.
    /// The broker keeps it alive while this node runs; a node that dies stops refreshing it
    /// and it expires. The default keeps no presence.
    fn presence_join(&self, channel: &str, client: &str, info: &[u8]) {
        let _ = (channel, client, info);
    }

    /// Removes `client` from `channel`'s presence.
    fn presence_leave(&self, channel: &str, client: &str) {
        let _ = (channel, client);
    }

    /// Everyone in `channel`'s presence on every node (expired entries left out), sorted by
    /// client; `done` runs on the broker's thread.
    fn presence_list(&self, channel: &str, done: PresenceAck) {
        let _ = channel;
        done(Err(BrokerError::Failed(
            "this broker keeps no presence".into(),
        )));
    }

    /// Appends `record` to the sequenced log `name` as entry `seq` only if the log's last
    /// entry is `seq - 1` — a compare-and-append, so the broker sequences the log for the
    /// whole cluster — keeping its last `keep` entries, and in the same step publishes
    /// `record` to `channel` as a plain publication that reaches every interested node, this
    /// one included. The default keeps no logs and answers an error.
    fn log_append(
        &self,
        name: &str,
        seq: u64,
        record: &[u8],
        keep: usize,
        channel: &str,
        done: LogAppendAck,
    ) {
        let _ = (seq, record, keep, channel);
        done(Err(BrokerError::Failed(format!(
            "this broker keeps no logs ({name})"
        ))));
    }

    /// Reads the log `name` after entry `after`: the entries after it, or — when reading from
    /// the start (`after` 0) or when the kept entries no longer reach back to `after + 1` —
    /// the newest snapshot (if newer than `after`) and the entries after the snapshot. The
    /// default answers an error.
    fn log_read(&self, name: &str, after: u64, done: LogReadAck) {
        let _ = after;
        done(Err(BrokerError::Failed(format!(
            "this broker keeps no logs ({name})"
        ))));
    }

    /// Stores `data` as the snapshot of the log `name` at entry `seq`, unless a newer one is
    /// stored (a snapshot beyond the log's last entry makes it the last). The default keeps
    /// none.
    fn log_snapshot(&self, name: &str, seq: u64, data: &[u8]) {
        let _ = (name, seq, data);
    }

    /// Whether it is connected.
    fn state(&self) -> BrokerState;

    /// Its counters.
    fn stats(&self) -> BrokerStats;
}

/// How a broker hands what it receives to this process's cores. Cheap to clone, any thread.
#[derive(Clone)]
pub struct BrokerSink {
    inner: Arc<dyn Inbound>,
}

impl std::fmt::Debug for BrokerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSink")
            .field("cores", &self.inner.cores())
            .finish()
    }
}

/// The cores' side of a [`BrokerSink`] (implemented by the engine's shared state, which sits
/// above this module: the sink reaches the cores without this module knowing them).
pub(crate) trait Inbound: Send + Sync {
    fn cores(&self) -> usize;
    fn interested(&self, channel: &str) -> bool;
    fn policy(&self, channel: &str) -> &ChannelPolicy;
    fn max_history_read(&self) -> usize;
    /// Queues the publication for the cores that should see it, marking them in `wake`.
    fn deliver(&self, channel: &str, payload: &[u8], kind: MessageKind, wake: &mut Wakes) -> bool;
    fn deliver_all(&self, payload: &[u8], kind: MessageKind, wake: &mut Wakes);
    fn stream_publication(
        &self,
        channel: &str,
        entry: BrokerEntry,
        epoch: u64,
        wake: &mut Wakes,
    ) -> bool;
    /// Wakes every core marked in `wake` (once each) and clears it.
    fn wake(&self, wake: &mut Wakes);
    fn synced(&self, channel: &str, snapshot: Result<BrokerSnapshot, BrokerError>, live: bool);
    fn desynced(&self, channel: &str);
}

impl BrokerSink {
    pub(crate) fn new(inner: Arc<dyn Inbound>) -> BrokerSink {
        BrokerSink { inner }
    }

    /// Whether this process has a subscriber (a connection or an in-process callback) to
    /// `channel`.
    pub fn interested(&self, channel: &str) -> bool {
        self.inner.interested(channel)
    }

    /// The policy of `channel`'s namespace.
    pub fn policy(&self, channel: &str) -> &ChannelPolicy {
        self.inner.policy(channel)
    }

    /// Most publications a recovery returns (the most a sync needs to read).
    pub fn max_history_read(&self) -> usize {
        self.inner.max_history_read()
    }

    /// A publication to a channel without history from another node: delivered to this
    /// node's subscribers (in-process ones included). Returns whether anyone here listens.
    pub fn deliver(&self, channel: &str, payload: &[u8], kind: MessageKind) -> bool {
        self.burst().deliver(channel, payload, kind)
    }

    /// A message for every open connection, from another node.
    pub fn deliver_all(&self, payload: &[u8], kind: MessageKind) {
        self.burst().deliver_all(payload, kind)
    }

    /// A numbered publication of a stream, in the broker's order: handed to the channel's
    /// owner core, which keeps it and delivers it to this node's subscribers (or, after a
    /// gap, asks for a sync first). Returns whether the channel is known here.
    pub fn stream_publication(&self, channel: &str, entry: BrokerEntry, epoch: u64) -> bool {
        self.burst().stream_publication(channel, entry, epoch)
    }

    /// A [`Burst`]: publications handed to the cores through it are queued at once, in order,
    /// and each core that got some is woken once, when the burst is dropped. Hand everything
    /// one read from the broker brought through one burst, so a core finds (and corks into
    /// one send per subscriber) all of it, rather than waking on its first publication.
    pub fn burst(&self) -> Burst<'_> {
        Burst {
            sink: self,
            wake: Wakes::default(),
        }
    }

    /// The answer to [`Broker::stream_sync`] (or the broker's own sync once a subscription to
    /// a stream is in place). `live`: the node was subscribed to the channel before the read,
    /// so every publication after the snapshot will arrive through
    /// [`BrokerSink::stream_publication`]; the owner core then continues the stream from it
    /// (delivering what this node missed) and answers the subscribers waiting for it. Without
    /// `live` it only answers history reads. An error answers waiting history reads with it
    /// and leaves recovering subscribers waiting for the next sync.
    pub fn synced(&self, channel: &str, snapshot: Result<BrokerSnapshot, BrokerError>, live: bool) {
        self.inner.synced(channel, snapshot, live)
    }

    /// The node stopped receiving `channel`'s publications (unsubscribed, or the
    /// subscription connection broke): its owner core stops trusting its mirror of the
    /// stream until the next [`BrokerSink::synced`].
    pub fn desynced(&self, channel: &str) {
        self.inner.desynced(channel)
    }
}

/// Cores with work queued and not woken yet (see [`BrokerSink::burst`]).
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    cores: Vec<bool>,
    any: bool,
}

impl Wakes {
    /// Marks `core` to be woken.
    pub(crate) fn mark(&mut self, core: usize) {
        if self.cores.len() <= core {
            self.cores.resize(core + 1, false);
        }
        self.cores[core] = true;
        self.any = true;
    }

    /// Calls `f` with every marked core, once each, and clears the marks.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize)) {
        if !std::mem::take(&mut self.any) {
            return;
        }
        for (core, marked) in self.cores.iter_mut().enumerate() {
            if std::mem::take(marked) {
                f(core);
            }
        }
    }
}

/// Publications from the broker handed to the cores as one burst: each is queued to its cores
/// at once (in the order given), and every core that got some is woken once, when the burst
/// is dropped (see [`BrokerSink::burst`]).
#[derive(Debug)]
pub struct Burst<'a> {
    sink: &'a BrokerSink,
    wake: Wakes,
}

impl Burst<'_> {
    /// [`BrokerSink::deliver`] within the burst.
    pub fn deliver(&mut self, channel: &str, payload: &[u8], kind: MessageKind) -> bool {
        self.sink
            .inner
            .deliver(channel, payload, kind, &mut self.wake)
    }

    /// [`BrokerSink::deliver_all`] within the burst.
    pub fn deliver_all(&mut self, payload: &[u8], kind: MessageKind) {
        self.sink.inner.deliver_all(payload, kind, &mut self.wake)
    }

    /// [`BrokerSink::stream_publication`] within the burst.
    pub fn stream_publication(&mut self, channel: &str, entry: BrokerEntry, epoch: u64) -> bool {
        self.sink
            .inner
            .stream_publication(channel, entry, epoch, &mut self.wake)
    }
}

impl Drop for Burst<'_> {
    fn drop(&mut self) {
        self.sink.inner.wake(&mut self.wake);
    }
}
