//! The server HTTP API: what a backend calls to act on the real-time side (publish, send a
//! notification, look up presence, read history, list channels, disconnect a user).
//!
//! It listens on its own address (the *admin port*, loopback by default), apart from the
//! public WebSocket port, so it can be firewalled on its own and a flood of API calls never
//! competes with the cores' event loops. It is a small blocking HTTP/1.1 server on plain
//! threads: calls are rare next to WebSocket traffic, and most of them wait on a core, the
//! store or the notification thread anyway (`publish_blocking`, `send_blocking`). Why not on
//! the cores: docs/design/http-api.md.
//!
//! Every call is `POST /api/<method>` with a JSON object body, protected by an API key
//! (`Authorization: apikey <key>`, `Authorization: Bearer <key>` or `X-API-Key: <key>`), and
//! answers JSON: `200` with the result, or an error status with
//! `{"error":"...","code":"..."}` (docs/PROTOCOL.md §7 lists the methods and errors).
//!
//! ```no_run
//! use edge_ws_server::http_api::{HttpApi, HttpApiConfig};
//! # fn demo(manager: edge_ws_server::Manager) -> std::io::Result<()> {
//! let api = HttpApi::start(manager, HttpApiConfig::new("127.0.0.1:9002".parse().unwrap(), ["secret"]))?;
//! println!("HTTP API on http://{}/api/", api.local_addr());
//! # Ok(()) }
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_ws::stream::StreamError;
use edge_ws::{CloseCode, MessageKind, PublishOptions};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channels::EnvelopeFormat;
use crate::Manager;

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpApiConfig {
    /// Where it listens (keep it private: loopback or an internal interface).
    pub addr: SocketAddr,
    /// Accepted API keys (at least one; compared in constant time).
    pub keys: Vec<String>,
    /// Largest request body (default 1 MiB): larger ones get 413.
    pub max_body: usize,
    /// Connections served at once (default 64): one more gets 503 and is closed.
    pub max_connections: usize,
    /// How long a connection may take to send a request, and stay idle between requests
    /// (default 10 s).
    pub read_timeout: Duration,
}

