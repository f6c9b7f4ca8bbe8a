//! [`ClientBuilder`]: everything a connection can be told, and [`Client`], the entry point.

use std::sync::Arc;
use std::time::Duration;

use edge_ws_protocol::deflate::DeflateConfig;

#[cfg(feature = "tls")]
use crate::error::Error;
use crate::error::Result;
use crate::request::{IntoRequest, Request};
use crate::settings::Settings;
use crate::socket::WebSocket;

/// The entry point: [`Client::connect`] with the defaults, or [`Client::builder`] to set
/// timeouts, limits, headers, subprotocols and compression.
///
/// ```no_run
/// use edge_ws_client::{Client, Message};
///
/// # async fn run() -> edge_ws_client::Result<()> {
/// let mut ws = Client::connect("ws://127.0.0.1:9001/echo").await?;
/// ws.send(Message::text("hello")).await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(1000, "done").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Connects with the default settings (see [`ClientBuilder`]). Must be called inside a
    /// tokio runtime with I/O and time enabled: the connection's task is started with
    /// [`tokio::spawn`].
    pub async fn connect(request: impl IntoRequest) -> Result<WebSocket> {
        ClientBuilder::new().connect(request).await
    }

    /// A builder with the default settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }
}

/// Connection settings; reusable (`Clone`) for any number of connections.
///
/// | setting | default |
/// | --- | --- |
/// | [`deflate`](Self::deflate) | offered, [`DeflateConfig::default`] |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s |
/// | [`max_message_size`](Self::max_message_size) / [`max_frame_size`](Self::max_frame_size) | 16 MiB each |
/// | [`keepalive`](Self::keepalive) | a ping after 30 s without a byte from the server, 10 s for its pong |
/// | [`close_timeout`](Self::close_timeout) | 5 s |
/// | [`write_queue_limit`](Self::write_queue_limit) | 1 MiB |
/// | [`read_queue_limit`](Self::read_queue_limit) | 256 messages, 4 MiB |
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) inner: Arc<Settings>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        ClientBuilder {
            inner: Arc::new(Settings::default()),
        }
    }

    fn set(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Adds a header line to every request (before the request's own).
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        self.set(|s| s.headers.push((name, value)))
    }

    /// Offers these subprotocols on every request, in order of preference (before the
    /// request's own). The one the server chose is [`WebSocket::protocol`].
    pub fn protocols<I, S>(self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let protocols: Vec<String> = protocols.into_iter().map(Into::into).collect();
        self.set(|s| s.protocols.extend(protocols))
    }

    /// The permessage-deflate offer; `None` offers no compression. The config's `threshold`
    /// and `level` apply to what we send; its window and context-takeover fields shape the
    /// offer and must be honoured by the server's answer.
    pub fn deflate(self, deflate: Option<DeflateConfig>) -> Self {
        self.set(|s| s.deflate = deflate)
    }

    /// How long resolving the host and opening the TCP connection may take.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.connect_timeout = timeout)
    }

    /// How long the server may take to answer the upgrade request.
    pub fn handshake_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.handshake_timeout = timeout)
    }

    /// The largest message accepted from the server, after reassembly and inflation; a larger
    /// one fails the connection with 1009 ([`Error::Protocol`](crate::Error::Protocol)).
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.set(|s| s.max_message_size = bytes)
    }

    /// The largest single frame accepted from the server (compressed size for compressed
    /// frames).
    pub fn max_frame_size(self, bytes: usize) -> Self {
        self.set(|s| s.max_frame_size = bytes)
    }

    /// The most frames one fragmented message from the server may have. Default 65,536.
    pub fn max_fragments(self, frames: usize) -> Self {
        self.set(|s| s.max_fragments = frames)
    }

    /// Keepalive: after `interval` without a byte from the server, send a ping; if no pong
    /// comes within `pong_timeout`, close with 4002 and end the connection with
    /// [`Error::PongTimeout`](crate::Error::PongTimeout). `None` sends no pings (the server's pings are answered either
    /// way). Time is counted in 10 ms steps.
    pub fn keepalive(self, interval: Option<Duration>, pong_timeout: Duration) -> Self {
        self.set(|s| {
            s.ping_interval = interval;
            s.pong_timeout = pong_timeout;
        })
    }

    /// How long the close handshake may take (our close frame to the server's reply, and the
    /// server closing TCP after it) before the connection is dropped with
    /// [`Error::CloseTimeout`](crate::Error::CloseTimeout).
    pub fn close_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.close_timeout = timeout)
    }

    /// Bytes allowed to wait to be written (messages queued by the application plus encoded
    /// frames not yet taken by the kernel). While they are at or over the limit,
    /// [`send`](crate::Sender::send) waits and [`try_send`](crate::Sender::try_send) fails
    /// with [`Error::WouldBlock`](crate::Error::WouldBlock); below it a message of any size is accepted, so at most the
    /// limit plus one message is held.
    pub fn write_queue_limit(self, bytes: usize) -> Self {
        self.set(|s| s.write_queue_limit = bytes)
    }

    /// Received messages that may wait for the application. Once `messages` messages or
    /// `bytes` bytes wait, the connection stops reading the socket (TCP flow control then
    /// slows the server) until the application takes some; pings already decoded are still
    /// answered. At most `bytes` plus one message is held.
    pub fn read_queue_limit(self, messages: usize, bytes: usize) -> Self {
        self.set(|s| {
            s.read_queue_messages = messages;
            s.read_queue_bytes = bytes;
        })
    }

    /// Cap on the server's response header block. Default 16 KiB.
    pub fn max_response_len(self, bytes: usize) -> Self {
        self.set(|s| s.max_response_len = bytes)
    }

    /// `wss://` (feature `tls`): use this rustls configuration (its roots, versions, client
    /// certificate, ALPN, …) instead of the default one (Mozilla's roots, TLS 1.3 and 1.2, ALPN
    /// `http/1.1`).
    #[cfg(feature = "tls")]
    pub fn tls_config(self, config: Arc<rustls::ClientConfig>) -> Self {
        self.set(|s| s.tls = Some(config))
    }

    /// `wss://` (feature `tls`): trust exactly the CA certificates in `pem` (one or more
    /// `CERTIFICATE` blocks) instead of Mozilla's roots, e.g. a private CA. Fails with
    /// [`Error::Config`](crate::Error::Config) if the PEM holds no usable certificate.
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(self, pem: &[u8]) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Config(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Config("CA PEM: no CERTIFICATE block".into()));
        }
        Ok(self.tls_config(crate::stream::tls::config_with_roots(roots)))
    }

    /// Connects: TCP, the upgrade request, the server's 101, permessage-deflate negotiation;
    /// then starts the connection's task with [`tokio::spawn`] (call this inside a tokio
    /// runtime with I/O and time enabled; a current-thread runtime is fine).
    pub async fn connect(&self, request: impl IntoRequest) -> Result<WebSocket> {
        let request = request.into_request()?;
        self.inner.validate()?;
        let request = request.with_defaults(&self.inner.headers, &self.inner.protocols);
        request.validate()?;
        let established = crate::handshake::connect(&self.inner, &request).await?;
        Ok(crate::socket::spawn(&self.inner, established))
    }
}

/// Needed by [`ReconnectBuilder`]: the request may fail to parse; that error is reported when
/// the client starts.
pub(crate) type PendingRequest = Result<Request>;
