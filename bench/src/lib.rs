//! edge-ws benchmarks: the `wsload` load generator, peer WebSocket servers built on crates.io
//! libraries, and the io_uring TCP echo floor. See bench/README.md.
//!
//! Linux only (epoll, io_uring, /proc). Loopback traffic only.

pub mod args;
pub mod floor;
pub mod load;
pub mod peer;
pub mod sys;
pub mod ws;
