//! Engine configuration: cores, I/O sizes, limits, timeouts, compression.

use std::net::SocketAddr;
use std::time::Duration;

use edge_ws_protocol::deflate::DeflateConfig;
use edge_ws_protocol::CloseCode;

use crate::stream::ChannelConfig;

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
    /// Each core's io_uring entries, provided receive buffers (shared by all of the core's
    /// connections: an idle connection holds none) and listen backlog: the runtime's own
    /// [`IoConfig`](crate::runtime::IoConfig), passed to it as it is.
    pub io: crate::runtime::IoConfig,
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
    /// Most frames one fragmented message may have. The cost of a message is its bytes on the
    /// wire (each frame's header is parsed once, each payload byte unmasked and copied or
    /// inflated once), so this bounds only the header overhead of tiny fragments: the default,
    /// 2^20, lets a 16 MiB message average 16-byte fragments (and the conformance suite's
    /// 4 MiB in 64-byte fragments, 65,536 frames, pass).
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
    /// Bytes allowed to wait behind the frame being written before the slow-consumer policy
    /// applies. The frame the kernel is writing does not count, and a frame of any size is
    /// accepted when nothing else waits: a message within `max_message_size` is never refused
    /// while the peer keeps reading. What a stalled peer can make the server hold is at most
    /// the frame being written, this limit and one more frame (plus the kernel's socket
    /// buffer). Control frames (pongs, pings) count too.
    pub write_buffer_limit: usize,
    /// What to do with a connection over its write buffer limit.
    pub slow_consumer: SlowConsumerPolicy,
    /// How long to wait for the peer's close reply before dropping the connection.
    pub close_timeout: Duration,
    /// On graceful shutdown: how long to wait for clients to answer the 1001 close.
    pub drain_timeout: Duration,
    /// Capacity of each core-to-core fan-out ring (publishes); a full ring spills to the
    /// publishing core's overflow queue (counted, never lost). 0 (the default): automatic,
    /// 4096 per ring, lowered on many-core machines so the cores² rings stay within 64 MiB
    /// ([`crate::fanout::auto_ring_capacity`]).
    pub ring_capacity: usize,
    /// Granularity of the timers (handshake, heartbeat, idle, close, drain).
    pub tick: Duration,
    /// Channel names and namespaces: which channels keep history (and so have offsets and
    /// recovery), how much, for how long, and whether it is persisted.
    pub channels: ChannelConfig,
    /// A plain `GET` of this path answers every counter in the Prometheus text format;
    /// `None` answers it like any other non-upgrade request (400).
    pub metrics_path: Option<String>,
    /// A TLS listener beside the plain one (feature `tls`); `None`: plain only.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            cores: Cores::All,
            pin: true,
            io: crate::runtime::IoConfig::default(),
            max_connections: 1_000_000,
            handshake_timeout: Duration::from_secs(5),
            max_request_len: edge_ws_protocol::handshake::MAX_REQUEST_LEN,
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 1 << 20,
            subprotocols: Vec::new(),
            deflate: None,
            heartbeat_interval: Some(Duration::from_secs(30)),
            heartbeat_timeout: Duration::from_secs(10),
            idle_timeout: None,
            write_buffer_limit: 4 << 20,
            slow_consumer: SlowConsumerPolicy::Close,
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            ring_capacity: 0,
            tick: Duration::from_millis(100),
            channels: ChannelConfig::default(),
            metrics_path: Some("/metrics".into()),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl Config {
    /// Checks that the configuration can work, naming the first key that cannot (the engine
    /// runs this before starting).
    pub fn validate(&self) -> Result<(), crate::error::EngineError> {
        let bad = |msg: String| Err(crate::error::EngineError::Config(msg));
        if let Err(why) = self.io.validate() {
            return bad(format!("io: {why}"));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if self.max_message_size == 0 || self.max_frame_size == 0 || self.max_fragments == 0 {
            return bad(
                "max_message_size, max_frame_size and max_fragments must be at least 1".into(),
            );
        }
        if self.write_buffer_limit < 4096 {
            return bad(format!(
                "write_buffer_limit must be at least 4096 bytes, got {}: below that a reading \
                 client's ordinary traffic is closed as a slow consumer",
                self.write_buffer_limit
            ));
        }
        if self.max_request_len < 1024 {
            return bad(format!(
                "max_request_len must be at least 1024 bytes (a browser's upgrade request \
                 is 400-800), got {}",
                self.max_request_len
            ));
        }
        let zero = Duration::ZERO;
        for (name, d) in [
            ("tick", self.tick),
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", self.close_timeout),
            ("heartbeat_timeout", self.heartbeat_timeout),
        ] {
            if d == zero {
                return bad(format!("{name} must be longer than zero"));
            }
        }
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
        ] {
            if let Some(d) = d {
                if d < self.tick {
                    return bad(format!(
                        "{name} ({d:?}) is shorter than the timer tick ({:?}); use None to \
                         disable it",
                        self.tick
                    ));
                }
            }
        }
        if let Some(d) = &self.deflate {
            for (name, bits) in [
                ("server_max_window_bits", d.server_max_window_bits),
                ("client_max_window_bits", d.client_max_window_bits),
            ] {
                if !(8..=15).contains(&bits) {
                    return bad(format!("deflate {name} must be 8..=15, got {bits}"));
                }
            }
            if d.level > 9 {
                return bad(format!("deflate level must be 0..=9, got {}", d.level));
            }
        }
        if self.subprotocols.len() > 254 {
            return bad("at most 254 subprotocols can be configured".into());
        }
        if let Err(e) = self.channels.validate(None) {
            return bad(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        let c = Config {
            deflate: Some(DeflateConfig::default()),
            ..Config::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_with_the_key_named() {
        type Breaker = fn(&mut Config);
        let cases: Vec<(&str, Breaker)> = vec![
            ("buf_count", |c| c.io.buf_count = 1000),
            ("buf_size", |c| c.io.buf_size = 0),
            ("max_connections", |c| c.max_connections = 0),
            ("ring_entries", |c| c.io.ring_entries = 0),
            ("max_fragments", |c| c.max_fragments = 0),
            ("write_buffer_limit", |c| c.write_buffer_limit = 100),
            ("max_request_len", |c| c.max_request_len = 100),
            ("tick", |c| c.tick = Duration::ZERO),
            ("close_timeout", |c| c.close_timeout = Duration::ZERO),
            ("heartbeat_interval", |c| {
                c.heartbeat_interval = Some(Duration::from_millis(1))
            }),
            ("server_max_window_bits", |c| {
                c.deflate = Some(DeflateConfig {
                    server_max_window_bits: 7,
                    ..DeflateConfig::default()
                });
            }),
            ("level", |c| {
                c.deflate = Some(DeflateConfig {
                    level: 10,
                    ..DeflateConfig::default()
                });
            }),
        ];
        for (key, break_it) in cases {
            let mut c = Config::default();
            break_it(&mut c);
            let err = c.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
