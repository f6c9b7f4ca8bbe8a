//! The server HTTP API of the `edge-ws` binary (`[http_api]`, docs/PROTOCOL.md §10): a backend
//! publishes, notifies, looks up presence and history, lists channels and disconnects users,
//! and every bad request gets its status and a JSON error while the server goes on serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use edge_ws::testing::TempDir;
use serde_json::{json, Value};
use tungstenite::Message;

mod common;
use common::Server;

const KEY: &str = "test-key-1";

/// A server with the HTTP API on, its config and store in a fresh directory (returned first,
/// so that it is dropped after the server).
fn start(name: &str) -> (TempDir, Server, SocketAddr) {
    let dir = TempDir::new(&format!("edge-ws-api-{name}"));
    let cfg = dir.path().join("edge-ws.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http_api]\nkeys = [\"{KEY}\", \"second-key\"]\nmax_body = 4096\n\n\
             [[channels.namespace]]\nprefix = \"h:\"\nhistory_size = 100\npersist = true\n\n\
             [store]\ndir = {:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let server = Server::start(2, Some(&cfg));
    let api = server.api.expect("the HTTP API's address in the log");
    (dir, server, api)
}

/// One raw HTTP exchange: status and parsed JSON body.
fn raw(conn: &mut TcpStream, request: &[u8]) -> (u16, Value) {
    conn.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).expect("an answer");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("Content-Length");
        if buf.len() < end + 4 + len {
            continue;
        }
        let status = head[9..12].parse().unwrap();
        let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).expect("a JSON body");
        return (status, body);
    }
}

fn connect(api: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn call_with(api: SocketAddr, key: Option<&str>, method: &str, body: &str) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(&mut connect(api), req.as_bytes())
}

fn call(api: SocketAddr, method: &str, body: Value) -> Value {
    let (status, v) = call_with(api, Some(KEY), method, &body.to_string());
    assert_eq!(status, 200, "{method} {body}: {v}");
    v
}

/// The body of a plain `GET` on the public port.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut c = connect(addr);
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8(buf).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws(addr: SocketAddr, user: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) =
        tungstenite::client(format!("ws://{addr}/ws?user={user}"), stream).expect("handshake");
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until a message of `kind` (skipping pushes of other kinds).
fn recv_kind(ws: &mut Ws, kind: &str) -> Value {
    for _ in 0..50 {
        let m = recv(ws);
        if m["type"] == kind {
            return m;
        }
    }
    panic!("no {kind} message");
}

