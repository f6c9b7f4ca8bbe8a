//! JSON Web Tokens with HMAC (HS256, HS384, HS512), verified by hand over `hmac` + `sha2`.
//!
//! The verifier is deliberately narrow: the key is bound to one algorithm, so `alg: none`,
//! another HMAC size, or an asymmetric algorithm (the RS256→HS256 "confusion" attack) are all
//! refused before any signature work; the signature is checked in constant time
//! (`Mac::verify_slice`) before the payload is even decoded; `crit` headers are refused
//! (no extension is understood); the token is capped at 8 KiB.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edge_ws::protocol::handshake::Request;
use hmac::{Hmac, Mac};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use crate::identity::{AuthRejection, RejectReason, UserContext};

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The HMAC algorithm a key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-256.
    HS256,
    /// HMAC-SHA-384.
    HS384,
    /// HMAC-SHA-512.
    HS512,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }
}

/// A keyed MAC, ready to clone per verification (the key is padded and hashed once).
#[derive(Clone)]
enum Key {
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
}

impl Key {
    fn new(alg: Algorithm, secret: &[u8]) -> Key {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        match alg {
            Algorithm::HS256 => Key::Hs256(Hmac::new_from_slice(secret).expect("any key length")),
            Algorithm::HS384 => Key::Hs384(Hmac::new_from_slice(secret).expect("any key length")),
            Algorithm::HS512 => Key::Hs512(Hmac::new_from_slice(secret).expect("any key length")),
        }
    }

    fn verify(&self, signed: &[u8], sig: &[u8]) -> bool {
        fn run<M: Mac + Clone>(m: &M, signed: &[u8], sig: &[u8]) -> bool {
            let mut m = m.clone();
            m.update(signed);
            m.verify_slice(sig).is_ok()
        }
        match self {
            Key::Hs256(m) => run(m, signed, sig),
            Key::Hs384(m) => run(m, signed, sig),
            Key::Hs512(m) => run(m, signed, sig),
        }
    }

    fn sign(&self, signed: &[u8]) -> Vec<u8> {
        fn run<M: Mac + Clone>(m: &M, signed: &[u8]) -> Vec<u8> {
            let mut m = m.clone();
            m.update(signed);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Key::Hs256(m) => run(m, signed),
            Key::Hs384(m) => run(m, signed),
            Key::Hs512(m) => run(m, signed),
        }
    }
}

/// Where the token is looked for, in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    BearerHeader,
    /// A `Sec-WebSocket-Protocol` entry `<prefix><token>` (e.g. prefix `bearer.`): the only
    /// way a browser can send a credential in the handshake besides cookies and the query.
    /// The client should also offer a real subprotocol the server speaks.
    Protocol(String),
    /// A query parameter, e.g. `?token=<token>` (not percent-decoded: JWTs need none).
    Query(String),
}

type UserMap = dyn Fn(&Value) -> Result<UserContext, AuthRejection> + Send + Sync;

/// JWT authentication settings.
///
/// ```
/// use std::time::Duration;
/// use edge_ws_server::{JwtAuth, TokenSource};
/// let jwt = JwtAuth::hs256(b"secret")
///     .issuer("https://auth.example")
///     .audience("chat")
///     .leeway(Duration::from_secs(30))
///     .sources([TokenSource::BearerHeader, TokenSource::Query("token".into())]);
/// let token = jwt.sign(r#"{"sub":"alice","exp":4102444800,"iss":"https://auth.example","aud":"chat"}"#);
/// assert!(jwt.verify(&token).is_ok());
/// ```
#[derive(Clone)]
pub struct JwtAuth {
    alg: Algorithm,
    key: Key,
    sources: Vec<TokenSource>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    require_exp: bool,
    user_claim: String,
    permissions_claim: String,
    map_user: Option<Arc<UserMap>>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("alg", &self.alg)
            .field("sources", &self.sources)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    crit: Option<IgnoredAny>,
}

impl JwtAuth {
    /// Tokens signed with `alg` and `secret`. Defaults: token from `Authorization: Bearer`,
    /// `exp` required, 30 s leeway, no issuer or audience check, user id from `sub`,
    /// permissions from `permissions` (an array of strings, or a space-separated string).
    pub fn new(alg: Algorithm, secret: impl AsRef<[u8]>) -> JwtAuth {
        JwtAuth {
            alg,
            key: Key::new(alg, secret.as_ref()),
            sources: vec![TokenSource::BearerHeader],
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            require_exp: true,
            user_claim: "sub".into(),
            permissions_claim: "permissions".into(),
            map_user: None,
        }
    }

    /// HS256 with `secret`.
    pub fn hs256(secret: impl AsRef<[u8]>) -> JwtAuth {
        JwtAuth::new(Algorithm::HS256, secret)
    }

    /// HS384 with `secret`.
    pub fn hs384(secret: impl AsRef<[u8]>) -> JwtAuth {
        JwtAuth::new(Algorithm::HS384, secret)
    }

