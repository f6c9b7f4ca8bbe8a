//! Channels and cross-core fan-out.
//!
//! A publish is encoded once into a `Publish` (header and payload in one `Bytes`) and shared
//! by refcount with every core that has subscribers to its channel (a bit in the channel's core
//! mask) and every recipient there. Cores hand publishes to each other through lanes: one
//! bounded lock-free ring per (producer core, consumer core) pair, plus one unbounded lock-free
//! queue per consumer core for publishers outside the cores (any thread, through the
//! `EngineHandle`). A producer core whose ring to a target is full spills into its own local
//! overflow queue for that target, counts the spill, and moves the overflow into the ring, in
//! order, as soon as there is room; it never blocks and never drops. The target core is woken
//! only if it is parked, so a burst costs one wakeup.
//!
//! No lock is taken on the publish path: the channel registry (a mutex-protected map from name to
//! [`ChannelShared`]) is consulted only the first time a core meets a channel name; after that the
//! core uses its own cached `Arc`.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use crate::broker::Broker;
use crate::ids::ConnectionId;
use crate::stream::{owner_of, ChannelConfig, ChannelPolicy, Inproc};

/// Capacity of each core-to-core ring when `Config::ring_capacity` is 0 (automatic) and the
/// machine has few cores; see [`auto_ring_capacity`].
pub const DEFAULT_RING_CAPACITY: usize = 4096;

/// Bytes all the core-to-core rings of an engine may take together when their capacity is
/// automatic: there are cores² rings (one per ordered pair) of 24-byte slots (a stamp and a
/// lane item), allocated and initialised up front.
const AUTO_RING_BUDGET: usize = 64 << 20;

/// Bytes of one ring slot: a stamp and the engine's lane item (a tagged pointer).
const SLOT_BYTES: usize = 24;

/// The ring capacity used when `Config::ring_capacity` is 0: [`DEFAULT_RING_CAPACITY`], lowered
/// on many-core machines so that the cores² rings stay within 64 MiB, never below 64. A full ring spills to the publisher's overflow queue, so a
/// smaller ring costs spills under bursts, never messages.
/// (64 cores: 682 per ring; 192 cores: 75.)
pub fn auto_ring_capacity(cores: usize) -> usize {
    let per_ring = AUTO_RING_BUDGET / (SLOT_BYTES * cores.max(1) * cores.max(1));
    per_ring.clamp(64, DEFAULT_RING_CAPACITY)
}

/// A set of cores, one bit per core, in as many words as the configured cores need: no limit
/// on the number of cores. Changed with atomic or/and of one word, read word by word.
#[derive(Debug)]
pub(crate) struct CoreSet {
    words: Box<[AtomicU64]>,
}

