//! Collaborative documents over real WebSockets: several clients edit one document at once
//! (random inserts and deletes with emoji and accents, random pauses), one of them reconnects
//! in the middle and catches up from its revision; every client ends with the server's text.
//! Bad input (wrong base length, a revision from the future, a malformed op, an oversized
//! document, editing without joining) gets a clear error and changes nothing.

#[path = "manager_util.rs"]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws_server::documents::DocumentConfig;
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{Manager, Router};
use edge_ws_tests::ot_client::{random_op, OtClient, Rng};
use serde_json::{json, Value};
use tungstenite::Message as T;
use util::*;

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

/// A manager with documents on a store in a fresh directory (returned first, so that it is
/// dropped after the manager and the engine).
fn server(tag: &str, docs: DocumentConfig) -> (TempDir, Manager, edge_ws::Engine) {
    let dir = TempDir::new(&format!("edge-ws-docs-{tag}"));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let manager = Manager::builder().build();
    let engine = start(&manager, config(2), || Router::new().channels());
    assert!(manager.start_documents(store, docs));
    (dir, manager, engine)
}

#[test]
fn concurrent_editors_converge_and_a_reconnecting_one_catches_up() {
    const CLIENTS: usize = 5;
    const EDITS: usize = 40;
    let (_dir, manager, engine) = server(
        "conv",
        DocumentConfig {
            max_log: 10_000,
            snapshot_every: 25,
            ..DocumentConfig::default()
        },
    );
    let addr = engine.local_addr();
    let start_line = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let start_line = start_line.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((k as u64 + 1) * 7919));
                let mut c = OtClient::join(addr, "notes");
                start_line.wait();
                for i in 0..EDITS {
                    if k == 0 && i == EDITS / 2 {
                        // Reconnect in the middle: settle, drop the connection, rejoin from the
                        // revision held.
                        c.reconnect(addr);
                    }
                    let op = random_op(&c.text, &mut rng);
                    c.local(op);
                    c.pump(Duration::from_millis(rng.below(8) as u64 + 1));
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while !c.settled() && Instant::now() < deadline {
                    c.pump(Duration::from_millis(10));
                }
                assert!(c.settled(), "every operation acknowledged");
                c
            })
        })
        .collect();
    let mut clients: Vec<OtClient> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Every operation sent was applied exactly once (edits typed while one waited for its ack
    // were composed into one operation).
    let total: u64 = clients.iter().map(|c| c.sent).sum();
    let (rev, text) = manager.documents().unwrap().text("notes").unwrap();
    assert_eq!(rev, total, "every operation sent applied once");
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in clients.iter_mut() {
        while c.revision < rev && Instant::now() < deadline {
            c.pump(Duration::from_millis(10));
        }
        assert_eq!(
            (c.revision, &c.text),
            (rev, &text),
            "every client has the server's text"
        );
    }
    let stats = manager.documents().unwrap().stats();
    assert_eq!(stats.applied, total);
    assert!(stats.transformed > 0, "edits really were concurrent");
    assert!(stats.snapshots >= total / 25);
    drop(clients);
    drop(engine);
}

#[test]
fn bad_edits_are_refused_clearly_and_change_nothing() {
    let (_dir, manager, engine) = server(
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
}
