//! The per-message side: [`Context`], the [`App`] trait, and the JSON [`Router`] with its
//! middleware chain.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use edge_ws::protocol::{CloseCode, Message};
use serde::de;
use serde::{Deserialize, Serialize};

use crate::events::{ErrorKind, Event};
use crate::identity::UserContext;
use crate::json;
pub use crate::route_error::RouteError;
use crate::{ConnEntry, Manager, Scratch};
use edge_ws::{ConnectionId, MessageKind, PublishOptions, SendError, Socket};

/// Why a reply was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The engine refused the send (closed connection, slow consumer).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The data could not be serialized.
    #[error("cannot serialize reply: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One connection during one callback: the socket, its user, its application data, the id of
/// the message being handled (echoed by [`Context::reply`] and [`Context::error`]).
pub struct Context<'c, 'io> {
    socket: Socket<'c, 'io>,
    conn: &'c mut ConnEntry,
    manager: &'c Manager,
    scratch: &'c mut Scratch,
}

impl fmt::Debug for Context<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.socket.id())
            .field("user", &self.conn.user)
            .finish_non_exhaustive()
    }
}

impl<'c, 'io> Context<'c, 'io> {
    pub(crate) fn new(
        socket: &'c mut Socket<'_, 'io>,
        conn: &'c mut ConnEntry,
        manager: &'c Manager,
        scratch: &'c mut Scratch,
    ) -> Context<'c, 'io> {
        scratch.id.clear();
        scratch.has_id = false;
        Context {
            socket: socket.reborrow(),
            conn,
            manager,
            scratch,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.socket.id()
    }

    /// The core it lives on.
    pub fn core(&self) -> usize {
        self.socket.core()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr()
    }

    /// The upgrade request's path.
    pub fn path(&self) -> &str {
        self.socket.path()
    }

    pub(crate) fn user_arc(&self) -> Option<std::sync::Arc<UserContext>> {
        self.conn.user.clone()
    }

    pub(crate) fn set_user(&mut self, user: std::sync::Arc<UserContext>) {
        self.conn.user = Some(user);
    }

    /// The authenticated user (`None` with [`crate::Auth::None`]).
    pub fn user(&self) -> Option<&UserContext> {
        self.conn.user.as_deref()
    }

    /// The user's id.
    pub fn user_id(&self) -> Option<&str> {
        self.conn.user.as_deref().map(UserContext::id)
    }

    /// Whether the user has permission `p` (`false` without a user).
    pub fn has_permission(&self, p: &str) -> bool {
        self.conn
            .user
            .as_deref()
            .is_some_and(|u| u.has_permission(p))
    }

    /// The application's per-connection data, if it is a `T`.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.conn.app.as_deref()?.downcast_ref()
    }

