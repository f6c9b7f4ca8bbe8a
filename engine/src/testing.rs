//! Unit-testing a [`Handler`] with no sockets: the engine's WebSocket layer on in-memory cores.
//!
//! [`MemEngine`] runs N cores, each the engine's own per-core WebSocket service on a
//! [`MemDriver`] (the runtime's in-memory transport), sharing one engine state exactly as
//! [`crate::EngineBuilder::build`] builds it: command queues, doorbells, metrics, fan-out rings
//! and the channel registry. Only the transport differs, so handshakes, framing, the close
//! handshake, pings, heartbeats, timeouts, slow consumers, fan-out and the cork behave as they do
//! on io_uring, and a test can drive them one step at a time:
//!
//! * a [`MemClient`] is one peer: it performs a real HTTP upgrade, sends masked frames, decodes
//!   what the server sent, and can stop reading ([`MemClient::set_window`]);
//! * nothing crosses cores on its own: [`MemEngine::pump`] rings every core's doorbell until
//!   the publishes and commands in flight between cores (and from [`EngineHandle`]) are delivered;
//! * time stands still: [`MemEngine::tick`] advances a fake clock and runs every core's timers
//!   (the cores check their deadlines in a scan every 250 ms, so a timeout fires at the first
//!   scan after it, as on the real loop; [`MemEngine::run_for`] ticks step by step).
//!
//! Everything happens on the calling thread, in the order the test asks for it, so a test can
//! assert on exact bytes, close codes and counters. Handler state a test wants to inspect can be
//! shared with it through an `Rc<RefCell<_>>` captured by the factory (a handler need not be
//! `Send`). A handler must not call back into the [`MemEngine`] or a [`MemClient`] (they are
//! busy running it: that panics); a [`EngineHandle`] is fine, its work waits for the next pump.
//!
//! ```
//! use edge_ws::testing::MemEngine;
//! use edge_ws::{Config, Handler, Message, Socket};
//! use edge_ws::protocol::OpCode;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
//!         let _ = socket.send(&message);
//!     }
//! }
//!
//! let engine = MemEngine::new(Config::default(), 1, |_core| Echo);
//! let mut client = engine.connect(0, "/");
//! client.send(OpCode::Text, b"hello");
//! assert_eq!(client.recv_text().as_deref(), Some("hello"));
//! client.send_close(1000, "bye");
//! assert_eq!(client.expect_close(), Some(1000));
//! assert!(!client.is_open());
//! assert_eq!(engine.metrics().closed, 1);
//! ```
//!
//! [`TempDir`] is a scratch directory for tests, benches and examples that need one on disk
//! (a store, a config file, logs): it is removed when the guard is dropped.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use edge_ws_protocol::handshake::{
    parse_response, ClientOutcome, ClientRequest, ClientResponse, HandshakeError,
};
use edge_ws_protocol::{CloseCode, Decoder, DecoderConfig, Encoder, Message, OpCode, Role};

use crate::config::Config;
use crate::handler::Handler;
use crate::metrics::MetricsSnapshot;
use crate::runtime::mem::MemDriver;
use crate::runtime::{ConnId, CoreWaker};
use crate::service::WsService;
use crate::shared::Shared;
use crate::stream::{PublicationFormat, RestoredStream, StreamSetup, StreamStore};
use crate::{ConnectionId, EngineHandle};

/// Most rounds [`MemEngine::pump`] runs before it decides the cores never settle.
pub const MAX_PUMP_ROUNDS: usize = 64;

/// The longest HTTP answer a [`MemClient`] accepts to its upgrade request.
const MAX_RESPONSE_LEN: usize = 64 * 1024;

/// The cores and the fake clock, shared by the engine and its clients.
struct Cores<H: Handler> {
    drivers: Vec<MemDriver<WsService<H>>>,
    base: Instant,
    offset: Duration,
    /// Peers connected so far (gives each one its own address and key).
    peers: u32,
}

