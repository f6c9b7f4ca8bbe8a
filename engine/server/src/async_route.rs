//! Async routes and guards: handlers that may `.await` (a database, an auth service) and
//! answer later through a [`Request`] they own, on the connection's core (no `Send` needed).
//!
//! **Order.** A connection's async messages complete in arrival order by default: they wait
//! in a per-connection FIFO and run one at a time. A route registered with
//! [`crate::Router::route_async_concurrent`] runs as soon as it arrives, beside the others. Sync
//! routes are answered at once, so a sync reply may come before the reply to an earlier async
//! message.
//!
//! **Backpressure.** At most [`crate::Router::max_in_flight`] async messages per connection (default
//! 16) are queued or running; when a connection reaches it, the engine stops reading it
//! ([`edge_ws::Socket::pause_reading`]: TCP flow control holds the client back), and reading
//! resumes once one finishes. Nothing queues without bound.
//!
//! **Cancellation.** When the connection closes, its queued async messages are dropped and its
//! running handlers are cancelled (their futures are dropped at their next await).
//!
//! **Cost.** A handler whose future is ready at once never becomes a task: it is polled once
//! in place; only a future that is still pending is spawned (`tokio::task::spawn_local`).
//!
//! **Errors.** An `Err` from an async route or guard is answered like a sync route's:
//! `{"type":"error","id":…,"error":…}`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};

