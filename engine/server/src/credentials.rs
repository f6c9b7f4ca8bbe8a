//! The credential lifecycle on open connections: a connection whose token expires is closed
//! with 4401 (reconnect with fresh credentials) unless it sent a `refresh` with a new token for
//! the same user first; a refresh re-reads the permissions. The expiry times sit in one ordered
//! set, touched on connect, close and refresh only; the manager's sweeper thread closes what is
//! due ([`crate::Manager::enforce_token_expiry`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use edge_ws::ConnectionId;
use serde::Deserialize;

use crate::auth::Auth;
use crate::router::{Context, Envelope, RouteError};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshReq {
    token: String,
}

/// The built-in `refresh`: a new token for the same user extends the connection and replaces
/// its permissions.
pub(crate) fn refresh(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
    let req: RefreshReq = msg.data()?;
    let inner: Arc<Inner> = ctx.manager().inner.clone();
    let Auth::Jwt(jwt) = &inner.auth else {
        return Err(RouteError::new("refresh needs JWT authentication"));
    };
    let current = ctx
        .user_arc()
        .ok_or_else(|| RouteError::new("refresh needs an authenticated connection"))?;
    let now = UNIX_EPOCH + Duration::from_millis((inner.clock)());
    let claims = jwt
        .verify_at(&req.token, now)
        .map_err(|r| RouteError::new(format!("refresh refused: {}", r.as_str())))?;
    let user = jwt
        .user(claims)
        .map_err(|r| RouteError::new(format!("refresh refused: {}", r.message)))?;
    if user.id() != current.id() {
        inner
            .stats
            .refresh_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(RouteError::new(
            "refresh refused: the token is for another user",
        ));
    }
    let id = ctx.id();
    if let Some(old) = current.expires_at_ms() {
        inner.expiries.remove(old, id);
    }
    let until = user.expires_at_ms();
    if let Some(at) = until {
        inner.expiries.insert(at, id);
    }
    ctx.set_user(Arc::new(user));
    let data = match until {
        Some(at) => format!(r#"{{"expires_at":{at}}}"#),
        None => r#"{"expires_at":null}"#.to_string(),
    };
    ctx.reply_raw("refreshed", Some(&data))?;
    Ok(())
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
