//! The message codec: [`Decoder`] (bytes → messages) and [`Encoder`] (messages → frames).
//!
//! Both are configured by [`Role`]: a server expects masked frames and sends unmasked ones, a
//! client the reverse (RFC 6455 §5.1). permessage-deflate is switched on per connection with the
//! parameters agreed in the handshake ([`crate::deflate::DeflateParams`]).

mod decoder;
mod encoder;

use bytes::Bytes;

pub use decoder::{Decoder, DecoderConfig, SliceDecoded, SliceFrame};
pub use encoder::{server_frame, Encoder, MaskKeySource};

use crate::close::CloseFrame;

/// Which end of the connection this codec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts masked frames, sends unmasked ones.
    Server,
    /// Accepts unmasked frames, masks what it sends.
    Client,
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; its bytes are valid UTF-8 (validated while decoding).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame, with its code and reason if it carried one.
    Close(Option<CloseFrame>),
}

impl Message {
    /// The payload bytes (for a close, the reason).
    pub fn payload(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match self {
            Message::Text(b) | Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(Some(c)) => &c.reason,
            Message::Close(None) => &EMPTY,
        }
    }

    /// The text of a text message. Decoded text was validated already; this checks again
    /// (the crate forbids `unsafe`), which runs at several GB/s on ASCII.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(b) => core::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// A text or binary message borrowed from the bytes it arrived in: what
/// [`Connection::poll_view_from`](crate::Connection::poll_view_from) hands out for a whole,
/// plain frame, with no allocation and no copy (the payload was unmasked where it was
/// received). Valid while the caller's receive buffer is; [`to_message`](Self::to_message)
/// copies it into an owned [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageView<'a> {
    /// A text message, validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> MessageView<'a> {
    /// The payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        match *self {
            MessageView::Text(t) => t.as_bytes(),
            MessageView::Binary(b) => b,
        }
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        match *self {
            MessageView::Text(t) => Some(t),
            MessageView::Binary(_) => None,
        }
    }

    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, MessageView::Text(_))
    }

    /// The same message, owned: the payload copied into a buffer of its size.
    pub fn to_message(&self) -> Message {
        match *self {
            MessageView::Text(t) => Message::Text(Bytes::copy_from_slice(t.as_bytes())),
            MessageView::Binary(b) => Message::Binary(Bytes::copy_from_slice(b)),
        }
    }
}
