//! The application's side of a core: [`Handler`] callbacks and the [`Socket`] they act on.

use std::any::Any;
use std::net::SocketAddr;

use bytes::Bytes;
use edge_ws_protocol::{CloseCode, Message, MessageView};

use crate::connection::{ConnFn, ConnFnBox, CoreState, Payload, SendError};
use crate::fanout::PublishOptions;
use crate::ids::{ConnectionId, MessageKind};
use crate::runtime::{ConnId, Io};
use crate::shared::ReplyTo;
use crate::stream::{
    HistoryPage, HistoryQuery, PublishResult, Published, StreamError, StreamPosition, Subscribed,
};
use crate::upgrade::{HttpRequest, HttpResponse, Upgrade, UpgradeRequest};

/// What [`Socket::send`] takes: a [`Message`] (moved), `&Message` (its payload shared), or a
/// [`MessageView`] (its bytes copied into the send queue). Sealed: implemented for those only.
pub trait IntoOutgoing<'m>: sealed::Sealed {
    #[doc(hidden)]
    fn into_outgoing(self) -> Option<(bool, Payload<'m>)>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for edge_ws_protocol::Message {}
    impl Sealed for &edge_ws_protocol::Message {}
    impl Sealed for edge_ws_protocol::MessageView<'_> {}
}

impl<'m> IntoOutgoing<'m> for MessageView<'m> {
    fn into_outgoing(self) -> Option<(bool, Payload<'m>)> {
        Some((self.is_text(), Payload::Slice(self.payload())))
    }
}

impl<'m> IntoOutgoing<'m> for &'m Message {
    fn into_outgoing(self) -> Option<(bool, Payload<'m>)> {
        match self {
            Message::Text(b) => Some((true, Payload::Shared(b))),
            Message::Binary(b) => Some((false, Payload::Shared(b))),
            _ => None,
        }
    }
}

impl IntoOutgoing<'static> for Message {
    fn into_outgoing(self) -> Option<(bool, Payload<'static>)> {
        match self {
            Message::Text(b) => Some((true, Payload::Owned(b))),
            Message::Binary(b) => Some((false, Payload::Owned(b))),
            _ => None,
        }
    }
}

/// Application callbacks for one core.
///
/// The engine creates one handler per core with the factory given to
/// [`crate::EngineBuilder::build`], on that core's thread, so a handler need not be `Send`:
/// keep per-core state (rooms, caches) in it without locks. Pings, pongs and the close
/// handshake are handled by the engine; handlers see data messages.
pub trait Handler: 'static {
    /// Decides on an upgrade request before the `101` is sent (authentication, limits).
    ///
    /// Return [`Upgrade::Accept`] (optionally with user data for the socket's slot),
    /// [`Upgrade::Reject`] to answer with an HTTP error instead of a WebSocket, or
    /// [`Upgrade::Defer`] to decide later, e.g. after an async check, with
    /// [`crate::EngineHandle::resolve_upgrade`]. A deferred upgrade still ends at the handshake
    /// timeout. Default: accept.
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Upgrade {
        let _ = request;
        Upgrade::Accept(None)
    }

    /// A plain HTTP request (no `Upgrade: websocket`) arrived: return an answer (a page, a
    /// file), or `None` for the engine's own (`GET /health`, `GET` on the metrics path,
    /// otherwise 400 "Expected WebSocket"). Called on the connection's core, so keep it
    /// short; request bodies are not read. Default: `None`.
    fn on_http(&mut self, request: &HttpRequest) -> Option<HttpResponse> {
        let _ = request;
        None
    }

    /// A connection completed its handshake.
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        let _ = socket;
    }

    /// A text or binary message arrived (text is valid UTF-8).
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message);

    /// A text or binary message that arrived whole in one receive, lent for the duration of
    /// the call: the common case, decoded with no allocation and no copy. Default: hands it to
    /// [`on_message`](Self::on_message), copied into a buffer of its own
    /// ([`MessageView::to_message`]). Override it to act on messages without that copy
    /// (inspect, route, answer, echo: `socket.send(message)` copies the bytes straight into the
    /// send queue); keep a message past the call by copying it. Messages that arrive any other
    /// way (fragmented, compressed, cut by the end of a receive) come to `on_message` only.
    fn on_message_view(&mut self, socket: &mut Socket<'_, '_>, message: MessageView<'_>) {
        self.on_message(socket, message.to_message());
    }

    /// The connection is gone. `code` is the peer's close code, the code the engine closed
    /// with, or 1006 when the connection dropped without a close frame. Sends on `socket`
    /// fail from here on; its user data is still readable.
    fn on_close(&mut self, socket: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
        let _ = (socket, code, reason);
    }
}

/// A connection, as seen from inside a handler callback on its core.
///
/// Cheap: it borrows the core's state for the duration of the callback. It can also reach
/// other connections of the same core through [`Socket::send_to`].
pub struct Socket<'a, 'io> {
    pub(crate) state: &'a mut CoreState,
    pub(crate) io: &'a mut Io<'io>,
    pub(crate) id: ConnId,
}

impl std::fmt::Debug for Socket<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("id", &self.id()).finish()
    }
}

