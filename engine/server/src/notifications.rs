//! Per-user notifications: an inbox per user (id, type, title, body, data, timestamp,
//! delivered, read) kept in the durable store, delivered at once to every open connection of
//! the user on every core, else when they next connect, in order.
//!
//! One notification thread owns every inbox: the cores and any thread hand it requests through
//! a queue and never touch the disk. It loads a user's inbox from the store on first use,
//! writes every change through the store (a new notification is acknowledged only once it is
//! durable, and delivered only then), and delivers with
//! [`edge_ws::EngineHandle::with_connection`], so a notification is marked delivered only when
//! it was queued to at least one open connection. Wire format: docs/PROTOCOL.md, §
//! "Notifications".

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use edge_ws::ConnectionId;
use serde::{Deserialize, Serialize};

use crate::store::{StoreHandle, Table};
use crate::{wall_ms, Inner, Manager};

/// Notification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationConfig {
    /// Most notifications kept per user (the seed's `maxNotifications`); the oldest are
    /// deleted (and counted) to make room.
    pub max_per_user: usize,
    /// Notifications older than this are deleted (the seed's `ttl`); `None` keeps them.
    pub ttl: Option<Duration>,
    /// Largest notification (title + body + data), in bytes.
    pub max_bytes: usize,
    /// Most notifications one list request returns.
    pub max_page: usize,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        NotificationConfig {
            max_per_user: 1000,
            ttl: Some(Duration::from_secs(30 * 24 * 3600)),
            max_bytes: 16 * 1024,
            max_page: 100,
        }
    }
}

/// A notification to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewNotification {
    /// Its type (e.g. `"mention"`).
    pub kind: String,
    /// A title.
    pub title: String,
    /// A body.
    pub body: String,
    /// Application data, raw JSON (`None`: `null`).
    pub data: Option<String>,
}

/// A stored notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Its id (per user, increasing: newer is larger).
    pub id: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The title.
    pub title: String,
    /// The body.
    pub body: String,
    /// Application data (raw JSON).
    pub data: Box<serde_json::value::RawValue>,
    /// When it was sent (ms since the Unix epoch).
    pub timestamp: u64,
    /// Queued to at least one open connection of the user.
    pub delivered: bool,
    /// Marked read by the user.
    pub read: bool,
}

/// Why a notification request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// The request is malformed (sizes, page bounds, user id).
    #[error("{0}")]
    Invalid(String),
    /// Some ids are not in the user's inbox.
    #[error("unknown notification ids: {0:?}")]
    UnknownIds(Vec<u64>),
    /// The store refused or failed the write (nothing was changed).
    #[error("store: {0}")]
    Store(String),
    /// The notification thread is gone.
    #[error("notifications stopped")]
    Stopped,
}

/// A page of a user's inbox, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// The notifications.
    pub items: Vec<Notification>,
    /// The user's unread count.
    pub unread: usize,
    /// Pass as `before` for the next page (`None`: no more).
    pub next_before: Option<u64>,
}

/// A list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Most items (1..=`max_page`).
    pub limit: usize,
    /// Only ids below this (the previous page's `next_before`).
    pub before: Option<u64>,
    /// Skip this many (offset paging; with `before`, after it).
    pub offset: usize,
    /// Unread ones only.
    pub unread_only: bool,
}

/// Which notifications a mark request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids (all must exist).
    Ids(Vec<u64>),
    /// All of the user's.
    All,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotificationStats {
    /// Sent and durable.
    pub sent: u64,
    /// Delivered (queued to an open connection).
    pub delivered: u64,
    /// Deleted to make room under `max_per_user`.
    pub evicted: u64,
    /// Deleted by the TTL.
    pub expired: u64,
    /// Store failures answered to a sender or a request.
    pub store_errors: u64,
}

type Done<T> = Box<dyn FnOnce(Result<T, NotificationError>) + Send>;

enum Req {
    Send {
        user: String,
        n: NewNotification,
        done: Done<u64>,
    },
    Committed {
        user: Arc<str>,
        id: u64,
        result: Result<(), NotificationError>,
        done: Done<u64>,
    },
    Delivered {
        user: Arc<str>,
        id: u64,
    },
    Connected {
        user: Arc<str>,
        conn: ConnectionId,
    },
    List {
        user: String,
        query: ListQuery,
        done: Done<Page>,
    },
    Mark {
        user: String,
        which: Selection,
        read: bool,
        done: Done<usize>,
    },
    Marked {
        result: Result<(), NotificationError>,
        changed: usize,
        done: Done<usize>,
    },
    Stats(Done<NotificationStats>),
}

