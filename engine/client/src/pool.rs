//! [`Pool`]: a pool of WebSocket connections to a [`Backends`] set.
//!
//! - **Size:** at most [`max_connections`](PoolBuilder::max_connections) open (idle, checked
//!   out, or being connected); the maintenance task keeps at least
//!   [`min_connections`](PoolBuilder::min_connections) open ([`Pool::fill`] does it on
//!   demand).
//! - **Acquire:** [`Pool::acquire`] hands out an idle connection, or connects a new one
//!   (through [`Backends::connect`]: balanced, breaker- and health-aware) while under the
//!   maximum, or waits. Waiters are served strictly first come, first served: a released
//!   connection (or the room left by a discarded one) goes to the longest waiting acquire,
//!   and a new acquire does not overtake waiters. Each acquire is bounded by the
//!   [`acquire_timeout`](PoolBuilder::acquire_timeout) ([`Error::PoolTimeout`]); a connect
//!   error (every backend down: [`Error::NoBackendAvailable`]) is returned at once.
//! - **Release:** the [`PooledConnection`] guard returns its connection when dropped. A
//!   connection that is closed, or whose backend was drained or turned unhealthy, is
//!   discarded instead; so is every connection released after [`Pool::close`].
//! - **Eviction (LRU):** idle connections are reused most recently released first, so the
//!   least recently used ones stay idle longest and are the ones that reach the
//!   [`idle_timeout`](PoolBuilder::idle_timeout); eviction closes them oldest-idle first,
//!   never going below the minimum. Reusing hot connections keeps the pool at the size the
//!   load needs.
//! - **Validation:** with [`validate_on_checkout`](PoolBuilder::validate_on_checkout), an idle
//!   connection is pinged before it is handed out; no pong within the
//!   [`validation_timeout`](PoolBuilder::validation_timeout) discards it (counted) and the
//!   acquire goes on with the next one.
//! - **Close:** [`Pool::close`] refuses new acquires, fails the waiting ones with
//!   [`Error::PoolClosed`] and closes the idle connections; connections checked out are
//!   closed when released.
//!
//! The pool's state sits behind one `std::sync::Mutex`, held for a few field updates and
//! never across an `.await`; uncontended `acquire` plus release takes no other lock than the
//! connection's own (to see that it is open) and no timer.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backends::{BackendConnection, Backends};
use crate::error::{Error, Result};
use crate::socket::WebSocket;

/// Builds a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    backends: Backends,
    min: usize,
    max: usize,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    validate: bool,
    validation_timeout: Duration,
    /// `None`: derived from the idle timeout.
    maintenance_interval: Option<Option<Duration>>,
}

impl PoolBuilder {
    /// Connections kept open (idle or not) by the maintenance task. Default 0.
    pub fn min_connections(mut self, n: usize) -> Self {
        self.min = n;
        self
    }

    /// The most connections open at once (at least 1). Default 10.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// How long [`Pool::acquire`] may take in all (waiting, connecting, validating).
    /// Default 5 s.
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// Idle connections unused for this long are closed (down to the minimum). Default
    /// 5 min; `None` keeps them.
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Ping an idle connection before handing it out. Default off.
    pub fn validate_on_checkout(mut self, on: bool) -> Self {
        self.validate = on;
        self
    }

    /// How long a validation ping may wait for its pong. Default 1 s.
    pub fn validation_timeout(mut self, d: Duration) -> Self {
        self.validation_timeout = d;
        self
    }

    /// How often the maintenance task evicts and tops up. Default: a quarter of the idle
    /// timeout, between 100 ms and 30 s (1 s without an idle timeout); `None`: no task.
    pub fn maintenance_interval(mut self, d: Option<Duration>) -> Self {
        self.maintenance_interval = Some(d);
        self
    }

