//! The edge-ws server binary: an engine configured from a TOML file (or defaults).
//!
//! ```text
//! edge-ws [--config FILE] [--addr HOST:PORT] [--cores N] [--data-dir DIR] [--api-addr ADDR|off]
//!         [--log-format text|json] [--stats-interval SECS] [--print-config]
//! ```
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (`info` when unset; e.g.
//! `RUST_LOG=edge_ws=debug`, `RUST_LOG=warn`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use edge_ws::protocol::deflate::DeflateConfig;
use edge_ws::stream::{PublicationFormat, RestoredStream};
use edge_ws::{
    ChannelConfig, ChannelPolicy, Config, Cores, Engine, Handler, HttpRequest, HttpResponse,
    Message, MessageKind, MessageView, SlowConsumerPolicy, Socket, StreamPosition, Upgrade,
    UpgradeRequest,
};
use edge_ws_server::channels::{
    restore_streams, ChannelAccess, ChannelOp, EnvelopeFormat, StoreStreams,
};
use edge_ws_server::documents::DocumentConfig;
use edge_ws_server::http_api::{HttpApi, HttpApiConfig};
use edge_ws_server::notifications::{NotificationConfig, Notifications};
use edge_ws_server::presence::PresenceConfig;
use edge_ws_server::store::{Durability, Store, StoreHandle, StoreOptions};
use edge_ws_server::{
    ApiKeyAuth, Auth, AuthRejection, JwtAuth, Manager, ManagerHandler, RateLimit, RejectReason,
    Router, TokenSource, UserContext,
};
use serde::Deserialize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What edge-ws runs with when no file is given; a `--config` file is merged over it.
const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Lays `over` on `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

const HELP: &str = "\
edge-ws: thread-per-core io_uring WebSocket server

USAGE:
    edge-ws [OPTIONS]

OPTIONS:
    -c, --config FILE     TOML configuration (every key optional; see docs/TUNING.md)
    -a, --addr ADDR       listen address, overrides the file (default 127.0.0.1:9001)
        --cores N         number of cores, overrides the file (default: all)
        --log-format F    text (default) or json: one JSON object per line
        --stats-interval S  log the counters every S seconds (default 60; 0: only at exit)
        --data-dir DIR    where the store keeps its files (store.dir; default ./edge-ws-data)
        --api-addr ADDR   the HTTP API's address (http_api.addr), or off
        --print-config    print the effective configuration (built-in + file) and exit
    -h, --help            this text
    -V, --version         print the version

Logs go to stderr, filtered by RUST_LOG (default info; e.g. RUST_LOG=edge_ws=debug).
Exit status: 0 after a clean shutdown, 1 if the server failed while running, 2 for a
bad command line or configuration.

With no --config the built-in configuration runs (see --print-config): the demo page at /,
users named by ?user= (unchecked), chat:* rooms with history, notifications, documents, the
HTTP API on 127.0.0.1:9002 (key logged at start), data in ./edge-ws-data. A --config file is
merged over it key by key.

Paths: GET / the demo page; /ws the JSON envelope (docs/PROTOCOL.md); /sub subscribes to the
\"broadcast\" channel, every message sent on /pub is published to it; any other path echoes.
GET /health answers JSON, GET /metrics the counters in the Prometheus text format.
With a [proxy] section every path is relayed to a backend instead (reverse-proxy mode).
SIGINT/SIGTERM: graceful shutdown (1001 to every client, then exit).
";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: ServerSection,
    demo: DemoSection,
    http_api: HttpApiSection,
    rate_limit: RateLimitSection,
    io: IoSection,
    limits: LimitsSection,
    timeouts: TimeoutsSection,
    compression: CompressionSection,
    channels: ChannelsSection,
    store: StoreSection,
    proxy: Option<ProxySection>,
    auth: AuthSection,
    presence: PresenceSection,
    notifications: NotificationsSection,
    documents: DocumentsSection,
    cluster: ClusterSection,
    tls: TlsSection,
}

/// `[tls]`: a TLS listener (`wss://`) beside the plain one; `[[tls.sni]]`: more certificates
/// chosen by the client's SNI name. Feature `tls` (on by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsSection {
    /// The TLS listener's address; without it there is none.
    addr: Option<SocketAddr>,
    /// PEM files: the certificate chain (leaf first) and its private key, the default
    /// certificate.
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    /// TLS handshakes one core runs at once at most (default 1024).
    max_handshakes_per_core: Option<usize>,
    sni: Vec<SniSection>,
}

// Read only with the `tls` feature (without it `[tls]` is refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct SniSection {
    name: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// `[demo]`: the page at `/`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DemoSection {
    /// Serve the page; without an `[auth]` method, `/ws` then names users by `?user=`.
    enabled: Option<bool>,
}

/// `[http_api]`: the server HTTP API on an admin port.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HttpApiSection {
    enabled: Option<bool>,
    addr: Option<SocketAddr>,
    /// Accepted keys; none: a random one is made at start and logged.
    keys: Vec<String>,
    max_body: Option<usize>,
}

/// `[rate_limit]`: per-connection message rate (token bucket).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RateLimitSection {
    /// 0: unlimited.
    messages_per_second: Option<f64>,
    messages_burst: Option<u32>,
    /// Per user, over all their connections (0: unlimited).
    user_messages_per_second: Option<f64>,
    user_messages_burst: Option<u32>,
}

/// `[documents]`: collaborative documents in the store (opening it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DocumentsSection {
    enabled: Option<bool>,
    max_len: Option<usize>,
    max_log: Option<usize>,
    snapshot_every: Option<u64>,
}

/// `[auth]`: who connects to `/ws`. Without it every connection is anonymous.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthSection {
    /// HS256 secret: tokens from `Authorization: Bearer`, `?token=` or a `bearer.` subprotocol.
    jwt_secret: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    /// The header API keys come in (default `x-api-key`).
    api_key_header: Option<String>,
    api_keys: Vec<ApiKeyEntry>,
    /// Without `jwt_secret` or `api_keys`: take the user id from this query parameter,
    /// unchecked (`/ws?user=alice`; the demo's sign-in, for loopback and trusted networks).
    /// Empty: anonymous connections.
    query_user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    key: String,
    user: String,
    #[serde(default)]
    permissions: Vec<String>,
}

