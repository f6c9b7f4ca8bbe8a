//! # edge-ws-server
//!
//! The product layer on top of the engine: the connection manager (authentication, limits,
//! middleware, JSON routing, rate limits, per-user lookups and bulk actions) as an engine
//! [`Handler`], and the `edge-ws` server binary. It uses only the engine's public API.
//!
//! Its only I/O of its own is the durable [`store`] (one store thread writing an embedded redb
//! file, group commit, fsync before ack); sockets, rings and timers belong to the engine and
//! its runtime. No `unsafe`.
//!
//!
//! A [`Manager`] is the shared half (`Send + Sync + Clone`): settings, the limit counters, the
//! user → sockets index, statistics, event listeners and the [`EngineHandle`]. Each core runs
//! a [`ManagerHandler`] (the engine's [`Handler`]) wrapping that core's [`App`], usually a
//! [`Router`]:
//!
//! ```no_run
//! use edge_ws_server::{Auth, JwtAuth, Manager, RateLimit, Router, TokenSource};
//! use edge_ws::Engine;
//!
//! let manager = Manager::builder()
//!     .auth(Auth::jwt(JwtAuth::hs256(b"secret").sources([
//!         TokenSource::BearerHeader,
//!         TokenSource::Query("token".into()),
//!     ])))
//!     .max_connections(100_000)
//!     .max_connections_per_user(5)
//!     .max_connections_per_ip(100)
//!     .rate_limit(RateLimit::new().messages(50.0, 100))
//!     .build();
//! let engine = manager
//!     .start(Engine::builder().bind("127.0.0.1:9001".parse().unwrap()), |_core| {
//!         Router::new().route("echo", |ctx, msg| {
//!             ctx.reply_raw("echo", msg.data_raw())?;
//!             Ok(())
//!         })
//!     })
//!     .expect("engine starts");
//! println!("alice's sockets: {:?}", manager.user_sockets("alice"));
//! engine.join().unwrap();
//! ```
//!
//! # Where the costs are
//!
//! * **Upgrade** (once per connection): the global limit is a compare-and-increment on one
//!   atomic; the per-address and per-user limits each lock one shard of a 32-way sharded map
//!   for a few hundred nanoseconds; JWT verification is one HMAC. Whatever was reserved lives
//!   in a guard in the socket's data slot and is released when the engine drops the
//!   connection — including a deferred upgrade whose decision arrives after the client left or
//!   timed out (the engine drops the decision, and the guard with it).
//! * **Message**: no lock. A downcast of the data slot, an index into the core's own table, a
//!   clock read and the connection's token buckets (plain integers); the per-user buckets are
//!   one atomic compare-and-swap each (shared by the user's connections on every core); then
//!   the JSON parse (`type` borrowed, `id`/`data` kept raw) and a hash lookup of the route.
//! * **Close**: the same shard locks as the upgrade, to give the reservations back.
//!
//! Async validators run with `tokio::task::spawn_local` on the connection's core and answer
//! through [`EngineHandle::resolve_upgrade`]; [`Manager::start`] attaches the handle (with a
//! hand-built engine, call [`Manager::attach`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod async_route;
mod auth;
pub mod channels;
mod cluster;
mod credentials;
#[cfg(feature = "store")]
pub mod documents;
mod events;
pub mod http_api;
mod identity;
mod json;
mod jwt;
mod limits;
#[cfg(feature = "store")]
pub mod notifications;
pub mod presence;
pub mod prometheus;
pub mod proxy;
mod rate;
mod route_error;
mod router;
pub mod store;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edge_ws::protocol::{CloseCode, Message};

/// Internals exposed for the benches only; not part of the API.
#[doc(hidden)]
pub mod bench_support {
    use std::sync::Arc;

    use edge_ws::ConnectionId;

    use crate::presence::{Presence, PresenceConfig};

    /// A presence table the benches drive directly (what the manager does on connect, join).
    #[derive(Debug)]
    pub struct PresenceTable(Presence);

    impl PresenceTable {
        /// With the default settings.
        pub fn new() -> Self {
            PresenceTable(Presence::new(PresenceConfig::default()))
        }

        /// A connection of `user` opened.
        pub fn connect(&self, user: &Arc<str>) {
            self.0.connected(user, crate::wall_ms());
        }

        /// `conn` of `user` subscribed to a presence channel.
        pub fn join(&self, channel: &Arc<str>, conn: ConnectionId, user: &Arc<str>) {
            self.0.join(channel, conn, Some(user));
        }

        /// `conn` left.
        pub fn leave(&self, channel: &str, conn: ConnectionId) {
            self.0.leave(channel, conn);
        }

        /// The `presence.channel` reply data with members, as the route builds it.
        pub fn channel_json(&self, channel: &str) -> String {
            let p = self.0.channel(channel, true);
            crate::channels::channel_presence_json(channel, &p, true)
        }
    }

