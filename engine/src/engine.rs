//! Starting the engine, and the thread-safe [`EngineHandle`] to talk to it from outside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_ws_protocol::deflate::DeflateConfig;
use edge_ws_protocol::{CloseCode, OpCode};

use crate::config::{Config, Cores, SlowConsumerPolicy};
use crate::error::EngineError;
use crate::fanout::{Publish, PublishOptions, Target};
use crate::handler::Handler;
use crate::ids::{ConnectionId, MessageKind};
use crate::metrics::MetricsSnapshot;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::service::WsService;
use crate::shared::{Command, ReplyTo, Shared, StreamMsg};
use crate::stream::{
    ChannelCallback, ChannelConfig, HistoryPage, HistoryQuery, LocalSubscription,
    PublicationFormat, PublishResult, Published, RestoredStream, StreamError, StreamSetup,
    StreamStore,
};
use crate::upgrade::Rejection;

/// A `Send + Sync + Clone` handle to a running engine, for code outside the cores.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("local_addr", &self.local_addr)
            .field("cores", &self.shared.cores)
            .finish()
    }
}

impl EngineHandle {
    /// A handle over `shared` (the engine's, or an in-memory engine's).
    pub(crate) fn new(shared: Arc<Shared>, local_addr: SocketAddr) -> Self {
        EngineHandle {
            shared,
            local_addr,
            tls_local_addr: None,
        }
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the TLS listeners are bound to, if the engine has any (feature `tls`).
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// Number of cores running.
    pub fn cores(&self) -> usize {
        self.shared.cores
    }

    /// Open WebSocket connections over all cores.
    pub fn connections(&self) -> u64 {
        self.shared.connections()
    }

    /// Every counter, the engine's and the runtime's, summed over the cores.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut s = MetricsSnapshot::sum(self.shared.metrics.iter());
        if let Some(rt) = self.shared.runtime_stats.get() {
            s.add_runtime(rt.iter());
        }
        s
    }

    /// Every counter in the Prometheus text format, as `GET` on the metrics path answers it
    /// (for a handler that answers that path itself and adds its own series).
    pub fn prometheus(&self) -> String {
        self.shared.prometheus()
    }

    /// Counters of one core (`None` if there is no such core).
    pub fn core_metrics(&self, core: usize) -> Option<MetricsSnapshot> {
        let mut s = MetricsSnapshot::sum(std::iter::once(self.shared.metrics.get(core)?));
        if let Some(rt) = self.shared.runtime_stats.get() {
            s.add_runtime(rt.get(core));
        }
        Some(s)
    }

    /// Sends a text message to a connection on any core. Returns `false` if the id names no
    /// core; a stale id is counted (`sends_to_closed`) by the core that finds it gone.
    pub fn send_text(&self, to: ConnectionId, text: &str) -> bool {
        self.send_frame(to, encode(OpCode::Text, text.as_bytes()))
    }

    /// Sends one text message to many connections on any cores: encoded once, the frame is
    /// shared by refcount and handed to each connection's core through its lock-free queue
    /// (one doorbell per core). Returns how many ids named an existing core.
    pub fn send_text_to_many(&self, to: &[ConnectionId], text: &str) -> usize {
        let frame = encode(OpCode::Text, text.as_bytes());
        // One doorbell per core however many recipients it has (any number of cores).
        let mut woken = vec![false; self.shared.cores];
        let mut n = 0;
        for id in to {
            let Some(q) = self.shared.queues.get(id.core()) else {
                continue;
            };
            q.push(Command::Send {
                conn: id.conn(),
                frame: frame.clone(),
            });
            woken[id.core()] = true;
            n += 1;
        }
        for (c, w) in woken.into_iter().enumerate() {
            if w {
                self.shared.wakers[c].wake();
            }
        }
        n
    }