    /// The application's per-connection data, mutably, if it is a `T`.
    pub fn data_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.conn.app.as_deref_mut()?.downcast_mut()
    }

    /// Stores the application's per-connection data (use this, not `Socket::set_data`: the
    /// socket's own slot holds the manager's bookkeeping).
    pub fn set_data<T: Any>(&mut self, value: T) {
        self.conn.app = Some(Box::new(value));
    }

    /// The channels this connection is in.
    pub fn channels(&self) -> Vec<String> {
        self.socket.channels()
    }

    /// Joins `channel`; `false` if already in it.
    pub fn join(&mut self, channel: &str) -> bool {
        self.socket.subscribe(channel)
    }

    /// Leaves `channel`; `false` if not in it.
    pub fn leave(&mut self, channel: &str) -> bool {
        self.socket.unsubscribe(channel)
    }

    /// Sends `text` to everyone in `channel` on every core (this connection included if in it).
    pub fn publish(&mut self, channel: &str, text: &str) {
        self.socket.publish(channel, text);
    }

    /// Sends `text` to everyone else in `channel`.
    pub fn publish_others(&mut self, channel: &str, text: &str) {
        let opts = PublishOptions {
            exclude: Some(self.socket.id()),
            ..PublishOptions::default()
        };
        self.socket
            .publish_with(channel, text.as_bytes(), MessageKind::Text, opts);
    }

    /// Sends `text` to every connection on every core whose user passes `filter`.
    pub fn broadcast<F>(&mut self, text: &str, filter: F)
    where
        F: Fn(ConnectionId, Option<&UserContext>) -> bool + Send + Sync + 'static,
    {
        let opts = PublishOptions {
            filter: Some(crate::user_filter(filter)),
            ..PublishOptions::default()
        };
        self.socket
            .broadcast_all(text.as_bytes(), MessageKind::Text, opts);
    }

    /// The raw JSON of the current message's `id`, if it had one.
    pub fn message_id(&self) -> Option<&str> {
        self.scratch.has_id.then_some(self.scratch.id.as_str())
    }

    pub(crate) fn set_message_id(&mut self, id: Option<&str>) {
        self.scratch.id.clear();
        self.scratch.has_id = id.is_some();
        if let Some(id) = id {
            self.scratch.id.push_str(id);
        }
    }

    /// Answers the current message: `{"type":kind,"id":<its id>,"data":data}` (no `id` if the
    /// message had none).
    pub fn reply<T: Serialize + ?Sized>(&mut self, kind: &str, data: &T) -> Result<(), ReplyError> {
        self.serialized(kind, true, data)
    }

    /// Like [`Context::reply`] with `data` already JSON (e.g. a part of the message); `None`
    /// leaves `data` out. The text is inserted as is: it must be valid JSON.
    pub fn reply_raw(&mut self, kind: &str, data_json: Option<&str>) -> Result<(), ReplyError> {
        self.head(kind, true);
        let out = &mut self.scratch.out;
        if let Some(d) = data_json {
            out.push_str(r#","data":"#);
            out.push_str(d);
        }
        out.push('}');
        self.flush()
    }

    /// Pushes `{"type":kind,"data":data}` (no `id`: not an answer).
    pub fn send<T: Serialize + ?Sized>(&mut self, kind: &str, data: &T) -> Result<(), ReplyError> {
        self.serialized(kind, false, data)
    }

    /// Sends a raw text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.socket.send_text(text)
    }

    /// Answers the current message with `{"type":"error","id":<its id>,"error":message}`
    /// (counted as [`ErrorKind::Handler`] and reported as an [`Event::Error`]).
    pub fn error(&mut self, message: &str) -> Result<(), ReplyError> {
        self.fail(ErrorKind::Handler, message)
    }

    /// An error reply of `kind`, counted and reported.
    pub(crate) fn fail(&mut self, kind: ErrorKind, message: &str) -> Result<(), ReplyError> {
        let inner = &*self.manager.inner;
        inner.stats.error(kind);
        if inner.has_listeners() {
            inner.emit(&Event::Error {
                id: self.socket.id(),
                user: self.conn.user.as_deref(),
                kind,
                message,
            });
        }
        self.head("error", true);
        let out = &mut self.scratch.out;
        out.push_str(r#","error":"#);
        json::push_str(out, message);
        out.push('}');
        self.flush()
    }

    /// Starts the close handshake.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.socket.close(code, reason);
    }

    /// The manager (lookups, bulk actions, statistics).
    pub fn manager(&self) -> &Manager {
        self.manager
    }

    /// The underlying socket, for what the context does not wrap. Do not call
    /// `set_data` on it: its data slot holds the manager's bookkeeping.
    pub fn socket(&mut self) -> &mut Socket<'c, 'io> {
        &mut self.socket
    }

    /// Starts an envelope in the scratch buffer: `{"type":kind` and, for answers, the id.
    fn head(&mut self, kind: &str, with_id: bool) {
        self.scratch.head(kind, with_id);
    }

    fn serialized<T: Serialize + ?Sized>(
        &mut self,
        kind: &str,
        with_id: bool,
        data: &T,
    ) -> Result<(), ReplyError> {
        let mut ser = std::mem::take(&mut self.scratch.ser);
        ser.clear();
        let written = serde_json::to_writer(&mut ser, data)
            .map_err(ReplyError::from)
            // serde_json writes UTF-8; checking costs a pass over the bytes, no allocation.
            .and_then(|()| {
                std::str::from_utf8(&ser)
                    .map_err(|_| ReplyError::Serialize(de::Error::custom("reply is not UTF-8")))
            })
            .map(|json| {
                self.scratch.head(kind, with_id);
                let out = &mut self.scratch.out;
                out.push_str(r#","data":"#);
                out.push_str(json);
                out.push('}');
            });
        self.scratch.ser = ser;
        written?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), ReplyError> {
        self.socket.send_text(&self.scratch.out)?;
        Ok(())
    }
}