/// What a [`MemClient`] needs of the cores, without the handler's type.
trait Wire {
    fn connect(&mut self, core: usize) -> Option<(ConnId, u32)>;
    fn receive(&mut self, core: usize, id: ConnId, data: &[u8]);
    fn take_sent(&mut self, core: usize, id: ConnId) -> Vec<u8>;
    fn set_window(&mut self, core: usize, id: ConnId, window: Option<usize>);
    fn hang_up(&mut self, core: usize, id: ConnId);
    fn is_open(&self, core: usize, id: ConnId) -> bool;
    fn queued(&self, core: usize, id: ConnId) -> usize;
}

impl<H: Handler> Wire for Cores<H> {
    fn connect(&mut self, core: usize) -> Option<(ConnId, u32)> {
        self.peers = self.peers.wrapping_add(1);
        let n = self.peers;
        let peer = SocketAddr::from(([192, 0, 2, 1], 1024 + (n % 64_000) as u16));
        self.drivers[core].connect(peer).map(|id| (id, n))
    }
    fn receive(&mut self, core: usize, id: ConnId, data: &[u8]) {
        self.drivers[core].receive(id, data);
    }
    fn take_sent(&mut self, core: usize, id: ConnId) -> Vec<u8> {
        self.drivers[core].take_sent(id)
    }
    fn set_window(&mut self, core: usize, id: ConnId, window: Option<usize>) {
        self.drivers[core].set_window(id, window);
    }
    fn hang_up(&mut self, core: usize, id: ConnId) {
        self.drivers[core].hang_up(id);
    }
    fn is_open(&self, core: usize, id: ConnId) -> bool {
        self.drivers[core].is_open(id)
    }
    fn queued(&self, core: usize, id: ConnId) -> usize {
        self.drivers[core].queued(id)
    }
}

/// The stream parts of a [`MemEngine`] (see [`MemEngine::with_streams`]).
#[derive(Default)]
pub struct MemStreams {
    /// Where persistent channels are written.
    pub store: Option<Arc<dyn StreamStore>>,
    /// How publications to streams are formatted.
    pub format: Option<Arc<dyn PublicationFormat>>,
    /// Streams to continue.
    pub restore: Vec<RestoredStream>,
    /// A cluster broker (what `EngineBuilder::broker` gives a real engine); started with the
    /// engine.
    pub broker: Option<Arc<dyn crate::broker::Broker>>,
}

impl std::fmt::Debug for MemStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStreams")
            .field("store", &self.store.is_some())
            .field("format", &self.format.is_some())
            .field("restore", &self.restore.len())
            .field("broker", &self.broker.is_some())
            .finish()
    }
}

/// An engine of in-memory cores for socket-free tests (see the [module docs](self)).
pub struct MemEngine<H: Handler> {
    cores: Rc<RefCell<Cores<H>>>,
    shared: Arc<Shared>,
    config: Arc<Config>,
}

impl<H: Handler> std::fmt::Debug for MemEngine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEngine")
            .field("cores", &self.shared.cores)
            .field("clock", &self.cores.try_borrow().ok().map(|c| c.offset))
            .finish()
    }
}

impl<H: Handler> MemEngine<H> {
    /// `cores` in-memory cores running `config` (its `addr`, `cores`, `pin` and ring sizes do
    /// not apply), each with the handler `factory(core_index)`. Panics on a configuration
    /// [`crate::EngineBuilder::build`] refuses, on zero cores, or if an eventfd cannot be
    /// created.
    pub fn new(config: Config, cores: usize, factory: impl Fn(usize) -> H) -> Self {
        Self::with_streams(config, cores, MemStreams::default(), factory)
    }