impl<'io> Socket<'_, 'io> {
    /// A shorter-lived `Socket` for the same connection, for handing to a nested layer (a
    /// middleware, a router) while this one stays usable afterwards.
    pub fn reborrow(&mut self) -> Socket<'_, 'io> {
        Socket {
            state: &mut *self.state,
            io: &mut *self.io,
            id: self.id,
        }
    }
}

impl Socket<'_, '_> {
    /// This connection's engine-wide id (usable from any thread through
    /// [`crate::EngineHandle::send_text`]).
    pub fn id(&self) -> ConnectionId {
        ConnectionId::new(self.state.core_index, self.id)
    }

    /// The index of the core this connection lives on.
    pub fn core(&self) -> usize {
        self.state.core_index
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.state.conn(self.id).map(|c| c.peer())
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.state.protocol_of(self.id)
    }

    /// The request path of the upgrade (without the query).
    pub fn path(&self) -> &str {
        self.state.path_of(self.id)
    }

    /// Whether permessage-deflate was agreed.
    pub fn compressed(&self) -> bool {
        self.state
            .conn(self.id)
            .is_some_and(|c| c.extra.as_ref().is_some_and(|e| e.encoder.is_some()))
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.state
            .send_data(self.io, self.id, true, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.state.send_data(self.io, self.id, false, data)
    }

    /// Sends a text or binary message (other variants are ignored with `Ok`): `&message`, or
    /// `message` itself to hand it over. A large payload is not copied here (the kernel still
    /// copies it once into the socket): a message given by value moves into the send queue, one
    /// given by reference is shared by reference count.
    pub fn send<'m>(&mut self, message: impl IntoOutgoing<'m>) -> Result<(), SendError> {
        match message.into_outgoing() {
            Some((text, payload)) => self.state.send_payload(self.io, self.id, text, payload),
            None => Ok(()),
        }
    }

    /// Sends an already-encoded server frame (see
    /// [`edge_ws_protocol::codec::server_frame`]), shared by refcount: encode once, send to
    /// many. Not for connections with compression unless the frame is compressed to match.
    pub fn send_frame(&mut self, frame: Bytes) -> Result<(), SendError> {
        self.state.send_frame(self.io, self.id, frame, 1)
    }

    /// Sends a text message to another connection of this core.
    pub fn send_to(&mut self, to: ConnectionId, text: &str) -> Result<(), SendError> {
        if to.core() != self.state.core_index {
            return Err(SendError::OtherCore);
        }
        self.state
            .send_data(self.io, to.conn(), true, text.as_bytes())
    }

    /// Subscribes this connection to `channel`; returns `false` if it already was.
    pub fn subscribe(&mut self, channel: &str) -> bool {
        self.state.subscribe(self.io, self.id, channel)
    }

