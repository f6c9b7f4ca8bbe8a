//! [`ReconnectingClient`]: one logical connection over any number of WebSocket connections,
//! reconnecting with exponential backoff and full jitter.
//!
//! A supervisor task (started with [`tokio::spawn`]) connects, runs the connection's driver
//! inline, and when the connection ends decides from the close code whether to connect again:
//!
//! | the connection ended with | then |
//! | --- | --- |
//! | the server's close 4000–4499 | reconnect |
//! | the server's close 4500–4999 | stop: [`Error::ServerStopped`] with the code and reason |
//! | the server's close 1001 (going away: a restart, a drain) | reconnect with backoff, the first delay drawn from a wider window (4× the base) so a restarted server's clients do not all return at once |
//! | the server's close 1000 | reconnect if [`reconnect_on_normal_close`](ReconnectBuilder::reconnect_on_normal_close), else stop: [`Error::ServerClosed`] |
//! | any other close code of the server's, a lost connection, a protocol error, a pong timeout | reconnect |
//! | the application's [`close`](ReconnectingClient::close) (or every handle dropped) | stop, without an error |
//!
//! Failed connection attempts are retried the same way, up to
//! [`max_attempts`](ReconnectBuilder::max_attempts) in a row; a request that can never work
//! (a bad URL or header) stops at once. The n-th retry in a row waits a random time in
//! `0..=min(cap, base × factor^n)` (full jitter); the exponent goes back to 0 once a
//! connection has stayed up for [`stable_after`](ReconnectBuilder::stable_after), so a server
//! that accepts and then drops connections at once still gets growing delays.
//!
//! The application's queues live across connections:
//!
//! - **Sending while disconnected:** messages queue in the same bounded write queue
//!   ([`write_queue_limit`](crate::ClientBuilder::write_queue_limit) bytes) and go out on the
//!   next connection, after the [`on_connect`](ReconnectBuilder::on_connect) messages. When
//!   the queue is full, `send` waits and `try_send` is refused with [`Error::WouldBlock`].
//!   Messages not yet encoded when a connection ends stay queued for the next one; messages
//!   encoded but not completely written are counted in [`Stats::lost_in_flight`]; messages
//!   still queued when the client stops are counted in [`Stats::unsent`]. Nothing is dropped
//!   without being counted.
//! - **Receiving:** one queue for all connections; `recv` returns `None` only once the client
//!   has stopped (after the error that stopped it, if any).

use std::sync::Arc;
use std::time::Duration;

use edge_ws_protocol::connection::Side;
use edge_ws_protocol::CloseCode;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::{Client, ClientBuilder, PendingRequest};
use crate::driver::{Driver, End};
use crate::error::{Error, Result};
use crate::keys::unit_interval;
use crate::message::{Message, Stats};
use crate::pipe::Pipe;
use crate::request::IntoRequest;
use crate::request::Request;
use crate::settings::Settings;
use crate::socket::{ConnectionInfo, Receiver, Sender};

/// How much randomness goes into a backoff delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// A uniformly random delay between zero and the ceiling ("full jitter"): clients that
    /// lost the same server spread out instead of reconnecting in waves.
    Full,
    /// Exactly the ceiling (for tests and for a single client).
    None,
}

/// Exponential backoff: the n-th retry in a row waits up to `min(cap, base × factor^n)`.
///
/// ```
/// use std::time::Duration;
/// use edge_ws_client::{Backoff, Jitter};
///
/// let b = Backoff {
///     base: Duration::from_millis(100),
///     factor: 2.0,
///     cap: Duration::from_secs(1),
///     jitter: Jitter::None,
/// };
/// assert_eq!(b.ceiling(0), Duration::from_millis(100));
/// assert_eq!(b.ceiling(3), Duration::from_millis(800));
/// assert_eq!(b.ceiling(4), Duration::from_secs(1));
/// assert_eq!(b.delay(40), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first ceiling. Default 250 ms.
    pub base: Duration,
    /// Growth per retry, at least 1. Default 2.
    pub factor: f64,
    /// The largest delay. Default 30 s.
    pub cap: Duration,
    /// Default [`Jitter::Full`].
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            factor: 2.0,
            cap: Duration::from_secs(30),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before retry `step` (0 for the first retry in a row).
    pub fn ceiling(&self, step: u32) -> Duration {
        let exp = i32::try_from(step).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `step`: the ceiling, times a random number in `0..=1` with
    /// [`Jitter::Full`] (from the OS generator; the full ceiling should it fail).
    pub fn delay(&self, step: u32) -> Duration {
        let ceiling = self.ceiling(step);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(unit_interval().unwrap_or(1.0)),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(Error::Config(format!(
                "the backoff factor must be a finite number of at least 1, got {}",
                self.factor
            )));
        }
        if self.cap < self.base {
            return Err(Error::Config(format!(
                "the backoff cap ({:?}) is below its base ({:?})",
                self.cap, self.base
            )));
        }
        Ok(())
    }
}

