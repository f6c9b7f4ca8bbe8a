//! The Redis broker: one broker thread per process issuing commands on one connection, and
//! one reader thread blocked on the subscription connection.
//!
//! The cores never talk to Redis: they queue requests ([`Broker`] methods push into a
//! lock-free queue and return), the broker thread drains the queue and sends everything it
//! found as one pipeline (one round trip for a burst of publishes), and calls each request's
//! callback with its reply. A core's publications ([`Broker::publish_held`],
//! [`Broker::stream_append`]) wake the broker thread only at the core's [`Broker::flush`],
//! once per loop iteration, so what one read of a client brought is one pipeline.
//! Subscriptions go out on a second connection in subscriber mode, written by the broker
//! thread and read by the reader thread, which hands everything one read brought to the
//! engine's [`BrokerSink`] as one [`edge_ws::broker::Burst`] (so an inbound publication
//! reaches the cores without a second hop through the broker thread, and each core is woken
//! once per read).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use edge_ws::broker::{
    AppendAck, Broker, BrokerAck, BrokerEntry, BrokerError, BrokerSink, BrokerSnapshot,
    BrokerState, BrokerStats, Burst, LogAppendAck, LogRead, LogReadAck, PresenceAck,
    PresenceMember, StreamAppend,
};
use edge_ws::{MessageKind, Published, StreamPosition};
use redis::Value;

use crate::wire::{self, Inbound, Names, Resp};

/// Numbers a stream publication, keeps it and publishes it, atomically; returns
/// `{offset, epoch, duplicate}`.
/// KEYS: meta hash, history stream, Redis channel, and the idempotency key's key if the
/// publish has one. ARGV: a fresh epoch (used if the stream has none), MAXLEN, payload,
/// timestamp, kind, TTL in ms (0: none), the idempotency window in ms.
const APPEND: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then e = ARGV[1]; redis.call('HSET', KEYS[1], 'e', e) end
if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then return {tonumber(first), e, 1} end
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
if KEYS[4] then redis.call('SET', KEYS[4], o, 'PX', ARGV[7]) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], o .. '-0', 'p', ARGV[3], 't', ARGV[4], 'k', ARGV[5])
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('PUBLISH', KEYS[3], 'S' .. o .. ':' .. e .. ':' .. ARGV[4] .. ':' .. ARGV[5] .. ':' .. ARGV[3])
return {o, e, 0}
";

/// A stream's position and its newest kept publications, atomically.
/// KEYS: meta hash, history stream. ARGV: a fresh epoch (used if the stream has none), count.
const SYNC: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then e = ARGV[1]; redis.call('HSET', KEYS[1], 'e', e) end
local o = redis.call('HGET', KEYS[1], 'o') or '0'
return {o, e, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])}
";

/// Adds or refreshes a presence member. KEYS: expiry zset, info hash. ARGV: client, info,
/// expiry (ms since the epoch), key TTL (ms).
const PJOIN: &str = r"
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
";

/// Removes a presence member. KEYS: expiry zset, info hash. ARGV: client.
const PLEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Prunes expired members and lists the others. KEYS: expiry zset, info hash. ARGV: now (ms).
const PLIST: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
";

/// Appends to a sequenced log only as its next entry, and publishes the entry; returns
/// `{1, seq}`, or `{0, last}` when the log's last entry is not `seq - 1`.
/// KEYS: log stream, log meta hash, Redis channel. ARGV: seq, record, MAXLEN, message.
const LOG_APPEND: &str = r"
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local seq = tonumber(ARGV[1])
if last + 1 ~= seq then return {0, last} end
redis.call('HSET', KEYS[2], 'last', ARGV[1])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1] .. '-0', 'd', ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return {1, seq}
";

/// A sequenced log after an entry: `{last, snapshot seq, snapshot data or nil, entries}`.
/// From the snapshot when reading from the start (a load) or when the kept entries no longer
/// reach back to `after + 1`; else the entries after `after`.
/// KEYS: log stream, log meta hash. ARGV: after.
const LOG_READ: &str = r"
local m = redis.call('HMGET', KEYS[2], 'last', 'r', 'd')
local last = tonumber(m[1] or '0')
local sr = tonumber(m[2] or '0')
local from = tonumber(ARGV[1])
local xs = redis.call('XRANGE', KEYS[1], string.format('%d-0', from + 1), '+')
if sr > from then
  local first = xs[1] and tonumber(string.match(xs[1][1], '^(%d+)'))
  local reaches = (first == from + 1) or (first == nil and last <= from)
  if from == 0 or not reaches then
    return {last, sr, m[3], redis.call('XRANGE', KEYS[1], string.format('%d-0', sr + 1), '+')}
  end
end
return {last, 0, false, xs}
";

/// Stores a log's snapshot unless a newer one is stored; a snapshot beyond the log's last
/// entry (the log was lost, e.g. Redis restarted empty, and a node still had the snapshot to
/// write) makes it the last, so the next append follows it. KEYS: log meta hash. ARGV: seq,
/// data.
const LOG_SNAPSHOT: &str = r"
local seq = tonumber(ARGV[1])
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
if seq > r then redis.call('HSET', KEYS[1], 'r', ARGV[1], 'd', ARGV[2]) end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if seq > last then redis.call('HSET', KEYS[1], 'last', ARGV[1]) end
return 1
";

/// How the broker reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel (several clusters can share one Redis).
    pub prefix: String,
    /// First reconnect delay after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Connect, read and write timeout of a command.
    pub timeout: Duration,
    /// How long a presence entry outlives its node's last refresh (refreshed every third of
    /// it): a node that dies leaves the presence lists within this.
    pub presence_ttl: Duration,
}

impl RedisConfig {
    /// Defaults for `url`: prefix `edge-ws`, backoff 50 ms to 2 s, 2 s timeout, presence
    /// entries expiring 30 s after their node stopped refreshing them.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "edge-ws".into(),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(30),
        }
    }
}

