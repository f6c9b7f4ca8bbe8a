//! Streams on the cores: the owner core sequences, keeps and (through the store) persists a
//! channel's publications and answers recovery and history requests; a subscriber's core
//! holds a recovering subscriber back until the owner's answer arrives in the same ring as the
//! live publications (see `crate::stream` and docs/design/streams.md).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::{CoreState, Phase};
use crate::broker::{BrokerEntry, BrokerError, BrokerSnapshot, StreamAppend};
use crate::fanout::{ChannelShared, Publish, PublishOptions, Target};
use crate::metrics::inc;
use crate::runtime::{ConnId, Io};
use crate::shared::{Command, ConnCall, LaneItem, ReplyTo, StreamMsg};
use crate::stream::{
    now_ms, Entry, History, HistoryPage, HistoryQuery, PublishResult, Published, Recovery,
    RecoveryFailure, StoredPublication, StreamError, StreamPosition, Subscribed,
};

/// A closure for connection `ConnId` of a core, given the core's state and a `T`.
pub(crate) type ConnFnBox<T> =
    Box<dyn for<'a, 'b> FnOnce(&'a mut CoreState, &'a mut Io<'b>, ConnId, T) + Send>;

/// The typed form of a [`ConnCall`].
pub(crate) struct ConnFn<T>(pub(crate) ConnFnBox<T>);

impl<T: 'static> ConnFn<T> {
    pub(crate) fn erase(f: ConnFnBox<T>) -> ConnCall {
        Box::new(ConnFn(f))
    }

    fn typed(call: ConnCall) -> Option<ConnFnBox<T>> {
        call.downcast::<ConnFn<T>>().ok().map(|b| b.0)
    }
}

/// A stream as its owner core keeps it.
pub(crate) struct OwnedStream {
    pub(crate) h: History,
    /// Persistent publishes waiting for their commit, in offset order.
    pending: VecDeque<Pending>,
    /// A commit failed: refuse publishes until `pending` drained, then continue from the
    /// store's position.
    failed: bool,
    /// In a cluster whose broker numbers the streams: the state of this node's mirror.
    mirror: Option<Box<Mirror>>,
}

/// This node's copy of a stream the cluster broker numbers. It is *live* while the node is
/// subscribed at the broker and has read the stream's position after subscribing: then every
/// later publication arrives in the broker's order and the kept history is the broker's
/// tail, so recovery and reads are answered here. Until then, recoveries wait, reads go to
/// the broker, and publications that arrive are held to be merged with the snapshot.
#[derive(Default)]
pub(crate) struct Mirror {
    live: bool,
    /// A read was asked of the broker and not answered yet.
    sync_asked: bool,
    /// Publications received while not live, in order.
    held: Vec<(BrokerEntry, u64)>,
    /// Recoveries waiting for the mirror to be live.
    recovers: Vec<WaitingRecover>,
    /// History reads waiting for a snapshot.
    reads: Vec<(HistoryQuery, ReplyTo<Result<HistoryPage, StreamError>>)>,
    /// Repeats of an idempotency key whose first publish waits for the broker's answer.
    duplicates: std::collections::HashMap<Arc<str>, Vec<ReplyTo<PublishResult>>>,
}

struct WaitingRecover {
    since: Option<StreamPosition>,
    core: usize,
    conn: ConnId,
    reply: ConnCall,
}

/// Most publications held for a stream while its mirror is not live; beyond it they are
/// dropped (counted in `stream_broker_dropped`) and the next snapshot fills the gap.
const MAX_HELD: usize = 100_000;

struct Pending {
    offset: u64,
    publish: Arc<Publish>,
    ts_ms: u64,
    acks: Vec<ReplyTo<PublishResult>>,
    key: Option<Arc<str>>,
}

impl CoreState {
    /// Hands `msg` to core `core` through this core's ring to it (in order with this core's
    /// publishes there), or handles it here if `core` is this one.
    fn send_stream(&mut self, io: &mut Io<'_>, core: usize, msg: StreamMsg) {
        let me = self.core_index;
        if core == me {
            return self.on_stream(io, msg);
        }
        let lane = &self.shared.inboxes[core].from_core[me];
        if self
            .outbox
            .push(core, lane, LaneItem::Stream(Box::new(msg)))
        {
            inc(&self.metrics[me].spills);
            self.shared.wakers[me].wake();
        }
        self.shared.wakers[core].wake();
    }

