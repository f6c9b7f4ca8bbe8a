//! Presence and notifications: `cargo bench -p edge-ws-server --bench presence`.
//!
//! Prints: memory per online user (100,000 users, counting allocator, the user id string
//! excluded: it belongs to the connection); the time of a `presence.channel` answer with
//! members for a 10,000-member channel (median of 51); a join + leave pair; then, on a real
//! store with fsync, durable notification stores per second (window of 16,384 in flight) up
//! to `PRESENCE_BENCH_NOTIFICATIONS` stored (default 1,000,000, over 1,000 users), and the
//! time of a page of 50 (first read of a user: from disk; then from memory).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::runtime::counting::CountingAlloc;
use edge_ws::testing::TempDir;
use edge_ws::ConnectionId;
use edge_ws_server::bench_support::PresenceTable;
use edge_ws_server::notifications::{
    ListQuery, NewNotification, NotificationConfig, Notifications,
};
use edge_ws_server::store::{Store, StoreOptions};

#[global_allocator]
static GLOBAL: CountingAlloc<mimalloc::MiMalloc> = CountingAlloc::new(mimalloc::MiMalloc);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("presence: bench");
        return;
    }
    // Memory per online user.
    const USERS: usize = 100_000;
    let ids: Vec<Arc<str>> = (0..USERS)
        .map(|i| Arc::from(format!("user-{i:06}")))
        .collect();
    let t = PresenceTable::new();
    let before = GLOBAL.live_bytes();
    for u in &ids {
        t.connect(u);
    }
    let per = (GLOBAL.live_bytes() - before) as f64 / USERS as f64;
    println!("presence_memory_per_online_user: {per:.0} B ({USERS} users online)");

    // A 10,000-member channel (5,000 users with two connections each).
    let ch: Arc<str> = "room:big".into();
    for i in 0..10_000 {
        t.join(&ch, ConnectionId::for_tests(i % 2, i), &ids[i / 2]);
    }
    let runs: Vec<Duration> = (0..51)
        .map(|_| {
            let s = Instant::now();
            let j = t.channel_json("room:big");
            assert!(j.len() > 10_000 * 20);
            s.elapsed()
        })
        .collect();
    println!(
        "presence_channel_10000_members_with_list: {:.2} ms (median of 51)",
        median(runs).as_secs_f64() * 1e3
    );
    let runs: Vec<Duration> = (0..1001)
        .map(|i| {
            let c = ConnectionId::for_tests(0, 20_000 + i);
            let s = Instant::now();
            t.join(&ch, c, &ids[50_000 + i]);
            t.leave("room:big", c);
            s.elapsed()
        })
        .collect();
    println!(
        "presence_join_plus_leave: {:.2} µs (median of 1001; the announcement is one publish)",
        median(runs).as_secs_f64() * 1e6
    );

    // Notifications on a real store.
    let total: usize = std::env::var("PRESENCE_BENCH_NOTIFICATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let users: usize = std::env::var("PRESENCE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = TempDir::new("edge-ws-presence-bench");
    let batch: usize = std::env::var("PRESENCE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(StoreOptions::default().max_batch);
    let store = Store::open(dir.path(), StoreOptions::default().max_batch(batch)).unwrap();
    let n = Notifications::start(
        store.clone(),
        NotificationConfig {
            max_per_user: total / users + 1,
            ..NotificationConfig::default()
        },
    );
    let window: usize = std::env::var("PRESENCE_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16384);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for i in 0..total {
        while in_flight.load(Ordering::Acquire) >= window {
            std::thread::yield_now();
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let f = in_flight.clone();
        let note = NewNotification {
            kind: "mention".into(),
            title: format!("note {i}"),
            body: "someone mentioned you in a channel".into(),
            data: Some(r#"{"channel":"chat:lobby","offset":42}"#.into()),
        };
        n.send(&format!("user-{:06}", i % users), note, move |r| {
            assert!(r.is_ok(), "{r:?}");
            f.fetch_sub(1, Ordering::AcqRel);
        });
    }
    while in_flight.load(Ordering::Acquire) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = start.elapsed();
    let fsync = store.stats().fsync_latency;
    println!(
        "notifications_durable_stores: {:.0}/s ({total} stored over {users} users; fsync median {} µs, p99 {} µs)",
        total as f64 / took.as_secs_f64(),
        fsync.median_us,
        fsync.p99_us
    );
    drop(n);
    // A fresh service: the first page of a user is read from the store.
    let n = Notifications::start(store.clone(), NotificationConfig::default());
    let q = ListQuery {
        limit: 50,
        ..ListQuery::default()
    };
    let s = Instant::now();
    let page = n.list_blocking("user-000007", q).unwrap();
    let cold = s.elapsed();
    assert_eq!(page.items.len(), 50);
    let runs: Vec<Duration> = (0..101)
        .map(|_| {
            let s = Instant::now();
            let p = n.list_blocking("user-000007", q).unwrap();
            assert_eq!(p.items.len(), 50);
            s.elapsed()
        })
        .collect();
    println!(
        "notifications_page_of_50: first read (loads the user's {} from disk) {:.2} ms, then {:.3} ms (median of 101, round trip to the notification thread)",
        total / users,
        cold.as_secs_f64() * 1e3,
        median(runs).as_secs_f64() * 1e3
    );
    drop(n);
    store.shutdown().unwrap();
    drop(dir);
}