/// What a [`ReconnectingClient`] went through, in order (see [`Events`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReconnectEvent {
    /// A connection is up; the [`on_connect`](ReconnectBuilder::on_connect) messages are
    /// queued ahead of everything else.
    Connected {
        /// Connections made so far, this one included (1 for the first).
        connects: u64,
        /// What the server agreed to.
        info: ConnectionInfo,
    },
    /// An established connection ended.
    Disconnected {
        /// The server's close code when it closed first; otherwise ours (1006 when TCP ended
        /// without a close frame).
        code: CloseCode,
        /// The reason that went with `code`.
        reason: String,
        /// What went wrong, for an end without a close handshake.
        error: Option<Error>,
        /// When the next attempt starts; `None` when the client stops ([`GaveUp`](Self::GaveUp)
        /// follows).
        retry_in: Option<Duration>,
    },
    /// A connection attempt failed.
    ConnectFailed {
        /// Why.
        error: Error,
        /// Failed attempts in a row, this one included.
        attempt: u32,
        /// When the next attempt starts; `None` when the client stops.
        retry_in: Option<Duration>,
    },
    /// The client stopped for good, not at the application's request; `recv` hands out the
    /// same error, then `None`.
    GaveUp {
        /// [`Error::ServerStopped`], [`Error::ServerClosed`], [`Error::RetriesExhausted`], or
        /// the error of a request that cannot work.
        error: Error,
    },
}

/// The events of a [`ReconnectingClient`], from its start. A bounded channel (64 events):
/// an application that does not read them loses the oldest ones, never the messages.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<ReconnectEvent>,
    lagged: u64,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was taken.
    pub async fn next(&mut self) -> Option<ReconnectEvent> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Events lost because they were not taken in time.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// Another observer, seeing the events from now on.
    pub fn subscribe(&self) -> Events {
        Events {
            rx: self.rx.resubscribe(),
            lagged: 0,
        }
    }
}

type OnConnect = Arc<dyn Fn(&ConnectionInfo) -> Vec<Message> + Send + Sync>;

/// Configures a [`ReconnectingClient`]; from [`ClientBuilder::reconnecting`] or
/// [`Client::reconnecting`](crate::Client::reconnecting).
///
/// ```no_run
/// use std::time::Duration;
/// use edge_ws_client::{Backoff, Client, Message, ReconnectEvent};
///
/// # async fn run() -> edge_ws_client::Result<()> {
/// let mut client = Client::reconnecting("ws://127.0.0.1:9001/feed")
///     .backoff(Backoff { cap: Duration::from_secs(10), ..Backoff::default() })
///     .reconnect_on_normal_close(true)
///     // Resubscribe after every (re)connect, ahead of anything queued meanwhile.
///     .on_connect(|_info| vec![Message::text(r#"{"subscribe":"prices"}"#)])
///     .start()?;
/// let mut events = client.events().subscribe();
/// tokio::spawn(async move {
///     while let Some(ev) = events.next().await {
///         if let ReconnectEvent::Disconnected { code, retry_in, .. } = ev {
///             eprintln!("lost the feed ({code}), retrying in {retry_in:?}");
///         }
///     }
/// });
/// while let Some(msg) = client.recv().await {
///     println!("{:?}", msg?);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ReconnectBuilder {
    client: ClientBuilder,
    request: PendingRequest,
    backoff: Backoff,
    stable_after: Duration,
    reconnect_on_normal_close: bool,
    max_attempts: Option<u32>,
    on_connect: Option<OnConnect>,
}

impl std::fmt::Debug for ReconnectBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectBuilder")
            .field("request", &self.request)
            .field("backoff", &self.backoff)
            .field("stable_after", &self.stable_after)
            .field("reconnect_on_normal_close", &self.reconnect_on_normal_close)
            .field("max_attempts", &self.max_attempts)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

impl ReconnectBuilder {
    pub(crate) fn new(client: ClientBuilder, request: PendingRequest) -> Self {
        ReconnectBuilder {
            client,
            request,
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(10),
            reconnect_on_normal_close: false,
            max_attempts: None,
            on_connect: None,
        }
    }

    /// The delays between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A connection that stayed up this long resets the backoff. Default 10 s.
    pub fn stable_after(mut self, period: Duration) -> Self {
        self.stable_after = period;
        self
    }

    /// Whether the server's normal close (1000) is followed by a reconnect. Default `false`:
    /// the client stops with [`Error::ServerClosed`]. (1001 "going away", what a server sends
    /// when it restarts or drains, is always followed by a reconnect, as docs/PROTOCOL.md
    /// asks.)
    pub fn reconnect_on_normal_close(mut self, reconnect: bool) -> Self {
        self.reconnect_on_normal_close = reconnect;
        self
    }

