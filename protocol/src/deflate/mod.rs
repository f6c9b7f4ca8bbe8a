//! permessage-deflate (RFC 7692): negotiation and per-message (de)compression.
//!
//! - [`negotiate_server`], [`client_offer`] and [`client_accept`] handle the
//!   `Sec-WebSocket-Extensions` exchange and yield the agreed [`DeflateParams`].
//! - [`Compressor`] compresses our outgoing messages, [`Decompressor`] inflates the peer's.
//!
//! `server_*` parameters govern the server→client direction and `client_*` ones the
//! client→server direction: a server compresses with (`server_max_window_bits`,
//! `server_no_context_takeover`) and inflates with the `client_*` pair; a client the reverse.
//!
//! # Framing
//!
//! Each message is deflated with a sync flush and sent without the flush's trailing
//! `00 00 ff ff` (RFC 7692 §7.2.1); the receiver appends it back before inflating (§7.2.2).
//! Messages ending the deflate stream with a BFINAL block (§7.2.3.4) are accepted too.
//!
//! # Window sizes
//!
//! RFC 7692 allows windows of 8 to 15 bits, but zlib (zlib-rs included) refuses an 8-bit
//! window for raw deflate. We still accept offers and answers with 8 bits: a direction limited
//! to 8 bits is compressed with stored blocks only (deflate level 0), which contain no
//! back-references and therefore satisfy any window; such messages grow by a few bytes instead
//! of shrinking. Inflation always uses a 15-bit window, which decodes streams made with any
//! smaller window (see [`Decompressor`]).
//!
//! # Backend
//!
//! flate2 with its `zlib-rs` backend: a pure-Rust port of zlib, so no C toolchain is needed,
//! and, unlike the default `miniz_oxide` backend (which ignores the window size), it honours
//! `window_bits`, which `*_max_window_bits` negotiation needs.
//!
//! # Limits
//!
//! [`Decompressor::decompress`] takes the cap on a message's inflated size and stops inflating
//! as soon as it is crossed, failing with
//! [`MessageTooLarge`](crate::ProtocolError::MessageTooLarge): a small compressed message
//! cannot make us allocate past the cap (inflate bombs).

mod codec;
mod params;

pub use codec::{Compressor, Decompressor};
pub use params::{
    client_accept, client_offer, negotiate_server, DeflateConfig, DeflateParams, NegotiationError,
    EXTENSION_NAME, MAX_WINDOW_BITS, MIN_WINDOW_BITS,
};