/// The application behind a manager, one per core (like [`edge_ws::Handler`], it need not be
/// `Send`). [`Router`] is the JSON implementation; implement it yourself for another wire
/// format. Rate limits and the size limit are applied before `on_message`.
pub trait App: 'static {
    /// A connection opened.
    fn on_open(&mut self, ctx: &mut Context<'_, '_>) {
        let _ = ctx;
    }

    /// A message passed the size and rate limits.
    fn on_message(&mut self, ctx: &mut Context<'_, '_>, message: Message);

    /// A connection closed (sends fail from here on).
    fn on_close(&mut self, ctx: &mut Context<'_, '_>, code: CloseCode, reason: &str) {
        let _ = (ctx, code, reason);
    }
}

/// A parsed envelope `{"type": ..., "id": ..., "data": ...}` (see docs/PROTOCOL.md). `id` and
/// `data` are kept as raw JSON, decoded only if a handler asks.
#[derive(Debug)]
pub struct Envelope<'a> {
    text: &'a str,
    kind: Cow<'a, str>,
    id: Option<&'a str>,
    data: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    /// Parses `text` as an envelope (the router's own first step).
    pub fn parse(text: &'a str) -> Result<Envelope<'a>, ErrorKind> {
        let raw = json::scan(text).map_err(|_| ErrorKind::InvalidFormat)?;
        match raw.kind {
            Some(kind) if !kind.is_empty() => Ok(Envelope {
                text,
                kind,
                id: raw.id,
                data: raw.data,
            }),
            _ => Err(ErrorKind::MissingType),
        }
    }

    /// The `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The raw JSON of `id`, if present.
    pub fn id(&self) -> Option<&'a str> {
        self.id
    }

    /// The raw JSON of `data`, if present.
    pub fn data_raw(&self) -> Option<&'a str> {
        self.data
    }

    /// Decodes `data` (absent decodes as `null`); an error converts into an
    /// "Invalid message data" reply with `?` in a route.
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T, RouteError> {
        serde_json::from_str(self.data_raw().unwrap_or("null"))
            .map_err(|_| RouteError::invalid_data())
    }

    /// The whole message text.
    pub fn text(&self) -> &'a str {
        self.text
    }
}

/// A step around message handling. Call `next.run(ctx, msg)` to pass the message on (and do
/// work after it returns), or don't (after answering with `ctx.reply`/`ctx.error`, or
/// silently) to stop it. Closures `FnMut(&mut Context, &Envelope, Next)` are middleware.
pub trait Middleware: 'static {
    /// Handles `msg`.
    fn handle(&mut self, ctx: &mut Context<'_, '_>, msg: &Envelope<'_>, next: Next<'_>);
}

impl<F> Middleware for F
where
    F: FnMut(&mut Context<'_, '_>, &Envelope<'_>, Next<'_>) + 'static,
{
    fn handle(&mut self, ctx: &mut Context<'_, '_>, msg: &Envelope<'_>, next: Next<'_>) {
        self(ctx, msg, next)
    }
}

/// The rest of the chain after a middleware: the following middleware, then the route.
pub struct Next<'r> {
    rest: &'r mut [Box<dyn Middleware>],
    routes: &'r mut Routes,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("middleware_left", &self.rest.len())
            .finish()
    }
}

impl Next<'_> {
    /// Passes `msg` to the rest of the chain.
    pub fn run(self, ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) {
        match self.rest.split_first_mut() {
            Some((m, rest)) => m.handle(
                ctx,
                msg,
                Next {
                    rest,
                    routes: self.routes,
                },
            ),
            None => self.routes.dispatch(ctx, msg),
        }
    }
}

