//! `wss://` beside `ws://` on the same engine, same run: server CPU per echoed message and heap
//! (and RSS) per idle connection; and a peer, tokio-tungstenite over tokio-rustls on one
//! current-thread runtime pinned to the same core (echo rows only). The engine runs in this process on one pinned core; the
//! clients (edge-ws-client, the same for both) run in a child process pinned to another core,
//! so the counted CPU (the engine's core thread, from schedstat) and heap (a counting
//! allocator) are the server's alone.
//!
//! ```text
//! cargo run --release -p edge-ws-client --features tls --example tls_bench -- echo [REPS] [SECS]
//! cargo run --release -p edge-ws-client --features tls --example tls_bench -- idle [CONNS]
//! cargo run --release -p edge-ws-client --features tls --example tls_bench -- handshakes [REPS] [SECS]
//! ```
//! `SERVER_CORE` (default 0) and `CLIENT_CORE` (default 1) pick the cores. Every loop is
//! bounded; traffic stays on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::runtime::counting::CountingAlloc;
use edge_ws::tls::TlsConfig;
use edge_ws::{Cores, Engine, Handler, Message, Socket};
use edge_ws_client::{Client, ClientBuilder, Message as ClientMessage};

#[global_allocator]
static ALLOC: CountingAlloc<std::alloc::System> = CountingAlloc::new(std::alloc::System);

struct Echo;
impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let _ = socket.send(&message);
    }
}

fn env_core(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A throwaway CA and a certificate for `localhost` signed by it: `(CA PEM, cert, key)`.
fn pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

fn engine(cert: &str, key: &str) -> Engine {
    let core = env_core("SERVER_CORE", 0);
    let tls = TlsConfig::from_pem(
        "127.0.0.1:0".parse().unwrap(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap()
    .max_handshakes_per_core(4096);
    Engine::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .cores(Cores::List(vec![core]))
        .pin(true)
        .heartbeat(None, Duration::from_secs(10))
        .max_connections(100_000)
        .tls(tls)
        .build(|_| Echo)
        .expect("engine starts")
}

/// The peer: tokio-tungstenite 0.30 over tokio-rustls with the engine's own rustls server
/// configuration, on one current-thread runtime in a thread named `peer-tls`, pinned to
/// `SERVER_CORE`; echo as the bench crate's peers do (feed what is readable, one flush).
fn start_peer(cert: &str, key: &str) -> SocketAddr {
    let tls = TlsConfig::from_pem(
        "127.0.0.1:0".parse().unwrap(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let core = env_core("SERVER_CORE", 0);
    std::thread::Builder::new()
        .name("peer-tls".into())
        .spawn(move || {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(s) = acceptor.accept(s).await else {
                            return;
                        };
                        let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
                            return;
                        };
                        peer_echo(ws).await;
                    });
                }
            });
        })
        .unwrap();
    addr
}