    /// Answers `reply` with `v`: a connection of this core now, one of another core through
    /// its command queue, a thread's callback here.
    pub(crate) fn answer<T: Send + 'static>(&mut self, io: &mut Io<'_>, reply: ReplyTo<T>, v: T) {
        match reply {
            ReplyTo::Socket { core, conn, f } => {
                let Some(f) = ConnFn::<T>::typed(f) else {
                    debug_assert!(false, "reply of another type");
                    return;
                };
                if core == self.core_index {
                    self.call_conn(io, conn, move |st, io, id| f(st, io, id, v));
                } else {
                    let call: ConnFnBox<()> = Box::new(move |st, io, id, ()| f(st, io, id, v));
                    self.shared.queues[core].push(Command::Call {
                        conn,
                        f: ConnFn::erase(call),
                    });
                    self.shared.wakers[core].wake();
                }
            }
            ReplyTo::Callback(f) => f(v),
            ReplyTo::Nobody => {}
        }
    }

    /// Runs `f` with connection `conn` if it is still open (dropped otherwise).
    pub(crate) fn call_conn(
        &mut self,
        io: &mut Io<'_>,
        conn: ConnId,
        f: impl FnOnce(&mut CoreState, &mut Io<'_>, ConnId),
    ) {
        if self.conn(conn).is_some_and(|c| c.phase == Phase::Open) {
            f(self, io, conn);
        }
    }

    /// Runs an erased [`ConnFn<()>`] from a command.
    pub(crate) fn run_call(&mut self, io: &mut Io<'_>, conn: ConnId, f: ConnCall) {
        if let Some(f) = ConnFn::<()>::typed(f) {
            self.call_conn(io, conn, move |st, io, id| f(st, io, id, ()));
        }
    }

    /// A stream message from a ring or the command queue.
    pub(crate) fn on_stream(&mut self, io: &mut Io<'_>, msg: StreamMsg) {
        match msg {
            StreamMsg::Publish {
                channel,
                payload,
                text,
                opts,
                reply,
            } => self.sequence(io, channel, payload, text, opts, reply),
            StreamMsg::Recover {
                channel,
                since,
                core,
                conn,
                reply,
            } => {
                let max = self.shared.channels.config.max_history_read;
                let stream = self.owned(&channel);
                if let Some(m) = stream.mirror.as_mut().filter(|m| !m.live) {
                    m.recovers.push(WaitingRecover {
                        since,
                        core,
                        conn,
                        reply,
                    });
                    return;
                }
                stream.h.trim(now_ms());
                let (outcome, entries) = stream.h.recover(since, max);
                if matches!(outcome.recovery, Recovery::Failed(_)) {
                    inc(&self.metrics[self.core_index].stream_recovery_failed);
                }
                let msg = StreamMsg::Recovered {
                    channel,
                    conn,
                    outcome,
                    entries,
                    reply,
                };
                self.send_stream(io, core, msg);
            }
            StreamMsg::Recovered {
                channel,
                conn,
                outcome,
                entries,
                reply,
            } => self.recovered(io, &channel, conn, outcome, &entries, reply),
            StreamMsg::History {
                channel,
                query,
                reply,
            } => {
                let max = self.shared.channels.config.max_history_read;
                let stream = self.owned(&channel);
                if let Some(m) = stream.mirror.as_mut().filter(|m| !m.live) {
                    m.reads.push((query, reply));
                    if !m.sync_asked {
                        m.sync_asked = true;
                        if let Some(b) = &self.shared.broker {
                            b.stream_sync(&channel.name, max);
                        }
                    }
                    return;
                }
                stream.h.trim(now_ms());
                let page = stream.h.read(query, max);
                self.answer(io, reply, Ok(page));
            }
            StreamMsg::Committed {
                channel,
                offset,
                result,
            } => self.committed(io, &channel, offset, result),
            StreamMsg::Appended {
                channel,
                result,
                key,
                reply,
            } => self.appended(io, &channel, result, key, reply),
            StreamMsg::Remote {
                channel,
                entry,
                epoch,
            } => self.remote(io, &channel, entry, epoch),
            StreamMsg::Synced {
                channel,
                snapshot,
                live,
            } => self.synced(io, &channel, snapshot, live),
            StreamMsg::Desynced { channel } => {
                let interested = channel.interested();
                let stream = self.owned(&channel);
                if let Some(m) = stream.mirror.as_mut() {
                    m.live = false;
                    if !interested {
                        // Nobody here listens any more: forget the copy (the next subscriber
                        // starts from a fresh snapshot); a broken subscription keeps it, to
                        // deliver what its subscribers missed once it is back.
                        m.held.clear();
                        let policy = stream.h.policy.clone();
                        let old = std::mem::replace(&mut stream.h, History::new(policy, 0, 0));
                        stream.h.idem = old.idem;
                        stream.h.idem_order = old.idem_order;
                    }
                }
            }
        }
    }

    /// The stream of `channel` this core owns, created on first use: continued from the
    /// store's restored state, or new with a fresh epoch.
    fn owned(&mut self, channel: &Arc<ChannelShared>) -> &mut OwnedStream {
        debug_assert_eq!(channel.owner, self.core_index);
        if !self.streams.contains_key(&channel.name) {
            let policy = channel.stream.as_deref().cloned().unwrap_or_default();
            let restored = self
                .shared
                .streams
                .restore
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&*channel.name);
            let cluster = self.shared.cluster_streams;
            let h = match restored.filter(|_| !cluster) {
                Some(r) => {
                    let mut h = History::new(policy, r.position.epoch, r.position.offset);
                    let now = now_ms();
                    // Kept entries are contiguous and end at the position: keep the run of
                    // records that does (all of them, from a consistent store).
                    let mut pubs = r.publications;
                    let mut start = pubs.len();
                    while start > 0
                        && pubs[start - 1].0 + (pubs.len() - start) as u64 == r.position.offset
                    {
                        start -= 1;
                    }
                    pubs.drain(..start);
                    for (offset, ts_ms, kind, payload) in pubs {
                        let p = self.format_publish(
                            channel,
                            StreamPosition {
                                offset,
                                epoch: r.position.epoch,
                            },
                            &payload,
                            kind.is_text(),
                            PublishOptions::default(),
                        );
                        h.history.push_back(entry(ts_ms, &p));
                    }
                    h.trim(now);
                    h
                }
                // In a cluster the epoch and position come with the broker's first snapshot.
                None if cluster => History::new(policy, 0, 0),
                None => History::new(policy, crate::stream::new_epoch(), 0),
            };
            self.streams.insert(
                channel.name.clone(),
                OwnedStream {
                    h,
                    pending: VecDeque::new(),
                    failed: false,
                    mirror: cluster.then(Box::default),
                },
            );
        }
        self.streams.get_mut(&channel.name).expect("inserted above")
    }

    /// The publish subscribers get for a broker's entry `e` of `epoch`.
    fn format_entry(&self, channel: &Arc<ChannelShared>, e: &BrokerEntry, epoch: u64) -> Publish {
        let position = StreamPosition {
            offset: e.offset,
            epoch,
        };
        self.format_publish(
            channel,
            position,
            &e.payload,
            e.kind.is_text(),
            PublishOptions::default(),
        )
    }

    /// The publish subscribers get for `payload` at `position`: formatted by the engine's
    /// [`crate::stream::PublicationFormat`] if it has one.
    fn format_publish(
        &self,
        channel: &Arc<ChannelShared>,
        position: StreamPosition,
        payload: &[u8],
        text: bool,
        opts: PublishOptions,
    ) -> Publish {
        let target = Target::Channel(channel.clone());
        if let Some(format) = &self.shared.streams.format {
            let kind = if text {
                crate::MessageKind::Text
            } else {
                crate::MessageKind::Binary
            };
            let mut out = Vec::with_capacity(payload.len() + 96);
            if let Some(kind) = format.encode(&channel.name, position, payload, kind, &mut out) {
                return Publish::new(target, &out, kind.is_text(), opts);
            }
        }
        Publish::new(target, payload, text, opts)
    }

    /// A publish to a stream, from a connection of this core or from its owner's queue:
    /// handed to the owner core, sequenced there.
    pub(crate) fn publish_stream(
        &mut self,
        io: &mut Io<'_>,
        channel: Arc<ChannelShared>,
        payload: Bytes,
        text: bool,
        opts: PublishOptions,
        reply: ReplyTo<PublishResult>,
    ) {
        let owner = channel.owner;
        let msg = StreamMsg::Publish {
            channel,
            payload,
            text,
            opts,
            reply,
        };
        self.send_stream(io, owner, msg);
    }

    /// On the owner core: assigns the next offset and publishes (memory history), or writes
    /// it to the store and publishes once it is durable (persistent history).
    fn sequence(
        &mut self,
        io: &mut Io<'_>,
        channel: Arc<ChannelShared>,
        payload: Bytes,
        text: bool,
        opts: PublishOptions,
        reply: ReplyTo<PublishResult>,
    ) {
        let me = self.core_index;
        let now = now_ms();
        let name = channel.name.clone();
        let key = opts.idempotency_key.clone();
        let store = self.shared.streams.store.clone();
        let metrics = self.metrics.clone();
        let cluster = self.shared.cluster_streams;
        let stream = self.owned(&channel);
        if stream.failed && stream.pending.is_empty() {
            resync(stream, store.as_deref(), &name);
        }
        if stream.failed {
            inc(&metrics[me].stream_refused);
            return self.answer(io, reply, Err(StreamError::Unavailable(name.to_string())));
        }
        if let Some(key) = &key {
            match stream.h.idem_lookup(key, now) {
                Some(Some(first)) => {
                    inc(&metrics[me].stream_duplicates);
                    let dup = first.map(|p| Published {
                        duplicate: true,
                        ..p
                    });
                    return self.answer(io, reply, dup);
                }
                Some(None) => {
                    // The first is waiting for its commit: answer both together.
                    inc(&metrics[me].stream_duplicates);
                    if let Some(m) = stream.mirror.as_mut() {
                        // In a cluster the first is waiting for the broker's answer.
                        m.duplicates.entry(key.clone()).or_default().push(reply);
                    } else if let Some(p) = stream
                        .pending
                        .iter_mut()
                        .find(|p| p.key.as_deref() == Some(&**key))
                    {
                        p.acks.push(reply);
                    }
                    return;
                }
                None => stream.h.idem_record(key.clone(), None, now),
            }
        }
        if cluster {
            return self.append_to_broker(&channel, payload, text, key, reply, now);
        }
        let offset = stream.h.assigned + 1;
        let position = StreamPosition {
            offset,
            epoch: stream.h.epoch,
        };
        let persist = stream.h.policy.persist;
        let policy = stream.h.policy.clone();
        let publish = Arc::new(self.format_publish(&channel, position, &payload, text, opts));
        let pending = Pending {
            offset,
            publish,
            ts_ms: now,
            acks: vec![reply],
            key,
        };
        if !persist {
            self.owned(&channel).h.assigned = offset;
            return self.publish_sequenced(io, &channel, pending);
        }
        let Some(store) = store else {
            // Refused by validation; answer clearly rather than publish unpersisted.
            return self.fail_pending(io, &channel, pending, StreamError::Store("no store".into()));
        };
        let queues = self.shared.clone();
        let ch = channel.clone();
        let done = Box::new(move |result: Result<(), StreamError>| {
            queues.to_core(
                me,
                StreamMsg::Committed {
                    channel: ch,
                    offset,
                    result,
                },
            );
        });
        let submitted = store.append(
            StoredPublication {
                channel: &name,
                epoch: position.epoch,
                offset,
                timestamp_ms: now,
                kind: if text {
                    crate::MessageKind::Text
                } else {
                    crate::MessageKind::Binary
                },
                payload: &payload,
                policy: &policy,
            },
            done,
        );
        match submitted {
            Ok(()) => {
                let stream = self.owned(&channel);
                stream.h.assigned = offset;
                stream.pending.push_back(pending);
            }
            Err(e) => self.fail_pending(io, &channel, pending, e),
        }
    }

    /// A publish that was not made: every waiting publisher gets `err` (counted).
    fn fail_pending(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        p: Pending,
        err: StreamError,
    ) {
        inc(&self.metrics[self.core_index].stream_store_errors);
        tracing::warn!(channel = %channel.name, offset = p.offset, error = %err, "publish failed");
        if let Some(k) = &p.key {
            self.owned(channel).h.idem.remove(k);
        }
        for ack in p.acks {
            self.answer(io, ack, Err(err.clone()));
        }
    }

    /// The store's answer for the oldest pending publish of `channel`.
    fn committed(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        offset: u64,
        result: Result<(), StreamError>,
    ) {
        let stream = self.owned(channel);
        let Some(p) = stream.pending.pop_front() else {
            debug_assert!(false, "a commit with nothing pending");
            return;
        };
        debug_assert_eq!(p.offset, offset, "commits come back in offset order");
        match result {
            Ok(()) if !stream.failed => self.publish_sequenced(io, channel, p),
            Ok(()) => {
                // Durable, but an earlier one failed: its offset is on disk behind a gap the
                // readers cannot be shown. Acknowledge it (it is kept) and let the resync
                // reposition the stream after it.
                let position = Some(StreamPosition {
                    offset: p.offset,
                    epoch: stream.h.epoch,
                });
                for ack in p.acks {
                    self.answer(
                        io,
                        ack,
                        Ok(Published {
                            position,
                            duplicate: false,
                        }),
                    );
                }
            }
            Err(e) => {
                self.owned(channel).failed = true;
                self.fail_pending(io, channel, p, e);
            }
        }
        let store = self.shared.streams.store.clone();
        let stream = self.owned(channel);
        if stream.failed && stream.pending.is_empty() {
            resync(stream, store.as_deref(), &channel.name);
        }
    }

    /// Keeps a sequenced publication, hands it to in-process subscribers, fans it out and
    /// acknowledges it.
    fn publish_sequenced(&mut self, io: &mut Io<'_>, channel: &Arc<ChannelShared>, p: Pending) {
        let e = entry(p.ts_ms, &p.publish);
        let stream = self.owned(channel);
        let position = StreamPosition {
            offset: p.offset,
            epoch: stream.h.epoch,
        };
        let ack: PublishResult = Ok(Published {
            position: Some(position),
            duplicate: false,
        });
        if let Some(k) = &p.key {
            stream.h.idem_record(k.clone(), Some(ack.clone()), p.ts_ms);
        }
        stream.h.push(e.clone(), now_ms());
        inc(&self.metrics[self.core_index].stream_published);
        channel
            .inproc
            .call(&channel.name, || e.publication(p.offset));
        self.dispatch(io, p.publish);
        for reply in p.acks {
            self.answer(io, reply, ack.clone());
        }
    }

    /// Subscribes `id` to `channel` starting at `since` (recovering what it missed); `done`
    /// runs on this core when the subscription is live, before any replayed publication.
    pub(crate) fn subscribe_from(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        channel: &str,
        since: Option<StreamPosition>,
        done: ConnFnBox<Result<Subscribed, StreamError>>,
    ) {
        if let Err(e) = self.shared.channels.config.check_name(channel) {
            return self.call_conn(io, id, move |st, io, id| done(st, io, id, Err(e)));
        }
        if self.conn(id).is_none_or(|c| c.phase != Phase::Open) {
            return;
        }
        if self
            .conn(id)
            .is_some_and(|c| c.channels().iter().any(|t| &**t == channel))
        {
            let e = StreamError::AlreadySubscribed(channel.to_string());
            return done(self, io, id, Err(e));
        }
        let shared = self.local_channel(channel).shared.clone();
        if !shared.is_stream() {
            self.subscribe(io, id, channel);
            let recovery = match since {
                Some(_) => Recovery::Failed(RecoveryFailure::NoHistory),
                None => Recovery::NotRequested,
            };
            let outcome = Subscribed {
                position: None,
                recovery,
            };
            return done(self, io, id, Ok(outcome));
        }
        if shared.owner == self.core_index && !self.shared.cluster_streams {
            // Nothing is in flight between the owner and itself: answer, replay, go live.
            self.uncork(io);
            let max = self.shared.channels.config.max_history_read;
            let stream = self.owned(&shared);
            stream.h.trim(now_ms());
            let (outcome, entries) = stream.h.recover(since, max);
            if matches!(outcome.recovery, Recovery::Failed(_)) {
                inc(&self.metrics[self.core_index].stream_recovery_failed);
            }
            self.subscribe(io, id, channel);
            done(self, io, id, Ok(outcome));
            return self.replay(io, id, &entries);
        }
        // Join the channel's cores now (so every publication after the owner's answer comes
        // here) but hold the subscriber back until the answer arrives.
        self.uncork(io);
        let me = self.core_index;
        let local = self.local_channel(channel);
        local.pending.push(id);
        if local.subs.len() + local.pending.len() == 1 {
            local.shared.cores.insert(me);
        }
        local.shared.add_subscriber();
        let name = local.shared.name.clone();
        if let Some(c) = self.conn_mut(id) {
            c.extra_mut().channels.push(name);
        }
        let owner = shared.owner;
        let msg = StreamMsg::Recover {
            channel: shared,
            since,
            core: me,
            conn: id,
            reply: ConnFn::erase(done),
        };
        self.send_stream(io, owner, msg);
    }

    /// The owner's answer for a held-back subscriber: everything before it in the ring (up to
    /// `outcome.position`) is already delivered to the others, everything after is newer.
    fn recovered(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        conn: ConnId,
        outcome: Subscribed,
        entries: &[Entry],
        reply: ConnCall,
    ) {
        self.uncork(io);
        let Some(local) = self.channels.get_mut(&*channel.name) else {
            return;
        };
        let Some(i) = local.pending.iter().position(|&c| c == conn) else {
            // Unsubscribed or closed meanwhile.
            return;
        };
        local.pending.swap_remove(i);
        local.subs.push(conn);
        let Some(done) = ConnFn::<Result<Subscribed, StreamError>>::typed(reply) else {
            return;
        };
        if self.conn(conn).is_none_or(|c| c.phase != Phase::Open) {
            return;
        }
        done(self, io, conn, Ok(outcome));
        self.replay(io, conn, entries);
    }

    /// Queues kept publications for one connection, in order.
    fn replay(&mut self, io: &mut Io<'_>, id: ConnId, entries: &[Entry]) {
        let me = self.core_index;
        let mut shared: [Option<Bytes>; 16] = Default::default();
        for e in entries {
            let frame =
                self.frame_for_parts(id, &e.frame, e.header_len(), e.is_text(), &mut shared);
            shared = Default::default();
            if self.queue_frame(io, id, frame, 1).is_err() {
                break;
            }
            crate::metrics::add(&self.metrics[me].stream_replayed, 1);
        }
    }

    /// A history read of `channel` for `reply`, on its owner.
    pub(crate) fn read_history(
        &mut self,
        io: &mut Io<'_>,
        channel: &str,
        query: HistoryQuery,
        reply: ReplyTo<Result<HistoryPage, StreamError>>,
    ) {
        if let Err(e) = self.shared.channels.config.check_name(channel) {
            return self.answer(io, reply, Err(e));
        }
        let shared = self.local_channel(channel).shared.clone();
        if !shared.is_stream() {
            return self.answer(io, reply, Err(StreamError::NoHistory(channel.to_string())));
        }
        let owner = shared.owner;
        let msg = StreamMsg::History {
            channel: shared,
            query,
            reply,
        };
        self.send_stream(io, owner, msg);
    }
}

