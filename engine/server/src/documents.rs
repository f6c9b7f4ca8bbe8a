//! Collaborative documents: operational transform (`edge_ws_ot`, ot.js semantics, UTF-16
//! positions) with one sequencer per document, the revision log and snapshots in the durable
//! store, cursors and selections transformed with the text, members announced.
//!
//! **One sequencer.** Every document is owned by the documents thread (like the notification
//! thread): edits from any core reach it through a queue and are handled one at a time, so a
//! document's revisions are totally ordered without a lock; the cores spend no CPU on
//! transforms. The thread answers and broadcasts through the engine's handle, whose per-thread
//! order means every member receives the revisions in order. (A document per core, as the
//! channels' owner cores do, would spread many hot documents over the cores; one thread keeps
//! the design simple until a single thread's ~millions of transforms per second is the limit.)
//!
//! **Edits.** `{doc, revision, op}`: `op` was made against `revision`; it is transformed
//! against every newer operation in the log, checked (base length, size limit), applied, made
//! durable (its log record committed), then acknowledged to its sender and broadcast to the
//! other members with the new revision. Anything wrong is answered with a clear error to that
//! client only; the document is unchanged.
//!
//! **Catch-up.** A client that rejoins with the revision it has receives the operations since
//! (from the log, which keeps the last `max_log` operations), or the whole text at the current
//! revision when the log no longer reaches back (a snapshot). Snapshots are written every
//! `snapshot_every` revisions; the store keeps the operations after the last snapshot.
//! Wire format: docs/PROTOCOL.md, § "Collaborative documents".
//!
//! **In a cluster** (the engine has a broker) Redis is every document's sequencer, so there
//! is no owner node to fail over: each node with members of a document keeps a copy, an edit
//! is transformed against the node's copy and appended with the broker's compare-and-append
//! ([`Broker::log_append`]: accepted only as revision `last + 1`, kept in Redis with snapshots,
//! published to the document's channel `doc#<id>`); on a conflict the node reads the
//! revisions it lacks ([`Broker::log_append`]'s refusal, then [`Broker::log_read`]), transforms
//! again and retries. Every node applies the revisions in Redis's order as they arrive on
//! the channel (a gap is filled from the log) and sends them to its members; the appending
//! node acknowledges its sender. Members, cursors and join/leave events span the nodes
//! through the broker's presence and the document's channel. The local store is not used for
//! documents then. See docs/CLUSTER.md.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edge_ws::broker::{Broker, BrokerError, LogRead, PresenceMember};
use edge_ws::stream::LocalSubscription;
use edge_ws::{ConnectionId, EngineHandle};
use edge_ws_ot::{Selection, TextOperation};
use serde::{Deserialize, Serialize};

use crate::store::{Order, StoreHandle, Table};

/// Document settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentConfig {
    /// Largest document, in UTF-16 code units.
    pub max_len: usize,
    /// Operations kept in memory for catch-up and transforms.
    pub max_log: usize,
    /// A snapshot every this many revisions.
    pub snapshot_every: u64,
    /// Longest document id, in bytes.
    pub max_id_len: usize,
}

impl Default for DocumentConfig {
    fn default() -> Self {
        DocumentConfig {
            max_len: 1 << 20,
            max_log: 1000,
            snapshot_every: 100,
            max_id_len: 128,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DocumentStats {
    /// Edits applied.
    pub applied: u64,
    /// Edits transformed against at least one concurrent operation (in a cluster: per append
    /// attempt).
    pub transformed: u64,
    /// Edits refused (bad op, bad revision, too large, not a member).
    pub refused: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Store failures (in a cluster: broker failures).
    pub store_errors: u64,
    /// Cluster: appends refused because another node took the revision first (the edit was
    /// transformed again and retried).
    pub conflicts: u64,
}

enum Req {
    Join {
        doc: String,
        conn: ConnectionId,
        user: Option<String>,
        since: Option<u64>,
        msg_id: Option<String>,
    },
    Leave {
        doc: String,
        conn: ConnectionId,
        msg_id: Option<String>,
    },
    Closed {
        conn: ConnectionId,
    },
    Edit {
        doc: String,
        conn: ConnectionId,
        revision: u64,
        op: String,
        msg_id: Option<String>,
        received: std::time::Instant,
    },
    Committed {
        doc: Arc<str>,
        revision: u64,
        result: Result<(), String>,
    },
    Cursor {
        doc: String,
        conn: ConnectionId,
        revision: u64,
        selection: String,
    },
    Text {
        doc: String,
        done: mpsc::SyncSender<Option<(u64, String)>>,
    },
    Stats(mpsc::SyncSender<DocumentStats>),
    /// Cluster: a message on a document's channel (a revision, a cursor, an event).
    Remote {
        doc: Arc<str>,
        data: Bytes,
    },
    /// Cluster: the broker's answer to the append of the edit `token`.
    Appended {
        doc: Arc<str>,
        token: u64,
        result: Result<Result<u64, u64>, BrokerError>,
    },
    /// Cluster: the revisions this node lacked after `after`.
    Filled {
        doc: Arc<str>,
        after: u64,
        result: Result<LogRead, BrokerError>,
    },
    /// Cluster: the members of a document on every node, for a join's answer.
    Joined {
        doc: Arc<str>,
        conn: ConnectionId,
        user: Option<String>,
        since: Option<u64>,
        msg_id: Option<String>,
        list: Result<Vec<PresenceMember>, BrokerError>,
    },
    /// Cluster: the members after `user`'s last connection here left (for `doc.user_left`).
    Left {
        doc: Arc<str>,
        user: String,
        client: String,
        list: Result<Vec<PresenceMember>, BrokerError>,
    },
}

/// Where the edit → ack time goes (see [`Documents::ack_stages`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AckStages {
    /// The edit's arrival on its connection's core → the documents thread takes it (the
    /// queue, and the thread's wake-up).
    pub queued: crate::store::LatencyStats,
    /// The documents thread hands the log record to the store → it learns that the record is
    /// durable (the store's queue and group commit, the fsync, the answer's way back). Single
    /// node only: in a cluster the sequencing is Redis's and only the total is measured.
    pub durable: crate::store::LatencyStats,
}

struct Histograms {
    ack: crate::store::stats::Histogram,
    queued: crate::store::stats::Histogram,
    durable: crate::store::stats::Histogram,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            ack: crate::store::stats::Histogram::new(),
            queued: crate::store::stats::Histogram::new(),
            durable: crate::store::stats::Histogram::new(),
        }
    }
}

/// The handle to the documents thread (`Send + Sync + Clone`).
#[derive(Clone)]
pub struct Documents {
    tx: Arc<Mutex<Sender<Req>>>,
    latency: Arc<Histograms>,
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documents").finish_non_exhaustive()
    }
}

impl Documents {
    /// Starts the documents thread over `store`, answering through `engine`. With an engine
    /// that has a broker, documents are sequenced in Redis for the whole cluster (see the
    /// module docs) and `store` is not used for them.
    pub fn start(store: StoreHandle, engine: EngineHandle, config: DocumentConfig) -> Documents {
        let node = crate::cluster::node_id();
        Documents::start_in(store, engine, config, node)
    }

