//! The `edge-ws` binary in reverse-proxy mode (`[proxy]`) in front of real backends: echo
//! through it, IP-hash stickiness by source address, a killed backend's clients closed with
//! 4000 and reconnecting onto the other, close codes passed through both ways, and a clear
//! refusal when no backend is up.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;

use std::time::Duration;

use edge_ws::protocol::handshake::HandshakeError;
use edge_ws::testing::TempDir;
use edge_ws_client::balance::{ip_key, Balancer};
use edge_ws_client::{Client, Error, Message, Strategy};
use serde_json::{json, Value};

mod common;
use common::Server;

fn tmp(name: &str) -> TempDir {
    TempDir::new(&format!("edge-ws-proxy-{name}"))
}

/// A backend whose memory channel `m:who` holds its name, so a connection can ask (through
/// the proxy) which backend it reached.
fn backend(dir: &Path, name: &str) -> Server {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        "[auth]\nquery_user = \"\"\n\n[[channels.namespace]]\nprefix = \"m:\"\nhistory_size = 10\n",
    )
    .unwrap();
    let s = Server::start(1, Some(&cfg));
    let mut ws = connect_from(s.addr, None, "/ws");
    send(
        &mut ws,
        json!({"type":"publish","id":1,"data":{"channel":"m:who","data":name}}),
    );
    assert_eq!(recv(&mut ws)["type"], "published");
    s
}

fn proxy(dir: &Path, backends: &[SocketAddr], extra: &str) -> Server {
    let urls: Vec<String> = backends.iter().map(|a| format!("\"ws://{a}\"")).collect();
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nbackends = [{}]\n{}{extra}",
            urls.join(", "),
            if extra.contains("health_interval_ms") {
                ""
            } else {
                "health_interval_ms = 200\n"
            }
        ),
    )
    .unwrap();
    Server::start(1, Some(&cfg))
}

type Ws = tungstenite::WebSocket<TcpStream>;

