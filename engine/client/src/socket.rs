//! The application's handles: [`WebSocket`], and its halves [`Sender`] and [`Receiver`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::CloseCode;
use futures_core::Stream;
use futures_sink::Sink;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::handshake::Established;
use crate::message::{CloseInfo, Message, Stats};
use crate::pipe::Pipe;
use crate::settings::Settings;

/// What the server agreed to in its 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The subprotocol the server chose (one of those offered), if any.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters, when compression was agreed.
    pub deflate: Option<DeflateParams>,
    /// The response headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl ConnectionInfo {
    pub(crate) fn from_established(est: &Established) -> Self {
        ConnectionInfo {
            protocol: est.protocol.clone(),
            deflate: est.deflate,
            headers: est.headers.clone(),
        }
    }
}

/// Starts the task of a plain (not reconnecting) connection.
pub(crate) fn spawn(s: &Settings, est: Established) -> WebSocket {
    let pipe = Arc::new(Pipe::new(
        s.write_queue_limit,
        s.read_queue_messages,
        s.read_queue_bytes,
    ));
    pipe.lock().stats.connects = 1;
    let info = Arc::new(ConnectionInfo::from_established(&est));
    let driver = Driver::new(s, est, pipe.clone(), false);
    let task_pipe = pipe.clone();
    tokio::spawn(async move {
        let end = driver.run().await;
        task_pipe.finish(end.error.map_or(Ok(()), Err), false);
    });
    WebSocket {
        sender: Sender { pipe: pipe.clone() },
        receiver: Receiver { pipe },
        info,
    }
}

/// An open WebSocket connection.
///
/// A task started with [`tokio::spawn`] owns the socket: it writes what is sent, reads and
/// decodes what arrives, answers the server's pings (also while the application only sends
/// and never calls [`recv`](Self::recv)), sends keepalive pings, and runs the close
/// handshake. This handle talks to it through two bounded queues:
///
/// - sending: [`send`](Self::send) waits while the bytes waiting to be written are at the
///   [write queue limit](crate::ClientBuilder::write_queue_limit); [`try_send`](Self::try_send)
///   fails with [`Error::WouldBlock`] instead. `Ok` means queued, not delivered.
/// - receiving: [`recv`](Self::recv) takes the next message; while the
///   [read queue](crate::ClientBuilder::read_queue_limit) is full the task stops reading the
///   socket, and TCP flow control slows the server.
///
/// It is a [`Stream`] of received messages and a [`Sink`] of messages to send, and
/// [`split`](Self::split)s into a [`Sender`] (`Clone`) and a [`Receiver`]. Dropping every
/// handle closes the connection with 1000.
///
/// ```no_run
/// use edge_ws_client::{Client, Message};
///
/// # async fn run() -> edge_ws_client::Result<()> {
/// let ws = Client::builder()
///     .protocols(["chat.v2", "chat.v1"])
///     .header("Authorization", "Bearer token")
///     .connect("ws://127.0.0.1:9001/chat")
///     .await?;
/// println!("server chose {:?}", ws.protocol());
/// let (tx, mut rx) = ws.split();
/// tokio::spawn(async move {
///     // The writer half only sends; the task still answers the server's pings.
///     let _ = tx.send(Message::text("hi")).await;
/// });
/// while let Some(msg) = rx.recv().await {
///     println!("{:?}", msg?);
/// }
/// println!("closed: {:?}", rx.close_info());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct WebSocket {
    sender: Sender,
    receiver: Receiver,
    info: Arc<ConnectionInfo>,
}