    /// The pool. Its maintenance task (idle eviction, the minimum) is started with
    /// [`tokio::spawn`] when called inside a runtime; elsewhere the pool works without it
    /// ([`Pool::evict_expired`] and [`Pool::fill`] do the same on demand).
    pub fn build(self) -> Result<Pool> {
        let bad = |s: &str| Err(Error::Config(s.to_owned()));
        if self.max == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.min > self.max {
            return bad("min_connections must not exceed max_connections");
        }
        if self.acquire_timeout.is_zero() || self.validation_timeout.is_zero() {
            return bad("acquire_timeout and validation_timeout must be longer than zero");
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return bad("idle_timeout must be longer than zero (None keeps idle connections)");
        }
        let inner = Arc::new(Inner {
            st: Mutex::new(State::default()),
            backends: self.backends,
            min: self.min,
            max: self.max,
            acquire_timeout: self.acquire_timeout,
            idle_timeout: self.idle_timeout,
            validate: self.validate,
            validation_timeout: self.validation_timeout,
        });
        let every = self
            .maintenance_interval
            .unwrap_or_else(|| Some(interval_for(self.idle_timeout)));
        if let (Some(every), Ok(rt)) = (every, tokio::runtime::Handle::try_current()) {
            if !every.is_zero() {
                rt.spawn(maintain(Arc::downgrade(&inner), every));
            }
        }
        Ok(Pool { inner })
    }
}

/// The pool's counters and gauges, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections checked out now.
    pub active: usize,
    /// Idle connections now.
    pub idle: usize,
    /// Acquires waiting now.
    pub waiting: usize,
    /// Connects in progress now.
    pub connecting: usize,
    /// Connections created.
    pub total_created: u64,
    /// Acquires that had to wait (served or not).
    pub total_waited: u64,
    /// Idle connections closed for the idle timeout.
    pub evicted: u64,
    /// Idle connections discarded because their validation ping failed.
    pub validation_failed: u64,
    /// Connections discarded on release or while idle: closed, or their backend drained or
    /// unhealthy.
    pub discarded: u64,
    /// Connects that failed.
    pub connect_failed: u64,
    /// Acquires that timed out.
    pub acquire_timeouts: u64,
    /// Whether [`Pool::close`] was called.
    pub closed: bool,
}

#[derive(Debug)]
struct Idle {
    conn: BackendConnection,
    since: Instant,
}

#[derive(Debug)]
enum Handoff {
    /// A released connection (counted as active for the waiter).
    Conn(Idle),
    /// Room for one connection (counted as connecting for the waiter).
    Slot,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Handoff>,
}

#[derive(Debug, Default)]
struct State {
    /// Back: most recently released.
    idle: VecDeque<Idle>,
    active: usize,
    connecting: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    closed: bool,
    created: u64,
    waited: u64,
    evicted: u64,
    validation_failed: u64,
    discarded: u64,
    connect_failed: u64,
    timeouts: u64,
}

impl State {
    fn total(&self) -> usize {
        self.idle.len() + self.active + self.connecting
    }

    /// Hands `h` to the longest waiting acquire that is still there; `h` back if none.
    fn give(&mut self, mut h: Handoff) -> Option<Handoff> {
        while let Some(w) = self.waiters.pop_front() {
            match w.tx.send(h) {
                Ok(()) => return None,
                Err(back) => h = back,
            }
        }
        Some(h)
    }

    /// One connection's room was freed: a waiter gets it as a slot to connect.
    fn free_slot(&mut self) {
        if self.closed || self.waiters.is_empty() {
            return;
        }
        self.connecting += 1;
        if self.give(Handoff::Slot).is_some() {
            self.connecting -= 1;
        }
    }

    /// A connection for the pool: to a waiter, else idle.
    fn put(&mut self, idle: Idle) {
        self.active += 1;
        if let Some(Handoff::Conn(idle)) = self.give(Handoff::Conn(idle)) {
            self.active -= 1;
            self.idle.push_back(idle);
        }
    }
}

