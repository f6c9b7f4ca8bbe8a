//! Collaborative documents over real WebSockets: several clients edit one document at once
//! (random inserts and deletes with emoji and accents, random pauses), one of them reconnects
//! in the middle and catches up from its revision; every client ends with the server's text.
//! Bad input (wrong base length, a revision from the future, a malformed op, an oversized
//! document, editing without joining) gets a clear error and changes nothing.

#[path = "manager_util.rs"]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws_ot::TextOperation;
use edge_ws_server::documents::DocumentConfig;
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{Manager, Router};
use serde_json::{json, Value};
use tungstenite::Message as T;
use util::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// UTF-16 offsets of every char boundary of `s`.
fn boundaries(s: &str) -> Vec<usize> {
    let mut v = vec![0];
    let mut n = 0;
    for c in s.chars() {
        n += c.len_utf16();
        v.push(n);
    }
    v
}

fn random_op(text: &str, rng: &mut Rng) -> TextOperation {
    let b = boundaries(text);
    let len = *b.last().unwrap();
    let at = b[rng.below(b.len())];
    let pieces = ["a", "é", "😀", "xy", " ", "ß"];
    if len > 0 && rng.below(3) == 0 {
        let i = b.iter().position(|&x| x == at).unwrap();
        let j = (i + 1 + rng.below(3)).min(b.len() - 1);
        if b[j] > at {
            return TextOperation::new()
                .retain(at)
                .delete(b[j] - at)
                .retain(len - b[j]);
        }
    }
    TextOperation::new()
        .retain(at)
        .insert(pieces[rng.below(pieces.len())])
        .retain(len - at)
}

/// An ot.js-style client: at most one operation awaiting its ack, the rest buffered.
struct Client {
    ws: Ws,
    doc: String,
    revision: u64,
    text: String,
    outstanding: Option<TextOperation>,
    buffer: Option<TextOperation>,
    /// `doc.joined` answers received.
    joins: usize,
}

impl Client {
    /// Waits for the answer to a join (catch-up must land before local edits resume).
    fn await_join(&mut self, joins_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.joins == joins_before && Instant::now() < deadline {
            self.pump(Duration::from_millis(5));
        }
        assert!(self.joins > joins_before, "joined in time");
    }

    fn send_op(&mut self, op: &TextOperation) {
        let m = json!({"type":"doc.edit","data":{"doc":self.doc,"revision":self.revision,"op":serde_json::from_str::<Value>(&op.to_json()).unwrap()}});
        self.ws.send(T::text(m.to_string())).unwrap();
    }

    fn local(&mut self, op: TextOperation) {
        self.text = op.apply(&self.text).unwrap();
        match (&self.outstanding, self.buffer.take()) {
            (None, _) => {
                self.send_op(&op);
                self.outstanding = Some(op);
            }
            (Some(_), None) => self.buffer = Some(op),
            (Some(_), Some(b)) => self.buffer = Some(b.compose(&op).unwrap()),
        }
    }

    fn remote(&mut self, mut op: TextOperation) {
        if let Some(out) = self.outstanding.take() {
            let (o2, op2) = out.transform(&op).unwrap();
            self.outstanding = Some(o2);
            op = op2;
        }
        if let Some(buf) = self.buffer.take() {
            let (b2, op2) = buf.transform(&op).unwrap();
            self.buffer = Some(b2);
            op = op2;
        }
        self.text = op.apply(&self.text).unwrap();
    }

    fn settled(&self) -> bool {
        self.outstanding.is_none() && self.buffer.is_none()
    }

    /// Handles what arrived within `wait`.
    fn pump(&mut self, wait: Duration) {
        self.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
        loop {
            let m = match self.ws.read() {
                Ok(T::Text(t)) => serde_json::from_str::<Value>(&t).unwrap(),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return
                }
                Err(e) => panic!("read: {e}"),
            };
            self.ws
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            match m["type"].as_str().unwrap() {
                "doc.ack" => {
                    self.revision = m["data"]["revision"].as_u64().unwrap();
                    self.outstanding = self.buffer.take();
                    if let Some(op) = self.outstanding.clone() {
                        self.send_op(&op);
                    }
                }
                "doc.op" => {
                    self.revision = m["data"]["revision"].as_u64().unwrap();
                    let op = TextOperation::from_json(&m["data"]["op"].to_string()).unwrap();
                    self.remote(op);
                }
                "doc.joined" => {
                    let d = &m["data"];
                    if let Some(t) = d["text"].as_str() {
                        self.text = t.to_string();
                    }
                    if let Some(ops) = d["ops"].as_array() {
                        for o in ops {
                            self.text = TextOperation::from_json(&o["op"].to_string())
                                .unwrap()
                                .apply(&self.text)
                                .unwrap();
                        }
                    }
                    self.revision = d["revision"].as_u64().unwrap();
                    self.joins += 1;
                }
                "doc.user_joined" | "doc.user_left" | "doc.cursor" => {}
                other => panic!("unexpected {other}: {m}"),
            }
        }
    }
}

fn join(addr: std::net::SocketAddr, doc: &str, since: Option<u64>) -> Ws {
    let mut ws = upgrade(addr, "/", &[]).open();
    let mut data = json!({"doc":doc});
    if let Some(s) = since {
        data["revision"] = json!(s);
    }
    ws.send(T::text(json!({"type":"doc.join","data":data}).to_string()))
        .unwrap();
    ws
}