    /// Sends a binary message to a connection on any core. Returns `false` if the id names no
    /// core; a stale id is counted (`sends_to_closed`) by the core that finds it gone.
    pub fn send_binary(&self, to: ConnectionId, data: &[u8]) -> bool {
        self.send_frame(to, encode(OpCode::Binary, data))
    }

    fn send_frame(&self, to: ConnectionId, frame: Bytes) -> bool {
        self.push(
            to.core(),
            Command::Send {
                conn: to.conn(),
                frame,
            },
        )
    }

    /// Starts the close handshake of one connection. Returns `false` if the id names no core
    /// (the command is queued otherwise; a connection already gone is left alone).
    pub fn close(&self, to: ConnectionId, code: CloseCode, reason: &str) -> bool {
        self.push(
            to.core(),
            Command::Close {
                conn: to.conn(),
                code,
                reason: reason.to_owned(),
            },
        )
    }

    /// Starts the close handshake of every connection on every core.
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        for core in 0..self.shared.cores {
            self.push(
                core,
                Command::CloseAll {
                    code,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// Publishes a text message to every subscriber of `channel`, on every core.
    pub fn publish(&self, channel: &str, text: &str) {
        self.publish_with(
            channel,
            text.as_bytes(),
            MessageKind::Text,
            PublishOptions::default(),
        );
    }

    /// Publishes a text or binary message to `channel` with options (exclude, filter). The frame
    /// is encoded once and shared by every recipient. Messages from one thread arrive at each
    /// subscriber in the order they were published.
    pub fn publish_with(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
    ) {
        let text = kind.is_text();
        if self.shared.channels.config.policy(channel).is_stream() && !opts.transient {
            return self.publish_acked(channel, payload, kind, opts, |_| {});
        }
        self.shared.to_broker(channel, payload, text, &opts, None);
        self.shared.flush_broker();
        let Some(t) = self.shared.channels.get(channel) else {
            // Nobody ever subscribed: nothing to deliver, no cross-core traffic.
            crate::metrics::inc(&self.shared.metrics[0].publishes);
            return;
        };
        t.inproc.call(&t.name, || crate::stream::Publication {
            offset: 0,
            timestamp_ms: crate::stream::now_ms(),
            kind,
            data: Bytes::copy_from_slice(payload),
        });
        self.shared
            .publish_external(Publish::new(Target::Channel(t), payload, text, opts));
    }

    /// Publishes to `channel` and calls `done` with what became of it: for a channel with
    /// history its position once sequenced (and durable, for a persistent one), or the error
    /// (nothing published); for a channel without history `Ok` with no position once handed
    /// to the cores. `done` runs on the channel's owner core (or on this thread): keep it short
    /// and non-blocking (send it to a channel). Publishes from one thread keep their order.
    pub fn publish_acked(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
        done: impl FnOnce(PublishResult) + Send + 'static,
    ) {
        if let Err(e) = self.shared.channels.config.check_name(channel) {
            return done(Err(e));
        }
        if !self.shared.channels.config.policy(channel).is_stream() {
            if opts.idempotency_key.is_some() {
                return done(Err(StreamError::NoHistory(channel.to_string())));
            }
            // A filtered publish stays on this node (see `Shared::to_broker`).
            let Some(broker) = self
                .shared
                .broker
                .as_ref()
                .filter(|_| opts.filter.is_none())
            else {
                self.publish_with(channel, payload, kind, opts);
                return done(Ok(Published {
                    position: None,
                    duplicate: false,
                }));
            };
            // In a cluster: delivered here at once, acknowledged once the broker has it.
            if let Some(t) = self.shared.channels.get(channel) {
                self.shared.deliver_here(t, payload, kind, opts);
            }
            let ack: crate::broker::BrokerAck = Box::new(move |r| {
                done(r.map_err(StreamError::from).map(|()| Published {
                    position: None,
                    duplicate: false,
                }))
            });
            return broker.publish(channel, payload, kind, Some(ack));
        }
        let t = self.shared.channels.get_or_create(channel);
        let owner = t.owner;
        self.shared.to_core(
            owner,
            StreamMsg::Publish {
                channel: t,
                payload: Bytes::copy_from_slice(payload),
                text: kind.is_text(),
                opts,
                reply: ReplyTo::Callback(Box::new(done)),
            },
        );
    }

    /// Runs `f` on the core of connection `id` with its socket, or with `None` if it is gone
    /// (closed, stale id, no such core, or the engine stopped before running it): `f` is
    /// called exactly once, on the connection's core or on whichever thread finds it gone. For
    /// sends that must know they reached an open connection (e.g. "delivered when at least one
    /// connection got it"). Keep `f` short: it runs on a core.
    pub fn with_connection(
        &self,
        id: ConnectionId,
        f: impl FnOnce(Option<&mut crate::Socket<'_, '_>>) + Send + 'static,
    ) {
        struct Once<F: FnOnce(Option<&mut crate::Socket<'_, '_>>)>(Option<F>);
        impl<F: FnOnce(Option<&mut crate::Socket<'_, '_>>)> Drop for Once<F> {
            fn drop(&mut self) {
                if let Some(f) = self.0.take() {
                    f(None);
                }
            }
        }
        let mut once = Once(Some(f));
        let Some(q) = self.shared.queues.get(id.core()) else {
            return; // `once` drops: f(None)
        };
        let call: crate::connection::ConnFnBox<()> = Box::new(move |state, io, conn, ()| {
            if let Some(f) = once.0.take() {
                f(Some(&mut crate::Socket {
                    state,
                    io,
                    id: conn,
                }));
            }
        });
        q.push(Command::Call {
            conn: id.conn(),
            f: crate::connection::ConnFn::erase(call),
        });
        self.shared.wakers[id.core()].wake();
    }

    /// Whether `channel` keeps history (see [`crate::Socket::has_history`]).
    pub fn has_history(&self, channel: &str) -> bool {
        self.shared.channels.config.policy(channel).is_stream()
    }

    /// Reads `channel`'s history on its owner core; `done` runs there (keep it short).
    pub fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        done: impl FnOnce(Result<HistoryPage, StreamError>) + Send + 'static,
    ) {
        if let Err(e) = self.shared.channels.config.check_name(channel) {
            return done(Err(e));
        }
        if !self.shared.channels.config.policy(channel).is_stream() {
            return done(Err(StreamError::NoHistory(channel.to_string())));
        }
        let t = self.shared.channels.get_or_create(channel);
        let owner = t.owner;
        self.shared.to_core(
            owner,
            StreamMsg::History {
                channel: t,
                query,
                reply: ReplyTo::Callback(Box::new(done)),
            },
        );
    }

    /// [`EngineHandle::history`], waiting for the answer on this thread (not on a core).
    pub fn history_blocking(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, StreamError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.history(channel, query, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(StreamError::Closed))
    }

    /// [`EngineHandle::publish_acked`], waiting for the answer on this thread (not on a core).
    pub fn publish_blocking(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
    ) -> PublishResult {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.publish_acked(channel, payload, kind, opts, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(StreamError::Closed))
    }

    /// An in-process subscriber: `callback(channel, publication)` is called for every
    /// publication to `channel` from now on, until the returned subscription is dropped. For
    /// a channel with history it runs on the owner core, in offset order, once the
    /// publication is sequenced (durable, if persistent); otherwise on the publishing core or
    /// thread. Keep it short and non-blocking.
    pub fn subscribe_fn(
        &self,
        channel: &str,
        callback: impl Fn(&str, &crate::stream::Publication) + Send + Sync + 'static,
    ) -> Result<LocalSubscription, StreamError> {
        self.shared.channels.config.check_name(channel)?;
        let t = self.shared.channels.get_or_create(channel);
        let id = self
            .shared
            .streams
            .next_local_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cb: ChannelCallback = Arc::new(callback);
        if t.inproc.add(id, cb) {
            if let Some(b) = &self.shared.broker {
                b.subscribe(channel);
            }
        }
        Ok(LocalSubscription {
            channel: t.name.clone(),
            inproc: t.inproc.clone(),
            id,
        })
    }

    /// Sends a message to every open connection (that passes the filter) on every core.
    pub fn broadcast_all(&self, payload: &[u8], kind: MessageKind, opts: PublishOptions) {
        self.shared
            .broadcast_to_broker(payload, kind.is_text(), &opts);
        self.shared
            .publish_external(Publish::new(Target::All, payload, kind.is_text(), opts));
    }

    /// Subscribes a connection (on any core) to `channel`. Returns `false` if the id names no
    /// core; otherwise the subscription is queued to the connection's core, which ignores it
    /// if the connection is gone or already subscribed.
    pub fn subscribe(&self, id: ConnectionId, channel: &str) -> bool {
        self.push(
            id.core(),
            Command::Subscribe {
                conn: id.conn(),
                channel: channel.to_owned(),
            },
        )
    }

    /// Unsubscribes a connection (on any core) from `channel`. Returns `false` if the id names
    /// no core (see [`EngineHandle::subscribe`]).
    pub fn unsubscribe(&self, id: ConnectionId, channel: &str) -> bool {
        self.push(
            id.core(),
            Command::Unsubscribe {
                conn: id.conn(),
                channel: channel.to_owned(),
            },
        )
    }

    /// The cluster broker, if the engine was built with one (for presence across nodes:
    /// [`crate::broker::Broker::presence_join`] and the like).
    pub fn broker(&self) -> Option<&Arc<dyn crate::broker::Broker>> {
        self.shared.broker.as_ref()
    }

    /// The cluster broker's state and counters (`None` without a broker).
    pub fn broker_state(&self) -> Option<(crate::broker::BrokerState, crate::broker::BrokerStats)> {
        self.shared.broker.as_ref().map(|b| (b.state(), b.stats()))
    }

    /// Subscribers of `channel` over all cores.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shared
            .channels
            .get(channel)
            .map_or(0, |t| t.subscribers())
    }

    /// Every channel known to the engine with its subscriber count, sorted by name.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.shared.channels.list()
    }

