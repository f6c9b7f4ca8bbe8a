//! [`Error`]: every way connecting, sending, receiving or reconnecting can fail.

use std::sync::Arc;
use std::time::Duration;

use edge_ws_protocol::deflate::NegotiationError;
use edge_ws_protocol::handshake::HandshakeError;
use edge_ws_protocol::{CloseCode, ProtocolError};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation failed.
///
/// `Clone` (I/O errors are shared behind an [`Arc`]) so that the error that ended a connection
/// can be reported both to [`recv`](crate::Receiver::recv) and to
/// [`close`](crate::Sender::close).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a valid `ws://` URL; the text says what is wrong.
    #[error("invalid WebSocket URL: {0}")]
    InvalidUrl(String),
    /// A `wss://` URL, and the crate was built without its `tls` feature.
    #[error("wss:// needs TLS: build edge-ws-client with its `tls` feature")]
    TlsNotSupported,
    /// The TLS handshake with the server failed; the text says why, e.g. "invalid peer
    /// certificate: Expired", "... certificate not valid for name ...", "... UnknownIssuer"
    /// (a server certificate not signed by a trusted CA), or an alert the server sent.
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls {
        /// The name the certificate was checked against (the URL's host).
        host: String,
        /// What rustls reported.
        reason: String,
    },
    /// An extra header whose name is not an HTTP token, or one the client sets itself (`Host`,
    /// `Upgrade`, `Connection`, `Sec-WebSocket-*`).
    #[error("invalid or reserved request header {0:?}")]
    InvalidHeader(String),
    /// A subprotocol name that is not an HTTP token.
    #[error("invalid subprotocol name {0:?}")]
    InvalidProtocol(String),
    /// A configuration value that cannot work; the text names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TCP connection could not be made (name resolution failed, connection refused, …).
    #[error("could not connect: {0}")]
    Connect(Arc<std::io::Error>),
    /// The TCP connection was not established within the connect timeout.
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The server's answer to the upgrade request did not complete within the handshake
    /// timeout.
    #[error("the opening handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The server's answer is not an acceptable `101 Switching Protocols`:
    /// [`HandshakeError::BadStatus`] carries the HTTP status of a refusal.
    #[error("the opening handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The server's permessage-deflate answer does not match our offer.
    #[error("permessage-deflate negotiation failed: {0}")]
    Deflate(NegotiationError),
    /// The server closed the TCP connection before its answer to the upgrade request was
    /// complete.
    #[error("the server closed the connection during the opening handshake")]
    HandshakeEof,
    /// The operating system's random number generator failed (mask and handshake keys).
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// Reading or writing the socket failed.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The server broke the protocol; the connection was closed with the error's close code
    /// ([`ProtocolError::close_code`]).
    #[error("the server broke the protocol: {0}")]
    Protocol(ProtocolError),
    /// No pong arrived within the pong timeout after a keepalive ping; the connection was
    /// closed with 4002.
    #[error("no pong within the keepalive pong timeout")]
    PongTimeout,
    /// The close handshake (or the wait for the server to close TCP after it) took longer than
    /// the close timeout; the connection was dropped.
    #[error("the close handshake timed out")]
    CloseTimeout,
    /// The TCP connection ended without a close handshake.
    #[error("the connection was lost without a close handshake")]
    ConnectionLost,
    /// The connection is closed, or closing: nothing more can be sent.
    #[error("the connection is closed")]
    Closed,
    /// [`try_send`](crate::Sender::try_send): the write queue is at its limit.
    #[error("the write queue is full")]
    WouldBlock,
    /// Reconnecting client: the server closed with a code in 4500–4999, which asks the client
    /// not to reconnect.
    #[error("the server told the client to stop (close {code}): {reason}")]
    ServerStopped {
        /// The server's close code.
        code: CloseCode,
        /// The server's close reason.
        reason: String,
    },
    /// Reconnecting client: the server closed normally (1000 or 1001) and the client is not
    /// configured to reconnect after a normal close.
    #[error("the server closed the connection (close {code}): {reason}")]
    ServerClosed {
        /// The server's close code.
        code: CloseCode,
        /// The server's close reason.
        reason: String,
    },
    /// Balanced connect: no backend may be tried now (every one is unhealthy, drained, or
    /// has its circuit breaker open). Returned at once, without waiting.
    #[error("no backend is available: all are unhealthy, drained or have an open circuit breaker")]
    NoBackendAvailable,
    /// Balanced connect: every backend that could be tried failed; `last` is the last
    /// attempt's error.
    #[error("all {attempts} backends tried failed; the last one: {last}")]
    AllBackendsFailed {
        /// Backends tried (each at most once).
        attempts: u32,
        /// Why the last one failed.
        last: Box<Error>,
    },
    /// Pool: no connection became available within the acquire timeout.
    #[error("no pooled connection within the acquire timeout of {0:?}")]
    PoolTimeout(Duration),
    /// Pool: the pool is closed (or closing) and hands out no more connections.
    #[error("the pool is closed")]
    PoolClosed,
    /// Reconnecting client: the attempt limit was reached; `last` is the last attempt's error.
    #[error("gave up after {attempts} failed attempts; the last one: {last}")]
    RetriesExhausted {
        /// Consecutive failed attempts.
        attempts: u32,
        /// Why the last one failed.
        last: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }

    pub(crate) fn connect(e: std::io::Error) -> Self {
        Error::Connect(Arc::new(e))
    }

    /// The I/O error behind [`Error::Connect`] or [`Error::Io`], if that is what this is.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Error::Connect(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }

    /// Whether retrying the same request can never succeed (a bad URL, header or
    /// configuration): the reconnecting client and balanced connects give up at once on
    /// these.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidUrl(_)
                | Error::TlsNotSupported
                | Error::InvalidHeader(_)
                | Error::InvalidProtocol(_)
                | Error::Config(_)
        )
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

impl From<NegotiationError> for Error {
    fn from(e: NegotiationError) -> Self {
        Error::Deflate(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}