async fn peer_echo<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{FutureExt, SinkExt, StreamExt};
    let data = |m: &tokio_tungstenite::tungstenite::Message| m.is_text() || m.is_binary();
    while let Some(Ok(msg)) = ws.next().await {
        if data(&msg) && ws.feed(msg).await.is_err() {
            return;
        }
        while let Some(next) = ws.next().now_or_never() {
            match next {
                Some(Ok(m)) => {
                    if data(&m) && ws.feed(m).await.is_err() {
                        return;
                    }
                }
                _ => {
                    let _ = ws.flush().await;
                    return;
                }
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn spawn_client(args: &[String]) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(env_core("CLIENT_CORE", 1).to_string())
        .arg(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd.spawn()
        .expect("spawn the client process (needs taskset)")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => echo_main(&args[1..]),
        Some("idle") => idle_main(&args[1..]),
        Some("client-echo") => client(&args[1..], true),
        Some("client-idle") => client(&args[1..], false),
        Some("handshakes") => handshakes_main(&args[1..]),
        Some("client-handshakes") => client_handshakes(&args[1..]),
        _ => eprintln!(
            "usage: tls_bench echo [REPS] [SECS] | idle [CONNS] | handshakes [REPS] [SECS]"
        ),
    }
}

/// Echo 64 B and 4 KiB × 1,000 connections × 8 in flight, plain and TLS interleaved.
fn echo_main(args: &[String]) {
    let reps: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(3);
    let secs: f64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let (ca, cert, key) = pki();
    let e = engine(&cert, &key);
    let plain = e.local_addr();
    let tls = e.tls_local_addr().unwrap();
    let peer = start_peer(&cert, &key);
    println!("| size | conns × depth | kind | msgs/s | server µs CPU/msg |");
    println!("|---|---|---|---|---|");
    for (size, conns) in [(64usize, 1000usize), (4096, 1000)] {
        let mut per: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        for _ in 0..reps {
            let targets = [
                (plain, "plain", "edge-ws-core"),
                (tls, "tls", "edge-ws-core"),
                (peer, "tls", "peer-tls"),
            ];
            for (k, (addr, client_kind, threads)) in targets.into_iter().enumerate() {
                let mut child = spawn_client(&[
                    "client-echo".into(),
                    client_kind.into(),
                    addr.to_string(),
                    conns.to_string(),
                    "8".into(),
                    size.to_string(),
                    secs.to_string(),
                    ca.clone(),
                ]);
                let mut out = BufReader::new(child.stdout.take().unwrap());
                let mut line = String::new();
                // "start": the measured window begins (connections up, warmed up).
                out.read_line(&mut line).unwrap();
                assert_eq!(line.trim(), "start", "client: {line}");
                let cpu0 = edge_ws::runtime::os::threads_cpu_seconds(&[threads]);
                let t0 = Instant::now();
                line.clear();
                out.read_line(&mut line).unwrap();
                let cpu1 = edge_ws::runtime::os::threads_cpu_seconds(&[threads]);
                let wall = t0.elapsed().as_secs_f64();
                let msgs: f64 = line
                    .trim()
                    .strip_prefix("msgs ")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("client: {line}"));
                let _ = child.wait();
                per[k].0.push(msgs / wall);
                per[k].1.push((cpu1 - cpu0) * 1e6 / msgs.max(1.0));
            }
        }
        let mut cpu = [0.0; 3];
        for (k, kind) in ["plain", "tls", "peer-tls"].into_iter().enumerate() {
            let (mut rate, mut us) = per[k].clone();
            cpu[k] = median(&mut us);
            println!(
                "| {size} B | {conns} × 8 | {kind} | {:.0} | {:.3} (runs: {}) |",
                median(&mut rate),
                cpu[k],
                per[k]
                    .1
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "| {size} B | | TLS / plain | | {:.2}× (medians) |",
            cpu[1] / cpu[0]
        );
        println!(
            "| {size} B | | peer TLS / edge-ws TLS | | {:.2}× (medians) |",
            cpu[2] / cpu[1]
        );
    }
    e.handle().shutdown();
    let _ = e.join();
}

/// Heap and RSS per idle connection (after the WebSocket upgrade), plain then TLS.
fn idle_main(args: &[String]) {
    let n: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let (ca, cert, key) = pki();
    println!("| kind | conns | heap B/conn | RSS B/conn |");
    println!("|---|---|---|---|");
    for kind in ["plain", "tls"] {
        let e = engine(&cert, &key);
        let addr = if kind == "tls" {
            e.tls_local_addr().unwrap()
        } else {
            e.local_addr()
        };
        std::thread::sleep(Duration::from_millis(300));
        let (heap0, rss0) = (ALLOC.live_bytes(), rss_kib());
        let mut child = spawn_client(&[
            "client-idle".into(),
            kind.into(),
            addr.to_string(),
            n.to_string(),
            "0".into(),
            "0".into(),
            "0".into(),
            ca.clone(),
        ]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "client: {line}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while (e.handle().connections() as usize) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let every connection go idle (buffers returned, queues emptied).
        std::thread::sleep(Duration::from_secs(1));
        let (heap1, rss1) = (ALLOC.live_bytes(), rss_kib());
        let open = e.handle().connections() as usize;
        println!(
            "| {kind} | {open} | {:.0} | {:.0} |",
            (heap1 - heap0) as f64 / open.max(1) as f64,
            (rss1.saturating_sub(rss0) * 1024) as f64 / open.max(1) as f64
        );
        let _ = child.stdin.take().map(|mut s| s.write_all(b"done\n"));
        let _ = child.wait();
        e.handle().shutdown();
        let _ = e.join();
    }
}

/// The child: `kind addr conns depth size secs ca_pem`.
fn client(args: &[String], echo: bool) {
    let kind = args[0].clone();
    let addr: SocketAddr = args[1].parse().unwrap();
    let conns: usize = args[2].parse().unwrap();
    let depth: usize = args[3].parse().unwrap();
    let size: usize = args[4].parse().unwrap();
    let secs: f64 = args[5].parse().unwrap();
    let ca = args[6].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = if kind == "tls" {
            format!("wss://localhost:{}/", addr.port())
        } else {
            format!("ws://{addr}/")
        };
        let builder: ClientBuilder = Client::builder()
            .deflate(None)
            .keepalive(None, Duration::from_secs(10))
            .tls_ca_pem(ca.as_bytes())
            .unwrap();
        let mut sockets = Vec::with_capacity(conns);
        for _ in 0..conns {
            sockets.push(builder.connect(url.as_str()).await.expect("connect"));
        }
        if !echo {
            println!("ready");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            return;
        }
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        let mut tasks = Vec::new();
        for mut ws in sockets {
            let (count, counting, payload) = (count.clone(), counting.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..depth {
                    if ws
                        .send(ClientMessage::binary(payload.clone()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                while let Some(Ok(_)) = ws.recv().await {
                    if counting.load(std::sync::atomic::Ordering::Relaxed) {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if ws
                        .send(ClientMessage::binary(payload.clone()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        counting.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("start");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        counting.store(false, std::sync::atomic::Ordering::Relaxed);
        println!("msgs {}", count.load(std::sync::atomic::Ordering::Relaxed));
        let _ = std::io::stdout().flush();
        for t in tasks {
            t.abort();
        }
    });
}

/// Connections per second, each: connect, (TLS handshake,) upgrade, one echo, close; 32 at a
/// time. TLS: full handshakes (a new client configuration, so no resumption) and resumed ones.
fn handshakes_main(args: &[String]) {
    let reps: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(3);
    let secs: f64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let (ca, cert, key) = pki();
    let e = engine(&cert, &key);
    println!("| kind | conns/s | server µs CPU/conn |");
    println!("|---|---|---|");
    let kinds = ["plain", "tls-full", "tls-resumed"];
    let mut per: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); kinds.len()];
    for _ in 0..reps {
        for (k, kind) in kinds.into_iter().enumerate() {
            let addr = if k == 0 {
                e.local_addr()
            } else {
                e.tls_local_addr().unwrap()
            };
            let mut child = spawn_client(&[
                "client-handshakes".into(),
                kind.into(),
                addr.to_string(),
                secs.to_string(),
                ca.clone(),
            ]);
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "start", "client: {line}");
            let cpu0 = edge_ws::runtime::os::threads_cpu_seconds(&["edge-ws-core"]);
            let t0 = Instant::now();
            line.clear();
            out.read_line(&mut line).unwrap();
            let cpu1 = edge_ws::runtime::os::threads_cpu_seconds(&["edge-ws-core"]);
            let wall = t0.elapsed().as_secs_f64();
            let n: f64 = line
                .trim()
                .strip_prefix("conns ")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("client: {line}"));
            let _ = child.wait();
            per[k].0.push(n / wall);
            per[k].1.push((cpu1 - cpu0) * 1e6 / n.max(1.0));
        }
    }
    for (k, kind) in kinds.into_iter().enumerate() {
        let (mut rate, mut us) = per[k].clone();
        println!(
            "| {kind} | {:.0} | {:.1} |",
            median(&mut rate),
            median(&mut us)
        );
    }
    e.handle().shutdown();
    let _ = e.join();
}

/// The child of `handshakes`: `kind addr secs ca_pem`.
fn client_handshakes(args: &[String]) {
    let kind = args[0].clone();
    let addr: SocketAddr = args[1].parse().unwrap();
    let secs: f64 = args[2].parse().unwrap();
    let ca = args[3].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = if kind == "plain" {
            format!("ws://{addr}/")
        } else {
            format!("wss://localhost:{}/", addr.port())
        };
        let shared = Client::builder()
            .deflate(None)
            .keepalive(None, Duration::from_secs(10))
            .tls_ca_pem(ca.as_bytes())
            .unwrap();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (count, counting, stop) = (count.clone(), counting.clone(), stop.clone());
            let (url, kind, ca, shared) = (url.clone(), kind.clone(), ca.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A full handshake needs a client with no session to resume.
                    let b = if kind == "tls-full" {
                        Client::builder()
                            .deflate(None)
                            .keepalive(None, Duration::from_secs(10))
                            .tls_ca_pem(ca.as_bytes())
                            .unwrap()
                    } else {
                        shared.clone()
                    };
                    let Ok(mut ws) = b.connect(url.as_str()).await else {
                        continue;
                    };
                    if ws.send(ClientMessage::text("x")).await.is_err() {
                        continue;
                    }
                    let _ = ws.recv().await;
                    let _ = ws.close(1000, "").await;
                    if counting.load(std::sync::atomic::Ordering::Relaxed) {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        counting.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("start");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        counting.store(false, std::sync::atomic::Ordering::Relaxed);
        println!("conns {}", count.load(std::sync::atomic::Ordering::Relaxed));
        let _ = std::io::stdout().flush();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
    });
}
