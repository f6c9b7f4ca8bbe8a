//! What the cores and the handles share: each core's command queue and doorbell, the metrics
//! blocks, the fan-out inboxes and the channel registry. Nothing here is locked on the message
//! path.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use edge_ws_protocol::CloseCode;

use crate::broker::{Broker, BrokerEntry, BrokerError, BrokerSnapshot, Inbound, Wakes};
use crate::fanout::{
    auto_ring_capacity, ChannelRegistry, ChannelShared, Inbox, Publish, PublishOptions,
};
use crate::metrics::{CoreMetrics, MetricsSnapshot};
use crate::runtime::{ConnId, CoreWaker, RuntimeStats};
use crate::stream::{
    ChannelConfig, Entry, HistoryPage, HistoryQuery, PublishResult, Published, StreamError,
    StreamPosition, StreamSetup, StreamShared, Subscribed,
};
use crate::upgrade::Rejection;

/// What travels in a ring from one core to another: a publish to deliver, or a stream message
/// (a publish for the channel's owner to sequence, a recovery request or its answer), in the
/// same FIFO as the publishes, so a recovery answer is ordered with the live publications.
pub(crate) enum LaneItem {
    Publish(Arc<Publish>),
    Stream(Box<StreamMsg>),
}

/// A closure for one connection, run on its core with the core's state; erased here because
/// that state is a layer above (`connection::sequencer` gives it its type).
pub(crate) type ConnCall = Box<dyn std::any::Any + Send>;

/// Where the answer to a stream request goes.
pub(crate) enum ReplyTo<T> {
    /// A connection: the closure (a `connection::sequencer::ConnFn<T>`) runs on its core.
    Socket {
        core: usize,
        conn: ConnId,
        f: ConnCall,
    },
    /// A callback of an outside thread, run where the answer is made (the owner core).
    Callback(Box<dyn FnOnce(T) + Send>),
    /// Nobody waits.
    Nobody,
}

/// A request to a channel's owner core, or its answer.
pub(crate) enum StreamMsg {
    /// Sequence and publish.
    Publish {
        channel: Arc<ChannelShared>,
        payload: Bytes,
        text: bool,
        opts: PublishOptions,
        reply: ReplyTo<PublishResult>,
    },
    /// A subscriber on `core` wants to start at `since`.
    Recover {
        channel: Arc<ChannelShared>,
        since: Option<StreamPosition>,
        core: usize,
        conn: ConnId,
        reply: ConnCall,
    },
    /// The owner's answer to `Recover`, in the ring behind the publications up to
    /// `outcome.position` and ahead of the later ones.
    Recovered {
        channel: Arc<ChannelShared>,
        conn: ConnId,
        outcome: Subscribed,
        entries: Vec<Entry>,
        reply: ConnCall,
    },
    /// Read the history.
    History {
        channel: Arc<ChannelShared>,
        query: HistoryQuery,
        reply: ReplyTo<Result<HistoryPage, StreamError>>,
    },
    /// The store's answer for a persistent publication (from the store's thread).
    Committed {
        channel: Arc<ChannelShared>,
        offset: u64,
        result: Result<(), StreamError>,
    },
    /// The cluster broker numbered (or refused) a publication (from the broker's thread).
    Appended {
        channel: Arc<ChannelShared>,
        result: Result<Published, BrokerError>,
        key: Option<Arc<str>>,
        reply: ReplyTo<PublishResult>,
    },
    /// A numbered publication from the cluster broker, in its order.
    Remote {
        channel: Arc<ChannelShared>,
        entry: BrokerEntry,
        epoch: u64,
    },
    /// The broker's snapshot of the stream (see `BrokerSink::synced`).
    Synced {
        channel: Arc<ChannelShared>,
        snapshot: Result<BrokerSnapshot, BrokerError>,
        live: bool,
    },
    /// The node stopped receiving the stream's publications.
    Desynced { channel: Arc<ChannelShared> },
}