/// The handle to the notification thread (`Send + Sync + Clone`). Give it to the manager
/// with [`crate::ManagerBuilder::notifications`].
#[derive(Clone)]
pub struct Notifications {
    tx: Arc<Mutex<Sender<Req>>>,
    manager: Arc<OnceLock<Weak<Inner>>>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl Notifications {
    /// Starts the notification thread over `store` (inboxes live in its `notifications`
    /// table).
    pub fn start(store: StoreHandle, config: NotificationConfig) -> Notifications {
        let (tx, rx) = mpsc::channel();
        let manager: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let n = Notifications {
            tx: Arc::new(Mutex::new(tx.clone())),
            manager: manager.clone(),
        };
        let worker = Worker {
            store,
            config,
            tx,
            manager,
            inboxes: HashMap::new(),
            stats: NotificationStats::default(),
        };
        let _ = std::thread::Builder::new()
            .name("edge-ws-notify".into())
            .spawn(move || worker.run(rx));
        n
    }

    pub(crate) fn attach(&self, inner: &Arc<Inner>) {
        let _ = self.manager.set(Arc::downgrade(inner));
    }

    fn push(&self, r: Req) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::SendError(r)) = tx.send(r) {
            r.fail();
        }
    }

    /// Sends `n` to `user`: `done` gets its id once it is durable (then it is delivered to
    /// every open connection of the user, or kept pending until they connect). Any thread;
    /// `done` runs on the notification thread.
    pub fn send(
        &self,
        user: &str,
        n: NewNotification,
        done: impl FnOnce(Result<u64, NotificationError>) + Send + 'static,
    ) {
        self.push(Req::Send {
            user: user.to_string(),
            n,
            done: Box::new(done),
        });
    }

    /// [`Notifications::send`], waiting for the id (not on a core).
    pub fn send_blocking(&self, user: &str, n: NewNotification) -> Result<u64, NotificationError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(user, n, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(NotificationError::Stopped))
    }

    /// A page of `user`'s inbox, newest first.
    pub fn list(
        &self,
        user: &str,
        query: ListQuery,
        done: impl FnOnce(Result<Page, NotificationError>) + Send + 'static,
    ) {
        self.push(Req::List {
            user: user.to_string(),
            query,
            done: Box::new(done),
        });
    }

    /// [`Notifications::list`], waiting (not on a core).
    pub fn list_blocking(&self, user: &str, query: ListQuery) -> Result<Page, NotificationError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.list(user, query, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(NotificationError::Stopped))
    }

    /// Marks `which` of `user`'s notifications read (`read`) or delivered; `done` gets how
    /// many changed (once durable).
    pub fn mark(
        &self,
        user: &str,
        which: Selection,
        read: bool,
        done: impl FnOnce(Result<usize, NotificationError>) + Send + 'static,
    ) {
        self.push(Req::Mark {
            user: user.to_string(),
            which,
            read,
            done: Box::new(done),
        });
    }

    /// The counters.
    pub fn stats(&self) -> NotificationStats {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(Req::Stats(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.recv().ok().and_then(Result::ok).unwrap_or_default()
    }

    /// A connection of `user` opened (the manager calls it): pending ones go to it.
    pub(crate) fn connected(&self, user: &Arc<str>, conn: ConnectionId) {
        self.push(Req::Connected {
            user: user.clone(),
            conn,
        });
    }
}

impl Req {
    fn fail(self) {
        match self {
            Req::Send { done, .. } | Req::Committed { done, .. } => {
                done(Err(NotificationError::Stopped))
            }
            Req::List { done, .. } => done(Err(NotificationError::Stopped)),
            Req::Mark { done, .. } | Req::Marked { done, .. } => {
                done(Err(NotificationError::Stopped))
            }
            Req::Stats(done) => done(Err(NotificationError::Stopped)),
            Req::Delivered { .. } | Req::Connected { .. } => {}
        }
    }
}

struct Inbox {
    items: BTreeMap<u64, Notification>,
    next_id: u64,
    unread: usize,
}

struct Worker {
    store: StoreHandle,
    config: NotificationConfig,
    tx: Sender<Req>,
    manager: Arc<OnceLock<Weak<Inner>>>,
    inboxes: HashMap<Arc<str>, Inbox>,
    stats: NotificationStats,
}

/// `len(user) ∥ user ∥ id` (big-endian), so a user's notifications are one key range in id
/// order.
fn key(user: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 10);
    k.extend_from_slice(&(user.len() as u16).to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k
}

fn store_err(e: crate::store::StoreError) -> NotificationError {
    NotificationError::Store(e.to_string())
}

/// The push a connection gets for a notification.
pub(crate) fn push_json(n: &Notification) -> String {
    format!(
        r#"{{"type":"notification","data":{}}}"#,
        serde_json::to_string(n).unwrap_or_default()
    )
}

fn unread_json(unread: usize) -> String {
    format!(r#"{{"type":"notifications.unread","data":{{"count":{unread}}}}}"#)
}

impl Worker {
    fn run(mut self, rx: Receiver<Req>) {
        while let Ok(r) = rx.recv() {
            self.handle(r);
        }
    }

    fn manager(&self) -> Option<Manager> {
        self.manager
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Manager { inner })
    }

    fn handle(&mut self, r: Req) {
        match r {
            Req::Send { user, n, done } => self.send(&user, n, done),
            Req::Committed {
                user,
                id,
                result,
                done,
            } => match result {
                Ok(()) => {
                    self.stats.sent += 1;
                    done(Ok(id));
                    self.deliver_new(&user, id);
                }
                Err(e) => {
                    self.stats.store_errors += 1;
                    if let Some(inbox) = self.inboxes.get_mut(&user) {
                        if inbox.items.remove(&id).is_some() {
                            inbox.unread -= 1;
                        }
                    }
                    done(Err(e));
                }
            },
            Req::Delivered { user, id } => {
                let Some(inbox) = self.inboxes.get_mut(&user) else {
                    return;
                };
                let Some(n) = inbox.items.get_mut(&id) else {
                    return;
                };
                if !n.delivered {
                    n.delivered = true;
                    self.stats.delivered += 1;
                    let v = serde_json::to_vec(&*n).unwrap_or_default();
                    let _ =
                        self.store
                            .put(Table::Notifications, &key(&user, id), v, Box::new(|_| {}));
                }
            }
            Req::Connected { user, conn } => {
                if let Err(e) = self.load(&user) {
                    tracing::warn!(user = %user, error = %e, "notifications not loaded");
                    return;
                }
                let inbox = &self.inboxes[&user];
                let pending: Vec<Notification> = inbox
                    .items
                    .values()
                    .filter(|n| !n.delivered)
                    .cloned()
                    .collect();
                let unread = inbox.unread;
                let Some(m) = self.manager() else { return };
                let Some(engine) = m.engine().cloned() else {
                    return;
                };
                for n in pending {
                    self.deliver_to(&engine, &user, conn, &n);
                }
                engine.send_text(conn, &unread_json(unread));
            }
            Req::List { user, query, done } => done(self.list(&user, query)),
            Req::Mark {
                user,
                which,
                read,
                done,
            } => self.mark(&user, which, read, done),
            Req::Marked {
                result,
                changed,
                done,
            } => {
                if result.is_err() {
                    self.stats.store_errors += 1;
                }
                done(result.map(|()| changed))
            }
            Req::Stats(done) => done(Ok(self.stats)),
        }
    }

    /// Loads `user`'s inbox from the store (once), dropping expired notifications.
    fn load(&mut self, user: &str) -> Result<Arc<str>, NotificationError> {
        if let Some((k, _)) = self.inboxes.get_key_value(user) {
            let k = k.clone();
            self.expire(&k);
            return Ok(k);
        }
        if user.is_empty() || user.len() > u16::MAX as usize {
            return Err(NotificationError::Invalid("bad user id".into()));
        }
        let rows = self
            .store
            .range(
                Table::Notifications,
                &prefix(user),
                None,
                usize::MAX,
                crate::store::Order::Ascending,
            )
            .map_err(store_err)?;
        let mut items = BTreeMap::new();
        for (_, v) in rows {
            if let Ok(n) = serde_json::from_slice::<Notification>(&v) {
                items.insert(n.id, n);
            }
        }
        let next_id = items.keys().next_back().map_or(1, |id| id + 1);
        let unread = items.values().filter(|n| !n.read).count();
        let k: Arc<str> = user.into();
        self.inboxes.insert(
            k.clone(),
            Inbox {
                items,
                next_id,
                unread,
            },
        );
        self.expire(&k);
        Ok(k)
    }

    fn expire(&mut self, user: &Arc<str>) {
        let Some(ttl) = self.config.ttl else { return };
        let oldest = wall_ms().saturating_sub(ttl.as_millis() as u64);
        let Some(inbox) = self.inboxes.get_mut(user) else {
            return;
        };
        let old: Vec<u64> = inbox
            .items
            .values()
            .take_while(|n| n.timestamp < oldest)
            .map(|n| n.id)
            .collect();
        for id in old {
            if let Some(n) = inbox.items.remove(&id) {
                if !n.read {
                    inbox.unread -= 1;
                }
                self.stats.expired += 1;
                let _ = self
                    .store
                    .delete(Table::Notifications, &key(user, id), Box::new(|_| {}));
            }
        }
    }

    fn send(&mut self, user: &str, n: NewNotification, done: Done<u64>) {
        let data = n.data.as_deref().unwrap_or("null");
        let size = n.title.len() + n.body.len() + n.kind.len() + data.len();
        if size > self.config.max_bytes {
            return done(Err(NotificationError::Invalid(format!(
                "a notification is at most {} bytes, got {size}",
                self.config.max_bytes
            ))));
        }
        if n.kind.is_empty() {
            return done(Err(NotificationError::Invalid(
                "a notification needs a type".into(),
            )));
        }
        let Ok(data) = serde_json::value::RawValue::from_string(data.to_string()) else {
            return done(Err(NotificationError::Invalid(
                "notification data is not JSON".into(),
            )));
        };
        let user = match self.load(user) {
            Ok(u) => u,
            Err(e) => return done(Err(e)),
        };
        let max = self.config.max_per_user.max(1);
        let inbox = self.inboxes.get_mut(&user).expect("loaded");
        // Make room: the oldest go first.
        while inbox.items.len() >= max {
            let Some((id, old)) = inbox.items.pop_first() else {
                break;
            };
            if !old.read {
                inbox.unread -= 1;
            }
            self.stats.evicted += 1;
            let _ = self
                .store
                .delete(Table::Notifications, &key(&user, id), Box::new(|_| {}));
        }
        let id = inbox.next_id;
        inbox.next_id += 1;
        let rec = Notification {
            id,
            kind: n.kind,
            title: n.title,
            body: n.body,
            data,
            timestamp: wall_ms(),
            delivered: false,
            read: false,
        };
        let v = serde_json::to_vec(&rec).unwrap_or_default();
        inbox.items.insert(id, rec);
        inbox.unread += 1;
        let tx = self.tx.clone();
        let u = user.clone();
        // The sender is answered by the ack, or here if the store refuses the write at once
        // (then the ack is never called).
        let slot = Arc::new(Mutex::new(Some(done)));
        let s2 = slot.clone();
        let ack = Box::new(move |r: Result<(), crate::store::StoreError>| {
            if let Some(done) = s2.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(Req::Committed {
                    user: u,
                    id,
                    result: r.map_err(store_err),
                    done,
                });
            }
        });
        if let Err(e) = self
            .store
            .put(Table::Notifications, &key(&user, id), v, ack)
        {
            self.stats.store_errors += 1;
            let inbox = self.inboxes.get_mut(&user).expect("loaded");
            inbox.items.remove(&id);
            inbox.unread -= 1;
            if let Some(done) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                done(Err(store_err(e)));
            }
        }
    }

    /// A durable new notification: to every open connection of its user.
    fn deliver_new(&mut self, user: &Arc<str>, id: u64) {
        let Some(n) = self
            .inboxes
            .get(user)
            .and_then(|i| i.items.get(&id))
            .cloned()
        else {
            return;
        };
        let unread = self.inboxes[user].unread;
        let Some(m) = self.manager() else { return };
        let Some(engine) = m.engine().cloned() else {
            return;
        };
        let local = m.user_sockets(user);
        for &conn in &local {
            self.deliver_to(&engine, user, conn, &n);
            engine.send_text(conn, &unread_json(unread));
        }
        // In a cluster: to the user's connections on the other nodes too. It counts as
        // delivered when the cluster presence shows connections beyond this node's.
        if let Some(c) = m.inner.cluster.get() {
            c.send_to_user(user, &push_json(&n));
            c.send_to_user(user, &unread_json(unread));
            let (tx, u, id, here) = (self.tx.clone(), user.clone(), n.id, local.len());
            c.user_presence(user, move |r| {
                if r.is_ok_and(|p| p.is_some_and(|p| p.connections as usize > here)) {
                    let _ = tx.send(Req::Delivered { user: u, id });
                }
            });
        }
    }

    fn deliver_to(
        &self,
        engine: &edge_ws::EngineHandle,
        user: &Arc<str>,
        conn: ConnectionId,
        n: &Notification,
    ) {
        let text = push_json(n);
        let (tx, user, id) = (self.tx.clone(), user.clone(), n.id);
        engine.with_connection(conn, move |s| {
            if let Some(s) = s {
                if s.send_text(&text).is_ok() {
                    let _ = tx.send(Req::Delivered { user, id });
                }
            }
        });
    }

    fn list(&mut self, user: &str, q: ListQuery) -> Result<Page, NotificationError> {
        if q.limit == 0 || q.limit > self.config.max_page {
            return Err(NotificationError::Invalid(format!(
                "limit must be 1 to {}",
                self.config.max_page
            )));
        }
        let user = self.load(user)?;
        let inbox = &self.inboxes[&user];
        let hi = q.before.unwrap_or(u64::MAX);
        let mut it = inbox
            .items
            .range(..hi)
            .rev()
            .map(|(_, n)| n)
            .filter(|n| !q.unread_only || !n.read)
            .skip(q.offset);
        let items: Vec<Notification> = it.by_ref().take(q.limit).cloned().collect();
        let more = it.next().is_some();
        Ok(Page {
            next_before: if more {
                items.last().map(|n| n.id)
            } else {
                None
            },
            items,
            unread: inbox.unread,
        })
    }

    /// Marks `which`; answers once the commit holding the last change is durable.
    fn mark(&mut self, user: &str, which: Selection, read: bool, done: Done<usize>) {
        let user = match self.load(user) {
            Ok(u) => u,
            Err(e) => return done(Err(e)),
        };
        let inbox = self.inboxes.get_mut(&user).expect("loaded");
        let ids: Vec<u64> = match which {
            Selection::All => inbox.items.keys().copied().collect(),
            Selection::Ids(ids) => {
                let unknown: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !inbox.items.contains_key(id))
                    .collect();
                if !unknown.is_empty() {
                    return done(Err(NotificationError::UnknownIds(unknown)));
                }
                ids
            }
        };
        let mut writes = Vec::new();
        for id in ids {
            let n = inbox.items.get_mut(&id).expect("checked");
            let before = (n.read, n.delivered);
            if read && !n.read {
                inbox.unread -= 1;
                n.read = true;
            }
            n.delivered = true;
            if before != (n.read, n.delivered) {
                writes.push((key(&user, id), serde_json::to_vec(&*n).unwrap_or_default()));
            }
        }
        let changed = writes.len();
        if read && changed > 0 {
            let text = unread_json(inbox.unread);
            if let Some(m) = self.manager() {
                // Every connection of the user, on every node of a cluster.
                m.send_to_user(&user, &text);
            }
        }
        let Some(last) = writes.pop() else {
            return done(Ok(0));
        };
        for (k, v) in writes {
            let _ = self
                .store
                .put(Table::Notifications, &k, v, Box::new(|_| {}));
        }
        let tx = self.tx.clone();
        let slot = Arc::new(Mutex::new(Some(done)));
        let s2 = slot.clone();
        let ack = Box::new(move |r: Result<(), crate::store::StoreError>| {
            if let Some(done) = s2.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(Req::Marked {
                    result: r.map_err(store_err),
                    changed,
                    done,
                });
            }
        });
        if let Err(e) = self.store.put(Table::Notifications, &last.0, last.1, ack) {
            if let Some(done) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                done(Err(store_err(e)));
            }
        }
    }
}

/// A page as the `notifications` reply's data.
pub(crate) fn page_json(p: &Page) -> String {
    let mut d = String::from(r#"{"items":"#);
    d.push_str(&serde_json::to_string(&p.items).unwrap_or_default());
    let _ = write!(d, r#","unread":{},"next_before":"#, p.unread);
    match p.next_before {
        Some(b) => {
            let _ = write!(d, "{b}");
        }
        None => d.push_str("null"),
    }
    d.push('}');
    d
}
