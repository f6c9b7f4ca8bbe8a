//! # edge-ws
//!
//! Thread-per-core io_uring WebSocket engine (work in progress).
#![warn(missing_docs)]

pub mod runtime;