    /// [`MemEngine::new`] with a stream store, a publication format or restored streams (what
    /// `EngineBuilder::stream_store`, `publication_format` and `restore_streams` give a real
    /// engine).
    pub fn with_streams(
        config: Config,
        cores: usize,
        streams: MemStreams,
        factory: impl Fn(usize) -> H,
    ) -> Self {
        if let Err(e) = config.channels.validate(Some(streams.store.is_some())) {
            panic!("MemEngine: {e}");
        }
        if let Err(e) = config.validate() {
            panic!("MemEngine: {e}");
        }
        assert!(cores > 0, "MemEngine: at least one core");
        let wakers: Arc<[CoreWaker]> = (0..cores)
            .map(|i| CoreWaker::detached(i).expect("eventfd for a core's doorbell"))
            .collect();
        let shared = Arc::new(Shared::new(
            cores,
            config.ring_capacity,
            wakers,
            config.channels.clone(),
            StreamSetup {
                store: streams.store,
                format: streams.format,
                restore: streams.restore,
            },
            streams.broker,
        ));
        Shared::start_broker(&shared);
        let config = Arc::new(config);
        let drivers = (0..cores)
            .map(|i| {
                let service = WsService::new(i, config.clone(), shared.clone(), factory(i));
                MemDriver::new(i, service)
            })
            .collect();
        // After the services started their clocks: offset `d` is at least `d` for every core.
        let base = Instant::now();
        MemEngine {
            cores: Rc::new(RefCell::new(Cores {
                drivers,
                base,
                offset: Duration::ZERO,
                peers: 0,
            })),
            shared,
            config,
        }
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.shared.cores
    }