/// A request to one core, from another core or from a handle.
pub(crate) enum Command {
    Send {
        conn: ConnId,
        frame: Bytes,
    },
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    CloseAll {
        code: CloseCode,
        reason: String,
    },
    Subscribe {
        conn: ConnId,
        channel: String,
    },
    Unsubscribe {
        conn: ConnId,
        channel: String,
    },
    ResolveUpgrade {
        conn: ConnId,
        decision: Result<Option<Box<dyn std::any::Any + Send>>, Rejection>,
        /// `None`: the configured subprotocol choice; `Some(p)`: exactly `p` (or none).
        protocol: Option<Option<String>>,
    },
    /// A publish from outside the cores. It travels in the same queue as the other commands,
    /// so what one thread does through the handle reaches each core in the order it did it
    /// (a send after a publish arrives after it).
    Deliver(Arc<Publish>),
    /// A stream request from outside the cores (or a commit from the store's thread).
    Stream(Box<StreamMsg>),
    /// Run a closure (a `connection::sequencer::ConnFn<()>`) with a connection of this core.
    Call {
        conn: ConnId,
        f: ConnCall,
    },
}

/// State shared by every core and every handle: command queues, doorbells, metrics.
pub(crate) struct Shared {
    pub(crate) cores: usize,
    pub(crate) queues: Box<[SegQueue<Command>]>,
    pub(crate) wakers: Arc<[CoreWaker]>,
    pub(crate) metrics: Arc<[CoreMetrics]>,
    pub(crate) runtime_stats: std::sync::OnceLock<Arc<[RuntimeStats]>>,
    pub(crate) inboxes: Box<[Arc<Inbox<LaneItem>>]>,
    pub(crate) channels: ChannelRegistry,
    pub(crate) streams: StreamShared,
    /// The cluster broker (`None`: this process alone, nothing leaves it).
    pub(crate) broker: Option<Arc<dyn Broker>>,
    /// Whether the broker numbers the streams (then owner cores keep mirrors of them).
    pub(crate) cluster_streams: bool,
}

impl Shared {
    /// The state shared by `cores` cores, each woken through its entry of `wakers`: empty
    /// command queues, zeroed metrics, fan-out inboxes with `ring_capacity` publishes per lane
    /// (0: [`auto_ring_capacity`]), no channels yet (named by `channels`' rules), the stream
    /// store, format and restored streams of `streams`. The one place it is built, for [`EngineBuilder::build`] and for the
    /// in-memory cores of the test engine (`testing::MemEngine`) alike.
    pub(crate) fn new(
        cores: usize,
        ring_capacity: usize,
        wakers: Arc<[CoreWaker]>,
        channels: ChannelConfig,
        streams: StreamSetup,
        broker: Option<Arc<dyn Broker>>,
    ) -> Self {
        debug_assert_eq!(wakers.len(), cores, "one waker per core");
        Shared {
            cores,
            queues: (0..cores).map(|_| SegQueue::new()).collect(),
            wakers,
            metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
            runtime_stats: std::sync::OnceLock::new(),
            inboxes: {
                let capacity = match ring_capacity {
                    0 => auto_ring_capacity(cores),
                    c => c,
                };
                (0..cores)
                    .map(|_| Arc::new(Inbox::new(cores, capacity)))
                    .collect()
            },
            channels: ChannelRegistry::with_config(cores, channels).with_broker(broker.clone()),
            cluster_streams: broker.as_ref().is_some_and(|b| b.sequences_streams()),
            broker,
            streams: StreamShared::new(streams),
        }
    }

    /// The body and status of `GET /health`: `ok` (200), or `degraded` (503) while a cluster
    /// broker is not connected, with the broker's state.
    pub(crate) fn health(&self) -> (u16, String) {
        let mut body = format!(
            "{{\"status\":\"{}\",\"cores\":{},\"connections\":{}",
            match self.broker.as_ref().map(|b| b.state()) {
                None | Some(crate::broker::BrokerState::Up) => "ok",
                Some(_) => "degraded",
            },
            self.cores,
            self.connections()
        );
        let mut status = 200;
        if let Some(b) = &self.broker {
            let state = b.state();
            if state != crate::broker::BrokerState::Up {
                status = 503;
            }
            body.push_str(",\"broker\":");
            body.push_str(&b.stats().health_json(state));
        }
        body.push('}');
        (status, body)
    }

