//! Reverse-proxy mode: an engine [`Handler`] that relays every WebSocket to a backend picked
//! from [`Backends`] (IP-hash by the client's address by default: sticky sessions).
//!
//! - **Upgrade:** the handler defers the upgrade, connects to a backend on the core's own
//!   runtime (`tokio::task::spawn_local`; the client's `tokio::net` socket runs on it too),
//!   forwarding the path, the query and the end-to-end headers (plus `X-Forwarded-For`), and
//!   answers the client with [`EngineHandle::resolve_upgrade`]: `101` once the backend
//!   accepted, `502` with `Retry-After` when no backend could be reached (the bounded waits of
//!   [`Backends::connect`]), `503` when none is eligible.
//! - **Relay:** messages keep their opcode and payload (no parsing, no re-compression on the
//!   backend hop, which offers no permessage-deflate); only the frame headers are rebuilt,
//!   since the two hops differ in masking.
//! - **Backpressure, client → backend:** each message goes into the backend connection's
//!   bounded write queue. When that is full (the backend does not read), messages wait in a
//!   per-connection overflow of at most [`ProxyConfig::queue_limit`] bytes, drained by a task;
//!   a client that overruns it, or a backend that takes longer than
//!   [`ProxyConfig::drain_timeout`] to take one message, ends the pair: the client gets 4001.
//! - **Backpressure, backend → client:** the relay task stops reading the backend while the
//!   backend connection's receive queue is not taken, and the client's own write buffer is the
//!   engine's (`write_buffer_limit` with the slow-consumer policy, 4001 by default). The
//!   engine does not tell a handler when a connection's buffer drains, so the proxy cannot
//!   pause the backend on a slow client: it relies on that limit.
//! - **Close codes:** a client's close code goes to the backend and a backend's to the client
//!   (1005 "no status" as 1000; a client that vanished as 1001). A backend that goes away
//!   without a close frame (killed, TCP lost, keepalive timeout) closes its clients with
//!   **4000** "backend gone, reconnect"; reconnecting picks another backend.
//!
//! See `docs/design/proxy.md`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edge_ws::{
    CloseCode, ConnectionId, EngineHandle, Handler, Message, Rejection, Socket, Upgrade,
    UpgradeRequest,
};
use edge_ws_client::balance::ip_key;
use edge_ws_client::{BackendConnection, BackendLoad, Backends, Error, Request, Sender};

/// Tuning of the relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Bytes of client messages kept per connection while the backend's write queue is full.
    /// Default 1 MiB.
    pub queue_limit: usize,
    /// How long the backend may take to accept one queued message. Default 5 s.
    pub drain_timeout: Duration,
    /// Whether the balancing key is the client's IP address (needed for
    /// [`Strategy::IpHash`](edge_ws_client::Strategy::IpHash); other strategies ignore it).
    /// Default `true`.
    pub key_by_ip: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            queue_limit: 1 << 20,
            drain_timeout: Duration::from_secs(5),
            key_by_ip: true,
        }
    }
}

/// Counters of a [`Proxy`], over every core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections relayed to a backend.
    pub connections: u64,
    /// Upgrades refused because no backend could be reached.
    pub refused: u64,
    /// Messages relayed client → backend.
    pub to_backend: u64,
    /// Messages relayed backend → client.
    pub to_client: u64,
    /// Clients closed with 4000 because their backend went away.
    pub backend_gone: u64,
    /// Pairs ended with 4001 because a side did not drain in time.
    pub slow: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    to_backend: AtomicU64,
    to_client: AtomicU64,
    backend_gone: AtomicU64,
    slow: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    backends: Backends,
    config: ProxyConfig,
    engine: OnceLock<EngineHandle>,
    counters: Counters,
}