    impl Default for PresenceTable {
        fn default() -> Self {
            Self::new()
        }
    }
}

pub use self::async_route::Request;
pub use self::auth::{ApiKeyAuth, Auth, HandshakeInfo, Validator, ValidatorFuture};
pub use self::cluster::{ClusterChannelPresence, ClusterMember, ClusterStats};
pub use self::credentials::{RefreshFuture, RefreshInfo};
pub use self::events::{ErrorKind, Event, ManagerStats};
pub use self::identity::{AuthRejection, RejectReason, UserContext};
pub use self::jwt::{Algorithm, JwtAuth, TokenSource, MAX_TOKEN_LEN};
pub use self::rate::{AbusePolicy, RateLimit};
pub use self::router::{App, Context, Envelope, Middleware, Next, ReplyError, RouteError, Router};

use self::events::Stats;
use self::limits::{Reservation, Sharded, UserEntry};
use self::rate::{LocalBuckets, SharedBuckets};
use edge_ws::broker::BrokerError;
use edge_ws::fanout::Filter;
use edge_ws::{
    ConnectionId, Engine, EngineBuilder, EngineError, EngineHandle, Handler, MessageKind,
    PublishOptions, Rejection, Socket, Upgrade, UpgradeRequest,
};

/// `Retry-After` on a 429 or 503 refusal at the upgrade (limits, capacity, an unavailable
/// validator): seconds before the client should try again.
pub const REFUSAL_RETRY_AFTER_SECS: u64 = 5;

/// 4000: "try again" — the client should reconnect with a back-off (generic).
pub const CLOSE_TRY_AGAIN: CloseCode = CloseCode(4000);
/// 4029: closed for repeatedly exceeding the rate limit; reconnect after a back-off.
pub const CLOSE_RATE_LIMITED: CloseCode = CloseCode(4029);
/// 4401: the credentials expired; reconnect with fresh ones.
pub const CLOSE_AUTH_EXPIRED: CloseCode = CloseCode(4401);
/// 4500: policy violation; do not reconnect (generic).
pub const CLOSE_POLICY: CloseCode = CloseCode(4500);
/// 4503: the user was removed or banned; do not reconnect.
pub const CLOSE_FORBIDDEN: CloseCode = CloseCode(4503);

/// Whether a client should reconnect after close code `code`: `Some(true)` for 4000–4499,
/// `Some(false)` for 4500–4999, `None` outside the application range (see docs/PROTOCOL.md).
pub fn should_reconnect(code: CloseCode) -> Option<bool> {
    match code.0 {
        4000..=4499 => Some(true),
        4500..=4999 => Some(false),
        _ => None,
    }
}

/// Default largest message the manager passes on.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Default time an async validator has to answer.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Settings {
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_per_ip: Option<u32>,
    pub(crate) max_per_user: Option<u32>,
    auth_timeout: Duration,
    max_message_size: usize,
    rate: Option<RateLimit>,
    user_rate: Option<RateLimit>,
    abuse: Option<AbusePolicy>,
}

type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// The state every core and every [`Manager`] clone share.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) auth: Auth,
    pub(crate) clock: credentials::Clock,
    /// The async refresh validator, if any (else JWT refreshes only).
    pub(crate) refresh: Option<Arc<credentials::RefreshFn>>,
    pub(crate) expiries: credentials::Expiries,
    /// Reservations: upgrades admitted or being authenticated, plus open connections.
    pub(crate) total: AtomicUsize,
    /// Open connections.
    pub(crate) active: AtomicUsize,
    pub(crate) ips: Sharded<std::net::IpAddr, u32>,
    pub(crate) users: Sharded<Arc<str>, UserEntry>,
    pub(crate) stats: Stats,
    listeners: Vec<Listener>,
    pub(crate) engine: OnceLock<EngineHandle>,
    epoch: Instant,
    pub(crate) presence: presence::Presence,
    /// The cluster side, when the attached engine has a broker (docs/CLUSTER.md).
    pub(crate) cluster: OnceLock<cluster::Cluster>,
    #[cfg(feature = "store")]
    pub(crate) notifications: Option<notifications::Notifications>,
    #[cfg(feature = "store")]
    pub(crate) documents: OnceLock<documents::Documents>,
}

