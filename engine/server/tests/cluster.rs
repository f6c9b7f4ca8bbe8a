//! Two `edge-ws` processes joined by `[cluster] redis_url` through a real redis-server
//! (feature `cluster`; `cargo test --workspace` turns it on through edge-ws-cluster's tests):
//! a publish on one reaches a subscriber on the other, and a client recovers on the other
//! node with the same offsets and epoch.
#![cfg(feature = "cluster")]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_ws_cluster::testing::{have_redis, Redis};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

mod common;
use common::Server;

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

fn config(dir: &Path, node: usize, redis: &str) -> PathBuf {
    let path = dir.join(format!("node{node}.toml"));
    let text = format!(
        "[auth]\nquery_user = \"\"\n\n[rate_limit]\nmessages_per_second = 0\n\n[channels]\nhistory_size = 0\n\n\
         [[channels.namespace]]\nprefix = \"m:\"\nhistory_size = 100\n\n\
         [store]\ndir = {:?}\n\n[cluster]\nredis_url = {redis:?}\n",
        dir.join(format!("data{node}"))
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until `node`'s /health reports the broker up with `subscriptions` channels.
fn wait_subscribed(node: SocketAddr, subscriptions: u64) {
    use std::io::{Read, Write};
    let want = format!("\"subscriptions\":{subscriptions},");
    let mut last = String::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(node).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.contains("\"state\":\"up\"") && out.contains(&want) {
            return;
        }
        last = out;
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{node} never had {subscriptions} subscriptions at Redis: {last}");
}

#[test]
fn two_edge_ws_processes_publish_and_recover_across_each_other() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("edge-ws-cluster-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let one = Server::start(2, Some(&config(&dir, 1, &redis.url())));
    let two = Server::start(2, Some(&config(&dir, 2, &redis.url())));
    // A subscriber on node one, a publisher on node two.
    let mut sub = connect(one.addr);
    send(
        &mut sub,
        json!({"type":"subscribe","id":1,"data":{"channel":"m:room"}}),
    );
    let r = recv(&mut sub);
    assert_eq!(r["type"], "subscribed", "{r}");
    let epoch = r["data"]["epoch"].as_str().unwrap().to_string();
    send(
        &mut sub,
        json!({"type":"subscribe","id":2,"data":{"channel":"plain"}}),
    );
    assert_eq!(recv(&mut sub)["type"], "subscribed");
    wait_subscribed(one.addr, 2);
    let mut publisher = connect(two.addr);
    for i in 1..=3u64 {
        send(
            &mut publisher,
            json!({"type":"publish","id":i,"data":{"channel":"m:room","data":{"n":i}}}),
        );
        let ack = recv(&mut publisher);
        assert_eq!(ack["type"], "published", "{ack}");
        assert_eq!(ack["data"]["offset"], i, "{ack}");
        assert_eq!(
            ack["data"]["epoch"],
            epoch.as_str(),
            "one epoch cluster-wide"
        );
    }
    send(
        &mut publisher,
        json!({"type":"publish","id":"p","data":{"channel":"plain","data":"hi"}}),
    );
    assert_eq!(recv(&mut publisher)["type"], "published");
    for i in 1..=3u64 {
        let p = recv(&mut sub);
        assert_eq!(p["type"], "publication", "{p}");
        assert_eq!(
            (p["channel"].as_str(), p["offset"].as_u64()),
            (Some("m:room"), Some(i))
        );
        assert_eq!(p["data"]["n"], i);
    }
    let p = recv(&mut sub);
    assert_eq!(
        (p["channel"].as_str(), p["data"].as_str()),
        (Some("plain"), Some("hi")),
        "{p}"
    );
    // The subscriber, having seen offset 1, moves to node two and recovers 2 and 3 there.
    drop(sub);
    let mut moved = connect(two.addr);
    send(
        &mut moved,
        json!({"type":"subscribe","id":3,"data":{"channel":"m:room","since":{"offset":1,"epoch":epoch}}}),
    );
    let r = recv(&mut moved);
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["data"]["recovered"], true, "{r}");
    assert_eq!(r["data"]["missed"], 2, "{r}");
    for i in 2..=3u64 {
        let p = recv(&mut moved);
        assert_eq!(p["offset"], i, "{p}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