/// A blocking WebSocket to `addr` from source address `from` (any 127.x.y.z works on
/// loopback), so IP-hash sees different clients.
fn connect_from(addr: SocketAddr, from: Option<IpAddr>, path: &str) -> Ws {
    let stream = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::new(ip, 0)).unwrap();
                s.connect(addr).await.unwrap().into_std().unwrap()
            })
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message within 10 s") {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Which backend this connection (to `/ws`) reached.
fn who(ws: &mut Ws) -> String {
    send(
        ws,
        json!({"type":"history","id":"who","data":{"channel":"m:who","limit":1}}),
    );
    let h = recv(ws);
    assert_eq!(h["type"], "history", "{h}");
    h["data"]["publications"][0]["data"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn who_async(ws: &mut edge_ws_client::WebSocket) -> String {
    ws.send(r#"{"type":"history","id":"who","data":{"channel":"m:who","limit":1}}"#)
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .unwrap();
    let h: Value = serde_json::from_str(m.as_text().unwrap()).unwrap();
    h["data"]["publications"][0]["data"]
        .as_str()
        .unwrap()
        .to_string()
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn echo_text_and_binary_through_the_proxy() {
    let dir = tmp("echo");
    let a = backend(dir.path(), "A");
    let p = proxy(dir.path(), &[a.addr], "");
    let mut ws = tokio::time::timeout(WAIT, Client::connect(format!("ws://{}/echo", p.addr)))
        .await
        .unwrap()
        .unwrap();
    let big = vec![7u8; 300 << 10];
    let msgs = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("é".repeat(10_000)),
    ];
    for m in &msgs {
        ws.send(m.clone()).await.unwrap();
    }
    for m in &msgs {
        let got = tokio::time::timeout(WAIT, ws.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&got, m);
    }
    // 200 pipelined messages keep their order.
    for i in 0..200 {
        ws.send(format!("m{i}")).await.unwrap();
    }
    for i in 0..200 {
        let got = tokio::time::timeout(WAIT, ws.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("m{i}")));
    }
    // The envelope on /ws works through the proxy too (path forwarded).
    let mut ws2 = Client::connect(format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    assert_eq!(who_async(&mut ws2).await, "A");
    tokio::time::timeout(WAIT, ws.close(1000, "done"))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_backend_chooses_the_subprotocol_from_the_clients_offer() {
    let dir = tmp("protocols");
    let cfg = dir.path().join("sub.toml");
    std::fs::write(&cfg, "[server]\nsubprotocols = [\"chat.v1\"]\n").unwrap();
    let a = Server::start(1, Some(&cfg));
    let p = proxy(dir.path(), &[a.addr], "");
    let offer = |protocols: &[&str]| {
        let mut r = edge_ws_client::Request::new(format!("ws://{}/echo", p.addr)).unwrap();
        for name in protocols {
            r = r.protocol(*name);
        }
        r
    };
    let ws = tokio::time::timeout(WAIT, Client::connect(offer(&["chat.v2", "chat.v1"])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.protocol(), Some("chat.v1"), "the backend's choice");
    let ws = tokio::time::timeout(WAIT, Client::connect(offer(&["other"])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.protocol(), None, "nothing in common: none");
}

#[test]
fn ip_hash_keeps_each_client_address_on_one_backend() {
    let dir = tmp("sticky");
    let (a, b) = (backend(dir.path(), "A"), backend(dir.path(), "B"));
    let p = proxy(dir.path(), &[a.addr, b.addr], "strategy = \"ip-hash\"\n");
    // Backends are named by their URL (`ws://host:port/` for a URL without a path).
    let names = [format!("ws://{}/", a.addr), format!("ws://{}/", b.addr)];
    let mut balancer = Balancer::new(Strategy::IpHash, names.iter().map(|n| (n.as_str(), 1)));
    // The rendezvous choice for each source address, as the proxy must make it.
    let mut seen = [0usize; 2];
    let mut ips = Vec::new();
    for last in 2..60u8 {
        let ip = IpAddr::from([127, 0, 0, last]);
        let i = balancer.pick(Some(&ip_key(ip)), |_| true, |_| 0).unwrap();
        if seen[i] < 3 {
            seen[i] += 1;
            ips.push((ip, ["A", "B"][i]));
        }
        if seen == [3, 3] {
            break;
        }
    }
    assert_eq!(seen, [3, 3], "addresses for both backends");
    for (ip, want) in ips {
        for _ in 0..3 {
            let mut ws = connect_from(p.addr, Some(ip), "/ws");
            assert_eq!(who(&mut ws), want, "{ip}");
            ws.close(None).unwrap();
        }
    }
}

#[tokio::test]
async fn a_killed_backend_closes_its_clients_with_4000_and_they_reconnect_to_the_other() {
    let dir = tmp("failover");
    let mut backends = [
        Some(backend(dir.path(), "A")),
        Some(backend(dir.path(), "B")),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.as_ref().unwrap().addr).collect();
    let p = proxy(dir.path(), &addrs, "");
    let url = format!("ws://{}/ws", p.addr);
    // Several clients from 127.0.0.1: IP-hash puts them all on one backend.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = Client::connect(url.as_str()).await.unwrap();
        let name = who_async(&mut ws).await;
        clients.push((ws, name));
    }
    let home = clients[0].1.clone();
    assert!(clients.iter().all(|c| c.1 == home));
    let dead = if home == "A" { 0 } else { 1 };
    backends[dead].take().unwrap().kill9();
    for (mut ws, _) in clients {
        let end = tokio::time::timeout(WAIT, ws.recv()).await.unwrap();
        assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
        let info = ws.close_info().expect("closed");
        assert_eq!(info.peer().map(|(c, _)| c.0), Some(4000), "{info:?}");
        assert!(info.reason.contains("reconnect"), "{info:?}");
    }
    // Reconnecting (same address) lands on the other backend, at once and afterwards.
    let other = if home == "A" { "B" } else { "A" };
    for _ in 0..3 {
        let mut ws = tokio::time::timeout(WAIT, Client::connect(url.as_str()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who_async(&mut ws).await, other);
    }
}

#[tokio::test]
async fn close_codes_pass_through_both_ways() {
    use edge_ws::{CloseCode, Engine, Handler, Socket};
    use std::sync::mpsc;

    // An in-process backend: closes with the code a client asks for, reports what it gets.
    struct Closer(mpsc::Sender<(u16, String)>);
    impl Handler for Closer {
        fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: edge_ws::Message) {
            let t = message.as_text().unwrap_or("").to_string();
            if let Some(code) = t.strip_prefix("close:") {
                socket.close(CloseCode(code.parse().unwrap()), "as you wish");
            } else {
                let _ = socket.send(&message);
            }
        }
        fn on_close(&mut self, _socket: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
            let _ = self.0.send((code.0, reason.to_string()));
        }
    }
    let (tx, rx) = mpsc::channel();
    let engine = Engine::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .cores(edge_ws::Cores::Count(1))
        .pin(false)
        .build(move |_| Closer(tx.clone()))
        .unwrap();
    let dir = tmp("codes");
    let p = proxy(dir.path(), &[engine.local_addr()], "");
    let url = format!("ws://{}/x", p.addr);

    // Backend → client: the backend's code and reason arrive unchanged.
    let mut ws = Client::connect(url.as_str()).await.unwrap();
    ws.send("close:4321").await.unwrap();
    let end = tokio::time::timeout(WAIT, ws.recv()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    let info = ws.close_info().unwrap();
    assert_eq!(
        info.peer().map(|(c, r)| (c.0, r.to_string())),
        Some((4321, "as you wish".to_string()))
    );
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 4321);

    // Client → backend: ours arrives at the backend.
    let ws = Client::connect(url.as_str()).await.unwrap();
    tokio::time::timeout(WAIT, ws.close(4123, "see you"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        (4123, "see you".to_string())
    );
}

#[tokio::test]
async fn no_backend_up_is_a_clear_refusal_not_a_hang() {
    let dir = tmp("none");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = proxy(dir.path(), &[dead], "health_interval_ms = 0\n");
    let t0 = std::time::Instant::now();
    let err = tokio::time::timeout(WAIT, Client::connect(format!("ws://{}/ws", p.addr)))
        .await
        .expect("answered within 10 s")
        .unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::BadStatus(502 | 503))),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_backend_that_does_not_read_gets_its_client_closed_with_4001() {
    // Completes the handshake, then never reads again (the socket stays open).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            let ws = tungstenite::accept(s).expect("backend handshake");
            let _ = held_tx.send(ws);
        }
    });
    let dir = tmp("slow");
    let p = proxy(
        dir.path(),
        &[backend_addr],
        "health_interval_ms = 0\nqueue_limit = 65536\ndrain_timeout_ms = 500\n",
    );
    let mut ws = Client::connect(format!("ws://{}/x", p.addr)).await.unwrap();
    let _held = held_rx.recv_timeout(WAIT).unwrap();
    // Send until the proxy gives up on the backend (bounded: 256 MiB at most).
    let chunk = Message::binary(vec![1u8; 64 << 10]);
    let t0 = std::time::Instant::now();
    let mut sent = 0usize;
    while sent < 4096 && t0.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_millis(200), ws.send(chunk.clone())).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            Err(_) => {
                if ws.close_info().is_some() {
                    break;
                }
            }
        }
    }
    let end = tokio::time::timeout(WAIT, ws.recv()).await.unwrap();
    assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
    let info = ws.close_info().expect("closed");
    assert_eq!(
        info.peer().map(|(c, _)| c.0),
        Some(4001),
        "{info:?} after {sent} chunks"
    );
}