    /// Creates a channel ahead of its first subscriber, so it is listed by
    /// [`EngineHandle::channels`].
    pub fn create_channel(&self, channel: &str) {
        self.shared.channels.get_or_create(channel);
    }

    /// Decides an upgrade the handler deferred ([`crate::Upgrade::Defer`]): `Ok(data)` opens
    /// the WebSocket (with `data` in the socket's user data slot), `Err` answers with the
    /// rejection. Ignored if the connection is gone (e.g. handshake timeout). Returns `false`
    /// if the id names no core.
    pub fn resolve_upgrade(
        &self,
        id: ConnectionId,
        decision: Result<Option<Box<dyn std::any::Any + Send>>, Rejection>,
    ) -> bool {
        self.push(
            id.core(),
            Command::ResolveUpgrade {
                conn: id.conn(),
                decision,
                protocol: None,
            },
        )
    }

    /// [`EngineHandle::resolve_upgrade`] accepting with `protocol` as the subprotocol (`None`:
    /// none), whatever `Config::subprotocols` says: what a proxy does with the protocol its
    /// backend chose. It must be one the client offered, or the client will fail the
    /// handshake.
    pub fn resolve_upgrade_with_protocol(
        &self,
        id: ConnectionId,
        protocol: Option<String>,
        data: Option<Box<dyn std::any::Any + Send>>,
    ) -> bool {
        self.push(
            id.core(),
            Command::ResolveUpgrade {
                conn: id.conn(),
                decision: Ok(data),
                protocol: Some(protocol),
            },
        )
    }

