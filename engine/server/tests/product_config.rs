//! The binary's TOML reaches the product: API keys with permissions, who may subscribe and
//! publish per namespace, the per-connection rate limit, the per-user connection limit; the
//! built-in configuration is merged under the file and printed by --print-config.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use edge_ws::testing::TempDir;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

mod common;
use common::Server;

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(addr: SocketAddr, key: &str) -> Result<Ws, tungstenite::Error> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tungstenite::client(req, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
        })
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The reply with `id` (skipping pushes).
fn reply(ws: &mut Ws, id: u64) -> Value {
    for _ in 0..50 {
        if let Message::Text(t) = ws.read().expect("a message") {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }
    panic!("no reply {id}");
}

const CONFIG: &str = r#"
[auth]
api_keys = [
  { key = "boss-key", user = "boss", permissions = ["admin"] },
  { key = "ann-key", user = "ann" },
  { key = "ann-key-2", user = "ann" },
]

[limits]
max_connections_per_user = 1

[rate_limit]
messages_per_second = 1
messages_burst = 5

[channels]
subscribe = "users"

[[channels.namespace]]
prefix = "admin:"
publish = "permission:admin"

[[channels.namespace]]
prefix = "closed:"
subscribe = "nobody"
publish = "nobody"
"#;

#[test]
fn keys_permissions_access_rules_and_limits_come_from_the_file() {
    let dir = TempDir::new("edge-ws-product");
    let cfg = dir.path().join("edge-ws.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let server = Server::start(2, Some(&cfg));

    // A wrong key is refused before the upgrade.
    match connect(server.addr, "nope") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let mut boss = connect(server.addr, "boss-key").expect("boss connects");
    let mut ann = connect(server.addr, "ann-key").expect("ann connects");
    // One connection per user: ann's second key is the same user.
    match connect(server.addr, "ann-key-2") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    send(
        &mut ann,
        json!({"type":"subscribe","id":1,"data":{"channel":"admin:news"}}),
    );
    assert_eq!(reply(&mut ann, 1)["type"], "subscribed");
    send(
        &mut ann,
        json!({"type":"publish","id":2,"data":{"channel":"admin:news","data":"mine"}}),
    );
    let r = reply(&mut ann, 2);
    assert_eq!(r["error"], "not allowed to publish to admin:news", "{r}");
    send(
        &mut boss,
        json!({"type":"publish","id":3,"data":{"channel":"admin:news","data":"official"}}),
    );
    assert_eq!(reply(&mut boss, 3)["type"], "published");
    send(
        &mut boss,
        json!({"type":"subscribe","id":4,"data":{"channel":"closed:x"}}),
    );
    assert_eq!(
        reply(&mut boss, 4)["error"],
        "not allowed to subscribe to closed:x"
    );

    // 1 message per second with a burst of 5: a quick sixth and seventh are refused, the
    // connection stays.
    let mut refused = 0;
    for id in 10..17 {
        send(&mut ann, json!({"type":"ping","id":id}));
    }
    let mut answered = 0;
    while answered < 7 {
        let Message::Text(t) = ann.read().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "publication" {
            continue;
        }
        answered += 1;
        if v["error"] == "Rate limit exceeded" {
            refused += 1;
        }
    }
    // ann spent some of her burst above (subscribe, publish): at least 2 of the 7 fail.
    assert!(refused >= 2, "refused {refused}");
    assert!(ann.can_write());
    drop(server);
}

#[test]
fn print_config_shows_the_built_in_configuration_under_the_file() {
    let dir = TempDir::new("edge-ws-print");
    let cfg = dir.path().join("edge-ws.toml");
    std::fs::write(
        &cfg,
        "[server]\npin = false\n\n[notifications]\nmax_per_user = 7\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-ws"))
        .args(["--config", cfg.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    // The file's values, and the built-in ones beside them.
    assert_eq!(printed["server"]["pin"].as_bool(), Some(false));
    assert_eq!(printed["server"]["addr"].as_str(), Some("127.0.0.1:9001"));
    assert_eq!(
        printed["notifications"]["max_per_user"].as_integer(),
        Some(7)
    );
    assert_eq!(printed["notifications"]["enabled"].as_bool(), Some(true));
    assert_eq!(printed["demo"]["enabled"].as_bool(), Some(true));

    // An unknown key anywhere is refused with exit 2 and its name.
    std::fs::write(&cfg, "[notifications]\nmax_per_users = 7\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-ws"))
        .args(["--config", cfg.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_per_users"));
}