impl HttpApiConfig {
    /// Listening on `addr`, accepting `keys`, with the default limits.
    pub fn new<I, S>(addr: SocketAddr, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HttpApiConfig {
            addr,
            keys: keys.into_iter().map(Into::into).collect(),
            max_body: 1 << 20,
            max_connections: 64,
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of the HTTP API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpApiStats {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests refused for a missing or wrong key (401).
    pub unauthorized: u64,
    /// Requests answered with another error status.
    pub errors: u64,
    /// Connections refused because `max_connections` were open.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    unauthorized: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
}

/// A running HTTP API (see the module docs). Dropping it stops accepting.
#[derive(Debug)]
pub struct HttpApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl HttpApi {
    /// Binds `config.addr` and serves the API on threads of its own.
    pub fn start(manager: Manager, config: HttpApiConfig) -> io::Result<HttpApi> {
        if config.keys.is_empty() || config.keys.iter().any(String::is_empty) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the HTTP API needs at least one non-empty API key",
            ));
        }
        let listener = TcpListener::bind(config.addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let state = Arc::new(Api {
            manager,
            config,
            counters: counters.clone(),
        });
        let s = stop.clone();
        std::thread::Builder::new()
            .name("edge-ws-http-api".into())
            .spawn(move || accept_loop(listener, state, s))?;
        Ok(HttpApi {
            addr,
            stop,
            counters,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> HttpApiStats {
        let c = &self.counters;
        HttpApiStats {
            ok: c.ok.load(Ordering::Relaxed),
            unauthorized: c.unauthorized.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HttpApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

struct Api {
    manager: Manager,
    config: HttpApiConfig,
    counters: Arc<Counters>,
}

fn accept_loop(listener: TcpListener, api: Arc<Api>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let open = api.counters.open.fetch_add(1, Ordering::AcqRel);
        if open >= api.config.max_connections {
            api.counters.open.fetch_sub(1, Ordering::AcqRel);
            api.counters.refused.fetch_add(1, Ordering::Relaxed);
            let body = error_json("too many API connections", "busy");
            let _ = write_response(&mut conn, 503, &body, false);
            continue;
        }
        let worker = api.clone();
        let spawned = std::thread::Builder::new()
            .name("edge-ws-http-api-conn".into())
            .spawn(move || {
                serve_connection(&worker, conn);
                worker.counters.open.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            // The connection went with the closure: it is closed, unanswered.
            api.counters.open.fetch_sub(1, Ordering::AcqRel);
            api.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A request's head: what the API looks at.
struct Head {
    method: String,
    path: String,
    content_length: Option<usize>,
    chunked: bool,
    key: Option<String>,
    keep_alive: bool,
}

const MAX_HEAD: usize = 16 * 1024;

fn serve_connection(api: &Api, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(api.config.read_timeout));
    let _ = conn.set_write_timeout(Some(api.config.read_timeout));
    let _ = conn.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a whole head is in.
        let (head, used) = loop {
            match parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() >= MAX_HEAD => {
                    api.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let body = error_json("request head too large", "bad_request");
                    let _ = write_response(&mut conn, 431, &body, false);
                    return;
                }
                Ok(None) => {}
                Err(()) => {
                    api.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let body = error_json("malformed HTTP request", "bad_request");
                    let _ = write_response(&mut conn, 400, &body, false);
                    return;
                }
            }
            if !read_more(&mut conn, &mut buf) {
                return;
            }
        };
        buf.drain(..used);
        if head.chunked {
            api.counters.errors.fetch_add(1, Ordering::Relaxed);
            let body = error_json("send the body with Content-Length", "length_required");
            let _ = write_response(&mut conn, 411, &body, false);
            return;
        }
        let len = head.content_length.unwrap_or(0);
        if len > api.config.max_body {
            api.counters.errors.fetch_add(1, Ordering::Relaxed);
            let body = error_json(
                &format!("body over {} bytes", api.config.max_body),
                "too_large",
            );
            let _ = write_response(&mut conn, 413, &body, false);
            return;
        }
        while buf.len() < len {
            if !read_more(&mut conn, &mut buf) {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let (status, answer) = api.handle(&head, &body);
        let counter = match status {
            200..=299 => &api.counters.ok,
            401 => &api.counters.unauthorized,
            _ => &api.counters.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if write_response(&mut conn, status, &answer, head.keep_alive).is_err() || !head.keep_alive
        {
            return;
        }
    }
}

/// Reads what is there; `false` when the peer is gone, timed out or failed.
fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// `Ok(None)`: incomplete; `Err`: not HTTP/1.x.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        content_length: None,
        chunked: false,
        key: None,
        keep_alive: req.version == Some(1),
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| ())?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>().map_err(|_| ())?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(());
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("x-api-key") {
            head.key = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("authorization") {
            let lower = value.to_ascii_lowercase();
            for scheme in ["apikey ", "bearer "] {
                if lower.starts_with(scheme) {
                    head.key = Some(value[scheme.len()..].trim().to_string());
                }
            }
        }
    }
    Ok(Some((head, used)))
}

fn write_response(
    conn: &mut TcpStream,
    status: u16,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if status == 401 {
        out.push_str("WWW-Authenticate: apikey\r\n");
    }
    if status == 405 {
        out.push_str("Allow: POST\r\n");
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.push_str(body);
    conn.write_all(out.as_bytes())?;
    conn.flush()
}

/// `{"error":message,"code":code}`.
fn error_json(message: &str, code: &str) -> String {
    let mut s = String::from(r#"{"error":"#);
    crate::json::push_str(&mut s, message);
    s.push_str(r#","code":"#);
    crate::json::push_str(&mut s, code);
    s.push('}');
    s
}

/// A failed call: status and body.
struct Failure(u16, String);

impl Failure {
    fn bad(message: impl AsRef<str>) -> Failure {
        Failure(400, error_json(message.as_ref(), "bad_request"))
    }

    fn disabled(what: &str) -> Failure {
        Failure(
            501,
            error_json(&format!("{what} are not enabled"), "not_enabled"),
        )
    }

    fn unavailable(message: impl AsRef<str>) -> Failure {
        Failure(503, error_json(message.as_ref(), "unavailable"))
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::bad(format!("invalid request body: {e}"))
    }
}

fn stream_failure(e: &StreamError) -> Failure {
    if e.is_retryable() {
        Failure::unavailable(e.to_string())
    } else {
        Failure::bad(e.to_string())
    }
}

/// Constant-time equality (the length is not secret).
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendReq<'a> {
    user: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[cfg(feature = "store")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsReq {
    user: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    unread: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserReq {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelPresenceReq {
    channel: String,
    #[serde(default)]
    members: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectReq {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// The methods, for 404 answers and the docs.
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "send_to_user",
    "notify",
    "notifications",
    "presence",
    "channel_presence",
    "history",
    "channels",
    "disconnect",
    "info",
];

impl Api {
    fn handle(&self, head: &Head, body: &[u8]) -> (u16, String) {
        let Some(method) = head.path.strip_prefix("/api/") else {
            return (
                404,
                error_json("not found: the API is POST /api/<method>", "not_found"),
            );
        };
        let method = method.split('?').next().unwrap_or("");
        if !METHODS.contains(&method) {
            return (
                404,
                error_json(
                    &format!("unknown method {method:?}; known: {}", METHODS.join(", ")),
                    "not_found",
                ),
            );
        }
        if head.method != "POST" {
            return (
                405,
                error_json("use POST with a JSON body", "method_not_allowed"),
            );
        }
        let authorised = head
            .key
            .as_deref()
            .is_some_and(|k| self.config.keys.iter().any(|good| same_key(k, good)));
        if !authorised {
            return (
                401,
                error_json("missing or invalid API key", "unauthorized"),
            );
        }
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            body
        };
        match self.call(method, body) {
            Ok(result) => (200, result),
            Err(Failure(status, body)) => (status, body),
        }
    }

    fn call(&self, method: &str, body: &[u8]) -> Result<String, Failure> {
        let m = &self.manager;
        let engine = m
            .engine()
            .ok_or_else(|| Failure::unavailable("the engine is not running"))?;
        match method {
            "publish" => {
                let req: PublishReq<'_> = serde_json::from_slice(body)?;
                crate::channels::reserved(&req.channel).map_err(Failure::bad)?;
                let opts = crate::channels::publish_options(req.idempotency_key.as_deref())
                    .map_err(Failure::bad)?;
                let stream = engine.has_history(&req.channel);
                let payload =
                    EnvelopeFormat::payload(stream, &req.channel, req.data.get().as_bytes());
                let p = engine
                    .publish_blocking(&req.channel, &payload, MessageKind::Text, opts)
                    .map_err(|e| stream_failure(&e))?;
                let mut d = String::from("{");
                if let Some(pos) = p.position {
                    d.push_str(&format!(
                        r#""offset":{},"epoch":"{}","#,
                        pos.offset, pos.epoch
                    ));
                }
                d.push_str(&format!(r#""duplicate":{}}}"#, p.duplicate));
                Ok(d)
            }
            "broadcast" => {
                let req: BroadcastReq<'_> = serde_json::from_slice(body)?;
                if req.channels.is_empty() || req.channels.len() > 1000 {
                    return Err(Failure::bad("channels: 1 to 1000 names"));
                }
                let mut d = String::from(r#"{"results":["#);
                for (i, ch) in req.channels.iter().enumerate() {
                    if i > 0 {
                        d.push(',');
                    }
                    let stream = engine.has_history(ch);
                    let payload = EnvelopeFormat::payload(stream, ch, req.data.get().as_bytes());
                    let r = match crate::channels::reserved(ch) {
                        Ok(()) => engine.publish_blocking(
                            ch,
                            &payload,
                            MessageKind::Text,
                            PublishOptions::default(),
                        ),
                        Err(e) => Err(edge_ws::StreamError::InvalidChannel(e)),
                    };
                    d.push_str(r#"{"channel":"#);
                    crate::json::push_str(&mut d, ch);
                    match r {
                        Ok(p) => {
                            if let Some(pos) = p.position {
                                d.push_str(&format!(
                                    r#","offset":{},"epoch":"{}""#,
                                    pos.offset, pos.epoch
                                ));
                            }
                        }
                        Err(e) => {
                            d.push_str(r#","error":"#);
                            crate::json::push_str(&mut d, &e.to_string());
                        }
                    }
                    d.push('}');
                }
                d.push_str("]}");
                Ok(d)
            }
            "send_to_user" => {
                let req: SendReq<'_> = serde_json::from_slice(body)?;
                let kind = req.kind.as_deref().unwrap_or("message");
                if kind.is_empty() {
                    return Err(Failure::bad("type must not be empty"));
                }
                let text = crate::json::envelope(kind, None, Some(req.data.get()));
                let n = m.send_to_user(&req.user, &text);
                Ok(format!(r#"{{"connections":{n}}}"#))
            }
            #[cfg(feature = "store")]
            "notify" => {
                let req: crate::channels::SendNotification<'_> = serde_json::from_slice(body)?;
                let n = self.notifications()?;
                let user = req.user.clone();
                let id = n
                    .send_blocking(&user, req.into_notification())
                    .map_err(notify_failure)?;
                Ok(format!(r#"{{"id":{id}}}"#))
            }
            #[cfg(feature = "store")]
            "notifications" => {
                let req: NotificationsReq = serde_json::from_slice(body)?;
                let n = self.notifications()?;
                let query = crate::notifications::ListQuery {
                    limit: req.limit.unwrap_or(20),
                    before: req.before,
                    offset: req.offset,
                    unread_only: req.unread,
                };
                let page = n.list_blocking(&req.user, query).map_err(notify_failure)?;
                Ok(crate::notifications::page_json(&page))
            }
            // Without the store there are no notifications (501 `not_enabled`).
            #[cfg(not(feature = "store"))]
            "notify" | "notifications" => Err(Failure::disabled("notifications")),
            "presence" => {
                let req: UserReq = serde_json::from_slice(body)?;
                let found = if m.cluster_node().is_some() {
                    m.presence_everywhere_blocking(&req.user)
                        .map_err(|e| Failure::unavailable(format!("presence: {e}")))?
                } else {
                    m.presence(&req.user)
                };
                Ok(match found {
                    Some(p) => crate::presence::presence_json(&p),
                    None => crate::channels::offline_json(&req.user, None),
                })
            }
            "channel_presence" => {
                let req: ChannelPresenceReq = serde_json::from_slice(body)?;
                if m.cluster_node().is_some() {
                    let p = m
                        .channel_presence_everywhere_blocking(&req.channel, req.members)
                        .map_err(|e| Failure::unavailable(format!("presence: {e}")))?;
                    return Ok(crate::channels::cluster_channel_presence_json(
                        &req.channel,
                        &p,
                        req.members,
                    ));
                }
                let p = m.channel_presence(&req.channel, req.members);
                Ok(crate::channels::channel_presence_json(
                    &req.channel,
                    &p,
                    req.members,
                ))
            }
            "history" => {
                let req: crate::channels::HistoryReq = serde_json::from_slice(body)?;
                let query = req.query().map_err(Failure::bad)?;
                let page = engine
                    .history_blocking(&req.channel, query)
                    .map_err(|e| stream_failure(&e))?;
                Ok(crate::channels::history_data(&req.channel, &page))
            }
            "channels" => {
                let _: Empty = serde_json::from_slice(body)?;
                let mut list = engine.channels();
                list.sort();
                let mut d = String::from(r#"{"channels":["#);
                for (i, (name, subscribers)) in list.iter().enumerate() {
                    if i > 0 {
                        d.push(',');
                    }
                    d.push_str(r#"{"channel":"#);
                    crate::json::push_str(&mut d, name);
                    d.push_str(&format!(r#","subscribers":{subscribers}}}"#));
                }
                d.push_str("]}");
                Ok(d)
            }
            "disconnect" => {
                let req: DisconnectReq = serde_json::from_slice(body)?;
                let code = req.code.unwrap_or(4000);
                if !(4000..=4999).contains(&code) && code != 1000 {
                    return Err(Failure::bad(
                        "code: 1000 or 4000-4999 (4000-4499: the client may reconnect, 4500-4999: it should not)",
                    ));
                }
                let reason = req
                    .reason
                    .as_deref()
                    .unwrap_or("disconnected by the server");
                if reason.len() > 123 {
                    return Err(Failure::bad("reason: at most 123 bytes"));
                }
                let n = m.close_user(&req.user, CloseCode::from(code), reason);
                Ok(format!(r#"{{"connections":{n}}}"#))
            }
            "info" => {
                let _: Empty = serde_json::from_slice(body)?;
                let s = m.stats();
                // In a cluster: the node and the users online on every node (null when the
                // broker cannot answer).
                let cluster = match m.cluster_node() {
                    None => String::new(),
                    Some(node) => {
                        let everywhere = m
                            .users_online_everywhere_blocking()
                            .map_or_else(|_| "null".to_string(), |n| n.to_string());
                        format!(r#","cluster":{{"node":"{node}","users_online":{everywhere}}}"#)
                    }
                };
                Ok(format!(
                    r#"{{"version":"{}","cores":{},"connections":{},"users_online":{},"channels":{},"opened":{},"rejected":{}{cluster}}}"#,
                    env!("CARGO_PKG_VERSION"),
                    engine.cores(),
                    engine.connections(),
                    m.users_online(),
                    engine.channels().len(),
                    s.opened,
                    s.rejected_total(),
                ))
            }
            _ => Err(Failure(404, error_json("unknown method", "not_found"))),
        }
    }

    #[cfg(feature = "store")]
    fn notifications(&self) -> Result<crate::notifications::Notifications, Failure> {
        self.manager
            .notifications()
            .cloned()
            .ok_or_else(|| Failure::disabled("notifications"))
    }
}

#[cfg(feature = "store")]
fn notify_failure(e: crate::notifications::NotificationError) -> Failure {
    use crate::notifications::NotificationError as E;
    match e {
        E::Invalid(_) | E::UnknownIds(_) => Failure::bad(e.to_string()),
        E::Store(_) | E::Stopped => Failure::unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_yields_its_key_length_and_keep_alive() {
        let raw = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey s3cret\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let (h, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/api/publish");
        assert_eq!(h.key.as_deref(), Some("s3cret"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.keep_alive);
        assert_eq!(&raw[used..], b"{\"a\":1}");
        let raw = b"POST / HTTP/1.0\r\nX-API-Key: k\r\n\r\n";
        let (h, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.key.as_deref(), Some("k"));
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        assert!(parse_head(b"POST /api/x HTTP/1.1\r\nHost:")
            .unwrap()
            .is_none());
        assert!(parse_head(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").is_err());
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_head(conflicting).is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "abcd"));
        assert!(!same_key("", "a"));
    }
}
