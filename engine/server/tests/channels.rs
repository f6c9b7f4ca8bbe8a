//! Channels with history through the real `edge-ws` binary and the JSON envelope: every
//! acknowledged publication of a persistent channel comes back after kill -9 with the same
//! offset and epoch; a memory channel's epoch changes across a restart and recovery says so;
//! envelope errors are answered and the connection keeps serving.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use edge_ws::testing::TempDir;
use serde_json::{json, Value};

mod common;
use common::Server;
use tungstenite::{Message, WebSocket};

fn connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    ws
}

fn send(ws: &mut WebSocket<TcpStream>, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

fn recv(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message within 10 s") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("edge-ws.toml");
    let text = format!(
        "[auth]\nquery_user = \"\"\n\n[rate_limit]\nmessages_per_second = 0\n\n[channels]\nhistory_size = 0\n\n\
         [[channels.namespace]]\nprefix = \"p:\"\nhistory_size = 10000\npersist = true\n\n\
         [[channels.namespace]]\nprefix = \"m:\"\nhistory_size = 100\n\n\
         [store]\ndir = {:?}\n",
        dir.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_acknowledged_publication_survives_kill_9_with_its_offset_and_epoch() {
    let dir = TempDir::new("edge-ws-channels");
    let cfg = config(dir.path());
    let mut server = Server::start(2, Some(&cfg));
    let mut c = connect(server.addr);
    // Pipelined: 300 publishes in flight, then their acks.
    const N: u64 = 300;
    for i in 0..N {
        send(
            &mut c,
            json!({"type":"publish","id":i,"data":{"channel":"p:orders","data":{"n":i}}}),
        );
    }
    send(
        &mut c,
        json!({"type":"publish","id":"m","data":{"channel":"m:tmp","data":1}}),
    );
    let mut acked = Vec::new();
    let mut memory_epoch = String::new();
    for _ in 0..=N {
        let r = recv(&mut c);
        assert_eq!(r["type"], "published", "{r}");
        if r["id"] == "m" {
            memory_epoch = r["data"]["epoch"].as_str().unwrap().to_string();
            continue;
        }
        acked.push((
            r["id"].as_u64().unwrap(),
            r["data"]["offset"].as_u64().unwrap(),
            r["data"]["epoch"].as_str().unwrap().to_string(),
        ));
    }
    let epoch = acked[0].2.clone();
    // Acks come in publish order with consecutive offsets, all in one epoch.
    for (k, (id, offset, e)) in acked.iter().enumerate() {
        assert_eq!(
            (*id, *offset, e.as_str()),
            (k as u64, k as u64 + 1, epoch.as_str())
        );
    }
    server.kill9();

    let server = Server::start(2, Some(&cfg));
    let mut c = connect(server.addr);
    send(
        &mut c,
        json!({"type":"subscribe","id":1,"data":{"channel":"p:orders","since":{"offset":0,"epoch":epoch}}}),
    );
    let r = recv(&mut c);
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["data"]["recovered"], true, "{r}");
    assert_eq!(r["data"]["missed"], N);
    assert_eq!(r["data"]["offset"], N);
    assert_eq!(r["data"]["epoch"], epoch.as_str());
    for i in 0..N {
        let p = recv(&mut c);
        assert_eq!(p["type"], "publication");
        assert_eq!(p["channel"], "p:orders");
        assert_eq!(
            (p["offset"].as_u64(), p["epoch"].as_str()),
            (Some(i + 1), Some(epoch.as_str()))
        );
        assert_eq!(p["data"]["n"], i);
    }
    // The stream continues after the restart in the same epoch; history reads agree.
    send(
        &mut c,
        json!({"type":"publish","id":"next","data":{"channel":"p:orders","data":"after"}}),
    );
    let mut got = [recv(&mut c), recv(&mut c)];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0]["type"], "publication");
    assert_eq!(got[0]["offset"], N + 1);
    assert_eq!(got[1]["type"], "published");
    assert_eq!(got[1]["data"]["epoch"], epoch.as_str());
    send(
        &mut c,
        json!({"type":"history","id":2,"data":{"channel":"p:orders","limit":2,"reverse":true}}),
    );
    let h = recv(&mut c);
    assert_eq!(h["type"], "history", "{h}");
    let offsets: Vec<u64> = h["data"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![N + 1, N]);
    // Memory history did not survive: its epoch changed and recovery says so.
    send(
        &mut c,
        json!({"type":"subscribe","id":3,"data":{"channel":"m:tmp","since":{"offset":1,"epoch":memory_epoch}}}),
    );
    let r = recv(&mut c);
    assert_eq!(r["data"]["recovered"], false, "{r}");
    assert_eq!(r["data"]["reason"], "epoch_changed");
    assert_ne!(r["data"]["epoch"], memory_epoch.as_str());
    drop(server);
}