/// The cluster side of streams: the broker numbers, this node mirrors.
impl CoreState {
    /// Hands a publication to the broker to number; the answer comes back to this core
    /// (`StreamMsg::Appended`), the publication itself through the broker's subscription.
    fn append_to_broker(
        &mut self,
        channel: &Arc<ChannelShared>,
        payload: Bytes,
        text: bool,
        key: Option<Arc<str>>,
        reply: ReplyTo<PublishResult>,
        now: u64,
    ) {
        let Some(broker) = self.shared.broker.clone() else {
            return;
        };
        let policy = channel.stream.as_deref().cloned().unwrap_or_default();
        let me = self.core_index;
        let shared = self.shared.clone();
        let ch = channel.clone();
        let append = StreamAppend {
            channel: channel.name.clone(),
            payload,
            kind: if text {
                crate::MessageKind::Text
            } else {
                crate::MessageKind::Binary
            },
            timestamp_ms: now,
            history_size: policy.history_size,
            history_ttl: policy.history_ttl,
            idempotency_key: key.clone(),
            idempotency_window: policy.idempotency_window,
        };
        broker.stream_append(
            append,
            Box::new(move |result| {
                shared.to_core(
                    me,
                    StreamMsg::Appended {
                        channel: ch,
                        result,
                        key,
                        reply,
                    },
                );
            }),
        );
    }

