//! Presence over real WebSockets: a user is online while any connection is (on any core),
//! offline with `last_seen` after the grace period; heartbeats and custom statuses; channel
//! members counted per connection and per user, with join/leave events only for a user's
//! first and last connection; queries over the envelope and from Rust; bad input answered.

#[path = "manager_util.rs"]
mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_ws::{ChannelConfig, ChannelPolicy};
use edge_ws_server::presence::{PresenceConfig, Status};
use edge_ws_server::{ApiKeyAuth, Auth, Event, Manager, Router, UserContext};
use serde_json::{json, Value};
use util::*;

fn manager(changes: Arc<Mutex<Vec<(String, String)>>>) -> Manager {
    Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::new("x-api-key", |key, _| {
            Ok(UserContext::new(key))
        })))
        .presence(PresenceConfig {
            grace: Duration::from_millis(150),
            heartbeat_timeout: Some(Duration::from_millis(400)),
            ..PresenceConfig::default()
        })
        .on_event(move |e| {
            if let Event::Presence { change } = e {
                changes
                    .lock()
                    .unwrap()
                    .push((change.user.clone(), change.to.as_str().to_string()));
            }
        })
        .build()
}

fn engine(m: &Manager) -> edge_ws::Engine {
    let mut cfg = config(2);
    cfg.channels = ChannelConfig::default()
        .namespace("room:", ChannelPolicy::history(100).with_presence())
        .namespace(
            "quiet:",
            ChannelPolicy {
                presence: true,
                ..ChannelPolicy::default()
            },
        );
    start(m, cfg, || Router::new().channels())
}

fn call(ws: &mut Ws, v: Value) -> Value {
    send(ws, &v.to_string());
    serde_json::from_str(&recv(ws)).unwrap()
}

fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv(ws)).unwrap()
}

fn connect(addr: std::net::SocketAddr, user: &str) -> Ws {
    let mut ws = upgrade(addr, "/", &[("x-api-key", user)]).open();
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ws
}

