//! [`Backends`]: a set of weighted WebSocket backends with a balancing strategy, a circuit
//! breaker and a health state per backend, and [`Backends::connect`], which picks a healthy,
//! breaker-closed backend and connects to it, failing over to the next on error.
//!
//! Eligibility of backend `i` for a new connection: enabled ([`Backends::set_enabled`]),
//! healthy (see [`health`](crate::health); always, when health is not configured), and its
//! breaker lets the request through (closed, or half-open with its probe free). When none is
//! eligible, [`connect`](Backends::connect) fails at once with
//! [`Error::NoBackendAvailable`]; when every eligible one fails, with
//! [`Error::AllBackendsFailed`] after trying each at most once. Each attempt is bounded by
//! the client's connect and handshake timeouts, so a connect never hangs.
//!
//! Every attempt's outcome is reported to the backend's breaker and, with passive health on,
//! to its health state; each change of either is sent as a [`BackendEvent`].

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::balance::{Balancer, Strategy};
use crate::breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
use crate::config::ClientBuilder;
use crate::error::{Error, Result};
use crate::health::{check_http, BackendEvent, CheckError, HealthConfig, HealthState};
use crate::request::{IntoRequest, Request};
use crate::socket::WebSocket;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One backend: where to connect, its name (for IP-hash and events) and its weight.
#[derive(Debug, Clone)]
pub struct Backend {
    request: Request,
    name: String,
    weight: u32,
}

impl Backend {
    /// A backend at `request` (a `ws://` URL, or a [`Request`] with headers and
    /// subprotocols), weight 1, named by its URL.
    pub fn new(request: impl IntoRequest) -> Result<Backend> {
        let request = request.into_request()?;
        Ok(Backend {
            name: request.url().to_string(),
            request,
            weight: 1,
        })
    }

    /// Its weight (0 never picks it).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Its name: what IP-hash hashes and events carry. Keep it stable (the URL is).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// A backend's state, from [`Backends::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// Its index.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its weight.
    pub weight: u32,
    /// Whether it is enabled (not drained).
    pub enabled: bool,
    /// Whether it is healthy (always `true` when health is not configured).
    pub healthy: bool,
    /// Its breaker's state now.
    pub breaker: BreakerState,
    /// Connections open to it through these backends.
    pub connections: usize,
    /// The round trip of the last successful check (active, or a passive connect).
    pub last_latency: Option<Duration>,
    /// When it was last checked (actively or passively).
    pub last_check: Option<Instant>,
    /// What the last failed check saw.
    pub last_error: Option<CheckError>,
    /// Consecutive failed checks.
    pub consecutive_failures: u32,
    /// Checks counted (active and passive).
    pub checks: u64,
    /// Of which failed.
    pub failed_checks: u64,
    /// Connections established to it.
    pub connects: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
}

/// Builds [`Backends`].
#[derive(Debug, Clone)]
pub struct BackendsBuilder {
    backends: Vec<Backend>,
    strategy: Strategy,
    client: ClientBuilder,
    breaker: BreakerConfig,
    health: Option<HealthConfig>,
    seed: Option<u64>,
    events: usize,
}

impl BackendsBuilder {
    /// Adds a backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// Adds a weight-1 backend at `request`; an invalid URL fails [`build`](Self::build).
    pub fn url(self, request: impl IntoRequest) -> Result<Self> {
        Ok(self.backend(Backend::new(request)?))
    }

    /// The balancing strategy. Default [`Strategy::RoundRobin`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The connection settings (timeouts, headers, deflate…) for every backend.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }

    /// The circuit breaker settings for every backend. Default [`BreakerConfig::default`].
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Turns health tracking on (see [`health`](crate::health)); run
    /// [`Backends::start_health_checks`] for the active checks. Default off: every backend
    /// counts as healthy.
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.health = Some(health);
        self
    }

    /// Seeds least-connections' random draws (for reproducible tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Events kept for a slow subscriber before it misses some. Default 64.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.events = events.max(1);
        self
    }

    /// The backends. Fails with [`Error::Config`] without any backend, and for invalid
    /// client settings.
    pub fn build(self) -> Result<Backends> {
        if self.backends.is_empty() {
            return Err(Error::Config(
                "a backend set needs at least one backend".into(),
            ));
        }
        self.client.inner.validate()?;
        if let Some(h) = &self.health {
            if h.interval.is_zero() || h.timeout.is_zero() {
                return Err(Error::Config(
                    "health check interval and timeout must be longer than zero".into(),
                ));
            }
            if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Error::Config(format!("bad health check path {:?}", h.path)));
            }
        }
        let mut balancer = Balancer::new(
            self.strategy,
            self.backends.iter().map(|b| (b.name.clone(), b.weight)),
        );
        if let Some(seed) = self.seed {
            balancer = balancer.with_seed(seed);
        }
        let entries = self
            .backends
            .into_iter()
            .map(|b| Entry {
                request: b.request,
                name: b.name,
                weight: b.weight,
                load: AtomicUsize::new(0),
                usable: AtomicBool::new(true),
                st: Mutex::new(EntryState {
                    breaker: CircuitBreaker::new(self.breaker),
                    health: HealthState::default(),
                    enabled: true,
                    connects: 0,
                    connect_failures: 0,
                }),
            })
            .collect::<Vec<_>>();
        for e in &entries {
            let s = &self.client.inner;
            e.request
                .with_defaults(&s.headers, &s.protocols)
                .validate()?;
        }
        let (events, _) = broadcast::channel(self.events);
        Ok(Backends {
            shared: Arc::new(Shared {
                entries,
                balancer: Mutex::new(balancer),
                client: self.client,
                health: self.health,
                events,
            }),
        })
    }
}