/// Milliseconds since the Unix epoch (presence times, `last_seen`).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    /// Tells the listeners about presence changes.
    pub(crate) fn presence_changed(&self, change: Option<presence::PresenceChange>) {
        if let Some(change) = change {
            if let Some(c) = self.cluster.get() {
                c.sync_user(self, &change.user);
            }
            if self.has_listeners() {
                self.emit(&Event::Presence { change: &change });
            }
        }
    }

    /// A connection of `user` opened or closed: the listeners hear of a status change, and in
    /// a cluster this node's view of the user is written to the cluster presence (once).
    fn user_touched(&self, user: &str, change: Option<presence::PresenceChange>) {
        let changed = change.is_some();
        self.presence_changed(change);
        if !changed {
            if let Some(c) = self.cluster.get() {
                c.sync_user(self, user);
            }
        }
    }

    pub(crate) fn has_listeners(&self) -> bool {
        !self.listeners.is_empty()
    }

    pub(crate) fn emit(&self, e: &Event<'_>) {
        for l in &self.listeners {
            l(e);
        }
    }

    /// The rate limiters' clock, in nanoseconds: `CLOCK_MONOTONIC_COARSE` (the same on every
    /// core; a few nanoseconds to read where `Instant::now` costs tens; its resolution of one
    /// kernel tick, 1–4 ms, is fine for buckets refilled over seconds).
    fn now(&self) -> u64 {
        edge_ws::runtime::os::coarse_monotonic_nanos(self.epoch)
    }

    /// Counts a refusal, tells the listeners, and builds the engine's answer.
    fn refuse(&self, id: ConnectionId, peer: SocketAddr, rej: AuthRejection) -> Rejection {
        self.stats.reject(rej.reason);
        if self.has_listeners() {
            self.emit(&Event::Rejected {
                id,
                peer,
                reason: rej.reason,
                status: rej.status,
            });
        }
        let answer = Rejection::new(rej.status, rej.message);
        // What a well-behaved client needs to act on the refusal (RFC 9110 §11.6.1, §10.2.3).
        match rej.status {
            401 => answer.with_header("WWW-Authenticate", "Bearer"),
            429 | 503 => answer.retry_after(REFUSAL_RETRY_AFTER_SECS),
            _ => answer,
        }
    }

    /// The slot of an admitted connection, after reserving its user's share.
    fn slot(&self, mut res: Reservation, user: Option<UserContext>) -> Result<Slot, AuthRejection> {
        let (user, buckets) = match user {
            None => (None, None),
            Some(u) => {
                let b = res.add_user(u.id_arc()).map_err(AuthRejection::of)?;
                (Some(Arc::new(u)), Some(b))
            }
        };
        Ok(Slot { user, buckets, res })
    }

    fn admit(self: &Arc<Self>, req: &UpgradeRequest<'_>) -> Upgrade {
        let res = match Reservation::new(self, req.peer.ip()) {
            Ok(r) => r,
            Err(reason) => {
                return Upgrade::Reject(self.refuse(req.id, req.peer, reason.into()));
            }
        };
        let user = match &self.auth {
            Auth::None => Ok(None),
            Auth::Jwt(j) => j.authenticate(req.request).map(Some),
            Auth::ApiKey(k) => k.authenticate(req).map(Some),
            Auth::Validator(v) => {
                self.defer(req, res, v);
                return Upgrade::Defer;
            }
        };
        match user.and_then(|u| self.slot(res, u)) {
            Ok(slot) => Upgrade::Accept(Some(Box::new(slot))),
            Err(rej) => Upgrade::Reject(self.refuse(req.id, req.peer, rej)),
        }
    }

    /// Runs an async validator on this core and resolves the upgrade with its answer.
    fn defer(self: &Arc<Self>, req: &UpgradeRequest<'_>, res: Reservation, v: &Validator) {
        let (id, peer) = (req.id, req.peer);
        let fut = (v.0)(HandshakeInfo {
            id,
            peer,
            request: req.request.clone(),
        });
        let inner = self.clone();
        tokio::task::spawn_local(async move {
            let timeout = inner.settings.auth_timeout;
            let outcome = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(AuthRejection::of(RejectReason::AuthTimeout)),
            };
            // On any refusal `res` is dropped here and its reservations released. On success
            // it travels in the decision: if the engine finds the connection gone (client left,
            // handshake timeout) it drops the decision, which releases it just the same.
            let decision = match outcome.and_then(|u| inner.slot(res, Some(u))) {
                Ok(slot) => Ok(Some(Box::new(slot) as Box<dyn Any + Send>)),
                Err(rej) => Err(inner.refuse(id, peer, rej)),
            };
            // `Manager::start` attaches the handle right after the cores start; a validator
            // can only finish before that in a race at startup.
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(h) = inner.engine.get() {
                    h.resolve_upgrade(id, decision);
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    return; // never attached: the engine's handshake timeout ends it
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
}

/// What the manager keeps in each socket's data slot: its reservation (released when the
/// engine drops the slot) and its user (read by fan-out filters on any core). The message path
/// does not touch it: it reads the core's own table, indexed like the engine's.
pub(crate) struct Slot {
    pub(crate) user: Option<Arc<UserContext>>,
    buckets: Option<Arc<SharedBuckets>>,
    res: Reservation,
}

// Deferred decisions cross threads in `EngineHandle::resolve_upgrade`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Slot>();
};

/// A connection's per-core state.
pub(crate) struct ConnEntry {
    pub(crate) user: Option<Arc<UserContext>>,
    shared: Option<Arc<SharedBuckets>>,
    buckets: LocalBuckets,
    pub(crate) app: Option<Box<dyn Any>>,
}

/// Reused buffers: the current message's id, the reply being built, serializer output.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) id: String,
    pub(crate) has_id: bool,
    pub(crate) out: String,
    pub(crate) ser: Vec<u8>,
}