#[test]
fn bad_requests_get_their_status_and_the_api_goes_on() {
    let (_dir, server, api) = start("bad");
    let cases: [(Option<&str>, &str, &str, u16, &str); 6] = [
        (None, "info", "{}", 401, "unauthorized"),
        (Some("wrong-key"), "info", "{}", 401, "unauthorized"),
        (Some(KEY), "nope", "{}", 404, "not_found"),
        (Some(KEY), "publish", "{\"channel\":", 400, "bad_request"),
        (
            Some(KEY),
            "publish",
            r#"{"channel":"a","data":1,"x":2}"#,
            400,
            "bad_request",
        ),
        (
            Some(KEY),
            "disconnect",
            r#"{"user":"a","code":1006}"#,
            400,
            "bad_request",
        ),
    ];
    for (key, method, body, status, code) in cases {
        let (s, v) = call_with(api, key, method, body);
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{method} {body}: {v}"
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // A GET, a chunked body, a body over max_body, garbage.
    let (s, v) = raw(
        &mut connect(api),
        format!("GET /api/info HTTP/1.1\r\nX-API-Key: {KEY}\r\n\r\n").as_bytes(),
    );
    assert_eq!((s, v["code"].as_str()), (405, Some("method_not_allowed")));
    let (s, _) = raw(
        &mut connect(api),
        format!("POST /api/info HTTP/1.1\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(s, 411);
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(5000));
    let (s, v) = call_with(api, Some(KEY), "publish", &big);
    assert_eq!((s, v["code"].as_str()), (413, Some("too_large")));
    let (s, _) = raw(&mut connect(api), b"\x16\x03\x01\x00\x05hello\r\n\r\n");
    assert_eq!(s, 400);
    // Keep-alive: two calls on one connection; the second key works too.
    let mut c = connect(api);
    for key in [KEY, "second-key"] {
        let req =
            format!("POST /api/info HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {key}\r\nContent-Length: 2\r\n\r\n{{}}");
        let (s, v) = raw(&mut c, req.as_bytes());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["cores"], 2);
    }
    // The WebSocket side never noticed.
    let mut w = ws(server.addr, "ann");
    send(&mut w, json!({"type":"ping","id":1}));
    assert_eq!(recv_kind(&mut w, "pong")["id"], 1);
    // GET /metrics on the public port counts it all, with the server's own series.
    call(api, "publish", json!({"channel":"h:m","data":1}));
    let page = get(server.addr, "/metrics");
    let value = |series: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    assert_eq!(
        value(r#"edge_ws_http_api_requests_total{outcome="unauthorized"}"#),
        2
    );
    assert!(value(r#"edge_ws_http_api_requests_total{outcome="error"}"#) >= 8);
    assert!(value("edge_ws_store_commit_seconds_count") >= 1);
    assert_eq!(value("edge_ws_users_online"), 1);
    let per_core: u64 = (0..2)
        .map(|c| value(&format!(r#"edge_ws_core_opened{{core="{c}"}}"#)))
        .sum();
    assert_eq!(per_core, value("edge_ws_opened"));
    assert!(page.contains(r#"edge_ws_upgrades_rejected_total{reason="invalid_api_key"}"#));
    let health: Value = serde_json::from_str(&get(server.addr, "/health")).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        health["store"]["commits"].as_u64().unwrap() >= 1,
        "{health}"
    );
    drop(server);
}

#[test]
fn a_backend_publishes_reads_history_and_lists_channels() {
    let (_dir, server, api) = start("publish");
    let mut w = ws(server.addr, "ann");
    send(
        &mut w,
        json!({"type":"subscribe","id":1,"data":{"channel":"h:room"}}),
    );
    assert_eq!(recv_kind(&mut w, "subscribed")["id"], 1);
    send(
        &mut w,
        json!({"type":"subscribe","id":2,"data":{"channel":"plain"}}),
    );
    assert_eq!(recv_kind(&mut w, "subscribed")["id"], 2);

    let r = call(
        api,
        "publish",
        json!({"channel":"h:room","data":{"text":"from the backend"},"idempotency_key":"k1"}),
    );
    assert_eq!(
        (r["offset"].as_u64(), &r["duplicate"]),
        (Some(1), &json!(false))
    );
    let p = recv_kind(&mut w, "publication");
    assert_eq!(p["channel"], "h:room");
    assert_eq!(p["offset"], 1);
    assert_eq!(p["epoch"], r["epoch"]);
    assert_eq!(p["data"]["text"], "from the backend");
    // The same key again: answered with the first result, nothing published.
    let again = call(
        api,
        "publish",
        json!({"channel":"h:room","data":{"text":"from the backend"},"idempotency_key":"k1"}),
    );
    assert_eq!(
        (again["offset"].as_u64(), &again["duplicate"]),
        (Some(1), &json!(true))
    );

    let b = call(
        api,
        "broadcast",
        json!({"channels":["plain","h:room","bad name"],"data":"both"}),
    );
    let results = b["results"].as_array().unwrap();
    assert!(results[0].get("error").is_none(), "{b}");
    assert_eq!(results[1]["offset"], 2);
    assert!(results[2]["error"].as_str().is_some(), "{b}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = recv_kind(&mut w, "publication");
        got.push((
            p["channel"].as_str().unwrap().to_string(),
            p["data"].clone(),
        ));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("h:room".into(), json!("both")),
            ("plain".into(), json!("both"))
        ]
    );

    let h = call(api, "history", json!({"channel":"h:room","limit":10}));
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2]);
    let (s, v) = call_with(api, Some(KEY), "history", r#"{"channel":"plain"}"#);
    assert_eq!(s, 400, "a channel without history: {v}");

    let c = call(api, "channels", json!({}));
    let list = c["channels"].as_array().unwrap();
    for name in ["h:room", "plain"] {
        let e = list.iter().find(|e| e["channel"] == name).expect(name);
        assert_eq!(e["subscribers"], 1, "{c}");
    }
    drop(server);
}

#[test]
fn a_backend_notifies_messages_looks_up_and_disconnects_a_user() {
    let (_dir, server, api) = start("users");
    let mut bob = ws(server.addr, "bob");
    // Wait until bob is registered (the first envelope is answered after the open).
    send(&mut bob, json!({"type":"ping","id":1}));
    assert_eq!(recv_kind(&mut bob, "pong")["id"], 1);

    let p = call(api, "presence", json!({"user":"bob"}));
    assert_eq!(
        (p["status"].as_str(), p["connections"].as_u64()),
        (Some("online"), Some(1))
    );
    let nobody = call(api, "presence", json!({"user":"nobody"}));
    assert_eq!(nobody["status"], "offline");

    let n = call(
        api,
        "notify",
        json!({"user":"bob","type":"invoice","title":"Invoice paid","body":"42 EUR","data":{"n":42}}),
    );
    let id = n["id"].as_u64().expect("an id");
    let push = recv_kind(&mut bob, "notification");
    assert_eq!(push["data"]["id"].as_u64(), Some(id));
    assert_eq!(push["data"]["title"], "Invoice paid");
    assert_eq!(push["data"]["data"]["n"], 42);
    let page = call(api, "notifications", json!({"user":"bob"}));
    assert_eq!(page["items"][0]["id"].as_u64(), Some(id));

    let s = call(
        api,
        "send_to_user",
        json!({"user":"bob","type":"alert","data":{"level":"high"}}),
    );
    assert_eq!(s["connections"], 1);
    let m = recv_kind(&mut bob, "alert");
    assert_eq!(m["data"]["level"], "high");
    assert_eq!(
        call(api, "send_to_user", json!({"user":"nobody","data":1}))["connections"],
        0
    );

    let d = call(
        api,
        "disconnect",
        json!({"user":"bob","code":4501,"reason":"banned"}),
    );
    assert_eq!(d["connections"], 1);
    let frame = loop {
        match bob.read() {
            Ok(Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    let f = frame.expect("a close code");
    assert_eq!((u16::from(f.code), f.reason.as_str()), (4501, "banned"));
    drop(server);
}