    /// The configuration the cores run.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A `Send + Sync + Clone` handle with the operations of [`crate::EngineHandle`], for code
    /// outside the cores (any thread). What it sends is delivered by the next [`pump`].
    ///
    /// [`pump`]: MemEngine::pump
    pub fn handle(&self) -> EngineHandle {
        EngineHandle::new(self.shared.clone(), SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Every counter summed over the cores.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut s = MetricsSnapshot::sum(self.shared.metrics.iter());
        s.add_runtime(self.cores.borrow().drivers.iter().map(|d| d.stats()));
        s
    }

    /// Counters of one core (`None` if there is no such core).
    pub fn core_metrics(&self, core: usize) -> Option<MetricsSnapshot> {
        let mut s = MetricsSnapshot::sum(std::iter::once(self.shared.metrics.get(core)?));
        s.add_runtime(self.cores.borrow().drivers.get(core).map(|d| d.stats()));
        Some(s)
    }

    /// Open WebSocket connections over all cores.
    pub fn connections(&self) -> u64 {
        self.shared.connections()
    }

    /// Connections in `core`'s transport table, WebSocket or not, including those closing
    /// (0 once every connection has been torn down).
    pub fn transport_connections(&self, core: usize) -> usize {
        self.cores.borrow().drivers[core].connections()
    }

    /// Whether `core` still accepts connections (not shutting down).
    pub fn accepting(&self, core: usize) -> bool {
        self.cores.borrow().drivers[core].accepting()
    }

    /// Whether `core` has stopped (after a shutdown drained it).
    pub fn stopped(&self, core: usize) -> bool {
        self.cores.borrow().drivers[core].stopped()
    }

    /// Delivers the work in flight between cores: rings every core's doorbell (each runs its
    /// `on_wake`: commands from handles, publishes from other cores and outside threads, its
    /// own spilled publishes) in core order, round after round, until a whole round leaves no
    /// command or publish waiting anywhere; a shutdown asked for through [`EngineHandle::shutdown`]
    /// starts first. Returns the number of rounds it took (1 when there was nothing to do).
    ///
    /// Panics after [`MAX_PUMP_ROUNDS`] rounds that all left work behind.
    pub fn pump(&self) -> usize {
        let mut cores = self.cores.borrow_mut();
        for round in 1..=MAX_PUMP_ROUNDS {
            let mut busy = false;
            // Every core's request is consumed (one shutdown call asks them all).
            let asked = self
                .shared
                .wakers
                .iter()
                .fold(false, |a, w| w.take_shutdown() | a);
            if asked {
                for d in cores.drivers.iter_mut() {
                    d.shutdown();
                }
                busy = true;
            }
            for (i, d) in cores.drivers.iter_mut().enumerate() {
                // Only a core whose doorbell rang runs `on_wake`, as on the real runtime: work
                // queued without a wake is a bug, and shows as a pump that never settles.
                if !self.shared.wakers[i].take_wake() {
                    busy |= self.work_waiting();
                    continue;
                }
                d.wake();
                // A core's spilled publishes show here too: its flush either moves some into
                // the (then non-empty) ring or finds the ring full.
                busy |= self.work_waiting();
            }
            if !busy {
                return round;
            }
        }
        panic!("MemEngine::pump: work still waiting after {MAX_PUMP_ROUNDS} rounds");
    }

    /// Whether any command queue or ring holds something.
    fn work_waiting(&self) -> bool {
        self.shared.queues.iter().any(|q| !q.is_empty())
            || self
                .shared
                .inboxes
                .iter()
                .any(|inbox| inbox.from_core.iter().any(|lane| !lane.is_empty()))
    }

    /// Advances the fake clock by `by` and runs one timer tick on every core at the new time
    /// (handshake, heartbeat, idle, close and drain timeouts; held pongs). The clock starts at
    /// zero when the engine is built; one tick covers any span, so `tick(interval)` fires a
    /// timer of `interval` at once.
    pub fn tick(&self, by: Duration) {
        let mut cores = self.cores.borrow_mut();
        cores.offset += by;
        let now = cores.base + cores.offset;
        for d in cores.drivers.iter_mut() {
            d.tick(now);
        }
    }

    /// Advances the fake clock by `total` in steps of the configured timer tick, ticking every
    /// core at each step (as the real loop would).
    pub fn run_for(&self, total: Duration) {
        let step = self.config.tick.max(Duration::from_millis(1));
        let mut left = total;
        while !left.is_zero() {
            let by = step.min(left);
            self.tick(by);
            left -= by;
        }
    }

    /// The fake clock: time since the engine was built.
    pub fn elapsed(&self) -> Duration {
        self.cores.borrow().offset
    }

    /// Graceful shutdown of every core now (as [`crate::EngineHandle::shutdown`]): no more
    /// connections are accepted, every WebSocket gets a 1001 close, and each core stops once
    /// its connections are gone or the drain timeout passed ([`MemEngine::tick`]).
    pub fn shutdown(&self) {
        let mut cores = self.cores.borrow_mut();
        for d in cores.drivers.iter_mut() {
            d.shutdown();
        }
    }

    /// A peer connects to `core`, sends an upgrade request for `path` (offering no subprotocol
    /// or extension) and checks the `101` answer. Panics if the upgrade fails; see
    /// [`MemEngine::try_connect`] to test refusals.
    pub fn connect(&self, core: usize, path: &str) -> MemClient {
        self.try_connect(
            core,
            &ClientRequest {
                host: "localhost",
                path,
                key: [0; 16],
                protocols: &[],
                extensions: None,
                extra_headers: &[],
            },
        )
        .unwrap_or_else(|e| panic!("upgrade of {path} on core {core} failed: {e:?}"))
    }

    /// A peer connects to `core` and sends `request` (an all-zero `key` is replaced by one
    /// unique to the connection); the answer is checked with
    /// [`edge_ws_protocol::handshake::parse_response`]. `Ok` with the open WebSocket, or why
    /// not: the HTTP answer of a refusal, no answer yet (a deferred upgrade: see
    /// [`MemClient::send_upgrade`]), a core that does not accept, or an invalid `101`.
    pub fn try_connect(
        &self,
        core: usize,
        request: &ClientRequest<'_>,
    ) -> Result<MemClient, ConnectError> {
        let mut client = self.open(core).ok_or(ConnectError::NotAccepting)?;
        client.send_upgrade(request);
        match client.finish_upgrade()? {
            Some(_) => Ok(client),
            None => Err(ConnectError::NoAnswer {
                open: client.is_open(),
            }),
        }
    }

    /// A peer connects to `core` (TCP only: nothing sent yet). `None` when the core no longer
    /// accepts connections.
    pub fn open(&self, core: usize) -> Option<MemClient> {
        assert!(core < self.cores(), "no core {core}");
        let (id, n) = self.cores.borrow_mut().connect(core)?;
        let keys = 0x9e37_79b9u32.wrapping_mul(n);
        let mut state = keys | 1;
        let mask = move || {
            // xorshift32: varied, deterministic mask keys.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_be_bytes()
        };
        let wire: Rc<RefCell<dyn Wire>> = self.cores.clone();
        Some(MemClient {
            wire,
            core,
            conn: id,
            serial: n,
            encoder: Encoder::client(mask),
            decoder: Decoder::new(
                Role::Client,
                DecoderConfig {
                    max_frame_size: usize::MAX,
                    max_message_size: usize::MAX,
                    max_fragments: usize::MAX,
                },
            ),
            rx: BytesMut::new(),
            upgrade: None,
            response: None,
        })
    }

    /// Sends `request` (raw HTTP) on a new connection to `core` and returns the answer, for
    /// plain HTTP (`GET /health`) and malformed upgrades. Panics if the core does not accept
    /// or nothing parsable came back.
    pub fn http(&self, core: usize, request: &[u8]) -> HttpResponse {
        let mut c = self
            .open(core)
            .unwrap_or_else(|| panic!("core {core} does not accept connections"));
        c.send_raw(request);
        let raw = c.take_raw();
        HttpResponse::parse(&raw)
            .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
    }
}

/// Why [`MemEngine::try_connect`] did not open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The core no longer accepts connections (shutting down or stopped).
    NotAccepting,
    /// The server answered with an HTTP status other than 101 (a refusal by the handler, a bad
    /// request).
    Refused(HttpResponse),
    /// The server sent no complete answer; `open`: it kept the connection (a deferred upgrade).
    NoAnswer {
        /// Whether the server still holds the connection.
        open: bool,
    },
    /// The `101` answer is not valid for the request (wrong accept key, protocol not offered).
    Handshake(HandshakeError),
}

