//! What a handler decides when a client asks to upgrade: accept (with user data and a
//! subprotocol), refuse with an HTTP answer, or decide later.

use std::any::Any;
use std::net::SocketAddr;

use bytes::Bytes;
use edge_ws_protocol::handshake::Request;

/// A plain HTTP request that is not an upgrade (see [`crate::Handler::on_http`]).
pub use edge_ws_protocol::handshake::HttpRequestInfo as HttpRequest;

use crate::ids::ConnectionId;

/// An upgrade request as the handler sees it.
#[derive(Debug)]
pub struct UpgradeRequest<'a> {
    /// The id the connection will have once open (also the key for `resolve_upgrade`).
    pub id: ConnectionId,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The parsed request: path, query, headers, offered subprotocols.
    pub request: &'a Request,
}

/// The handler's decision on an upgrade request.
pub enum Upgrade {
    /// Open the WebSocket; the value (if any) goes into the socket's user data slot. The
    /// subprotocol is the first the client offered among [`crate::Config::subprotocols`].
    Accept(Option<Box<dyn Any>>),
    /// Open the WebSocket speaking `protocol`, the handler's choice for this request (it must
    /// be one the client offered, see [`Request::protocols`]; otherwise the upgrade is answered
    /// 500, since no client could accept it). `None` opens it with no subprotocol whatever the
    /// configured list says.
    AcceptProtocol {
        /// The subprotocol to answer with.
        protocol: Option<String>,
        /// The socket's user data.
        data: Option<Box<dyn Any>>,
    },
    /// Answer with an HTTP error; no WebSocket.
    Reject(Rejection),
    /// Decide later with [`crate::EngineHandle::resolve_upgrade`].
    Defer,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgrade::Accept(d) => write!(f, "Accept(data: {})", d.is_some()),
            Upgrade::AcceptProtocol { protocol, data } => {
                write!(f, "AcceptProtocol({protocol:?}, data: {})", data.is_some())
            }
            Upgrade::Reject(r) => write!(f, "Reject({r:?})"),
            Upgrade::Defer => f.write_str("Defer"),
        }
    }
}

/// An answer to a plain HTTP request (see [`crate::Handler::on_http`]): a page, a file, a
/// small JSON document. The engine writes it with `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpResponse {
    /// HTTP status, e.g. 200, 404.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// Extra headers (`Cache-Control`, ...), sanitised as [`Rejection::headers`] are.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl HttpResponse {
    /// A `200 OK` with `content_type` and `body`.
    pub fn ok(content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        HttpResponse {
            status: 200,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A response with `status` and a plain-text `body`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            headers: Vec::new(),
            body: Bytes::from(body.into()),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An HTTP answer refusing an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// HTTP status, e.g. 401, 403, 429, 503.
    pub status: u16,
    /// A short plain-text body.
    pub body: String,
    /// Extra response headers, e.g. `Retry-After` with a 429 or 503, `WWW-Authenticate` with
    /// a 401. Names that are not HTTP tokens are left out and CR/LF are dropped from values, so
    /// a header cannot split the response.
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    /// A rejection with `status` and `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Rejection {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Retry-After: <seconds>` (for 429 and 503: when the client may try again).
    pub fn retry_after(self, seconds: u64) -> Self {
        self.with_header("Retry-After", seconds.to_string())
    }
}