impl CoreSet {
    pub(crate) fn new(cores: usize) -> Self {
        CoreSet {
            words: (0..cores.div_ceil(64).max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub(crate) fn insert(&self, core: usize) {
        self.words[core / 64].fetch_or(1 << (core % 64), Ordering::AcqRel);
    }

    pub(crate) fn remove(&self, core: usize) {
        self.words[core / 64].fetch_and(!(1 << (core % 64)), Ordering::AcqRel);
    }

    /// Calls `f` with every core in the set, in increasing order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize)) {
        for (w, word) in self.words.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                f(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
}

/// A predicate over a recipient: its id and its user data slot. Runs on the recipient's core.
pub type Filter = Arc<dyn Fn(ConnectionId, Option<&dyn Any>) -> bool + Send + Sync>;

/// Options of one publish.
#[derive(Clone, Default)]
pub struct PublishOptions {
    /// A connection that must not receive it (typically the sender).
    pub exclude: Option<ConnectionId>,
    /// Only recipients for which this returns `true` receive it.
    pub filter: Option<Filter>,
    /// For a channel with history: a repeat of this key within the namespace's
    /// `idempotency_window` publishes nothing and is answered with the first publish's result.
    pub idempotency_key: Option<Arc<str>>,
    /// For a channel with history: deliver to the current subscribers directly, without an
    /// offset and without keeping it (presence join/leave events and other ephemeral news).
    pub transient: bool,
}

impl std::fmt::Debug for PublishOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishOptions")
            .field("exclude", &self.exclude)
            .field("filter", &self.filter.is_some())
            .field("idempotency_key", &self.idempotency_key)
            .field("transient", &self.transient)
            .finish()
    }
}

/// A channel as every core sees it.
#[derive(Debug)]
pub struct ChannelShared {
    pub(crate) name: Arc<str>,
    /// The cores with at least one local subscriber.
    pub(crate) cores: CoreSet,
    /// Subscribers over all cores.
    pub(crate) subscribers: AtomicUsize,
    /// The channel's policy when it is a stream (sequenced by its owner core).
    pub(crate) stream: Option<Arc<ChannelPolicy>>,
    /// The core that sequences it (meaningful for streams).
    pub(crate) owner: usize,
    /// In-process subscribers.
    pub(crate) inproc: Arc<Inproc>,
    /// The cluster broker, told when the process gets its first subscriber and loses its last.
    pub(crate) broker: Option<Arc<dyn Broker>>,
}

impl ChannelShared {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Subscribers over all cores.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Whether the channel is a stream (offsets, history).
    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether the process has a subscriber: a connection on any core or an in-process
    /// callback.
    pub(crate) fn interested(&self) -> bool {
        self.subscribers() > 0 || self.inproc.count() > 0
    }

    /// One more subscriber on some core; the first in the process is announced to the broker.
    #[inline]
    pub(crate) fn add_subscriber(&self) {
        if self.subscribers.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Some(b) = &self.broker {
                b.subscribe(&self.name);
            }
        }
    }

    /// One subscriber fewer; the last one leaving the process is announced to the broker.
    #[inline]
    pub(crate) fn remove_subscriber(&self) {
        if self.subscribers.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(b) = &self.broker {
                b.unsubscribe(&self.name);
            }
        }
    }
}

/// Name → channel, shared by all cores; only touched when a core first meets a name.
#[derive(Debug)]
pub(crate) struct ChannelRegistry {
    map: Mutex<HashMap<Arc<str>, Arc<ChannelShared>>>,
    /// How many cores a channel's core set spans.
    cores: usize,
    /// Namespaces, naming rules.
    pub(crate) config: ChannelConfig,
    /// The cluster broker every channel tells about its first and last subscriber.
    pub(crate) broker: Option<Arc<dyn Broker>>,
}

impl ChannelRegistry {
    #[cfg(test)]
    pub(crate) fn new(cores: usize) -> Self {
        Self::with_config(cores, ChannelConfig::default())
    }

    pub(crate) fn with_config(cores: usize, config: ChannelConfig) -> Self {
        ChannelRegistry {
            map: Mutex::new(HashMap::new()),
            cores,
            config,
            broker: None,
        }
    }

    /// With a cluster broker.
    pub(crate) fn with_broker(mut self, broker: Option<Arc<dyn Broker>>) -> Self {
        self.broker = broker;
        self
    }

    pub(crate) fn get_or_create(&self, name: &str) -> Arc<ChannelShared> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(name) {
            return t.clone();
        }
        let policy = self.config.policy(name);
        let stream = policy.is_stream().then(|| Arc::new(policy.clone()));
        let owner = owner_of(name, self.cores);
        let name: Arc<str> = name.into();
        let t = Arc::new(ChannelShared {
            name: name.clone(),
            cores: CoreSet::new(self.cores),
            subscribers: AtomicUsize::new(0),
            stream,
            owner,
            inproc: Arc::default(),
            broker: self.broker.clone(),
        });
        if let Some(b) = &self.broker {
            let (b, n) = (b.clone(), name.clone());
            let _ = t.inproc.on_empty.set(Box::new(move || b.unsubscribe(&n)));
        }
        map.insert(name, t.clone());
        t
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<ChannelShared>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// `(name, subscribers)` of every known channel, sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, usize)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|t| (t.name.to_string(), t.subscribers()))
            .collect();
        v.sort();
        v
    }
}