impl WebSocket {
    /// Queues `msg`, waiting while the write queue is at its limit. Fails with
    /// [`Error::Closed`] once the connection is closing or closed (on a reconnecting
    /// client's halves: once it stopped, with the error that stopped it).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.sender.send(msg).await
    }

    /// Queues `msg` if the write queue is under its limit, else [`Error::WouldBlock`].
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<()> {
        self.sender.try_send(msg)
    }

    /// The next message; after the last one, the error that ended the connection (if it did
    /// not end with a close handshake), then `None`. After `None`, [`close_info`](Self::close_info)
    /// says how it ended.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        self.receiver.recv().await
    }

    /// Starts the close handshake with `code` and `reason` (cut to 123 bytes), after the
    /// messages already queued, and waits until it is done and TCP is closed (at most the
    /// close timeout). `Ok` when the handshake completed; otherwise what ended the
    /// connection. Received messages not yet taken stay readable with [`recv`](Self::recv).
    pub async fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.sender.close(code, reason).await
    }

    /// Sends a ping (after the messages already queued) and waits for the server's pong; the
    /// round trip. Fails with the error that ended the connection, or [`Error::Closed`] once
    /// it is closing. It does not time out by itself: wrap it in [`tokio::time::timeout`].
    pub async fn ping(&self) -> Result<Duration> {
        self.sender.ping().await
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.info.protocol.as_deref()
    }

    /// What the server agreed to: subprotocol, compression, response headers.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// How the connection ended (the server's close code and reason when it closed first);
    /// `None` while it is open.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.receiver.close_info()
    }

    /// Bytes waiting to be written (queued messages plus encoded frames the kernel has not
    /// taken).
    pub fn buffered_amount(&self) -> usize {
        self.sender.buffered_amount()
    }

    /// Whether the connection is closing or closed: sends are refused (on a plain
    /// connection this never turns back to `false`).
    pub fn is_closed(&self) -> bool {
        self.sender.pipe.is_closed()
    }

    /// The connection's counters.
    pub fn stats(&self) -> Stats {
        self.sender.stats()
    }

    /// The sending half (`Clone`) and the receiving half.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}

impl Stream for WebSocket {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().receiver).poll_next(cx)
    }
}

impl<M: Into<Message>> Sink<M> for WebSocket {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.sender.pipe.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: M) -> Result<()> {
        self.sender.pipe.start_send(item.into())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.sender.pipe.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.sender.poll_close_normal(cx)
    }
}

/// The sending half: `Clone`, each clone queueing into the same bounded write queue.
///
/// Dropping every `Sender` and the [`Receiver`] closes the connection with 1000.
#[derive(Debug)]
pub struct Sender {
    pub(crate) pipe: Arc<Pipe>,
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.pipe.add_sender();
        Sender {
            pipe: self.pipe.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.pipe.drop_sender();
    }
}

impl Sender {
    /// Queues `msg`, waiting while the write queue is at its limit (see
    /// [`WebSocket::send`]).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let mut msg = Some(msg.into());
        std::future::poll_fn(|cx| self.pipe.poll_send(cx, &mut msg)).await
    }

    /// Queues `msg` if the write queue is under its limit, else [`Error::WouldBlock`].
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<()> {
        self.pipe.try_send(msg.into())
    }

    /// [`try_send`](Self::try_send) that hands the message back with the error when it is
    /// refused (a relay keeps it for later instead of copying every message first).
    pub fn try_send_back(&self, msg: Message) -> std::result::Result<(), (Error, Message)> {
        self.pipe.try_send_back(msg)
    }

    /// Starts the close handshake and waits for the end (see [`WebSocket::close`]).
    pub async fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.pipe.request_close(code.into(), reason);
        std::future::poll_fn(|cx| self.pipe.poll_done(cx)).await
    }

    /// Sends a ping and waits for its pong (see [`WebSocket::ping`]).
    pub async fn ping(&self) -> Result<Duration> {
        let start = std::time::Instant::now();
        let seq = self.pipe.request_ping()?;
        std::future::poll_fn(|cx| self.pipe.poll_pong(cx, seq)).await?;
        Ok(start.elapsed())
    }

    /// Bytes waiting to be written.
    pub fn buffered_amount(&self) -> usize {
        self.pipe.buffered()
    }

    /// The connection's counters.
    pub fn stats(&self) -> Stats {
        self.pipe.stats()
    }

    fn poll_close_normal(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.pipe.request_close(CloseCode::NORMAL, "");
        self.pipe.poll_done(cx)
    }
}

impl<M: Into<Message>> Sink<M> for Sender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.pipe.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: M) -> Result<()> {
        self.pipe.start_send(item.into())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.pipe.poll_flush(cx)
    }

    /// Closes the connection with 1000 and waits for the end.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_close_normal(cx)
    }
}

/// The receiving half. Dropping it discards later messages (counted in
/// [`Stats::dropped_unread`]); the connection stays open while a [`Sender`] lives.
#[derive(Debug)]
pub struct Receiver {
    pub(crate) pipe: Arc<Pipe>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.pipe.drop_receiver();
    }
}

impl Receiver {
    /// The next message (see [`WebSocket::recv`]).
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.pipe.poll_recv(cx)).await
    }

    /// How the connection ended; `None` while it is open.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.pipe.close_info()
    }

    /// The connection's counters.
    pub fn stats(&self) -> Stats {
        self.pipe.stats()
    }
}

impl Stream for Receiver {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.pipe.poll_recv(cx)
    }
}