    /// Graceful shutdown: every core stops accepting, sends 1001 "going away" to each client,
    /// waits up to the drain timeout for the close replies, then stops. Wait for it with
    /// [`Engine::join`].
    pub fn shutdown(&self) {
        for w in self.shared.wakers.iter() {
            w.shutdown();
        }
    }

    fn push(&self, core: usize, cmd: Command) -> bool {
        let Some(q) = self.shared.queues.get(core) else {
            return false;
        };
        q.push(cmd);
        self.shared.wakers[core].wake();
        true
    }
}

/// Frames sent through the handle are never compressed (a compressed frame would need the
/// recipient's context); they count as sent messages on the receiving core.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    edge_ws_protocol::codec::server_frame(opcode, payload)
}

/// A running engine: one thread per configured core.
pub struct Engine {
    runtime: Runtime,
    handle: EngineHandle,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Engine {
    /// A builder with [`Config::default`].
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            streams: StreamSetup::default(),
            broker: None,
            config: Config::default(),
        }
    }

    /// The handle (clone it freely).
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// The address the TLS listeners are bound to, if the engine has any.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.handle.tls_local_addr
    }

    /// Waits until the engine has stopped (after [`EngineHandle::shutdown`]).
    pub fn join(self) -> std::thread::Result<()> {
        self.runtime.join()
    }
}

