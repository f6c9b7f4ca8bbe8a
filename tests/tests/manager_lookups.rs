//! Lookups and bulk actions across cores: `user_sockets`, `send_to_user`, `close_user`,
//! `broadcast` with a filter, `close_all` with a code, and the event stream.

#[path = "manager_util.rs"]
mod util;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use edge_ws::CloseCode;
use edge_ws_server::{ApiKeyAuth, Auth, Event, Manager, UserContext, CLOSE_FORBIDDEN};
use util::*;

fn keyed_manager() -> Manager {
    Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::new("x-api-key", |key, _| {
            let (user, vip) = key.split_once(':').unwrap_or((key, ""));
            let perms: &[&str] = if vip == "vip" { &["vip"] } else { &[] };
            Ok(UserContext::new(user).with_permissions(perms.iter().copied()))
        })))
        .build()
}

#[test]
fn user_sockets_span_cores_and_reach_the_user() {
    let manager = keyed_manager();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let mut jo: Vec<Ws> = (0..12)
        .map(|_| upgrade(addr, "/", &[("x-api-key", "jo")]).open())
        .collect();
    let mut kim = upgrade(addr, "/", &[("x-api-key", "kim")]).open();

    let ids = manager.user_sockets("jo");
    assert_eq!(ids.len(), 12);
    let cores: HashSet<usize> = ids.iter().map(|id| id.core()).collect();
    assert_eq!(cores.len(), 2, "jo's sockets should be on both cores");
    // Each socket's own idea of its core matches the index.
    let mut seen_cores = HashSet::new();
    for ws in &mut jo {
        let c = ask(ws, r#"{"type":"core"}"#);
        seen_cores.insert(c);
    }
    assert_eq!(seen_cores.len(), 2);
    assert_eq!(manager.users_online(), 2);
    assert!(manager.user_sockets("nobody").is_empty());

    assert_eq!(manager.send_to_user("jo", "for jo"), 12);
    for ws in &mut jo {
        assert_eq!(recv(ws), "for jo");
    }
    // kim got nothing: her next message is the answer to her own request.
    assert_eq!(
        ask(&mut kim, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"kim"}"#
    );

    assert_eq!(manager.close_user("jo", CLOSE_FORBIDDEN, "banned"), 12);
    for ws in &mut jo {
        assert_eq!(expect_close(ws), (4503, "banned".to_owned()));
    }
    eventually("jo gone", || manager.user_sockets("jo").is_empty());
    assert_eq!(manager.active_connections(), 1);
    assert_eq!(
        ask(&mut kim, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"kim"}"#
    );
}

#[test]
fn broadcast_with_a_user_filter() {
    let manager = keyed_manager();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let mut vips: Vec<Ws> = (0..5)
        .map(|i| upgrade(addr, "/", &[("x-api-key", &format!("v{i}:vip"))]).open())
        .collect();
    let mut plain: Vec<Ws> = (0..5)
        .map(|i| upgrade(addr, "/", &[("x-api-key", &format!("p{i}"))]).open())
        .collect();
    assert!(manager.broadcast("vip news", |_, user| user
        .is_some_and(|u| u.has_permission("vip"))));
    assert!(manager.broadcast_all("everyone"));
    for ws in &mut vips {
        assert_eq!(recv(ws), "vip news");
        assert_eq!(recv(ws), "everyone");
    }
    for ws in &mut plain {
        assert_eq!(recv(ws), "everyone");
    }
    // Filters see ids too.
    let target = manager.user_sockets("p3")[0];
    manager.broadcast("just p3", move |id, _| id == target);
    assert_eq!(recv(&mut plain[3]), "just p3");
    for (i, ws) in plain.iter_mut().enumerate() {
        assert_eq!(
            ask(ws, r#"{"type":"whoami"}"#),
            format!(r#"{{"type":"whoami","data":"p{i}"}}"#)
        );
    }
}

#[test]
fn close_all_closes_everyone_with_the_code() {
    let manager = Manager::builder().build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let mut all: Vec<Ws> = (0..20).map(|_| upgrade(addr, "/", &[]).open()).collect();
    eventually("all open", || manager.active_connections() == 20);
    assert!(manager.close_all(CloseCode(4000), "maintenance"));
    for ws in &mut all {
        assert_eq!(expect_close(ws), (4000, "maintenance".to_owned()));
    }
    drop(all);
    eventually("all closed", || {
        let s = manager.stats();
        s.active == 0 && s.pending == 0 && s.closed == 20
    });
}

#[test]
fn events_opened_closed_error_rejected() {
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = events.clone();
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .on_event(move |e| {
            let line = match e {
                Event::Opened { user, peer, .. } => {
                    assert!(peer.is_some());
                    format!("opened {}", user.map_or("-", |u| u.id()))
                }
                Event::Closed {
                    user, code, reason, ..
                } => format!(
                    "closed {} {} {reason}",
                    user.map_or("-", |u| u.id()),
                    code.0
                ),
                Event::Error { kind, message, .. } => format!("error {kind:?} {message}"),
                Event::Rejected { reason, status, .. } => format!("rejected {status} {reason}"),
                // Presence changes have their own test (manager_presence.rs).
                Event::Presence { .. } => return,
                _ => "other".into(),
            };
            log.lock().unwrap().push(line);
        })
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    upgrade(addr, "/", &[]).refused();
    let mut ws = upgrade(addr, &format!("/?token={}", token("lou")), &[]).open();
    ask(&mut ws, "{]");
    ask(&mut ws, r#"{"type":"nope"}"#);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    // Read until the close handshake completes.
    while ws.read().is_ok() {}
    eventually("closed event", || events.lock().unwrap().len() == 5);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "rejected 401 missing credentials",
            "opened lou",
            "error InvalidFormat Invalid message format",
            "error UnknownType Unknown message type",
            "closed lou 1000 bye",
        ]
    );
}