/// What a publish targets.
pub(crate) enum Target {
    Channel(Arc<ChannelShared>),
    /// Every open connection.
    All,
}

/// One publish, shared by every target core.
pub(crate) struct Publish {
    pub(crate) target: Target,
    /// The whole uncompressed server frame.
    pub(crate) frame: Bytes,
    /// Offset of the payload in `frame`.
    pub(crate) header_len: usize,
    pub(crate) text: bool,
    pub(crate) opts: PublishOptions,
}

impl Publish {
    /// Encodes the frame once.
    pub(crate) fn new(target: Target, payload: &[u8], text: bool, opts: PublishOptions) -> Self {
        let opcode = if text {
            edge_ws_protocol::OpCode::Text
        } else {
            edge_ws_protocol::OpCode::Binary
        };
        let frame = edge_ws_protocol::codec::server_frame(opcode, payload);
        Publish {
            header_len: frame.len() - payload.len(),
            target,
            frame,
            text,
            opts,
        }
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.header_len..]
    }

    /// Calls `f` with every core this publish goes to: the channel's cores with subscribers, or
    /// all `cores`.
    pub(crate) fn for_each_core(&self, cores: usize, mut f: impl FnMut(usize)) {
        match &self.target {
            Target::Channel(t) => t.cores.for_each(f),
            Target::All => (0..cores).for_each(&mut f),
        }
    }
}

/// Most distinct excluded connections one corked run may name (each one gets its messages one
/// by one, and every recipient is checked against the list).
const CORK_MAX_EXCLUDED: usize = 16;

/// Publishes a core accepted for its own recipients but has not queued yet: a run of
/// consecutive publishes to one target, without filters, queued together as one contiguous
/// buffer per recipient when the core flushes the cork (before its loop iteration submits, or
/// before anything else is queued on the core). Each recipient then costs one queue entry and
/// one send per run instead of one per message (docs/ARCHITECTURE.md, "Corked delivery").
/// Publishes may exclude a connection (typically their sender): the few excluded connections
/// get the run's other messages one by one.
#[derive(Default)]
pub(crate) struct Cork {
    publishes: Vec<Arc<Publish>>,
    bytes: usize,
    /// The distinct `exclude`s of the run's publishes.
    excluded: Vec<ConnectionId>,
}

impl Cork {
    /// Nothing is waiting.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.publishes.is_empty()
    }

    /// Whether `p` may join the run: no filter, the same target as the run, the run stays
    /// within `max_bytes` and names at most [`CORK_MAX_EXCLUDED`] excluded connections.
    pub(crate) fn accepts(&self, p: &Publish, max_bytes: usize) -> bool {
        if p.opts.filter.is_some() {
            return false;
        }
        if let Some(x) = p.opts.exclude {
            if self.excluded.len() >= CORK_MAX_EXCLUDED && !self.excluded.contains(&x) {
                return false;
            }
        }
        if self.bytes + p.frame.len() > max_bytes {
            return false;
        }
        match self.publishes.first().map(|f| (&f.target, &p.target)) {
            None => true,
            Some((Target::Channel(a), Target::Channel(b))) => Arc::ptr_eq(a, b),
            Some((Target::All, Target::All)) => true,
            Some(_) => false,
        }
    }

    /// Adds `p` to the run (after [`Cork::accepts`]).
    pub(crate) fn push(&mut self, p: Arc<Publish>) {
        if let Some(x) = p.opts.exclude {
            if !self.excluded.contains(&x) {
                self.excluded.push(x);
            }
        }
        self.bytes += p.frame.len();
        self.publishes.push(p);
    }

    /// Takes the run and its excluded connections out; hand them back with [`Cork::recycle`].
    pub(crate) fn take(&mut self) -> (Vec<Arc<Publish>>, Vec<ConnectionId>) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.publishes),
            std::mem::take(&mut self.excluded),
        )
    }

    /// Gives back what [`Cork::take`] returned, emptied, to reuse the allocations.
    pub(crate) fn recycle(&mut self, mut run: Vec<Arc<Publish>>, mut excluded: Vec<ConnectionId>) {
        run.clear();
        excluded.clear();
        if self.publishes.is_empty() && run.capacity() <= 4096 {
            self.publishes = run;
        }
        if self.excluded.is_empty() {
            self.excluded = excluded;
        }
    }
}

