//! Notifications through the real `edge-ws` binary, configured from TOML (API keys, a
//! store): a backend connection sends to an offline user, the server is killed with SIGKILL,
//! and after the restart the user connects and receives every acknowledged notification,
//! in order, then the unread count.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use edge_ws::testing::TempDir;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

mod common;
use common::Server;

fn connect(addr: SocketAddr, key: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tungstenite::client(req, stream).expect("handshake").0
}

fn recv(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn acknowledged_notifications_survive_kill_9_and_arrive_on_connect() {
    let dir = TempDir::new("edge-ws-notify-bin");
    let cfg = dir.path().join("edge-ws.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\n\
             [[auth.api_keys]]\nkey = \"k-backend\"\nuser = \"backend\"\npermissions = [\"notifications:send\"]\n\
             [[auth.api_keys]]\nkey = \"k-hana\"\nuser = \"hana\"\n\n\
             [notifications]\nenabled = true\n\n[store]\ndir = {:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut server = Server::start(2, Some(&cfg));
    let mut backend = connect(server.addr, "k-backend");
    assert_eq!(recv(&mut backend)["type"], "notifications.unread");
    for i in 0..20 {
        let m = json!({"type":"notifications.send","id":i,"data":{"user":"hana","type":"invite","title":format!("t{i}"),"data":{"i":i}}});
        backend.send(Message::text(m.to_string())).unwrap();
    }
    for i in 0..20u64 {
        let r = recv(&mut backend);
        assert_eq!(
            (
                r["type"].as_str(),
                r["id"].as_u64(),
                r["data"]["id"].as_u64()
            ),
            (Some("notifications.sent"), Some(i), Some(i + 1)),
            "{r}"
        );
    }
    drop(backend);
    server.kill9();
    drop(server);

    let server = Server::start(2, Some(&cfg));
    let mut hana = connect(server.addr, "k-hana");
    // Acknowledged before the kill: all 20 come back, pending, in order.
    let r = {
        let m = json!({"type":"notifications.list","id":"l","data":{"limit":100}});
        // Pending ones arrive first, then the unread count, then the list.
        hana.send(Message::text(m.to_string())).unwrap();
        let mut pushed = Vec::new();
        loop {
            let v = recv(&mut hana);
            match v["type"].as_str() {
                Some("notification") => pushed.push(v["data"]["id"].as_u64().unwrap()),
                Some("notifications.unread") => assert_eq!(v["data"]["count"], 20),
                Some("notifications") => break (v, pushed),
                _ => panic!("{v}"),
            }
        }
    };
    let (list, pushed) = r;
    assert_eq!(
        pushed,
        (1..=20).collect::<Vec<u64>>(),
        "every pending one, in order"
    );
    let ids: Vec<u64> = list["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=20).rev().collect::<Vec<u64>>());
    let send = json!({"type":"notifications.send","id":1,"data":{"user":"x","type":"t"}});
    hana.send(Message::text(send.to_string())).unwrap();
    let r = recv(&mut hana);
    assert!(
        r["error"].as_str().unwrap().contains("notifications:send"),
        "without the permission: {r}"
    );
    drop(hana);
    drop(server);
}