impl Scratch {
    /// Starts an envelope in `out`: `{"type":kind` and, for answers, the current id.
    pub(crate) fn head(&mut self, kind: &str, with_id: bool) {
        self.out.clear();
        self.out.push_str(r#"{"type":"#);
        json::push_str(&mut self.out, kind);
        if with_id && self.has_id {
            self.out.push_str(r#","id":"#);
            self.out.push_str(&self.id);
        }
    }
}

/// Wraps a filter over users into the engine's fan-out filter.
pub(crate) fn user_filter<F>(f: F) -> Filter
where
    F: Fn(ConnectionId, Option<&UserContext>) -> bool + Send + Sync + 'static,
{
    Arc::new(move |id, data: Option<&dyn Any>| {
        let user = data
            .and_then(|d| d.downcast_ref::<Slot>())
            .and_then(|s| s.user.as_deref());
        f(id, user)
    })
}

/// The shared half of the manager (`Send + Sync`, cheap to clone).
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("auth", &self.inner.auth)
            .field("active", &self.active_connections())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A builder with no authentication and no limits.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// The handler for one core, wrapping that core's `app` (call it in the engine factory).
    pub fn handler<A: App>(&self, app: A) -> ManagerHandler<A> {
        ManagerHandler {
            manager: self.clone(),
            app,
            conns: Vec::new(),
            open: 0,
            scratch: Scratch::default(),
        }
    }

    /// Starts an engine whose cores run `factory(core)` behind this manager, and attaches its
    /// handle. Publications to channels with history reach subscribers in the JSON
    /// publication envelope ([`channels::EnvelopeFormat`]).
    pub fn start<A, F>(&self, builder: EngineBuilder, factory: F) -> Result<Engine, EngineError>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let m = self.clone();
        let engine = builder
            .publication_format(Arc::new(channels::EnvelopeFormat))
            .build(move |core| m.handler(factory(core)))?;
        self.attach(engine.handle());
        self.start_presence_sweeper();
        Ok(engine)
    }