/// The proxy, shared by every core: make one [`ProxyHandler`] per core with
/// [`handler`](Self::handler), and [`attach`](Self::attach) the engine's handle once it runs.
///
/// ```no_run
/// use edge_ws::Engine;
/// use edge_ws_client::{Backends, Strategy};
/// use edge_ws_server::proxy::{Proxy, ProxyConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backends = Backends::builder()
///     .url("ws://127.0.0.1:9002")?
///     .url("ws://127.0.0.1:9003")?
///     .strategy(Strategy::IpHash)
///     .build()?;
/// let proxy = Proxy::new(backends, ProxyConfig::default());
/// let p = proxy.clone();
/// let engine = Engine::builder()
///     .bind("127.0.0.1:9001".parse()?)
///     .build(move |_core| p.handler())?;
/// proxy.attach(engine.handle());
/// engine.join().map_err(|_| "a core panicked")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// A proxy to `backends`. Give the backends' client no permessage-deflate offer
    /// (`ClientBuilder::deflate(None)`) unless the backend hop needs it: with it, every
    /// message is inflated and deflated once more on that hop.
    pub fn new(backends: Backends, config: ProxyConfig) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                backends,
                config,
                engine: OnceLock::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// Gives the proxy the engine's handle (needed to answer upgrades and relay to clients).
    /// Returns `false` if one was attached already.
    pub fn attach(&self, handle: EngineHandle) -> bool {
        self.inner.engine.set(handle).is_ok()
    }

    /// A handler for one core.
    pub fn handler(&self) -> ProxyHandler {
        ProxyHandler {
            inner: self.inner.clone(),
            links: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// The backends.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// Counters over every core.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: get(&c.connections),
            refused: get(&c.refused),
            to_backend: get(&c.to_backend),
            to_client: get(&c.to_client),
            backend_gone: get(&c.backend_gone),
            slow: get(&c.slow),
        }
    }
}

/// The socket's data slot between the upgrade and `on_open`: the backend connection.
type Slot = Option<BackendConnection>;

/// One client's relay state, on its core.
struct Link {
    sender: Sender,
    overflow: VecDeque<edge_ws_client::Message>,
    overflow_bytes: usize,
    draining: bool,
}

type Links = Rc<RefCell<HashMap<ConnectionId, Link>>>;

/// The per-core [`Handler`] of a [`Proxy`].
pub struct ProxyHandler {
    inner: Arc<Inner>,
    links: Links,
}

impl std::fmt::Debug for ProxyHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandler")
            .field("links", &self.links.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Request headers that belong to one hop (or to the handshake itself) and are not forwarded.
const HOP_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
];

/// The request to backend `base` for a client that asked for `path_and_query` with `headers`.
fn backend_request(
    base: &Request,
    path_and_query: &str,
    headers: &[(String, String)],
    protocols: &[String],
    peer: std::net::IpAddr,
) -> edge_ws_client::Result<Request> {
    let url = base.url();
    let scheme = if url.is_tls() { "wss" } else { "ws" };
    let mut r = Request::new(format!(
        "{scheme}://{}{}",
        url.host_header(),
        path_and_query
    ))?;
    for p in protocols {
        r = r.protocol(p.clone());
    }
    for (k, v) in base.headers() {
        r = r.header(k.clone(), v.clone());
    }
    let mut forwarded = None;
    for (k, v) in headers {
        if HOP_HEADERS.contains(&k.as_str()) {
            continue;
        }
        if k == "x-forwarded-for" {
            forwarded = Some(v.clone());
            continue;
        }
        r = r.header(k.clone(), v.clone());
    }
    let xff = match forwarded {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.to_string(),
    };
    Ok(r.header("x-forwarded-for", xff))
}

/// A close code that can go on the wire for one coming from the other side.
fn relay_code(code: CloseCode, vanished: CloseCode) -> CloseCode {
    match code.0 {
        1005 => CloseCode::NORMAL,
        _ if code.is_valid_on_wire() => code,
        _ => vanished,
    }
}

const BACKEND_GONE: CloseCode = CloseCode(4000);
const SLOW: CloseCode = CloseCode(4001);

fn to_client_message(m: Message) -> Option<edge_ws_client::Message> {
    match m {
        Message::Text(b) => match String::from_utf8(Vec::from(b)) {
            Ok(t) => Some(edge_ws_client::Message::Text(t)),
            Err(_) => None, // validated by the engine's decoder already
        },
        Message::Binary(b) => Some(edge_ws_client::Message::Binary(b)),
        _ => None,
    }
}

