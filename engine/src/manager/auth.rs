//! Authentication before the `101`: who is connecting, or why they may not.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use edge_ws_protocol::handshake::Request;
use sha2::{Digest, Sha256};

use super::jwt::JwtAuth;
use crate::{ConnectionId, UpgradeRequest};

/// Who a connection belongs to: set by authentication, read by middleware, routes, filters.
#[derive(Clone)]
pub struct UserContext {
    id: Arc<str>,
    permissions: Vec<String>,
    data: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for UserContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserContext")
            .field("id", &self.id)
            .field("permissions", &self.permissions)
            .field("data", &self.data.is_some())
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
        }
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
        /// Why an upgrade was refused (each is counted; see [`super::ManagerStats`]).
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

/// The upgrade request as an async validator sees it (owned: the validator runs after the
/// callback returned).
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The id the connection will have.
    pub id: ConnectionId,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The parsed request: path, query, headers (`header()`, `query_param()`), protocols.
    pub request: Request,
}

/// What an async validator returns.
pub type ValidatorFuture = Pin<Box<dyn Future<Output = Result<UserContext, AuthRejection>>>>;

type ValidatorFn = dyn Fn(HandshakeInfo) -> ValidatorFuture + Send + Sync;
type ApiKeyFn =
    dyn Fn(&str, &UpgradeRequest<'_>) -> Result<UserContext, AuthRejection> + Send + Sync;

/// API keys from a header, checked by a validator.
#[derive(Clone)]
pub struct ApiKeyAuth {
    pub(crate) header: String,
    check: Arc<ApiKeyFn>,
}

impl fmt::Debug for ApiKeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl ApiKeyAuth {
    /// Keys from header `header` (e.g. `x-api-key`), checked by `check`, which returns the
    /// user or a rejection (typically [`AuthRejection::invalid_api_key`]).
    pub fn new<F>(header: impl Into<String>, check: F) -> ApiKeyAuth
    where
        F: Fn(&str, &UpgradeRequest<'_>) -> Result<UserContext, AuthRejection>
            + Send
            + Sync
            + 'static,
    {
        ApiKeyAuth {
            header: header.into(),
            check: Arc::new(check),
        }
    }

    /// A fixed table of keys. Keys are looked up by their SHA-256 digest, so the lookup's
    /// timing says nothing useful about a key's bytes.
    pub fn keys<I, K>(header: impl Into<String>, keys: I) -> ApiKeyAuth
    where
        I: IntoIterator<Item = (K, UserContext)>,
        K: AsRef<[u8]>,
    {
        let table: HashMap<[u8; 32], UserContext> = keys
            .into_iter()
            .map(|(k, u)| (Sha256::digest(k.as_ref()).into(), u))
            .collect();
        ApiKeyAuth::new(header, move |key, _| {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            table
                .get(&digest)
                .cloned()
                .ok_or_else(AuthRejection::invalid_api_key)
        })
    }

    pub(crate) fn authenticate(
        &self,
        req: &UpgradeRequest<'_>,
    ) -> Result<UserContext, AuthRejection> {
        match req.request.header(&self.header) {
            Some(key) if !key.is_empty() => (self.check)(key, req),
            _ => Err(AuthRejection::of(RejectReason::MissingCredentials)),
        }
    }
}

/// How connections authenticate.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// Anyone may connect; connections have no [`UserContext`] (per-user limits, per-user
    /// rate limits and `user_sockets` do not apply).
    #[default]
    None,
    /// A JWT (HS256/HS384/HS512), verified synchronously in the upgrade callback.
    Jwt(Box<JwtAuth>),
    /// An API key from a header, checked synchronously by a validator.
    ApiKey(ApiKeyAuth),
    /// A custom async validator, run on the connection's core with the auth timeout.
    Validator(Validator),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Jwt(j) => f.debug_tuple("Jwt").field(j).finish(),
            Auth::ApiKey(k) => f.debug_tuple("ApiKey").field(k).finish(),
            Auth::Validator(_) => f.write_str("Validator(..)"),
        }
    }
}

/// A custom async validator (see [`Auth::validator`]).
#[derive(Clone)]
pub struct Validator(pub(crate) Arc<ValidatorFn>);

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Validator(..)")
    }
}

impl Auth {
    /// JWT authentication.
    pub fn jwt(jwt: JwtAuth) -> Auth {
        Auth::Jwt(Box::new(jwt))
    }

    /// API key authentication (see [`ApiKeyAuth`]).
    pub fn api_key(auth: ApiKeyAuth) -> Auth {
        Auth::ApiKey(auth)
    }

    /// A custom async validator. It runs on the connection's core (inside its single-threaded
    /// runtime, so the future need not be `Send`) and must answer within the auth timeout.
    ///
    /// ```
    /// use edge_ws::manager::{Auth, AuthRejection, UserContext};
    /// let auth = Auth::validator(|info| async move {
    ///     match info.request.header("x-user") {
    ///         Some(u) => Ok(UserContext::new(u)),
    ///         None => Err(AuthRejection::unauthorized("who are you?")),
    ///     }
    /// });
    /// # let _ = auth;
    /// ```
    pub fn validator<F, Fut>(f: F) -> Auth
    where
        F: Fn(HandshakeInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<UserContext, AuthRejection>> + 'static,
    {
        Auth::Validator(Validator(Arc::new(move |info| Box::pin(f(info)))))
    }
}