    /// Starts the thread that applies presence's time rules (at a quarter of the shortest
    /// configured period, between 10 ms and 1 s); it exits when the last `Manager` clone is
    /// dropped. [`Manager::start`] calls it.
    pub fn start_presence_sweeper(&self) {
        let c = &self.inner.presence.cfg;
        let shortest = [Some(c.grace), c.heartbeat_timeout, c.status_expiration]
            .into_iter()
            .flatten()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(1));
        let every = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let weak = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new()
            .name("edge-ws-presence".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(inner) = weak.upgrade() else { return };
                let m = Manager { inner };
                m.sweep_presence();
                m.enforce_token_expiry();
            });
    }

    /// Attaches the engine's handle (needed by async validators and the bulk actions);
    /// `false` if one was already attached. An engine with a broker (cluster mode) turns on
    /// the manager's cluster side: sends to users, user and channel presence across the nodes
    /// (docs/CLUSTER.md).
    pub fn attach(&self, handle: EngineHandle) -> bool {
        let cluster = cluster::Cluster::new(&handle);
        if self.inner.engine.set(handle).is_err() {
            return false;
        }
        if let Some(c) = cluster {
            tracing::info!(node = c.node(), "manager in cluster mode");
            let _ = self.inner.cluster.set(c);
        }
        true
    }

    /// This node's id in the cluster presence (`None` without a broker).
    pub fn cluster_node(&self) -> Option<&str> {
        self.inner.cluster.get().map(|c| c.node())
    }

    /// The cluster paths' counters (`None` without a broker).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.inner.cluster.get().map(|c| c.stats())
    }

    /// The attached engine handle.
    pub fn engine(&self) -> Option<&EngineHandle> {
        self.inner.engine.get()
    }

    /// Open connections, over all cores.
    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// The open connections of `user_id`, on every core.
    pub fn user_sockets(&self, user_id: &str) -> Vec<ConnectionId> {
        self.inner
            .users
            .lock(user_id)
            .get(user_id)
            .map(|e| e.sockets.clone())
            .unwrap_or_default()
    }

    /// Starts collaborative documents over `store` (after the engine is attached): the
    /// `doc.*` routes of [`Router::channels`] serve them. `false` if no engine is attached or
    /// documents already run.
    #[cfg(feature = "store")]
    pub fn start_documents(
        &self,
        store: store::StoreHandle,
        config: documents::DocumentConfig,
    ) -> bool {
        let Some(engine) = self.engine().cloned() else {
            return false;
        };
        self.inner
            .documents
            .set(match self.inner.cluster.get() {
                Some(c) => documents::Documents::start_in(store, engine, config, c.node().into()),
                None => documents::Documents::start(store, engine, config),
            })
            .is_ok()
    }

    /// The documents service, if started.
    #[cfg(feature = "store")]
    pub fn documents(&self) -> Option<&documents::Documents> {
        self.inner.documents.get()
    }

    /// The notifications service, if the manager has one.
    #[cfg(feature = "store")]
    pub fn notifications(&self) -> Option<&notifications::Notifications> {
        self.inner.notifications.as_ref()
    }

    /// `user_id`'s presence: status, `last_seen`, connections, metadata (`None` if not seen
    /// since the process started).
    pub fn presence(&self, user_id: &str) -> Option<presence::UserPresence> {
        self.inner.presence.get(user_id)
    }

    /// Sets `user_id`'s status and (if given, raw JSON) metadata from the server side; the
    /// user must have an open connection.
    pub fn set_presence(
        &self,
        user_id: &str,
        status: presence::Status,
        meta: Option<&str>,
    ) -> Result<(), String> {
        let change = self.inner.presence.set(user_id, status, meta, wall_ms())?;
        self.inner.presence_changed(change);
        Ok(())
    }

    /// Who is in `channel` (connections and distinct users; the member list if asked for).
    /// Only channels whose namespace tracks presence (`ChannelPolicy::presence`) have members.
    pub fn channel_presence(&self, channel: &str, members: bool) -> presence::ChannelPresence {
        self.inner.presence.channel(channel, members)
    }

    /// Closes with 4401 every open connection whose credentials (a JWT's `exp`, or
    /// [`UserContext::with_expiry`]) expired by the manager's clock and were not refreshed;
    /// returns how many. The sweeper thread of [`Manager::start`] calls it.
    pub fn enforce_token_expiry(&self) -> usize {
        credentials::enforce(&self.inner, (self.inner.clock)())
    }

    /// Applies presence's time rules now (the sweeper thread of [`Manager::start`] calls it;
    /// call it yourself with a hand-built engine). Returns how many statuses changed.
    pub fn sweep_presence(&self) -> usize {
        let changes = self.inner.presence.sweep(wall_ms());
        let n = changes.len();
        for c in changes {
            self.inner.presence_changed(Some(c));
        }
        n
    }

    /// Users with at least one open connection.
    pub fn users_online(&self) -> usize {
        let mut n = 0;
        self.inner
            .users
            .for_each_shard(|m| n += m.values().filter(|e| !e.sockets.is_empty()).count());
        n
    }

    /// Sends `text` to every open connection of `user_id`; returns how many on this node. In
    /// a cluster the user's connections on the other nodes get it too (through the broker;
    /// not counted here).
    pub fn send_to_user(&self, user_id: &str, text: &str) -> usize {
        let Some(h) = self.engine() else { return 0 };
        // Encoded once and shared by every socket of the user, on whichever cores they are.
        let n = h.send_text_to_many(&self.user_sockets(user_id), text);
        if let Some(c) = self.inner.cluster.get() {
            c.send_to_user(user_id, text);
        }
        n
    }

    /// Closes every open connection of `user_id`; returns how many on this node. In a cluster
    /// the user's connections on the other nodes are closed too (not counted here).
    pub fn close_user(&self, user_id: &str, code: CloseCode, reason: &str) -> usize {
        let Some(h) = self.engine() else { return 0 };
        let ids = self.user_sockets(user_id);
        let n = ids.iter().filter(|&&id| h.close(id, code, reason)).count();
        if let Some(c) = self.inner.cluster.get() {
            c.close_user(user_id, code, reason);
        }
        n
    }

    /// `user_id`'s presence over every node of the cluster (connections summed; the status,
    /// metadata and `last_seen` of the node that saw the user last; `None`: no node has the
    /// user online or in the grace period). `done` runs on the broker's thread. Without a
    /// broker: [`Manager::presence`], at once.
    pub fn presence_everywhere(
        &self,
        user_id: &str,
        done: impl FnOnce(Result<Option<presence::UserPresence>, BrokerError>) + Send + 'static,
    ) {
        match self.inner.cluster.get() {
            Some(c) => c.user_presence(user_id, done),
            None => done(Ok(self.presence(user_id))),
        }
    }

    /// [`Manager::presence_everywhere`], waiting for the answer (not on a core; at most 5 s).
    pub fn presence_everywhere_blocking(
        &self,
        user_id: &str,
    ) -> Result<Option<presence::UserPresence>, BrokerError> {
        cluster::blocking(|done| self.presence_everywhere(user_id, done))
    }

    /// How many distinct users have a connection (or are in their grace period) on any node
    /// of the cluster; `done` runs on the broker's thread. Without a broker:
    /// [`Manager::users_online`], at once.
    pub fn users_online_everywhere(
        &self,
        done: impl FnOnce(Result<usize, BrokerError>) + Send + 'static,
    ) {
        match self.inner.cluster.get() {
            Some(c) => c.users_online(done),
            None => done(Ok(self.users_online())),
        }
    }

    /// [`Manager::users_online_everywhere`], waiting for the answer (not on a core; at most
    /// 5 s).
    pub fn users_online_everywhere_blocking(&self) -> Result<usize, BrokerError> {
        cluster::blocking(|done| self.users_online_everywhere(done))
    }

    /// Who is in `channel` on every node of the cluster (client ids `<node>:<core>:<conn>`);
    /// `done` runs on the broker's thread. Without a broker: [`Manager::channel_presence`]
    /// at once, with this process's connection ids.
    pub fn channel_presence_everywhere(
        &self,
        channel: &str,
        members: bool,
        done: impl FnOnce(Result<ClusterChannelPresence, BrokerError>) + Send + 'static,
    ) {
        match self.inner.cluster.get() {
            Some(c) => c.channel_presence(channel, members, done),
            None => {
                let p = self.channel_presence(channel, members);
                done(Ok(ClusterChannelPresence {
                    clients: p.clients,
                    users: p.users,
                    members: p
                        .members
                        .into_iter()
                        .map(|m| ClusterMember {
                            client: m.connection.to_string(),
                            user: m.user,
                        })
                        .collect(),
                }))
            }
        }
    }

    /// [`Manager::channel_presence_everywhere`], waiting for the answer (not on a core; at
    /// most 5 s).
    pub fn channel_presence_everywhere_blocking(
        &self,
        channel: &str,
        members: bool,
    ) -> Result<ClusterChannelPresence, BrokerError> {
        cluster::blocking(|done| self.channel_presence_everywhere(channel, members, done))
    }

    /// Sends `text` to every open connection, on every core, whose user passes `filter`
    /// (evaluated on each recipient's core; the user is `None` without authentication).
    /// `false` if no engine is attached.
    pub fn broadcast<F>(&self, text: &str, filter: F) -> bool
    where
        F: Fn(ConnectionId, Option<&UserContext>) -> bool + Send + Sync + 'static,
    {
        let Some(h) = self.engine() else { return false };
        let opts = PublishOptions {
            filter: Some(user_filter(filter)),
            ..PublishOptions::default()
        };
        h.broadcast_all(text.as_bytes(), MessageKind::Text, opts);
        true
    }

    /// Sends `text` to every open connection.
    pub fn broadcast_all(&self, text: &str) -> bool {
        let Some(h) = self.engine() else { return false };
        h.broadcast_all(
            text.as_bytes(),
            MessageKind::Text,
            PublishOptions::default(),
        );
        true
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&self, code: CloseCode, reason: &str) -> bool {
        let Some(h) = self.engine() else { return false };
        h.close_all(code, reason);
        true
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ManagerStats {
        let i = &*self.inner;
        let active = i.active.load(Ordering::Relaxed);
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        ManagerStats {
            active,
            pending: i.total.load(Ordering::Relaxed).saturating_sub(active),
            opened: load(&i.stats.opened),
            closed: load(&i.stats.closed),
            rejections: RejectReason::ALL
                .iter()
                .map(|&r| (r, load(&i.stats.rejected[r.index()])))
                .collect(),
            errors: ErrorKind::ALL
                .iter()
                .map(|&k| (k, load(&i.stats.errors[k.index()])))
                .collect(),
            abuse_closes: load(&i.stats.abuse_closes),
            expired_closes: load(&i.stats.expired_closes),
            refresh_refused: load(&i.stats.refresh_refused),
        }
    }
}