impl Handler for ProxyHandler {
    fn on_upgrade(&mut self, req: &UpgradeRequest<'_>) -> Upgrade {
        let Some(handle) = self.inner.engine.get().cloned() else {
            return Upgrade::Reject(Rejection::new(503, "proxy starting").retry_after(1));
        };
        let inner = self.inner.clone();
        let (id, peer) = (req.id, req.peer);
        let mut path = req.request.path.clone();
        if let Some(q) = &req.request.query {
            path.push('?');
            path.push_str(q);
        }
        let headers = req.request.headers.clone();
        let offered = req.request.protocols.clone();
        let key = inner.config.key_by_ip.then(|| ip_key(peer.ip()));
        tokio::task::spawn_local(async move {
            let r = inner
                .backends
                .connect_with(key.as_deref(), |base| {
                    backend_request(base, &path, &headers, &offered, peer.ip())
                })
                .await;
            let decision = match r {
                Ok(conn) => {
                    // The client gets the subprotocol its backend chose (from its own offer).
                    let protocol = conn.protocol().map(str::to_owned);
                    let slot = Box::new(Some(conn) as Slot) as Box<dyn std::any::Any + Send>;
                    handle.resolve_upgrade_with_protocol(id, protocol, Some(slot));
                    return;
                }
                Err(e) => {
                    inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "proxy: no backend");
                    Err(match e {
                        Error::NoBackendAvailable => {
                            Rejection::new(503, "no backend available").retry_after(1)
                        }
                        e => Rejection::new(502, format!("backend: {e}")).retry_after(1),
                    })
                }
            };
            // If the client is gone by now the engine drops the decision, and with it the
            // backend connection (closed with 1000).
            handle.resolve_upgrade(id, decision);
        });
        Upgrade::Defer
    }

    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        let conn = socket.data_mut::<Slot>().and_then(Option::take);
        let (Some(conn), Some(handle)) = (conn, self.inner.engine.get().cloned()) else {
            socket.close(CloseCode(1011), "proxy: no backend");
            return;
        };
        let (ws, load) = conn.into_parts();
        let (sender, receiver) = ws.split();
        let id = socket.id();
        self.inner
            .counters
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.links.borrow_mut().insert(
            id,
            Link {
                sender,
                overflow: VecDeque::new(),
                overflow_bytes: 0,
                draining: false,
            },
        );
        tokio::task::spawn_local(backend_to_client(
            id,
            receiver,
            load,
            handle,
            self.links.clone(),
            self.inner.clone(),
        ));
    }

    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let id = socket.id();
        let Some(msg) = to_client_message(message) else {
            return;
        };
        let mut links = self.links.borrow_mut();
        let Some(link) = links.get_mut(&id) else {
            return;
        };
        if !link.draining {
            match link.sender.try_send_back(msg) {
                Ok(()) => {
                    self.inner
                        .counters
                        .to_backend
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err((Error::WouldBlock, msg)) => {
                    link.overflow_bytes += msg.len();
                    link.overflow.push_back(msg);
                    link.draining = true;
                    tokio::task::spawn_local(drain(id, self.links.clone(), self.inner.clone()));
                    return;
                }
                // The backend connection failed: its relay task closes the client.
                Err(_) => return,
            }
        }
        link.overflow_bytes += msg.len();
        link.overflow.push_back(msg);
        if link.overflow_bytes > self.inner.config.queue_limit {
            let link = links.remove(&id).expect("present");
            drop(links);
            self.inner.counters.slow.fetch_add(1, Ordering::Relaxed);
            socket.close(SLOW, "backend not draining");
            close_backend(link.sender, CloseCode::GOING_AWAY, "client closed by proxy");
        }
    }

    fn on_close(&mut self, socket: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
        let link = self.links.borrow_mut().remove(&socket.id());
        if let Some(link) = link {
            close_backend(link.sender, relay_code(code, CloseCode::GOING_AWAY), reason);
        }
    }
}

fn close_backend(sender: Sender, code: CloseCode, reason: &str) {
    let reason = reason.to_owned();
    tokio::task::spawn_local(async move {
        let _ = sender.close(code, &reason).await;
    });
}

