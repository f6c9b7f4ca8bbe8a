//! The error a route answers with.

use std::borrow::Cow;
use std::fmt;

use crate::events::ErrorKind;

/// How long a client should wait before retrying after a store failure.
pub(crate) const RETRY_AFTER_MS: u64 = 100;

/// A route's failure, answered as `{"type":"error","id":…,"error":<message>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: Cow<'static, str>,
}

impl RouteError {
    /// An application error with `message` (counted as [`ErrorKind::Handler`]).
    pub fn new(message: impl Into<Cow<'static, str>>) -> RouteError {
        RouteError {
            kind: ErrorKind::Handler,
            message: message.into(),
        }
    }

    /// "Invalid message data" (counted as [`ErrorKind::InvalidData`]).
    pub fn invalid_data() -> RouteError {
        RouteError {
            kind: ErrorKind::InvalidData,
            message: Cow::Borrowed(ErrorKind::InvalidData.message()),
        }
    }

    /// The text sent.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RouteError {}

impl From<serde_json::Error> for RouteError {
    fn from(_: serde_json::Error) -> RouteError {
        RouteError::invalid_data()
    }
}