/// Builds a [`Manager`].
pub struct ManagerBuilder {
    auth: Auth,
    max_connections: Option<usize>,
    max_per_ip: Option<u32>,
    max_per_user: Option<u32>,
    auth_timeout: Duration,
    max_message_size: usize,
    rate: Option<RateLimit>,
    user_rate: Option<RateLimit>,
    abuse: Option<AbusePolicy>,
    listeners: Vec<Listener>,
    presence: presence::PresenceConfig,
    #[cfg(feature = "store")]
    notifications: Option<notifications::Notifications>,
    clock: Option<credentials::Clock>,
    refresh: Option<Arc<credentials::RefreshFn>>,
}

impl std::fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("auth", &self.auth)
            .field("max_connections", &self.max_connections)
            .field("max_per_ip", &self.max_per_ip)
            .field("max_per_user", &self.max_per_user)
            .finish_non_exhaustive()
    }
}

impl Default for ManagerBuilder {
    fn default() -> Self {
        ManagerBuilder {
            auth: Auth::None,
            max_connections: None,
            max_per_ip: None,
            max_per_user: None,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            rate: None,
            user_rate: None,
            abuse: None,
            listeners: Vec::new(),
            presence: presence::PresenceConfig::default(),
            #[cfg(feature = "store")]
            notifications: None,
            clock: None,
            refresh: None,
        }
    }
}