#[test]
fn online_offline_across_cores_and_join_leave_per_user() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let m = manager(changes.clone());
    let e = engine(&m);
    let addr = e.local_addr();
    let mut a1 = connect(addr, "alice");
    let mut a2 = connect(addr, "alice");
    let mut bob = connect(addr, "bob");
    eventually("three connections", || m.active_connections() == 3);
    let p = m.presence("alice").unwrap();
    assert_eq!((p.status, p.connections), (Status::Online, 2));

    let sub = |ws: &mut Ws| {
        let r = call(
            ws,
            json!({"type":"subscribe","id":1,"data":{"channel":"room:1"}}),
        );
        assert_eq!(r["type"], "subscribed", "{r}");
    };
    sub(&mut bob);
    // bob's own join reaches bob (the only subscriber).
    assert_eq!(next(&mut bob)["type"], "presence.join");
    sub(&mut a1);
    let j = next(&mut a1);
    assert_eq!(
        (j["type"].as_str(), j["data"]["user"].as_str()),
        (Some("presence.join"), Some("alice"))
    );
    let j = next(&mut bob);
    assert_eq!(
        (
            j["type"].as_str(),
            j["channel"].as_str(),
            j["data"]["user"].as_str()
        ),
        (Some("presence.join"), Some("room:1"), Some("alice"))
    );
    // alice's second connection: a member, but no second join.
    sub(&mut a2);
    let r = call(
        &mut bob,
        json!({"type":"presence.channel","id":2,"data":{"channel":"room:1","members":true}}),
    );
    assert_eq!(r["type"], "presence.channel", "{r}");
    assert_eq!(
        (r["data"]["clients"].as_u64(), r["data"]["users"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(r["data"]["members"].as_array().unwrap().len(), 3);
    assert_eq!(m.channel_presence("room:1", false).clients, 3);

    // a1 goes: alice is still in the room (a2), so no leave; a2 unsubscribes: alice left.
    drop(a1);
    eventually("a1 closed", || m.active_connections() == 2);
    let r = call(
        &mut a2,
        json!({"type":"unsubscribe","id":3,"data":{"channel":"room:1"}}),
    );
    assert_eq!(r["data"]["was_subscribed"], true);
    let l = next(&mut bob);
    assert_eq!(
        (l["type"].as_str(), l["data"]["user"].as_str()),
        (Some("presence.leave"), Some("alice"))
    );
    assert_eq!(m.channel_presence("room:1", false).users, 1);

    // alice's last connection goes: online through the grace, then offline with last_seen.
    drop(a2);
    eventually("a2 closed", || m.active_connections() == 1);
    assert_eq!(
        m.presence("alice").unwrap().status,
        Status::Online,
        "within the grace"
    );
    eventually("alice offline", || {
        m.presence("alice").unwrap().status == Status::Offline
    });
    let p = m.presence("alice").unwrap();
    assert_eq!(p.connections, 0);
    assert!(p.last_seen_ms > 0);
    let seen: Vec<(String, String)> = changes.lock().unwrap().clone();
    assert!(seen.contains(&("alice".into(), "online".into())));
    assert!(seen.contains(&("alice".into(), "offline".into())));
    // Over the envelope, an offline user and one never seen.
    let r = call(
        &mut bob,
        json!({"type":"presence.get","id":4,"data":{"users":["alice","zed"]}}),
    );
    let users = r["data"]["users"].as_array().unwrap();
    assert_eq!(users[0]["status"], "offline");
    assert_eq!(users[0]["last_seen"], p.last_seen_ms);
    assert_eq!(
        (users[1]["status"].as_str(), users[1]["last_seen"].as_u64()),
        (Some("offline"), Some(0))
    );
}

#[test]
fn heartbeats_statuses_and_bad_input() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let m = manager(changes.clone());
    let e = engine(&m);
    let mut carol = connect(e.local_addr(), "carol");
    eventually("carol online", || {
        m.presence("carol").is_some_and(|p| p.connections == 1)
    });
    // No heartbeat for 400 ms: away; a heartbeat: online again.
    eventually("carol away", || {
        m.presence("carol").unwrap().status == Status::Away
    });
    let r = call(&mut carol, json!({"type":"presence.heartbeat","id":1}));
    assert_eq!(r["type"], "presence.heartbeat");
    assert_eq!(m.presence("carol").unwrap().status, Status::Online);
    // A custom status with metadata, set by the client.
    let r = call(
        &mut carol,
        json!({"type":"presence.set","id":2,"data":{"status":"in a meeting","meta":{"room":7}}}),
    );
    assert_eq!(
        (
            r["data"]["status"].as_str(),
            r["data"]["meta"]["room"].as_u64()
        ),
        (Some("in a meeting"), Some(7))
    );
    m.set_presence("carol", Status::Away, None).unwrap();
    assert_eq!(m.presence("carol").unwrap().status, Status::Away);
    assert!(m.set_presence("nobody", Status::Online, None).is_err());
    let expect_error = |ws: &mut Ws, v: Value, want: &str| {
        let r = call(ws, v.clone());
        assert_eq!(r["type"], "error", "{v} → {r}");
        assert!(r["error"].as_str().unwrap().contains(want), "{v} → {r}");
    };
    expect_error(
        &mut carol,
        json!({"type":"presence.set","id":3,"data":{"status":"offline"}}),
        "cannot be set",
    );
    expect_error(
        &mut carol,
        json!({"type":"presence.set","id":4,"data":{"status":"x","meta":"y".repeat(2000)}}),
        "at most 1024 bytes",
    );
    expect_error(
        &mut carol,
        json!({"type":"presence.set","id":5,"data":{"status":"z".repeat(100)}}),
        "1 to 64 bytes",
    );
    expect_error(
        &mut carol,
        json!({"type":"presence.channel","id":6,"data":{"channel":"plain"}}),
        "does not track presence",
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    expect_error(
        &mut carol,
        json!({"type":"presence.get","id":7,"data":{"users":many}}),
        "at most 100",
    );
    // A channel that tracks presence without announcing it: members, no join event.
    let r = call(
        &mut carol,
        json!({"type":"subscribe","id":8,"data":{"channel":"quiet:1"}}),
    );
    assert_eq!(r["type"], "subscribed");
    let r = call(
        &mut carol,
        json!({"type":"presence.channel","id":9,"data":{"channel":"quiet:1"}}),
    );
    assert_eq!(r["data"]["clients"], 1, "{r}");
    assert!(changes
        .lock()
        .unwrap()
        .iter()
        .any(|(u, s)| u == "carol" && s == "away"));
}