    /// A publish made on this node to a channel without history, already delivered here:
    /// handed to the cluster broker for the other nodes (nothing without one), held by the
    /// broker until [`Shared::flush_broker`] (a core flushes once per loop iteration; other
    /// threads right after the call) so that a core's burst goes out as one batch.
    /// `done`, if given, gets the broker's answer (called at once with `Ok` without one).
    /// A publish with a filter stays on this node: the filter is a closure over this node's
    /// connections, and delivering it elsewhere unfiltered could reach connections it was
    /// meant to skip.
    #[inline]
    pub(crate) fn to_broker(
        &self,
        channel: &str,
        payload: &[u8],
        text: bool,
        opts: &PublishOptions,
        done: Option<crate::broker::BrokerAck>,
    ) {
        match &self.broker {
            Some(b) if opts.filter.is_none() => {
                let kind = if text {
                    crate::ids::MessageKind::Text
                } else {
                    crate::ids::MessageKind::Binary
                };
                b.publish_held(channel, payload, kind, done);
            }
            _ => {
                if let Some(done) = done {
                    done(Ok(()));
                }
            }
        }
    }

    /// Sends what this thread handed the broker with [`Shared::to_broker`] and what its stream
    /// appends left held (see `Broker::flush`); nothing without a broker.
    #[inline]
    pub(crate) fn flush_broker(&self) {
        if let Some(b) = &self.broker {
            b.flush();
        }
    }

    /// A message for every connection made on this node, for the other nodes too (unless it
    /// has a filter, see [`Shared::to_broker`]).
    #[inline]
    pub(crate) fn broadcast_to_broker(&self, payload: &[u8], text: bool, opts: &PublishOptions) {
        if let Some(b) = self.broker.as_ref().filter(|_| opts.filter.is_none()) {
            let kind = if text {
                crate::ids::MessageKind::Text
            } else {
                crate::ids::MessageKind::Binary
            };
            b.broadcast(payload, kind);
        }
    }

    /// Starts the cluster broker, if there is one, with a sink into these cores.
    pub(crate) fn start_broker(shared: &Arc<Shared>) {
        if let Some(b) = &shared.broker {
            b.start(crate::broker::BrokerSink::new(Arc::new(CoreSink {
                shared: shared.clone(),
            })));
        }
    }

    /// Hands a stream message to core `core` through its command queue.
    pub(crate) fn to_core(&self, core: usize, msg: StreamMsg) {
        self.queues[core].push(Command::Stream(Box::new(msg)));
        self.wakers[core].wake();
    }

    /// Hands a publish from outside the cores to every core that should see it.
    pub(crate) fn publish_external(&self, p: Publish) {
        let mut wake = Wakes::default();
        self.publish_external_held(p, &mut wake);
        self.wake_cores(&mut wake);
    }

    /// [`Shared::publish_external`], marking the cores to wake in `wake` instead of waking
    /// them (a burst from the broker wakes each core once, see `BrokerSink::burst`).
    pub(crate) fn publish_external_held(&self, p: Publish, wake: &mut Wakes) {
        let p = Arc::new(p);
        crate::metrics::inc(&self.metrics[0].publishes);
        p.for_each_core(self.cores, |c| {
            self.queues[c].push(Command::Deliver(p.clone()));
            wake.mark(c);
        });
    }

    /// Wakes the cores marked in `wake`, once each.
    pub(crate) fn wake_cores(&self, wake: &mut Wakes) {
        wake.drain(|c| self.wakers[c].wake());
    }

    /// Open WebSocket connections over all cores.
    pub(crate) fn connections(&self) -> u64 {
        let s = MetricsSnapshot::sum(self.metrics.iter());
        s.opened.saturating_sub(s.closed)
    }
}