    /// The broker's answer for a publication this core handed it.
    fn appended(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        result: Result<Published, BrokerError>,
        key: Option<Arc<str>>,
        reply: ReplyTo<PublishResult>,
    ) {
        let me = self.core_index;
        if result.as_ref().is_ok_and(|p| p.duplicate) {
            // A repeat of a key first published through another node.
            inc(&self.metrics[me].stream_duplicates);
        }
        let repeats = key
            .as_ref()
            .and_then(|k| self.owned(channel).mirror.as_mut()?.duplicates.remove(k))
            .unwrap_or_default();
        match result {
            Ok(published) => {
                let ack: PublishResult = Ok(published);
                if let Some(k) = key {
                    // Remembered here as the first result (a local repeat says duplicate).
                    let first = Ok(Published {
                        duplicate: false,
                        ..published
                    });
                    self.owned(channel).h.idem_record(k, Some(first), now_ms());
                }
                self.answer(io, reply, ack);
                for r in repeats {
                    let dup = Ok(Published {
                        duplicate: true,
                        ..published
                    });
                    self.answer(io, r, dup);
                }
            }
            Err(e) => {
                inc(&self.metrics[me].stream_store_errors);
                tracing::warn!(channel = %channel.name, error = %e, "cluster publish failed");
                if let Some(k) = &key {
                    self.owned(channel).h.idem.remove(k);
                }
                let e: StreamError = e.into();
                for r in repeats {
                    self.answer(io, r, Err(e.clone()));
                }
                self.answer(io, reply, Err(e));
            }
        }
    }