/// An HTTP answer as a [`MemClient`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The reason phrase of the status line.
    pub reason: String,
    /// Every header in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Everything after the header block.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Parses a complete HTTP/1.1 answer (header block and everything after it as the body);
    /// `None` when `raw` holds no complete header block.
    pub fn parse(raw: &[u8]) -> Option<HttpResponse> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let rest = status_line.strip_prefix("HTTP/1.1 ")?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(HttpResponse {
            status: code.parse().ok()?,
            reason: reason.to_owned(),
            headers,
            body: raw[end + 4..].to_vec(),
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The upgrade request a [`MemClient`] sent, kept to check the answer.
struct SentUpgrade {
    host: String,
    path: String,
    key: [u8; 16],
    protocols: Vec<String>,
    extensions: Option<String>,
}

/// One peer of a [`MemEngine`]: what a WebSocket client would do on a socket, in memory.
///
/// Frames it sends are masked ([`Encoder::client`]); what the server sent is decoded with a
/// client-role [`Decoder`] (no size limit), so a frame the server should never send panics the
/// test. The server's side of the connection keeps existing until it closes it; the bytes it
/// sent stay readable after that.
pub struct MemClient {
    wire: Rc<RefCell<dyn Wire>>,
    core: usize,
    conn: ConnId,
    serial: u32,
    encoder: Encoder,
    decoder: Decoder,
    /// Received and not yet decoded.
    rx: BytesMut,
    upgrade: Option<SentUpgrade>,
    response: Option<ClientResponse>,
}

impl std::fmt::Debug for MemClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemClient")
            .field("id", &self.id())
            .field("upgraded", &self.response.is_some())
            .field("unread", &self.rx.len())
            .finish()
    }
}

impl MemClient {
    /// The connection's engine-wide id (what the handler's `Socket::id` reports).
    pub fn id(&self) -> ConnectionId {
        ConnectionId::new(self.core, self.conn)
    }