use edge_ws::{ConnectionId, EngineHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::identity::UserContext;
use crate::route_error::RouteError;

/// A boxed, not-`Send` future of a handler.
pub type LocalFuture = Pin<Box<dyn Future<Output = Result<(), RouteError>>>>;

pub(crate) type AsyncRouteFn = Rc<dyn Fn(Request) -> LocalFuture>;
pub(crate) type GuardFn =
    Rc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Result<Request, RouteError>>>>>;

/// Default most async messages queued or running per connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// One message for an async handler: owned, so it can cross awaits; answers through the
/// engine's handle.
pub struct Request {
    kind: Rc<str>,
    id: Option<Box<str>>,
    data: Option<Box<str>>,
    user: Option<Arc<UserContext>>,
    conn: ConnectionId,
    /// The connection's lane's handle (an `Rc`: no atomic per message).
    engine: Rc<EngineHandle>,
    /// While the router polls the future in place: replies are collected here and written
    /// through the connection's socket right after (no trip through the command queue).
    direct: Rc<Direct>,
}

/// Replies made during the in-place poll.
#[derive(Default)]
pub(crate) struct Direct {
    on: Cell<bool>,
    out: RefCell<Vec<String>>,
}

impl Direct {
    /// Ends the in-place poll.
    fn finish(&self) {
        self.on.set(false);
    }

    /// Hands each reply made during the in-place poll to `f`, in order (keeps the buffer).
    pub(crate) fn drain(&self, mut f: impl FnMut(&str)) {
        let mut out = self.out.borrow_mut();
        for s in out.iter() {
            f(s);
        }
        out.clear();
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("type", &self.kind)
            .field("id", &self.id)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Request {
    pub(crate) fn new(
        kind: Rc<str>,
        id: Option<&str>,
        data: Option<&str>,
        user: Option<Arc<UserContext>>,
        conn: ConnectionId,
        engine: Rc<EngineHandle>,
        direct: Rc<Direct>,
    ) -> Request {
        Request {
            kind,
            id: id.map(Into::into),
            data: data.map(Into::into),
            user,
            conn,
            engine,
            direct,
        }
    }

    fn deliver(&self, text: String) -> bool {
        if self.direct.on.get() {
            self.direct.out.borrow_mut().push(text);
            true
        } else {
            self.engine.send_text(self.conn, &text)
        }
    }

    /// The message's `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The raw JSON of its `id`, if any.
    pub fn message_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The raw JSON of its `data`, if any.
    pub fn data_raw(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// Decodes `data` (absent decodes as `null`); an error converts into "Invalid message
    /// data" with `?`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, RouteError> {
        serde_json::from_str(self.data.as_deref().unwrap_or("null"))
            .map_err(|_| RouteError::invalid_data())
    }

    /// The connection.
    pub fn connection(&self) -> ConnectionId {
        self.conn
    }

    /// Its user, if authenticated (as of when the message arrived).
    pub fn user(&self) -> Option<&UserContext> {
        self.user.as_deref()
    }

    /// Whether its user holds `p`.
    pub fn has_permission(&self, p: &str) -> bool {
        self.user.as_ref().is_some_and(|u| u.has_permission(p))
    }

    /// The engine's handle (to publish, reach other connections).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Answers: `{"type":kind,"id":<its id>,"data":data}`. `false` if the connection is gone.
    pub fn reply<T: Serialize + ?Sized>(&self, kind: &str, data: &T) -> Result<bool, RouteError> {
        let data = serde_json::to_string(data).map_err(|e| RouteError::new(e.to_string()))?;
        Ok(self.reply_raw(kind, Some(&data)))
    }

    /// Answers with `data` already JSON (`None` leaves it out).
    pub fn reply_raw(&self, kind: &str, data_json: Option<&str>) -> bool {
        self.deliver(crate::json::envelope(kind, self.id.as_deref(), data_json))
    }

    /// Sends any text to the connection.
    pub fn send_text(&self, text: &str) -> bool {
        self.deliver(text.to_string())
    }

    /// The error reply for `e`.
    fn error(&self, e: &RouteError) {
        self.deliver(crate::json::error_envelope(
            self.id.as_deref(),
            e.message(),
            None,
            "",
        ));
    }

    fn handle(&self) -> Answer {
        Answer {
            id: self.id.clone(),
            conn: self.conn,
            engine: self.engine.clone(),
            direct: self.direct.clone(),
        }
    }
}

/// What is needed to answer a request whose `Request` moved into its handler.
struct Answer {
    id: Option<Box<str>>,
    conn: ConnectionId,
    engine: Rc<EngineHandle>,
    direct: Rc<Direct>,
}

impl Answer {
    fn error(&self, e: &RouteError) {
        Request {
            kind: Rc::from(""),
            id: self.id.clone(),
            data: None,
            user: None,
            conn: self.conn,
            engine: self.engine.clone(),
            direct: self.direct.clone(),
        }
        .error(e);
    }
}

/// A connection's async state on its core.
#[derive(Default)]
pub(crate) struct Lane {
    /// Queued in-order jobs (not started).
    queue: RefCell<VecDeque<(LocalFuture, Answer)>>,
    /// Queued + running.
    in_flight: Cell<usize>,
    /// The in-order worker task, if one runs.
    worker: RefCell<Option<tokio::task::JoinHandle<()>>>,
    /// Concurrent tasks (finished ones are pruned as new ones come).
    concurrent: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    paused: Cell<bool>,
    max: usize,
    /// The in-place poll's reply buffer, shared by the connection's requests.
    pub(crate) direct: Rc<Direct>,
    /// The engine's handle, shared by the connection's requests.
    pub(crate) engine: Option<Rc<EngineHandle>>,
}

impl Lane {
    pub(crate) fn new(max: usize, engine: EngineHandle) -> Rc<Lane> {
        Rc::new(Lane {
            max: max.max(1),
            engine: Some(Rc::new(engine)),
            ..Lane::default()
        })
    }

    /// Cancels everything (the connection closed).
    pub(crate) fn cancel(&self) {
        self.queue.borrow_mut().clear();
        if let Some(w) = self.worker.borrow_mut().take() {
            w.abort();
        }
        for t in self.concurrent.borrow_mut().drain(..) {
            t.abort();
        }
    }

    /// Whether the connection should stop being read.
    pub(crate) fn full(&self) -> bool {
        self.in_flight.get() >= self.max
    }

    fn finished(&self, engine: &EngineHandle, conn: ConnectionId) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        if self.paused.get() && !self.full() {
            self.paused.set(false);
            engine.with_connection(conn, |s| {
                if let Some(s) = s {
                    s.resume_reading();
                }
            });
        }
    }
}

fn poll_once(fut: &mut LocalFuture) -> Poll<Result<(), RouteError>> {
    let mut cx = TaskCx::from_waker(std::task::Waker::noop());
    fut.as_mut().poll(&mut cx)
}

/// Runs `route` for `req` on `lane`: returns whether the connection must now pause reading.
/// Replies made while it was polled in place wait in `lane.direct` for the caller to write
/// through the socket ([`Direct::drain`]), before anything else.
pub(crate) fn run(
    lane: &Rc<Lane>,
    guards: &[GuardFn],
    route: &AsyncRouteFn,
    concurrent: bool,
    req: Request,
) -> bool {
    let answer = req.handle();
    let direct = req.direct.clone();
    let mut fut: LocalFuture = if guards.is_empty() {
        route(req)
    } else {
        let (guards, route) = (guards.to_vec(), route.clone());
        Box::pin(async move {
            let mut req = req;
            for g in &guards {
                req = g(req).await?;
            }
            route(req).await
        })
    };
    let idle = lane.queue.borrow().is_empty()
        && lane
            .worker
            .borrow()
            .as_ref()
            .is_none_or(|w| w.is_finished());
    lane.in_flight.set(lane.in_flight.get() + 1);
    if concurrent || idle {
        // Nothing ahead of it: poll in place; a ready future never becomes a task.
        direct.on.set(true);
        let polled = poll_once(&mut fut);
        if let Poll::Ready(Err(e)) = &polled {
            answer.error(e);
        }
        direct.finish();
        match polled {
            Poll::Ready(_) => {
                lane.in_flight.set(lane.in_flight.get() - 1);
                return false;
            }
            Poll::Pending if concurrent => {
                let l = lane.clone();
                let t = tokio::task::spawn_local(async move {
                    if let Err(e) = fut.await {
                        answer.error(&e);
                    }
                    l.finished(&answer.engine, answer.conn);
                });
                let mut c = lane.concurrent.borrow_mut();
                c.retain(|t| !t.is_finished());
                c.push(t);
            }
            Poll::Pending => {
                lane.queue.borrow_mut().push_front((fut, answer));
                start_worker(lane);
            }
        }
    } else {
        lane.queue.borrow_mut().push_back((fut, answer));
        start_worker(lane);
    }
    if lane.full() && !lane.paused.get() {
        lane.paused.set(true);
        return true;
    }
    false
}

fn start_worker(lane: &Rc<Lane>) {
    let running = lane
        .worker
        .borrow()
        .as_ref()
        .is_some_and(|w| !w.is_finished());
    if running {
        return;
    }
    let l = lane.clone();
    let w = tokio::task::spawn_local(async move {
        loop {
            let next = l.queue.borrow_mut().pop_front();
            let Some((fut, answer)) = next else { break };
            if let Err(e) = fut.await {
                answer.error(&e);
            }
            l.finished(&answer.engine, answer.conn);
        }
    });
    *lane.worker.borrow_mut() = Some(w);
}
