//! Test harness: a real redis-server on a free loopback port with its own directory, engines
//! joined through a `RedisBroker` each (every engine is a node), and WebSocket clients.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws::broker::Broker;
use edge_ws::stream::PublicationFormat;
use edge_ws::{
    ChannelConfig, ChannelPolicy, Cores, Engine, EngineHandle, Handler, Message, MessageKind,
    PublishOptions, Recovery, Socket, StreamPosition,
};
use edge_ws_cluster::{RedisBroker, RedisConfig};
use tungstenite::WebSocket;

pub use edge_ws_cluster::testing::{have_redis, Redis};

/// The channels of the tests: `chat:` keeps 1,000 publications.
pub fn channels() -> ChannelConfig {
    ChannelConfig::default().namespace("chat:", ChannelPolicy::history(1000))
}

/// Stream publications reach clients as `<offset>|<payload>`.
struct OffsetFormat;

impl PublicationFormat for OffsetFormat {
    fn encode(
        &self,
        _channel: &str,
        position: StreamPosition,
        payload: &[u8],
        kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind> {
        out.extend_from_slice(format!("{}|", position.offset).as_bytes());
        out.extend_from_slice(payload);
        Some(kind)
    }
}

/// One node: an engine (two cores) with its own broker.
pub struct Node {
    pub engine: Option<Engine>,
    pub handle: EngineHandle,
    pub broker: RedisBroker,
    pub addr: SocketAddr,
}

impl Node {
    pub fn start(redis_url: &str) -> Node {
        Node::start_with(redis_url, Duration::from_secs(30))
    }

    /// With presence entries expiring `presence_ttl` after their node stopped.
    pub fn start_with(redis_url: &str, presence_ttl: Duration) -> Node {
        let mut cfg = RedisConfig::new(redis_url);
        cfg.presence_ttl = presence_ttl;
        cfg.backoff_min = Duration::from_millis(20);
        cfg.backoff_max = Duration::from_millis(200);
        cfg.timeout = Duration::from_millis(500);
        let broker = RedisBroker::new(cfg).unwrap();
        let engine = Engine::builder()
            .bind("127.0.0.1:0".parse().unwrap())
            .cores(Cores::Count(2))
            .pin(false)
            .channels(channels())
            .publication_format(Arc::new(OffsetFormat))
            .broker(Arc::new(broker.clone()))
            .build(|_| Commands)
            .expect("engine starts");
        let handle = engine.handle();
        let addr = engine.local_addr();
        let node = Node {
            engine: Some(engine),
            handle,
            broker,
            addr,
        };
        node.wait("broker up", || {
            node.broker.state() == edge_ws::broker::BrokerState::Up
        });
        node
    }

    /// Waits (up to 10 s) for `f`.
    pub fn wait(&self, what: &str, f: impl Fn() -> bool) {
        wait(what, f)
    }

    /// Waits until this node's broker holds `n` channel subscriptions at Redis.
    pub fn wait_subscriptions(&self, n: u64) {
        self.wait(&format!("{n} subscriptions"), || {
            self.broker.stats().subscriptions == n
        });
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// `GET /health`: status code and body.
    pub fn health(&self) -> (u16, String) {
        self.get("/health")
    }

    /// `GET path`: status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
        self.broker.stop();
    }
}

/// Waits (up to 10 s) for `f`, polling.
pub fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The nodes' handler: text commands `sub <channel> [<offset> <epoch>]` (answered
/// `subscribed <offset> <epoch> <recovery>`) and `pub <channel> <text>` (answered
/// `ack <offset>` or `error <why>`).
struct Commands;

impl Handler for Commands {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let Message::Text(t) = message else { return };
        let t = String::from_utf8_lossy(&t).to_string();
        let mut parts = t.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("sub"), Some(ch), rest) => {
                let since = rest.map(|r| {
                    let (o, e) = r.split_once(' ').expect("offset epoch");
                    StreamPosition {
                        offset: o.parse().unwrap(),
                        epoch: e.parse().unwrap(),
                    }
                });
                socket.subscribe_with(ch, since, |s, r| {
                    let reply = match r {
                        Ok(sub) => {
                            let p = sub.position.unwrap_or(StreamPosition {
                                offset: 0,
                                epoch: 0,
                            });
                            let rec = match sub.recovery {
                                Recovery::NotRequested => "live".to_string(),
                                Recovery::Recovered { missed } => format!("recovered:{missed}"),
                                Recovery::Failed(f) => format!("failed:{f:?}"),
                            };
                            format!("subscribed {} {} {rec}", p.offset, p.epoch)
                        }
                        Err(e) => format!("error {e}"),
                    };
                    let _ = s.send_text(&reply);
                });
            }
            (Some("pub"), Some(ch), Some(body)) => {
                socket.publish_acked(
                    ch,
                    body.as_bytes(),
                    MessageKind::Text,
                    PublishOptions::default(),
                    |s, r| {
                        let reply = match r {
                            Ok(p) => format!("ack {}", p.position.map_or(0, |p| p.offset)),
                            Err(e) => format!("error {e}"),
                        };
                        let _ = s.send_text(&reply);
                    },
                );
            }
            _ => {}
        }
    }
}

/// A blocking WebSocket client.
pub struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
        Client { ws }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(tungstenite::Message::text(text)).unwrap();
    }

    /// Sends `texts` as text messages in one write (a burst the server reads at once).
    pub fn send_burst(&mut self, texts: impl IntoIterator<Item = String>) {
        for t in texts {
            self.ws.write(tungstenite::Message::text(t)).unwrap();
        }
        self.ws.flush().unwrap();
    }

    /// The next text message (10 s at most).
    pub fn recv(&mut self) -> String {
        loop {
            match self.ws.read().expect("a message within 10 s") {
                tungstenite::Message::Text(t) => return t.to_string(),
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next message, or `None` if none arrives within `d`.
    pub fn recv_within(&mut self, d: Duration) -> Option<String> {
        self.ws.get_mut().set_read_timeout(Some(d)).unwrap();
        let r = loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => break Some(t.to_string()),
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        self.ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        r
    }

    /// Subscribes and returns the reply's `(offset, epoch, recovery)`.
    pub fn subscribe(&mut self, channel: &str, since: Option<(u64, u64)>) -> (u64, u64, String) {
        match since {
            Some((o, e)) => self.send(&format!("sub {channel} {o} {e}")),
            None => self.send(&format!("sub {channel}")),
        }
        let r = self.recv();
        let p: Vec<&str> = r.split(' ').collect();
        assert_eq!(p[0], "subscribed", "{r}");
        (
            p[1].parse().unwrap(),
            p[2].parse().unwrap(),
            p[3].to_string(),
        )
    }
}