    /// Unsubscribes this connection from `channel`; returns `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        self.state.unsubscribe(self.io, self.id, channel)
    }

    /// The channels this connection is subscribed to.
    pub fn channels(&self) -> Vec<String> {
        self.state
            .conn(self.id)
            .map(|c| c.channels().iter().map(|t| t.to_string()).collect())
            .unwrap_or_default()
    }

    /// Publishes a text message to every subscriber of `channel` on every core (this connection
    /// included if subscribed; use [`Socket::publish_with`] to exclude it).
    pub fn publish(&mut self, channel: &str, text: &str) {
        self.state.publish_channel(
            self.io,
            channel,
            text.as_bytes(),
            true,
            PublishOptions::default(),
        );
    }

    /// Publishes a text or binary message with options (exclude, filter).
    pub fn publish_with(
        &mut self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
    ) {
        self.state
            .publish_channel(self.io, channel, payload, kind.is_text(), opts);
    }

    /// Sends a message to every open connection on every core that passes `opts`' filter.
    pub fn broadcast_all(&mut self, payload: &[u8], kind: MessageKind, opts: PublishOptions) {
        self.state
            .publish_all(self.io, payload, kind.is_text(), opts);
    }

    /// The policy of `channel`'s namespace.
    pub fn channel_policy(&self, channel: &str) -> &crate::ChannelPolicy {
        self.state.shared.channels.config.policy(channel)
    }

    /// Whether `channel` keeps history (its namespace's `history_size` > 0): its publications
    /// have offsets, and it can be recovered and read.
    pub fn has_history(&self, channel: &str) -> bool {
        self.state
            .shared
            .channels
            .config
            .policy(channel)
            .is_stream()
    }

    /// Subscribes this connection to `channel` from position `since` (or from now, `None`).
    ///
    /// For a channel with history, `done` runs on this core once the subscription is live,
    /// with the stream's position and whether the missed publications (those after `since`)
    /// could be recovered; they follow `done` in order, before any live publication, with no
    /// duplicate and no gap. Reply to the client from `done` (the reply then precedes the
    /// replay). For a channel without history `done` runs at once, with no position (and
    /// [`crate::RecoveryFailure::NoHistory`] if a position was given).
    ///
    /// Errors: an invalid name, or already subscribed. Nothing runs if the connection closes
    /// first.
    pub fn subscribe_with(
        &mut self,
        channel: &str,
        since: Option<StreamPosition>,
        done: impl FnOnce(&mut Socket<'_, '_>, Result<Subscribed, StreamError>) + Send + 'static,
    ) {
        let done: ConnFnBox<Result<Subscribed, StreamError>> =
            Box::new(move |state, io, id, r| done(&mut Socket { state, io, id }, r));
        self.state
            .subscribe_from(self.io, self.id, channel, since, done);
    }

    /// Publishes to `channel` and tells `done` (on this core) what became of it: for a
    /// channel with history its position once the owner core sequenced it (and, for a
    /// persistent one, once it is on disk); a refusal or store failure as an error (nothing
    /// was published). An `idempotency_key` in `opts` makes a repeat within the namespace's
    /// window answer the first result (`duplicate: true`) instead of publishing again.
    pub fn publish_acked(
        &mut self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        opts: PublishOptions,
        done: impl FnOnce(&mut Socket<'_, '_>, PublishResult) + Send + 'static,
    ) {
        if let Err(e) = self.state.shared.channels.config.check_name(channel) {
            return done(self, Err(e));
        }
        let shared = self.state.local_channel(channel).shared.clone();
        if !shared.is_stream() {
            if opts.idempotency_key.is_some() {
                return done(self, Err(StreamError::NoHistory(channel.to_string())));
            }
            let published = Published {
                position: None,
                duplicate: false,
            };
            if self.state.shared.broker.is_none() {
                self.state
                    .publish_channel(self.io, channel, payload, kind.is_text(), opts);
                return done(self, Ok(published));
            }
            // In a cluster: delivered here at once, acknowledged (on this core) once the
            // broker has it, or answered with its error.
            let (shared, core, conn) = (self.state.shared.clone(), self.state.core_index, self.id);
            let ack: crate::broker::BrokerAck = Box::new(move |r| {
                let r = r.map_err(StreamError::from).map(|()| published);
                let call: ConnFnBox<()> =
                    Box::new(move |state, io, id, ()| done(&mut Socket { state, io, id }, r));
                shared.queues[core].push(crate::shared::Command::Call {
                    conn,
                    f: ConnFn::erase(call),
                });
                shared.wakers[core].wake();
            });
            return self.state.publish_channel_acked(
                self.io,
                channel,
                payload,
                kind.is_text(),
                opts,
                Some(ack),
            );
        }
        let f: ConnFnBox<PublishResult> =
            Box::new(move |state, io, id, r| done(&mut Socket { state, io, id }, r));
        let reply = ReplyTo::Socket {
            core: self.state.core_index,
            conn: self.id,
            f: ConnFn::erase(f),
        };
        let payload = Bytes::copy_from_slice(payload);
        self.state
            .publish_stream(self.io, shared, payload, kind.is_text(), opts, reply);
    }

    /// Reads `channel`'s history (from its owner core); `done` runs on this core with the
    /// page, or [`StreamError::NoHistory`] / an invalid name.
    pub fn read_history(
        &mut self,
        channel: &str,
        query: HistoryQuery,
        done: impl FnOnce(&mut Socket<'_, '_>, Result<HistoryPage, StreamError>) + Send + 'static,
    ) {
        let f: ConnFnBox<Result<HistoryPage, StreamError>> =
            Box::new(move |state, io, id, r| done(&mut Socket { state, io, id }, r));
        let reply = ReplyTo::Socket {
            core: self.state.core_index,
            conn: self.id,
            f: ConnFn::erase(f),
        };
        self.state.read_history(self.io, channel, query, reply);
    }

    /// Stops reading this connection (backpressure, e.g. too much work in flight for it):
    /// nothing more is decoded and the transport stops receiving, so the kernel's buffer and
    /// then TCP flow control hold the client back. Heartbeat pings still go out; a client
    /// paused past the heartbeat timeout may be closed. Undo with [`Socket::resume_reading`]
    /// (also from another thread through [`crate::EngineHandle::with_connection`]).
    pub fn pause_reading(&mut self) {
        self.state.pause_reading(self.io, self.id);
    }

    /// Reads again: what arrived meanwhile is decoded before the core's next submit.
    pub fn resume_reading(&mut self) {
        self.state.resume_reading(self.io, self.id);
    }

    /// Whether reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        self.state.conn(self.id).is_some_and(|c| c.paused())
    }

    /// Starts the close handshake with `code` and `reason`.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.state.start_close(self.io, self.id, code, reason);
    }

    /// Bytes queued for this connection and not yet written to the socket.
    pub fn buffered_bytes(&self) -> usize {
        self.io.queued_bytes(self.id)
    }

    /// The user data slot, if it holds a `T`.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.state.conn(self.id)?.data.as_ref()?.downcast_ref()
    }

    /// The user data slot, mutably, if it holds a `T`.
    pub fn data_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.state.conn_mut(self.id)?.data.as_mut()?.downcast_mut()
    }

    /// Stores `value` in the user data slot, replacing what was there.
    pub fn set_data<T: Any>(&mut self, value: T) {
        if let Some(c) = self.state.conn_mut(self.id) {
            c.data = Some(Box::new(value));
        }
    }
}
