//! Authentication before the `101`: who is connecting, or why they may not.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use edge_ws::protocol::handshake::Request;
use sha2::{Digest, Sha256};

use crate::identity::{AuthRejection, RejectReason, UserContext};
use crate::jwt::JwtAuth;
use edge_ws::{ConnectionId, UpgradeRequest};

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
    /// use edge_ws_server::{Auth, AuthRejection, UserContext};
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