#[derive(Debug)]
struct Entry {
    request: Request,
    name: String,
    weight: u32,
    /// Connections open to it ([`BackendConnection`]s alive).
    load: AtomicUsize,
    /// Enabled and healthy: idle pooled connections to it may be handed out.
    usable: AtomicBool,
    st: Mutex<EntryState>,
}

#[derive(Debug)]
struct EntryState {
    breaker: CircuitBreaker,
    health: HealthState,
    enabled: bool,
    connects: u64,
    connect_failures: u64,
}

impl EntryState {
    fn eligible(&self, now: Instant) -> bool {
        self.enabled && self.health.healthy && self.breaker.would_allow(now)
    }
}

#[derive(Debug)]
struct Shared {
    entries: Vec<Entry>,
    balancer: Mutex<Balancer>,
    client: ClientBuilder,
    health: Option<HealthConfig>,
    events: broadcast::Sender<BackendEvent>,
}

/// A set of backends (see the [module docs](self)). Cheap to clone: clones share
/// everything.
#[derive(Debug, Clone)]
pub struct Backends {
    shared: Arc<Shared>,
}

/// A connection made by [`Backends::connect`]: the [`WebSocket`] (through `Deref`) and the
/// backend it goes to. It counts as one of that backend's connections (least-connections)
/// until dropped.
#[derive(Debug)]
pub struct BackendConnection {
    ws: WebSocket,
    guard: LoadGuard,
}

/// Counts a connection as its backend's while it lives (from
/// [`BackendConnection::into_parts`]).
#[derive(Debug)]
pub struct BackendLoad {
    _guard: LoadGuard,
}

/// Counts one connection on a backend while it lives.
#[derive(Debug)]
struct LoadGuard {
    shared: Arc<Shared>,
    backend: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.shared.entries[self.backend]
            .load
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl BackendConnection {
    /// The backend's index.
    pub fn backend(&self) -> usize {
        self.guard.backend
    }

    /// The subprotocol the backend chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.ws.protocol()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        &self.guard.shared.entries[self.guard.backend].name
    }

    /// Whether its backend is enabled and healthy.
    pub(crate) fn backend_usable(&self) -> bool {
        self.guard.shared.entries[self.guard.backend]
            .usable
            .load(Ordering::Relaxed)
    }

    /// The connection and a guard that keeps counting it as its backend's connection (for
    /// least-connections) until dropped: to [`split`](WebSocket::split) it.
    pub fn into_parts(self) -> (WebSocket, BackendLoad) {
        let BackendConnection { ws, guard } = self;
        (ws, BackendLoad { _guard: guard })
    }

    /// The connection alone (it stops counting as its backend's connection).
    pub fn into_inner(self) -> WebSocket {
        let BackendConnection { ws, guard } = self;
        drop(guard);
        ws
    }
}

impl Deref for BackendConnection {
    type Target = WebSocket;
    fn deref(&self) -> &WebSocket {
        &self.ws
    }
}

impl DerefMut for BackendConnection {
    fn deref_mut(&mut self) -> &mut WebSocket {
        &mut self.ws
    }
}

/// Runs the active health checks until dropped (or [`stop`](Self::stop)ped).
#[derive(Debug)]
pub struct HealthChecker {
    tasks: Vec<JoinHandle<()>>,
}

impl HealthChecker {
    /// Stops the checks.
    pub fn stop(self) {}
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Backends {
    /// A builder: round-robin, default client, breaker and no health tracking.
    pub fn builder() -> BackendsBuilder {
        BackendsBuilder {
            backends: Vec::new(),
            strategy: Strategy::RoundRobin,
            client: ClientBuilder::new(),
            breaker: BreakerConfig::default(),
            health: None,
            seed: None,
            events: 64,
        }
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.shared.entries.len()
    }

    /// Whether there are none (never: [`BackendsBuilder::build`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.shared.entries.is_empty()
    }