    /// Failed connection attempts in a row before giving up with
    /// [`Error::RetriesExhausted`]; `None` (the default) retries forever.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Messages to send first on every connection, the first one included (subscribe,
    /// authenticate): they go ahead of anything queued, and ahead of the write queue's limit.
    pub fn on_connect<F>(mut self, f: F) -> Self
    where
        F: Fn(&ConnectionInfo) -> Vec<Message> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Starts the supervisor with [`tokio::spawn`] (call inside a tokio runtime with I/O and
    /// time enabled) and returns at once; the first connection is made in the background.
    /// Fails at once only for a request or configuration that can never work.
    pub fn start(self) -> Result<ReconnectingClient> {
        let request = self.request?;
        let settings = self.client.inner.clone();
        settings.validate()?;
        self.backoff.validate()?;
        let request = request.with_defaults(&settings.headers, &settings.protocols);
        request.validate()?;
        let pipe = Arc::new(Pipe::new(
            settings.write_queue_limit,
            settings.read_queue_messages,
            settings.read_queue_bytes,
        ));
        let (events_tx, events_rx) = broadcast::channel(64);
        let policy = Policy {
            backoff: self.backoff,
            stable_after: self.stable_after,
            reconnect_on_normal_close: self.reconnect_on_normal_close,
            max_attempts: self.max_attempts,
            on_connect: self.on_connect,
        };
        let task_pipe = pipe.clone();
        tokio::spawn(async move {
            let outcome = supervise(&settings, &request, &policy, &task_pipe, &events_tx).await;
            task_pipe.finish(outcome, true);
        });
        Ok(ReconnectingClient {
            sender: Sender { pipe: pipe.clone() },
            receiver: Receiver { pipe },
            events: Events {
                rx: events_rx,
                lagged: 0,
            },
        })
    }
}

/// A WebSocket client that reconnects; see the [module docs](self) for the policy.
///
/// `send`/`try_send`/`recv` work as on a [`WebSocket`](crate::WebSocket), across connections;
/// [`close`](Self::close) closes the current connection (if any) and stops.
#[derive(Debug)]
pub struct ReconnectingClient {
    sender: Sender,
    receiver: Receiver,
    events: Events,
}

impl ReconnectingClient {
    /// Queues `msg`, waiting while the write queue is at its limit (connected or not). Once
    /// the client stopped, fails with the error that stopped it ([`Error::Closed`] after
    /// [`close`](Self::close)).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.sender.send(msg).await
    }

    /// Queues `msg` if the write queue is under its limit, else [`Error::WouldBlock`].
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<()> {
        self.sender.try_send(msg)
    }

    /// The next message from any connection; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        self.receiver.recv().await
    }

    /// Stops: closes the current connection with `code` and `reason` (after the messages
    /// already queued) and waits until it is closed, or stops waiting for the next attempt.
    pub async fn close(&self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.sender.close(code, reason).await
    }

    /// The events ([`Connected`](ReconnectEvent::Connected),
    /// [`Disconnected`](ReconnectEvent::Disconnected), …) since the start.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// Bytes waiting to be written.
    pub fn buffered_amount(&self) -> usize {
        self.sender.buffered_amount()
    }

    /// Counters over every connection.
    pub fn stats(&self) -> Stats {
        self.sender.stats()
    }

    /// The sending half (`Clone`), the receiving half and the events.
    pub fn split(self) -> (Sender, Receiver, Events) {
        (self.sender, self.receiver, self.events)
    }
}

/// The backoff step a client starts from after the server's 1001 "going away" (a restart or
/// a drain closes every client at once): ceiling 4× the base, 1 s by default.
const GOING_AWAY_STEP: u32 = 2;

impl Client {
    /// A [`ReconnectBuilder`] for `request` with the default connection settings.
    pub fn reconnecting(request: impl IntoRequest) -> ReconnectBuilder {
        ClientBuilder::new().reconnecting(request)
    }
}

impl ClientBuilder {
    /// A [`ReconnectBuilder`] for `request` with these connection settings.
    pub fn reconnecting(&self, request: impl IntoRequest) -> ReconnectBuilder {
        ReconnectBuilder::new(self.clone(), request.into_request())
    }
}

struct Policy {
    backoff: Backoff,
    stable_after: Duration,
    reconnect_on_normal_close: bool,
    max_attempts: Option<u32>,
    on_connect: Option<OnConnect>,
}

impl Policy {
    /// `Err` to stop with that error, `Ok` to reconnect.
    fn decide(&self, end: &End) -> Result<()> {
        let close = &end.close;
        if close.initiated_by != Side::Peer {
            return Ok(());
        }
        let (code, reason) = (close.code, close.reason.clone());
        match code.0 {
            4500..=4999 => Err(Error::ServerStopped { code, reason }),
            1000 if !self.reconnect_on_normal_close => Err(Error::ServerClosed { code, reason }),
            _ => Ok(()),
        }
    }
}