enum Msg {
    Publish {
        channel: String,
        data: Vec<u8>,
        done: Option<BrokerAck>,
    },
    Broadcast(Vec<u8>),
    Interest(String),
    Append(StreamAppend, AppendAck),
    Sync {
        channel: String,
        max: usize,
    },
    /// The reader saw the subscription to a channel confirmed (for connection `gen`).
    Confirmed {
        channel: String,
        gen: u64,
    },
    /// The subscription connection `gen` broke.
    Lost(u64),
    PresenceJoin {
        channel: String,
        client: String,
        info: Vec<u8>,
    },
    PresenceLeave {
        channel: String,
        client: String,
    },
    PresenceList(String, PresenceAck),
    LogAppend {
        name: String,
        seq: u64,
        record: Vec<u8>,
        keep: usize,
        channel: String,
        done: LogAppendAck,
    },
    LogRead {
        name: String,
        after: u64,
        done: LogReadAck,
    },
    LogSnapshot {
        name: String,
        seq: u64,
        data: Vec<u8>,
    },
    Stop,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    echoes_ignored: AtomicU64,
    malformed: AtomicU64,
    subscriptions: AtomicU64,
    reconnects: AtomicU64,
    syncs: AtomicU64,
    unrouted: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct Inner {
    config: RedisConfig,
    names: Names,
    node: u64,
    state: AtomicU8,
    counters: Counters,
    /// The broker thread's requests, shared by every core and thread without a lock.
    tx: Arc<Inbox>,
    started: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Inner {
    /// Queues `msg` for the broker thread; `ring`: wake it now, otherwise at the next
    /// [`Inbox::flush`]. Answered with an error once the broker thread has stopped.
    fn send(&self, msg: Msg, ring: bool) {
        let stopped = || BrokerError::Unavailable("the broker stopped".into());
        if self.tx.closed.load(Ordering::Acquire) {
            return fail(self, msg, stopped);
        }
        self.tx.queue.push(msg);
        // Orders the push before the reads of `closed` and `parked` (the broker thread
        // writes those before it looks at the queue).
        fence(Ordering::SeqCst);
        if self.tx.closed.load(Ordering::Relaxed) {
            // The thread stopped meanwhile: answer what it did not take.
            while let Some(m) = self.tx.queue.pop() {
                fail(self, m, stopped);
            }
            return;
        }
        if ring {
            self.tx.ring();
        } else {
            // An RMW, so that whoever flushes it synchronises with this push.
            self.tx.held.swap(true, Ordering::AcqRel);
        }
    }
}

/// The broker thread's requests: a lock-free FIFO, and a doorbell (the thread parks when it
/// finds the queue empty).
#[derive(Default)]
struct Inbox {
    queue: SegQueue<Msg>,
    /// Requests were queued without ringing (a core's publications) since the last flush.
    held: AtomicBool,
    /// The broker thread is parked, or about to park.
    parked: AtomicBool,
    /// The broker thread stopped: requests are answered with an error.
    closed: AtomicBool,
    /// The broker thread (set by itself before it first parks).
    thread: OnceLock<std::thread::Thread>,
}

impl Inbox {
    /// Wakes the broker thread if it is parked (after a push and a fence).
    fn ring(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Rings for the requests queued without ringing, if any.
    fn flush(&self) {
        if self.held.load(Ordering::Relaxed) && self.held.swap(false, Ordering::AcqRel) {
            fence(Ordering::SeqCst);
            self.ring();
        }
    }

    /// The next request, waiting up to `wait` for one (on the broker thread only).
    fn recv_timeout(&self, wait: Duration) -> Option<Msg> {
        if let Some(m) = self.queue.pop() {
            return Some(m);
        }
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if let Some(m) = self.queue.pop() {
            self.parked.store(false, Ordering::Relaxed);
            return Some(m);
        }
        std::thread::park_timeout(wait);
        self.parked.store(false, Ordering::Relaxed);
        self.queue.pop()
    }

    /// Marks the broker thread stopped; the requests still queued are the caller's to answer.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

/// Most requests the broker thread sends as one pipeline.
const MAX_BATCH: usize = 1024;

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A [`Broker`] over Redis pub/sub, streams and Lua scripts (see the crate docs). Create one
/// per process and hand it to the engine with `EngineBuilder::broker`.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.config.url)
            .field("node", &format_args!("{:016x}", self.inner.node))
            .field("state", &self.state())
            .finish()
    }
}

impl RedisBroker {
    /// A broker for `config`; it connects when the engine starts it. Fails only on a URL the
    /// Redis client cannot read.
    pub fn new(config: RedisConfig) -> Result<Self, BrokerError> {
        redis::Client::open(config.url.as_str())
            .map_err(|e| BrokerError::Failed(format!("redis url: {e}")))?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                names: Names::new(&config.prefix),
                config,
                node: random_u64(),
                state: AtomicU8::new(CONNECTING),
                counters: Counters::default(),
                tx: Arc::default(),
                started: AtomicBool::new(false),
                thread: Mutex::new(None),
            }),
        })
    }

    /// This node's id (in every plain publication it sends, to recognise its echo).
    pub fn node_id(&self) -> u64 {
        self.inner.node
    }

    /// Stops the broker's threads (after the engine stopped; publications fail afterwards).
    pub fn stop(&self) {
        self.send(Msg::Stop);
        let t = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
        self.inner.state.store(DOWN, Ordering::Release);
    }

    fn send(&self, msg: Msg) {
        self.inner.send(msg, true);
    }

    /// [`Broker::publish`]; `ring`: wake the broker thread now (else at the next flush).
    fn publish_ringing(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        done: Option<BrokerAck>,
        ring: bool,
    ) {
        if self.state() == BrokerState::Down {
            bump(&self.inner.counters.publish_errors, 1);
            if let Some(done) = done {
                done(Err(unavailable()));
            }
            return;
        }
        let msg = Msg::Publish {
            channel: self.inner.names.channel(channel),
            data: wire::plain(self.inner.node, kind, payload),
            done,
        };
        self.inner.send(msg, ring);
    }
}