impl ManagerBuilder {
    /// How connections authenticate (default: [`Auth::None`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Most connections in total, over all cores (503 beyond). Upgrades being authenticated
    /// count.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Most connections per peer address (429 beyond).
    pub fn max_connections_per_ip(mut self, n: u32) -> Self {
        self.max_per_ip = Some(n);
        self
    }

    /// Most connections per user (429 beyond).
    pub fn max_connections_per_user(mut self, n: u32) -> Self {
        self.max_per_user = Some(n);
        self
    }

    /// Time an async validator has to answer (default 5 s; 503 beyond).
    pub fn auth_timeout(mut self, t: Duration) -> Self {
        self.auth_timeout = t;
        self
    }

    /// Largest message passed to the application (default 64 KiB); larger ones are answered
    /// with `Message too large` and the connection stays open. The engine's own
    /// `max_message_size` (closing with 1009) should be at least this.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Each connection's rate limit.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate = limit.is_limited().then_some(limit);
        self
    }

    /// Each user's rate limit, shared by the user's connections on every core.
    pub fn user_rate_limit(mut self, limit: RateLimit) -> Self {
        self.user_rate = limit.is_limited().then_some(limit);
        self
    }

    /// Closes connections that keep exceeding their rate limit.
    pub fn abuse_policy(mut self, policy: AbusePolicy) -> Self {
        self.abuse = Some(policy);
        self
    }

    /// Per-user notifications (see [`notifications`]): pending ones are delivered to a user's
    /// connection when it opens, and the `notifications.*` routes of [`Router::channels`]
    /// serve the inbox.
    #[cfg(feature = "store")]
    pub fn notifications(mut self, n: notifications::Notifications) -> Self {
        self.notifications = Some(n);
        self
    }

    /// An async validator for `refresh` (docs/PROTOCOL.md): called with the connection's
    /// current user and the token it sent, on the connection's core (the future need not be
    /// `Send`), within the auth timeout. The user it returns must have the same id; its
    /// permissions and expiry replace the connection's. Without one, `refresh` works with
    /// JWT authentication only (the token is verified like at the upgrade).
    ///
    /// ```
    /// use edge_ws_server::{AuthRejection, Manager, UserContext};
    /// let manager = Manager::builder()
    ///     .refresh_validator(|info| async move {
    ///         // e.g. ask the session service whether `info.token` is still valid
    ///         if info.token == "still-valid" {
    ///             Ok(UserContext::new(info.user.id()).with_permissions(["chat"]))
    ///         } else {
    ///             Err(AuthRejection::unauthorized("session revoked"))
    ///         }
    ///     })
    ///     .build();
    /// # let _ = manager;
    /// ```
    pub fn refresh_validator<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(RefreshInfo) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<UserContext, AuthRejection>> + 'static,
    {
        self.refresh = Some(Arc::new(move |info| Box::pin(f(info))));
        self
    }

    /// The clock credentials expire by (ms since the Unix epoch; default the system clock):
    /// replace it to test expiry.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Presence settings (grace period, heartbeat timeout, status expiration).
    pub fn presence(mut self, config: presence::PresenceConfig) -> Self {
        self.presence = config;
        self
    }

    /// Calls `f` for every [`Event`], synchronously, on the core where it happens.
    pub fn on_event<F>(mut self, f: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.listeners.push(Arc::new(f));
        self
    }

    /// The manager.
    pub fn build(self) -> Manager {
        let m = Manager {
            inner: Arc::new(Inner {
                settings: Settings {
                    max_connections: self.max_connections,
                    max_per_ip: self.max_per_ip,
                    max_per_user: self.max_per_user,
                    auth_timeout: self.auth_timeout,
                    max_message_size: self.max_message_size,
                    rate: self.rate,
                    user_rate: self.user_rate,
                    abuse: self.abuse,
                },
                auth: self.auth,
                clock: self.clock.unwrap_or_else(|| Arc::new(wall_ms)),
                refresh: self.refresh,
                expiries: credentials::Expiries::default(),
                total: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                ips: Sharded::new(),
                users: Sharded::new(),
                stats: Stats::new(),
                listeners: self.listeners,
                engine: OnceLock::new(),
                epoch: Instant::now(),
                presence: presence::Presence::new(self.presence),
                cluster: OnceLock::new(),
                #[cfg(feature = "store")]
                notifications: self.notifications,
                #[cfg(feature = "store")]
                documents: OnceLock::new(),
            }),
        };
        #[cfg(feature = "store")]
        if let Some(n) = &m.inner.notifications {
            n.attach(&m.inner);
        }
        m
    }
}

/// The engine [`Handler`] of one core: admission, limits and bookkeeping around `A`.
pub struct ManagerHandler<A> {
    manager: Manager,
    app: A,
    /// Per-connection state, at the connection's index in the engine's table (one indexed
    /// load per message, no lookup through the socket's data slot).
    conns: Vec<Option<ConnEntry>>,
    open: usize,
    scratch: Scratch,
}

