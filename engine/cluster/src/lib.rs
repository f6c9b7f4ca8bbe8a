//! # edge-ws-cluster
//!
//! Cluster mode for edge-ws: many engine processes, on one machine or many, act as one
//! through Redis. Each process runs one `RedisBroker` (with the `redis` feature) and hands
//! it to its engine with `EngineBuilder::broker`; the engine's fan-out then tells the broker
//! about every publish and about the first and last local subscriber of each channel (the
//! `edge_ws::broker` seam).
//!
//! What crosses the network:
//! - **Plain channels** (no history): a publish is delivered to the publishing node's own
//!   subscribers at once and `PUBLISH`ed once to Redis; Redis sends it once to every node
//!   that is `SUBSCRIBE`d to the channel, which is exactly the nodes with local subscribers
//!   (a node subscribes on its first local subscriber and unsubscribes after its last). Each
//!   node then fans it out to its cores through the engine's rings. The publishing node
//!   recognises its own message by the node id in it and ignores the echo.
//! - **Channels with history**: a publish is numbered in Redis by one Lua script (offset and
//!   epoch in a hash, `XADD` with `MAXLEN` into the channel's stream, `PEXPIRE`, `PUBLISH`),
//!   so the offset order is Redis's and a client can recover on any node. These are
//!   delivered only from Redis, to every interested node, the publisher's included.
//! - **Users**: [`user_channel`] names a per-user channel; a node whose connection of that
//!   user subscribes to it receives what any node sends to the user.
//!
//! Failure: while Redis is unreachable, publishes to other nodes fail at once with
//! `BrokerError::Unavailable` (counted), `/health` answers 503 with the broker's state, and
//! the broker reconnects with exponential backoff; on reconnect it subscribes again to every
//! channel with local subscribers and re-reads the position of every stream, so each node
//! delivers, in order, the stream publications it missed. See docs/CLUSTER.md.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "redis")]
mod redis_broker;
pub mod testing;
mod wire;

#[cfg(feature = "redis")]
pub use crate::redis_broker::{RedisBroker, RedisConfig};
pub use edge_ws::broker::user_channel;