    /// A numbered publication from the broker.
    fn remote(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        e: BrokerEntry,
        epoch: u64,
    ) {
        let me = self.core_index;
        let stream = self.owned(channel);
        let Some(m) = stream.mirror.as_mut() else {
            return;
        };
        if !m.live {
            if m.held.len() >= MAX_HELD {
                inc(&self.metrics[me].stream_broker_dropped);
            } else {
                m.held.push((e, epoch));
            }
            return;
        }
        if epoch != stream.h.epoch {
            // The broker lost the stream's past (a Redis without persistence restarted):
            // continue in the new epoch; readers of the old one fail with EpochChanged.
            tracing::warn!(channel = %channel.name, "stream epoch changed at the broker");
            let policy = stream.h.policy.clone();
            stream.h = History::new(policy, epoch, e.offset.saturating_sub(1));
        }
        if e.offset <= stream.h.published {
            return; // already delivered (from a snapshot)
        }
        if e.offset > stream.h.published + 1 {
            // A gap (a subscription that broke and came back): read the broker's tail and
            // deliver what is missing, in order, before this.
            m.live = false;
            m.held.push((e, epoch));
            if !m.sync_asked {
                m.sync_asked = true;
                let max = self.shared.channels.config.max_history_read;
                if let Some(b) = &self.shared.broker {
                    b.stream_sync(&channel.name, max);
                }
            }
            return;
        }
        self.apply_remote(io, channel, e);
    }

