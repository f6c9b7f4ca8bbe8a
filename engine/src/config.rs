//! Engine configuration: cores, I/O sizes, limits, timeouts, compression.

use std::net::SocketAddr;
use std::time::Duration;

use edge_ws_protocol::deflate::DeflateConfig;
use edge_ws_protocol::CloseCode;

/// Which CPU cores run the engine. One thread (with its own listener and ring) per core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    /// Every core the process may run on.
    All,
    /// The first `n` cores the process may run on.
    Count(usize),
    /// These core ids (as numbered by the OS).
    List(Vec<usize>),
}

/// What happens when a connection's unsent output exceeds
/// [`Config::write_buffer_limit`] (a client that does not read fast enough).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Drop the message that does not fit and count it (`slow_consumer_drops`); the
    /// connection stays open.
    DropNewest,
    /// Close the connection with [`CLOSE_SLOW_CONSUMER`] and count it
    /// (`slow_consumer_closes`).
    Close,
}

/// Close code sent to a client closed for not reading its messages fast enough (4000–4499:
/// the client may reconnect; see docs/PROTOCOL.md).
pub const CLOSE_SLOW_CONSUMER: CloseCode = CloseCode(4001);

/// Close code sent when no pong answered a heartbeat ping in time.
pub const CLOSE_HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4002);

/// Close code sent when a connection was idle longer than the idle timeout.
pub const CLOSE_IDLE_TIMEOUT: CloseCode = CloseCode(4003);

/// Everything the engine can be told. Build it with [`crate::Engine::builder`] or fill it in
/// directly; [`Config::default`] runs on every core on `127.0.0.1:9001`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address every core's listener binds (SO_REUSEPORT). Port 0 picks a free port.
    pub addr: SocketAddr,
    /// Cores to run on.
    pub cores: Cores,
    /// Pin each core's thread to its core.
    pub pin: bool,
    /// io_uring submission queue entries per core.
    pub ring_entries: u32,
    /// Provided receive buffers per core (power of two). Shared by all of the core's
    /// connections: an idle connection holds none.
    pub buf_count: u16,
    /// Size of each provided receive buffer in bytes.
    pub buf_size: u32,
    /// Listen backlog.
    pub backlog: i32,
    /// Most connections in total (split evenly across cores); more are closed at accept.
    pub max_connections: usize,
    /// A connection that has not completed its upgrade by then is dropped (slowloris).
    pub handshake_timeout: Duration,
    /// Cap on the upgrade request's header block.
    pub max_request_len: usize,
    /// Largest message accepted (after reassembly and inflation); larger ones close with 1009.
    pub max_message_size: usize,
    /// Largest single frame accepted.
    pub max_frame_size: usize,
    /// Most fragments per message.
    pub max_fragments: usize,
    /// Subprotocols the server speaks, in order of preference is the client's (first offered
    /// that appears here wins).
    pub subprotocols: Vec<String>,
    /// permessage-deflate; `None` declines every offer.
    pub deflate: Option<DeflateConfig>,
    /// Send a ping after this long without hearing from the client; `None` disables heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// Close a connection whose ping has not been answered for this long.
    pub heartbeat_timeout: Duration,
    /// Close a connection that sent nothing for this long; `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Unsent bytes allowed per connection before the slow-consumer policy applies.
    pub write_buffer_limit: usize,
    /// What to do with a connection over its write buffer limit.
    pub slow_consumer: SlowConsumerPolicy,
    /// How long to wait for the peer's close reply before dropping the connection.
    pub close_timeout: Duration,
    /// On graceful shutdown: how long to wait for clients to answer the 1001 close.
    pub drain_timeout: Duration,
    /// Capacity of each core-to-core fan-out ring (publishes); a full ring spills to the
    /// publishing core's overflow queue.
    pub ring_capacity: usize,
    /// Granularity of the timers (handshake, heartbeat, idle, close, drain).
    pub tick: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            cores: Cores::All,
            pin: true,
            ring_entries: 4096,
            buf_count: 1024,
            buf_size: 4096,
            backlog: 1024,
            max_connections: 1_000_000,
            handshake_timeout: Duration::from_secs(5),
            max_request_len: edge_ws_protocol::handshake::MAX_REQUEST_LEN,
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 65_536,
            subprotocols: Vec::new(),
            deflate: None,
            heartbeat_interval: Some(Duration::from_secs(30)),
            heartbeat_timeout: Duration::from_secs(10),
            idle_timeout: None,
            write_buffer_limit: 4 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            ring_capacity: crate::fanout::DEFAULT_RING_CAPACITY,
            tick: Duration::from_millis(100),
        }
    }
}