fn server(tag: &str, docs: DocumentConfig) -> (Manager, edge_ws::Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("edge-ws-docs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    let manager = Manager::builder().build();
    let engine = start(&manager, config(2), || Router::new().channels());
    assert!(manager.start_documents(store, docs));
    (manager, engine, dir)
}

#[test]
fn concurrent_editors_converge_and_a_reconnecting_one_catches_up() {
    const CLIENTS: usize = 5;
    const EDITS: usize = 40;
    let (manager, engine, dir) = server(
        "conv",
        DocumentConfig {
            max_log: 10_000,
            snapshot_every: 25,
            ..DocumentConfig::default()
        },
    );
    let addr = engine.local_addr();
    let total = (CLIENTS * EDITS) as u64;
    let start_line = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let start_line = start_line.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((k as u64 + 1) * 7919));
                let mut c = Client {
                    ws: join(addr, "notes", None),
                    doc: "notes".into(),
                    revision: 0,
                    text: String::new(),
                    outstanding: None,
                    buffer: None,
                    joins: 0,
                };
                c.await_join(0);
                start_line.wait();
                for i in 0..EDITS {
                    if k == 0 && i == EDITS / 2 {
                        // Reconnect in the middle: settle, drop the connection, rejoin from the
                        // revision held.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !c.settled() && Instant::now() < deadline {
                            c.pump(Duration::from_millis(5));
                        }
                        assert!(c.settled());
                        let _ = c.ws.close(None);
                        let _ = c.ws.flush();
                        let before = c.joins;
                        c.ws = join(addr, "notes", Some(c.revision));
                        c.await_join(before);
                    }
                    let op = random_op(&c.text, &mut rng);
                    c.local(op);
                    c.pump(Duration::from_millis(rng.below(8) as u64 + 1));
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while !(c.settled() && c.revision == total) && Instant::now() < deadline {
                    c.pump(Duration::from_millis(10));
                }
                (c.revision, c.text)
            })
        })
        .collect();
    let results: Vec<(u64, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (rev, text) = manager.documents().unwrap().text("notes").unwrap();
    assert_eq!(rev, total, "every edit applied");
    for (r, t) in &results {
        assert_eq!((*r, t), (rev, &text), "every client has the server's text");
    }
    let stats = manager.documents().unwrap().stats();
    assert_eq!(stats.applied, total);
    assert!(stats.transformed > 0, "edits really were concurrent");
    assert!(stats.snapshots >= total / 25);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_edits_are_refused_clearly_and_change_nothing() {
    let (manager, engine, dir) = server(
        "bad",
        DocumentConfig {
            max_len: 10,
            ..DocumentConfig::default()
        },
    );
    let addr = engine.local_addr();
    let mut a = join(addr, "d", None);
    let joined: Value = serde_json::from_str(&recv(&mut a)).unwrap();
    assert_eq!(
        (
            joined["data"]["revision"].as_u64(),
            joined["data"]["text"].as_str()
        ),
        (Some(0), Some(""))
    );
    let edit = |ws: &mut Ws, id: u32, revision: u64, op: Value| {
        let m = json!({"type":"doc.edit","id":id,"data":{"doc":"d","revision":revision,"op":op}});
        ws.send(T::text(m.to_string())).unwrap();
        serde_json::from_str::<Value>(&recv(ws)).unwrap()
    };
    let r = edit(&mut a, 1, 0, json!(["héllo 😀"]));
    assert_eq!(
        (r["type"].as_str(), r["data"]["revision"].as_u64()),
        (Some("doc.ack"), Some(1)),
        "{r}"
    );
    for (id, rev, op, want) in [
        (
            2,
            1,
            json!([3, "x"]),
            "base length 3 does not match the document (8",
        ),
        (3, 5, json!([8, "x"]), "from the future"),
        (4, 1, json!([8, {"bad":1}]), "malformed op"),
        (5, 1, json!([8, "way too long"]), "exceed 10 UTF-16 units"),
    ] {
        let r = edit(&mut a, id, rev, op.clone());
        assert_eq!(r["type"], "error", "{op} → {r}");
        assert!(r["error"].as_str().unwrap().contains(want), "{op} → {r}");
        assert_eq!(r["id"], id);
    }
    // Not joined: refused too.
    let mut b = upgrade(addr, "/", &[]).open();
    let r = edit(&mut b, 6, 1, json!([8, "!"]));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("join the document first"),
        "{r}"
    );
    // A stale revision is transformed: made against revision 0 (empty), it lands before.
    let r = edit(&mut a, 7, 0, json!(["> "]));
    assert_eq!(r["data"]["revision"], 2);
    assert_eq!(
        manager.documents().unwrap().text("d").unwrap(),
        (2, "> héllo 😀".to_string())
    );
    // Cursors are transformed and broadcast to the others.
    let mut c = join(addr, "d", Some(1));
    let joined: Value = serde_json::from_str(&recv(&mut c)).unwrap();
    assert_eq!(
        joined["data"]["ops"].as_array().unwrap().len(),
        1,
        "caught up from revision 1"
    );
    let _ = recv(&mut a); // c's user_joined
    let m = json!({"type":"doc.cursor","data":{"doc":"d","revision":1,"selection":{"ranges":[{"anchor":0,"head":1}]}}});
    c.send(T::text(m.to_string())).unwrap();
    let cur: Value = serde_json::from_str(&recv(&mut a)).unwrap();
    assert_eq!(cur["type"], "doc.cursor");
    assert_eq!(
        cur["data"]["selection"],
        json!({"ranges":[{"anchor":2,"head":3}]}),
        "moved past the \"> \" inserted at revision 2"
    );
    assert_eq!(manager.documents().unwrap().stats().refused, 5);
    drop((a, b, c));
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