impl Broker for RedisBroker {
    fn start(&self, sink: BrokerSink) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return; // started already
        }
        let inner = self.inner.clone();
        let t = std::thread::Builder::new()
            .name("edge-ws-broker".into())
            .spawn(move || BrokerThread::new(inner, sink).run())
            .expect("spawn the broker thread");
        *self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    fn publish(&self, channel: &str, payload: &[u8], kind: MessageKind, done: Option<BrokerAck>) {
        self.publish_ringing(channel, payload, kind, done, true);
    }

    fn publish_held(
        &self,
        channel: &str,
        payload: &[u8],
        kind: MessageKind,
        done: Option<BrokerAck>,
    ) {
        self.publish_ringing(channel, payload, kind, done, false);
    }

    fn flush(&self) {
        self.inner.tx.flush();
    }

    fn broadcast(&self, payload: &[u8], kind: MessageKind) {
        if self.state() == BrokerState::Down {
            bump(&self.inner.counters.publish_errors, 1);
            return;
        }
        self.send(Msg::Broadcast(wire::plain(self.inner.node, kind, payload)));
    }

    fn subscribe(&self, channel: &str) {
        self.send(Msg::Interest(channel.to_string()));
    }

    fn unsubscribe(&self, channel: &str) {
        self.send(Msg::Interest(channel.to_string()));
    }

    fn sequences_streams(&self) -> bool {
        true
    }

    fn stream_append(&self, append: StreamAppend, done: AppendAck) {
        if self.state() == BrokerState::Down {
            bump(&self.inner.counters.publish_errors, 1);
            return done(Err(unavailable()));
        }
        // On the owner core, which flushes at the end of its loop iteration.
        self.inner.send(Msg::Append(append, done), false);
    }

    fn stream_sync(&self, channel: &str, max: usize) {
        self.send(Msg::Sync {
            channel: channel.to_string(),
            max,
        });
    }

    fn presence_join(&self, channel: &str, client: &str, info: &[u8]) {
        self.send(Msg::PresenceJoin {
            channel: channel.to_string(),
            client: client.to_string(),
            info: info.to_vec(),
        });
    }

    fn presence_leave(&self, channel: &str, client: &str) {
        self.send(Msg::PresenceLeave {
            channel: channel.to_string(),
            client: client.to_string(),
        });
    }

    fn presence_list(&self, channel: &str, done: PresenceAck) {
        if self.state() == BrokerState::Down {
            return done(Err(unavailable()));
        }
        self.send(Msg::PresenceList(channel.to_string(), done));
    }

    fn log_append(
        &self,
        name: &str,
        seq: u64,
        record: &[u8],
        keep: usize,
        channel: &str,
        done: LogAppendAck,
    ) {
        if self.state() == BrokerState::Down {
            bump(&self.inner.counters.publish_errors, 1);
            return done(Err(unavailable()));
        }
        self.send(Msg::LogAppend {
            name: name.to_string(),
            seq,
            record: record.to_vec(),
            keep,
            channel: channel.to_string(),
            done,
        });
    }

    fn log_read(&self, name: &str, after: u64, done: LogReadAck) {
        if self.state() == BrokerState::Down {
            return done(Err(unavailable()));
        }
        self.send(Msg::LogRead {
            name: name.to_string(),
            after,
            done,
        });
    }

    fn log_snapshot(&self, name: &str, seq: u64, data: &[u8]) {
        self.send(Msg::LogSnapshot {
            name: name.to_string(),
            seq,
            data: data.to_vec(),
        });
    }

    fn state(&self) -> BrokerState {
        match self.inner.state.load(Ordering::Acquire) {
            CONNECTING => BrokerState::Connecting,
            UP => BrokerState::Up,
            _ => BrokerState::Down,
        }
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.inner.counters;
        let mut s = BrokerStats::default();
        s.published = c.published.load(Ordering::Relaxed);
        s.publish_errors = c.publish_errors.load(Ordering::Relaxed);
        s.received = c.received.load(Ordering::Relaxed);
        s.echoes_ignored = c.echoes_ignored.load(Ordering::Relaxed);
        s.malformed = c.malformed.load(Ordering::Relaxed);
        s.subscriptions = c.subscriptions.load(Ordering::Relaxed);
        s.reconnects = c.reconnects.load(Ordering::Relaxed);
        s.syncs = c.syncs.load(Ordering::Relaxed);
        s.unrouted = c.unrouted.load(Ordering::Relaxed);
        s
    }
}

fn unavailable() -> BrokerError {
    BrokerError::Unavailable("redis is not connected; reconnecting".into())
}

/// Answers a request that could not be made with `err` (counted).
fn fail(inner: &Inner, msg: Msg, err: impl Fn() -> BrokerError) {
    match msg {
        Msg::Publish { done, .. } => {
            bump(&inner.counters.publish_errors, 1);
            if let Some(done) = done {
                done(Err(err()));
            }
        }
        Msg::Broadcast(_) => bump(&inner.counters.publish_errors, 1),
        Msg::Append(_, done) => {
            bump(&inner.counters.publish_errors, 1);
            done(Err(err()));
        }
        Msg::PresenceList(_, done) => done(Err(err())),
        Msg::LogAppend { done, .. } => {
            bump(&inner.counters.publish_errors, 1);
            done(Err(err()));
        }
        Msg::LogRead { done, .. } => done(Err(err())),
        _ => {}
    }
}

