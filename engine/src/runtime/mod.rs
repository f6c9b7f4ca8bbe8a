//! The protocol-agnostic per-core io_uring transport.