    /// [`Documents::start`] with this node's id in the cluster (the manager's).
    pub(crate) fn start_in(
        store: StoreHandle,
        engine: EngineHandle,
        config: DocumentConfig,
        node: String,
    ) -> Documents {
        let cluster = engine.broker().map(|b| DocCluster {
            broker: b.clone(),
            node,
            subs: HashMap::new(),
            next_token: 0,
            joins: HashMap::new(),
        });
        let (tx, rx) = mpsc::channel();
        let latency = Arc::new(Histograms::new());
        let w = Worker {
            latency: latency.clone(),
            store,
            engine,
            config,
            tx: tx.clone(),
            docs: HashMap::new(),
            member_of: HashMap::new(),
            stats: DocumentStats::default(),
            cluster,
        };
        let _ = std::thread::Builder::new()
            .name("edge-ws-docs".into())
            .spawn(move || w.run(rx));
        Documents {
            tx: Arc::new(Mutex::new(tx)),
            latency,
        }
    }

    /// Server-side time from an edit's arrival on its connection's core to its `doc.ack`
    /// being handed to the engine: the documents thread's queue, transform and apply, and
    /// the log record's commit (fsync).
    pub fn ack_latency(&self) -> crate::store::LatencyStats {
        self.latency.ack.snapshot()
    }

    /// [`ack_latency`](Documents::ack_latency) in stages: the way to the documents thread,
    /// and the wait for durability (the rest, transform and apply, is the difference).
    pub fn ack_stages(&self) -> AckStages {
        AckStages {
            queued: self.latency.queued.snapshot(),
            durable: self.latency.durable.snapshot(),
        }
    }

    fn push(&self, r: Req) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(r);
    }

    /// The text and revision of `doc` (`None` for an invalid id; an unknown document is
    /// empty at revision 0).
    pub fn text(&self, doc: &str) -> Option<(u64, String)> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(Req::Text {
            doc: doc.to_string(),
            done: tx,
        });
        rx.recv().ok().flatten()
    }

    /// The counters.
    pub fn stats(&self) -> DocumentStats {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(Req::Stats(tx));
        rx.recv().unwrap_or_default()
    }

    pub(crate) fn join(
        &self,
        doc: &str,
        conn: ConnectionId,
        user: Option<&str>,
        since: Option<u64>,
        msg_id: Option<&str>,
    ) {
        self.push(Req::Join {
            doc: doc.into(),
            conn,
            user: user.map(Into::into),
            since,
            msg_id: msg_id.map(Into::into),
        });
    }

    pub(crate) fn leave(&self, doc: &str, conn: ConnectionId, msg_id: Option<&str>) {
        self.push(Req::Leave {
            doc: doc.into(),
            conn,
            msg_id: msg_id.map(Into::into),
        });
    }

    pub(crate) fn closed(&self, conn: ConnectionId) {
        self.push(Req::Closed { conn });
    }

    pub(crate) fn edit(
        &self,
        doc: &str,
        conn: ConnectionId,
        revision: u64,
        op: &str,
        msg_id: Option<&str>,
    ) {
        self.push(Req::Edit {
            doc: doc.into(),
            conn,
            revision,
            op: op.into(),
            msg_id: msg_id.map(Into::into),
            received: std::time::Instant::now(),
        });
    }

    pub(crate) fn cursor(&self, doc: &str, conn: ConnectionId, revision: u64, selection: &str) {
        self.push(Req::Cursor {
            doc: doc.into(),
            conn,
            revision,
            selection: selection.into(),
        });
    }
}

struct Member {
    user: Option<String>,
    selection: Option<Selection>,
}

struct Pending {
    conn: ConnectionId,
    msg_id: Option<String>,
    op: TextOperation,
    received: std::time::Instant,
    /// When its log record went to the store (in a cluster: when it was queued; unused).
    stored: std::time::Instant,
}

/// Cluster: an edit waiting for its append, with the revision its op is against.
struct Queued {
    token: u64,
    base: u64,
    p: Pending,
}

struct Doc {
    text: String,
    /// UTF-16 length of `text`.
    len16: usize,
    revision: u64,
    /// `(revision it produced, op)`, the newest last; reaches back to `log_start + 1`.
    log: VecDeque<(u64, TextOperation)>,
    members: HashMap<ConnectionId, Member>,
    /// Edits applied in memory whose log record is not durable yet: acknowledged and broadcast
    /// once it is, in revision order.
    unacked: VecDeque<(u64, Pending)>,
    /// A commit failed: the document refuses edits (its memory is ahead of the disk).
    failed: bool,
    /// The text and revision members have been told of (durable): what a joiner starts from,
    /// since the revisions after it reach every member as broadcasts.
    committed_text: String,
    committed_rev: u64,
    /// Cluster: edits waiting to be appended, oldest first (one is in flight at a time).
    queue: VecDeque<Queued>,
    inflight: Option<Queued>,
    /// Cluster: a read of the revisions this node lacks is under way.
    filling: bool,
    /// Cluster: joins waiting for the member list (the document stays loaded for them).
    joining: usize,
}

impl Doc {
    fn new(text: String, revision: u64) -> Doc {
        Doc {
            len16: text.encode_utf16().count(),
            committed_text: text.clone(),
            text,
            revision,
            committed_rev: revision,
            log: VecDeque::new(),
            members: HashMap::new(),
            unacked: VecDeque::new(),
            failed: false,
            queue: VecDeque::new(),
            inflight: None,
            filling: false,
            joining: 0,
        }
    }

    /// The oldest revision an op may be made against.
    fn log_start(&self) -> u64 {
        self.log.front().map_or(self.revision, |(r, _)| r - 1)
    }

