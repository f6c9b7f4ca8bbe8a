//! The credential lifecycle on open connections: a connection whose token expires is closed
//! with 4401 (reconnect with fresh credentials) unless it sent a `refresh` with a new token for
//! the same user first; a refresh re-reads the permissions. The expiry times sit in one ordered
//! set, touched on connect, close and refresh only; the manager's sweeper thread closes what is
//! due ([`crate::Manager::enforce_token_expiry`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
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
        return Err("refresh needs JWT authentication or a refresh validator".into());
    };
    let now = UNIX_EPOCH + Duration::from_millis((inner.clock)());
    let claims = jwt
        .verify_at(token, now)
        .map_err(|r| format!("refresh refused: {}", r.as_str()))?;
    let user = jwt
        .user(claims)
        .map_err(|r| format!("refresh refused: {}", r.message))?;
    if user.id() != current.id() {
        count_refused(inner);
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

/// What an async refresh validator ([`crate::ManagerBuilder::refresh_validator`]) sees.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefreshInfo {
    /// The connection.
    pub id: ConnectionId,
    /// Its current user.
    pub user: Arc<crate::UserContext>,
    /// The token the client sent.
    pub token: String,
}

/// What an async refresh validator returns.
pub type RefreshFuture =
    Pin<Box<dyn Future<Output = Result<crate::UserContext, crate::AuthRejection>>>>;

pub(crate) type RefreshFn = dyn Fn(RefreshInfo) -> RefreshFuture + Send + Sync;

/// A renewed user waiting for its core's handler to take it: (manager, connection, user).
type Renewed = (usize, ConnectionId, Arc<crate::UserContext>);

thread_local! {
    // Per core thread: refresh validators run there (spawn_local) and the core's handler
    // applies what they renewed before the next message it handles.
    static RENEWED: RefCell<Vec<Renewed>> = const { RefCell::new(Vec::new()) };
    static ANY_RENEWED: Cell<bool> = const { Cell::new(false) };
    static IN_FLIGHT: RefCell<Vec<ConnectionId>> = const { RefCell::new(Vec::new()) };
}

fn manager_key(inner: &Inner) -> usize {
    inner as *const Inner as usize
}

/// Hands every user renewed for `inner`'s connections on this core to `apply`.
#[inline]
pub(crate) fn apply_refreshed(
    inner: &Arc<Inner>,
    mut apply: impl FnMut(ConnectionId, Arc<crate::UserContext>),
) {
    if !ANY_RENEWED.with(Cell::get) {
        return;
    }
    let key = manager_key(inner);
    RENEWED.with(|r| {
        let mut r = r.borrow_mut();
        r.retain(|(k, id, user)| {
            if *k == key {
                apply(*id, user.clone());
                false
            } else {
                true
            }
        });
        ANY_RENEWED.with(|a| a.set(!r.is_empty()));
    });
}

/// Drops what was pending for a connection that closed (its slot may be reused).
pub(crate) fn forget(id: ConnectionId) {
    if ANY_RENEWED.with(Cell::get) {
        RENEWED.with(|r| r.borrow_mut().retain(|(_, c, _)| *c != id));
    }
    IN_FLIGHT.with(|f| f.borrow_mut().retain(|c| *c != id));
}

/// Starts an async refresh of connection `id` (on its core): the validator's answer renews
/// the connection's user and expiry and is answered with `refreshed`, or refused with the
/// validator's reason. One at a time per connection.
pub(crate) fn refresh_async(
    inner: &Arc<Inner>,
    validator: &Arc<RefreshFn>,
    id: ConnectionId,
    current: Arc<crate::UserContext>,
    token: String,
    reply_id: Option<String>,
) -> Result<(), String> {
    let engine = inner
        .engine
        .get()
        .cloned()
        .ok_or("refresh needs an attached engine")?;
    let busy = IN_FLIGHT.with(|f| {
        let mut f = f.borrow_mut();
        if f.contains(&id) {
            true
        } else {
            f.push(id);
            false
        }
    });
    if busy {
        count_refused(inner);
        return Err("refresh refused: one is already in progress".into());
    }
    let fut = validator(RefreshInfo {
        id,
        user: current.clone(),
        token,
    });
    let inner = inner.clone();
    tokio::task::spawn_local(async move {
        let outcome = tokio::time::timeout(inner.settings.auth_timeout, fut).await;
        let still_open = IN_FLIGHT.with(|f| {
            let mut f = f.borrow_mut();
            let had = f.contains(&id);
            f.retain(|c| *c != id);
            had
        });
        if !still_open {
            return; // closed meanwhile: nothing to renew
        }
        let answer = match outcome {
            Ok(Ok(user)) if user.id() == current.id() => {
                let user = Arc::new(user);
                let until = user.expires_at_ms();
                replace_expiry(&inner, id, current.expires_at_ms(), until);
                RENEWED.with(|r| r.borrow_mut().push((manager_key(&inner), id, user)));
                ANY_RENEWED.with(|a| a.set(true));
                let data = match until {
                    Some(at) => format!(r#"{{"expires_at":{at}}}"#),
                    None => r#"{"expires_at":null}"#.to_string(),
                };
                crate::json::envelope("refreshed", reply_id.as_deref(), Some(&data))
            }
            Ok(Ok(_)) => {
                count_refused(&inner);
                refused(reply_id.as_deref(), "the token is for another user")
            }
            Ok(Err(rej)) => {
                count_refused(&inner);
                refused(reply_id.as_deref(), &rej.message)
            }
            Err(_) => {
                count_refused(&inner);
                refused(reply_id.as_deref(), "the validator timed out")
            }
        };
        engine.send_text(id, &answer);
    });
    Ok(())
}

fn count_refused(inner: &Inner) {
    inner
        .stats
        .refresh_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn refused(id: Option<&str>, why: &str) -> String {
    crate::json::error_envelope(id, &format!("refresh refused: {why}"), None, "")
}