/// The frames of `run` back to back in one buffer (the frame itself for a run of one).
pub(crate) fn concat_frames(run: &[Arc<Publish>]) -> Bytes {
    match run {
        [] => Bytes::new(),
        [one] => one.frame.clone(),
        _ => {
            let total = run.iter().map(|p| p.frame.len()).sum();
            let mut out = Vec::with_capacity(total);
            for p in run {
                out.extend_from_slice(&p.frame);
            }
            Bytes::from(out)
        }
    }
}

/// The inbound lanes of one core, carrying `T` (the engine's `LaneItem`: publishes and stream
/// messages).
pub(crate) struct Inbox<T> {
    /// `from_core[p]`: the ring core `p` writes to (single producer).
    pub(crate) from_core: Box<[ArrayQueue<T>]>,
}

impl<T> Inbox<T> {
    pub(crate) fn new(cores: usize, capacity: usize) -> Self {
        Inbox {
            from_core: (0..cores)
                .map(|_| ArrayQueue::new(capacity.max(1)))
                .collect(),
        }
    }
}

/// A producer core's spill queues, one per target core (local, not shared).
pub(crate) struct Outbox<T> {
    pub(crate) overflow: Vec<VecDeque<T>>,
}

impl<T> Outbox<T> {
    pub(crate) fn new(cores: usize) -> Self {
        Outbox {
            overflow: (0..cores).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Pushes `p` to `lane` in order behind anything already spilled; returns whether it
    /// spilled.
    pub(crate) fn push(&mut self, target: usize, lane: &ArrayQueue<T>, p: T) -> bool {
        let q = &mut self.overflow[target];
        if q.is_empty() {
            match lane.push(p) {
                Ok(()) => return false,
                Err(p) => q.push_back(p),
            }
        } else {
            q.push_back(p);
        }
        true
    }

    /// Moves spilled publishes into their lanes (`inboxes[target].from_core[me]`) while there
    /// is room, calling `moved(target)` once for each target that got some. Returns whether any
    /// overflow remains.
    pub(crate) fn flush(
        &mut self,
        me: usize,
        inboxes: &[Arc<Inbox<T>>],
        mut moved: impl FnMut(usize),
    ) -> bool {
        let mut left = false;
        for (target, q) in self.overflow.iter_mut().enumerate() {
            if q.is_empty() {
                continue;
            }
            let lane = &inboxes[target].from_core[me];
            let mut any = false;
            while let Some(p) = q.pop_front() {
                if let Err(p) = lane.push(p) {
                    q.push_front(p);
                    break;
                }
                any = true;
            }
            if any {
                moved(target);
            }
            left |= !q.is_empty();
        }
        left
    }

    /// Publishes waiting in overflow queues.
    pub(crate) fn len(&self) -> usize {
        self.overflow.iter().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(n: u8) -> Arc<Publish> {
        Arc::new(Publish {
            target: Target::All,
            frame: Bytes::copy_from_slice(&[0x82, 1, n]),
            header_len: 2,
            text: false,
            opts: PublishOptions::default(),
        })
    }

    #[test]
    fn core_sets_span_any_number_of_cores() {
        // 192 hardware threads: three words; members come back in order, removal is exact.
        let set = CoreSet::new(192);
        for c in [0, 1, 63, 64, 127, 128, 191] {
            set.insert(c);
        }
        set.remove(1);
        let mut got = Vec::new();
        set.for_each(|c| got.push(c));
        assert_eq!(got, vec![0, 63, 64, 127, 128, 191]);
        // A broadcast to all reaches every core, a channel only those with subscribers.
        let reg = ChannelRegistry::new(192);
        let t = reg.get_or_create("t");
        t.cores.insert(150);
        let p = Publish::new(Target::Channel(t), b"x", true, PublishOptions::default());
        let mut to = Vec::new();
        p.for_each_core(192, |c| to.push(c));
        assert_eq!(to, vec![150]);
        let all = Publish::new(Target::All, b"x", true, PublishOptions::default());
        let mut n = 0;
        all.for_each_core(192, |_| n += 1);
        assert_eq!(n, 192);
        // Rings shrink on many-core machines, never below 64.
        assert_eq!(auto_ring_capacity(2), DEFAULT_RING_CAPACITY);
        assert_eq!(auto_ring_capacity(64), 682);
        assert!(
            auto_ring_capacity(192) >= 64
                && auto_ring_capacity(192) * SLOT_BYTES * 192 * 192 <= 64 << 20
        );
        assert_eq!(auto_ring_capacity(4096), 64);
    }

    #[test]
    fn cork_runs_one_target_without_filters_and_few_excluded() {
        let reg = ChannelRegistry::new(2);
        let (a, b) = (reg.get_or_create("a"), reg.get_or_create("b"));
        let to = |t: &Arc<ChannelShared>, exclude: Option<ConnectionId>| {
            let opts = PublishOptions {
                exclude,
                ..PublishOptions::default()
            };
            Arc::new(Publish::new(Target::Channel(t.clone()), b"x", true, opts))
        };
        let mut cork = Cork::default();
        assert!(cork.accepts(&to(&a, None), 1024));
        cork.push(to(&a, None));
        // Another channel, broadcast-to-all, or a filter: not in this run.
        assert!(!cork.accepts(&to(&b, None), 1024));
        assert!(!cork.accepts(&publish(1), 1024));
        let filtered = Publish::new(
            Target::Channel(a.clone()),
            b"x",
            true,
            PublishOptions {
                filter: Some(Arc::new(|_, _| true)),
                ..PublishOptions::default()
            },
        );
        assert!(!cork.accepts(&filtered, 1024));
        // Up to CORK_MAX_EXCLUDED distinct excluded connections; repeats are free.
        for i in 0..CORK_MAX_EXCLUDED {
            let p = to(
                &a,
                Some(ConnectionId::new(0, crate::runtime::ConnId::new(i, 1))),
            );
            assert!(cork.accepts(&p, 1024));
            cork.push(p.clone());
            cork.push(p);
        }
        let again = to(
            &a,
            Some(ConnectionId::new(0, crate::runtime::ConnId::new(3, 1))),
        );
        assert!(cork.accepts(&again, 1024));
        let one_more = to(
            &a,
            Some(ConnectionId::new(0, crate::runtime::ConnId::new(99, 1))),
        );
        assert!(!cork.accepts(&one_more, 1024));
        // The byte cap.
        assert!(!cork.accepts(&to(&a, None), cork.bytes + 2));
        let (run, excluded) = cork.take();
        assert_eq!(run.len(), 1 + 2 * CORK_MAX_EXCLUDED);
        assert_eq!(excluded.len(), CORK_MAX_EXCLUDED);
        assert_eq!(concat_frames(&run).len(), run.len() * run[0].frame.len());
        assert!(cork.is_empty());
        cork.recycle(run, excluded);
        assert!(cork.accepts(
            &to(
                &b,
                Some(ConnectionId::new(0, crate::runtime::ConnId::new(99, 1)))
            ),
            1024
        ));
    }

    #[test]
    fn full_lane_spills_in_order_and_flushes_in_order() {
        // Core 0 publishing to core 1.
        let inbox = Arc::new(Inbox::new(2, 64));
        let mut out = Outbox::new(2);
        let lane = &inbox.from_core[0];
        let total = 64 + 100;
        let mut spilled = 0;
        for i in 0..total {
            if out.push(1, lane, publish(i as u8)) {
                spilled += 1;
            }
        }
        assert_eq!(spilled, 100);
        // Consumer takes some, producer flushes what fits, until everything went through;
        // the order is intact end to end.
        let other = Arc::new(Inbox::new(2, 64));
        let inboxes = [other, inbox.clone()];
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen.push(lane.pop().unwrap().payload()[0]);
        }
        let mut moved = Vec::new();
        let left = out.flush(0, &inboxes, |c| moved.push(c));
        assert!(left, "50 slots freed, 100 waiting");
        assert_eq!(moved, vec![1]);
        assert_eq!(out.len(), 50);
        while let Some(p) = lane.pop() {
            seen.push(p.payload()[0]);
        }
        let left = out.flush(0, &inboxes, |_| {});
        assert!(!left);
        while let Some(p) = lane.pop() {
            seen.push(p.payload()[0]);
        }
        let want: Vec<u8> = (0..total).map(|i| i as u8).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn registry_interns_channels() {
        let r = ChannelRegistry::new(2);
        let a = r.get_or_create("chat");
        let b = r.get_or_create("chat");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(r.get("other").is_none());
        a.subscribers.fetch_add(2, Ordering::Relaxed);
        assert_eq!(r.list(), vec![("chat".to_string(), 2)]);
    }
}

/// Internals exposed for the criterion benches only; not part of the API.
#[doc(hidden)]
pub mod bench_support {
    use super::*;
    use std::time::{Duration, Instant};

    /// Pushes `n` publishes of `payload` from a producer (this thread, optionally pinned to
    /// `cores.0`) to a consumer thread (pinned to `cores.1`) through one core-to-core lane of
    /// `capacity`, spilling and flushing like a core does; returns the time until the consumer
    /// has taken the last one, and the number of spills.
    pub fn lane_transfer(
        n: usize,
        capacity: usize,
        payload: &[u8],
        cores: Option<(usize, usize)>,
    ) -> (Duration, u64) {
        let inboxes: Arc<[Arc<Inbox<Arc<Publish>>>]> =
            (0..2).map(|_| Arc::new(Inbox::new(2, capacity))).collect();
        let consumer_inboxes = inboxes.clone();
        let ids = core_affinity::get_core_ids().unwrap_or_default();
        let pin = |c: usize| {
            if let Some(id) = ids.iter().find(|i| i.id == c) {
                core_affinity::set_for_current(*id);
            }
        };
        let consumer_core = cores.map(|c| c.1);
        let ids2 = ids.clone();
        let consumer = std::thread::spawn(move || {
            if let Some(c) = consumer_core {
                if let Some(id) = ids2.iter().find(|i| i.id == c) {
                    core_affinity::set_for_current(*id);
                }
            }
            let lane = &consumer_inboxes[1].from_core[0];
            let mut got = 0usize;
            let mut bytes = 0usize;
            while got < n {
                match lane.pop() {
                    Some(p) => {
                        got += 1;
                        bytes += p.payload().len();
                    }
                    None => std::thread::yield_now(),
                }
            }
            bytes
        });
        if let Some((c, _)) = cores {
            pin(c);
        }
        let mut out = Outbox::new(2);
        let mut spills = 0;
        let start = Instant::now();
        for _ in 0..n {
            let p = Arc::new(Publish::new(
                Target::All,
                payload,
                false,
                PublishOptions::default(),
            ));
            if out.push(1, &inboxes[1].from_core[0], p) {
                spills += 1;
            }
            if out.len() > 0 {
                out.flush(0, &inboxes, |_| {});
            }
        }
        while out.len() > 0 {
            out.flush(0, &inboxes, |_| {});
            std::thread::yield_now();
        }
        let bytes = consumer.join().expect("consumer");
        let took = start.elapsed();
        assert_eq!(bytes, n * payload.len());
        (took, spills)
    }
}