/// The scripts' SHA1s, loaded on every connect.
#[derive(Default)]
struct Shas {
    append: String,
    sync: String,
    pjoin: String,
    pleave: String,
    plist: String,
    log_append: String,
    log_read: String,
    log_snapshot: String,
}

/// The subscription connection as the broker thread holds it.
struct SubConn {
    writer: TcpStream,
}

struct BrokerThread {
    inner: Arc<Inner>,
    sink: BrokerSink,
    rx: Arc<Inbox>,
    client: redis::Client,
    cmd: Option<redis::Connection>,
    shas: Shas,
    /// This node's presence members: `(channel, client) → info`, refreshed in Redis.
    presence: HashMap<(String, String), Vec<u8>>,
    refresh_at: Instant,
    sub: Option<SubConn>,
    gen: u64,
    /// Channels SUBSCRIBEd on the current subscription connection.
    subscribed: HashSet<String>,
    /// Of those, the ones Redis confirmed.
    confirmed: HashSet<String>,
    /// Stream channels confirmed whose snapshot could not be read yet.
    unsynced: HashSet<String>,
    /// Channels with local subscribers (what to subscribe again after a reconnect).
    wanted: HashSet<String>,
    backoff: Duration,
    retry_at: Option<Instant>,
    ever_up: bool,
}

impl BrokerThread {
    fn new(inner: Arc<Inner>, sink: BrokerSink) -> Self {
        let rx = inner.tx.clone();
        let client = redis::Client::open(inner.config.url.as_str()).expect("checked by new");
        BrokerThread {
            backoff: inner.config.backoff_min,
            inner,
            sink,
            rx,
            client,
            cmd: None,
            shas: Shas::default(),
            presence: HashMap::new(),
            refresh_at: Instant::now(),
            sub: None,
            gen: 0,
            subscribed: HashSet::new(),
            confirmed: HashSet::new(),
            unsynced: HashSet::new(),
            wanted: HashSet::new(),
            retry_at: Some(Instant::now()),
            ever_up: false,
        }
    }

    fn up(&self) -> bool {
        self.cmd.is_some() && self.sub.is_some()
    }