type RouteFn = Box<dyn FnMut(&mut Context<'_, '_>, &Envelope<'_>) -> Result<(), RouteError>>;
type SchemaFn = Box<dyn Fn(&Envelope<'_>) -> Result<(), String>>;
type OpenFn = Box<dyn FnMut(&mut Context<'_, '_>)>;
type CloseFn = Box<dyn FnMut(&mut Context<'_, '_>, CloseCode, &str)>;
type BinaryFn = Box<dyn FnMut(&mut Context<'_, '_>, &Bytes)>;

#[derive(Default)]
pub(crate) struct Route {
    handler: Option<RouteFn>,
    schema: Option<SchemaFn>,
    pub(crate) async_handler: Option<crate::async_route::AsyncRouteFn>,
    pub(crate) concurrent: bool,
    /// The route's type, shared by its async requests.
    pub(crate) kind: Option<std::rc::Rc<str>>,
}

/// FNV-1a: the route table is fixed at start (clients cannot insert), so hash flooding is
/// moot and a short `type` hashes in a few nanoseconds.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub(crate) struct Routes {
    /// The routes in registration order.
    list: Vec<(Box<str>, Route)>,
    /// Index into `list` by type, used once there are more than [`LINEAR_ROUTES`].
    index: HashMap<Box<str>, usize, BuildHasherDefault<Fnv>>,
    /// Async middleware, before every async route.
    pub(crate) guards: Vec<crate::async_route::GuardFn>,
    pub(crate) max_in_flight: usize,
    /// Per connection with async work: its FIFO, in-flight count and tasks.
    lanes: HashMap<ConnectionId, std::rc::Rc<crate::async_route::Lane>, BuildHasherDefault<Fnv>>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            list: Vec::new(),
            index: HashMap::default(),
            guards: Vec::new(),
            max_in_flight: crate::async_route::DEFAULT_MAX_IN_FLIGHT,
            lanes: HashMap::default(),
        }
    }
}

/// Up to this many routes, a linear scan (length, then bytes) beats hashing the type.
const LINEAR_ROUTES: usize = 8;

impl Routes {
    pub(crate) fn entry(&mut self, kind: &str) -> &mut Route {
        let i = match self.list.iter().position(|(k, _)| **k == *kind) {
            Some(i) => i,
            None => {
                self.list.push((kind.into(), Route::default()));
                self.index.insert(kind.into(), self.list.len() - 1);
                self.list.len() - 1
            }
        };
        &mut self.list[i].1
    }

    #[inline]
    fn get_mut(&mut self, kind: &str) -> Option<&mut Route> {
        let i = if self.list.len() <= LINEAR_ROUTES {
            self.list.iter().position(|(k, _)| **k == *kind)?
        } else {
            *self.index.get(kind)?
        };
        Some(&mut self.list[i].1)
    }