/// `[presence]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PresenceSection {
    grace_ms: Option<u64>,
    /// 0: connections alone count.
    heartbeat_timeout_ms: Option<u64>,
    /// 0: custom statuses stay.
    status_expiration_ms: Option<u64>,
    client_may_set: Option<bool>,
}

/// `[notifications]`: per-user inboxes in the store (opening it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NotificationsSection {
    enabled: Option<bool>,
    max_per_user: Option<usize>,
    /// 0: kept until evicted.
    ttl_ms: Option<u64>,
}

/// `[proxy]`: when present, every path is relayed to a backend (reverse-proxy mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ProxySection {
    /// `ws://host:port` URLs.
    backends: Vec<String>,
    /// "ip-hash" (default), "round-robin", "least-connections" or "weighted".
    strategy: Option<String>,
    /// One weight per backend (default 1 each).
    weights: Option<Vec<u32>>,
    /// Active health checks: `GET <path>` every `health_interval_ms` (0: passive only).
    health_path: Option<String>,
    health_interval_ms: Option<u64>,
    health_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    /// Bytes of client messages held per connection while its backend does not read.
    queue_limit: Option<usize>,
    /// How long a backend may take to take one held message before the client gets 4001.
    drain_timeout_ms: Option<u64>,
}

/// The proxy of a `[proxy]` section, and whether active health checks should run.
fn build_proxy(
    p: &ProxySection,
) -> Result<
    (
        edge_ws_server::proxy::Proxy,
        Option<edge_ws_client::Backends>,
    ),
    String,
> {
    use edge_ws_client::{Backend, Backends, ClientBuilder, HealthConfig, Strategy};
    if p.backends.is_empty() {
        return Err("proxy.backends: at least one ws:// URL".into());
    }
    let strategy = match p.strategy.as_deref().unwrap_or("ip-hash") {
        "ip-hash" => Strategy::IpHash,
        "round-robin" => Strategy::RoundRobin,
        "least-connections" => Strategy::LeastConnections,
        "weighted" => Strategy::WeightedRoundRobin,
        other => {
            return Err(format!(
                "proxy.strategy: \"ip-hash\", \"round-robin\", \"least-connections\" or \"weighted\", got {other:?}"
            ))
        }
    };
    if let Some(w) = &p.weights {
        if w.len() != p.backends.len() {
            return Err(format!(
                "proxy.weights: {} weights for {} backends",
                w.len(),
                p.backends.len()
            ));
        }
    }
    let connect = ms(p.connect_timeout_ms.unwrap_or(2000));
    let client = ClientBuilder::new()
        .deflate(None)
        .connect_timeout(connect)
        .handshake_timeout(connect);
    let interval = p.health_interval_ms.unwrap_or(2000);
    let mut health = HealthConfig::default();
    if let Some(path) = &p.health_path {
        health.path = path.clone();
    }
    if let Some(t) = p.health_timeout_ms {
        health.timeout = ms(t);
    }
    health.interval = ms(interval.max(1));
    let mut b = Backends::builder().strategy(strategy).client(client);
    if interval > 0 {
        b = b.health(health);
    }
    for (i, url) in p.backends.iter().enumerate() {
        let mut backend =
            Backend::new(url.as_str()).map_err(|e| format!("proxy.backends: {url}: {e}"))?;
        if let Some(w) = &p.weights {
            backend = backend.weight(w[i]);
        }
        b = b.backend(backend);
    }
    let backends = b.build().map_err(|e| format!("proxy: {e}"))?;
    let mut cfg = edge_ws_server::proxy::ProxyConfig::default();
    cfg.queue_limit = p.queue_limit.unwrap_or(cfg.queue_limit);
    if let Some(v) = p.drain_timeout_ms {
        cfg.drain_timeout = ms(v);
    }
    let checks = (interval > 0).then(|| backends.clone());
    Ok((edge_ws_server::proxy::Proxy::new(backends, cfg), checks))
}

/// Runs the proxy's active health checks on a thread of their own until the process ends.
fn start_health_checks(backends: edge_ws_client::Backends) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("health checks: {e}")))?;
    std::thread::Builder::new()
        .name("edge-ws-health".into())
        .spawn(move || {
            rt.block_on(async move {
                let _checks = backends.start_health_checks();
                std::future::pending::<()>().await
            })
        })
        .map_err(|e| Failure::Runtime(format!("health checks: {e}")))?;
    Ok(())
}

/// `[channels]`: the default namespace's policy and the naming rules;
/// `[[channels.namespace]]`: per-prefix policies.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ChannelsSection {
    max_name_len: Option<usize>,
    max_history_read: Option<usize>,
    #[serde(flatten)]
    default: PolicySection,
    namespace: Vec<NamespaceSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PolicySection {
    /// Who may subscribe (and read history): "anyone" (default), "users" (authenticated)
    /// or a permission name the user must hold.
    subscribe: Option<String>,
    /// Who may publish: the same choices.
    publish: Option<String>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    history_size: Option<usize>,
    /// 0: no time limit.
    history_ttl_ms: Option<u64>,
    persist: Option<bool>,
    idempotency_window_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceSection {
    prefix: String,
    #[serde(flatten)]
    policy: PolicySection,
}

/// `[store]`: where persistent channels live (opened only if a namespace persists).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StoreSection {
    dir: Option<std::path::PathBuf>,
    /// "fsync" (default) or "buffered".
    durability: Option<String>,
}

