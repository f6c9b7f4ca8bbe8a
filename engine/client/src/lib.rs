//! # edge-ws-client
//!
//! An async WebSocket client (RFC 6455, permessage-deflate RFC 7692) on tokio, built on the
//! sans-IO [`Connection`](edge_ws_protocol::Connection) of [`edge_ws_protocol`] in the
//! client role.
//!
//! What it does:
//! - [`Client::connect`] / [`ClientBuilder`]: `ws://` and `wss://` URLs, extra headers, subprotocols (the
//!   chosen one is [`WebSocket::protocol`]), a permessage-deflate offer (on by default),
//!   connect and handshake timeouts, message and frame size limits, keepalive pings with a
//!   pong timeout, a close timeout, and bounded write and read queues.
//! - [`WebSocket`]: `send` (waits while the write queue is at its limit) and `try_send`
//!   ([`Error::WouldBlock`]), `recv`, `close(code, reason)` (the close handshake, then TCP
//!   closed), [`Stream`](futures_core::Stream) and [`Sink`](futures_sink::Sink), and
//!   [`split`](WebSocket::split) into a [`Sender`] (`Clone`) and a [`Receiver`].
//! - One task per connection, started with [`tokio::spawn`], owns the socket: it answers the
//!   server's pings even while the application only sends and never reads, sends keepalive
//!   pings, and stops reading the socket (instead of buffering without bound) while the
//!   application does not take received messages.
//! - [`ReconnectingClient`]: reconnects with exponential backoff and full jitter, honouring
//!   close codes (4000–4499 reconnect, 4500–4999 stop, 1001 reconnect, 1000 as configured), with an
//!   [`on_connect`](ReconnectBuilder::on_connect) hook to resubscribe and
//!   [`ReconnectEvent`]s to observe.
//! - [`ChannelClient`]: channels of the edge-ws JSON envelope over a reconnecting client:
//!   it remembers each channel's last `offset`/`epoch`, resubscribes with `since` after every
//!   reconnect, reports whether the server recovered what was missed, and drops publications
//!   delivered twice ([`channels`]).
//! - [`Backends`]: a set of weighted backends with a balancing [`Strategy`] (round-robin,
//!   least-connections by power of two choices, smooth weighted round-robin, IP-hash by
//!   rendezvous hashing with a fixed, documented hash: [`balance`]), a circuit breaker per
//!   backend ([`breaker`]), and active (`GET /health`) and passive health checks with
//!   events and per-backend status ([`health`]). [`Backends::connect`] picks a healthy,
//!   breaker-closed backend and fails over; when none is left it fails at once with
//!   [`Error::NoBackendAvailable`] or [`Error::AllBackendsFailed`], never a hang.
//! - [`Pool`]: min/max connections over [`Backends`], `acquire` with a timeout (waiters
//!   served first come, first served), release on drop, LRU idle eviction, validation by
//!   ping on checkout ([`WebSocket::ping`]), counts ([`PoolStats`]) and a graceful
//!   [`close`](Pool::close) ([`pool`]).
//! - `wss://` (feature `tls`): TLS over rustls (the `ring` provider), checked against
//!   Mozilla's root CAs (webpki-roots) or the CAs given with
//!   `ClientBuilder::tls_ca_pem` / `ClientBuilder::tls_config`, the host sent as SNI; a
//!   certificate that is expired, for another name or from an unknown CA fails with
//!   [`Error::Tls`] saying so. Without the feature a `wss://` URL fails with
//!   [`Error::TlsNotSupported`].
//!   The pool, [`Backends`] and the reconnecting client take `wss://` URLs like `ws://`
//!   ones (active health checks stay plain HTTP).
//! - Masking and handshake keys come from the operating system's generator ([`getrandom`]),
//!   masking keys 64 per system call.
//!
//! What it refuses to do:
//! - Run without a tokio runtime: connecting spawns a task, so it must be called inside a
//!   runtime (current-thread or multi-thread) with I/O and time enabled.
//! - Buffer without bound: both queues are bounded, and a full write queue makes `send` wait.
//! - Drop messages silently: what could not be sent or read is counted in [`Stats`].
//! - Hand pings, pongs or close frames to the application: the task handles them; how the
//!   connection ended is [`WebSocket::close_info`].
//! - Predictable masking keys: there is no fallback generator.
//! - HTTP proxies, redirects, cookies.
//!
//! ```no_run
//! use edge_ws_client::{Client, Message};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> edge_ws_client::Result<()> {
//!     let mut ws = Client::builder()
//!         .protocols(["echo"])
//!         .connect("ws://127.0.0.1:9001/")
//!         .await?;
//!     ws.send(Message::text("hello")).await?;
//!     assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//!     ws.close(1000, "bye").await
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backends;
pub mod balance;
pub mod breaker;
pub mod channels;
mod config;
mod driver;
mod error;
mod handshake;
pub mod health;
mod keys;
mod message;
mod pipe;
pub mod pool;
pub mod reconnect;
mod request;
mod settings;
mod socket;
mod stream;

pub use crate::backends::{
    Backend, BackendConnection, BackendLoad, BackendStatus, Backends, BackendsBuilder,
};
pub use crate::balance::Strategy;
pub use crate::breaker::{BreakerConfig, BreakerState};
pub use crate::channels::{ChannelClient, ChannelEvent};
pub use crate::config::{Client, ClientBuilder};
pub use crate::error::{Error, Result};
pub use crate::health::{BackendEvent, HealthConfig};
pub use crate::message::{CloseInfo, Message, Stats};
pub use crate::pool::{Pool, PoolBuilder, PoolStats, PooledConnection};
pub use crate::reconnect::{
    Backoff, Events, Jitter, ReconnectBuilder, ReconnectEvent, ReconnectingClient,
};
pub use crate::request::{IntoRequest, IntoUrl, Request, Url};
pub use crate::socket::{ConnectionInfo, Receiver, Sender, WebSocket};
pub use edge_ws_protocol::connection::Side;
pub use edge_ws_protocol::deflate::{DeflateConfig, DeflateParams};
pub use edge_ws_protocol::CloseCode;
/// The rustls crate the client uses (feature `tls`), for [`ClientBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;
