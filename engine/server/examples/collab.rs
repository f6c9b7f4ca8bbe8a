//! The seed's collaboration server on the library API: documents edited with operational
//! transform (ot.js operations, UTF-16 positions), one sequencer per document, revisions and
//! snapshots in the embedded store, cursors and join/leave to the other editors.
//!
//! ```text
//! cargo run --example collab -- 127.0.0.1:9001 ./docs-data
//! → {"type":"doc.join","id":1,"data":{"doc":"notes"}}
//! ← {"type":"doc.joined","id":1,"data":{"doc":"notes","revision":0,"text":"",...}}
//! → {"type":"doc.edit","id":2,"data":{"doc":"notes","revision":0,"op":["hello"]}}
//! ```

use std::net::SocketAddr;
use std::path::Path;

use edge_ws::Engine;
use edge_ws_server::documents::DocumentConfig;
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{Auth, AuthRejection, Manager, Router, UserContext};

/// The server on `addr`, documents under `dir`.
pub fn start(addr: SocketAddr, dir: &Path) -> (Manager, Engine) {
    let store = Store::open(dir, StoreOptions::default()).expect("the store opens");
    let manager = Manager::builder()
        .auth(Auth::validator(|info| async move {
            match info.request.query_param("user") {
                Some(u) if !u.is_empty() && u.len() <= 32 => Ok(UserContext::new(u)),
                _ => Err(AuthRejection::unauthorized("connect with ?user=<name>")),
            }
        }))
        .build();
    let engine = manager
        .start(Engine::builder().bind(addr), |_core| {
            Router::new().channels()
        })
        .expect("the engine starts");
    manager.start_documents(store, DocumentConfig::default());
    (manager, engine)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("HOST:PORT");
    let dir = args.next().unwrap_or_else(|| "docs-data".into());
    let (_manager, engine) = start(addr, Path::new(&dir));
    println!("documents on ws://{}/?user=<name>", engine.local_addr());
    engine.join().expect("cores ran");
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use edge_ws::testing::TempDir;
    use serde_json::{json, Value};
    use tungstenite::Message;

    type Ws = tungstenite::WebSocket<TcpStream>;

    fn join(addr: std::net::SocketAddr, user: &str) -> (Ws, Value) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/?user={user}"), s).unwrap();
        say(
            &mut ws,
            json!({"type":"doc.join","id":1,"data":{"doc":"notes"}}),
        );
        let joined = next(&mut ws, "doc.joined");
        (ws, joined)
    }

    fn say(ws: &mut Ws, v: Value) {
        ws.send(Message::text(v.to_string())).unwrap();
    }

    fn next(ws: &mut Ws, kind: &str) -> Value {
        for _ in 0..50 {
            if let Message::Text(t) = ws.read().unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v;
                }
                assert_ne!(v["type"], "error", "{v}");
            }
        }
        panic!("no {kind}");
    }

    #[test]
    fn concurrent_edits_are_transformed_acknowledged_and_broadcast() {
        let dir = TempDir::new("edge-ws-example-docs");
        let (manager, engine) = super::start("127.0.0.1:0".parse().unwrap(), dir.path());
        let addr = engine.local_addr();
        let (mut ann, j) = join(addr, "ann");
        assert_eq!(j["data"]["revision"], 0);
        say(
            &mut ann,
            json!({"type":"doc.edit","id":2,"data":{"doc":"notes","revision":0,"op":["hello"]}}),
        );
        assert_eq!(next(&mut ann, "doc.ack")["data"]["revision"], 1);
        let (mut ben, j) = join(addr, "ben");
        assert_eq!(
            (j["data"]["revision"].as_u64(), j["data"]["text"].as_str()),
            (Some(1), Some("hello"))
        );
        // Both edit revision 1 at once: ann appends, ben prepends.
        say(
            &mut ann,
            json!({"type":"doc.edit","id":3,"data":{"doc":"notes","revision":1,"op":[5," world"]}}),
        );
        say(
            &mut ben,
            json!({"type":"doc.edit","id":4,"data":{"doc":"notes","revision":1,"op":["¡", 5]}}),
        );
        // Each gets its ack and the other's edit, transformed (in either order).
        for (ws, other) in [(&mut ann, "ben"), (&mut ben, "ann")] {
            let (mut acked, mut op_from) = (false, None);
            while !acked || op_from.is_none() {
                let Message::Text(t) = ws.read().unwrap() else {
                    continue;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("doc.ack") => acked = true,
                    Some("doc.op") => op_from = v["data"]["user"].as_str().map(str::to_owned),
                    Some("error") => panic!("{v}"),
                    _ => {}
                }
            }
            assert_eq!(op_from.as_deref(), Some(other));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let docs = manager.documents().unwrap().clone();
        while docs.text("notes").map(|(r, _)| r) != Some(3) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(docs.text("notes"), Some((3, "¡hello world".to_string())));
        // Clients that are gone need no close handshake: the shutdown does not wait.
        drop((ann, ben));
        engine.handle().shutdown();
        engine.join().unwrap();
    }
}
