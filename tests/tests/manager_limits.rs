//! Manager limits under contention: 200 upgrades started at the same instant from 200
//! threads against 2 cores; exactly `limit` open, the rest are refused before the `101` with
//! the right status and counted; everything is given back on close.

#[path = "manager_util.rs"]
mod util;

use edge_ws_server::{Auth, Manager, RejectReason};
use util::*;

const N: usize = 200;

/// Splits outcomes into open sockets and refusal statuses.
fn tally(outcomes: Vec<Outcome>) -> (Vec<Ws>, Vec<(u16, String)>) {
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Open(ws) => open.push(*ws),
            Outcome::Refused(s, b) => refused.push((s, b)),
            Outcome::Dropped => panic!("an upgrade got no answer"),
        }
    }
    (open, refused)
}

fn both_cores_busy(engine: &edge_ws::Engine) {
    let h = engine.handle();
    for core in 0..2 {
        let m = h.core_metrics(core).unwrap();
        assert!(
            m.accepted > 0,
            "core {core} accepted nothing: no contention tested"
        );
    }
}

#[test]
fn per_ip_limit_is_exact_under_concurrent_connects() {
    edge_ws_tests::raise_nofile(4096);
    const LIMIT: usize = 37;
    let manager = Manager::builder()
        .max_connections_per_ip(LIMIT as u32)
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    for round in 0..2 {
        let (mut open, refused) = tally(concurrent_upgrades(addr, N, |_| "/".into(), &[]));
        assert_eq!(open.len(), LIMIT, "round {round}");
        assert!(refused
            .iter()
            .all(|(s, b)| *s == 429 && b == "too many connections from this address"));
        let s = manager.stats();
        assert_eq!(s.active, LIMIT);
        assert_eq!(
            s.rejected(RejectReason::IpLimit),
            ((N - LIMIT) * (round + 1)) as u64
        );
        for ws in &mut open {
            assert_eq!(
                ask(ws, r#"{"type":"echo","data":1}"#),
                r#"{"type":"echo","data":1}"#
            );
        }
        drop(open);
        eventually("all released", || {
            let s = manager.stats();
            s.active == 0 && s.pending == 0
        });
    }
    both_cores_busy(&engine);
}

#[test]
fn per_user_limit_is_exact_under_concurrent_connects() {
    edge_ws_tests::raise_nofile(4096);
    const LIMIT: usize = 23;
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .max_connections_per_user(LIMIT as u32)
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let carol = token("carol");
    let dave = token("dave");
    // Half carol, half dave, interleaved, all at once.
    let (open, refused) = tally(concurrent_upgrades(
        addr,
        N,
        |i| format!("/?token={}", if i % 2 == 0 { &carol } else { &dave }),
        &[],
    ));
    assert_eq!(open.len(), 2 * LIMIT);
    assert!(refused
        .iter()
        .all(|(s, b)| *s == 429 && b == "too many connections for this user"));
    assert_eq!(
        manager.stats().rejected(RejectReason::UserLimit),
        (N - 2 * LIMIT) as u64
    );
    for user in ["carol", "dave"] {
        let ids = manager.user_sockets(user);
        assert_eq!(ids.len(), LIMIT, "{user}");
        // Which core wins each reservation is a race, so one user's winners may all sit on
        // one core; that both cores accepted (and contended) is checked at the end, and
        // `user_sockets` across cores in manager_lookups.rs.
    }
    assert_eq!(manager.users_online(), 2);
    drop(open);
    eventually("all released", || {
        let s = manager.stats();
        s.active == 0 && s.pending == 0
    });
    assert!(manager.user_sockets("carol").is_empty());
    assert_eq!(manager.users_online(), 0);
    // Room again for exactly LIMIT.
    let (open, _) = tally(concurrent_upgrades(
        addr,
        2 * LIMIT,
        |_| format!("/?token={carol}"),
        &[],
    ));
    assert_eq!(open.len(), LIMIT);
    both_cores_busy(&engine);
}

#[test]
fn global_limit_is_exact_under_concurrent_connects() {
    edge_ws_tests::raise_nofile(4096);
    const LIMIT: usize = 41;
    let manager = Manager::builder().max_connections(LIMIT).build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let (open, refused) = tally(concurrent_upgrades(addr, N, |_| "/".into(), &[]));
    assert_eq!(open.len(), LIMIT);
    assert!(refused
        .iter()
        .all(|(s, b)| *s == 503 && b == "server at capacity"));
    assert_eq!(
        manager.stats().rejected(RejectReason::ServerFull),
        (N - LIMIT) as u64
    );
    assert_eq!(manager.active_connections(), LIMIT);
    drop(open);
    eventually("all released", || {
        manager.stats().pending == 0 && manager.active_connections() == 0
    });
    both_cores_busy(&engine);
}
