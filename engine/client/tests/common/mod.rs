//! Shared helpers: edge-ws engines and hand-written servers on 127.0.0.1, bounded waits.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use edge_ws::{CloseCode, Config, ConnectionId, Cores, Engine, Handler, Message, Socket};
use edge_ws_protocol::handshake::{parse_request, write_accept, Accept, ParseOutcome, Request};
use edge_ws_protocol::{Decoder, DecoderConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// An engine config for tests: port 0 on loopback, one unpinned core, 20 ms ticks.
pub fn engine_config() -> Config {
    let mut c = Config::default();
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.cores = Cores::Count(1);
    c.pin = false;
    c.tick = Duration::from_millis(20);
    c.io.buf_count = 256;
    c
}

/// `ws://addr/path`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

/// Echoes every message back.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let _ = socket.send(&message);
    }
}

/// Starts an echo engine.
pub fn echo_engine(cfg: Config) -> Engine {
    Engine::builder()
        .config(cfg)
        .build(|_| Echo)
        .expect("engine starts")
}

/// What a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Open(ConnectionId),
    Text(ConnectionId, String),
    Binary(ConnectionId, usize),
    Closed(ConnectionId, u16, String),
}

/// Reports every open, message and close; answers `echo:*` texts, closes on `close:CODE`.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
}

impl Handler for Recorder {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        let _ = self.tx.send(Seen::Open(socket.id()));
    }

    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let id = socket.id();
        match message {
            Message::Text(t) => {
                let t = String::from_utf8(t.to_vec()).unwrap();
                if let Some(rest) = t.strip_prefix("echo:") {
                    let _ = socket.send_text(rest);
                }
                if let Some(code) = t.strip_prefix("close:") {
                    socket.close(CloseCode(code.parse().unwrap()), "asked to");
                }
                let _ = self.tx.send(Seen::Text(id, t));
            }
            Message::Binary(b) => {
                let _ = self.tx.send(Seen::Binary(id, b.len()));
            }
            _ => {}
        }
    }

    fn on_close(&mut self, socket: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
        let _ = self
            .tx
            .send(Seen::Closed(socket.id(), code.0, reason.to_owned()));
    }
}

/// Starts a recording engine; returns it with the stream of what it saw.
pub fn recorder_engine(cfg: Config) -> (Engine, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = Engine::builder()
        .config(cfg)
        .build(move |_| Recorder { tx: tx.clone() })
        .expect("engine starts");
    (engine, rx)
}

/// The next thing the recorder saw, within [`WAIT`].
pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within(WAIT, rx.recv()).await.expect("engine still running")
}

/// A hand-written server on 127.0.0.1: accepts TCP connections and answers as a test needs.
pub async fn raw_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Reads an upgrade request; returns it with the bytes after it.
pub async fn read_request(stream: &mut TcpStream) -> (Request, BytesMut) {
    let mut buf = BytesMut::new();
    loop {
        let n = within(WAIT, stream.read_buf(&mut buf)).await.unwrap();
        assert!(n > 0, "client closed during its handshake");
        match parse_request(&buf, 8192).expect("a valid upgrade request") {
            ParseOutcome::Partial => continue,
            ParseOutcome::Complete(req, used) => {
                let _ = buf.split_to(used);
                return (req, buf);
            }
            ParseOutcome::NotUpgrade(..) => panic!("not an upgrade request"),
        }
    }
}

/// A hand-written server's end of one WebSocket connection.
#[derive(Debug)]
pub struct RawPeer {
    pub stream: TcpStream,
    pub buf: BytesMut,
    dec: Decoder,
}

impl RawPeer {
    /// Accepts one connection and completes its upgrade with no subprotocol or extension.
    pub async fn accept(listener: &TcpListener) -> RawPeer {
        let (mut stream, _) = within(WAIT, listener.accept()).await.unwrap();
        let (req, buf) = read_request(&mut stream).await;
        let mut out = Vec::new();
        write_accept(
            &req,
            &Accept {
                protocol: None,
                extensions: None,
                extra_headers: &[],
            },
            &mut out,
        );
        stream.write_all(&out).await.unwrap();
        RawPeer {
            stream,
            buf,
            dec: Decoder::new(Role::Server, DecoderConfig::default()),
        }
    }

    /// The client's next frame (as a message), or `None` once it closed TCP.
    pub async fn next(&mut self) -> Option<edge_ws_protocol::Message> {
        loop {
            if let Some(m) = self.dec.decode(&mut self.buf).expect("valid client frames") {
                return Some(m);
            }
            match within(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Writes raw bytes (server frames are unmasked: build them with `server_frame`).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}