#[test]
fn envelope_errors_are_answered_and_the_connection_keeps_serving() {
    let dir = TempDir::new("edge-ws-channels-e");
    let server = Server::start(2, Some(&config(dir.path())));
    let mut c = connect(server.addr);
    let long = "x".repeat(300);
    let cases = [
        (
            json!({"type":"subscribe","id":1,"data":{"chan":"x"}}),
            "Invalid message data",
        ),
        (
            json!({"type":"subscribe","id":2,"data":{"channel":"m:a","since":{"offset":"x","epoch":"1"}}}),
            "Invalid message data",
        ),
        (
            json!({"type":"subscribe","id":3,"data":{"channel":long}}),
            "invalid channel",
        ),
        (
            json!({"type":"subscribe","id":4,"data":{"channel":"a b"}}),
            "invalid channel",
        ),
        (
            json!({"type":"history","id":5,"data":{"channel":"plain"}}),
            "keeps no history",
        ),
        (
            json!({"type":"publish","id":6,"data":{"channel":"plain","data":1,"idempotency_key":"k"}}),
            "keeps no history",
        ),
        (
            json!({"type":"publish","id":7,"data":{"channel":"m:a"}}),
            "Invalid message data",
        ),
        (
            json!({"type":"history","id":8,"data":{"channel":"m:a","since":1,"reverse":true}}),
            "cannot be combined",
        ),
    ];
    for (req, want) in &cases {
        send(&mut c, req.clone());
        let r = recv(&mut c);
        assert_eq!(r["type"], "error", "{req} → {r}");
        assert_eq!(r["id"], req["id"]);
        assert!(r["error"].as_str().unwrap().contains(want), "{req} → {r}");
    }
    // Still serving: a channel without history delivers the envelope without a position.
    send(
        &mut c,
        json!({"type":"subscribe","id":9,"data":{"channel":"plain"}}),
    );
    let r = recv(&mut c);
    assert_eq!(r["data"], json!({"channel":"plain"}));
    send(
        &mut c,
        json!({"type":"publish","data":{"channel":"plain","data":{"hi":1}}}),
    );
    let p = recv(&mut c);
    assert_eq!(
        p,
        json!({"type":"publication","channel":"plain","data":{"hi":1}})
    );
    // Idempotent publish through the envelope.
    for _ in 0..2 {
        send(
            &mut c,
            json!({"type":"publish","id":10,"data":{"channel":"m:i","data":0,"idempotency_key":"once"}}),
        );
    }
    let (a, b) = (recv(&mut c), recv(&mut c));
    assert_eq!(
        (
            a["data"]["offset"].as_u64(),
            a["data"]["duplicate"].as_bool()
        ),
        (Some(1), Some(false))
    );
    assert_eq!(
        (
            b["data"]["offset"].as_u64(),
            b["data"]["duplicate"].as_bool()
        ),
        (Some(1), Some(true))
    );
    drop(server);
}

#[test]
fn sigterm_closes_clients_with_1001_flushes_the_store_and_exits_0() {
    let dir = TempDir::new("edge-ws-channels-t");
    let cfg = config(dir.path());
    let mut server = Server::start(2, Some(&cfg));
    let mut c = connect(server.addr);
    send(
        &mut c,
        json!({"type":"publish","id":1,"data":{"channel":"p:drain","data":"kept"}}),
    );
    let ack = recv(&mut c);
    assert_eq!(ack["type"], "published", "{ack}");
    let epoch = ack["data"]["epoch"].as_str().unwrap().to_string();

    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The client hears "going away" (reconnect, docs/PROTOCOL.md section 8) and answers it.
    let close = loop {
        match c.read() {
            Ok(Message::Close(f)) => break f.expect("a close code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame before the end: {e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    let _ = c.flush();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");

    let server = Server::start(2, Some(&cfg));
    let mut c = connect(server.addr);
    send(
        &mut c,
        json!({"type":"history","id":2,"data":{"channel":"p:drain","limit":10}}),
    );
    let h = recv(&mut c);
    assert_eq!(h["data"]["epoch"], epoch.as_str(), "{h}");
    assert_eq!(h["data"]["publications"][0]["data"], "kept", "{h}");
    drop(server);
}
