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
use crate::shared::{Command, Shared};
use crate::upgrade::Rejection;

/// A `Send + Sync + Clone` handle to a running engine, for code outside the cores.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
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
        EngineHandle { shared, local_addr }
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        let Some(t) = self.shared.channels.get(channel) else {
            // Nobody ever subscribed: nothing to deliver, no cross-core traffic.
            crate::metrics::inc(&self.shared.metrics[0].publishes);
            return;
        };
        self.shared
            .publish_external(Publish::new(Target::Channel(t), payload, text, opts));
    }

    /// Sends a message to every open connection (that passes the filter) on every core.
    pub fn broadcast_all(&self, payload: &[u8], kind: MessageKind, opts: PublishOptions) {
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

    /// Waits until the engine has stopped (after [`EngineHandle::shutdown`]).
    pub fn join(self) -> std::thread::Result<()> {
        self.runtime.join()
    }
}

/// Builds an [`Engine`] from a [`Config`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    config: Config,
}

impl EngineBuilder {
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
        let cores = resolve_cores(&cfg.cores)?;
        let n = cores.len();
        // 0 (automatic) is resolved by `Shared::new`, the one place that builds the rings.
        let ring_capacity = cfg.ring_capacity;
        let rt_cfg = RuntimeConfig {
            addr: cfg.addr,
            cores,
            pin: cfg.pin,
            ring_entries: cfg.ring_entries,
            buf_count: cfg.buf_count,
            buf_size: cfg.buf_size,
            backlog: cfg.backlog,
            max_connections_per_core: cfg.max_connections.div_ceil(n),
            tick: cfg.tick,
        };
        let cfg = Arc::new(cfg);
        let shared_slot: Arc<std::sync::OnceLock<Arc<Shared>>> =
            Arc::new(std::sync::OnceLock::new());
        let slot = shared_slot.clone();
        let runtime = Runtime::start(rt_cfg, move |core, wakers| {
            // The first core to start builds the shared state (it needs the wakers, which
            // exist only once the runtime is up); the others reuse it.
            let shared = slot
                .get_or_init(|| Arc::new(Shared::new(n, ring_capacity, wakers)))
                .clone();
            WsService::new(core, cfg.clone(), shared, factory(core))
        })?;
        let shared = shared_slot
            .get()
            .cloned()
            .ok_or_else(|| EngineError::Config("no core started".into()))?;
        let _ = shared.runtime_stats.set(runtime.stats());
        let handle = EngineHandle::new(shared, runtime.local_addr());
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