#[derive(Debug)]
struct Inner {
    st: Mutex<State>,
    backends: Backends,
    min: usize,
    max: usize,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    validate: bool,
    validation_timeout: Duration,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A checked-out connection comes back.
    fn release(&self, conn: BackendConnection) {
        let usable = !conn.is_closed() && conn.backend_usable();
        let mut st = self.lock();
        st.active -= 1;
        if st.closed || !usable {
            if !st.closed {
                st.discarded += 1;
            }
            st.free_slot();
            drop(st);
            // Dropping the last handle closes it with 1000.
            drop(conn);
            return;
        }
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        st.put(idle);
    }

    /// A checked-out (or handed-over) connection is dropped for good.
    fn forget_active(&self) {
        let mut st = self.lock();
        st.active -= 1;
        st.free_slot();
    }

    /// A slot reserved for connecting is given up.
    fn forget_slot(&self) {
        let mut st = self.lock();
        st.connecting -= 1;
        st.free_slot();
    }

    /// Puts back what a cancelled waiter had been handed.
    fn undo_handoff(&self, h: Handoff) {
        match h {
            Handoff::Conn(idle) => self.release(idle.conn),
            Handoff::Slot => self.forget_slot(),
        }
    }
}

/// What an acquire does next.
enum Next {
    Got(BackendConnection),
    Connect,
    Wait(WaitGuard),
}

/// A waiting acquire's place in the queue; leaving it (timeout, cancellation) removes it,
/// and gives back anything handed over in the meantime.
struct WaitGuard {
    pool: Arc<Inner>,
    id: u64,
    rx: Option<oneshot::Receiver<Handoff>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        {
            let mut st = self.pool.lock();
            if let Some(pos) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(pos);
                return;
            }
        }
        rx.close();
        if let Ok(h) = rx.try_recv() {
            self.pool.undo_handoff(h);
        }
    }
}

/// A reserved slot: given back unless a connection filled it.
struct SlotGuard<'a> {
    pool: &'a Arc<Inner>,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.forget_slot();
        }
    }
}

