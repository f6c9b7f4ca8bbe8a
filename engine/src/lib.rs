//! # edge-ws
//!
//! A thread-per-core WebSocket engine for Linux on io_uring.
//!
//! One pinned thread per configured core, each with its own `SO_REUSEPORT` listener, its own
//! io_uring (multishot accept and receive into a shared provided-buffer ring, so an idle
//! connection holds no read buffer) and its own connection table. Nothing on the hot path is
//! shared between cores. The WebSocket protocol itself is [`edge_ws_protocol`], a sans-IO codec.
//!
//! ```no_run
//! use edge_ws::{Engine, Handler, Message, Socket};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
//!         let _ = socket.send(message);
//!     }
//! }
//!
//! let engine = Engine::builder()
//!     .bind("127.0.0.1:9001".parse().unwrap())
//!     .build(|_core| Echo)
//!     .expect("engine starts");
//! engine.join().unwrap();
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// Layers, each using only those above it in this list: names and errors; configuration and
// counters; fan-out types; what cores and handles share; connections and their output;
// the application API; the runtime service; the engine; the in-memory test engine. Streams
// (`stream`: positions, history, policies) sit beside the fan-out types; the owner core's
// sequencing is `connection::sequencer`.
pub mod broker;
pub mod config;
mod connection;
mod engine;
mod error;
pub mod fanout;
mod handler;
mod ids;
pub mod metrics;
mod service;
mod shared;
pub mod stream;
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
mod upgrade;

pub use crate::config::{Config, Cores, SlowConsumerPolicy};
pub use crate::connection::SendError;
pub use crate::engine::{Engine, EngineBuilder, EngineHandle};
pub use crate::error::EngineError;
pub use crate::fanout::{Filter, PublishOptions};
pub use crate::handler::{Handler, IntoOutgoing, Socket};
pub use crate::ids::{ConnectionId, MessageKind};
pub use crate::metrics::MetricsSnapshot;
pub use crate::runtime::IoConfig;
pub use crate::stream::{
    ChannelConfig, ChannelPolicy, HistoryPage, HistoryQuery, Publication, Published, Recovery,
    RecoveryFailure, StreamError, StreamPosition, Subscribed,
};
pub use crate::upgrade::{HttpRequest, HttpResponse, Rejection, Upgrade, UpgradeRequest};
pub use edge_ws_protocol::{self as protocol, CloseCode, Message, MessageView};
pub use edge_ws_runtime as runtime;