    fn run(mut self) {
        // Before the first park: a producer that sees it parked can wake it.
        let _ = self.rx.thread.set(std::thread::current());
        loop {
            if !self.up() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
                self.connect();
            }
            if self.up() && Instant::now() >= self.refresh_at {
                self.refresh_presence();
            }
            let first = if self.up() {
                let wait = self.refresh_at.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Some(m) => m,
                    None => continue,
                }
            } else {
                let wait = self.retry_at.map_or(self.backoff, |t| {
                    t.saturating_duration_since(Instant::now())
                });
                match self.rx.recv_timeout(wait) {
                    Some(m) => m,
                    None => continue,
                }
            };
            // Take everything queued (a core's publications are queued whole before its flush
            // wakes this thread); while a burst from other threads is still arriving (the
            // last drain found more), give its producers one yield to finish it, so that a
            // burst of publishes is one pipeline here and one burst at every other node.
            let mut batch = vec![first];
            loop {
                let before = batch.len();
                while batch.len() < MAX_BATCH {
                    match self.rx.queue.pop() {
                        Some(m) => batch.push(m),
                        None => break,
                    }
                }
                if batch.len() == before || batch.len() >= MAX_BATCH {
                    break;
                }
                std::thread::yield_now();
            }
            let mut pipeline = Vec::new();
            let mut batch = batch.into_iter();
            while let Some(m) = batch.next() {
                match m {
                    Msg::Stop => {
                        // Everything not sent is answered: nobody waits forever.
                        self.close_sub();
                        self.rx.close();
                        let stopped = || BrokerError::Unavailable("the broker stopped".into());
                        for m in pipeline.into_iter().chain(batch) {
                            fail(&self.inner, m, stopped);
                        }
                        while let Some(m) = self.rx.queue.pop() {
                            fail(&self.inner, m, stopped);
                        }
                        return;
                    }
                    Msg::Interest(ch) => self.reconcile(ch),
                    // The confirmation of a subscription still wanted (not one undone since).
                    Msg::Confirmed { channel, gen }
                        if gen == self.gen && self.subscribed.contains(&channel) =>
                    {
                        self.confirmed.insert(channel.clone());
                        self.inner
                            .counters
                            .subscriptions
                            .store(self.confirmed.len() as u64, Ordering::Relaxed);
                        if self.sink.policy(&channel).is_stream() {
                            self.sync(&channel, true, usize::MAX);
                        }
                    }
                    Msg::Confirmed { .. } => {}
                    Msg::Lost(gen) if gen == self.gen => self.sub_lost("subscription read failed"),
                    Msg::Lost(_) => {}
                    Msg::Sync { channel, max } => {
                        let live = self.confirmed.contains(&channel);
                        self.sync(&channel, live, max);
                    }
                    Msg::PresenceJoin {
                        channel,
                        client,
                        info,
                    } => {
                        self.presence
                            .insert((channel.clone(), client.clone()), info.clone());
                        pipeline.push(Msg::PresenceJoin {
                            channel,
                            client,
                            info,
                        });
                    }
                    Msg::PresenceLeave { channel, client } => {
                        self.presence.remove(&(channel.clone(), client.clone()));
                        pipeline.push(Msg::PresenceLeave { channel, client });
                    }
                    m @ (Msg::Publish { .. }
                    | Msg::Broadcast(_)
                    | Msg::Append(..)
                    | Msg::PresenceList(..)
                    | Msg::LogAppend { .. }
                    | Msg::LogRead { .. }
                    | Msg::LogSnapshot { .. }) => pipeline.push(m),
                }
            }
            if !pipeline.is_empty() {
                self.execute(pipeline);
            }
        }
    }

    /// (Re)connects both connections, subscribes to every wanted channel, reloads the scripts.
    fn connect(&mut self) {
        let timeout = self.inner.config.timeout;
        let r = (|| -> Result<(), String> {
            // A command connection kept from before the failure (the subscription connection
            // noticed it first) may be dead as well: check it, or the first request after the
            // reconnect would fail on it.
            if let Some(c) = self.cmd.as_mut() {
                if redis::cmd("PING").query::<String>(c).is_err() {
                    self.cmd = None;
                }
            }
            if self.cmd.is_none() {
                let mut c = self
                    .client
                    .get_connection_with_timeout(timeout)
                    .map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                c.set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let mut load = |script: &str| -> Result<String, String> {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(script)
                        .query(&mut c)
                        .map_err(|e| e.to_string())
                };
                self.shas = Shas {
                    append: load(APPEND)?,
                    sync: load(SYNC)?,
                    pjoin: load(PJOIN)?,
                    pleave: load(PLEAVE)?,
                    plist: load(PLIST)?,
                    log_append: load(LOG_APPEND)?,
                    log_read: load(LOG_READ)?,
                    log_snapshot: load(LOG_SNAPSHOT)?,
                };
                self.cmd = Some(c);
            }
            if self.sub.is_none() {
                self.open_sub()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                if self.ever_up {
                    bump(&self.inner.counters.reconnects, 1);
                    tracing::info!(url = %self.inner.config.url, "redis broker reconnected");
                } else {
                    tracing::info!(url = %self.inner.config.url, "redis broker connected");
                }
                self.ever_up = true;
                self.backoff = self.inner.config.backoff_min;
                self.retry_at = None;
                self.inner.state.store(UP, Ordering::Release);
                // Presence entries may have been lost with Redis: write them again now.
                self.refresh_at = Instant::now();
                // Streams whose snapshot failed while the command connection was down.
                let unsynced: Vec<String> = self.unsynced.drain().collect();
                for ch in unsynced {
                    let live = self.confirmed.contains(&ch);
                    self.sync(&ch, live, usize::MAX);
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.inner.config.url, error = %e, retry_ms = self.backoff.as_millis() as u64, "redis broker cannot connect");
                self.set_down();
            }
        }
    }

    /// Marks the broker down and schedules the next attempt with backoff (and jitter).
    fn set_down(&mut self) {
        self.inner.state.store(DOWN, Ordering::Release);
        let jitter =
            Duration::from_millis(random_u64() % (self.backoff.as_millis() as u64 / 4 + 1));
        self.retry_at = Some(Instant::now() + self.backoff + jitter);
        self.backoff = (self.backoff * 2).min(self.inner.config.backoff_max);
    }

    fn open_sub(&mut self) -> Result<(), String> {
        let info = self.client.get_connection_info();
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("redis host has no address")?,
            other => return Err(format!("unsupported redis address {other}")),
        };
        let timeout = self.inner.config.timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let settings = info.redis_settings();
        if let Some(pw) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(pw);
            writer
                .write_all(&auth.get_packed_command())
                .map_err(|e| e.to_string())?;
        }
        self.gen += 1;
        let gen = self.gen;
        let mut channels: Vec<String> = vec![self.inner.names.all()];
        self.subscribed.clear();
        self.confirmed.clear();
        for ch in self.wanted.iter().filter(|c| self.sink.interested(c)) {
            channels.push(self.inner.names.channel(ch));
            self.subscribed.insert(ch.clone());
        }
        let mut sub = redis::cmd("SUBSCRIBE");
        for c in &channels {
            sub.arg(c);
        }
        writer
            .write_all(&sub.get_packed_command())
            .map_err(|e| e.to_string())?;
        let reader = Reader {
            inner: self.inner.clone(),
            sink: self.sink.clone(),
            gen,
        };
        std::thread::Builder::new()
            .name("edge-ws-broker-sub".into())
            .spawn(move || reader.run(stream))
            .map_err(|e| e.to_string())?;
        self.sub = Some(SubConn { writer });
        Ok(())
    }

    fn close_sub(&mut self) {
        if let Some(s) = self.sub.take() {
            let _ = s.writer.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The subscription connection broke: every stream mirror here is stale until resynced.
    fn sub_lost(&mut self, why: &str) {
        tracing::warn!(
            reason = why,
            "redis broker lost its subscriptions; reconnecting"
        );
        self.close_sub();
        for ch in self.subscribed.drain() {
            if self.sink.policy(&ch).is_stream() {
                self.sink.desynced(&ch);
            }
        }
        self.confirmed.clear();
        self.inner
            .counters
            .subscriptions
            .store(0, Ordering::Relaxed);
        self.set_down();
    }

    /// Subscribes or unsubscribes `ch` as its local subscribers say now.
    fn reconcile(&mut self, ch: String) {
        let want = self.sink.interested(&ch);
        if want {
            self.wanted.insert(ch.clone());
        } else {
            self.wanted.remove(&ch);
        }
        if self.sub.is_none() || want == self.subscribed.contains(&ch) {
            return;
        }
        let name = self.inner.names.channel(&ch);
        let cmd = if want { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
        let packed = redis::cmd(cmd).arg(&name).get_packed_command();
        let ok = self
            .sub
            .as_mut()
            .is_some_and(|s| s.writer.write_all(&packed).is_ok());
        if !ok {
            return self.sub_lost("subscription write failed");
        }
        if want {
            self.subscribed.insert(ch);
        } else {
            self.subscribed.remove(&ch);
            self.confirmed.remove(&ch);
            self.unsynced.remove(&ch);
            self.inner
                .counters
                .subscriptions
                .store(self.confirmed.len() as u64, Ordering::Relaxed);
            if self.sink.policy(&ch).is_stream() {
                self.sink.desynced(&ch);
            }
        }
    }

    /// Reads a stream's snapshot for its owner core.
    fn sync(&mut self, ch: &str, live: bool, max: usize) {
        let policy = self.sink.policy(ch);
        let count = policy
            .history_size
            .min(self.sink.max_history_read())
            .min(max)
            .max(1);
        let Some(cmd) = self.cmd.as_mut() else {
            if live {
                self.unsynced.insert(ch.to_string());
            }
            return self.sink.synced(ch, Err(unavailable()), live);
        };
        let r: redis::RedisResult<Value> = redis::cmd("EVALSHA")
            .arg(&self.shas.sync)
            .arg(2)
            .arg(self.inner.names.meta(ch))
            .arg(self.inner.names.history(ch))
            .arg(edge_ws_epoch().to_string())
            .arg(count)
            .query(cmd);
        match r.map_err(|e| {
            (
                e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
                e,
            )
        }) {
            Ok(v) => {
                bump(&self.inner.counters.syncs, 1);
                match parse_snapshot(v) {
                    Some(s) => self.sink.synced(ch, Ok(s), live),
                    None => {
                        bump(&self.inner.counters.malformed, 1);
                        self.sink.synced(
                            ch,
                            Err(BrokerError::Failed("malformed snapshot".into())),
                            live,
                        )
                    }
                }
            }
            Err((io, e)) => {
                if live {
                    self.unsynced.insert(ch.to_string());
                }
                if io {
                    self.cmd_lost(&e.to_string());
                }
                self.sink
                    .synced(ch, Err(BrokerError::Failed(e.to_string())), live);
            }
        }
    }

    /// Queues the script that writes one presence member with a fresh expiry.
    fn pjoin(&self, pipe: &mut redis::Pipeline, channel: &str, client: &str, info: &[u8]) {
        let ttl = self.inner.config.presence_ttl.as_millis().max(1) as u64;
        pipe.cmd("EVALSHA")
            .arg(&self.shas.pjoin)
            .arg(2)
            .arg(self.inner.names.presence(channel))
            .arg(self.inner.names.presence_info(channel))
            .arg(client)
            .arg(info)
            .arg(now_ms() + ttl)
            .arg(ttl * 2);
    }

    /// Writes every presence member of this node again with a fresh expiry (every third of
    /// the TTL, and after a reconnect).
    fn refresh_presence(&mut self) {
        self.refresh_at = Instant::now() + self.inner.config.presence_ttl / 3;
        if self.presence.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for ((channel, client), info) in &self.presence {
            self.pjoin(&mut pipe, channel, client, info);
        }
        let Some(cmd) = self.cmd.as_mut() else {
            return;
        };
        if let Err(e) = pipe.query::<Vec<redis::RedisResult<Value>>>(cmd) {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.cmd_lost(&e.to_string());
            }
        }
    }

    fn cmd_lost(&mut self, why: &str) {
        tracing::warn!(
            reason = why,
            "redis broker lost its command connection; reconnecting"
        );
        self.cmd = None;
        self.set_down();
    }

    /// Sends a batch of publishes and appends as one pipeline and answers each.
    fn execute(&mut self, batch: Vec<Msg>) {
        if self.cmd.is_none() {
            for m in batch {
                fail(&self.inner, m, unavailable);
            }
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in &batch {
            match m {
                Msg::Publish { channel, data, .. } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(data.as_slice());
                }
                Msg::Broadcast(data) => {
                    pipe.cmd("PUBLISH")
                        .arg(self.inner.names.all())
                        .arg(data.as_slice());
                }
                Msg::Append(a, _) => {
                    let ttl = a.history_ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                    let c = pipe
                        .cmd("EVALSHA")
                        .arg(&self.shas.append)
                        .arg(if a.idempotency_key.is_some() { 4 } else { 3 })
                        .arg(self.inner.names.meta(&a.channel))
                        .arg(self.inner.names.history(&a.channel))
                        .arg(self.inner.names.channel(&a.channel));
                    if let Some(k) = &a.idempotency_key {
                        c.arg(self.inner.names.idempotency(&a.channel, k));
                    }
                    c.arg(edge_ws_epoch().to_string())
                        .arg(a.history_size.max(1))
                        .arg(a.payload.as_ref())
                        .arg(a.timestamp_ms)
                        .arg(std::str::from_utf8(&[wire::kind_byte(a.kind)]).unwrap_or("b"))
                        .arg(ttl)
                        .arg(a.idempotency_window.as_millis().max(1) as u64);
                }
                Msg::PresenceJoin {
                    channel,
                    client,
                    info,
                } => {
                    self.pjoin(&mut pipe, channel, client, info);
                }
                Msg::PresenceLeave { channel, client } => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.shas.pleave)
                        .arg(2)
                        .arg(self.inner.names.presence(channel))
                        .arg(self.inner.names.presence_info(channel))
                        .arg(client);
                }
                Msg::PresenceList(channel, _) => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.shas.plist)
                        .arg(2)
                        .arg(self.inner.names.presence(channel))
                        .arg(self.inner.names.presence_info(channel))
                        .arg(now_ms());
                }
                Msg::LogAppend {
                    name,
                    seq,
                    record,
                    keep,
                    channel,
                    ..
                } => {
                    // Published like any plain publication from "node 0": no node ignores
                    // it as its own echo, so the appending node gets it too.
                    let message = wire::plain(0, MessageKind::Binary, record);
                    pipe.cmd("EVALSHA")
                        .arg(&self.shas.log_append)
                        .arg(3)
                        .arg(self.inner.names.log(name))
                        .arg(self.inner.names.log_meta(name))
                        .arg(self.inner.names.channel(channel))
                        .arg(*seq)
                        .arg(record.as_slice())
                        .arg((*keep).max(1))
                        .arg(message);
                }
                Msg::LogRead { name, after, .. } => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.shas.log_read)
                        .arg(2)
                        .arg(self.inner.names.log(name))
                        .arg(self.inner.names.log_meta(name))
                        .arg(*after);
                }
                Msg::LogSnapshot { name, seq, data } => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.shas.log_snapshot)
                        .arg(1)
                        .arg(self.inner.names.log_meta(name))
                        .arg(*seq)
                        .arg(data.as_slice());
                }
                _ => {}
            }
        }
        let Some(cmd) = self.cmd.as_mut() else {
            return;
        };
        let replies: redis::RedisResult<Vec<redis::RedisResult<Value>>> = pipe.query(cmd);
        match replies {
            Ok(replies) if replies.len() == batch.len() => {
                for (m, r) in batch.into_iter().zip(replies) {
                    self.answer(m, r);
                }
            }
            Ok(_) => {
                let e = BrokerError::Failed("pipeline answered a different count".into());
                for m in batch {
                    fail(&self.inner, m, || e.clone());
                }
            }
            Err(e) => {
                let why = e.to_string();
                for m in batch {
                    fail(&self.inner, m, || {
                        BrokerError::Failed(format!("{why} (may or may not have been applied)"))
                    });
                }
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.cmd_lost(&why);
                }
            }
        }
    }

    fn answer(&mut self, m: Msg, r: redis::RedisResult<Value>) {
        let counters = &self.inner.counters;
        match (m, r) {
            (Msg::Publish { done, .. }, Ok(_)) => {
                bump(&counters.published, 1);
                if let Some(done) = done {
                    done(Ok(()));
                }
            }
            (Msg::Broadcast(_), Ok(_)) => bump(&counters.published, 1),
            (Msg::PresenceList(_, done), Ok(v)) => match parse_presence(v) {
                Some(list) => done(Ok(list)),
                None => {
                    bump(&counters.malformed, 1);
                    done(Err(BrokerError::Failed("malformed presence reply".into())));
                }
            },
            (Msg::LogAppend { done, .. }, Ok(v)) => match parse_log_append(v) {
                Some(r) => {
                    if r.is_ok() {
                        bump(&counters.published, 1);
                    }
                    done(Ok(r))
                }
                None => {
                    bump(&counters.malformed, 1);
                    done(Err(BrokerError::Failed(
                        "malformed log append reply".into(),
                    )));
                }
            },
            (Msg::LogRead { done, .. }, Ok(v)) => match parse_log_read(v) {
                Some(r) => done(Ok(r)),
                None => {
                    bump(&counters.malformed, 1);
                    done(Err(BrokerError::Failed("malformed log read reply".into())));
                }
            },
            (Msg::Append(_, done), Ok(v)) => match parse_position(v) {
                Some(p) => {
                    bump(&counters.published, 1);
                    done(Ok(p));
                }
                None => {
                    bump(&counters.publish_errors, 1);
                    done(Err(BrokerError::Failed("malformed append reply".into())));
                }
            },
            (m, Err(e)) => {
                if e.code() == Some("NOSCRIPT") {
                    // Scripts flushed under us: load them again on the next connect.
                    self.cmd = None;
                    self.retry_at = Some(Instant::now());
                    self.inner.state.store(DOWN, Ordering::Release);
                }
                let s = e.to_string();
                fail(&self.inner, m, || BrokerError::Failed(s.clone()));
            }
            (_, Ok(_)) => {}
        }
    }
}