/// Moves a client's overflow into its backend's write queue, one message at a time, each
/// within the drain timeout.
async fn drain(id: ConnectionId, links: Links, inner: Arc<Inner>) {
    loop {
        let (sender, msg) = {
            let mut l = links.borrow_mut();
            let Some(link) = l.get_mut(&id) else {
                return;
            };
            let Some(msg) = link.overflow.pop_front() else {
                link.draining = false;
                return;
            };
            link.overflow_bytes -= msg.len();
            (link.sender.clone(), msg)
        };
        match tokio::time::timeout(inner.config.drain_timeout, sender.send(msg)).await {
            Ok(Ok(())) => {
                inner.counters.to_backend.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => return, // the backend connection ended: its relay task handles it
            Err(_) => {
                let link = links.borrow_mut().remove(&id);
                if let (Some(link), Some(h)) = (link, inner.engine.get()) {
                    inner.counters.slow.fetch_add(1, Ordering::Relaxed);
                    h.close(id, SLOW, "backend not draining");
                    close_backend(link.sender, CloseCode::GOING_AWAY, "backend not draining");
                }
                return;
            }
        }
    }
}

/// Relays the backend's messages to the client until the backend connection ends, then
/// closes the client with the backend's code, or 4000 when the backend just went away.
async fn backend_to_client(
    id: ConnectionId,
    mut receiver: edge_ws_client::Receiver,
    load: BackendLoad,
    handle: EngineHandle,
    links: Links,
    inner: Arc<Inner>,
) {
    while let Some(m) = receiver.recv().await {
        let ok = match m {
            Ok(edge_ws_client::Message::Text(t)) => handle.send_text(id, &t),
            Ok(edge_ws_client::Message::Binary(b)) => handle.send_binary(id, &b),
            Err(_) => break,
        };
        if ok {
            inner.counters.to_client.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(load);
    // Still linked: the backend ended first (otherwise the client's close removed the link).
    if links.borrow_mut().remove(&id).is_none() {
        return;
    }
    let info = receiver.close_info();
    // A close frame from the backend: its code (1006 is what a lost connection reads as).
    let closed = info
        .as_ref()
        .and_then(|i| i.peer())
        .filter(|(code, _)| *code != CloseCode::ABNORMAL);
    match closed {
        Some((code, reason)) => {
            handle.close(id, relay_code(code, BACKEND_GONE), reason);
        }
        None => {
            inner.counters.backend_gone.fetch_add(1, Ordering::Relaxed);
            handle.close(id, BACKEND_GONE, "backend gone, reconnect");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_forward_path_query_and_end_to_end_headers_only() {
        let base = Request::new("ws://10.0.0.2:9002/ignored")
            .unwrap()
            .header("x-proxy", "1");
        let headers = vec![
            ("host".to_string(), "edge.example".to_string()),
            ("sec-websocket-key".to_string(), "abc".to_string()),
            ("authorization".to_string(), "Bearer t".to_string()),
            ("x-forwarded-for".to_string(), "1.2.3.4".to_string()),
        ];
        let offered = ["chat.v2".to_string(), "chat.v1".to_string()];
        let r = backend_request(
            &base,
            "/ws?room=7",
            &headers,
            &offered,
            "5.6.7.8".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(r.url().path_and_query(), "/ws?room=7");
        assert_eq!(r.protocols(), &offered[..], "the client's offer, in order");
        assert_eq!(r.url().host_header(), "10.0.0.2:9002");
        let h: Vec<(&str, &str)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("x-proxy", "1"),
                ("authorization", "Bearer t"),
                ("x-forwarded-for", "1.2.3.4, 5.6.7.8")
            ]
        );
    }

    #[test]
    fn close_codes_that_cannot_go_on_the_wire_are_mapped() {
        assert_eq!(relay_code(CloseCode(4321), BACKEND_GONE), CloseCode(4321));
        assert_eq!(relay_code(CloseCode(1001), BACKEND_GONE), CloseCode(1001));
        assert_eq!(relay_code(CloseCode(1005), BACKEND_GONE), CloseCode::NORMAL);
        assert_eq!(relay_code(CloseCode(1006), BACKEND_GONE), BACKEND_GONE);
        assert_eq!(
            relay_code(CloseCode(1006), CloseCode::GOING_AWAY),
            CloseCode::GOING_AWAY
        );
    }
}