impl<A> std::fmt::Debug for ManagerHandler<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerHandler")
            .field("connections", &self.open)
            .finish_non_exhaustive()
    }
}

impl<A> ManagerHandler<A> {
    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The manager.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }
}

impl<A: App> Handler for ManagerHandler<A> {
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Upgrade {
        self.manager.inner.admit(request)
    }

    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        let id = socket.id();
        let peer = socket.peer_addr();
        let Some(slot) = socket.data_mut::<Slot>() else {
            return; // not admitted by a manager: nothing to manage
        };
        slot.res.opened(id);
        let entry = ConnEntry {
            user: slot.user.clone(),
            shared: slot.buckets.clone(),
            buckets: LocalBuckets::default(),
            app: None,
        };
        let key = socket.id().slot();
        if self.conns.len() <= key {
            self.conns.resize_with(key + 1, || None);
        }
        self.open += 1;
        let inner = &*self.manager.inner;
        inner.stats.opened.fetch_add(1, Ordering::Relaxed);
        let conn = self.conns[key].insert(entry);
        if let Some(u) = &conn.user {
            if let Some(at) = u.expires_at_ms() {
                inner.expiries.insert(at, id);
            }
            if let Some(c) = inner.cluster.get() {
                c.opened(&self.manager.inner, u.id_arc());
            }
            inner.user_touched(u.id(), inner.presence.connected(u.id_arc(), wall_ms()));
            #[cfg(feature = "store")]
            if let Some(n) = &inner.notifications {
                n.connected(u.id_arc(), id);
            }
        }
        if inner.has_listeners() {
            inner.emit(&Event::Opened {
                id,
                peer,
                user: conn.user.as_deref(),
            });
        }
        let mut ctx = Context::new(socket, conn, &self.manager, &mut self.scratch);
        self.app.on_open(&mut ctx);
    }

    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let ManagerHandler {
            manager,
            app,
            conns,
            scratch,
            ..
        } = self;
        // Credentials an async refresh validator renewed since the last message on this core.
        credentials::apply_refreshed(&manager.inner, |id, user| {
            if let Some(Some(c)) = conns.get_mut(id.slot()) {
                c.user = Some(user);
            }
        });
        let Some(Some(conn)) = conns.get_mut(socket.id().slot()) else {
            return; // not admitted by a manager
        };
        let inner = &*manager.inner;
        let s = &inner.settings;
        let len = message.payload().len();
        if len > s.max_message_size {
            let mut ctx = Context::new(socket, conn, manager, scratch);
            let _ = ctx.fail(ErrorKind::TooLarge, ErrorKind::TooLarge.message());
            return;
        }
        let user_rate = s.user_rate.as_ref().filter(|_| conn.shared.is_some());
        if s.rate.is_some() || user_rate.is_some() {
            let now = inner.now();
            let ok = rate::take(
                now,
                len as u64,
                s.rate.as_ref(),
                &mut conn.buckets,
                user_rate,
                conn.shared.as_deref(),
            );
            if !ok {
                let close = s
                    .abuse
                    .as_ref()
                    .filter(|p| rate::abused(now, &mut conn.buckets, p));
                let mut ctx = Context::new(socket, conn, manager, scratch);
                let _ = ctx.fail(ErrorKind::RateLimited, ErrorKind::RateLimited.message());
                if let Some(p) = close {
                    inner.stats.abuse_closes.fetch_add(1, Ordering::Relaxed);
                    ctx.close(p.code, "rate limit exceeded");
                }
                return;
            }
        }
        let mut ctx = Context::new(socket, conn, manager, scratch);
        app.on_message(&mut ctx, message);
    }

    fn on_close(&mut self, socket: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
        let Some(mut conn) = self
            .conns
            .get_mut(socket.id().slot())
            .and_then(Option::take)
        else {
            return;
        };
        self.open -= 1;
        let id = socket.id();
        credentials::forget(id);
        {
            let mut ctx = Context::new(socket, &mut conn, &self.manager, &mut self.scratch);
            self.app.on_close(&mut ctx, code, reason);
        }
        let inner = &*self.manager.inner;
        channels::leave_presence(socket, &self.manager, id);
        #[cfg(feature = "store")]
        if let Some(d) = inner.documents.get() {
            d.closed(id);
        }
        if let Some(u) = &conn.user {
            if let Some(at) = u.expires_at_ms() {
                inner.expiries.remove(at, id);
            }
            if let Some(c) = inner.cluster.get() {
                c.closed(u.id());
            }
            inner.user_touched(u.id(), inner.presence.disconnected(u.id(), wall_ms()));
        }
        inner.stats.closed.fetch_add(1, Ordering::Relaxed);
        if inner.has_listeners() {
            inner.emit(&Event::Closed {
                id,
                user: conn.user.as_deref(),
                code,
                reason,
            });
        }
        // The reservation is released when the engine drops the slot, right after this.
    }
}