    /// The core the connection lives on.
    pub fn core(&self) -> usize {
        self.core
    }

    /// The server's `101` answer, once the upgrade completed.
    pub fn response(&self) -> Option<&ClientResponse> {
        self.response.as_ref()
    }

    /// The subprotocol the server selected in its `101`.
    pub fn protocol(&self) -> Option<&str> {
        self.response.as_ref()?.protocol.as_deref()
    }

    /// Sends an upgrade request (an all-zero `key` is replaced by one unique to the
    /// connection); read the answer with [`MemClient::finish_upgrade`].
    pub fn send_upgrade(&mut self, request: &ClientRequest<'_>) {
        let key = if request.key == [0; 16] {
            let mut k = [0u8; 16];
            for (i, b) in k.iter_mut().enumerate() {
                *b = (self.serial.wrapping_mul(31).wrapping_add(i as u32 * 17) & 0xff) as u8;
            }
            k
        } else {
            request.key
        };
        let request = ClientRequest { key, ..*request };
        let mut out = Vec::new();
        request.write(&mut out);
        self.upgrade = Some(SentUpgrade {
            host: request.host.to_owned(),
            path: request.path.to_owned(),
            key,
            protocols: request.protocols.iter().map(|p| p.to_string()).collect(),
            extensions: request.extensions.map(str::to_owned),
        });
        self.send_raw(&out);
    }

    /// Checks the answer to [`MemClient::send_upgrade`]: `Ok(Some)` once a valid `101` came
    /// (frames after it are kept for [`MemClient::recv`]), `Ok(None)` while nothing complete
    /// came (a deferred upgrade), `Err` for a refusal or an invalid `101`.
    pub fn finish_upgrade(&mut self) -> Result<Option<ClientResponse>, ConnectError> {
        if let Some(r) = &self.response {
            return Ok(Some(r.clone()));
        }
        self.pull();
        let sent = self
            .upgrade
            .as_ref()
            .expect("finish_upgrade without send_upgrade");
        let protocols: Vec<&str> = sent.protocols.iter().map(String::as_str).collect();
        let request = ClientRequest {
            host: &sent.host,
            path: &sent.path,
            key: sent.key,
            protocols: &protocols,
            extensions: sent.extensions.as_deref(),
            extra_headers: &[],
        };
        match parse_response(&self.rx, &request, MAX_RESPONSE_LEN) {
            Ok(ClientOutcome::Partial) => Ok(None),
            Ok(ClientOutcome::Complete(response, used)) => {
                let _ = self.rx.split_to(used);
                self.response = Some(response.clone());
                Ok(Some(response))
            }
            Err(HandshakeError::BadStatus(_)) => {
                let raw = self.take_raw();
                Err(HttpResponse::parse(&raw)
                    .map(ConnectError::Refused)
                    .unwrap_or(ConnectError::Handshake(HandshakeError::Malformed)))
            }
            Err(e) => Err(ConnectError::Handshake(e)),
        }
    }

