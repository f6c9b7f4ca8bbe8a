//! Notifications over real WebSockets and a real store on disk: the seed's flow (send while
//! offline, connect, receive pending, mark read, page through), delivery at once to every
//! open connection of a user on every core, unread counts pushed, eviction beyond the limit,
//! pending notifications surviving a restart of the whole server, and bad input.

#[path = "manager_util.rs"]
mod util;

use std::time::Duration;

use edge_ws::testing::TempDir;
use edge_ws_server::notifications::{
    ListQuery, NewNotification, NotificationConfig, NotificationError, Notifications, Selection,
};
use edge_ws_server::store::{Store, StoreHandle, StoreOptions};
use edge_ws_server::{ApiKeyAuth, Auth, Manager, Router, UserContext};
use serde_json::{json, Value};
use util::*;

/// A fresh directory for a test's store, removed when dropped.
fn dir(tag: &str) -> TempDir {
    TempDir::new(&format!("edge-ws-notify-{tag}"))
}

struct Server {
    manager: Manager,
    engine: edge_ws::Engine,
    n: Notifications,
}

fn server(store: &StoreHandle, config: NotificationConfig) -> Server {
    let n = Notifications::start(store.clone(), config);
    let manager = Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::new("x-api-key", |key, _| {
            Ok(UserContext::new(key))
        })))
        .notifications(n.clone())
        .build();
    let engine = start(&manager, config_cores(), || Router::new().channels());
    Server { manager, engine, n }
}

fn config_cores() -> edge_ws::Config {
    config(2)
}

fn connect(addr: std::net::SocketAddr, user: &str) -> Ws {
    let mut ws = upgrade(addr, "/", &[("x-api-key", user)]).open();
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ws
}

fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv(ws)).unwrap()
}

fn call(ws: &mut Ws, v: Value) -> Value {
    send(ws, &v.to_string());
    next(ws)
}

