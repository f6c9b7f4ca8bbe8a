//! [`Message`] (what is sent and received), [`CloseInfo`] (how a connection ended) and
//! [`Stats`].

use bytes::Bytes;
use edge_ws_protocol::connection::Side;
use edge_ws_protocol::CloseCode;

/// A data message. Pings, pongs and close frames are handled by the connection's task and
/// never reach the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8; received text was validated as it arrived).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Converts a decoded protocol message (only text and binary are passed on).
    pub(crate) fn from_protocol(m: edge_ws_protocol::Message) -> Option<Self> {
        match m {
            edge_ws_protocol::Message::Text(b) => {
                // Validated by the decoder; the check again costs a pass at memory speed and
                // keeps the crate free of `unsafe`.
                let text = match String::from_utf8(Vec::from(b)) {
                    Ok(t) => t,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                Some(Message::Text(text))
            }
            edge_ws_protocol::Message::Binary(b) => Some(Message::Binary(b)),
            _ => None,
        }
    }
}

impl From<String> for Message {
    fn from(t: String) -> Self {
        Message::Text(t)
    }
}

impl From<&str> for Message {
    fn from(t: &str) -> Self {
        Message::Text(t.to_owned())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// When the server closed first: its code ([`CloseCode::NO_STATUS`], 1005, if its close
    /// frame had none) — the close code the server sent. Otherwise ours: the code given to
    /// `close`, 4002 for a keepalive timeout, a protocol error's code, or
    /// [`CloseCode::ABNORMAL`] (1006) when TCP ended without a close frame.
    pub code: CloseCode,
    /// The reason that went with `code` (the server's when it closed first).
    pub reason: String,
    /// Who sent the first close frame.
    pub initiated_by: Side,
    /// Whether both close frames were exchanged.
    pub clean: bool,
}

impl CloseInfo {
    /// The server's close code and reason, when the server started the close handshake.
    pub fn peer(&self) -> Option<(CloseCode, &str)> {
        (self.initiated_by == Side::Peer).then_some((self.code, self.reason.as_str()))
    }
}

/// Counters of one connection (or of every connection of a reconnecting client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections established (a reconnecting client counts each one).
    pub connects: u64,
    /// Messages accepted by `send` / `try_send` / the sink.
    pub messages_queued: u64,
    /// Messages encoded into frames for the socket.
    pub messages_sent: u64,
    /// Messages delivered to the receive queue.
    pub messages_received: u64,
    /// Messages accepted for sending but never encoded, because the connection (or the
    /// reconnecting client) ended first. A reconnecting client keeps them for the next
    /// connection instead and counts only those left when it stops.
    pub unsent: u64,
    /// Messages encoded but not completely written to the socket when a connection ended
    /// abnormally, or dropped unwritten for a keepalive timeout: they may or may not have
    /// reached the server.
    pub lost_in_flight: u64,
    /// Messages received after the receiving half was dropped (discarded).
    pub dropped_unread: u64,
    /// Pongs queued for the socket in answer to the server's pings.
    pub pongs_sent: u64,
    /// Keepalive pings queued for the socket.
    pub pings_sent: u64,
    /// The server's pings whose pong was replaced by a newer ping's before it could be
    /// written (only the newest ping needs an answer).
    pub pongs_superseded: u64,
}
