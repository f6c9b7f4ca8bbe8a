//! The credential lifecycle on open connections: a connection whose token expires is closed
//! with 4401 (reconnect with fresh credentials) unless it sent a `refresh` with a new token for
//! the same user first; a refresh re-reads the permissions. The expiry times sit in one ordered
//! set, touched on connect, close and refresh only; the manager's sweeper thread closes what is
//! due ([`crate::Manager::enforce_token_expiry`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use edge_ws::ConnectionId;

use crate::auth::Auth;
use crate::{Inner, CLOSE_AUTH_EXPIRED};

/// A clock in milliseconds since the Unix epoch (replaceable for tests).
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Default)]
pub(crate) struct Expiries {
    at: Mutex<BTreeMap<u64, Vec<ConnectionId>>>,
}

impl Expiries {
    pub(crate) fn insert(&self, at: u64, id: ConnectionId) {
        let mut m = self.at.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(at).or_default().push(id);
    }

    pub(crate) fn remove(&self, at: u64, id: ConnectionId) {
        let mut m = self.at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get_mut(&at) {
            v.retain(|c| *c != id);
            if v.is_empty() {
                m.remove(&at);
            }
        }
    }

    /// Takes every connection due at `now`.
    pub(crate) fn due(&self, now: u64) -> Vec<ConnectionId> {
        let mut m = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let later = m.split_off(&(now + 1));
        let due = std::mem::replace(&mut *m, later);
        due.into_values().flatten().collect()
    }
}

/// The user behind a refresh `token` for the connection's `current` user: verified by the
/// manager's clock, for the same user id, with the token's permissions and expiry.
pub(crate) fn refreshed_user(
    inner: &Inner,
    current: &crate::UserContext,
    token: &str,
) -> Result<crate::UserContext, String> {
    let Auth::Jwt(jwt) = &inner.auth else {
        return Err("refresh needs JWT authentication".into());
    };
    let now = UNIX_EPOCH + Duration::from_millis((inner.clock)());
    let claims = jwt
        .verify_at(token, now)
        .map_err(|r| format!("refresh refused: {}", r.as_str()))?;
    let user = jwt
        .user(claims)
        .map_err(|r| format!("refresh refused: {}", r.message))?;
    if user.id() != current.id() {
        inner
            .stats
            .refresh_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err("refresh refused: the token is for another user".into());
    }
    Ok(user)
}

/// Moves connection `id`'s expiry from `old` to `new`.
pub(crate) fn replace_expiry(inner: &Inner, id: ConnectionId, old: Option<u64>, new: Option<u64>) {
    if let Some(at) = old {
        inner.expiries.remove(at, id);
    }
    if let Some(at) = new {
        inner.expiries.insert(at, id);
    }
}

/// Closes every connection whose credentials expired at `now`; returns how many.
pub(crate) fn enforce(inner: &Inner, now: u64) -> usize {
    let due = inner.expiries.due(now);
    let Some(h) = inner.engine.get() else {
        return 0;
    };
    for id in &due {
        h.close(*id, CLOSE_AUTH_EXPIRED, "token expired");
    }
    inner
        .stats
        .expired_closes
        .fetch_add(due.len() as u64, std::sync::atomic::Ordering::Relaxed);
    due.len()
}