    /// Keeps and delivers the publication after the mirror's position.
    fn apply_remote(&mut self, io: &mut Io<'_>, channel: &Arc<ChannelShared>, e: BrokerEntry) {
        let stream = self.owned(channel);
        let epoch = stream.h.epoch;
        debug_assert_eq!(e.offset, stream.h.published + 1);
        let publish = Arc::new(self.format_entry(channel, &e, epoch));
        let kept = entry(e.timestamp_ms, &publish);
        let stream = self.owned(channel);
        stream.h.assigned = e.offset;
        stream.h.push(kept.clone(), now_ms());
        inc(&self.metrics[self.core_index].stream_published);
        channel
            .inproc
            .call(&channel.name, || kept.publication(e.offset));
        self.dispatch(io, publish);
    }

    /// The broker's snapshot of a stream: merged into the mirror (delivering what this node
    /// missed) when `live`, then the waiting recoveries and reads are answered.
    fn synced(
        &mut self,
        io: &mut Io<'_>,
        channel: &Arc<ChannelShared>,
        snapshot: Result<BrokerSnapshot, BrokerError>,
        live: bool,
    ) {
        let me = self.core_index;
        let max = self.shared.channels.config.max_history_read;
        let metrics = self.metrics.clone();
        let stream = self.owned(channel);
        let Some(m) = stream.mirror.as_mut() else {
            return;
        };
        m.sync_asked = false;
        let snap = match snapshot {
            Ok(s) => s,
            Err(e) => {
                let reads = std::mem::take(&mut m.reads);
                for (_, reply) in reads {
                    self.answer(io, reply, Err(e.clone().into()));
                }
                return;
            }
        };
        inc(&metrics[me].stream_syncs);
        if !live {
            // Not subscribed: answer the reads from the snapshot, keep nothing.
            let reads = std::mem::take(&mut m.reads);
            let mut h = History::new(stream.h.policy.clone(), snap.position.epoch, 0);
            let pubs: Vec<_> = contiguous(snap.entries, snap.position.offset);
            h.published = snap.position.offset - pubs.len() as u64;
            for e in pubs {
                let p = self.format_entry(channel, &e, snap.position.epoch);
                h.push(entry(e.timestamp_ms, &p), now_ms());
            }
            h.published = snap.position.offset;
            h.trim(now_ms());
            for (q, reply) in reads {
                let page = h.read(q, max);
                self.answer(io, reply, Ok(page));
            }
            return;
        }
        let entries = contiguous(snap.entries, snap.position.offset);
        let first = snap.position.offset + 1 - entries.len() as u64;
        let fresh = stream.h.epoch == 0 || stream.h.epoch != snap.position.epoch;
        let policy = stream.h.policy.clone();
        if fresh {
            // A new mirror (or the broker lost the stream's past): keep the tail without
            // delivering it, nobody here was due it.
            stream.h = History::new(policy, snap.position.epoch, first - 1);
            for e in entries {
                let p = self.format_entry(channel, &e, snap.position.epoch);
                let s = self.owned(channel);
                s.h.assigned = e.offset;
                s.h.push(entry(e.timestamp_ms, &p), now_ms());
            }
        } else {
            if stream.h.published + 1 < first {
                // Publications this node's subscribers were due are no longer kept: they
                // continue after the gap (counted); readers before it cannot recover.
                if channel.subscribers() > 0 {
                    inc(&metrics[me].stream_broker_dropped);
                }
                tracing::warn!(channel = %channel.name, from = stream.h.published + 1, to = first - 1, "gap after a broker outage could not be filled");
                stream.h = History::new(policy, snap.position.epoch, first - 1);
            }
            // Deliver what this node missed, in order.
            for e in entries {
                if e.offset > self.owned(channel).h.published {
                    self.apply_remote(io, channel, e);
                }
            }
        }
        let stream = self.owned(channel);
        let Some(m) = stream.mirror.as_mut() else {
            return;
        };
        m.live = true;
        let held = std::mem::take(&mut m.held);
        for (e, epoch) in held {
            self.remote(io, channel, e, epoch);
        }
        let stream = self.owned(channel);
        let Some(m) = stream.mirror.as_mut().filter(|m| m.live) else {
            return; // a gap in what was held: another sync is on its way
        };
        let recovers = std::mem::take(&mut m.recovers);
        let reads = std::mem::take(&mut m.reads);
        stream.h.trim(now_ms());
        for r in recovers {
            let (outcome, entries) = self.owned(channel).h.recover(r.since, max);
            if matches!(outcome.recovery, Recovery::Failed(_)) {
                inc(&self.metrics[me].stream_recovery_failed);
            }
            let msg = StreamMsg::Recovered {
                channel: channel.clone(),
                conn: r.conn,
                outcome,
                entries,
                reply: r.reply,
            };
            self.send_stream(io, r.core, msg);
        }
        for (q, reply) in reads {
            let page = self.owned(channel).h.read(q, max);
            self.answer(io, reply, Ok(page));
        }
    }
}