impl Shared {
    /// Every counter in the Prometheus text format (what `GET /metrics` answers, see
    /// `Config::metrics_path`): totals over the cores, as `edge_ws_<counter>`, plus the open
    /// connections and the cores as gauges.
    pub(crate) fn prometheus(&self) -> String {
        let shared = self;
        use std::fmt::Write as _;
        let mut m = crate::metrics::MetricsSnapshot::sum(shared.metrics.iter());
        if let Some(rt) = shared.runtime_stats.get() {
            m.add_runtime(rt.iter());
        }
        let mut out = String::with_capacity(64 * 64);
        for (name, v) in m.fields() {
            let kind = if name.ends_with("_hwm") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE edge_ws_{name} {kind}\nedge_ws_{name} {v}");
        }
        if let Some(b) = &shared.broker {
            for (name, v) in b.stats().fields() {
                let kind = if name == "subscriptions" {
                    "gauge"
                } else {
                    "counter"
                };
                let _ = writeln!(
                    out,
                    "# TYPE edge_ws_broker_{name} {kind}\nedge_ws_broker_{name} {v}"
                );
            }
            let _ = writeln!(
                out,
                "# TYPE edge_ws_broker_up gauge\nedge_ws_broker_up {}",
                u8::from(b.state() == crate::broker::BrokerState::Up)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE edge_ws_connections gauge\nedge_ws_connections {}\n# TYPE edge_ws_cores gauge\nedge_ws_cores {}",
            shared.connections(),
            shared.cores
        );
        out
    }
}

use crate::fanout::Target;
use crate::ids::MessageKind;
use crate::stream::{ChannelPolicy, Publication};

impl Shared {
    /// A publication to a channel without history delivered on this node: to its in-process
    /// subscribers at once, and through the cores to its connections.
    pub(crate) fn deliver_here(
        &self,
        t: Arc<crate::fanout::ChannelShared>,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
    ) {
        let mut wake = Wakes::default();
        self.deliver_here_held(t, payload, kind, opts, &mut wake);
        self.wake_cores(&mut wake);
    }

    /// [`Shared::deliver_here`], marking the cores to wake in `wake`.
    fn deliver_here_held(
        &self,
        t: Arc<crate::fanout::ChannelShared>,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
        wake: &mut Wakes,
    ) {
        t.inproc.call(&t.name, || Publication {
            offset: 0,
            timestamp_ms: crate::stream::now_ms(),
            kind,
            data: Bytes::copy_from_slice(payload),
        });
        self.publish_external_held(
            Publish::new(Target::Channel(t), payload, kind.is_text(), opts),
            wake,
        );
    }
}

/// What a cluster broker delivers into: these cores (see [`crate::broker::BrokerSink`]).
struct CoreSink {
    shared: Arc<Shared>,
}

impl Inbound for CoreSink {
    fn cores(&self) -> usize {
        self.shared.cores
    }

    fn interested(&self, channel: &str) -> bool {
        self.shared
            .channels
            .get(channel)
            .is_some_and(|c| c.interested())
    }

    fn policy(&self, channel: &str) -> &ChannelPolicy {
        self.shared.channels.config.policy(channel)
    }

    fn max_history_read(&self) -> usize {
        self.shared.channels.config.max_history_read
    }

    fn deliver(&self, channel: &str, payload: &[u8], kind: MessageKind, wake: &mut Wakes) -> bool {
        let Some(t) = self.shared.channels.get(channel) else {
            return false;
        };
        if !t.interested() {
            return false;
        }
        self.shared
            .deliver_here_held(t, payload, kind, PublishOptions::default(), wake);
        true
    }

    fn deliver_all(&self, payload: &[u8], kind: MessageKind, wake: &mut Wakes) {
        self.shared.publish_external_held(
            Publish::new(
                Target::All,
                payload,
                kind.is_text(),
                PublishOptions::default(),
            ),
            wake,
        );
    }

    fn stream_publication(
        &self,
        channel: &str,
        entry: BrokerEntry,
        epoch: u64,
        wake: &mut Wakes,
    ) -> bool {
        let Some(t) = self.shared.channels.get(channel) else {
            return false;
        };
        let owner = t.owner;
        self.shared.queues[owner].push(Command::Stream(Box::new(StreamMsg::Remote {
            channel: t,
            entry,
            epoch,
        })));
        wake.mark(owner);
        true
    }

    fn wake(&self, wake: &mut Wakes) {
        self.shared.wake_cores(wake);
    }

    fn synced(&self, channel: &str, snapshot: Result<BrokerSnapshot, BrokerError>, live: bool) {
        let Some(t) = self.shared.channels.get(channel) else {
            return;
        };
        let owner = t.owner;
        self.shared.to_core(
            owner,
            StreamMsg::Synced {
                channel: t,
                snapshot,
                live,
            },
        );
    }

    fn desynced(&self, channel: &str) {
        let Some(t) = self.shared.channels.get(channel) else {
            return;
        };
        let owner = t.owner;
        self.shared
            .to_core(owner, StreamMsg::Desynced { channel: t });
    }
}
