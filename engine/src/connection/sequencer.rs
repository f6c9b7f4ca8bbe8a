//! Streams on the cores: the owner core sequences, keeps and (through the store) persists a
//! channel's publications and answers recovery and history requests; a subscriber's core
//! holds a recovering subscriber back until the owner's answer arrives in the same ring as the
//! live publications (see `crate::stream` and docs/design/streams.md).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::{CoreState, Phase};
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
}

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
                stream.h.trim(now_ms());
                let page = stream.h.read(query, max);
                self.answer(io, reply, Ok(page));
            }
            StreamMsg::Committed {
                channel,
                offset,
                result,
            } => self.committed(io, &channel, offset, result),
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
            let h = match restored {
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
                None => History::new(policy, crate::stream::new_epoch(), 0),
            };
            self.streams.insert(
                channel.name.clone(),
                OwnedStream {
                    h,
                    pending: VecDeque::new(),
                    failed: false,
                },
            );
        }
        self.streams.get_mut(&channel.name).expect("inserted above")
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
                    if let Some(p) = stream
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
        if shared.owner == self.core_index {
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
        local
            .shared
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
