//! Connection limits across cores: an atomic for the total, sharded maps for addresses and
//! users, and the [`Reservation`] that a connection carries from before its `101` until the
//! engine drops it, releasing everything exactly once.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::identity::RejectReason;
use crate::rate::SharedBuckets;
use crate::Inner;
use edge_ws::ConnectionId;

const SHARDS: usize = 32;

/// One shard on its own cache lines (two cores locking neighbouring shards do not collide).
#[repr(align(128))]
struct Shard<T>(Mutex<T>);

/// A map split over [`SHARDS`] mutexes by key hash: connect and close lock one shard briefly.
pub(crate) struct Sharded<K, V> {
    shards: Box<[Shard<HashMap<K, V>>]>,
    hasher: RandomState,
}

impl<K, V> std::fmt::Debug for Sharded<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sharded({} shards)", SHARDS)
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    pub(crate) fn new() -> Self {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(HashMap::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn lock<Q>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Visits every shard in turn, mutably (sweeps; never on a hot path).
    pub(crate) fn for_each_shard_mut(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for s in self.shards.iter() {
            f(&mut s.0.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Visits every shard in turn (for statistics; never on a hot path).
    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&HashMap<K, V>)) {
        for s in self.shards.iter() {
            f(&s.0.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// A user's entry: reservations (pending and open), open sockets, shared rate buckets.
pub(crate) struct UserEntry {
    pub(crate) reserved: u32,
    pub(crate) sockets: Vec<ConnectionId>,
    pub(crate) buckets: Arc<SharedBuckets>,
}

/// What one connection holds against the limits. Dropping it gives everything back — which
/// happens wherever the connection ends: a refused upgrade, a deferred decision the engine
/// discards because the client left or timed out, or the engine dropping the connection's
/// data after `on_close`.
pub(crate) struct Reservation {
    inner: Arc<Inner>,
    total: bool,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
    /// Set once open: listed in the user's sockets and counted as active.
    open: Option<ConnectionId>,
}

impl Reservation {
    /// Reserves a slot in the total and for `ip`, or says which limit is full.
    pub(crate) fn new(inner: &Arc<Inner>, ip: IpAddr) -> Result<Reservation, RejectReason> {
        let mut r = Reservation {
            inner: inner.clone(),
            total: false,
            ip: None,
            user: None,
            open: None,
        };
        let s = &inner.settings;
        // Compare-and-increment: never above the limit, whatever the other cores do.
        let ok = inner
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (s.max_connections.is_none_or(|max| n < max)).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            return Err(RejectReason::ServerFull);
        }
        r.total = true;
        if let Some(max) = s.max_per_ip {
            let ip = canonical(ip);
            let mut map = inner.ips.lock(&ip);
            let n = map.entry(ip).or_insert(0);
            if *n >= max {
                if *n == 0 {
                    map.remove(&ip);
                }
                return Err(RejectReason::IpLimit);
            }
            *n += 1;
            r.ip = Some(ip);
        }
        Ok(r)
    }

    /// Reserves a slot for `user`; returns the user's shared rate buckets.
    pub(crate) fn add_user(&mut self, user: &Arc<str>) -> Result<Arc<SharedBuckets>, RejectReason> {
        let max = self.inner.settings.max_per_user;
        let mut map = self.inner.users.lock(&**user);
        let e = map.entry(user.clone()).or_insert_with(|| UserEntry {
            reserved: 0,
            sockets: Vec::new(),
            buckets: Arc::default(),
        });
        if max.is_some_and(|m| e.reserved >= m) {
            if e.reserved == 0 {
                map.remove(&**user);
            }
            return Err(RejectReason::UserLimit);
        }
        e.reserved += 1;
        let buckets = e.buckets.clone();
        self.user = Some(user.clone());
        Ok(buckets)
    }

    /// The connection opened: list it under its user and count it as active.
    pub(crate) fn opened(&mut self, id: ConnectionId) {
        if self.open.is_some() {
            return;
        }
        self.open = Some(id);
        if let Some(user) = &self.user {
            if let Some(e) = self.inner.users.lock(&**user).get_mut(&**user) {
                e.sockets.push(id);
            }
        }
        self.inner.active.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let inner = &self.inner;
        if let Some(user) = &self.user {
            let mut map = inner.users.lock(&**user);
            if let Some(e) = map.get_mut(&**user) {
                if let Some(id) = self.open {
                    if let Some(i) = e.sockets.iter().position(|&s| s == id) {
                        e.sockets.swap_remove(i);
                    }
                }
                e.reserved -= 1;
                if e.reserved == 0 {
                    map.remove(&**user);
                }
            }
        }
        if let Some(ip) = &self.ip {
            let mut map = inner.ips.lock(ip);
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
        if self.open.is_some() {
            inner.active.fetch_sub(1, Ordering::Relaxed);
        }
        if self.total {
            inner.total.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
