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
//!         let _ = socket.send(&message);
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

pub mod config;
mod core;
mod engine;
pub mod fanout;
mod handler;
pub mod metrics;
pub mod testing;

pub use crate::config::{Config, Cores, SlowConsumerPolicy};
pub use crate::core::SendError;
pub use crate::engine::{ConnectionId, Engine, EngineBuilder, EngineError, EngineHandle};
pub use crate::fanout::{Filter, PublishOptions};
pub use crate::handler::{Handler, MessageKind, Rejection, Socket, Upgrade, UpgradeRequest};
pub use crate::metrics::MetricsSnapshot;
pub use edge_ws_protocol::{self as protocol, CloseCode, Message};
pub use edge_ws_runtime as runtime;