/// Reads the subscription connection and hands messages to the cores.
struct Reader {
    inner: Arc<Inner>,
    sink: BrokerSink,
    gen: u64,
}

impl Reader {
    fn run(self, mut stream: TcpStream) {
        // Everything one read brought is parsed first and then handed to the cores as one
        // burst (each core woken once, after all of it is queued), so a burst from Redis
        // reaches a core as one run (one send per subscriber).
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut values = Vec::new();
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    tracing::debug!("subscription connection ended");
                    self.inner.send(Msg::Lost(self.gen), true);
                    return;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let data = buf.split().freeze();
            let mut at = 0;
            loop {
                match wire::resp(&data, at) {
                    Ok(Some((v, next))) => {
                        values.push(v);
                        at = next;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable subscription stream");
                        self.inner.send(Msg::Lost(self.gen), true);
                        return;
                    }
                }
            }
            buf.extend_from_slice(&data[at..]);
            let mut burst = self.sink.burst();
            for v in values.drain(..) {
                if !self.value(v, &mut burst) {
                    drop(burst);
                    self.inner.send(Msg::Lost(self.gen), true);
                    return;
                }
            }
        }
    }

    /// Handles one value; `false` if the connection must be dropped.
    fn value(&self, v: Resp, burst: &mut Burst<'_>) -> bool {
        let items = match v {
            Resp::Array(Some(items)) => items,
            Resp::Error(e) => {
                tracing::warn!(error = %String::from_utf8_lossy(&e), "redis refused a subscription command");
                return false;
            }
            _ => return true, // +OK of AUTH
        };
        let mut it = items.into_iter();
        let (Some(Resp::Bulk(Some(kind))), Some(Resp::Bulk(Some(ch)))) = (it.next(), it.next())
        else {
            return true;
        };
        let Ok(ch) = std::str::from_utf8(&ch) else {
            bump(&self.inner.counters.malformed, 1);
            return true;
        };
        match &kind[..] {
            b"message" => match it.next() {
                Some(Resp::Bulk(Some(payload))) => self.message(ch, payload, burst),
                _ => bump(&self.inner.counters.malformed, 1),
            },
            b"subscribe" => {
                if let Some(name) = self.inner.names.channel_of(ch) {
                    let msg = Msg::Confirmed {
                        channel: name.to_string(),
                        gen: self.gen,
                    };
                    self.inner.send(msg, true);
                }
            }
            _ => {}
        }
        true
    }

    fn message(&self, ch: &str, payload: Bytes, burst: &mut Burst<'_>) {
        let c = &self.inner.counters;
        let all = ch == self.inner.names.all();
        let name = if all {
            None
        } else if let Some(n) = self.inner.names.channel_of(ch) {
            Some(n)
        } else {
            bump(&c.malformed, 1);
            return;
        };
        match (wire::parse(payload), name) {
            (Some(Inbound::Plain { node, .. }), _) if node == self.inner.node => {
                bump(&c.echoes_ignored, 1)
            }
            (Some(Inbound::Plain { kind, payload, .. }), None) => {
                bump(&c.received, 1);
                burst.deliver_all(&payload, kind);
            }
            (Some(Inbound::Plain { kind, payload, .. }), Some(name)) => {
                bump(&c.received, 1);
                if !burst.deliver(name, &payload, kind) {
                    bump(&c.unrouted, 1);
                }
            }
            (Some(Inbound::Stream { entry, epoch }), Some(name)) => {
                bump(&c.received, 1);
                if !burst.stream_publication(name, entry, epoch) {
                    bump(&c.unrouted, 1);
                }
            }
            _ => bump(&c.malformed, 1),
        }
    }
}

