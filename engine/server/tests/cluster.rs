//! Two `edge-ws` processes joined by `[cluster] redis_url` through a real redis-server
//! (feature `cluster`; `cargo test --workspace` turns it on through edge-ws-cluster's tests):
//! a publish on one reaches a subscriber on the other, and a client recovers on the other
//! node with the same offsets and epoch.
#![cfg(feature = "cluster")]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_ws::testing::TempDir;
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
    let dir = TempDir::new("edge-ws-cluster-bin");
    let one = Server::start(2, Some(&config(dir.path(), 1, &redis.url())));
    let two = Server::start(2, Some(&config(dir.path(), 2, &redis.url())));
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
    // Each channel's publications arrive in order; across channels there is no order to
    // expect (a channel with history is numbered by its owner core, which then fans out, so
    // the plain publication may overtake the numbered ones).
    let mut room = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..4 {
        let p = recv(&mut sub);
        assert_eq!(p["type"], "publication", "{p}");
        match p["channel"].as_str() {
            Some("m:room") => room.push((p["offset"].as_u64(), p["data"]["n"].as_u64())),
            Some("plain") => plain.push(p["data"].as_str().map(str::to_string)),
            _ => panic!("a publication on an unknown channel: {p}"),
        }
    }
    assert_eq!(
        room,
        (1..=3u64).map(|i| (Some(i), Some(i))).collect::<Vec<_>>(),
        "m:room in offset order"
    );
    assert_eq!(plain, vec![Some("hi".to_string())]);
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
}

// ---- The server product across nodes: users, presence, notifications, metrics. ----

const KEY: &str = "cluster-test-key";

/// A node of the product test: users named by `?user=`, the HTTP API, notifications, a
/// namespace with history, presence and join/leave (like the default config's `chat:`), presence entries expiring 600 ms after their
/// node stopped refreshing them, and no grace period (offline at once).
fn product_config(dir: &Path, node: usize, redis: &str) -> PathBuf {
    product_config_with(dir, node, redis, "enabled = false")
}

