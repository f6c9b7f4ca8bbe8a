//! Events the application can subscribe to, and the manager's counters.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use edge_ws::protocol::CloseCode;

use crate::identity::{RejectReason, UserContext};
use edge_ws::ConnectionId;

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $name:ident => $text:literal, )*) => {
        /// A message the manager answered with an `error` reply (see docs/PROTOCOL.md).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $( $(#[$doc])* $name, )*
        }

        impl ErrorKind {
            /// Every kind, in counter order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$name),*];

            /// The `error` text sent for it (application errors carry their own text).
            pub fn message(self) -> &'static str {
                match self { $(ErrorKind::$name => $text,)* }
            }
        }
    };
}

error_kinds! {
    /// Not JSON, not a JSON object, or a non-string `type`.
    InvalidFormat => "Invalid message format",
    /// An object without `type` (or with `null` or `""`).
    MissingType => "Missing message type",
    /// No route for the `type`.
    UnknownType => "Unknown message type",
    /// A per-type schema check or a route's data decoding refused it.
    InvalidData => "Invalid message data",
    /// A route handler returned an error.
    Handler => "Request failed",
    /// Over the connection's or the user's rate limit.
    RateLimited => "Rate limit exceeded",
    /// Larger than the manager's maximum message size.
    TooLarge => "Message too large",
}

impl ErrorKind {
    pub(crate) fn index(self) -> usize {
        ErrorKind::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Something that happened to a connection. Listeners (see
/// [`crate::ManagerBuilder::on_event`]) run synchronously on the connection's core: keep them
/// short (count, log, hand off to a channel).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A connection opened (after its `101`).
    Opened {
        /// The connection.
        id: ConnectionId,
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// Its user, if authenticated.
        user: Option<&'a UserContext>,
    },
    /// An open connection closed.
    Closed {
        /// The connection.
        id: ConnectionId,
        /// Its user, if authenticated.
        user: Option<&'a UserContext>,
        /// The close code (1006 if it dropped without a close frame).
        code: CloseCode,
        /// The close reason.
        reason: &'a str,
    },
    /// An upgrade was refused (authentication or limits).
    Rejected {
        /// The id the connection would have had.
        id: ConnectionId,
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        reason: RejectReason,
        /// The HTTP status answered.
        status: u16,
    },
    /// A user's presence status changed (connect, last disconnect after the grace period,
    /// heartbeat timeout, a status set or expired). From the sweeper's thread for the timed
    /// ones.
    Presence {
        /// What changed.
        change: &'a crate::presence::PresenceChange,
    },
    /// A message was answered with an `error` reply.
    Error {
        /// The connection.
        id: ConnectionId,
        /// Its user, if authenticated.
        user: Option<&'a UserContext>,
        /// What kind of error.
        kind: ErrorKind,
        /// The `error` text sent.
        message: &'a str,
    },
}

/// Shared counters (touched on connect, close and error paths only).
pub(crate) struct Stats {
    pub(crate) rejected: Box<[AtomicU64]>,
    pub(crate) errors: Box<[AtomicU64]>,
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) abuse_closes: AtomicU64,
    /// Connections closed with 4401 because their credentials expired.
    pub(crate) expired_closes: AtomicU64,
    /// Refreshes refused because the token named another user.
    pub(crate) refresh_refused: AtomicU64,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            rejected: RejectReason::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            errors: ErrorKind::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            abuse_closes: AtomicU64::new(0),
            expired_closes: AtomicU64::new(0),
            refresh_refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn reject(&self, r: RejectReason) {
        self.rejected[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, k: ErrorKind) {
        self.errors[k.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the manager's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Open connections.
    pub active: usize,
    /// Upgrades admitted or being authenticated that are not open (yet).
    pub pending: usize,
    /// Connections opened since start.
    pub opened: u64,
    /// Connections closed since start.
    pub closed: u64,
    /// Refused upgrades by reason.
    pub rejections: Vec<(RejectReason, u64)>,
    /// `error` replies by kind.
    pub errors: Vec<(ErrorKind, u64)>,
    /// Connections closed by the abuse policy.
    pub abuse_closes: u64,
    /// Connections closed with 4401 because their credentials expired.
    pub expired_closes: u64,
    /// `refresh` requests refused (another user, a bad or expired token, a validator's
    /// refusal or timeout, one already in progress).
    pub refresh_refused: u64,
}

impl ManagerStats {
    /// Refused upgrades for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejections
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Refused upgrades, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejections.iter().map(|(_, n)| n).sum()
    }

    /// `error` replies of `kind`.
    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}
