//! Do 10,000 connections each holding a pending async handler cost the others anything?
//! (`cargo bench -p edge-ws-server --bench async_pending`)
//!
//! One engine core behind the manager. An async `echo` route (a future that is ready at once)
//! serves 100 connections × 8 messages in flight, 64-byte envelopes; server CPU per echoed
//! message (the core thread, from /proc). Rounds alternate: *idle* (only the echo clients) and
//! *held* (plus `ASYNC_BENCH_HELD`, default 10,000, connections from a child process, each of
//! which sent one `hold`: an async handler that never finishes, so each connection has a
//! parked task on the core). Prints each round and the medians.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::runtime::os::threads_cpu_seconds as cpu_of;
use edge_ws::{Config, Cores, Engine};
use edge_ws_server::{Manager, Router};
use tungstenite::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static HELD: AtomicUsize = AtomicUsize::new(0);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The child: opens `n` connections, sends `hold` on each, then keeps them until killed.
fn hold(addr: SocketAddr, n: usize) {
    edge_ws::runtime::os::raise_nofile_limit(n as u64 + 64);
    let mut keep = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).expect("connect");
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("upgrade");
        ws.send(Message::text(r#"{"type":"hold"}"#)).unwrap();
        keep.push(ws);
    }
    println!("held");
    std::thread::sleep(Duration::from_secs(3600));
}

/// Echoes `per_conn` messages on each of `conns` connections with 8 in flight; returns the
/// server core's CPU seconds per message.
fn echo_round(addr: SocketAddr, conns: usize, per_conn: usize) -> f64 {
    let ready = Arc::new(std::sync::Barrier::new(conns + 1));
    let done = Arc::new(std::sync::Barrier::new(conns + 1));
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (ready, done) = (ready.clone(), done.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
                let msg = r#"{"type":"echo","id":1,"data":"0123456789abcdef0123456789abcdef"}"#;
                ready.wait();
                let mut sent = 0;
                for _ in 0..8.min(per_conn) {
                    ws.send(Message::text(msg)).unwrap();
                    sent += 1;
                }
                let mut got = 0;
                while got < per_conn {
                    match ws.read().unwrap() {
                        Message::Text(_) => got += 1,
                        _ => continue,
                    }
                    if sent < per_conn {
                        ws.send(Message::text(msg)).unwrap();
                        sent += 1;
                    }
                }
                done.wait();
                drop(ws);
            })
        })
        .collect();
    ready.wait();
    let c0 = cpu_of(&["edge-ws-core"]);
    done.wait();
    let cpu = cpu_of(&["edge-ws-core"]) - c0;
    for t in threads {
        t.join().unwrap();
    }
    cpu / (conns * per_conn) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("async_pending: bench");
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--hold") {
        let addr = args[i + 1].parse().unwrap();
        let n = args[i + 2].parse().unwrap();
        return hold(addr, n);
    }
    let held = env("ASYNC_BENCH_HELD", 10_000);
    let per_conn = env("ASYNC_BENCH_MSGS", 2_000);
    edge_ws::runtime::os::raise_nofile_limit(held as u64 + 1024);
    let manager = Manager::builder().build();
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = Cores::Count(1);
    cfg.pin = false;
    cfg.heartbeat_interval = None;
    let engine = manager
        .start(Engine::builder().config(cfg), |_| {
            Router::new()
                .max_in_flight(4)
                .route_async("echo", |req| async move {
                    req.reply_raw("echo", req.data_raw());
                    Ok(())
                })
                .route_async("hold", |_req| async move {
                    HELD.fetch_add(1, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                    Ok(())
                })
        })
        .unwrap();
    let addr = engine.local_addr();
    let spawn_holders = || -> Child {
        let before = HELD.load(Ordering::Relaxed);
        let child = Command::new(&args[0])
            .args(["--hold", &addr.to_string(), &held.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("the holding child");
        let deadline = Instant::now() + Duration::from_secs(300);
        while HELD.load(Ordering::Relaxed) < before + held {
            assert!(Instant::now() < deadline, "holders did not connect");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let _ = echo_round(addr, 100, 200); // warm-up
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    for round in 0..7 {
        if round % 2 == 0 {
            let v = echo_round(addr, 100, per_conn);
            println!("round {round}: idle  {:.3} µs/msg", v * 1e6);
            idle.push(v);
        } else {
            let mut child = spawn_holders();
            let open = manager.active_connections();
            let v = echo_round(addr, 100, per_conn);
            println!(
                "round {round}: held  {:.3} µs/msg ({held} pending handlers, {open} connections)",
                v * 1e6
            );
            busy.push(v);
            child.kill().unwrap();
            child.wait().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while manager.active_connections() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    idle.sort_by(|a, b| a.partial_cmp(b).unwrap());
    busy.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (i, b) = (idle[idle.len() / 2], busy[busy.len() / 2]);
    println!(
        "async_pending median: idle {:.3} µs/msg, with {held} pending handlers {:.3} µs/msg ({:.2}x)",
        i * 1e6,
        b * 1e6,
        b / i
    );
    engine.handle().shutdown();
    let _ = engine.join();
}
