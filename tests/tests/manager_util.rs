//! Helpers shared by the `manager_*` tests (included with `#[path]`; also built alone as an
//! empty test target).
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_ws::{Config, Engine};
use edge_ws_server::{JwtAuth, Manager, Router, TokenSource};
use tungstenite::protocol::Role;
use tungstenite::{Message as T, WebSocket};

pub type Ws = WebSocket<TcpStream>;

pub const SECRET: &str = "manager-test-secret";
pub const ISS: &str = "edge-test";
pub const AUD: &str = "chat";

/// The JWT settings the tests use: HS256, issuer and audience checked, no leeway, tokens
/// from the bearer header, `?token=` or a `bearer.` subprotocol entry.
pub fn jwt() -> JwtAuth {
    JwtAuth::hs256(SECRET)
        .issuer(ISS)
        .audience(AUD)
        .leeway(Duration::ZERO)
        .sources([
            TokenSource::BearerHeader,
            TokenSource::Query("token".into()),
            TokenSource::Protocol("bearer.".into()),
        ])
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A valid token for `sub`, good for an hour.
pub fn token(sub: &str) -> String {
    jwt().sign(&format!(
        r#"{{"sub":"{sub}","exp":{},"iss":"{ISS}","aud":"{AUD}","permissions":["chat"]}}"#,
        now_secs() + 3600
    ))
}

/// base64url without padding (to forge tokens the library would not sign).
pub fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A test engine config: loopback, port 0, `cores` cores, unpinned, short tick.
pub fn config(cores: usize) -> Config {
    let mut c = edge_ws_tests::test_config(cores);
    c.io.backlog = 1024;
    c
}

/// Starts `manager` over an engine with `cfg`, each core running `router()`.
pub fn start<F>(manager: &Manager, cfg: Config, router: F) -> Engine
where
    F: Fn() -> Router + Send + Sync + 'static,
{
    manager
        .start(Engine::builder().config(cfg), move |_| router())
        .expect("engine starts")
}

/// The routes most tests use: `echo` (data back), `whoami` (user id), `core` (core index).
pub fn basic_router() -> Router {
    Router::new()
        .route("echo", |ctx, msg| {
            ctx.reply_raw("echo", msg.data_raw())?;
            Ok(())
        })
        .route("whoami", |ctx, _| {
            let id = ctx.user_id().unwrap_or("").to_owned();
            ctx.reply("whoami", &id)?;
            Ok(())
        })
        .route("core", |ctx, _| {
            let core = ctx.core();
            ctx.reply("core", &core)?;
            Ok(())
        })
}

/// How an upgrade ended.
#[derive(Debug)]
pub enum Outcome {
    /// 101: a client WebSocket on the stream.
    Open(Box<Ws>),
    /// An HTTP refusal: status and body.
    Refused(u16, String),
    /// The connection ended without an answer.
    Dropped,
}

impl Outcome {
    pub fn open(self) -> Ws {
        match self {
            Outcome::Open(ws) => *ws,
            Outcome::Refused(s, b) => panic!("refused: {s} {b}"),
            Outcome::Dropped => panic!("dropped"),
        }
    }

    pub fn refused(self) -> (u16, String) {
        match self {
            Outcome::Open(_) => panic!("expected a refusal, got a WebSocket"),
            Outcome::Refused(s, b) => (s, b),
            Outcome::Dropped => panic!("dropped"),
        }
    }
}

/// Sends an upgrade request for `path` with extra `headers` and reads the answer's head (status
/// line and headers), leaving the stream just after it; `None` if the server dropped us first.
pub fn send_upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(TcpStream, String)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    // Byte by byte up to the blank line, so no frame after the 101 is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some((s, String::from_utf8(head).expect("ASCII head")))
}

/// Sends an upgrade request for `path` with extra `headers` and reads the answer.
pub fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Outcome {
    let Some((mut s, head)) = send_upgrade(addr, path, headers) else {
        return Outcome::Dropped;
    };
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("status line");
    if status == 101 {
        return Outcome::Open(Box::new(WebSocket::from_raw_socket(s, Role::Client, None)));
    }
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    Outcome::Refused(status, String::from_utf8_lossy(&body).into_owned())
}

/// `n` upgrades started at the same instant from `n` threads.
pub fn concurrent_upgrades(
    addr: SocketAddr,
    n: usize,
    path: impl Fn(usize) -> String,
    headers: &[(&str, &str)],
) -> Vec<Outcome> {
    let barrier = Arc::new(Barrier::new(n));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let path = path(i);
            let headers = headers.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
                    barrier.wait();
                    upgrade(addr, &path, &h)
                })
                .expect("spawn")
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

pub fn send(ws: &mut Ws, text: &str) {
    ws.send(T::text(text)).expect("send");
}

/// The next text message.
pub fn recv(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            T::Text(t) => return t.as_str().to_owned(),
            T::Ping(_) | T::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Sends `text` and returns the answer.
pub fn ask(ws: &mut Ws, text: &str) -> String {
    send(ws, text);
    recv(ws)
}

/// Reads until the server's close frame (and answers it): its code and reason.
pub fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(T::Close(Some(f))) => {
                // Send the close reply tungstenite queued, completing the handshake.
                let _ = ws.flush();
                return (u16::from(f.code), f.reason.as_str().to_owned());
            }
            Ok(T::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Polls `f` every 10 ms for up to 10 s.
pub fn eventually(what: &str, f: impl FnMut() -> bool) {
    assert!(
        edge_ws_tests::wait_until(Duration::from_secs(10), f),
        "timed out waiting for {what}"
    );
}

/// A future that completes after `d`, on any executor (a helper thread wakes it).
#[derive(Debug)]
pub struct Delay {
    until: Instant,
    armed: bool,
}

pub fn delay(d: Duration) -> Delay {
    Delay {
        until: Instant::now() + d,
        armed: false,
    }
}

impl Future for Delay {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.until {
            return Poll::Ready(());
        }
        if !self.armed {
            self.armed = true;
            let waker = cx.waker().clone();
            let wait = self.until - now;
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                waker.wake();
            });
        }
        Poll::Pending
    }
}