    fn dispatch(&mut self, ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) {
        let Some(route) = self.get_mut(msg.kind()) else {
            if msg.kind() == "ping" {
                let _ = ctx.reply_raw("pong", msg.data_raw());
            } else if msg.kind() == "refresh" {
                if let Err(e) = refresh(ctx, msg) {
                    let _ = ctx.fail(e.kind, &e.message);
                }
            } else {
                let _ = ctx.fail(ErrorKind::UnknownType, ErrorKind::UnknownType.message());
            }
            return;
        };
        if let Some(schema) = &route.schema {
            if let Err(e) = schema(msg) {
                let _ = ctx.fail(ErrorKind::InvalidData, &e);
                return;
            }
        }
        if let Some(f) = &route.async_handler {
            let Some(engine) = ctx.manager().engine() else {
                let _ = ctx.fail(ErrorKind::Handler, "async routes need an attached engine");
                return;
            };
            let (f, concurrent) = (f.clone(), route.concurrent);
            let kind = route.kind.get_or_insert_with(|| msg.kind().into()).clone();
            let max = self.max_in_flight;
            let lane = self
                .lanes
                .entry(ctx.id())
                .or_insert_with(|| crate::async_route::Lane::new(max, engine.clone()))
                .clone();
            let engine = lane.engine.clone().expect("set at creation");
            let req = crate::async_route::Request::new(
                kind,
                msg.id(),
                msg.data_raw(),
                ctx.user_arc(),
                ctx.id(),
                engine,
                lane.direct.clone(),
            );
            let pause = crate::async_route::run(&lane, &self.guards, &f, concurrent, req);
            lane.direct.drain(|r| {
                let _ = ctx.send_text(r);
            });
            if pause {
                ctx.socket().pause_reading();
            }
            return;
        }
        match &mut route.handler {
            Some(h) => {
                if let Err(e) = h(ctx, msg) {
                    let _ = ctx.fail(e.kind, &e.message);
                }
            }
            None => {
                let _ = ctx.fail(ErrorKind::UnknownType, ErrorKind::UnknownType.message());
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshReq {
    token: String,
}

/// The built-in `refresh` (docs/PROTOCOL.md): a new token for the same user extends the
/// connection and replaces its permissions (see `credentials`).
fn refresh(ctx: &mut Context<'_, '_>, msg: &Envelope<'_>) -> Result<(), RouteError> {
    let req: RefreshReq = msg.data()?;
    let current = ctx
        .user_arc()
        .ok_or_else(|| RouteError::new("refresh needs an authenticated connection"))?;
    let inner = ctx.manager().inner.clone();
    if let Some(v) = &inner.refresh {
        // Answered by the validator's task (`refreshed` or the refusal).
        return crate::credentials::refresh_async(
            &inner,
            v,
            ctx.id(),
            current,
            req.token,
            msg.id().map(str::to_owned),
        )
        .map_err(RouteError::new);
    }
    let user = crate::credentials::refreshed_user(&inner, &current, &req.token)
        .map_err(RouteError::new)?;
    let until = user.expires_at_ms();
    crate::credentials::replace_expiry(&inner, ctx.id(), current.expires_at_ms(), until);
    ctx.set_user(std::sync::Arc::new(user));
    let data = match until {
        Some(at) => format!(r#"{{"expires_at":{at}}}"#),
        None => r#"{"expires_at":null}"#.to_string(),
    };
    ctx.reply_raw("refreshed", Some(&data))?;
    Ok(())
}

/// Dispatches JSON envelopes by `type` through a middleware chain.
///
/// Per message: parse (`Invalid message format` / `Missing message type` on failure; the
/// connection stays open) → middleware in the order added → the route for `type` (`Unknown
/// message type` if none; a built-in `ping` answers `pong` unless routed) → its schema check
/// (if any) → its handler. Build one per core in the engine factory; closures may hold
/// per-core state without locks.
///
/// ```
/// use edge_ws_server::{Router, RouteError};
/// let router = Router::new()
///     .middleware(|ctx, msg, next| {
///         if msg.kind() == "admin" && !ctx.has_permission("admin") {
///             let _ = ctx.error("Forbidden");
///             return;
///         }
///         next.run(ctx, msg)
///     })
///     .route("echo", |ctx, msg| {
///         ctx.reply_raw("echo", msg.data_raw())?;
///         Ok(())
///     })
///     .route("join", |ctx, msg| {
///         let channel: String = msg.data()?;
///         ctx.join(&channel);
///         ctx.reply("joined", &channel).map_err(|e| RouteError::new(e.to_string()))
///     });
/// # let _ = router;
/// ```
#[derive(Default)]
pub struct Router {
    middleware: Vec<Box<dyn Middleware>>,
    routes: Routes,
    on_open: Option<OpenFn>,
    on_close: Option<CloseFn>,
    on_binary: Option<BinaryFn>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<&str> = self.routes.list.iter().map(|(k, _)| &**k).collect();
        f.debug_struct("Router")
            .field("middleware", &self.middleware.len())
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

impl From<ReplyError> for RouteError {
    fn from(e: ReplyError) -> RouteError {
        RouteError::new(e.to_string())
    }
}

impl Router {
    pub(crate) fn routes_mut(&mut self) -> &mut Routes {
        &mut self.routes
    }

    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a middleware closure at the end of the chain (the `use` of other frameworks).
    pub fn middleware<F>(self, f: F) -> Router
    where
        F: FnMut(&mut Context<'_, '_>, &Envelope<'_>, Next<'_>) + 'static,
    {
        self.layer(f)
    }

    /// Adds a [`Middleware`] value at the end of the chain.
    pub fn layer<M: Middleware>(mut self, m: M) -> Router {
        self.middleware.push(Box::new(m));
        self
    }

    /// Routes messages of type `kind` to `handler` (replacing an earlier one).
    pub fn route<F>(mut self, kind: &str, handler: F) -> Router
    where
        F: FnMut(&mut Context<'_, '_>, &Envelope<'_>) -> Result<(), RouteError> + 'static,
    {
        self.routes.entry(kind).handler = Some(Box::new(handler));
        self
    }

    /// A schema check for messages of type `kind`, run before its handler: `Err(text)` answers
    /// `{"type":"error","id":…,"error":text}`.
    pub fn schema<F>(mut self, kind: &str, check: F) -> Router
    where
        F: Fn(&Envelope<'_>) -> Result<(), String> + 'static,
    {
        self.routes.entry(kind).schema = Some(Box::new(check));
        self
    }

    /// Called when a connection opens.
    pub fn when_open<F>(mut self, f: F) -> Router
    where
        F: FnMut(&mut Context<'_, '_>) + 'static,
    {
        self.on_open = Some(Box::new(f));
        self
    }

    /// Called when a connection closes.
    pub fn when_close<F>(mut self, f: F) -> Router
    where
        F: FnMut(&mut Context<'_, '_>, CloseCode, &str) + 'static,
    {
        self.on_close = Some(Box::new(f));
        self
    }

    /// Handles binary messages (default: answered with `Invalid message format`).
    pub fn when_binary<F>(mut self, f: F) -> Router
    where
        F: FnMut(&mut Context<'_, '_>, &Bytes) + 'static,
    {
        self.on_binary = Some(Box::new(f));
        self
    }
}

impl App for Router {
    fn on_open(&mut self, ctx: &mut Context<'_, '_>) {
        if let Some(f) = &mut self.on_open {
            f(ctx);
        }
    }

    fn on_message(&mut self, ctx: &mut Context<'_, '_>, message: Message) {
        let text = match &message {
            Message::Binary(b) => {
                if let Some(f) = &mut self.on_binary {
                    f(ctx, b);
                    return;
                }
                None
            }
            m => m.as_text(),
        };
        let Some(text) = text else {
            let _ = ctx.fail(ErrorKind::InvalidFormat, ErrorKind::InvalidFormat.message());
            return;
        };
        let raw = match json::scan(text) {
            Ok(r) => r,
            Err(_) => {
                let _ = ctx.fail(ErrorKind::InvalidFormat, ErrorKind::InvalidFormat.message());
                return;
            }
        };
        ctx.set_message_id(raw.id);
        let kind = match raw.kind {
            Some(k) if !k.is_empty() => k,
            _ => {
                let _ = ctx.fail(ErrorKind::MissingType, ErrorKind::MissingType.message());
                return;
            }
        };
        let env = Envelope {
            text,
            kind,
            id: raw.id,
            data: raw.data,
        };
        Next {
            rest: &mut self.middleware,
            routes: &mut self.routes,
        }
        .run(ctx, &env);
    }

    fn on_close(&mut self, ctx: &mut Context<'_, '_>, code: CloseCode, reason: &str) {
        if let Some(lane) = self.routes.lanes.remove(&ctx.id()) {
            lane.cancel();
        }
        if let Some(f) = &mut self.on_close {
            f(ctx, code, reason);
        }
    }
}

impl Router {
    /// Routes messages of type `kind` to the async `handler` (see the [module
    /// docs](crate::async_route)): it runs on the connection's core, may await, answers
    /// through the [`crate::Request`] it owns, and a connection's async messages complete in arrival
    /// order.
    ///
    /// ```no_run
    /// use edge_ws_server::{RouteError, Router};
    /// let router = Router::new().route_async("profile", |req| async move {
    ///     let user: String = req.data()?;
    ///     // let profile = db.load(&user).await?;
    ///     req.reply("profile", &format!("profile of {user}"))?;
    ///     Ok::<(), RouteError>(())
    /// });
    /// # let _ = router;
    /// ```
    pub fn route_async<F, Fut>(self, kind: &str, handler: F) -> Router
    where
        F: Fn(crate::async_route::Request) -> Fut + 'static,
        Fut: Future<Output = Result<(), RouteError>> + 'static,
    {
        self.add_async(kind, handler, false)
    }

    /// [`Router::route_async`], running each message as soon as it arrives, concurrently
    /// with the connection's other async messages (no order among them).
    pub fn route_async_concurrent<F, Fut>(self, kind: &str, handler: F) -> Router
    where
        F: Fn(crate::async_route::Request) -> Fut + 'static,
        Fut: Future<Output = Result<(), RouteError>> + 'static,
    {
        self.add_async(kind, handler, true)
    }

    /// An async middleware step before every async route (in the order added): it may await
    /// (an auth service, a cache), then pass the request on (`Ok(req)`) or refuse it (`Err`,
    /// answered as an error reply; the route does not run).
    ///
    /// ```no_run
    /// use edge_ws_server::{RouteError, Router};
    /// // The seed's async middleware: check a permission against a remote service.
    /// let router = Router::new()
    ///     .guard_async(|req| async move {
    ///         // let ok = permissions_service.check(req.user(), req.kind()).await;
    ///         let ok = req.has_permission("write") || req.kind() != "post";
    ///         if ok { Ok(req) } else { Err(RouteError::new("Forbidden")) }
    ///     })
    ///     .route_async("post", |req| async move {
    ///         req.reply_raw("posted", None);
    ///         Ok(())
    ///     });
    /// # let _ = router;
    /// ```
    pub fn guard_async<F, Fut>(mut self, guard: F) -> Router
    where
        F: Fn(crate::async_route::Request) -> Fut + 'static,
        Fut: Future<Output = Result<crate::async_route::Request, RouteError>> + 'static,
    {
        let g: crate::async_route::GuardFn = Rc::new(move |req| Box::pin(guard(req)));
        self.routes_mut().guards.push(g);
        self
    }

    /// Most async messages queued or running per connection before reading it pauses
    /// (default [`crate::async_route::DEFAULT_MAX_IN_FLIGHT`]).
    pub fn max_in_flight(mut self, n: usize) -> Router {
        self.routes_mut().max_in_flight = n.max(1);
        self
    }

    fn add_async<F, Fut>(mut self, kind: &str, handler: F, concurrent: bool) -> Router
    where
        F: Fn(crate::async_route::Request) -> Fut + 'static,
        Fut: Future<Output = Result<(), RouteError>> + 'static,
    {
        let f: crate::async_route::AsyncRouteFn = Rc::new(move |req| Box::pin(handler(req)));
        let r = self.routes_mut().entry(kind);
        r.async_handler = Some(f);
        r.concurrent = concurrent;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_parsing() {
        let e = Envelope::parse(r#"{"type":"echo","id":7,"data":{"a":[1,2]},"x":null}"#).unwrap();
        assert_eq!(e.kind(), "echo");
        assert_eq!(e.id(), Some("7"));
        assert_eq!(e.data_raw(), Some(r#"{"a":[1,2]}"#));
        let e = Envelope::parse(r#" {"data":"d","type":"a\"b"} "#).unwrap();
        assert_eq!(e.kind(), "a\"b");
        assert_eq!(e.id(), None);
        let e = Envelope::parse(r#"{"typ\u0065":"t","id":null}"#).unwrap();
        assert_eq!((e.kind(), e.id()), ("t", Some("null")));
        for bad in [
            "",
            "nope",
            "[\"echo\"]",
            "\"echo\"",
            "{\"type\":1}",
            "{\"type\":\"a\",\"type\":\"b\"}",
            "{\"type\":\"a\"} x",
            "{\"type\":\"a\"",
        ] {
            assert_eq!(
                Envelope::parse(bad).err(),
                Some(ErrorKind::InvalidFormat),
                "{bad}"
            );
        }
        for missing in ["{}", "{\"type\":null}", "{\"type\":\"\"}", "{\"data\":1}"] {
            assert_eq!(
                Envelope::parse(missing).err(),
                Some(ErrorKind::MissingType),
                "{missing}"
            );
        }
        let e = Envelope::parse(r#"{"type":"n","data":{"x":5}}"#).unwrap();
        #[derive(Deserialize)]
        struct X {
            x: u32,
        }
        assert_eq!(e.data::<X>().unwrap().x, 5);
        assert_eq!(e.data::<String>().unwrap_err(), RouteError::invalid_data());
    }
}