fn note(kind: &str, title: &str) -> NewNotification {
    NewNotification {
        kind: kind.into(),
        title: title.into(),
        body: format!("about {title}"),
        data: Some(format!(r#"{{"t":"{title}"}}"#)),
    }
}

#[test]
fn the_seed_flow_offline_then_pending_then_read_and_paged() {
    let d = dir("flow");
    let store = Store::open(d.path(), StoreOptions::default()).unwrap();
    let s = server(&store, NotificationConfig::default());
    let addr = s.engine.local_addr();
    // Sent while offline: durable ids, pending.
    let ids: Vec<u64> = (0..5)
        .map(|i| {
            s.n.send_blocking("dana", note("mention", &format!("m{i}")))
                .unwrap()
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let page =
        s.n.list_blocking(
            "dana",
            ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .unwrap();
    assert!(page.items.iter().all(|n| !n.delivered));
    // Connect: the pending ones arrive in order, then the unread count.
    let mut c = connect(addr, "dana");
    for i in 0..5 {
        let p = next(&mut c);
        assert_eq!(p["type"], "notification", "{p}");
        assert_eq!(
            (p["data"]["id"].as_u64(), p["data"]["title"].as_str()),
            (Some(i + 1), Some(format!("m{i}").as_str()))
        );
        assert_eq!(p["data"]["data"]["t"], format!("m{i}"));
    }
    let u = next(&mut c);
    assert_eq!(
        (u["type"].as_str(), u["data"]["count"].as_u64()),
        (Some("notifications.unread"), Some(5))
    );
    eventually("marked delivered", || {
        s.n.list_blocking(
            "dana",
            ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .unwrap()
        .items
        .iter()
        .all(|n| n.delivered)
    });
    // Mark two read: the count is pushed, then the answer.
    send(
        &mut c,
        &json!({"type":"notifications.read","id":1,"data":{"ids":[1,2]}}).to_string(),
    );
    let mut got = [next(&mut c), next(&mut c)];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0]["data"]["changed"], 2);
    assert_eq!(
        (got[1]["type"].as_str(), got[1]["data"]["count"].as_u64()),
        (Some("notifications.unread"), Some(3))
    );
    // Page through, newest first, 2 at a time.
    let mut before: Option<u64> = None;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut q = json!({"limit":2});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        let r = call(&mut c, json!({"type":"notifications.list","id":2,"data":q}));
        assert_eq!(r["type"], "notifications", "{r}");
        for n in r["data"]["items"].as_array().unwrap() {
            seen.push(n["id"].as_u64().unwrap());
        }
        match r["data"]["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1]);
    let r = call(
        &mut c,
        json!({"type":"notifications.list","id":3,"data":{"limit":10,"unread":true}}),
    );
    let unread: Vec<u64> = r["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(unread, vec![5, 4, 3]);
    // Bad input: unknown ids, pages out of range, other shapes; the connection keeps serving.
    for (req, want) in [
        (
            json!({"type":"notifications.read","id":4,"data":{"ids":[3,99]}}),
            "unknown notification ids: [99]",
        ),
        (
            json!({"type":"notifications.list","id":5,"data":{"limit":0}}),
            "limit must be 1 to 100",
        ),
        (
            json!({"type":"notifications.list","id":6,"data":{"limit":1000}}),
            "limit must be 1 to 100",
        ),
        (
            json!({"type":"notifications.read","id":7,"data":{"ids":"some"}}),
            "Invalid message data",
        ),
    ] {
        let r = call(&mut c, req.clone());
        assert_eq!(r["type"], "error", "{req} → {r}");
        assert!(r["error"].as_str().unwrap().contains(want), "{req} → {r}");
    }
    // Another user's inbox is theirs: erin sees nothing of dana's.
    let mut e = connect(addr, "erin");
    assert_eq!(next(&mut e)["data"]["count"], 0);
    let r = call(
        &mut e,
        json!({"type":"notifications.list","id":8,"data":{}}),
    );
    assert_eq!(r["data"]["items"], json!([]));
    // Mark all read.
    send(
        &mut c,
        &json!({"type":"notifications.read","id":9,"data":{"ids":"all"}}).to_string(),
    );
    let mut got = [next(&mut c), next(&mut c)];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0]["data"]["changed"], 3);
    assert_eq!(got[1]["data"]["count"], 0);
    let stats = s.n.stats();
    assert_eq!((stats.sent, stats.delivered), (5, 5));
    drop((c, e));
    drop(s);
}

#[test]
fn online_users_get_it_at_once_on_every_connection_and_the_inbox_is_bounded() {
    let d = dir("online");
    let store = Store::open(d.path(), StoreOptions::default()).unwrap();
    let s = server(
        &store,
        NotificationConfig {
            max_per_user: 3,
            ..NotificationConfig::default()
        },
    );
    let addr = s.engine.local_addr();
    let mut conns: Vec<Ws> = (0..4).map(|_| connect(addr, "finn")).collect();
    for c in conns.iter_mut() {
        assert_eq!(next(c)["data"]["count"], 0);
    }
    eventually("four connections", || {
        s.manager.user_sockets("finn").len() == 4
    });
    for i in 0..5 {
        s.n.send_blocking("finn", note("alert", &format!("a{i}")))
            .unwrap();
    }
    for c in conns.iter_mut() {
        for i in 0..5u64 {
            let p = next(c);
            assert_eq!(
                (p["type"].as_str(), p["data"]["id"].as_u64()),
                (Some("notification"), Some(i + 1))
            );
            let u = next(c);
            assert_eq!(u["type"], "notifications.unread");
        }
    }
    // Only the newest 3 are kept; the 2 oldest were evicted and counted.
    let page =
        s.n.list_blocking(
            "finn",
            ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .unwrap();
    assert_eq!(
        page.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    assert_eq!(s.n.stats().evicted, 2);
    // Bad input from Rust.
    let big = NewNotification {
        kind: "x".into(),
        body: "y".repeat(20_000),
        ..NewNotification::default()
    };
    assert!(matches!(
        s.n.send_blocking("finn", big),
        Err(NotificationError::Invalid(_))
    ));
    let bad = NewNotification {
        kind: "x".into(),
        data: Some("{not json".into()),
        ..NewNotification::default()
    };
    assert!(matches!(
        s.n.send_blocking("finn", bad),
        Err(NotificationError::Invalid(_))
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    s.n.mark("finn", Selection::Ids(vec![1]), true, move |r| {
        tx.send(r).unwrap()
    });
    assert_eq!(
        rx.recv().unwrap(),
        Err(NotificationError::UnknownIds(vec![1])),
        "evicted ids are gone"
    );
    drop(conns);
    drop(s);
}

#[test]
fn pending_notifications_survive_a_restart_and_are_delivered_after_it() {
    let d = dir("restart");
    {
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let s = server(&store, NotificationConfig::default());
        for i in 0..3 {
            s.n.send_blocking("gus", note("invite", &format!("i{i}")))
                .unwrap();
        }
        s.engine.handle().shutdown();
        let Server { engine, .. } = s;
        engine.join().unwrap();
        store.shutdown().unwrap();
    }
    let store = Store::open(d.path(), StoreOptions::default()).unwrap();
    let s = server(&store, NotificationConfig::default());
    let mut c = connect(s.engine.local_addr(), "gus");
    let ids: Vec<u64> = (0..3)
        .map(|_| next(&mut c)["data"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(next(&mut c)["data"]["count"], 3);
    // Ids continue after the restart.
    assert_eq!(s.n.send_blocking("gus", note("invite", "i3")).unwrap(), 4);
    drop(c);
    drop(s);
}