/// Whether the application asked to stop (a close request, or every handle dropped).
fn stop_requested(pipe: &Pipe) -> bool {
    let st = pipe.lock();
    st.close_request.is_some() || st.abandoned()
}

async fn stopped(pipe: &Pipe) {
    loop {
        if stop_requested(pipe) {
            return;
        }
        // `notify_one` leaves a permit when nobody waits, so a request made between the check
        // and this wait is not missed.
        pipe.supervisor.notified().await;
    }
}

async fn supervise(
    settings: &Settings,
    request: &Request,
    policy: &Policy,
    pipe: &Arc<Pipe>,
    events: &broadcast::Sender<ReconnectEvent>,
) -> Result<()> {
    let mut step: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            biased;
            () = stopped(pipe) => return Ok(()),
            r = crate::handshake::connect(settings, request) => r,
        };
        let delay = match attempt {
            Ok(est) => {
                failures = 0;
                let info = ConnectionInfo::from_established(&est);
                let first = policy
                    .on_connect
                    .as_ref()
                    .map(|f| f(&info))
                    .unwrap_or_default();
                let connects = {
                    let mut st = pipe.lock();
                    st.stats.connects += 1;
                    for m in first.into_iter().rev() {
                        st.out_bytes += m.len();
                        st.stats.messages_queued += 1;
                        st.out.push_front(m);
                    }
                    st.close_info = None;
                    st.stats.connects
                };
                let _ = events.send(ReconnectEvent::Connected { connects, info });
                let up = Instant::now();
                let end = Driver::new(settings, est, pipe.clone(), true).run().await;
                if up.elapsed() >= policy.stable_after {
                    step = 0;
                }
                if end.local {
                    return end.error.map_or(Ok(()), Err);
                }
                let disconnected = |retry_in| ReconnectEvent::Disconnected {
                    code: end.close.code,
                    reason: end.close.reason.clone(),
                    error: end.error.clone(),
                    retry_in,
                };
                if let Err(stop) = policy.decide(&end) {
                    let _ = events.send(disconnected(None));
                    let _ = events.send(ReconnectEvent::GaveUp {
                        error: stop.clone(),
                    });
                    return Err(stop);
                }
                if end.close.initiated_by == Side::Peer && end.close.code.0 == 1001 {
                    // The server is going away: all its clients are leaving at this moment.
                    // Spread their return over a wider window than one client's blip needs.
                    step = step.max(GOING_AWAY_STEP);
                }
                let delay = policy.backoff.delay(step);
                step = step.saturating_add(1);
                let _ = events.send(disconnected(Some(delay)));
                delay
            }
            Err(error) => {
                if error.is_permanent() {
                    let _ = events.send(ReconnectEvent::GaveUp {
                        error: error.clone(),
                    });
                    return Err(error);
                }
                failures = failures.saturating_add(1);
                if policy.max_attempts.is_some_and(|max| failures >= max) {
                    let _ = events.send(ReconnectEvent::ConnectFailed {
                        error: error.clone(),
                        attempt: failures,
                        retry_in: None,
                    });
                    let stop = Error::RetriesExhausted {
                        attempts: failures,
                        last: Box::new(error),
                    };
                    let _ = events.send(ReconnectEvent::GaveUp {
                        error: stop.clone(),
                    });
                    return Err(stop);
                }
                let delay = policy.backoff.delay(step);
                step = step.saturating_add(1);
                let _ = events.send(ReconnectEvent::ConnectFailed {
                    error,
                    attempt: failures,
                    retry_in: Some(delay),
                });
                delay
            }
        };
        tokio::select! {
            biased;
            () = stopped(pipe) => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_full_jitter_stays_under_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_millis(1000),
            jitter: Jitter::Full,
        };
        let ceilings: Vec<u64> = (0..6).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), b.cap);
        for step in 0..8 {
            let samples: Vec<Duration> = (0..200).map(|_| b.delay(step)).collect();
            assert!(samples.iter().all(|d| *d <= b.ceiling(step)));
            // Spread out, not a constant: 200 draws all in one tenth has odds of 1e-200.
            let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
            assert!(*hi - *lo > b.ceiling(step) / 10, "{lo:?}..{hi:?}");
        }
        let fixed = Backoff {
            jitter: Jitter::None,
            ..b
        };
        assert_eq!(fixed.delay(2), Duration::from_millis(400));
        assert!(Backoff {
            factor: f64::NAN,
            ..b
        }
        .validate()
        .is_err());
        assert!(Backoff {
            cap: Duration::from_millis(10),
            ..b
        }
        .validate()
        .is_err());
        b.validate().unwrap();
    }
}
