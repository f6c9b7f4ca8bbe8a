//! Sending to an online user: a notification against a plain send of the same text to the
//! same user (`cargo bench -p edge-ws-server --bench notify_online`).
//!
//! One user with one open connection (a real WebSocket client on loopback that reads
//! everything); `NOTIFY_BENCH_N` (default 100,000) of each, in alternating rounds. Prints
//! server CPU per message (engine cores, and all server threads: cores + notification thread
//! + store thread with fsync), from /proc.

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws::{Config, Cores, Engine};
use edge_ws_server::notifications::{NewNotification, NotificationConfig, Notifications};
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{ApiKeyAuth, Auth, Manager, Router, UserContext};
use tungstenite::client::IntoClientRequest;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use edge_ws::runtime::os::threads_cpu_seconds as cpu_of;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("notify_online: bench");
        return;
    }
    let n: usize = std::env::var("NOTIFY_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = TempDir::new("edge-ws-notify-bench");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let notes = Notifications::start(
        store.clone(),
        NotificationConfig {
            max_per_user: 1_000_000,
            ..NotificationConfig::default()
        },
    );
    let manager = Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::new("x-api-key", |k, _| {
            Ok(UserContext::new(k))
        })))
        .notifications(notes.clone())
        .build();
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = Cores::Count(1);
    cfg.pin = false;
    let engine = manager
        .start(Engine::builder().config(cfg), |_| Router::new().channels())
        .unwrap();
    let addr = engine.local_addr();
    let received = Arc::new(AtomicUsize::new(0));
    let r2 = received.clone();
    std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).unwrap();
        let mut req = format!("ws://{addr}/").into_client_request().unwrap();
        req.headers_mut()
            .insert("x-api-key", "uma".parse().unwrap());
        let (mut ws, _) = tungstenite::client(req, stream).unwrap();
        while ws.read().is_ok() {
            r2.fetch_add(1, Ordering::Relaxed);
        }
    });
    while manager.user_sockets("uma").is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The same text both ways: what a notification push carries.
    let text = r#"{"type":"notification","data":{"id":1,"type":"mention","title":"Bob mentioned you","body":"in chat:lobby","data":{"offset":42},"timestamp":1764590000000,"delivered":false,"read":false}}"#;
    let wait = |target: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let cores = ["edge-ws-core"];
    let all = ["edge-ws-core", "edge-ws-notify", "edge-ws-store"];
    let mut rows = Vec::new();
    for round in 0..3 {
        // Plain sends.
        let base = received.load(Ordering::Relaxed);
        let (c0, a0) = (cpu_of(&cores), cpu_of(&all));
        for _ in 0..n {
            manager.send_to_user("uma", text);
        }
        wait(base + n);
        let plain = (
            (cpu_of(&cores) - c0) / n as f64,
            (cpu_of(&all) - a0) / n as f64,
        );
        // Notifications (each also pushes the unread count: 2 messages per notification).
        let base = received.load(Ordering::Relaxed);
        let (c0, a0) = (cpu_of(&cores), cpu_of(&all));
        let inflight = Arc::new(AtomicUsize::new(0));
        for i in 0..n {
            while inflight.load(Ordering::Acquire) > 4096 {
                std::thread::yield_now();
            }
            inflight.fetch_add(1, Ordering::AcqRel);
            let f = inflight.clone();
            let note = NewNotification {
                kind: "mention".into(),
                title: "Bob mentioned you".into(),
                body: format!("in chat:lobby {i}"),
                data: Some(r#"{"offset":42}"#.into()),
            };
            notes.send("uma", note, move |r| {
                assert!(r.is_ok());
                f.fetch_sub(1, Ordering::AcqRel);
            });
        }
        wait(base + 2 * n);
        let noted = (
            (cpu_of(&cores) - c0) / n as f64,
            (cpu_of(&all) - a0) / n as f64,
        );
        println!(
            "round {round}: per message, engine core: plain {:.2} µs, notification {:.2} µs ({:.2}x); \
             all server threads: plain {:.2} µs, notification {:.2} µs ({:.2}x)",
            plain.0 * 1e6,
            noted.0 * 1e6,
            noted.0 / plain.0.max(1e-9),
            plain.1 * 1e6,
            noted.1 * 1e6,
            noted.1 / plain.1.max(1e-9)
        );
        rows.push((noted.0 / plain.0.max(1e-9), noted.1 / plain.1.max(1e-9)));
    }
    rows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    println!(
        "notify_online median ratio: engine core {:.2}x, all server threads {:.2}x (a notification also pushes the unread count and is fsync'd first)",
        rows[1].0,
        {
            let mut t: Vec<f64> = rows.iter().map(|r| r.1).collect();
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[1]
        }
    );
    engine.handle().shutdown();
    let _ = engine.join();
    drop(dir);
}