    /// The start of a `doc.joined` reply's data, `{"doc","revision"` and then the operations
    /// after `since` when the log still reaches back to it, the committed text otherwise
    /// (left open for the members).
    fn joined_json(&self, doc: &str, since: Option<u64>) -> String {
        let now = self.committed_rev;
        let mut data = format!(r#"{{"doc":{},"revision":{now}"#, json_str(doc));
        match since {
            Some(s) if s <= now && s >= self.log_start() => {
                data.push_str(r#","ops":["#);
                let ops = self.log.iter().filter(|(r, _)| *r > s && *r <= now);
                for (i, (r, op)) in ops.enumerate() {
                    if i > 0 {
                        data.push(',');
                    }
                    let _ = write!(data, r#"{{"revision":{r},"op":{}}}"#, op.to_json());
                }
                data.push(']');
            }
            _ => {
                let _ = write!(data, r#","text":{}"#, json_str(&self.committed_text));
            }
        }
        data
    }
}

/// The cluster side of the documents thread.
struct DocCluster {
    broker: Arc<dyn Broker>,
    node: String,
    /// The subscription to the channel of each document loaded here.
    subs: HashMap<Arc<str>, LocalSubscription>,
    next_token: u64,
    /// Connections with joins waiting for the member list: how many, and whether the
    /// connection closed meanwhile (then the joins are dropped when their lists arrive).
    joins: HashMap<ConnectionId, (usize, bool)>,
}

impl DocCluster {
    fn client(&self, conn: ConnectionId) -> String {
        format!("{}:{conn}", self.node)
    }
}

/// A document's channel, log and presence name in a cluster (`doc#<id>`; client routes refuse
/// the prefix).
pub(crate) fn doc_channel(doc: &str) -> String {
    format!("{DOC_CHANNEL_PREFIX}{doc}")
}

/// The prefix of the documents' cluster channels.
pub(crate) const DOC_CHANNEL_PREFIX: &str = "doc#";

/// A message on a document's cluster channel.
#[derive(Deserialize)]
struct Wire<'a> {
    k: &'a str,
    #[serde(default)]
    rev: u64,
    #[serde(borrow, default)]
    op: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    token: u64,
    #[serde(borrow, default)]
    selection: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    except: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MemberInfo {
    user: Option<String>,
    #[serde(default)]
    at: u64,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    revision: u64,
    text: String,
}

struct Worker {
    store: StoreHandle,
    engine: EngineHandle,
    config: DocumentConfig,
    tx: Sender<Req>,
    docs: HashMap<Arc<str>, Doc>,
    /// Per connection, the documents it is in.
    member_of: HashMap<ConnectionId, Vec<Arc<str>>>,
    stats: DocumentStats,
    latency: Arc<Histograms>,
    cluster: Option<DocCluster>,
}

fn key(doc: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(doc.len() + 10);
    k.extend_from_slice(&(doc.len() as u16).to_be_bytes());
    k.extend_from_slice(doc.as_bytes());
    k
}

fn op_key(doc: &str, revision: u64) -> Vec<u8> {
    let mut k = key(doc);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The engine channel a document's members are subscribed to: its name starts with a control
/// character, which client-facing subscriptions refuse, so only members receive it.
fn channel(doc: &str) -> String {
    format!("\u{1}doc:{doc}")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn envelope(kind: &str, id: Option<&str>, data: &str) -> String {
    crate::json::envelope(kind, id, Some(data))
}

fn error(id: Option<&str>, doc: &str, message: &str) -> String {
    crate::json::error_envelope(id, message, None, &format!(r#","doc":{}"#, json_str(doc)))
}

impl Worker {
    fn run(mut self, rx: Receiver<Req>) {
        while let Ok(r) = rx.recv() {
            self.handle(r);
        }
    }

    fn send(&self, conn: ConnectionId, text: &str) {
        self.engine.send_text(conn, text);
    }

    fn handle(&mut self, r: Req) {
        match r {
            Req::Join {
                doc,
                conn,
                user,
                since,
                msg_id,
            } => self.join(&doc, conn, user, since, msg_id.as_deref()),
            Req::Leave { doc, conn, msg_id } => {
                let left = self.leave(&doc, conn);
                let d = format!(r#"{{"doc":{},"was_member":{left}}}"#, json_str(&doc));
                self.send(conn, &envelope("doc.left", msg_id.as_deref(), &d));
            }
            Req::Closed { conn } => {
                if let Some(j) = self.cluster.as_mut().and_then(|c| c.joins.get_mut(&conn)) {
                    j.1 = true;
                }
                for doc in self.member_of.remove(&conn).unwrap_or_default() {
                    self.leave(&doc, conn);
                }
            }
            Req::Edit {
                doc,
                conn,
                revision,
                op,
                msg_id,
                received,
            } => self.edit(&doc, conn, revision, &op, msg_id, received),
            Req::Committed {
                doc,
                revision,
                result,
            } => self.committed(&doc, revision, result),
            Req::Cursor {
                doc,
                conn,
                revision,
                selection,
            } => self.cursor(&doc, conn, revision, &selection),
            Req::Text { doc, done } => {
                let r = self
                    .load(&doc)
                    .ok()
                    .map(|k| (self.docs[&k].revision, self.docs[&k].text.clone()));
                let _ = done.send(r);
                self.forget_idle(&doc);
            }
            Req::Stats(done) => {
                let _ = done.send(self.stats);
            }
            Req::Remote { doc, data } => self.remote(&doc, &data),
            Req::Appended { doc, token, result } => self.appended(&doc, token, result),
            Req::Filled { doc, after, result } => self.filled(&doc, after, result),
            Req::Joined {
                doc,
                conn,
                user,
                since,
                msg_id,
                list,
            } => self.joined(&doc, conn, user, since, msg_id.as_deref(), list),
            Req::Left {
                doc,
                user,
                client,
                list,
            } => self.left(&doc, &user, &client, list),
        }
    }

    /// The document, loaded from its snapshot and the operations after it.
    fn load(&mut self, doc: &str) -> Result<Arc<str>, String> {
        if let Some((k, _)) = self.docs.get_key_value(doc) {
            return Ok(k.clone());
        }
        if doc.is_empty() || doc.len() > self.config.max_id_len {
            return Err(format!(
                "document ids are 1 to {} bytes",
                self.config.max_id_len
            ));
        }
        if self.cluster.is_some() {
            return self.load_cluster(doc);
        }
        let snap = self
            .store
            .get(Table::DocumentSnapshots, &key(doc))
            .map_err(|e| format!("store: {e}"))?
            .and_then(|v| serde_json::from_slice::<Snapshot>(&v).ok())
            .unwrap_or(Snapshot {
                revision: 0,
                text: String::new(),
            });
        let after = op_key(doc, snap.revision);
        let rows = self
            .store
            .range(
                Table::DocumentOps,
                &key(doc),
                Some(&after),
                usize::MAX,
                Order::Ascending,
            )
            .map_err(|e| format!("store: {e}"))?;
        let mut d = Doc::new(snap.text, snap.revision);
        for (k, v) in rows {
            let rev = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or([0; 8]));
            let Ok(op) = TextOperation::from_json(&String::from_utf8_lossy(&v)) else {
                break;
            };
            if rev != d.revision + 1 {
                break;
            }
            let Ok(t) = op.apply(&d.text) else { break };
            d.text = t;
            d.len16 = op.target_len();
            d.revision = rev;
            d.log.push_back((rev, op));
        }
        while d.log.len() > self.config.max_log {
            d.log.pop_front();
        }
        d.committed_text = d.text.clone();
        d.committed_rev = d.revision;
        let k: Arc<str> = doc.into();
        self.docs.insert(k.clone(), d);
        Ok(k)
    }

    fn join(
        &mut self,
        doc: &str,
        conn: ConnectionId,
        user: Option<String>,
        since: Option<u64>,
        msg_id: Option<&str>,
    ) {
        let k = match self.load(doc) {
            Ok(k) => k,
            Err(e) => return self.send(conn, &error(msg_id, doc, &e)),
        };
        if self.cluster.is_some() {
            return self.join_cluster(k, conn, user, since, msg_id);
        }
        let first_of_user = {
            let d = &self.docs[&k];
            user.as_ref()
                .is_some_and(|u| !d.members.values().any(|m| m.user.as_ref() == Some(u)))
        };
        let fresh = self.add_member(&k, conn, user.clone());
        let d = &self.docs[&k];
        let mut data = d.joined_json(doc, since);
        data.push_str(r#","members":["#);
        for (i, (c, m)) in d.members.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            let _ = write!(
                data,
                r#"{{"client":"{c}","user":{},"selection":{}}}"#,
                serde_json::to_string(&m.user).unwrap_or_default(),
                m.selection
                    .as_ref()
                    .map_or("null".into(), Selection::to_json)
            );
        }
        data.push_str("]}");
        self.send(conn, &envelope("doc.joined", msg_id, &data));
        if fresh {
            // After the answer in the same queue: every broadcast after it reaches this member.
            self.engine.subscribe(conn, &channel(doc));
        }
        if fresh && (first_of_user || user.is_none()) {
            let ev = envelope(
                "doc.user_joined",
                None,
                &format!(
                    r#"{{"doc":{},"client":"{conn}","user":{}}}"#,
                    json_str(doc),
                    serde_json::to_string(&user).unwrap_or_default()
                ),
            );
            self.broadcast(&k, Some(conn), &ev);
        }
    }

    /// To every member but `except`: one publish to the document's engine channel, so the
    /// frame is encoded once and corked per core like any fan-out.
    fn broadcast(&self, doc: &str, except: Option<ConnectionId>, text: &str) {
        let opts = edge_ws::PublishOptions {
            exclude: except,
            transient: true,
            ..edge_ws::PublishOptions::default()
        };
        self.engine.publish_with(
            &channel(doc),
            text.as_bytes(),
            edge_ws::MessageKind::Text,
            opts,
        );
    }

    /// Returns whether `conn` was a member.
    fn leave(&mut self, doc: &str, conn: ConnectionId) -> bool {
        if self.cluster.is_some() {
            return self.leave_cluster(doc, conn);
        }
        let Some(d) = self.docs.get_mut(doc) else {
            return false;
        };
        let Some(m) = d.members.remove(&conn) else {
            return false;
        };
        self.engine.unsubscribe(conn, &channel(doc));
        if let Some(list) = self.member_of.get_mut(&conn) {
            list.retain(|x| &**x != doc);
        }
        let last_of_user = m.user.is_none()
            || !d
                .members
                .values()
                .any(|o| o.user.as_ref() == m.user.as_ref());
        if last_of_user {
            let ev = envelope(
                "doc.user_left",
                None,
                &format!(
                    r#"{{"doc":{},"client":"{conn}","user":{}}}"#,
                    json_str(doc),
                    serde_json::to_string(&m.user).unwrap_or_default()
                ),
            );
            self.broadcast(doc, None, &ev);
        }
        // Documents nobody edits leave memory once their writes are durable.
        let d = &self.docs[doc];
        if d.members.is_empty() && d.unacked.is_empty() {
            self.docs.remove(doc);
        }
        true
    }

    fn refuse(&mut self, conn: ConnectionId, msg_id: Option<&str>, doc: &str, why: &str) {
        self.stats.refused += 1;
        self.send(conn, &error(msg_id, doc, why));
    }

    fn edit(
        &mut self,
        doc: &str,
        conn: ConnectionId,
        revision: u64,
        op: &str,
        msg_id: Option<String>,
        received: std::time::Instant,
    ) {
        let id = msg_id.as_deref();
        self.latency.queued.record(received.elapsed());
        let Some(d) = self.docs.get_mut(doc) else {
            return self.refuse(conn, id, doc, "join the document first");
        };
        if !d.members.contains_key(&conn) {
            return self.refuse(conn, id, doc, "join the document first");
        }
        if d.failed {
            return self.refuse(
                conn,
                id,
                doc,
                "the document is unavailable after a store failure; rejoin",
            );
        }
        let mut op = match TextOperation::from_json(op) {
            Ok(op) => op,
            Err(e) => return self.refuse(conn, id, doc, &format!("malformed op: {e}")),
        };
        if revision > d.revision {
            let why = format!(
                "revision {revision} is from the future (the document is at {})",
                d.revision
            );
            return self.refuse(conn, id, doc, &why);
        }
        let log_start = d.log.front().map_or(d.revision, |(r, _)| r - 1);
        if revision < log_start {
            let why =
                format!("revision {revision} is older than the log (from {log_start}); rejoin");
            return self.refuse(conn, id, doc, &why);
        }
        if let Some(c) = self.cluster.as_mut() {
            c.next_token += 1;
            let token = c.next_token;
            d.queue.push_back(Queued {
                token,
                base: revision,
                p: Pending {
                    conn,
                    msg_id,
                    op,
                    received,
                    stored: std::time::Instant::now(),
                },
            });
            let k: Arc<str> = doc.into();
            return self.pump(&k);
        }
        let mut concurrent = false;
        for (_, other) in d.log.iter().filter(|(r, _)| *r > revision) {
            match op.transform(other) {
                Ok((mine, _)) => op = mine,
                Err(e) => {
                    return self.refuse(
                        conn,
                        id,
                        doc,
                        &format!("op does not fit revision {revision}: {e}"),
                    )
                }
            }
            concurrent = true;
        }
        if op.base_len() != d.len16 {
            let why = format!(
                "op base length {} does not match the document ({} at revision {revision})",
                op.base_len(),
                d.len16
            );
            return self.refuse(conn, id, doc, &why);
        }
        if op.target_len() > self.config.max_len {
            let why = format!(
                "the document would exceed {} UTF-16 units",
                self.config.max_len
            );
            return self.refuse(conn, id, doc, &why);
        }
        let text = match op.apply(&d.text) {
            Ok(t) => t,
            Err(e) => return self.refuse(conn, id, doc, &format!("op does not apply: {e}")),
        };
        d.text = text;
        d.len16 = op.target_len();
        d.revision += 1;
        let rev = d.revision;
        for m in d.members.values_mut() {
            if let Some(s) = &m.selection {
                m.selection = Some(s.transform(&op));
            }
        }
        d.log.push_back((rev, op.clone()));
        while d.log.len() > self.config.max_log {
            d.log.pop_front();
        }
        self.stats.applied += 1;
        if concurrent {
            self.stats.transformed += 1;
        }
        let tx = self.tx.clone();
        let k: Arc<str> = doc.into();
        let ack = Box::new(move |r: Result<(), crate::store::StoreError>| {
            let _ = tx.send(Req::Committed {
                doc: k,
                revision: rev,
                result: r.map_err(|e| e.to_string()),
            });
        });
        let json = op.to_json();
        let d = self.docs.get_mut(doc).expect("present");
        d.unacked.push_back((
            rev,
            Pending {
                conn,
                msg_id,
                op,
                received,
                stored: std::time::Instant::now(),
            },
        ));
        if let Err(e) = self
            .store
            .put(Table::DocumentOps, &op_key(doc, rev), json, ack)
        {
            self.committed(doc, rev, Err(e.to_string()));
            return;
        }
        if rev % self.config.snapshot_every.max(1) == 0 {
            let snap = Snapshot {
                revision: rev,
                text: self.docs[doc].text.clone(),
            };
            let v = serde_json::to_vec(&snap).unwrap_or_default();
            if self
                .store
                .put(Table::DocumentSnapshots, &key(doc), v, Box::new(|_| {}))
                .is_ok()
            {
                self.stats.snapshots += 1;
            }
        }
    }

    fn committed(&mut self, doc: &str, revision: u64, result: Result<(), String>) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let Some((rev, p)) = d.unacked.pop_front() else {
            return;
        };
        debug_assert_eq!(rev, revision);
        if let Err(e) = result {
            // Memory is ahead of the disk: refuse edits; once nothing is pending the document
            // is dropped from memory and reloaded from the disk on the next join.
            d.failed = true;
            let done = d.unacked.is_empty();
            self.stats.store_errors += 1;
            let msg = format!("store: {e}");
            self.send(p.conn, &error(p.msg_id.as_deref(), doc, &msg));
            if done {
                self.docs.remove(doc);
            }
            return;
        }
        if let Ok(t) = p.op.apply(&d.committed_text) {
            d.committed_text = t;
        }
        d.committed_rev = rev;
        let d = &self.docs[doc];
        let ack = format!(r#"{{"doc":{},"revision":{rev}}}"#, json_str(doc));
        self.send(p.conn, &envelope("doc.ack", p.msg_id.as_deref(), &ack));
        self.latency.ack.record(p.received.elapsed());
        self.latency.durable.record(p.stored.elapsed());
        let user = d.members.get(&p.conn).and_then(|m| m.user.clone());
        let ev = envelope(
            "doc.op",
            None,
            &format!(
                r#"{{"doc":{},"revision":{rev},"op":{},"client":"{}","user":{}}}"#,
                json_str(doc),
                p.op.to_json(),
                p.conn,
                serde_json::to_string(&user).unwrap_or_default()
            ),
        );
        self.broadcast(doc, Some(p.conn), &ev);
        if d.failed && d.unacked.is_empty() {
            self.docs.remove(doc);
        }
    }

    fn cursor(&mut self, doc: &str, conn: ConnectionId, revision: u64, selection: &str) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let now = d.committed_rev;
        if !d.members.contains_key(&conn) || revision > now {
            return;
        }
        let Ok(mut sel) = Selection::from_json(selection) else {
            return self.refuse(conn, None, doc, "malformed selection");
        };
        for (_, op) in d.log.iter().filter(|(r, _)| *r > revision && *r <= now) {
            sel = sel.transform(op);
        }
        let json = sel.to_json();
        let user = d.members.get(&conn).and_then(|m| m.user.clone());
        if let Some(m) = d.members.get_mut(&conn) {
            m.selection = Some(sel);
        }
        if let Some(c) = &self.cluster {
            // To every node's members (this one's through the same channel).
            let w = format!(
                r#"{{"k":"cursor","rev":{now},"client":{},"user":{},"selection":{json}}}"#,
                json_str(&c.client(conn)),
                serde_json::to_string(&user).unwrap_or_default()
            );
            return self.engine.publish(&doc_channel(doc), &w);
        }
        let ev = envelope(
            "doc.cursor",
            None,
            &format!(
                r#"{{"doc":{},"revision":{now},"client":"{conn}","user":{},"selection":{json}}}"#,
                json_str(doc),
                serde_json::to_string(&user).unwrap_or_default()
            ),
        );
        self.broadcast(doc, Some(conn), &ev);
    }
}

/// The cluster side (see the module docs).
impl Worker {
    fn cluster(&self) -> &DocCluster {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// Loads a document from Redis: listens to its channel first, so that every revision
    /// after the read arrives (or shows as a gap), then reads the snapshot and the log.
    fn load_cluster(&mut self, doc: &str) -> Result<Arc<str>, String> {
        let k: Arc<str> = doc.into();
        let name = doc_channel(doc);
        let (tx, kk) = (self.tx.clone(), k.clone());
        let sub = self
            .engine
            .subscribe_fn(&name, move |_, p| {
                let _ = tx.send(Req::Remote {
                    doc: kk.clone(),
                    data: p.data.clone(),
                });
            })
            .map_err(|e| e.to_string())?;
        let broker = self.cluster().broker.clone();
        let read = crate::cluster::blocking(|done| broker.log_read(&name, 0, done))
            .map_err(|e| format!("documents: {e}"))?;
        let mut d = Doc::new(String::new(), 0);
        if let Some((rev, data)) = &read.snapshot {
            let snap: Snapshot = serde_json::from_slice(data).map_err(|_| {
                format!("documents: the snapshot of {doc:?} in Redis is unreadable")
            })?;
            d = Doc::new(snap.text, *rev);
        }
        for (rev, record) in &read.entries {
            let op = serde_json::from_slice::<Wire<'_>>(record)
                .ok()
                .and_then(|w| TextOperation::from_json(w.op?.get()).ok());
            let applied = op.filter(|_| *rev == d.revision + 1).and_then(|op| {
                let t = op.apply(&d.text).ok()?;
                Some((t, op))
            });
            let Some((text, op)) = applied else {
                return Err(format!(
                    "documents: the log of {doc:?} in Redis is broken at revision {rev}"
                ));
            };
            d.len16 = op.target_len();
            d.text = text;
            d.revision = *rev;
            d.log.push_back((*rev, op));
            while d.log.len() > self.config.max_log {
                d.log.pop_front();
            }
        }
        if d.revision < read.last {
            return Err(format!(
                "documents: the log of {doc:?} in Redis no longer reaches from revision {} to {}",
                d.revision, read.last
            ));
        }
        d.committed_text = d.text.clone();
        d.committed_rev = d.revision;
        self.docs.insert(k.clone(), d);
        self.cluster
            .as_mut()
            .expect("cluster mode")
            .subs
            .insert(k.clone(), sub);
        Ok(k)
    }

    /// Drops a document nobody here uses (no member, nothing pending) and its subscription.
    fn forget_idle(&mut self, doc: &str) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let idle = self.docs.get(doc).is_some_and(|d| {
            d.members.is_empty() && d.queue.is_empty() && d.inflight.is_none() && d.joining == 0
        });
        if idle {
            self.docs.remove(doc);
            c.subs.remove(doc);
        }
    }

    fn join_cluster(
        &mut self,
        k: Arc<str>,
        conn: ConnectionId,
        user: Option<String>,
        since: Option<u64>,
        msg_id: Option<&str>,
    ) {
        let c = self.cluster();
        let (name, client) = (doc_channel(&k), c.client(conn));
        let info = format!(
            r#"{{"user":{},"at":{}}}"#,
            serde_json::to_string(&user).unwrap_or_default(),
            crate::wall_ms()
        );
        c.broker.presence_join(&name, &client, info.as_bytes());
        let (tx, doc, msg_id) = (self.tx.clone(), k.clone(), msg_id.map(str::to_owned));
        c.broker.presence_list(
            &name,
            Box::new(move |list| {
                let _ = tx.send(Req::Joined {
                    doc,
                    conn,
                    user,
                    since,
                    msg_id,
                    list,
                });
            }),
        );
        if let Some(d) = self.docs.get_mut(&k) {
            d.joining += 1;
        }
        if let Some(c) = self.cluster.as_mut() {
            c.joins.entry(conn).or_default().0 += 1;
        }
    }

    /// Makes `conn` a member of the loaded document `doc` (again: its user is updated), and
    /// remembers the membership for the connection's close. Returns whether it was not one.
    fn add_member(&mut self, doc: &Arc<str>, conn: ConnectionId, user: Option<String>) -> bool {
        let Some(d) = self.docs.get_mut(doc) else {
            return false;
        };
        let member = Member {
            user,
            selection: None,
        };
        let fresh = d.members.insert(conn, member).is_none();
        if fresh {
            self.member_of.entry(conn).or_default().push(doc.clone());
        }
        fresh
    }

    /// A join's answer, with the members on every node; the member receives everything
    /// after it.
    fn joined(
        &mut self,
        doc: &Arc<str>,
        conn: ConnectionId,
        user: Option<String>,
        since: Option<u64>,
        msg_id: Option<&str>,
        list: Result<Vec<PresenceMember>, BrokerError>,
    ) {
        let gone = self.cluster.as_mut().is_some_and(|c| {
            let Some(j) = c.joins.get_mut(&conn) else {
                return false;
            };
            j.0 -= 1;
            let gone = j.1;
            if j.0 == 0 {
                c.joins.remove(&conn);
            }
            gone
        });
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        d.joining -= 1;
        if gone {
            // Closed while its join was on the way: never a member.
            let c = self.cluster();
            c.broker.presence_leave(&doc_channel(doc), &c.client(conn));
            return self.forget_idle(doc);
        }
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                let text = error(msg_id, doc, &format!("documents: {e}"));
                self.send(conn, &text);
                return self.forget_idle(doc);
            }
        };
        let fresh = self.add_member(doc, conn, user.clone());
        let c = self.cluster.as_ref().expect("cluster mode");
        let me = c.client(conn);
        let d = &self.docs[doc];
        let mut data = d.joined_json(doc, since);
        // Selections are known for this node's members; the others' arrive as doc.cursor.
        let local: HashMap<String, &Member> =
            d.members.iter().map(|(c2, m)| (c.client(*c2), m)).collect();
        // The user's earliest member (by join time, then client) announces the user: one
        // announcement even when two nodes join the user at once.
        let mut earliest: Option<(u64, &str)> = None;
        data.push_str(r#","members":["#);
        for (i, m) in list.iter().enumerate() {
            let info = serde_json::from_slice::<MemberInfo>(&m.info).ok();
            let at = info.as_ref().map_or(0, |i| i.at);
            let u = info.and_then(|i| i.user);
            if u.is_some() && u == user && earliest.is_none_or(|e| (at, m.client.as_str()) < e) {
                earliest = Some((at, m.client.as_str()));
            }
            if i > 0 {
                data.push(',');
            }
            let selection = local
                .get(&m.client)
                .and_then(|l| l.selection.as_ref())
                .map_or("null".into(), Selection::to_json);
            let _ = write!(
                data,
                r#"{{"client":{},"user":{},"selection":{selection}}}"#,
                json_str(&m.client),
                serde_json::to_string(&u).unwrap_or_default()
            );
        }
        data.push_str("]}");
        self.send(conn, &envelope("doc.joined", msg_id, &data));
        let first_of_user = earliest.is_none_or(|(_, c)| c == me);
        if fresh && (first_of_user || user.is_none()) {
            let ev = envelope(
                "doc.user_joined",
                None,
                &format!(
                    r#"{{"doc":{},"client":{},"user":{}}}"#,
                    json_str(doc),
                    json_str(&me),
                    serde_json::to_string(&user).unwrap_or_default()
                ),
            );
            self.event(doc, Some(&me), &ev);
        }
    }

    fn leave_cluster(&mut self, doc: &str, conn: ConnectionId) -> bool {
        let Some(d) = self.docs.get_mut(doc) else {
            return false;
        };
        let Some(m) = d.members.remove(&conn) else {
            return false;
        };
        if let Some(list) = self.member_of.get_mut(&conn) {
            list.retain(|x| &**x != doc);
        }
        let last_here = !d
            .members
            .values()
            .any(|o| o.user.is_some() && o.user == m.user);
        let c = self.cluster();
        let (name, client) = (doc_channel(doc), c.client(conn));
        c.broker.presence_leave(&name, &client);
        match m.user {
            // Announced if no node has the user in the document any more.
            Some(user) if last_here => {
                let (tx, k) = (self.tx.clone(), Arc::<str>::from(doc));
                c.broker.presence_list(
                    &name,
                    Box::new(move |list| {
                        let _ = tx.send(Req::Left {
                            doc: k,
                            user,
                            client,
                            list,
                        });
                    }),
                );
            }
            Some(_) => {}
            None => {
                let ev = left_event(doc, &client, None);
                self.event(doc, None, &ev);
            }
        }
        self.forget_idle(doc);
        true
    }

    fn left(
        &mut self,
        doc: &str,
        user: &str,
        client: &str,
        list: Result<Vec<PresenceMember>, BrokerError>,
    ) {
        let still = match list {
            Ok(list) => list.iter().any(|m| {
                serde_json::from_slice::<MemberInfo>(&m.info)
                    .is_ok_and(|i| i.user.as_deref() == Some(user))
            }),
            Err(e) => {
                tracing::debug!(doc, error = %e, "documents: leave announced without the member list");
                false
            }
        };
        if !still {
            let ev = left_event(doc, client, Some(user));
            // The document may have left this node's memory: publish to its channel anyway.
            let w = format!(r#"{{"k":"ev","text":{}}}"#, json_str(&ev));
            self.engine.publish(&doc_channel(doc), &w);
        }
    }

    /// An event for every node's members but the client `except`.
    fn event(&self, doc: &str, except: Option<&str>, text: &str) {
        let w = format!(
            r#"{{"k":"ev","except":{},"text":{}}}"#,
            serde_json::to_string(&except).unwrap_or_default(),
            json_str(text)
        );
        self.engine.publish(&doc_channel(doc), &w);
    }

    /// To this node's members of `doc` but the client `except`.
    fn fan_out(&self, doc: &str, except: Option<&str>, text: &str) {
        let Some(d) = self.docs.get(doc) else { return };
        let c = self.cluster();
        let to: Vec<ConnectionId> = d
            .members
            .keys()
            .copied()
            .filter(|conn| except.is_none_or(|e| c.client(*conn) != e))
            .collect();
        if !to.is_empty() {
            self.engine.send_text_to_many(&to, text);
        }
    }

    /// Appends the oldest queued edit, transformed to the current revision, unless one is in
    /// flight.
    fn pump(&mut self, doc: &Arc<str>) {
        loop {
            let Some(d) = self.docs.get_mut(doc) else {
                return;
            };
            if d.inflight.is_some() || d.filling {
                return;
            }
            let Some(mut q) = d.queue.pop_front() else {
                return self.forget_idle(doc);
            };
            let id = q.p.msg_id.clone();
            if d.failed {
                self.refuse(
                    q.p.conn,
                    id.as_deref(),
                    doc,
                    "the document is unavailable after an inconsistent log; rejoin",
                );
                continue;
            }
            if q.base < d.log_start() {
                let why = format!(
                    "revision {} is older than the log (from {}); rejoin",
                    q.base,
                    d.log_start()
                );
                self.refuse(q.p.conn, id.as_deref(), doc, &why);
                continue;
            }
            let mut op = q.p.op.clone();
            let mut bad = None;
            let mut concurrent = false;
            for (_, other) in d.log.iter().filter(|(r, _)| *r > q.base) {
                match op.transform(other) {
                    Ok((mine, _)) => op = mine,
                    Err(e) => {
                        bad = Some(format!("op does not fit revision {}: {e}", q.base));
                        break;
                    }
                }
                concurrent = true;
            }
            if bad.is_none() && op.base_len() != d.len16 {
                bad = Some(format!(
                    "op base length {} does not match the document ({} at revision {})",
                    op.base_len(),
                    d.len16,
                    q.base
                ));
            }
            if bad.is_none() && op.target_len() > self.config.max_len {
                bad = Some(format!(
                    "the document would exceed {} UTF-16 units",
                    self.config.max_len
                ));
            }
            if bad.is_none() {
                if let Err(e) = op.apply(&d.text) {
                    bad = Some(format!("op does not apply: {e}"));
                }
            }
            if let Some(why) = bad {
                self.refuse(q.p.conn, id.as_deref(), doc, &why);
                continue;
            }
            if concurrent {
                self.stats.transformed += 1;
            }
            let rev = d.revision + 1;
            q.base = d.revision;
            q.p.op = op;
            let c = self.cluster.as_ref().expect("cluster mode");
            let user = d.members.get(&q.p.conn).and_then(|m| m.user.clone());
            let record = format!(
                r#"{{"k":"op","rev":{rev},"op":{},"client":{},"user":{},"node":{},"token":{}}}"#,
                q.p.op.to_json(),
                json_str(&c.client(q.p.conn)),
                serde_json::to_string(&user).unwrap_or_default(),
                json_str(&c.node),
                q.token
            );
            let (tx, k, token) = (self.tx.clone(), doc.clone(), q.token);
            let name = doc_channel(doc);
            d.inflight = Some(q);
            c.broker.log_append(
                &name,
                rev,
                record.as_bytes(),
                self.config.max_log,
                &name,
                Box::new(move |result| {
                    let _ = tx.send(Req::Appended {
                        doc: k,
                        token,
                        result,
                    });
                }),
            );
            return;
        }
    }

    fn appended(
        &mut self,
        doc: &Arc<str>,
        token: u64,
        result: Result<Result<u64, u64>, BrokerError>,
    ) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        if d.inflight.as_ref().is_none_or(|q| q.token != token) {
            return; // applied already, as it arrived on the channel
        }
        match result {
            Ok(Ok(rev)) if rev == d.revision + 1 => {
                let op = d
                    .inflight
                    .as_ref()
                    .map(|q| q.p.op.clone())
                    .expect("in flight");
                let node = self.cluster().node.clone();
                self.apply_rev(doc, rev, op, Some((&node, token)), None, None);
                self.pump(doc);
            }
            // Appended, and already part of this node's copy (it started again from a newer
            // snapshot meanwhile): acknowledged as it is.
            Ok(Ok(rev)) if rev <= d.revision => {
                let q = d.inflight.take().expect("in flight");
                let ack = format!(r#"{{"doc":{},"revision":{rev}}}"#, json_str(doc));
                self.send(q.p.conn, &envelope("doc.ack", q.p.msg_id.as_deref(), &ack));
                self.pump(doc);
            }
            // Appended, but this node is behind (it missed revisions): read them.
            Ok(Ok(_)) => self.fill(doc),
            // Another node appended first: read what this node lacks, transform, retry.
            Ok(Err(_last)) => {
                self.stats.conflicts += 1;
                let q = d.inflight.take().expect("in flight");
                d.queue.push_front(q);
                self.fill(doc);
            }
            Err(e) => {
                let q = d.inflight.take().expect("in flight");
                self.stats.store_errors += 1;
                let text = crate::json::error_envelope(
                    q.p.msg_id.as_deref(),
                    &format!("documents: {e}"),
                    Some(crate::route_error::RETRY_AFTER_MS),
                    &format!(r#","doc":{}"#, json_str(doc)),
                );
                self.send(q.p.conn, &text);
                self.pump(doc);
            }
        }
    }

    /// Reads the revisions after this node's from Redis (once at a time).
    fn fill(&mut self, doc: &Arc<str>) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        if d.filling {
            return;
        }
        d.filling = true;
        let after = d.revision;
        let (tx, k) = (self.tx.clone(), doc.clone());
        self.cluster().broker.log_read(
            &doc_channel(doc),
            after,
            Box::new(move |result| {
                let _ = tx.send(Req::Filled {
                    doc: k,
                    after,
                    result,
                });
            }),
        );
    }

    fn filled(&mut self, doc: &Arc<str>, after: u64, result: Result<LogRead, BrokerError>) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        d.filling = false;
        let read = match result {
            Ok(r) => r,
            Err(e) => {
                // Edits waiting for the missing revisions cannot go on: answered with the error.
                self.stats.store_errors += 1;
                let waiting: Vec<Queued> = d.queue.drain(..).collect();
                for q in waiting {
                    let text = crate::json::error_envelope(
                        q.p.msg_id.as_deref(),
                        &format!("documents: {e}"),
                        Some(crate::route_error::RETRY_AFTER_MS),
                        &format!(r#","doc":{}"#, json_str(doc)),
                    );
                    self.send(q.p.conn, &text);
                }
                return;
            }
        };
        // Behind the revision this node had from Redis when it asked (revisions arriving on
        // the channel meanwhile may have taken the copy further; those are no loss).
        if read.last < after {
            let why = format!(
                "documents: Redis holds revision {} of the document, this node {after} (Redis \
                 lost it?); rejoin",
                read.last
            );
            return self.lost(doc, &why);
        }
        if let Some((rev, data)) = read.snapshot.filter(|(rev, _)| *rev > d.revision) {
            // Further behind than the log reaches: start again from the snapshot.
            match serde_json::from_slice::<Snapshot>(&data) {
                Ok(snap) => {
                    d.text = snap.text;
                    d.len16 = d.text.encode_utf16().count();
                    d.revision = rev;
                    d.log.clear();
                    d.committed_text = d.text.clone();
                    d.committed_rev = rev;
                }
                Err(_) => {
                    return self.lost(
                        doc,
                        "documents: the document's snapshot in Redis is unreadable; rejoin",
                    )
                }
            }
        }
        let me = self.cluster().node.clone();
        for (rev, record) in read.entries {
            let Some(w) = serde_json::from_slice::<Wire<'_>>(&record).ok() else {
                continue;
            };
            let Some(op) = w.op.and_then(|o| TextOperation::from_json(o.get()).ok()) else {
                continue;
            };
            if self.docs.get(doc).is_some_and(|d| rev == d.revision + 1) {
                let ours =
                    (w.node.as_deref() == Some(me.as_str())).then_some((me.as_str(), w.token));
                self.apply_rev(doc, rev, op, ours, w.client.as_deref(), w.user.as_deref());
            }
        }
        // Still short of what Redis had: the log no longer holds the revisions in between.
        if let Some(at) = self
            .docs
            .get(doc)
            .map(|d| d.revision)
            .filter(|r| *r < read.last)
        {
            let why = format!(
                "documents: the document's log in Redis no longer reaches from revision {at} \
                 to {}; rejoin",
                read.last
            );
            return self.lost(doc, &why);
        }
        self.pump(doc);
    }

    /// This node's copy of `doc` cannot go on (Redis lost the document, or the copy disagrees
    /// with it): dropped, its members told to rejoin (a rejoin loads it from Redis again), the
    /// edits waiting refused.
    fn lost(&mut self, doc: &Arc<str>, why: &str) {
        tracing::error!(doc = %doc, reason = why, "documents: copy dropped");
        self.stats.store_errors += 1;
        let Some(mut d) = self.docs.remove(doc) else {
            return;
        };
        let c = self.cluster.as_mut().expect("cluster mode");
        c.subs.remove(doc);
        let name = doc_channel(doc);
        for conn in d.members.keys() {
            c.broker.presence_leave(&name, &c.client(*conn));
            if let Some(list) = self.member_of.get_mut(conn) {
                list.retain(|x| x != doc);
            }
        }
        let mut told: Vec<ConnectionId> = d.members.keys().copied().collect();
        for q in d.inflight.take().into_iter().chain(d.queue.drain(..)) {
            self.engine
                .send_text(q.p.conn, &error(q.p.msg_id.as_deref(), doc, why));
            told.retain(|c| *c != q.p.conn);
        }
        for conn in told {
            self.engine.send_text(conn, &error(None, doc, why));
        }
    }

    /// A message on the document's channel.
    fn remote(&mut self, doc: &Arc<str>, data: &[u8]) {
        let Ok(w) = serde_json::from_slice::<Wire<'_>>(data) else {
            tracing::debug!(doc = %doc, "documents: unreadable message on the document's channel");
            return;
        };
        let Some(d) = self.docs.get(doc) else { return };
        match w.k {
            "op" => {
                if w.rev <= d.revision {
                    return; // applied already
                }
                if w.rev > d.revision + 1 {
                    return self.fill(doc); // a gap: read what is missing first
                }
                let Some(op) = w.op.and_then(|o| TextOperation::from_json(o.get()).ok()) else {
                    return;
                };
                let me = self.cluster().node.clone();
                let ours =
                    (w.node.as_deref() == Some(me.as_str())).then_some((me.as_str(), w.token));
                self.apply_rev(doc, w.rev, op, ours, w.client.as_deref(), w.user.as_deref());
                self.pump(doc);
            }
            "cursor" => {
                let Some(sel) = w.selection.and_then(|s| Selection::from_json(s.get()).ok()) else {
                    return;
                };
                // Transformed to this node's revision when it is ahead of the cursor's.
                let mut sel = sel;
                let mut rev = w.rev;
                if w.rev < d.revision {
                    for (_, op) in d.log.iter().filter(|(r, _)| *r > w.rev) {
                        sel = sel.transform(op);
                    }
                    rev = d.revision;
                }
                let client = w.client.unwrap_or_default();
                let ev = envelope(
                    "doc.cursor",
                    None,
                    &format!(
                        r#"{{"doc":{},"revision":{rev},"client":{},"user":{},"selection":{}}}"#,
                        json_str(doc),
                        json_str(&client),
                        serde_json::to_string(&w.user).unwrap_or_default(),
                        sel.to_json()
                    ),
                );
                self.fan_out(doc, Some(&client), &ev);
            }
            "ev" => {
                if let Some(text) = &w.text {
                    self.fan_out(doc, w.except.as_deref(), text);
                }
            }
            _ => {}
        }
    }

    /// Applies revision `rev` (the next one) and sends it to this node's members; `ours`:
    /// the node and token it was appended with, to acknowledge this node's own edit.
    fn apply_rev(
        &mut self,
        doc: &Arc<str>,
        rev: u64,
        op: TextOperation,
        ours: Option<(&str, u64)>,
        client: Option<&str>,
        user: Option<&str>,
    ) {
        let me = self.cluster().node.clone();
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let text = match op.apply(&d.text) {
            Ok(t) => t,
            Err(e) => {
                // This node's copy and Redis's log disagree: drop the copy.
                tracing::error!(doc = %doc, revision = rev, error = %e, "documents: a revision does not apply to this node's copy");
                return self.lost(
                    doc,
                    "documents: this node's copy of the document disagrees with Redis; rejoin",
                );
            }
        };
        d.text = text;
        d.len16 = op.target_len();
        d.revision = rev;
        for m in d.members.values_mut() {
            if let Some(s) = &m.selection {
                m.selection = Some(s.transform(&op));
            }
        }
        d.committed_text = d.text.clone();
        d.committed_rev = rev;
        d.log.push_back((rev, op.clone()));
        while d.log.len() > self.config.max_log {
            d.log.pop_front();
        }
        self.stats.applied += 1;
        let mut sender = None;
        let is_ours = ours.is_some_and(|(node, token)| {
            node == me && d.inflight.as_ref().is_some_and(|q| q.token == token)
        });
        if is_ours {
            let q = d.inflight.take().expect("in flight");
            let ack = format!(r#"{{"doc":{},"revision":{rev}}}"#, json_str(doc));
            self.engine
                .send_text(q.p.conn, &envelope("doc.ack", q.p.msg_id.as_deref(), &ack));
            self.latency.ack.record(q.p.received.elapsed());
            sender = Some(q.p.conn);
            if rev.is_multiple_of(self.config.snapshot_every.max(1)) {
                let snap = Snapshot {
                    revision: rev,
                    text: self.docs[doc].text.clone(),
                };
                let v = serde_json::to_vec(&snap).unwrap_or_default();
                self.cluster()
                    .broker
                    .log_snapshot(&doc_channel(doc), rev, &v);
                self.stats.snapshots += 1;
            }
        }
        let c = self.cluster();
        let d = &self.docs[doc];
        let (client, user) = match sender {
            Some(conn) => (
                c.client(conn),
                d.members.get(&conn).and_then(|m| m.user.clone()),
            ),
            None => (
                client.unwrap_or_default().to_string(),
                user.map(str::to_string),
            ),
        };
        let ev = envelope(
            "doc.op",
            None,
            &format!(
                r#"{{"doc":{},"revision":{rev},"op":{},"client":{},"user":{}}}"#,
                json_str(doc),
                op.to_json(),
                json_str(&client),
                serde_json::to_string(&user).unwrap_or_default()
            ),
        );
        self.fan_out(doc, Some(&client), &ev);
    }
}

fn left_event(doc: &str, client: &str, user: Option<&str>) -> String {
    envelope(
        "doc.user_left",
        None,
        &format!(
            r#"{{"doc":{},"client":{},"user":{}}}"#,
            json_str(doc),
            json_str(client),
            serde_json::to_string(&user).unwrap_or_default()
        ),
    )
}
