//! Who a connection is and why an upgrade was refused: the types every authentication
//! scheme (JWT, API keys, custom validators) produces, kept apart so that the schemes depend on
//! them and not on each other.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Who a connection belongs to: set by authentication, read by middleware, routes, filters.
#[derive(Clone)]
pub struct UserContext {
    id: Arc<str>,
    permissions: Vec<String>,
    data: Option<Arc<dyn Any + Send + Sync>>,
    expires_at_ms: Option<u64>,
}

impl fmt::Debug for UserContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserContext")
            .field("id", &self.id)
            .field("permissions", &self.permissions)
            .field("data", &self.data.is_some())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl UserContext {
    /// A user with id `id`, no permissions and no data.
    pub fn new(id: impl Into<Arc<str>>) -> UserContext {
        UserContext {
            id: id.into(),
            permissions: Vec::new(),
            data: None,
            expires_at_ms: None,
        }
    }

    /// Sets when the credentials expire (ms since the Unix epoch): an open connection is
    /// closed with 4401 then, unless a `refresh` extended it.
    pub fn with_expiry(mut self, at_ms: u64) -> UserContext {
        self.expires_at_ms = Some(at_ms);
        self
    }

    /// When the credentials expire (ms since the Unix epoch), if they do.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }

    /// Sets the permissions.
    pub fn with_permissions<I, S>(mut self, permissions: I) -> UserContext
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.permissions = permissions.into_iter().map(Into::into).collect();
        self
    }

    /// Attaches arbitrary data (for a JWT: the claims, as a `serde_json::Value`).
    pub fn with_data<T: Any + Send + Sync>(mut self, data: T) -> UserContext {
        self.data = Some(Arc::new(data));
        self
    }

    /// The user id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The permissions.
    pub fn permissions(&self) -> &[String] {
        &self.permissions
    }

    /// Whether the user has permission `p`.
    pub fn has_permission(&self, p: &str) -> bool {
        self.permissions.iter().any(|x| x == p)
    }

    /// The attached data, if it is a `T`.
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.data.as_deref()?.downcast_ref()
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $status:literal, $text:literal; )*) => {
        /// Why an upgrade was refused (each is counted; see [`crate::ManagerStats`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RejectReason {
            $( $(#[$doc])* $name, )*
        }

        impl RejectReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [RejectReason] = &[$(RejectReason::$name),*];

            /// The HTTP status the refusal is answered with by default.
            pub fn status(self) -> u16 {
                match self { $(RejectReason::$name => $status,)* }
            }

            /// The short text answered in the body by default.
            pub fn as_str(self) -> &'static str {
                match self { $(RejectReason::$name => $text,)* }
            }
        }
    };
}

reasons! {
    /// No token or key where one was expected.
    MissingCredentials = 401, "missing credentials";
    /// A token that is not three base64url segments of JSON.
    MalformedToken = 401, "malformed token";
    /// A token whose `alg` is not the configured one (`none`, another HMAC, RSA, …).
    UnsupportedAlgorithm = 401, "unsupported token algorithm";
    /// A signature that does not verify.
    BadSignature = 401, "invalid token signature";
    /// `exp` is past (beyond the leeway).
    Expired = 401, "token expired";
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid = 401, "token not yet valid";
    /// `iss` missing or not the configured issuer.
    WrongIssuer = 401, "invalid token issuer";
    /// `aud` missing or not containing the configured audience.
    WrongAudience = 401, "invalid token audience";
    /// A required claim (`exp`, the user id claim) is missing or has the wrong type.
    MissingClaim = 401, "token lacks a required claim";
    /// The API key validator refused the key.
    InvalidApiKey = 401, "invalid API key";
    /// A validator refused (401 or 403, as it chose).
    Rejected = 403, "forbidden";
    /// A validator failed (e.g. its backend is down).
    ValidatorError = 503, "authentication unavailable";
    /// A validator did not answer within the auth timeout.
    AuthTimeout = 503, "authentication timed out";
    /// The global connection limit is reached.
    ServerFull = 503, "server at capacity";
    /// The per-address connection limit is reached.
    IpLimit = 429, "too many connections from this address";
    /// The per-user connection limit is reached.
    UserLimit = 429, "too many connections for this user";
}

impl RejectReason {
    pub(crate) fn index(self) -> usize {
        RejectReason::ALL
            .iter()
            .position(|&r| r == self)
            .unwrap_or(0)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused upgrade: the HTTP status, the reason it is counted under, a short body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRejection {
    /// HTTP status (401, 403, 429, 503, …).
    pub status: u16,
    /// The counter it goes to.
    pub reason: RejectReason,
    /// The plain-text body.
    pub message: Cow<'static, str>,
}

impl AuthRejection {
    /// A rejection with the reason's default status and text.
    pub fn of(reason: RejectReason) -> AuthRejection {
        AuthRejection {
            status: reason.status(),
            reason,
            message: Cow::Borrowed(reason.as_str()),
        }
    }

    /// 401: the credentials are not acceptable (counted as [`RejectReason::Rejected`]).
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> AuthRejection {
        AuthRejection {
            status: 401,
            reason: RejectReason::Rejected,
            message: message.into(),
        }
    }

    /// 403: the user is known but may not connect (counted as [`RejectReason::Rejected`]).
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> AuthRejection {
        AuthRejection {
            status: 403,
            reason: RejectReason::Rejected,
            message: message.into(),
        }
    }

    /// 503: the validator could not decide (counted as [`RejectReason::ValidatorError`]).
    pub fn error(message: impl Into<Cow<'static, str>>) -> AuthRejection {
        AuthRejection {
            status: 503,
            reason: RejectReason::ValidatorError,
            message: message.into(),
        }
    }

    /// 401 "invalid API key" (counted as [`RejectReason::InvalidApiKey`]).
    pub fn invalid_api_key() -> AuthRejection {
        AuthRejection::of(RejectReason::InvalidApiKey)
    }
}

impl From<RejectReason> for AuthRejection {
    fn from(r: RejectReason) -> Self {
        AuthRejection::of(r)
    }
}