/// Builds an [`Engine`] from a [`Config`].
#[derive(Clone)]
pub struct EngineBuilder {
    config: Config,
    streams: StreamSetup,
    broker: Option<Arc<dyn crate::broker::Broker>>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .field("stream_store", &self.streams.store.is_some())
            .field("publication_format", &self.streams.format.is_some())
            .field("restored_streams", &self.streams.restore.len())
            .field("broker", &self.broker.is_some())
            .finish()
    }
}

impl EngineBuilder {
    /// Channel namespaces (history, persistence) and naming rules.
    pub fn channels(mut self, channels: ChannelConfig) -> Self {
        self.config.channels = channels;
        self
    }

    /// Where persistent channels are written (see [`StreamStore`]); required by a namespace
    /// with `persist`.
    pub fn stream_store(mut self, store: Arc<dyn StreamStore>) -> Self {
        self.streams.store = Some(store);
        self
    }

    /// How a publication to a channel with history is turned into the message its
    /// subscribers receive (e.g. an envelope carrying its offset); default: the payload.
    pub fn publication_format(mut self, format: Arc<dyn PublicationFormat>) -> Self {
        self.streams.format = Some(format);
        self
    }

    /// Joins this process to a cluster through `broker` (see [`crate::broker`]): publishes
    /// cross to the other nodes, subscriptions follow this node's local subscribers, and,
    /// when the broker sequences streams, channels with history are numbered and kept by it.
    pub fn broker(mut self, broker: Arc<dyn crate::broker::Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Streams read back from the store at startup, continued by their owner cores (same
    /// epoch, next offset, kept history).
    pub fn restore_streams(mut self, streams: Vec<RestoredStream>) -> Self {
        self.streams.restore = streams;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The listen address (port 0 picks a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.config.addr = addr;
        self
    }

    /// A TLS listener beside the plain one (`wss://`), with its certificates.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Which cores to run on.
    pub fn cores(mut self, cores: Cores) -> Self {
        self.config.cores = cores;
        self
    }

    /// Pin each core's thread to its core.
    pub fn pin(mut self, pin: bool) -> Self {
        self.config.pin = pin;
        self
    }

    /// Largest message accepted (1009 beyond).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self.config.max_frame_size = self.config.max_frame_size.max(bytes);
        self
    }

    /// Most connections in total.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Subprotocols the server speaks.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        protocols: I,
    ) -> Self {
        self.config.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// permessage-deflate settings (`None` turns it off).
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.config.deflate = deflate;
        self
    }

    /// Heartbeat: ping after `interval` of silence, close if no pong within `timeout`.
    pub fn heartbeat(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Handshake timeout (slowloris protection).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Idle timeout (`None` disables).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Per-connection write buffer limit and what to do beyond it.
    pub fn write_buffer_limit(mut self, bytes: usize, policy: SlowConsumerPolicy) -> Self {
        self.config.write_buffer_limit = bytes;
        self.config.slow_consumer = policy;
        self
    }

    /// How long graceful shutdown waits for clients.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Timer granularity.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.config.tick = tick;
        self
    }

    /// The configuration so far.
    pub fn config_ref(&self) -> &Config {
        &self.config
    }

    /// Starts the cores. `factory(core_index)` runs on each core's own thread and returns that
    /// core's handler. Fails on an unusable configuration, a core that does not exist, or an
    /// address already in use.
    pub fn build<H, F>(self, factory: F) -> Result<Engine, EngineError>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let cfg = self.config;
        cfg.validate()?;
        cfg.channels
            .validate(Some(self.streams.store.is_some()))
            .map_err(EngineError::Config)?;
        let streams = self.streams;
        let broker = self.broker;
        let cores = resolve_cores(&cfg.cores)?;
        let n = cores.len();
        // 0 (automatic) is resolved by `Shared::new`, the one place that builds the rings.
        let ring_capacity = cfg.ring_capacity;
        // `..default()`: the runtime's `tls` field exists whenever any crate of the build turns
        // its feature on, even if this crate's `tls` feature is off.
        #[allow(clippy::needless_update)]
        let rt_cfg = RuntimeConfig {
            addr: cfg.addr,
            cores,
            pin: cfg.pin,
            io: cfg.io,
            max_connections_per_core: cfg.max_connections.div_ceil(n),
            tick: cfg.tick,
            #[cfg(feature = "tls")]
            tls: match &cfg.tls {
                Some(t) => Some(crate::runtime::TlsListenerConfig {
                    addr: t.addr,
                    config: t
                        .server_config()
                        .map_err(|e| EngineError::Config(e.to_string()))?,
                    max_handshakes_per_core: t.max_handshakes_per_core,
                }),
                None => None,
            },
            ..RuntimeConfig::default()
        };
        let cfg = Arc::new(cfg);
        let shared_slot: Arc<std::sync::OnceLock<Arc<Shared>>> =
            Arc::new(std::sync::OnceLock::new());
        let slot = shared_slot.clone();
        // Payload masking with the CPU's wider vector units, for every connection of the process
        // (the codec's portable loop otherwise; the first engine started installs it).
        if let Some(kernel) = crate::runtime::simd::mask_kernel() {
            edge_ws_protocol::mask::set_accelerated(kernel);
        }
        let runtime = Runtime::start(rt_cfg, move |core, wakers| {
            // The first core to start builds the shared state (it needs the wakers, which
            // exist only once the runtime is up); the others reuse it.
            let shared = slot
                .get_or_init(|| {
                    let shared = Arc::new(Shared::new(
                        n,
                        ring_capacity,
                        wakers,
                        cfg.channels.clone(),
                        streams.clone(),
                        broker.clone(),
                    ));
                    Shared::start_broker(&shared);
                    shared
                })
                .clone();
            WsService::new(core, cfg.clone(), shared, factory(core))
        })?;
        let shared = shared_slot
            .get()
            .cloned()
            .ok_or_else(|| EngineError::Config("no core started".into()))?;
        let _ = shared.runtime_stats.set(runtime.stats());
        let mut handle = EngineHandle::new(shared, runtime.local_addr());
        handle.tls_local_addr = runtime.tls_local_addr();
        Ok(Engine { runtime, handle })
    }
}

fn resolve_cores(cores: &Cores) -> Result<Vec<usize>, EngineError> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let list = match cores {
        Cores::All => available.clone(),
        Cores::Count(0) => return Err(EngineError::Config("zero cores configured".into())),
        Cores::Count(n) => {
            if *n > available.len() {
                return Err(EngineError::Config(format!(
                    "{n} cores requested, {} available",
                    available.len()
                )));
            }
            available[..*n].to_vec()
        }
        Cores::List(l) => l.clone(),
    };
    if list.is_empty() {
        return Err(EngineError::Config("zero cores configured".into()));
    }
    Ok(list)
}