    /// HS512 with `secret`.
    pub fn hs512(secret: impl AsRef<[u8]>) -> JwtAuth {
        JwtAuth::new(Algorithm::HS512, secret)
    }

    /// Where to look for the token, in order (the first source present is used).
    pub fn sources(mut self, sources: impl IntoIterator<Item = TokenSource>) -> JwtAuth {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Requires `iss` to equal `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> JwtAuth {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to be (or, as an array, to contain) `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> JwtAuth {
        self.audience = Some(audience.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(mut self, leeway: Duration) -> JwtAuth {
        self.leeway = leeway;
        self
    }

    /// Whether a token without `exp` is refused (default: yes).
    pub fn require_exp(mut self, require: bool) -> JwtAuth {
        self.require_exp = require;
        self
    }

    /// The claim holding the user id (default `sub`; a string or a number).
    pub fn user_claim(mut self, claim: impl Into<String>) -> JwtAuth {
        self.user_claim = claim.into();
        self
    }

    /// The claim holding the permissions (default `permissions`).
    pub fn permissions_claim(mut self, claim: impl Into<String>) -> JwtAuth {
        self.permissions_claim = claim.into();
        self
    }

    /// Builds the [`UserContext`] from the verified claims yourself (replaces the user and
    /// permissions claims); may still refuse.
    pub fn map_user<F>(mut self, f: F) -> JwtAuth
    where
        F: Fn(&Value) -> Result<UserContext, AuthRejection> + Send + Sync + 'static,
    {
        self.map_user = Some(Arc::new(f));
        self
    }

    /// The algorithm the key is bound to.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` (a JSON object, as text) into a token with header
    /// `{"alg":"<alg>","typ":"JWT"}`: for issuing tokens and for tests.
    pub fn sign(&self, claims_json: &str) -> String {
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.alg.name());
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
        let sig = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut token);
        token
    }

    /// The token in `req`, from the first configured source that has one.
    pub fn token_from<'r>(&self, req: &'r Request) -> Option<&'r str> {
        self.sources.iter().find_map(|s| match s {
            TokenSource::BearerHeader => {
                let v = req.header("authorization")?;
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim())
                    .filter(|t| !t.is_empty())
            }
            TokenSource::Protocol(prefix) => req
                .protocols
                .iter()
                .find_map(|p| p.strip_prefix(prefix.as_str()))
                .filter(|t| !t.is_empty()),
            TokenSource::Query(name) => req.query_param(name).filter(|t| !t.is_empty()),
        })
    }

    /// Verifies `token` now: its claims, or why not.
    pub fn verify(&self, token: &str) -> Result<Value, RejectReason> {
        self.verify_at(token, SystemTime::now())
    }

    /// Verifies `token` as of `now`.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Value, RejectReason> {
        use RejectReason::*;
        if token.len() > MAX_TOKEN_LEN {
            return Err(MalformedToken);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let header = URL_SAFE_NO_PAD.decode(h64).map_err(|_| MalformedToken)?;
        let header: Header<'_> = serde_json::from_slice(&header).map_err(|_| MalformedToken)?;
        if header.alg != self.alg.name() {
            return Err(UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(MalformedToken);
        }
        let sig = URL_SAFE_NO_PAD.decode(s64).map_err(|_| BadSignature)?;
        let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        if !self.key.verify(signed, &sig) {
            return Err(BadSignature);
        }
        let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| MalformedToken)?;
        let claims: Value = serde_json::from_slice(&payload).map_err(|_| MalformedToken)?;
        let obj = claims.as_object().ok_or(MalformedToken)?;

        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        match obj.get("exp") {
            Some(exp) => {
                let exp = exp.as_f64().ok_or(MissingClaim)?;
                if now >= exp + leeway {
                    return Err(Expired);
                }
            }
            None if self.require_exp => return Err(MissingClaim),
            None => {}
        }
        if let Some(nbf) = obj.get("nbf") {
            let nbf = nbf.as_f64().ok_or(MissingClaim)?;
            if now + leeway < nbf {
                return Err(NotYetValid);
            }
        }
        if let Some(iss) = &self.issuer {
            if obj.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
                return Err(WrongIssuer);
            }
        }
        if let Some(aud) = &self.audience {
            let ok = match obj.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(WrongAudience);
            }
        }
        Ok(claims)
    }

    /// The user behind verified `claims`.
    pub(crate) fn user(&self, claims: Value) -> Result<UserContext, AuthRejection> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|e| (e * 1000.0) as u64 + self.leeway.as_millis() as u64);
        let u = self.user_unexpiring(claims)?;
        Ok(match exp {
            Some(e) if u.expires_at_ms().is_none() => u.with_expiry(e),
            _ => u,
        })
    }

    fn user_unexpiring(&self, claims: Value) -> Result<UserContext, AuthRejection> {
        if let Some(map) = &self.map_user {
            return map(&claims);
        }
        let id: Arc<str> = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
            Some(Value::Number(n)) => n.to_string().into(),
            _ => return Err(AuthRejection::of(RejectReason::MissingClaim)),
        };
        let permissions: Vec<String> = match claims.get(&self.permissions_claim) {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(UserContext::new(id)
            .with_permissions(permissions)
            .with_data(claims))
    }

    /// Finds, verifies and maps the token of an upgrade request.
    pub(crate) fn authenticate(&self, req: &Request) -> Result<UserContext, AuthRejection> {
        let token = self
            .token_from(req)
            .ok_or(AuthRejection::of(RejectReason::MissingCredentials))?;
        let claims = self.verify(token).map_err(AuthRejection::of)?;
        self.user(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trip_and_refusals() {
        let j = JwtAuth::hs256("k")
            .issuer("i")
            .audience("a")
            .leeway(Duration::ZERO);
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let ok = j.sign(r#"{"sub":"u","exp":2000,"nbf":500,"iss":"i","aud":["x","a"]}"#);
        assert_eq!(j.verify_at(&ok, now).unwrap()["sub"], "u");
        let cases = [
            (
                r#"{"sub":"u","exp":1000,"iss":"i","aud":"a"}"#,
                RejectReason::Expired,
            ),
            (
                r#"{"sub":"u","exp":2000,"nbf":1001,"iss":"i","aud":"a"}"#,
                RejectReason::NotYetValid,
            ),
            (
                r#"{"sub":"u","exp":2000,"iss":"j","aud":"a"}"#,
                RejectReason::WrongIssuer,
            ),
            (
                r#"{"sub":"u","exp":2000,"aud":"a"}"#,
                RejectReason::WrongIssuer,
            ),
            (
                r#"{"sub":"u","exp":2000,"iss":"i","aud":"b"}"#,
                RejectReason::WrongAudience,
            ),
            (
                r#"{"sub":"u","iss":"i","aud":"a"}"#,
                RejectReason::MissingClaim,
            ),
            (
                r#"{"sub":"u","exp":"soon","iss":"i","aud":"a"}"#,
                RejectReason::MissingClaim,
            ),
            (r#"[1]"#, RejectReason::MalformedToken),
        ];
        for (claims, want) in cases {
            assert_eq!(j.verify_at(&j.sign(claims), now), Err(want), "{claims}");
        }
        // Leeway.
        let jl = j.clone().leeway(Duration::from_secs(10));
        let t = jl.sign(r#"{"sub":"u","exp":995,"iss":"i","aud":"a"}"#);
        assert!(jl.verify_at(&t, now).is_ok());
        // Signature, algorithm, shape.
        let other = JwtAuth::hs256("other").sign(r#"{"sub":"u","exp":2000}"#);
        assert_eq!(j.verify_at(&other, now), Err(RejectReason::BadSignature));
        let hs512 = JwtAuth::hs512("k").sign(r#"{"sub":"u","exp":2000}"#);
        assert_eq!(
            j.verify_at(&hs512, now),
            Err(RejectReason::UnsupportedAlgorithm)
        );
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"u"}"#));
        assert_eq!(
            j.verify_at(&none, now),
            Err(RejectReason::UnsupportedAlgorithm)
        );
        let crit = format!(
            "{}.{}.x",
            b64(r#"{"alg":"HS256","crit":["b64"]}"#),
            b64("{}")
        );
        assert_eq!(j.verify_at(&crit, now), Err(RejectReason::MalformedToken));
        assert_eq!(
            j.verify_at(&ok[..ok.len() - 3], now),
            Err(RejectReason::BadSignature)
        );
        let two = ok.rsplit_once('.').unwrap().0;
        assert_eq!(j.verify_at(two, now), Err(RejectReason::MalformedToken));
        assert_eq!(j.verify_at("", now), Err(RejectReason::MalformedToken));
        assert_eq!(
            j.verify_at(&format!("{ok}.x"), now),
            Err(RejectReason::MalformedToken)
        );
        // A tampered payload with the original signature.
        let (hp, sig) = ok.rsplit_once('.').unwrap();
        let h = hp.split_once('.').unwrap().0;
        let forged = format!("{h}.{}.{sig}", b64(r#"{"sub":"admin","exp":2000}"#));
        assert_eq!(j.verify_at(&forged, now), Err(RejectReason::BadSignature));
    }

    #[test]
    fn user_from_claims() {
        let j = JwtAuth::hs384("k");
        let u = j
            .user(serde_json::json!({"sub": 42, "permissions": "read write"}))
            .unwrap();
        assert_eq!(u.id(), "42");
        assert!(u.has_permission("write"));
        assert_eq!(u.data::<Value>().unwrap()["sub"], 42);
        assert!(j.user(serde_json::json!({"permissions": []})).is_err());
    }
}