    /// Sends one whole message or control frame of type `opcode`, masked. Control payloads
    /// must be at most 125 bytes; a close payload is sent as given (see
    /// [`MemClient::send_close`]).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = BytesMut::new();
        self.encoder.encode(opcode, payload, &mut out);
        self.send_raw(&out);
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) {
        self.send(OpCode::Text, text.as_bytes());
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.send(OpCode::Binary, data);
    }

    /// Sends one frame of a fragmented message (`opcode`: Text/Binary first, Continuation
    /// after; `fin` on the last).
    pub fn send_fragment(&mut self, opcode: OpCode, payload: &[u8], fin: bool) {
        let mut out = BytesMut::new();
        self.encoder.encode_fragment(opcode, payload, fin, &mut out);
        self.send_raw(&out);
    }

    /// Sends a close frame with `code` and `reason`.
    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut out = BytesMut::new();
        self.encoder.encode_close(CloseCode(code), reason, &mut out);
        self.send_raw(&out);
    }

    /// Sends `bytes` exactly as given (unmasked frames, HTTP, garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let mut wire = self.wire.borrow_mut();
        wire.receive(self.core, self.conn, bytes);
    }

    /// The next message or control frame the server sent, `None` while no complete one
    /// arrived. Panics before the upgrade completed, or if the server sent an invalid frame.
    pub fn recv(&mut self) -> Option<Message> {
        assert!(self.response.is_some(), "recv before the upgrade completed");
        self.pull();
        match self.decoder.decode(&mut self.rx) {
            Ok(m) => m,
            Err(e) => panic!("the server sent an invalid frame to {}: {e}", self.id()),
        }
    }

    /// Every complete message or control frame the server sent so far.
    pub fn recv_all(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// The next message, which must be a text message (panics on anything else); `None` while
    /// none arrived.
    pub fn recv_text(&mut self) -> Option<String> {
        match self.recv()? {
            Message::Text(t) => Some(String::from_utf8(t.to_vec()).expect("validated text")),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next frame, which must be a close (panics on anything else): its code, 1005 when
    /// it carried none; `None` while no frame arrived.
    pub fn expect_close(&mut self) -> Option<u16> {
        match self.recv()? {
            Message::Close(Some(f)) => Some(f.code.0),
            Message::Close(None) => Some(CloseCode::NO_STATUS.0),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Takes every byte received and not yet decoded (the HTTP answer before an upgrade).
    pub fn take_raw(&mut self) -> Vec<u8> {
        self.pull();
        self.rx.split().to_vec()
    }

    /// Sets how many more bytes this peer reads (`None`: everything): `Some(0)` makes a client
    /// that stopped reading, so the server's output stays queued.
    pub fn set_window(&mut self, window: Option<usize>) {
        self.wire
            .borrow_mut()
            .set_window(self.core, self.conn, window);
    }

    /// Bytes the server queued for this peer and could not deliver yet.
    pub fn queued(&self) -> usize {
        self.wire.borrow().queued(self.core, self.conn)
    }

    /// Whether the server still holds the connection (it has not closed and freed it yet).
    pub fn is_open(&self) -> bool {
        self.wire.borrow().is_open(self.core, self.conn)
    }

    /// The peer disconnects without a close frame (the handler sees 1006).
    pub fn hang_up(&mut self) {
        self.wire.borrow_mut().hang_up(self.core, self.conn);
    }

    fn pull(&mut self) {
        let sent = self.wire.borrow_mut().take_sent(self.core, self.conn);
        self.rx.extend_from_slice(&sent);
    }
}

/// Scratch directories made so far by this process (makes each [`TempDir`] name unique).
static TEMP_DIRS: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under [`std::env::temp_dir`], removed with everything in it when the guard
/// is dropped. Keep the guard alive for as long as the directory is used.
///
/// ```
/// use edge_ws::testing::TempDir;
///
/// let dir = TempDir::new("edge-ws-doc-example");
/// std::fs::write(dir.path().join("config.toml"), "").unwrap();
/// let path = dir.path().to_path_buf();
/// drop(dir);
/// assert!(!path.exists());
/// ```
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `{temp_dir}/{prefix}-{pid}-{n}`, with `n` counting the directories made by this
    /// process. Panics if the directory cannot be created.
    pub fn new(prefix: &str) -> TempDir {
        let n = TEMP_DIRS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("TempDir: cannot create {}: {e}", path.display());
        }
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    /// Removes the directory and everything in it (errors are ignored).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn temp_dir_lives_as_long_as_its_guard() {
        let a = TempDir::new("edge-ws-testing-tempdir");
        let b = TempDir::new("edge-ws-testing-tempdir");
        assert_ne!(a.path(), b.path());
        let path = a.path().to_path_buf();
        assert!(path.is_dir());
        std::fs::create_dir_all(path.join("nested")).unwrap();
        std::fs::write(path.join("nested/file"), b"data").unwrap();
        drop(a);
        assert!(!path.exists());
        assert!(b.path().is_dir());
    }
}
