//! # edge-ws-protocol
//!
//! A sans-IO implementation of the WebSocket protocol (RFC 6455) with permessage-deflate
//! (RFC 7692), for servers and clients.
//!
//! This crate performs **no I/O**: it has no sockets, no async runtime, no clock and no random
//! number generator. Bytes go in through caller-owned buffers, messages and bytes to send come
//! out; mask keys and time are supplied by the caller. That makes it usable from an io_uring
//! engine, a load generator, a blocking client or a fuzzer alike.
//!
//! Key types:
//! - [`Decoder`]: bytes as they arrive → [`Message`]s, zero-copy for unfragmented payloads.
//! - [`Encoder`]: messages → frames (masking and compression per role and negotiation).
//! - [`handshake`]: the HTTP/1.1 upgrade, both sides.
//! - [`deflate`]: permessage-deflate negotiation and the (de)compressors.
//! - [`Connection`]: one connection's protocol state machine (close handshake, automatic
//!   pongs, heartbeat, idle and close deadlines), driven by the caller with [`ConnectionConfig`]
//!   and yielding [`Event`]s; see [`connection`] for the order of calls.
//! - [`ProtocolError`]: every peer fault, each mapped to its [`CloseCode`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod close;
pub mod codec;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::CloseFrame;
pub use codec::{Decoder, DecoderConfig, Encoder, Message, MessageView, Role};
pub use connection::{Connection, ConnectionConfig, Event};
pub use error::{CloseCode, ProtocolError};
pub use frame::{FrameHeader, OpCode};