/// [`product_config`] with `documents` as the `[documents]` section.
fn product_config_with(dir: &Path, node: usize, redis: &str, documents: &str) -> PathBuf {
    let path = dir.join(format!("product{node}.toml"));
    let text = format!(
        "[auth]\nquery_user = \"user\"\n\n[rate_limit]\nmessages_per_second = 0\n\n\
         [http_api]\nkeys = [\"{KEY}\"]\n\n[presence]\ngrace_ms = 0\n\n\
         [notifications]\nenabled = true\n\n[documents]\n{documents}\n\n\
         [channels]\nhistory_size = 0\n\n\
         [[channels.namespace]]\nprefix = \"room:\"\nhistory_size = 10\npresence = true\njoin_leave = true\n\n\
         [store]\ndir = {:?}\n\n[cluster]\nredis_url = {redis:?}\npresence_ttl_ms = 600\n",
        dir.join(format!("pdata{node}"))
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh directory for a product test's configs and stores, removed when dropped.
fn product_dir(name: &str) -> TempDir {
    TempDir::new(&format!("edge-ws-cluster-{name}"))
}

/// A connection of `user`, past the `notifications.unread` every connection gets first.
fn user_ws(addr: SocketAddr, user: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) =
        tungstenite::client(format!("ws://{addr}/ws?user={user}"), stream).expect("handshake");
    let first = recv(&mut ws);
    assert_eq!(first["type"], "notifications.unread", "{first}");
    ws
}

/// One HTTP exchange on `addr`: status and body.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `POST /api/<method>` on `node`'s HTTP API; the answer must be 200.
fn api(node: &Server, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let (status, out) = http(
        node.api.expect("the HTTP API's address"),
        &format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{method} {body}: {out}");
    serde_json::from_str(&out).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// Reads until the connection is closed; returns the close code.
fn recv_close(ws: &mut WebSocket<TcpStream>) -> u16 {
    for _ in 0..20 {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Close(None)) => return 1005,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a close, got {other:?}"),
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
    panic!("no close");
}

/// Polls `f` every 50 ms for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never: {what}");
}

#[test]
fn a_users_connections_on_two_nodes_get_sends_notifications_and_closes_from_a_third() {
    if !have_redis() {
        return;
    }
    let mut redis = Redis::start();
    let dir = product_dir("users");
    let one = Server::start(2, Some(&product_config(dir.path(), 1, &redis.url())));
    let two = Server::start(1, Some(&product_config(dir.path(), 2, &redis.url())));
    let three = Server::start(1, Some(&product_config(dir.path(), 3, &redis.url())));
    let mut a1 = user_ws(one.addr, "alice");
    let mut a2 = user_ws(two.addr, "alice");
    let mut bob = user_ws(one.addr, "bob");
    // Node one listens to user#alice and user#bob, node two to user#alice.
    wait_subscribed(one.addr, 2);
    wait_subscribed(two.addr, 1);

    // send_to_user through node three's HTTP API: both of alice's connections, not bob.
    let r = api(
        &three,
        "send_to_user",
        json!({"user":"alice","type":"hello","data":{"n":1}}),
    );
    assert_eq!(
        r["connections"], 0,
        "none of alice's connections is on node three"
    );
    for ws in [&mut a1, &mut a2] {
        let m = recv(ws);
        assert_eq!(
            (m["type"].as_str(), m["data"]["n"].as_u64()),
            (Some("hello"), Some(1)),
            "{m}"
        );
    }
    // A notification sent on node three reaches both, with the unread count.
    let r = api(
        &three,
        "notify",
        json!({"user":"alice","type":"mention","title":"hi","body":"there"}),
    );
    let id = r["id"].as_u64().expect("an id");
    for ws in [&mut a1, &mut a2] {
        let m = recv(ws);
        assert_eq!(m["type"], "notification", "{m}");
        assert_eq!(
            (m["data"]["id"].as_u64(), m["data"]["title"].as_str()),
            (Some(id), Some("hi"))
        );
        let m = recv(ws);
        assert_eq!(m["type"], "notifications.unread", "{m}");
        assert_eq!(m["data"]["count"], 1);
    }
    // Node three marks it delivered: the cluster presence shows alice's connections elsewhere.
    eventually("the notification marked delivered", || {
        let page = api(&three, "notifications", json!({"user":"alice"}));
        page["items"][0]["delivered"] == true
    });
    // Bob got none of it: the next thing he gets is his own message.
    api(
        &three,
        "send_to_user",
        json!({"user":"bob","type":"only-bob","data":null}),
    );
    assert_eq!(recv(&mut bob)["type"], "only-bob");

    // The product's /metrics lists the broker's series and the cluster's counters.
    let (status, page) = get(three.addr, "/metrics");
    assert_eq!(status, 200);
    let value = |page: &str, series: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    assert_eq!(value(&page, "edge_ws_broker_up"), 1);
    assert_eq!(value(&page, r#"edge_ws_broker_state{state="up"}"#), 1);
    assert_eq!(value(&page, r#"edge_ws_broker_state{state="down"}"#), 0);
    // A send to alice, the notification's push and unread count, a send to bob.
    assert_eq!(value(&page, "edge_ws_cluster_user_commands_sent_total"), 4);
    // (Counted when Redis's reply is read, which may come after the other node delivered.)
    eventually("four publishes counted", || {
        value(&get(three.addr, "/metrics").1, "edge_ws_broker_published") >= 4
    });
    assert_eq!(value(&page, "edge_ws_broker_publish_errors"), 0);
    let (_, page_two) = get(two.addr, "/metrics");
    assert_eq!(
        value(&page_two, "edge_ws_cluster_user_commands_received_total"),
        3
    );
    assert!(value(&page_two, "edge_ws_broker_received") >= 3);
    assert_eq!(value(&page_two, "edge_ws_cluster_malformed_total"), 0);

    // A client may not listen to or publish on another user's channel.
    send(
        &mut bob,
        json!({"type":"subscribe","id":1,"data":{"channel":"user#alice"}}),
    );
    let r = recv(&mut bob);
    assert_eq!(r["type"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("reserved"), "{r}");

    // disconnect through node three closes alice everywhere.
    let r = api(
        &three,
        "disconnect",
        json!({"user":"alice","code":4503,"reason":"banned"}),
    );
    assert_eq!(r["connections"], 0);
    assert_eq!(recv_close(&mut a1), 4503);
    assert_eq!(recv_close(&mut a2), 4503);

    // Redis gone: the state says so on /metrics, and /health answers 503.
    redis.kill();
    eventually("the broker down on /metrics", || {
        let (_, page) = get(three.addr, "/metrics");
        page.contains("edge_ws_broker_state{state=\"down\"} 1")
            && page.contains("edge_ws_broker_up 0")
    });
    assert_eq!(get(three.addr, "/health").0, 503);
    // A presence read without Redis: a clear 503, counted.
    let (status, body) = http(
        three.api.unwrap(),
        &format!(
            "POST /api/presence HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{{\"user\":\"alice\"}}"
        ),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("presence: broker unavailable"), "{body}");
    let (_, page) = get(three.addr, "/metrics");
    assert!(value(&page, "edge_ws_cluster_presence_errors_total") >= 1);
    // Redis back: node one listens to user#bob again, and a send from node three reaches him.
    redis.restart();
    wait_subscribed(one.addr, 1);
    eventually("the broker up on node three", || {
        get(three.addr, "/health").0 == 200
    });
    api(
        &three,
        "send_to_user",
        json!({"user":"bob","type":"after-restart","data":null}),
    );
    assert_eq!(recv(&mut bob)["type"], "after-restart");
    // The first publish after the reconnect did not fail on the command connection kept
    // from before the outage (nothing was published while Redis was down).
    let (_, page) = get(three.addr, "/metrics");
    assert_eq!(value(&page, "edge_ws_broker_publish_errors"), 0, "{page}");
}

#[test]
fn user_and_channel_presence_span_the_nodes_and_a_killed_nodes_presence_expires() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let dir = product_dir("presence");
    let mut one = Server::start(1, Some(&product_config(dir.path(), 1, &redis.url())));
    let two = Server::start(1, Some(&product_config(dir.path(), 2, &redis.url())));
    let three = Server::start(1, Some(&product_config(dir.path(), 3, &redis.url())));
    let join = |ws: &mut WebSocket<TcpStream>, id: u64| {
        send(
            ws,
            json!({"type":"subscribe","id":id,"data":{"channel":"room:a"}}),
        );
        let r = recv(ws);
        assert_eq!(r["type"], "subscribed", "{r}");
    };
    let mut alice = user_ws(one.addr, "alice");
    join(&mut alice, 1);
    // alice's own join comes back to her.
    let j = recv(&mut alice);
    assert_eq!(
        (j["type"].as_str(), j["data"]["user"].as_str()),
        (Some("presence.join"), Some("alice")),
        "{j}"
    );
    // Node one: user#alice and room:a; node two: user#bob, then room:a.
    wait_subscribed(one.addr, 2);
    let mut bob = user_ws(two.addr, "bob");
    join(&mut bob, 1);
    // bob's join on node two reaches alice on node one, with a cluster-wide client id.
    let j = recv(&mut alice);
    assert_eq!(
        (j["type"].as_str(), j["data"]["user"].as_str()),
        (Some("presence.join"), Some("bob")),
        "{j}"
    );
    let bob_client = j["data"]["client"].as_str().unwrap().to_string();
    assert_eq!(
        bob_client.split(':').count(),
        3,
        "<node>:<core>:<conn>: {bob_client}"
    );
    assert_eq!(recv(&mut bob)["type"], "presence.join");
    wait_subscribed(two.addr, 2);
    // alice's second connection, on node two, is no new join: she is in the room on node one.
    let mut alice2 = user_ws(two.addr, "alice");
    join(&mut alice2, 1);
    send(
        &mut bob,
        json!({"type":"publish","id":2,"data":{"channel":"room:a","data":"marker"}}),
    );
    let next = recv(&mut alice);
    assert_eq!(
        (next["type"].as_str(), next["data"].as_str()),
        (Some("publication"), Some("marker")),
        "no second join for alice: {next}"
    );

    // Channel presence, asked on node three (nobody there): three connections, two users.
    check_channel_presence(&three, 3, 2);
    // Over the WebSocket, on node two.
    send(
        &mut bob,
        json!({"type":"presence.channel","id":3,"data":{"channel":"room:a","members":true}}),
    );
    let p = loop {
        let m = recv(&mut bob);
        if m["type"] == "presence.channel" {
            break m;
        }
    };
    assert_eq!(
        (p["data"]["clients"].as_u64(), p["data"]["users"].as_u64()),
        (Some(3), Some(2)),
        "{p}"
    );
    assert!(
        p["data"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["client"] == bob_client.as_str()),
        "{p}"
    );
    // User presence, asked on node three: alice has two connections over two nodes.
    let pa = api(&three, "presence", json!({"user":"alice"}));
    assert_eq!(
        (pa["status"].as_str(), pa["connections"].as_u64()),
        (Some("online"), Some(2)),
        "{pa}"
    );
    send(
        &mut bob,
        json!({"type":"presence.get","id":4,"data":{"users":["alice","bob","carol"]}}),
    );
    let g = loop {
        let m = recv(&mut bob);
        if m["type"] == "presence" {
            break m;
        }
    };
    let users = g["data"]["users"].as_array().unwrap();
    let conns: Vec<(String, u64)> = users
        .iter()
        .map(|u| {
            (
                u["status"].as_str().unwrap().to_string(),
                u["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        conns,
        vec![
            ("online".into(), 2),
            ("online".into(), 1),
            ("offline".into(), 0)
        ],
        "{g}"
    );
    let info = api(&three, "info", json!({}));
    assert_eq!(info["cluster"]["users_online"], 2, "{info}");
    assert_eq!(info["users_online"], 0, "none on node three itself");

    // alice's connection on node two leaves the room: no leave (she is still in on node one).
    send(
        &mut alice2,
        json!({"type":"unsubscribe","id":5,"data":{"channel":"room:a"}}),
    );
    send(
        &mut bob,
        json!({"type":"publish","id":6,"data":{"channel":"room:a","data":"marker2"}}),
    );
    let next = recv(&mut alice);
    assert_eq!(next["data"], "marker2", "no leave for alice: {next}");
    drop(alice2);

    // Node one is killed: alice's presence there expires (600 ms), on every other node.
    one.kill9();
    eventually("alice's presence expired", || {
        let pa = api(&three, "presence", json!({"user":"alice"}));
        pa["status"] == "offline" && pa["connections"] == 0
    });
    eventually("node one's room members expired", || {
        let p = api(
            &three,
            "channel_presence",
            json!({"channel":"room:a","members":true}),
        );
        p["clients"] == 1 && p["members"][0]["client"] == bob_client.as_str()
    });
    eventually("one user online", || {
        api(&three, "info", json!({}))["cluster"]["users_online"] == 1
    });
    drop(alice);
}

/// `channel_presence` of room:a through `node`'s HTTP API.
fn check_channel_presence(node: &Server, clients: u64, users: u64) {
    let p = api(
        node,
        "channel_presence",
        json!({"channel":"room:a","members":true}),
    );
    assert_eq!(
        (p["clients"].as_u64(), p["users"].as_u64()),
        (Some(clients), Some(users)),
        "{p}"
    );
    assert_eq!(
        p["members"].as_array().map(Vec::len),
        Some(clients as usize),
        "{p}"
    );
}

/// Reads until a message of `kind` (skipping others, at most 20).
fn recv_type(ws: &mut WebSocket<TcpStream>, kind: &str) -> Value {
    for _ in 0..20 {
        let m = recv(ws);
        if m["type"] == kind {
            return m;
        }
    }
    panic!("no {kind}");
}

/// Joins `doc`: the `doc.joined` answer.
fn doc_join(ws: &mut WebSocket<TcpStream>, doc: &str) -> Value {
    send(ws, json!({"type":"doc.join","id":1,"data":{"doc":doc}}));
    let j = recv_type(ws, "doc.joined");
    j["data"].clone()
}

/// The `doc.ack` of this connection's edit and the `doc.op` of another's, in either order.
fn ack_and_op(ws: &mut WebSocket<TcpStream>) -> (Value, Value) {
    let (mut ack, mut op) = (None, None);
    for _ in 0..20 {
        let m = recv(ws);
        match m["type"].as_str() {
            Some("doc.ack") => ack = Some(m["data"].clone()),
            Some("doc.op") => op = Some(m["data"].clone()),
            Some("error") => panic!("{m}"),
            _ => {}
        }
        if let (Some(a), Some(o)) = (&ack, &op) {
            return (a.clone(), o.clone());
        }
    }
    panic!("no ack and op: {ack:?} {op:?}");
}

#[test]
fn a_document_is_sequenced_once_for_the_cluster_and_outlives_its_nodes() {
    if !have_redis() {
        return;
    }
    let redis = Redis::start();
    let dir = product_dir("docs");
    let docs = "enabled = true\nsnapshot_every = 2";
    let mut one = Server::start(
        1,
        Some(&product_config_with(dir.path(), 1, &redis.url(), docs)),
    );
    let two = Server::start(
        1,
        Some(&product_config_with(dir.path(), 2, &redis.url(), docs)),
    );
    let mut alice = user_ws(one.addr, "alice");
    let mut bob = user_ws(two.addr, "bob");
    let j = doc_join(&mut alice, "notes");
    assert_eq!(
        (j["revision"].as_u64(), j["text"].as_str()),
        (Some(0), Some("")),
        "{j}"
    );
    // Node one: user#alice and doc#notes; node two the same for bob.
    wait_subscribed(one.addr, 2);
    let j = doc_join(&mut bob, "notes");
    assert_eq!(
        j["members"].as_array().map(Vec::len),
        Some(2),
        "alice on node one is a member: {j}"
    );
    wait_subscribed(two.addr, 2);
    let e = recv_type(&mut alice, "doc.user_joined");
    assert_eq!(e["data"]["user"], "bob", "{e}");

    // Both edit revision 0 at once, on different nodes: Redis orders them, the later one is
    // transformed against the earlier, each gets its ack and the other's op.
    send(
        &mut alice,
        json!({"type":"doc.edit","id":10,"data":{"doc":"notes","revision":0,"op":["a"]}}),
    );
    send(
        &mut bob,
        json!({"type":"doc.edit","id":20,"data":{"doc":"notes","revision":0,"op":["b"]}}),
    );
    let (a_ack, a_op) = ack_and_op(&mut alice);
    let (b_ack, b_op) = ack_and_op(&mut bob);
    let mut revs = [
        a_ack["revision"].as_u64().unwrap(),
        b_ack["revision"].as_u64().unwrap(),
    ];
    revs.sort_unstable();
    assert_eq!(
        revs,
        [1, 2],
        "one sequence for the cluster: {a_ack} {b_ack}"
    );
    assert_eq!(a_op["revision"], b_ack["revision"], "{a_op}");
    assert_eq!(b_op["revision"], a_ack["revision"], "{b_op}");
    assert_eq!(a_op["user"], "bob");
    assert_eq!(b_op["user"], "alice");
    // Both nodes hold the same text.
    let mut carol = user_ws(one.addr, "carol");
    let mut dave = user_ws(two.addr, "dave");
    let c = doc_join(&mut carol, "notes");
    let d = doc_join(&mut dave, "notes");
    assert_eq!(c["revision"], 2, "{c}");
    assert_eq!(
        (c["revision"].clone(), c["text"].clone()),
        (d["revision"].clone(), d["text"].clone())
    );
    let text = c["text"].as_str().unwrap().to_string();
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    assert_eq!(chars, vec!['a', 'b'], "{text}");

    // Node one dies; bob goes on editing on node two; a node started afterwards catches up
    // from Redis (the snapshot at revision 2 and the log after it).
    one.kill9();
    send(
        &mut bob,
        json!({"type":"doc.edit","id":21,"data":{"doc":"notes","revision":2,"op":[2,"c"]}}),
    );
    let ack = recv_type(&mut bob, "doc.ack");
    assert_eq!(
        (ack["id"].as_u64(), ack["data"]["revision"].as_u64()),
        (Some(21), Some(3)),
        "{ack}"
    );
    let three = Server::start(
        1,
        Some(&product_config_with(dir.path(), 3, &redis.url(), docs)),
    );
    let mut erin = user_ws(three.addr, "erin");
    let e = doc_join(&mut erin, "notes");
    assert_eq!(e["revision"], 3, "{e}");
    assert_eq!(e["text"].as_str(), Some(format!("{text}c").as_str()), "{e}");
    // Node three's edit reaches bob on node two with the next revision.
    send(
        &mut erin,
        json!({"type":"doc.edit","id":30,"data":{"doc":"notes","revision":3,"op":[3,"!"]}}),
    );
    let op = recv_type(&mut bob, "doc.op")["data"].clone();
    assert_eq!(
        (op["revision"].as_u64(), op["user"].as_str()),
        (Some(4), Some("erin")),
        "{op}"
    );
    assert_eq!(recv_type(&mut erin, "doc.ack")["data"]["revision"], 4);

    // Redis loses everything (FLUSHALL, like a restart without persistence): the next edit
    // finds Redis behind the node's copy and is refused with a clear error, never lost in a
    // loop of retries; a rejoin starts from what Redis has.
    // (First the snapshot node three writes at revision 4 is in: a late one would bring the
    // document back at 4.)
    eventually("the snapshot at revision 4 in Redis", || {
        redis_cmd(redis.port, "HGET edge-ws:{doc#notes}:logmeta r\r\n") == "$1\r\n4\r\n"
    });
    assert_eq!(redis_cmd(redis.port, "FLUSHALL\r\n"), "+OK\r\n");
    send(
        &mut bob,
        json!({"type":"doc.edit","id":22,"data":{"doc":"notes","revision":4,"op":[4,"?"]}}),
    );
    let e = recv_type(&mut bob, "error");
    assert_eq!(e["id"], 22, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("Redis lost it?"),
        "{e}"
    );
    let j = doc_join(&mut bob, "notes");
    assert_eq!(
        (j["revision"].as_u64(), j["text"].as_str()),
        (Some(0), Some("")),
        "{j}"
    );
    drop((alice, carol, dave));
}

/// An ot.js-style editor (one operation awaiting its ack, what is typed meanwhile composed,
/// both transformed against incoming operations) on a connection of the product binary.
struct Editor {
    ws: WebSocket<TcpStream>,
    revision: u64,
    text: String,
    outstanding: Option<edge_ws_ot::TextOperation>,
    buffer: Option<edge_ws_ot::TextOperation>,
    sent: u64,
}

impl Editor {
    fn join(addr: SocketAddr, user: &str) -> Editor {
        let mut ws = user_ws(addr, user);
        let j = doc_join(&mut ws, "race");
        Editor {
            ws,
            revision: j["revision"].as_u64().unwrap(),
            text: j["text"].as_str().unwrap().to_string(),
            outstanding: None,
            buffer: None,
            sent: 0,
        }
    }

    fn send_op(&mut self, op: &edge_ws_ot::TextOperation) {
        let op: Value = serde_json::from_str(&op.to_json()).unwrap();
        send(
            &mut self.ws,
            json!({"type":"doc.edit","data":{"doc":"race","revision":self.revision,"op":op}}),
        );
        self.sent += 1;
    }

    fn local(&mut self, op: edge_ws_ot::TextOperation) {
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

    fn settled(&self) -> bool {
        self.outstanding.is_none() && self.buffer.is_none()
    }

    /// Handles what arrives within `wait`.
    fn pump(&mut self, wait: Duration) {
        self.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
        loop {
            let m: Value = match self.ws.read() {
                Ok(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
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
            match m["type"].as_str().unwrap_or("") {
                "doc.ack" => {
                    self.revision = m["data"]["revision"].as_u64().unwrap();
                    self.outstanding = self.buffer.take();
                    if let Some(op) = self.outstanding.clone() {
                        self.send_op(&op);
                    }
                }
                "doc.op" => {
                    self.revision = m["data"]["revision"].as_u64().unwrap();
                    let mut op =
                        edge_ws_ot::TextOperation::from_json(&m["data"]["op"].to_string()).unwrap();
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
                "error" => panic!("{m}"),
                _ => {}
            }
        }
    }
}

/// A random insert or delete (ASCII) in `text`, from a xorshift state.
fn random_op(text: &str, rng: &mut u64) -> edge_ws_ot::TextOperation {
    let mut next = |n: usize| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        (*rng % n.max(1) as u64) as usize
    };
    let len = text.len();
    let at = next(len + 1);
    if len > at && next(3) == 0 {
        let n = (1 + next(3)).min(len - at);
        return edge_ws_ot::TextOperation::new()
            .retain(at)
            .delete(n)
            .retain(len - at - n);
    }
    let piece = ["a", "b", "c", "xy", " "][next(5)];
    edge_ws_ot::TextOperation::new()
        .retain(at)
        .insert(piece)
        .retain(len - at)
}

#[test]
fn editors_on_three_nodes_converge_on_one_sequence() {
    if !have_redis() {
        return;
    }
    const EDITS: usize = 25;
    let redis = Redis::start();
    let dir = product_dir("race");
    let docs = "enabled = true\nsnapshot_every = 3";
    let nodes: Vec<Server> = (1..=3)
        .map(|n| {
            Server::start(
                1,
                Some(&product_config_with(dir.path(), n, &redis.url(), docs)),
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Every node listens to doc#race before the editing starts.
    let mut editors: Vec<Editor> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Editor::join(*a, &format!("e{i}")))
        .collect();
    for a in &addrs {
        wait_subscribed(*a, 2);
    }
    let start = std::sync::Arc::new(std::sync::Barrier::new(editors.len()));
    let threads: Vec<_> = editors
        .drain(..)
        .enumerate()
        .map(|(k, mut e)| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((k as u64 + 1) * 7919);
                start.wait();
                for _ in 0..EDITS {
                    let op = random_op(&e.text, &mut rng);
                    e.local(op);
                    let pause = (rng % 4) + 1;
                    e.pump(Duration::from_millis(pause));
                }
                for _ in 0..3000 {
                    if e.settled() {
                        break;
                    }
                    e.pump(Duration::from_millis(10));
                }
                assert!(e.settled(), "every operation acknowledged");
                e
            })
        })
        .collect();
    let mut editors: Vec<Editor> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total: u64 = editors.iter().map(|e| e.sent).sum();
    for e in editors.iter_mut() {
        for _ in 0..1000 {
            if e.revision >= total {
                break;
            }
            e.pump(Duration::from_millis(10));
        }
    }
    // One sequence: every operation sent became exactly one revision, every editor holds the
    // same text, and so does every node.
    let texts: Vec<(u64, String)> = editors
        .iter()
        .map(|e| (e.revision, e.text.clone()))
        .collect();
    assert!(
        texts.iter().all(|t| *t == (total, texts[0].1.clone())),
        "{texts:?}"
    );
    for a in &addrs {
        let mut ws = user_ws(*a, "reader");
        let j = doc_join(&mut ws, "race");
        assert_eq!(
            (j["revision"].as_u64(), j["text"].as_str()),
            (Some(total), Some(texts[0].1.as_str()))
        );
    }
    // The edits really were concurrent: some were transformed (and retried) on their node.
    let transformed: u64 = addrs
        .iter()
        .map(|a| {
            let (_, page) = get(*a, "/metrics");
            page.lines()
                .find_map(|l| {
                    l.strip_prefix("edge_ws_documents_transformed_total ")?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum();
    assert!(transformed > 0, "no edit was concurrent");
    let conflicts: u64 = addrs
        .iter()
        .map(|a| {
            let (_, page) = get(*a, "/metrics");
            page.lines()
                .find_map(|l| {
                    l.strip_prefix("edge_ws_documents_conflicts_total ")?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        })
        .sum();
    eprintln!("{total} operations from 3 nodes: {transformed} transformed, {conflicts} appends retried after a conflict");
    drop(nodes);
}

/// One inline command to the test's Redis; the raw reply.
fn redis_cmd(port: u16, command: &str) -> String {
    use std::io::{Read, Write};
    let mut r = TcpStream::connect(("127.0.0.1", port)).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    r.write_all(command.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = r.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}
