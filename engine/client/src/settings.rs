//! The settings behind a [`ClientBuilder`](crate::ClientBuilder): what every connection
//! reads (the handshake, the connection's task, the reconnect loop), below all of them.

use std::time::Duration;

#[cfg(feature = "tls")]
use std::sync::Arc;

use edge_ws_protocol::deflate::DeflateConfig;

use crate::error::{Error, Result};

/// The settings behind a builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) protocols: Vec<String>,
    pub(crate) deflate: Option<DeflateConfig>,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) max_fragments: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_queue_limit: usize,
    pub(crate) read_queue_messages: usize,
    pub(crate) read_queue_bytes: usize,
    pub(crate) max_response_len: usize,
    /// The TLS configuration for `wss://` (`None`: Mozilla's roots).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            headers: Vec::new(),
            protocols: Vec::new(),
            deflate: Some(DeflateConfig::default()),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 1 << 16,
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            write_queue_limit: 1 << 20,
            read_queue_messages: 256,
            read_queue_bytes: 4 << 20,
            max_response_len: 16 << 10,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::Config(s.to_owned()));
        if self.max_message_size == 0 || self.max_frame_size == 0 || self.max_fragments == 0 {
            return bad("max_message_size, max_frame_size and max_fragments must be at least 1");
        }
        if self.write_queue_limit == 0 {
            return bad("write_queue_limit must be at least 1 byte");
        }
        if self.read_queue_messages == 0 || self.read_queue_bytes == 0 {
            return bad("read_queue_limit must allow at least 1 message and 1 byte");
        }
        if self.max_response_len < 256 {
            return bad("max_response_len must be at least 256 bytes");
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", self.close_timeout),
            ("pong_timeout", self.pong_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be longer than zero")));
            }
        }
        if self.ping_interval.is_some_and(|d| d.is_zero()) {
            return bad("the keepalive interval must be longer than zero (None disables it)");
        }
        Ok(())
    }
}