    /// Backend `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.shared.entries[i].name
    }

    /// The connection settings.
    pub fn client(&self) -> &ClientBuilder {
        &self.shared.client
    }

    /// A receiver of every later [`BackendEvent`].
    pub fn subscribe(&self) -> broadcast::Receiver<BackendEvent> {
        self.shared.events.subscribe()
    }

    /// Every backend's state now.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        self.shared
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let st = lock(&e.st);
                BackendStatus {
                    index,
                    name: e.name.clone(),
                    url: e.request.url().to_string(),
                    weight: e.weight,
                    enabled: st.enabled,
                    healthy: st.health.healthy,
                    breaker: st.breaker.state(now),
                    connections: e.load.load(Ordering::Relaxed),
                    last_latency: st.health.last_latency,
                    last_check: st.health.last_check,
                    last_error: st.health.last_error.clone(),
                    consecutive_failures: st.health.failures,
                    checks: st.health.checks,
                    failed_checks: st.health.failed_checks,
                    connects: st.connects,
                    connect_failures: st.connect_failures,
                }
            })
            .collect()
    }

    /// Enables or drains backend `i`: a drained backend gets no new connections, and a pool
    /// discards its idle connections to it. With IP-hash only its keys move.
    pub fn set_enabled(&self, i: usize, enabled: bool) {
        let e = &self.shared.entries[i];
        let mut st = lock(&e.st);
        st.enabled = enabled;
        e.usable
            .store(st.enabled && st.health.healthy, Ordering::Relaxed);
    }

    fn emit(&self, event: BackendEvent) {
        // No receiver is fine.
        let _ = self.shared.events.send(event);
    }

    /// Picks an eligible backend for `key` and takes its breaker's admission; `None` when
    /// none is eligible. `skip[i]` excludes backend `i`.
    fn pick(&self, key: Option<&[u8]>, skip: &[bool]) -> Option<(usize, Admission)> {
        let entries = &self.shared.entries;
        let mut excluded = skip.to_vec();
        loop {
            let now = Instant::now();
            let i = lock(&self.shared.balancer).pick(
                key,
                |i| !excluded[i] && lock(&entries[i].st).eligible(now),
                |i| entries[i].load.load(Ordering::Relaxed),
            )?;
            let admission = lock(&entries[i].st).breaker.try_acquire(now);
            match admission {
                Admission::Refused => excluded[i] = true, // lost a race for the probe
                Admission::Probe => {
                    self.emit(BackendEvent::Breaker {
                        backend: i,
                        name: entries[i].name.clone(),
                        state: BreakerState::HalfOpen,
                    });
                    return Some((i, admission));
                }
                Admission::Allowed => return Some((i, admission)),
            }
        }
    }

    /// Which backend a connection for `key` would go to now, without connecting or taking a
    /// breaker probe (for logging, or to route a request). `None` when none is eligible.
    pub fn peek(&self, key: Option<&[u8]>) -> Option<usize> {
        let now = Instant::now();
        let entries = &self.shared.entries;
        lock(&self.shared.balancer).pick(
            key,
            |i| lock(&entries[i].st).eligible(now),
            |i| entries[i].load.load(Ordering::Relaxed),
        )
    }

    /// Connects to a backend picked by the strategy (`key`: the IP-hash key, see
    /// [`ip_key`](crate::balance::ip_key)), failing over to the next eligible backend on
    /// error, each backend tried at most once. See the [module docs](self) for the errors.
    pub async fn connect(&self, key: Option<&[u8]>) -> Result<BackendConnection> {
        self.connect_with(key, |r| Ok(r.clone())).await
    }

    /// [`connect`](Self::connect), with the request to each backend made by `request` from
    /// the backend's own (a proxy forwards the client's path, query and headers this way).
    /// An error from `request` is returned at once, without trying other backends.
    pub async fn connect_with<F>(&self, key: Option<&[u8]>, request: F) -> Result<BackendConnection>
    where
        F: Fn(&Request) -> Result<Request>,
    {
        let n = self.len();
        let mut tried = vec![false; n];
        let mut attempts = 0u32;
        let mut last = None;
        while let Some((i, _admission)) = self.pick(key, &tried) {
            tried[i] = true;
            attempts += 1;
            let start = Instant::now();
            let req = request(&self.shared.entries[i].request)?;
            match self.shared.client.connect(req).await {
                Ok(ws) => {
                    self.report_success(i, start.elapsed());
                    self.shared.entries[i].load.fetch_add(1, Ordering::Relaxed);
                    return Ok(BackendConnection {
                        ws,
                        guard: LoadGuard {
                            shared: self.shared.clone(),
                            backend: i,
                        },
                    });
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    self.report_failure(i, &e);
                    last = Some(e);
                }
            }
        }
        match last {
            None => Err(Error::NoBackendAvailable),
            Some(last) => Err(Error::AllBackendsFailed {
                attempts,
                last: Box::new(last),
            }),
        }
    }

    /// Passive report: a connection to backend `i` was established in `latency`. Closes a
    /// half-open breaker; counts as a successful check with passive health.
    pub fn report_success(&self, i: usize, latency: Duration) {
        let now = Instant::now();
        let e = &self.shared.entries[i];
        let (breaker, health) = {
            let mut st = lock(&e.st);
            st.connects += 1;
            let breaker = st.breaker.on_success(now);
            let health = match &self.shared.health {
                Some(cfg) if cfg.passive => st.health.record(cfg, Ok(latency), now),
                _ => None,
            };
            e.usable
                .store(st.enabled && st.health.healthy, Ordering::Relaxed);
            (breaker, health)
        };
        self.announce(i, breaker, health, None);
    }

    /// Passive report: connecting to backend `i` failed with `error`. Counts toward its
    /// breaker's threshold (or reopens a half-open one) and, with passive health, as a failed
    /// check.
    pub fn report_failure(&self, i: usize, error: &Error) {
        let now = Instant::now();
        let e = &self.shared.entries[i];
        let reason = error.to_string();
        let (breaker, health) = {
            let mut st = lock(&e.st);
            st.connect_failures += 1;
            let breaker = st.breaker.on_failure(now);
            let health = match &self.shared.health {
                Some(cfg) if cfg.passive => {
                    st.health
                        .record(cfg, Err(CheckError::Passive(reason.clone())), now)
                }
                _ => None,
            };
            e.usable
                .store(st.enabled && st.health.healthy, Ordering::Relaxed);
            (breaker, health)
        };
        self.announce(i, breaker, health, Some(reason));
    }

    fn announce(
        &self,
        i: usize,
        breaker: Option<BreakerState>,
        health: Option<bool>,
        reason: Option<String>,
    ) {
        let name = &self.shared.entries[i].name;
        if let Some(state) = breaker {
            self.emit(BackendEvent::Breaker {
                backend: i,
                name: name.clone(),
                state,
            });
        }
        match health {
            Some(true) => self.emit(BackendEvent::Healthy {
                backend: i,
                name: name.clone(),
            }),
            Some(false) => self.emit(BackendEvent::Unhealthy {
                backend: i,
                name: name.clone(),
                reason: reason.unwrap_or_default(),
            }),
            None => {}
        }
    }

    /// Runs one active check of backend `i` now and records it; its outcome. Without health
    /// configured, checks with [`HealthConfig::default`] and records nothing.
    pub async fn check(&self, i: usize) -> std::result::Result<Duration, CheckError> {
        let default = HealthConfig::default();
        let cfg = self.shared.health.as_ref().unwrap_or(&default);
        let e = &self.shared.entries[i];
        let url = e.request.url();
        let outcome = check_http(
            url.host(),
            url.port(),
            &url.host_header(),
            &cfg.path,
            cfg.timeout,
        )
        .await;
        if self.shared.health.is_some() {
            let turned = {
                let mut st = lock(&e.st);
                let turned = st.health.record(cfg, outcome.clone(), Instant::now());
                e.usable
                    .store(st.enabled && st.health.healthy, Ordering::Relaxed);
                turned
            };
            let reason = outcome.as_ref().err().map(ToString::to_string);
            self.announce(i, None, turned, reason);
        }
        outcome
    }

    /// Runs one active check of every backend, concurrently; their outcomes in order.
    pub async fn check_all(&self) -> Vec<std::result::Result<Duration, CheckError>> {
        let handles: Vec<_> = (0..self.len())
            .map(|i| {
                let this = self.clone();
                tokio::spawn(async move { this.check(i).await })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(
                h.await
                    .unwrap_or_else(|e| Err(CheckError::Io(format!("check task failed: {e}")))),
            );
        }
        out
    }

    /// Starts the active health checks: one task per backend, a check every
    /// [`interval`](HealthConfig::interval) (the first at once). They run until the returned
    /// handle is dropped. Without health configured, starts nothing.
    pub fn start_health_checks(&self) -> HealthChecker {
        let Some(cfg) = &self.shared.health else {
            return HealthChecker { tasks: Vec::new() };
        };
        let interval = cfg.interval;
        let tasks = (0..self.len())
            .map(|i| {
                let this = self.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let _ = this.check(i).await;
                    }
                })
            })
            .collect();
        HealthChecker { tasks }
    }
}