/// `{ids, infos}` (or `{}`) from the presence list script, sorted by client.
fn parse_presence(v: Value) -> Option<Vec<PresenceMember>> {
    let Value::Array(items) = v else { return None };
    let mut it = items.into_iter();
    let (Some(Value::Array(ids)), Some(Value::Array(infos))) = (it.next(), it.next()) else {
        return Some(Vec::new());
    };
    let mut out: Vec<PresenceMember> = ids
        .iter()
        .zip(infos)
        .filter_map(|(id, info)| {
            Some(PresenceMember {
                client: as_string(id)?,
                info: match info {
                    Value::BulkString(b) => Bytes::from(b),
                    _ => return None, // removed between the two reads
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.client.cmp(&b.client));
    Some(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `{1, seq}` or `{0, last}` from the log append script.
fn parse_log_append(v: Value) -> Option<Result<u64, u64>> {
    let Value::Array(items) = v else { return None };
    let n = as_u64(items.get(1)?)?;
    Some(if as_u64(items.first()?)? == 1 {
        Ok(n)
    } else {
        Err(n)
    })
}

/// `{last, snapshot seq, snapshot data or nil, [[id, [field, value, ...]], ...]}` from the log
/// read script.
fn parse_log_read(v: Value) -> Option<LogRead> {
    let Value::Array(items) = v else { return None };
    let mut it = items.into_iter();
    let last = as_u64(&it.next()?)?;
    let snap_seq = as_u64(&it.next()?)?;
    let snapshot = match it.next()? {
        Value::BulkString(b) => Some((snap_seq, Bytes::from(b))),
        _ => None,
    };
    let Value::Array(xs) = it.next()? else {
        return None;
    };
    let mut entries = Vec::with_capacity(xs.len());
    for x in xs {
        let Value::Array(pair) = x else { return None };
        let mut pair = pair.into_iter();
        let id = as_string(&pair.next()?)?;
        let seq = id.strip_suffix("-0")?.parse().ok()?;
        let Value::Array(fields) = pair.next()? else {
            return None;
        };
        let mut f = fields.into_iter();
        let mut data = None;
        while let (Some(k), Some(v)) = (f.next(), f.next()) {
            if as_string(&k)? == "d" {
                if let Value::BulkString(b) = v {
                    data = Some(Bytes::from(b));
                }
            }
        }
        entries.push((seq, data?));
    }
    Some(LogRead {
        last,
        snapshot,
        entries,
    })
}

/// `{offset, epoch, duplicate}` from the append script.
fn parse_position(v: Value) -> Option<Published> {
    let Value::Array(items) = v else { return None };
    Some(Published {
        position: Some(StreamPosition {
            offset: as_u64(items.first()?)?,
            epoch: as_u64(items.get(1)?)?,
        }),
        duplicate: as_u64(items.get(2)?)? == 1,
    })
}

/// `{offset, epoch, [[id, [field, value, ...]], ...] newest first}` from the sync script.
fn parse_snapshot(v: Value) -> Option<BrokerSnapshot> {
    let Value::Array(items) = v else { return None };
    let mut it = items.into_iter();
    let offset = as_u64(&it.next()?)?;
    let epoch = as_u64(&it.next()?)?;
    let Value::Array(xs) = it.next()? else {
        return None;
    };
    let mut entries = Vec::with_capacity(xs.len());
    for x in xs.into_iter().rev() {
        let Value::Array(pair) = x else { return None };
        let mut pair = pair.into_iter();
        let id = as_string(&pair.next()?)?;
        let offset = id.strip_suffix("-0")?.parse().ok()?;
        let Value::Array(fields) = pair.next()? else {
            return None;
        };
        let (mut payload, mut ts, mut kind) = (None, None, None);
        let mut f = fields.into_iter();
        while let (Some(k), Some(v)) = (f.next(), f.next()) {
            match as_string(&k)?.as_str() {
                "p" => {
                    payload = match v {
                        Value::BulkString(b) => Some(Bytes::from(b)),
                        _ => None,
                    }
                }
                "t" => ts = as_u64(&v),
                "k" => kind = as_string(&v).and_then(|s| wire::kind_of(*s.as_bytes().first()?)),
                _ => {}
            }
        }
        entries.push(BrokerEntry {
            offset,
            timestamp_ms: ts?,
            kind: kind?,
            payload: payload?,
        });
    }
    Some(BrokerSnapshot {
        position: StreamPosition { offset, epoch },
        entries,
    })
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

/// A fresh epoch for a stream Redis has none for (never 0).
fn edge_ws_epoch() -> u64 {
    random_u64().max(1)
}

/// A random 64-bit number from the OS-seeded hasher, the clock and a counter (no RNG crate).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}
