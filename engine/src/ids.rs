//! Names shared by every layer of the engine: a connection's engine-wide id and the kind of a
//! data message.

use edge_ws_protocol::{Message, MessageView};

use crate::runtime::ConnId;

/// A connection's engine-wide id: its core and its per-core id (which carries a generation,
/// so a stale id never reaches a newer connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    core: u32,
    conn: ConnId,
}

impl ConnectionId {
    pub(crate) fn new(core: usize, conn: ConnId) -> Self {
        ConnectionId {
            core: core as u32,
            conn,
        }
    }

    /// An id for unit tests of code that keys by connection (it names no live connection).
    #[doc(hidden)]
    pub fn for_tests(core: usize, slot: usize) -> Self {
        ConnectionId::new(core, ConnId::new(slot, 1))
    }

    /// The index of the core the connection lives on.
    pub fn core(self) -> usize {
        self.core as usize
    }

    pub(crate) fn conn(self) -> ConnId {
        self.conn
    }

    /// The connection's slot in its core's table: dense and reused after the connection
    /// closes (with a new id), so a layer above can keep per-connection state in a `Vec`
    /// indexed by it, per core.
    pub fn slot(self) -> usize {
        self.conn.index()
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.core, self.conn)
    }
}

/// Whether a message goes out as text (valid UTF-8, opcode 1) or binary (opcode 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message: the payload must be valid UTF-8.
    Text,
    /// A binary message.
    Binary,
}

impl MessageKind {
    /// The kind of `message`: text for a text message, binary for anything else.
    pub fn of(message: &Message) -> MessageKind {
        match message {
            Message::Text(_) => MessageKind::Text,
            _ => MessageKind::Binary,
        }
    }

    /// The kind of a lent message.
    pub fn of_view(message: &MessageView<'_>) -> MessageKind {
        if message.is_text() {
            MessageKind::Text
        } else {
            MessageKind::Binary
        }
    }

    pub(crate) fn is_text(self) -> bool {
        self == MessageKind::Text
    }
}