impl PolicySection {
    fn apply(&self, mut p: ChannelPolicy) -> ChannelPolicy {
        p.history_size = self.history_size.unwrap_or(p.history_size);
        if let Some(v) = self.history_ttl_ms {
            p.history_ttl = (v > 0).then(|| ms(v));
        }
        p.persist = self.persist.unwrap_or(p.persist);
        p.presence = self.presence.unwrap_or(p.presence);
        p.join_leave = self.join_leave.unwrap_or(p.join_leave);
        if let Some(v) = self.idempotency_window_ms {
            p.idempotency_window = ms(v);
        }
        p
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerSection {
    addr: Option<SocketAddr>,
    /// "all", a count, or a list of core ids.
    cores: Option<CoresValue>,
    pin: Option<bool>,
    subprotocols: Option<Vec<String>>,
    /// Prometheus endpoint path ("" turns it off).
    metrics_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CoresValue {
    Named(String),
    Count(usize),
    List(Vec<usize>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct IoSection {
    ring_entries: Option<u32>,
    buf_count: Option<u16>,
    buf_size: Option<u32>,
    incremental: Option<bool>,
    backlog: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    max_connections: Option<usize>,
    /// Per authenticated user, over every core (0: unlimited).
    max_connections_per_user: Option<u32>,
    /// Per client address (0: unlimited).
    max_connections_per_ip: Option<u32>,
    max_message_size: Option<usize>,
    max_frame_size: Option<usize>,
    max_fragments: Option<usize>,
    write_buffer_limit: Option<usize>,
    /// "close" or "drop".
    slow_consumer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TimeoutsSection {
    handshake_ms: Option<u64>,
    /// 0 disables heartbeats.
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    /// 0 disables the idle timeout.
    idle_ms: Option<u64>,
    close_ms: Option<u64>,
    drain_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CompressionSection {
    enabled: Option<bool>,
    threshold: Option<usize>,
    level: Option<u32>,
    server_no_context_takeover: Option<bool>,
    client_no_context_takeover: Option<bool>,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<u8>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn apply(file: FileConfig, c: &mut Config) -> Result<(), String> {
    let s = file.server;
    if let Some(a) = s.addr {
        c.addr = a;
    }
    if let Some(v) = s.cores {
        c.cores = match v {
            CoresValue::Named(n) if n == "all" => Cores::All,
            CoresValue::Named(n) => {
                return Err(format!(
                    "server.cores: expected \"all\", a number or a list, got {n:?}"
                ))
            }
            CoresValue::Count(n) => Cores::Count(n),
            CoresValue::List(l) => Cores::List(l),
        };
    }
    if let Some(p) = s.pin {
        c.pin = p;
    }
    if let Some(p) = s.subprotocols {
        c.subprotocols = p;
    }
    if let Some(p) = s.metrics_path {
        c.metrics_path = (!p.is_empty()).then_some(p);
    }
    let io = file.io;
    c.io.ring_entries = io.ring_entries.unwrap_or(c.io.ring_entries);
    c.io.buf_count = io.buf_count.unwrap_or(c.io.buf_count);
    c.io.buf_size = io.buf_size.unwrap_or(c.io.buf_size);
    c.io.buf_incremental = io.incremental.unwrap_or(c.io.buf_incremental);
    c.io.backlog = io.backlog.unwrap_or(c.io.backlog);
    let l = file.limits;
    c.max_connections = l.max_connections.unwrap_or(c.max_connections);
    c.max_message_size = l.max_message_size.unwrap_or(c.max_message_size);
    c.max_frame_size = l.max_frame_size.unwrap_or(c.max_frame_size);
    c.max_fragments = l.max_fragments.unwrap_or(c.max_fragments);
    c.write_buffer_limit = l.write_buffer_limit.unwrap_or(c.write_buffer_limit);
    if let Some(p) = l.slow_consumer {
        c.slow_consumer = match p.as_str() {
            "close" => SlowConsumerPolicy::Close,
            "drop" => SlowConsumerPolicy::DropNewest,
            other => {
                return Err(format!(
                    "limits.slow_consumer: \"close\" or \"drop\", got {other:?}"
                ))
            }
        };
    }
    let t = file.timeouts;
    if let Some(v) = t.handshake_ms {
        c.handshake_timeout = ms(v);
    }
    if let Some(v) = t.heartbeat_interval_ms {
        c.heartbeat_interval = (v > 0).then(|| ms(v));
    }
    if let Some(v) = t.heartbeat_timeout_ms {
        c.heartbeat_timeout = ms(v);
    }
    if let Some(v) = t.idle_ms {
        c.idle_timeout = (v > 0).then(|| ms(v));
    }
    if let Some(v) = t.close_ms {
        c.close_timeout = ms(v);
    }
    if let Some(v) = t.drain_ms {
        c.drain_timeout = ms(v);
    }
    let z = file.compression;
    if z.enabled.unwrap_or(false) {
        let mut d = DeflateConfig::default();
        d.threshold = z.threshold.unwrap_or(d.threshold);
        d.level = z.level.unwrap_or(d.level);
        d.server_no_context_takeover = z
            .server_no_context_takeover
            .unwrap_or(d.server_no_context_takeover);
        d.client_no_context_takeover = z
            .client_no_context_takeover
            .unwrap_or(d.client_no_context_takeover);
        d.server_max_window_bits = z.server_max_window_bits.unwrap_or(d.server_max_window_bits);
        d.client_max_window_bits = z.client_max_window_bits.unwrap_or(d.client_max_window_bits);
        d.max_inflated_message = c.max_message_size;
        c.deflate = Some(d);
    }
    let ch = file.channels;
    c.channels.max_name_len = ch.max_name_len.unwrap_or(c.channels.max_name_len);
    c.channels.max_history_read = ch.max_history_read.unwrap_or(c.channels.max_history_read);
    c.channels.default = ch.default.apply(c.channels.default.clone());
    for ns in ch.namespace {
        let policy = ns.policy.apply(c.channels.default.clone());
        c.channels = std::mem::take(&mut c.channels).namespace(ns.prefix, policy);
    }
    apply_tls(file.tls, c)
}

/// Reloads the TLS certificates when one of their files changes (checked every 5 s): new
/// handshakes get the new certificates, open connections keep their sessions. Files that do
/// not load (a key that no longer matches while only one of the pair was replaced) are
/// logged and the certificates in use stay.
#[cfg(feature = "tls")]
fn watch_certificates(
    addr: SocketAddr,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    sni: Vec<SniSection>,
    reloader: edge_ws::tls::CertificateReloader,
) {
    let files: Vec<std::path::PathBuf> = [cert.clone(), key.clone()]
        .into_iter()
        .chain(sni.iter().flat_map(|s| [s.cert.clone(), s.key.clone()]))
        .collect();
    let stamp = move || -> Vec<Option<std::time::SystemTime>> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = stamp();
    let spawned = std::thread::Builder::new()
        .name("edge-ws-tls-reload".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            let now = stamp();
            if now == last {
                continue;
            }
            last = now;
            let loaded = edge_ws::tls::TlsConfig::from_pem_files(addr, &cert, &key).and_then(|t| {
                sni.iter()
                    .try_fold(t, |t, s| t.sni_pem_files(&s.name, &s.cert, &s.key))
            });
            match loaded {
                Ok(t) => {
                    reloader.reload(&t);
                    tracing::info!("TLS certificates reloaded");
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "TLS certificate files changed but do not load; the old ones stay"
                ),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "TLS certificate reload thread did not start");
    }
}

/// `[tls]` onto the engine's configuration (certificates are read here, so a bad file is a
/// start error naming it).
fn apply_tls(t: TlsSection, c: &mut Config) -> Result<(), String> {
    let Some(addr) = t.addr else {
        if t.cert.is_some() || t.key.is_some() || !t.sni.is_empty() {
            return Err("tls: certificates need tls.addr, the TLS listener's address".into());
        }
        return Ok(());
    };
    #[cfg(feature = "tls")]
    {
        let (Some(cert), Some(key)) = (t.cert, t.key) else {
            return Err("tls.addr needs tls.cert and tls.key (PEM files)".into());
        };
        let mut tls = edge_ws::tls::TlsConfig::from_pem_files(addr, &cert, &key)
            .map_err(|e| format!("tls: {e}"))?;
        for s in &t.sni {
            tls = tls
                .sni_pem_files(&s.name, &s.cert, &s.key)
                .map_err(|e| format!("tls.sni: {e}"))?;
        }
        if let Some(n) = t.max_handshakes_per_core {
            tls = tls.max_handshakes_per_core(n);
        }
        watch_certificates(addr, cert, key, t.sni, tls.reloader());
        c.tls = Some(tls);
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (addr, c);
        Err("tls.addr: this edge-ws was built without its `tls` feature".into())
    }
}

/// Opens the store if a namespace persists: the stream store and the streams to continue.
fn open_store(
    section: &StoreSection,
    channels: &ChannelConfig,
    notifications: bool,
) -> Result<Option<(StoreHandle, Vec<RestoredStream>)>, Failure> {
    let persists = channels.default.persist || channels.namespaces.iter().any(|(_, p)| p.persist);
    if !persists && !notifications {
        return Ok(None);
    }
    let durability = match section.durability.as_deref() {
        None | Some("fsync") => Durability::Fsync,
        Some("buffered") => Durability::Buffered,
        Some(other) => {
            return Err(
                format!("store.durability: \"fsync\" or \"buffered\", got {other:?}").into(),
            )
        }
    };
    let dir = section
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("edge-ws-data"));
    let store = Store::open(&dir, StoreOptions::default().durability(durability))
        .map_err(|e| Failure::Runtime(format!("store {}: {e}", dir.display())))?;
    let restored = restore_streams(&store, channels)
        .map_err(|e| Failure::Runtime(format!("store {}: {e}", dir.display())))?;
    tracing::info!(
        dir = %dir.display(),
        channels = restored.len(),
        "store open: persistent channels restored"
    );
    Ok(Some((store, restored)))
}

/// Publications in the JSON envelope, except on the demo relay's channel (raw frames by design).
struct ProductFormat;

impl PublicationFormat for ProductFormat {
    fn encode(
        &self,
        channel: &str,
        position: StreamPosition,
        payload: &[u8],
        kind: MessageKind,
        out: &mut Vec<u8>,
    ) -> Option<MessageKind> {
        if channel == TOPIC {
            return None;
        }
        EnvelopeFormat.encode(channel, position, payload, kind, out)
    }
}

/// `[auth]` as the manager's authentication: JWT, API keys, or else (with `query_user`) users
/// named by a query parameter, unchecked (the demo's sign-in).
fn auth(a: &AuthSection) -> Result<Auth, Failure> {
    match (&a.jwt_secret, a.api_keys.is_empty()) {
        (Some(_), false) => Err("auth: configure jwt_secret or api_keys, not both".into()),
        (Some(secret), true) => {
            let mut j = JwtAuth::hs256(secret.as_bytes()).sources([
                TokenSource::BearerHeader,
                TokenSource::Query("token".into()),
                TokenSource::Protocol("bearer.".into()),
            ]);
            if let Some(i) = &a.jwt_issuer {
                j = j.issuer(i.clone());
            }
            if let Some(aud) = &a.jwt_audience {
                j = j.audience(aud.clone());
            }
            Ok(Auth::jwt(j))
        }
        (None, false) => {
            let keys: std::collections::HashMap<String, (String, Vec<String>)> = a
                .api_keys
                .iter()
                .map(|k| (k.key.clone(), (k.user.clone(), k.permissions.clone())))
                .collect();
            let header = a
                .api_key_header
                .clone()
                .unwrap_or_else(|| "x-api-key".into());
            Ok(Auth::api_key(ApiKeyAuth::new(
                header,
                move |key, _| match keys.get(key) {
                    Some((user, perms)) => Ok(UserContext::new(user.as_str())
                        .with_permissions(perms.iter().map(String::as_str))),
                    None => Err(AuthRejection::of(RejectReason::InvalidApiKey)),
                },
            )))
        }
        (None, true) if a.query_user.as_deref().is_some_and(|q| !q.is_empty()) => {
            let param: std::sync::Arc<str> = a.query_user.as_deref().unwrap_or("user").into();
            Ok(named_by_query(param))
        }
        (None, true) => Ok(Auth::None),
    }
}

/// Users named by `?<param>=`, unchecked; they may notify each other (the demo page turns
/// @mentions into notifications).
fn named_by_query(param: std::sync::Arc<str>) -> Auth {
    Auth::validator(move |info| {
        let param = param.clone();
        async move {
            match info.request.query_param(&param) {
                // Demo users may notify each other (the page turns @mentions into notifications).
                Some(u) if is_demo_name(u) => {
                    Ok(UserContext::new(u).with_permissions(["notifications:send"]))
                }
                Some(_) => Err(AuthRejection::unauthorized(
                    "user names are 1 to 32 letters, digits, '-', '_' or '.'",
                )),
                None => Err(AuthRejection::unauthorized(format!(
                    "sign in with ?{param}=<name>"
                ))),
            }
        }
    })
}

fn is_demo_name(u: &str) -> bool {
    (1..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Who may do something on a channel (`subscribe`/`publish` in a namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Anyone,
    Users,
    Nobody,
    Permission(String),
}

impl Who {
    fn parse(key: &str, v: Option<&str>) -> Result<Who, String> {
        match v {
            None | Some("anyone") => Ok(Who::Anyone),
            Some("users") => Ok(Who::Users),
            Some("nobody") => Ok(Who::Nobody),
            Some(p) => match p.strip_prefix("permission:") {
                Some(name) if !name.is_empty() => Ok(Who::Permission(name.to_string())),
                _ => Err(format!(
                    "{key}: \"anyone\", \"users\", \"nobody\" or \"permission:<name>\", got {p:?}"
                )),
            },
        }
    }

    fn allows(&self, user: Option<&UserContext>) -> bool {
        match self {
            Who::Anyone => true,
            Who::Users => user.is_some(),
            Who::Nobody => false,
            Who::Permission(p) => user.is_some_and(|u| u.has_permission(p)),
        }
    }
}

/// The channel routes' access check from `subscribe`/`publish` of `[channels]` and each
/// `[[channels.namespace]]` (the longest matching prefix decides, as for the policies).
fn channel_access(ch: &ChannelsSection) -> Result<ChannelAccess, String> {
    let rule = |what: &str, p: &PolicySection| -> Result<(Who, Who), String> {
        Ok((
            Who::parse(&format!("{what}.subscribe"), p.subscribe.as_deref())?,
            Who::parse(&format!("{what}.publish"), p.publish.as_deref())?,
        ))
    };
    let default = rule("channels", &ch.default)?;
    let mut spaces = Vec::with_capacity(ch.namespace.len());
    for ns in &ch.namespace {
        let r = rule(&format!("channels.namespace {:?}", ns.prefix), &ns.policy)?;
        // A namespace without its own rules inherits the default's.
        let sub = if ns.policy.subscribe.is_some() {
            r.0
        } else {
            default.0.clone()
        };
        let publ = if ns.policy.publish.is_some() {
            r.1
        } else {
            default.1.clone()
        };
        spaces.push((ns.prefix.clone(), (sub, publ)));
    }
    Ok(std::sync::Arc::new(move |user, channel, op| {
        let (sub, publ) = spaces
            .iter()
            .filter(|(p, _)| channel.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(&default, |(_, r)| r);
        let (who, verb) = match op {
            ChannelOp::Publish => (publ, "publish to"),
            _ => (sub, "subscribe to"),
        };
        if who.allows(user) {
            Ok(())
        } else {
            Err(format!("not allowed to {verb} {channel}"))
        }
    }))
}

/// A `[rate_limit]` pair: none when the rate is absent or 0.
fn rate_limit(per_second: &Option<f64>, burst: Option<u32>) -> Result<Option<RateLimit>, String> {
    match *per_second {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(r) if r.is_finite() && r > 0.0 => {
            let burst = burst.unwrap_or_else(|| (r.ceil() as u32).max(1));
            Ok(Some(RateLimit::new().messages(r, burst.max(1))))
        }
        Some(r) => Err(format!(
            "rate_limit: a rate is a positive number of messages per second, got {r}"
        )),
    }
}

/// Starts `[http_api]` when enabled (a random key when none is configured, logged).
fn start_http_api(a: &HttpApiSection, manager: &Manager) -> Result<Option<HttpApi>, Failure> {
    if !a.enabled.unwrap_or(false) {
        return Ok(None);
    }
    let addr = a
        .addr
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9002)));
    let mut keys = a.keys.clone();
    if keys.is_empty() {
        let key = random_key().map_err(|e| Failure::Runtime(format!("http_api: {e}")))?;
        tracing::info!(key = %key, "http_api: no keys configured; this run's key");
        keys.push(key);
    }
    let mut c = HttpApiConfig::new(addr, keys);
    c.max_body = a.max_body.unwrap_or(c.max_body);
    let api = HttpApi::start(manager.clone(), c)
        .map_err(|e| Failure::Runtime(format!("http_api on {addr}: {e}")))?;
    tracing::info!(addr = %api.local_addr(), "HTTP API on http://{}/api/", api.local_addr());
    Ok(Some(api))
}

/// 128 random bits as hex.
fn random_key() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn presence_config(p: &PresenceSection) -> PresenceConfig {
    let mut c = PresenceConfig::default();
    if let Some(v) = p.grace_ms {
        c.grace = ms(v);
    }
    if let Some(v) = p.heartbeat_timeout_ms {
        c.heartbeat_timeout = (v > 0).then(|| ms(v));
    }
    if let Some(v) = p.status_expiration_ms {
        c.status_expiration = (v > 0).then(|| ms(v));
    }
    c.client_may_set = p.client_may_set.unwrap_or(c.client_may_set);
    c
}

/// The paths of the JSON envelope protocol (docs/PROTOCOL.md): the connection manager with
/// the built-in channel routes.
fn is_envelope_path(path: &str) -> bool {
    path == "/ws" || path.starts_with("/ws/")
}

/// `/ws`: the manager and its channel routes; every other path: the demo.
struct Product {
    /// Serve the demo page at `/`.
    page: bool,
    store: Option<StoreHandle>,
    manager: Manager,
    /// The engine's metrics path, answered here with the server's series added.
    metrics_path: Option<String>,
    api: Option<std::sync::Arc<HttpApi>>,
    ws: ManagerHandler<Router>,
}

/// The demo page's files (engine/server/static), compiled in.
const PAGE_FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    ),
    (
        "/demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/demo.js"),
    ),
    (
        "/ot.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/ot.js"),
    ),
    (
        "/demo.css",
        "text/css; charset=utf-8",
        include_str!("../../static/demo.css"),
    ),
];

impl Product {
    /// `GET /health`: the engine, the manager and the store.
    fn health(&self) -> HttpResponse {
        let h = self.manager.engine();
        let mut body = format!(
            r#"{{"status":"ok","cores":{},"connections":{},"users_online":{}"#,
            h.map_or(0, |h| h.cores()),
            h.map_or(0, |h| h.connections()),
            self.manager.users_online(),
        );
        if let Some(store) = &self.store {
            let s = store.stats();
            body.push_str(&format!(
                r#","store":{{"path":{},"commits":{},"failed_commits":{},"io_errors":{},"queue_depth":{},"commit_p99_us":{}}}"#,
                serde_json::to_string(&store.path().display().to_string()).unwrap_or_default(),
                s.commits,
                s.failed_commits,
                s.io_errors,
                s.queue_depth,
                s.commit_latency.p99_us
            ));
        }
        // In cluster mode: the broker's state; 503 while it cannot reach Redis.
        let broker = h.and_then(|h| h.broker_state());
        if let Some((state, stats)) = &broker {
            body.push_str(",\"broker\":");
            body.push_str(&stats.health_json(*state));
        }
        body.push('}');
        let down = broker.is_some_and(|(s, _)| s != edge_ws::broker::BrokerState::Up);
        if down {
            body = body.replacen(r#""status":"ok""#, r#""status":"degraded""#, 1);
        }
        let mut r = HttpResponse::ok("application/json", body);
        if down {
            r.status = 503;
        }
        r
    }
}

impl Handler for Product {
    fn on_http(&mut self, request: &HttpRequest) -> Option<HttpResponse> {
        if request.method != "GET" {
            return None;
        }
        if request.path == "/health" {
            return Some(self.health());
        }
        if self.metrics_path.as_deref() == Some(request.path.as_str()) {
            let mut extra = edge_ws_server::prometheus::Extra::default();
            extra.store = self.store.clone();
            extra.http_api = self.api.as_ref().map(|a| a.stats());
            let body = edge_ws_server::prometheus::render(&self.manager, &extra);
            return Some(HttpResponse::ok("text/plain; version=0.0.4", body));
        }
        if !self.page {
            return None;
        }
        let (_, content_type, body) = PAGE_FILES.iter().find(|(p, _, _)| *p == request.path)?;
        Some(
            HttpResponse::ok(*content_type, body.as_bytes())
                .with_header("Cache-Control", "no-cache"),
        )
    }

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Upgrade {
        if is_envelope_path(&request.request.path) {
            self.ws.on_upgrade(request)
        } else {
            Upgrade::Accept(None)
        }
    }

    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        match DemoRoute::of(socket.path()) {
            None => self.ws.on_open(socket),
            Some(DemoRoute::Subscriber) => {
                socket.subscribe(TOPIC);
            }
            Some(_) => {}
        }
    }

    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        match DemoRoute::of(socket.path()) {
            None => self.ws.on_message(socket, message),
            Some(route) => {
                if !route.relayed(socket, message.payload(), MessageKind::of(&message)) {
                    let _ = socket.send(message);
                }
            }
        }
    }

    fn on_message_view(&mut self, socket: &mut Socket<'_, '_>, message: MessageView<'_>) {
        // One look at the path per message (the echo's whole decision).
        match DemoRoute::of(socket.path()) {
            None => self.ws.on_message_view(socket, message),
            Some(route) => {
                if !route.relayed(socket, message.payload(), MessageKind::of_view(&message)) {
                    let _ = socket.send(message);
                }
            }
        }
    }

    fn on_close(&mut self, socket: &mut Socket<'_, '_>, code: edge_ws::CloseCode, reason: &str) {
        if is_envelope_path(socket.path()) {
            self.ws.on_close(socket, code, reason)
        }
    }
}

/// The demo's topic: `/sub` connections subscribe, `/pub` connections publish to it.
const TOPIC: &str = "broadcast";

/// What the demo does with a message on a path (`None` from [`DemoRoute::of`]: the path is
/// the manager's).
#[derive(Clone, Copy)]
enum DemoRoute {
    /// `/pub`: published to the topic.
    Publish,
    /// `/sub`: ignored.
    Subscriber,
    /// Anything else: echoed.
    Echo,
}

impl DemoRoute {
    fn of(path: &str) -> Option<DemoRoute> {
        match path {
            "/pub" => Some(DemoRoute::Publish),
            "/sub" => Some(DemoRoute::Subscriber),
            p if is_envelope_path(p) => None,
            _ => Some(DemoRoute::Echo),
        }
    }

    /// Publishes or ignores the message; false: echo it.
    fn relayed(self, socket: &mut Socket<'_, '_>, payload: &[u8], kind: MessageKind) -> bool {
        match self {
            DemoRoute::Publish => {
                socket.publish_with(TOPIC, payload, kind, Default::default());
                true
            }
            DemoRoute::Subscriber => true,
            DemoRoute::Echo => false,
        }
    }
}

/// How `run` failed: the command line or configuration (exit 2), or the server (exit 1).
enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Usage(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure::Usage(s.to_string())
    }
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(Failure::Usage(e)) => {
            eprintln!("edge-ws: {e}");
            std::process::exit(2);
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!("{e}");
            eprintln!("edge-ws: {e}");
            std::process::exit(1);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber: `RUST_LOG` directives (`target=level,...`), `info` by default.
fn init_logs(format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter: Targets = if spec.trim().is_empty() {
        Targets::new().with_default(tracing::Level::INFO)
    } else {
        spec.parse()
            .map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
    };
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => registry.with(fmt.with_ansi(false)).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// One log line with every non-zero counter.
fn log_counters(handle: &edge_ws::EngineHandle, what: &str) {
    let m = handle.metrics();
    let fields: Vec<String> = m
        .fields()
        .into_iter()
        .filter(|&(_, v)| v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(connections = handle.connections(), counters = %fields.join(" "), "{what}");
}

fn run() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let mut config_path = None;
    let mut addr = None;
    let mut cores = None;
    let mut print = false;
    let mut data_dir: Option<String> = None;
    let mut api_addr: Option<Option<SocketAddr>> = None;
    let mut log_format = LogFormat::Text;
    let mut stats_interval = Duration::from_secs(60);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            "-V" | "--version" => {
                println!("edge-ws {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            "--log-format" => {
                log_format = match args.next().as_deref() {
                    Some("text") => LogFormat::Text,
                    Some("json") => LogFormat::Json,
                    other => {
                        return Err(format!("--log-format: text or json, got {other:?}").into())
                    }
                }
            }
            "--stats-interval" => {
                let v = args.next().ok_or("--stats-interval needs seconds")?;
                stats_interval = Duration::from_secs(
                    v.parse::<u64>()
                        .map_err(|e| format!("--stats-interval {v}: {e}"))?,
                );
            }
            "-c" | "--config" => config_path = Some(args.next().ok_or("--config needs a file")?),
            "-a" | "--addr" => {
                let v = args.next().ok_or("--addr needs HOST:PORT")?;
                addr = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--addr {v}: {e}"))?,
                );
            }
            "--cores" => {
                let v = args.next().ok_or("--cores needs a number")?;
                cores = Some(
                    v.parse::<usize>()
                        .map_err(|e| format!("--cores {v}: {e}"))?,
                );
            }
            "--print-config" => print = true,
            "--data-dir" => data_dir = Some(args.next().ok_or("--data-dir needs a directory")?),
            "--api-addr" => {
                let v = args.next().ok_or("--api-addr needs HOST:PORT or off")?;
                api_addr = Some(if v == "off" {
                    None
                } else {
                    Some(
                        v.parse::<SocketAddr>()
                            .map_err(|e| format!("--api-addr {v}: {e}"))?,
                    )
                });
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    let mut merged: toml::Value =
        toml::from_str(DEFAULT_CONFIG).map_err(|e| format!("the built-in configuration: {e}"))?;
    if let Some(path) = &config_path {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let over: toml::Value = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        merge(&mut merged, over);
    }
    // The command line wins over the files.
    if let Some(table) = merged.as_table_mut() {
        let server = table
            .entry("server")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let Some(server) = server.as_table_mut() {
            if let Some(a) = addr {
                server.insert("addr".into(), toml::Value::String(a.to_string()));
            }
            if let Some(n) = cores {
                server.insert("cores".into(), toml::Value::Integer(n as i64));
            }
        }
        let mut set = |section: &str, key: &str, v: toml::Value| {
            if let Some(t) = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
            {
                t.insert(key.into(), v);
            }
        };
        if let Some(d) = data_dir {
            set("store", "dir", toml::Value::String(d));
        }
        match api_addr {
            Some(Some(a)) => set("http_api", "addr", toml::Value::String(a.to_string())),
            Some(None) => set("http_api", "enabled", toml::Value::Boolean(false)),
            None => {}
        }
    }
    if print {
        print!(
            "{}",
            toml::to_string_pretty(&merged).map_err(|e| format!("--print-config: {e}"))?
        );
        return Ok(());
    }
    let source = config_path.as_deref().unwrap_or("the configuration");
    let mut file: FileConfig = merged
        .try_into()
        .map_err(|e: toml::de::Error| format!("{source}: {e}"))?;
    let store_section = std::mem::take(&mut file.store);
    let proxy_section = file.proxy.take();
    let auth_section = std::mem::take(&mut file.auth);
    let presence_section = std::mem::take(&mut file.presence);
    let notify_section = std::mem::take(&mut file.notifications);
    let docs_section = std::mem::take(&mut file.documents);
    let demo_section = std::mem::take(&mut file.demo);
    let api_section = std::mem::take(&mut file.http_api);
    let rate_section = std::mem::take(&mut file.rate_limit);
    let cluster_section = std::mem::take(&mut file.cluster);
    let manager_limits = (
        file.limits.max_connections_per_user.unwrap_or(0),
        file.limits.max_connections_per_ip.unwrap_or(0),
    );
    let access = channel_access(&file.channels)?;
    let mut cfg = Config::default();
    apply(file, &mut cfg)?;
    cfg.validate().map_err(|e| e.to_string())?;
    init_logs(log_format)?;
    edge_ws::runtime::os::block_termination_signals();
    if let Some(p) = &proxy_section {
        return run_proxy(p, cfg, stats_interval);
    }
    let notify = notify_section.enabled.unwrap_or(false);
    let docs = docs_section.enabled.unwrap_or(false);
    let store = open_store(&store_section, &cfg.channels, notify || docs)?;
    let mut builder = Engine::builder()
        .config(cfg)
        .publication_format(std::sync::Arc::new(ProductFormat));
    if let Some((store, restored)) = &store {
        builder = builder
            .stream_store(std::sync::Arc::new(StoreStreams::new(store.clone())))
            .restore_streams(restored.clone());
    }
    builder = with_cluster(builder, &cluster_section)?;
    let demo = demo_section.enabled.unwrap_or(false);
    let mut mb = Manager::builder()
        .auth(auth(&auth_section)?)
        .presence(presence_config(&presence_section));
    if manager_limits.0 > 0 {
        mb = mb.max_connections_per_user(manager_limits.0);
    }
    if manager_limits.1 > 0 {
        mb = mb.max_connections_per_ip(manager_limits.1);
    }
    if let Some(r) = rate_limit(
        &rate_section.messages_per_second,
        rate_section.messages_burst,
    )? {
        mb = mb.rate_limit(r);
    }
    if let Some(r) = rate_limit(
        &rate_section.user_messages_per_second,
        rate_section.user_messages_burst,
    )? {
        mb = mb.user_rate_limit(r);
    }
    if let (true, Some((store, _))) = (notify, &store) {
        let mut nc = NotificationConfig::default();
        nc.max_per_user = notify_section.max_per_user.unwrap_or(nc.max_per_user);
        if let Some(t) = notify_section.ttl_ms {
            nc.ttl = (t > 0).then(|| ms(t));
        }
        mb = mb.notifications(Notifications::start(store.clone(), nc));
    }
    let manager = mb.build();
    let m = manager.clone();
    let store_handle = store.as_ref().map(|(s, _)| s.clone());
    // Before the engine: a call arriving before it is attached is answered 503.
    let api = start_http_api(&api_section, &manager)?.map(std::sync::Arc::new);
    let api_handle = api.clone();
    let metrics_path = builder.config_ref().metrics_path.clone();
    let engine = builder
        .build(move |_core| Product {
            page: demo,
            store: store_handle.clone(),
            manager: m.clone(),
            metrics_path: metrics_path.clone(),
            api: api_handle.clone(),
            ws: m.handler(Router::new().channels_with(access.clone())),
        })
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    manager.attach(engine.handle());
    manager.start_presence_sweeper();
    if let (true, Some((store, _))) = (docs, &store) {
        let mut dc = DocumentConfig::default();
        dc.max_len = docs_section.max_len.unwrap_or(dc.max_len);
        dc.max_log = docs_section.max_log.unwrap_or(dc.max_log);
        dc.snapshot_every = docs_section.snapshot_every.unwrap_or(dc.snapshot_every);
        manager.start_documents(store.clone(), dc);
    }
    tracing::info!(
        addr = %engine.local_addr(),
        cores = engine.handle().cores(),
        version = env!("CARGO_PKG_VERSION"),
        "edge-ws listening on ws://{}",
        engine.local_addr()
    );
    if demo {
        tracing::info!("demo page on http://{}/", engine.local_addr());
    }
    if auth_section.jwt_secret.is_none()
        && auth_section.api_keys.is_empty()
        && auth_section
            .query_user
            .as_deref()
            .is_some_and(|q| !q.is_empty())
    {
        tracing::warn!(
            "auth.query_user: users sign in by name, unchecked; configure auth.jwt_secret or auth.api_keys before exposing this server"
        );
    }
    let result = serve(engine, stats_interval);
    if let Some((store, _)) = store {
        if let Err(e) = store.shutdown() {
            tracing::warn!(error = %e, "store shutdown");
        }
    }
    result.map_err(|_| Failure::Runtime("a core thread panicked".to_string()))
}

/// Runs `engine` until it stops: SIGINT/SIGTERM start the graceful shutdown, the counters are
/// logged every `stats_interval` (0: never) and at the end.
fn serve(engine: Engine, stats_interval: Duration) -> std::thread::Result<()> {
    if let Some(a) = engine.tls_local_addr() {
        tracing::info!(
            tls_addr = %a,
            ktls = edge_ws::runtime::os::ktls_available(),
            "edge-ws listening on wss://{a}"
        );
    }
    let handle = engine.handle();
    std::thread::spawn(move || {
        edge_ws::runtime::os::wait_for_termination();
        tracing::info!("signal received: shutting down");
        handle.shutdown();
    });
    if !stats_interval.is_zero() {
        let handle = engine.handle();
        std::thread::spawn(move || loop {
            std::thread::sleep(stats_interval);
            log_counters(&handle, "counters");
        });
    }
    let handle = engine.handle();
    let result = engine.join();
    log_counters(&handle, "stopped");
    result
}

/// Reverse-proxy mode (`[proxy]`): every path is relayed to a backend.
fn run_proxy(p: &ProxySection, mut cfg: Config, stats_interval: Duration) -> Result<(), Failure> {
    let (proxy, checks) = build_proxy(p)?;
    // Channels live on the backends: the proxy keeps none (nor the built-in namespaces).
    cfg.channels = ChannelConfig::default();
    let px = proxy.clone();
    let engine = Engine::builder()
        .config(cfg)
        .build(move |_core| px.handler())
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    proxy.attach(engine.handle());
    if let Some(backends) = checks {
        start_health_checks(backends)?;
    }
    tracing::info!(
        addr = %engine.local_addr(),
        backends = p.backends.len(),
        version = env!("CARGO_PKG_VERSION"),
        "edge-ws proxy listening on ws://{}",
        engine.local_addr()
    );
    let result = serve(engine, stats_interval);
    let s = proxy.stats();
    tracing::info!(
        connections = s.connections,
        refused = s.refused,
        to_backend = s.to_backend,
        to_client = s.to_client,
        backend_gone = s.backend_gone,
        slow = s.slow,
        "proxy stopped"
    );
    result.map_err(|_| Failure::Runtime("a core thread panicked".to_string()))
}

/// `[cluster]`: join the other edge-ws processes pointed at the same Redis (docs/CLUSTER.md;
/// needs the `cluster` feature).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ClusterSection {
    /// `redis://[user:password@]host:port[/db]`; no cluster without it.
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel (default `edge-ws`).
    prefix: Option<String>,
    /// How long a dead node's presence entries last (default 30000).
    presence_ttl_ms: Option<u64>,
}

/// The engine builder with the Redis broker of `[cluster]`, if it names a Redis.
fn with_cluster(
    builder: edge_ws::EngineBuilder,
    c: &ClusterSection,
) -> Result<edge_ws::EngineBuilder, Failure> {
    let Some(url) = &c.redis_url else {
        return Ok(builder);
    };
    #[cfg(feature = "cluster")]
    {
        let mut rc = edge_ws_cluster::RedisConfig::new(url.clone());
        if let Some(p) = &c.prefix {
            rc.prefix = p.clone();
        }
        if let Some(t) = c.presence_ttl_ms {
            rc.presence_ttl = ms(t.max(1));
        }
        let broker = edge_ws_cluster::RedisBroker::new(rc).map_err(|e| format!("[cluster] {e}"))?;
        tracing::info!(redis = %url, node = %format_args!("{:016x}", broker.node_id()), "cluster mode");
        Ok(builder.broker(std::sync::Arc::new(broker)))
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (builder, &c.prefix, c.presence_ttl_ms);
        Err(format!(
            "[cluster] redis_url = {url:?}, but this edge-ws was built without the `cluster` feature"
        )
        .into())
    }
}
