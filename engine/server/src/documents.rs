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

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

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
    /// Edits transformed against at least one concurrent operation.
    pub transformed: u64,
    /// Edits refused (bad op, bad revision, too large, not a member).
    pub refused: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Store failures.
    pub store_errors: u64,
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
}

/// The handle to the documents thread (`Send + Sync + Clone`).
#[derive(Clone)]
pub struct Documents {
    tx: Arc<Mutex<Sender<Req>>>,
    ack_latency: Arc<crate::store::stats::Histogram>,
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documents").finish_non_exhaustive()
    }
}

impl Documents {
    /// Starts the documents thread over `store`, answering through `engine`.
    pub fn start(store: StoreHandle, engine: EngineHandle, config: DocumentConfig) -> Documents {
        let (tx, rx) = mpsc::channel();
        let ack_latency = Arc::new(crate::store::stats::Histogram::new());
        let w = Worker {
            ack_latency: ack_latency.clone(),
            store,
            engine,
            config,
            tx: tx.clone(),
            docs: HashMap::new(),
            member_of: HashMap::new(),
            stats: DocumentStats::default(),
        };
        let _ = std::thread::Builder::new()
            .name("edge-ws-docs".into())
            .spawn(move || w.run(rx));
        Documents {
            tx: Arc::new(Mutex::new(tx)),
            ack_latency,
        }
    }

    /// Server-side time from an edit's arrival on its connection's core to its `doc.ack`
    /// being handed to the engine: the documents thread's queue, transform and apply, and
    /// the log record's commit (fsync).
    pub fn ack_latency(&self) -> crate::store::LatencyStats {
        self.ack_latency.snapshot()
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
    ack_latency: Arc<crate::store::stats::Histogram>,
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
            }
            Req::Stats(done) => {
                let _ = done.send(self.stats);
            }
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
        let mut d = Doc {
            len16: snap.text.encode_utf16().count(),
            text: snap.text,
            revision: snap.revision,
            log: VecDeque::new(),
            members: HashMap::new(),
            unacked: VecDeque::new(),
            failed: false,
            committed_text: String::new(),
            committed_rev: 0,
        };
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
        let first_of_user = {
            let d = &self.docs[&k];
            user.as_ref()
                .is_some_and(|u| !d.members.values().any(|m| m.user.as_ref() == Some(u)))
        };
        let d = self.docs.get_mut(&k).expect("loaded");
        let fresh = d
            .members
            .insert(
                conn,
                Member {
                    user: user.clone(),
                    selection: None,
                },
            )
            .is_none();
        if fresh {
            self.member_of.entry(conn).or_default().push(k.clone());
        }
        let d = &self.docs[&k];
        let now = d.committed_rev;
        let mut data = format!(r#"{{"doc":{},"revision":{now}"#, json_str(doc));
        let log_start = d.log.front().map_or(d.revision, |(r, _)| r - 1);
        match since {
            Some(s) if s <= now && s >= log_start => {
                data.push_str(r#","ops":["#);
                let ops = d.log.iter().filter(|(r, _)| *r > s && *r <= now);
                for (i, (r, op)) in ops.enumerate() {
                    if i > 0 {
                        data.push(',');
                    }
                    let _ = write!(data, r#"{{"revision":{r},"op":{}}}"#, op.to_json());
                }
                data.push(']');
            }
            _ => {
                let _ = write!(data, r#","text":{}"#, json_str(&d.committed_text));
            }
        }
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
        self.ack_latency.record(p.received.elapsed());
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