/// A pool of WebSocket connections (see the [module docs](self)). Cheap to clone: clones
/// share the pool.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A builder over `backends`: 0 to 10 connections, 5 s acquire timeout, 5 min idle
    /// timeout, no validation.
    pub fn builder(backends: Backends) -> PoolBuilder {
        PoolBuilder {
            backends,
            min: 0,
            max: 10,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(300)),
            validate: false,
            validation_timeout: Duration::from_secs(1),
            maintenance_interval: None,
        }
    }

    /// The backends it connects to.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// A connection: idle, new, or released by another task (see the [module docs](self)).
    /// Fails with [`Error::PoolTimeout`] after the acquire timeout, [`Error::PoolClosed`]
    /// once closed, or the connect error (at once) when a new connection was needed and
    /// could not be made.
    pub async fn acquire(&self) -> Result<PooledConnection> {
        let pool = &self.inner;
        let mut deadline = None;
        loop {
            let next = {
                let mut st = pool.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                let mut next = None;
                if st.waiters.is_empty() {
                    while let Some(idle) = st.idle.pop_back() {
                        if idle.conn.is_closed() || !idle.conn.backend_usable() {
                            st.discarded += 1;
                            continue;
                        }
                        st.active += 1;
                        next = Some(Next::Got(idle.conn));
                        break;
                    }
                    if next.is_none() && st.total() < pool.max {
                        st.connecting += 1;
                        next = Some(Next::Connect);
                    }
                }
                match next {
                    Some(n) => n,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        let id = st.next_waiter;
                        st.next_waiter += 1;
                        st.waiters.push_back(Waiter { id, tx });
                        st.waited += 1;
                        Next::Wait(WaitGuard {
                            pool: pool.clone(),
                            id,
                            rx: Some(rx),
                        })
                    }
                }
            };
            let mut deadline =
                || *deadline.get_or_insert_with(|| Instant::now() + pool.acquire_timeout);
            let (conn, reused) = match next {
                Next::Got(conn) => (conn, true),
                Next::Connect => (self.connect(deadline()).await?, false),
                Next::Wait(mut guard) => {
                    let rx = guard.rx.as_mut().expect("set until dropped");
                    match tokio::time::timeout_at(deadline(), rx).await {
                        Ok(Ok(Handoff::Conn(idle))) => {
                            guard.rx = None;
                            (idle.conn, true)
                        }
                        Ok(Ok(Handoff::Slot)) => {
                            guard.rx = None;
                            (self.connect(deadline()).await?, false)
                        }
                        // The pool dropped our sender: it closed.
                        Ok(Err(_)) => return Err(Error::PoolClosed),
                        Err(_) => {
                            drop(guard);
                            pool.lock().timeouts += 1;
                            return Err(Error::PoolTimeout(pool.acquire_timeout));
                        }
                    }
                }
            };
            if reused && pool.validate && !self.validate(&conn).await {
                pool.lock().validation_failed += 1;
                drop(conn);
                pool.forget_active();
                continue;
            }
            return Ok(PooledConnection {
                conn: Some(conn),
                pool: pool.clone(),
            });
        }
    }

    /// Takes an idle connection if one is ready, without waiting, connecting or validating.
    pub fn try_acquire(&self) -> Option<PooledConnection> {
        let pool = &self.inner;
        let mut st = pool.lock();
        if st.closed || !st.waiters.is_empty() {
            return None;
        }
        while let Some(idle) = st.idle.pop_back() {
            if idle.conn.is_closed() || !idle.conn.backend_usable() {
                st.discarded += 1;
                continue;
            }
            st.active += 1;
            return Some(PooledConnection {
                conn: Some(idle.conn),
                pool: pool.clone(),
            });
        }
        None
    }

    async fn validate(&self, conn: &BackendConnection) -> bool {
        matches!(
            tokio::time::timeout(self.inner.validation_timeout, conn.ping()).await,
            Ok(Ok(_))
        )
    }

    /// Fills a reserved slot with a new connection (counted active), before `deadline`.
    async fn connect(&self, deadline: Instant) -> Result<BackendConnection> {
        let pool = &self.inner;
        let mut slot = SlotGuard { pool, armed: true };
        match tokio::time::timeout_at(deadline, pool.backends.connect(None)).await {
            Ok(Ok(conn)) => {
                slot.armed = false;
                let mut st = pool.lock();
                st.connecting -= 1;
                st.created += 1;
                if st.closed {
                    st.free_slot();
                    return Err(Error::PoolClosed);
                }
                st.active += 1;
                Ok(conn)
            }
            Ok(Err(e)) => {
                pool.lock().connect_failed += 1;
                Err(e)
            }
            Err(_) => {
                pool.lock().timeouts += 1;
                Err(Error::PoolTimeout(pool.acquire_timeout))
            }
        }
    }

    /// Opens connections until at least the minimum are open (idle ones go to waiters
    /// first). The first connect error stops it.
    pub async fn fill(&self) -> Result<()> {
        let pool = &self.inner;
        loop {
            {
                let mut st = pool.lock();
                if st.closed || st.total() >= pool.min {
                    return Ok(());
                }
                st.connecting += 1;
            }
            let deadline = Instant::now() + pool.acquire_timeout;
            let conn = self.connect(deadline).await?;
            let mut st = pool.lock();
            st.active -= 1;
            st.put(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections unused since before `now - idle_timeout` (oldest idle first,
    /// keeping the minimum open) and drops idle ones that closed or whose backend is drained
    /// or unhealthy; how many were evicted for the timeout. The maintenance task calls this
    /// with the current time.
    pub fn evict_expired(&self, now: Instant) -> usize {
        let pool = &self.inner;
        let mut gone = Vec::new();
        let evicted = {
            let mut st = pool.lock();
            let before = st.idle.len();
            let mut kept = VecDeque::with_capacity(before);
            for idle in std::mem::take(&mut st.idle) {
                if idle.conn.is_closed() || !idle.conn.backend_usable() {
                    gone.push(idle);
                } else {
                    kept.push_back(idle);
                }
            }
            st.discarded += gone.len() as u64;
            st.idle = kept;
            let mut evicted = 0;
            if let Some(timeout) = pool.idle_timeout {
                while st.total() > pool.min
                    && st.idle.front().is_some_and(|i| i.since + timeout <= now)
                {
                    gone.extend(st.idle.pop_front());
                    evicted += 1;
                }
            }
            st.evicted += evicted as u64;
            for _ in 0..gone.len() {
                st.free_slot();
            }
            evicted
        };
        drop(gone);
        evicted
    }

    /// The counters and gauges now.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        PoolStats {
            active: st.active,
            idle: st.idle.len(),
            waiting: st.waiters.len(),
            connecting: st.connecting,
            total_created: st.created,
            total_waited: st.waited,
            evicted: st.evicted,
            validation_failed: st.validation_failed,
            discarded: st.discarded,
            connect_failed: st.connect_failed,
            acquire_timeouts: st.timeouts,
            closed: st.closed,
        }
    }

    /// Closes the pool: new acquires fail with [`Error::PoolClosed`], so do the waiting
    /// ones, and the idle connections are closed (1000, "pool closed"; this waits for their
    /// close handshakes, each bounded by the close timeout). Connections checked out are
    /// closed when released.
    pub async fn close(&self) {
        let (idle, waiters) = {
            let mut st = self.inner.lock();
            st.closed = true;
            (
                std::mem::take(&mut st.idle),
                std::mem::take(&mut st.waiters),
            )
        };
        drop(waiters);
        let closing: Vec<_> = idle
            .into_iter()
            .map(|i| {
                tokio::spawn(async move {
                    let _ = i.conn.close(1000, "pool closed").await;
                })
            })
            .collect();
        for c in closing {
            let _ = c.await;
        }
    }
}

fn interval_for(idle: Option<Duration>) -> Duration {
    match idle {
        Some(d) => (d / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        None => Duration::from_secs(1),
    }
}

async fn maintain(pool: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        if inner.lock().closed {
            return;
        }
        let pool = Pool { inner };
        pool.evict_expired(Instant::now());
        if pool.inner.min > 0 {
            let _ = pool.fill().await;
        }
    }
}

/// A connection checked out of a [`Pool`]; `Deref`s to the [`WebSocket`]. Dropping it
/// returns the connection to the pool (or closes it, if it is closed, its backend is no
/// longer usable, or the pool is closed).
#[derive(Debug)]
pub struct PooledConnection {
    conn: Option<BackendConnection>,
    pool: Arc<Inner>,
}

impl PooledConnection {
    /// The backend's index in the pool's [`Backends`].
    pub fn backend(&self) -> usize {
        self.conn().backend()
    }

    fn conn(&self) -> &BackendConnection {
        self.conn.as_ref().expect("set until dropped")
    }

    /// Takes the connection out of the pool for good (its room in the pool is freed).
    pub fn detach(mut self) -> WebSocket {
        let conn = self.conn.take().expect("set until dropped");
        self.pool.forget_active();
        conn.into_inner()
    }

    /// Drops the connection instead of returning it (it is closed with 1000), e.g. after an
    /// application-level error on it.
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().discarded += 1;
            drop(conn);
            self.pool.forget_active();
        }
    }
}

impl Deref for PooledConnection {
    type Target = WebSocket;
    fn deref(&self) -> &WebSocket {
        self.conn()
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut WebSocket {
        self.conn.as_mut().expect("set until dropped")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.release(conn);
        }
    }
}