/// The run of `entries` (oldest first) that is contiguous and ends at `last`.
fn contiguous(mut entries: Vec<BrokerEntry>, last: u64) -> Vec<BrokerEntry> {
    let mut start = entries.len();
    while start > 0 && entries[start - 1].offset + (entries.len() - start) as u64 == last {
        start -= 1;
    }
    entries.drain(..start);
    entries
}

/// After a failed commit, once nothing is pending: continue from what the store has.
fn resync(stream: &mut OwnedStream, store: Option<&dyn crate::stream::StreamStore>, name: &str) {
    let Some(store) = store else {
        stream.failed = false;
        return;
    };
    match store.position(name) {
        Ok(pos) => {
            let last = match pos {
                Some(p) if p.epoch == stream.h.epoch => p.offset,
                _ => stream.h.published,
            };
            if last != stream.h.published {
                // Durable publications nobody was shown: readers from before them cannot
                // recover through the gap, so the kept history starts after it.
                stream.h.history.clear();
                stream.h.published = last;
            }
            stream.h.assigned = last;
            stream.failed = false;
            tracing::info!(
                channel = name,
                offset = last,
                "stream resumed after a store failure"
            );
        }
        Err(e) => {
            tracing::warn!(channel = name, error = %e, "store position unavailable; stream stays refused");
        }
    }
}

fn entry(ts_ms: u64, p: &Publish) -> Entry {
    Entry {
        ts_ms,
        frame: p.frame.clone(),
    }
}
