//! Shared helpers for the integration tests: engines on loopback, clients, raw frames.
//!
//! Every helper bounds its waits; nothing here talks to anything but 127.0.0.1.

pub mod ot_client;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use edge_ws::{Config, Cores, Engine, Handler, Message, MessageView, Socket};
use edge_ws_protocol::deflate::{client_accept, client_offer, DeflateConfig};
use edge_ws_protocol::handshake::{parse_response, ClientOutcome, ClientRequest, ClientResponse};
use edge_ws_protocol::{Decoder, DecoderConfig, Encoder, OpCode, Role};

/// Echoes every message back (lent ones too, without a copy of their own).
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let _ = socket.send(message);
    }

    fn on_message_view(&mut self, socket: &mut Socket<'_, '_>, message: MessageView<'_>) {
        let _ = socket.send(message);
    }
}

/// A config for tests: port 0 on loopback, `cores` cores, unpinned, short timers.
pub fn test_config(cores: usize) -> Config {
    let mut c = Config::default();
    c.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.cores = Cores::Count(cores);
    c.pin = false;
    c.tick = Duration::from_millis(20);
    c.io.buf_count = 16; // 16 × 64 KiB = 1 MiB per core, consumed incrementally
    c
}

/// Starts an echo engine with `cfg`.
pub fn echo_engine(cfg: Config) -> Engine {
    Engine::builder()
        .config(cfg)
        .build(|_| Echo)
        .expect("engine starts")
}

/// Connects a tungstenite client to `ws://addr/path` with a read timeout.
pub fn ws_client(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Raises the open-files limit to at least `n` (tests open thousands of sockets), raising the
/// hard limit too where the process may (root); returns the soft limit in force afterwards.
pub fn raise_nofile(n: u64) -> u64 {
    edge_ws::runtime::os::raise_nofile_limit(n)
}

/// A minimal blocking client over our own codec, for sending frames tungstenite won't
/// (unmasked, invalid UTF-8, oversized) and reading exactly what the server answers.
#[derive(Debug)]
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl RawClient {
    /// Connects and completes the upgrade (optionally offering `extensions`).
    pub fn connect(addr: SocketAddr, path: &str, extensions: Option<&str>) -> RawClient {
        Self::upgrade(addr, path, extensions).0
    }

    /// Connects offering permessage-deflate as `cfg` describes; panics unless the server
    /// accepts it. Received messages are inflated (sending stays uncompressed).
    pub fn connect_deflate(addr: SocketAddr, path: &str, cfg: &DeflateConfig) -> RawClient {
        let offer = client_offer(cfg);
        let (mut c, resp) = Self::upgrade(addr, path, Some(&offer));
        let params = client_accept(&resp.extensions, cfg)
            .expect("valid deflate answer")
            .expect("server accepted permessage-deflate");
        c.decoder.set_deflate(&params);
        c
    }

    fn upgrade(
        addr: SocketAddr,
        path: &str,
        extensions: Option<&str>,
    ) -> (RawClient, ClientResponse) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let host = addr.to_string();
        let req = ClientRequest {
            host: &host,
            path,
            key: *b"edge-ws-test-key",
            protocols: &[],
            extensions,
            extra_headers: &[],
        };
        let mut out = Vec::new();
        req.write(&mut out);
        stream.write_all(&out).unwrap();
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let resp = loop {
            assert!(Instant::now() < deadline, "handshake timed out");
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("read handshake");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            match parse_response(&buf, &req, 8192).expect("valid 101") {
                ClientOutcome::Partial => continue,
                ClientOutcome::Complete(resp, used) => {
                    let _ = buf.split_to(used);
                    break resp;
                }
            }
        };
        let client = RawClient {
            stream,
            buf,
            decoder: Decoder::new(Role::Client, DecoderConfig::default()),
        };
        (client, resp)
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one masked frame.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = BytesMut::new();
        Encoder::client(|| [0x11, 0x22, 0x33, 0x44]).encode(opcode, payload, &mut out);
        self.write_raw(&out);
    }

    /// Reads the next message; `None` when the server closed the TCP connection.
    pub fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames are valid")
            {
                return Some(m);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads until a close frame arrives and returns its code (`None` for an empty close);
    /// panics if the connection ends without one.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Some(Message::Close(c)) => return c.map(|c| c.code.0),
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`, ...); 0 if unreadable.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// This process's resident memory now, in bytes. The engine under test runs in-process, so
/// growth across a test is the server's growth (plus whatever the test itself allocated).
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS")
}

/// This process's peak resident memory so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM")
}

/// A masked client frame with any first byte (FIN, RSV bits, opcode) and payload, built by hand
/// so a test can send what our encoder would not (e.g. RSV1 on a payload it compressed itself).
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x17, 0xc3, 0x08];
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(first);
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 0xffff => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}
