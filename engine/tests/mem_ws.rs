//! The WebSocket layer, fan-out, the cork and the handler API on in-memory cores
//! (`edge_ws::testing`): no socket is opened; every step is driven by the test, and every
//! assertion is on exact bytes, close codes or counters.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use edge_ws::config::{CLOSE_HEARTBEAT_TIMEOUT, CLOSE_IDLE_TIMEOUT, CLOSE_SLOW_CONSUMER};
use edge_ws::protocol::handshake::{accept_key, ClientRequest};
use edge_ws::protocol::OpCode;
use edge_ws::testing::{ConnectError, MemClient, MemEngine, MAX_PUMP_ROUNDS};
use edge_ws::{
    CloseCode, Config, ConnectionId, Handler, Message, MessageKind, MetricsSnapshot,
    PublishOptions, Rejection, SendError, SlowConsumerPolicy, Socket, Upgrade, UpgradeRequest,
};

/// What the handlers saw, shared with the test (handlers of every core run on its thread).
#[derive(Default)]
struct Log {
    /// `(id, subprotocol, path)` per opened connection.
    opened: Vec<(ConnectionId, Option<String>, String)>,
    /// `(id, code, reason)` per closed connection.
    closed: Vec<(ConnectionId, u16, String)>,
    /// Results of the sends of `!flood`.
    sends: Vec<Result<(), SendError>>,
    /// The target of `!corked`'s direct send.
    buddy: Option<ConnectionId>,
}

type SharedLog = Rc<RefCell<Log>>;

/// Marks a connection that upgraded with `?vip`.
struct Vip;

/// Echoes binary messages and text that does not start with `!`; `!` text is a command.
struct App {
    log: SharedLog,
}

impl Handler for App {
    fn on_upgrade(&mut self, req: &UpgradeRequest<'_>) -> Upgrade {
        match req.request.path.as_str() {
            "/private" => Upgrade::Reject(Rejection::new(403, "forbidden")),
            "/later" => Upgrade::Defer,
            _ if req.request.query_param("vip").is_some() => Upgrade::Accept(Some(Box::new(Vip))),
            _ => Upgrade::Accept(None),
        }
    }

    fn on_open(&mut self, s: &mut Socket<'_, '_>) {
        let protocol = s.protocol().map(str::to_owned);
        self.log
            .borrow_mut()
            .opened
            .push((s.id(), protocol.clone(), s.path().to_owned()));
        if s.path() == "/hello" {
            let _ = s.send_text(&format!("welcome {}", protocol.unwrap_or_default()));
        }
    }

    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let text = match m.as_text() {
            Some(t) if t.starts_with('!') => t.to_owned(),
            _ => {
                let _ = s.send(&m);
                return;
            }
        };
        let mut parts = text[1..].splitn(3, ' ');
        let (cmd, a, b) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        match cmd {
            "close" => s.close(CloseCode(a.parse().unwrap()), b),
            "sub" => {
                assert!(s.subscribe(a));
                let _ = s.send_text("subscribed");
            }
            "unsub" => {
                assert!(s.unsubscribe(a));
                let _ = s.send_text("unsubscribed");
            }
            "pub" => s.publish(a, b),
            "pubx" => {
                let opts = PublishOptions {
                    exclude: Some(s.id()),
                    ..PublishOptions::default()
                };
                s.publish_with(a, b.as_bytes(), MessageKind::Text, opts);
            }
            "pubvip" => {
                let opts = PublishOptions {
                    filter: Some(Arc::new(|_, data| data.is_some_and(|d| d.is::<Vip>()))),
                    ..PublishOptions::default()
                };
                s.publish_with(a, b.as_bytes(), MessageKind::Text, opts);
            }
            "all" => s.broadcast_all(a.as_bytes(), MessageKind::Text, PublishOptions::default()),
            "burst" => {
                for i in 0..b.parse::<usize>().unwrap() {
                    s.publish(a, &format!("{a} {i}"));
                }
            }
            // 100 × (publish to a, publish to b, direct send to the sender).
            "mix" => {
                for i in 0..100 {
                    s.publish(a, &format!("a {i}"));
                    s.publish(b, &format!("b {i}"));
                    let _ = s.send_text(&format!("d {i}"));
                }
            }
            "buddy" => self.log.borrow_mut().buddy = Some(s.id()),
            // N publishes, then direct sends to the sender and to the buddy.
            "corked" => {
                for i in 0..b.parse::<usize>().unwrap() {
                    s.publish(a, &format!("{a} {i}"));
                }
                let _ = s.send_text("self-done");
                let buddy = self.log.borrow().buddy.expect("a buddy");
                s.send_to(buddy, "buddy-done").unwrap();
            }
            // N binary messages of SIZE bytes, message i filled with byte i.
            "flood" => {
                let size: usize = b.parse().unwrap();
                for i in 0..a.parse::<usize>().unwrap() {
                    let r = s.send_binary(&vec![i as u8; size]);
                    self.log.borrow_mut().sends.push(r);
                }
            }
            other => panic!("unknown command {other}"),
        }
    }

    fn on_close(&mut self, s: &mut Socket<'_, '_>, code: CloseCode, reason: &str) {
        self.log
            .borrow_mut()
            .closed
            .push((s.id(), code.0, reason.to_owned()));
    }
}

fn engine_with(config: Config, cores: usize) -> (MemEngine<App>, SharedLog) {
    let log = SharedLog::default();
    let l = log.clone();
    let engine = MemEngine::new(config, cores, move |_| App { log: l.clone() });
    (engine, log)
}

fn engine(cores: usize) -> (MemEngine<App>, SharedLog) {
    engine_with(Config::default(), cores)
}

fn request<'a>(path: &'a str, protocols: &'a [&'a str]) -> ClientRequest<'a> {
    ClientRequest {
        host: "example.test",
        path,
        key: [7; 16],
        protocols,
        extensions: None,
        extra_headers: &[],
    }
}

fn subscribe(c: &mut MemClient, channel: &str) {
    c.send_text(&format!("!sub {channel}"));
    assert_eq!(c.recv_text().as_deref(), Some("subscribed"));
}

/// Every text message `c` has received so far; panics on any other frame.
fn texts(c: &mut MemClient) -> Vec<String> {
    std::iter::from_fn(|| c.recv_text()).collect()
}

/// `counter` of the metrics `after` minus those `before`.
fn delta(before: &MetricsSnapshot, after: &MetricsSnapshot, counter: &str) -> u64 {
    let get = |m: &MetricsSnapshot| {
        m.fields()
            .into_iter()
            .find(|(n, _)| *n == counter)
            .unwrap_or_else(|| panic!("no counter {counter}"))
            .1
    };
    get(after) - get(before)
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason.as_bytes());
    f
}

// ---- the upgrade ----

#[test]
fn upgrade_answers_101_with_the_clients_first_supported_subprotocol() {
    let mut config = Config::default();
    config.subprotocols = vec!["chat.v2".into(), "chat.v1".into()];
    let (engine, log) = engine_with(config, 1);

    let mut c = engine
        .try_connect(0, &request("/hello", &["chat.v1", "chat.v2"]))
        .expect("upgraded");
    assert_eq!(c.protocol(), Some("chat.v1"));
    let accept = accept_key(ClientRequest::key_base64(&request("/", &[])).as_bytes());
    let headers: Vec<(&str, &str)> = c
        .response()
        .unwrap()
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        headers,
        [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept.as_str()),
            ("sec-websocket-protocol", "chat.v1"),
        ]
    );
    // on_open ran after the 101 and its message is the first frame.
    assert_eq!(c.recv_text().as_deref(), Some("welcome chat.v1"));

    // Nothing in common: no protocol header, no protocol for the socket.
    let mut d = engine
        .try_connect(0, &request("/hello", &["chat.v3"]))
        .expect("upgraded");
    assert_eq!(d.protocol(), None);
    assert!(d
        .response()
        .unwrap()
        .headers
        .iter()
        .all(|(n, _)| n != "sec-websocket-protocol"));
    assert_eq!(d.recv_text().as_deref(), Some("welcome "));

    let opened = &log.borrow().opened;
    assert_eq!(opened.len(), 2);
    assert_eq!(
        (opened[0].0, opened[0].1.as_deref(), opened[0].2.as_str()),
        (c.id(), Some("chat.v1"), "/hello")
    );
    assert_eq!((opened[1].0, opened[1].1.as_deref()), (d.id(), None));
    let m = engine.metrics();
    assert_eq!((m.accepted, m.opened, m.closed), (2, 2, 0));
    assert_eq!(engine.connections(), 2);
}

#[test]
fn a_refused_upgrade_is_answered_with_the_handlers_status_and_closed() {
    let (engine, log) = engine(1);
    let err = engine
        .try_connect(0, &request("/private", &[]))
        .expect_err("refused");
    let ConnectError::Refused(resp) = err else {
        panic!("not a refusal: {err:?}");
    };
    assert_eq!((resp.status, resp.reason.as_str()), (403, "Forbidden"));
    assert_eq!(resp.body, b"forbidden");
    assert_eq!(resp.header("content-length"), Some("9"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(
        engine.transport_connections(0),
        0,
        "closed after the answer"
    );
    let m = engine.metrics();
    assert_eq!((m.rejected_by_application, m.opened), (1, 0));
    assert!(log.borrow().opened.is_empty());
    assert!(log.borrow().closed.is_empty(), "never open: no on_close");
}

#[test]
fn get_health_answers_json_with_cores_and_open_connections() {
    let (engine, _log) = engine(2);
    let _a = engine.connect(0, "/");
    let _b = engine.connect(1, "/");
    let resp = engine.http(1, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.body_text(),
        r#"{"status":"ok","cores":2,"connections":2}"#
    );
    assert_eq!(engine.metrics().http_requests, 1);
    assert_eq!(engine.transport_connections(1), 1, "only the WebSocket");
}

#[test]
fn get_metrics_answers_every_counter_in_the_prometheus_format() {
    let (engine, _log) = engine(2);
    let mut a = engine.connect(0, "/");
    a.send_text("hello");
    assert_eq!(a.recv_text().as_deref(), Some("hello"));
    let resp = engine.http(1, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let body = resp.body_text();
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("edge_ws_opened"), 1);
    assert_eq!(value("edge_ws_messages_in"), 1);
    assert_eq!(value("edge_ws_connections"), 1);
    assert_eq!(value("edge_ws_cores"), 2);
    assert!(body.contains("# TYPE edge_ws_ring_depth_hwm gauge"));
    let names = MetricsSnapshot::default().fields().len();
    assert_eq!(body.matches("# TYPE ").count(), names + 2, "every counter");
    // Switched off: an ordinary 400.
    let mut config = Config::default();
    config.metrics_path = None;
    let (off, _log) = engine_with(config, 1);
    assert_eq!(
        off.http(0, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .status,
        400
    );
}

#[test]
fn bad_handshakes_are_answered_400_and_426() {
    let (engine, _log) = engine(1);
    // An upgrade without a key.
    let resp = engine.http(
        0,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!((resp.status, resp.reason.as_str()), (400, "Bad Request"));
    assert_eq!(resp.body_text(), "missing or invalid Sec-WebSocket-Key\n");
    // A version other than 13.
    let resp = engine.http(
        0,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",
    );
    assert_eq!(resp.status, 426);
    assert_eq!(resp.header("sec-websocket-version"), Some("13"));
    // Not HTTP at all.
    let resp = engine.http(0, b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(resp.status, 400);
    // Plain HTTP that is not an upgrade.
    let resp = engine.http(0, b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body, b"Expected WebSocket");
    let m = engine.metrics();
    assert_eq!(
        (m.rejected_bad_handshake, m.http_requests, m.opened),
        (3, 1, 0)
    );
    assert_eq!(engine.transport_connections(0), 0);
}

#[test]
fn a_deferred_upgrade_is_decided_through_the_handle_from_another_thread() {
    let (engine, log) = engine(2);
    let handle = engine.handle();
    let mut yes = engine.open(1).unwrap();
    yes.send_upgrade(&request("/later", &[]));
    let mut no = engine.open(0).unwrap();
    no.send_upgrade(&request("/later", &[]));
    assert_eq!(yes.finish_upgrade(), Ok(None), "deferred: no answer yet");
    assert!(yes.is_open() && no.is_open());
    let (yes_id, no_id) = (yes.id(), no.id());
    std::thread::spawn(move || {
        assert!(handle.resolve_upgrade(yes_id, Ok(None)));
        assert!(handle.resolve_upgrade(no_id, Err(Rejection::new(429, "slow down"))));
    })
    .join()
    .unwrap();
    assert_eq!(yes.finish_upgrade(), Ok(None), "nothing before the pump");
    engine.pump();
    assert!(yes.finish_upgrade().unwrap().is_some());
    yes.send_text("after defer");
    assert_eq!(yes.recv_text().as_deref(), Some("after defer"));
    let Err(ConnectError::Refused(resp)) = no.finish_upgrade() else {
        panic!("not refused");
    };
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (429, "Too Many Requests")
    );
    assert_eq!(resp.body, b"slow down");
    assert!(!no.is_open());
    assert_eq!(log.borrow().opened.len(), 1);
    assert_eq!(engine.metrics().rejected_by_application, 1);
}

// ---- messages and the close handshake ----

#[test]
fn text_binary_and_fragmented_messages_are_echoed_byte_for_byte() {
    let (engine, _log) = engine(1);
    let mut c = engine.connect(0, "/");
    c.send_text("hello");
    assert_eq!(c.take_raw(), b"\x81\x05hello");
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    c.send_binary(&big);
    let raw = c.take_raw();
    assert_eq!(raw[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    assert!(raw[10..] == big[..]);
    c.send_fragment(OpCode::Text, "hél".as_bytes(), false);
    assert_eq!(c.recv(), None, "a message in flight is not echoed");
    c.send_fragment(OpCode::Continuation, b"lo", true);
    let mut want = vec![0x81, 6];
    want.extend_from_slice("héllo".as_bytes());
    assert_eq!(c.take_raw(), want);
    let m = engine.metrics();
    assert_eq!((m.messages_in, m.messages_out), (3, 3));
    assert_eq!(m.bytes_in, 5 + 70_000 + 6);
}

#[test]
fn a_client_close_is_echoed_then_the_connection_ends() {
    let (engine, log) = engine(1);
    let mut c = engine.connect(0, "/");
    c.send_close(1000, "bye");
    // The code is echoed, without the reason (RFC 6455 §5.5.1), and the server closes.
    assert_eq!(c.take_raw(), close_frame(1000, ""));
    assert!(!c.is_open());
    // An empty close is answered with an empty close; the handler sees 1005.
    let mut d = engine.connect(0, "/");
    d.send(OpCode::Close, b"");
    assert_eq!(d.take_raw(), [0x88, 0x00]);
    assert!(!d.is_open());
    assert_eq!(
        log.borrow().closed,
        [
            (c.id(), 1000, "bye".to_owned()),
            (d.id(), 1005, String::new())
        ]
    );
    let m = engine.metrics();
    assert_eq!((m.opened, m.closed), (2, 2));
    assert_eq!(engine.transport_connections(0), 0);
}

#[test]
fn socket_close_from_the_handler_waits_for_the_reply_or_the_close_timeout() {
    let mut config = Config::default();
    config.close_timeout = Duration::from_secs(2);
    let (engine, log) = engine_with(config, 1);
    let mut c = engine.connect(0, "/");
    c.send_text("!close 4000 done");
    assert_eq!(c.take_raw(), close_frame(4000, "done"));
    assert!(c.is_open(), "waits for the client's close");
    c.send_text("ignored after our close");
    assert_eq!(c.recv(), None);
    c.send_close(4000, "");
    assert!(!c.is_open());

    // A client that never answers is dropped at the close timeout.
    let mut d = engine.connect(0, "/");
    d.send_text("!close 4010 going");
    assert_eq!(d.expect_close(), Some(4010));
    engine.run_for(Duration::from_millis(1900));
    assert!(d.is_open());
    // Within one timer scan (250 ms) after the deadline.
    engine.run_for(Duration::from_millis(350));
    assert!(!d.is_open());
    assert_eq!(
        log.borrow().closed,
        [
            (c.id(), 4000, "done".to_owned()),
            (d.id(), 4010, "going".to_owned())
        ]
    );
    assert_eq!(
        engine.metrics().messages_in,
        2,
        "the text after our close is dropped"
    );
}

#[test]
fn a_peer_that_hangs_up_is_closed_with_1006() {
    let (engine, log) = engine(1);
    let mut c = engine.connect(0, "/");
    c.hang_up();
    assert!(!c.is_open());
    assert_eq!(log.borrow().closed, [(c.id(), 1006, String::new())]);
    assert_eq!(engine.connections(), 0);
}

#[test]
fn protocol_errors_close_with_their_rfc_code_while_another_connection_is_served() {
    let mut config = Config::default();
    config.max_message_size = 1024;
    config.max_frame_size = 1024;
    let (engine, log) = engine_with(config, 1);
    let mut good = engine.connect(0, "/");
    let mut unmasked = engine.connect(0, "/");
    let mut bad_utf8 = engine.connect(0, "/");
    let mut too_big = engine.connect(0, "/");

    unmasked.send_raw(b"\x81\x02hi");
    good.send_text("one");
    bad_utf8.send(OpCode::Text, &[b'a', 0xff, 0xfe]);
    good.send_text("two");
    too_big.send_binary(&[0; 1025]);
    good.send_text("three");

    for (c, code) in [
        (&mut unmasked, 1002),
        (&mut bad_utf8, 1007),
        (&mut too_big, 1009),
    ] {
        assert_eq!(c.expect_close(), Some(code));
        assert_eq!(c.recv(), None);
        assert!(!c.is_open(), "{code}: closed after the close frame");
    }
    assert_eq!(texts(&mut good), ["one", "two", "three"]);
    assert!(good.is_open());
    let closed: Vec<(ConnectionId, u16)> = log
        .borrow()
        .closed
        .iter()
        .map(|(i, c, _)| (*i, *c))
        .collect();
    assert_eq!(
        closed,
        [
            (unmasked.id(), 1002),
            (bad_utf8.id(), 1007),
            (too_big.id(), 1009)
        ]
    );
    let m = engine.metrics();
    assert_eq!(
        (m.protocol_errors, m.invalid_data_errors, m.too_big_errors),
        (1, 1, 1)
    );
    assert_eq!((m.messages_in, m.messages_out), (3, 3));
}

// ---- pings, heartbeats, timeouts ----

#[test]
fn a_ping_is_answered_with_a_pong_carrying_its_payload() {
    let (engine, _log) = engine(1);
    let mut c = engine.connect(0, "/");
    c.send(OpCode::Ping, b"abc");
    assert_eq!(c.take_raw(), b"\x8a\x03abc");
    c.send(OpCode::Ping, b"");
    assert_eq!(c.recv(), Some(Message::Pong(Default::default())));
    let m = engine.metrics();
    assert_eq!((m.pings_in, m.pongs_superseded, m.messages_in), (2, 0, 0));
}

#[test]
fn pongs_for_a_peer_that_stopped_reading_are_held_then_closed_as_a_ping_flood() {
    let mut config = Config::default();
    config.heartbeat_interval = None;
    config.heartbeat_timeout = Duration::from_secs(1);
    let (engine, log) = engine_with(config, 1);
    let mut c = engine.connect(0, "/");
    let big: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 253) as u8).collect();
    let frame_len = 10 + big.len();
    // The client reads the first 1000 bytes of the echo, then nothing.
    c.set_window(Some(1000));
    c.send_binary(&big);
    assert_eq!(c.queued(), frame_len - 1000);

    for i in 0..1000 {
        c.send(OpCode::Ping, format!("p{i}").as_bytes());
        if i == 0 {
            // The first pong is queued behind the echo: 4 bytes.
            assert_eq!(c.queued(), frame_len - 1000 + 4);
        }
    }
    // The rest are held, one at a time, each replacing the last: the queue did not grow. Of
    // 1000 pings, one pong is queued, one is held (the last ping's), 998 were replaced.
    assert_eq!(c.queued(), frame_len - 1000 + 4);
    let m = engine.metrics();
    assert_eq!((m.pings_in, m.pongs_superseded), (1000, 998));

    // No progress for less than the heartbeat timeout: still open.
    engine.tick(Duration::from_millis(900));
    assert_eq!(engine.metrics().slow_consumer_closes, 0);
    // The heartbeat timeout without progress: closed by policy, what waits is dropped, the
    // close frame follows the echo.
    engine.tick(Duration::from_millis(100));
    let m = engine.metrics();
    assert_eq!((m.ping_flood_closes, m.slow_consumer_closes), (1, 1));
    let close = close_frame(CLOSE_SLOW_CONSUMER.0, "slow consumer");
    assert_eq!(c.queued(), frame_len - 1000 + close.len());

    // Reading again: the whole echo, then the close; no pong.
    c.set_window(None);
    assert_eq!(c.recv(), Some(Message::Binary(big.into())));
    assert_eq!(c.expect_close(), Some(CLOSE_SLOW_CONSUMER.0));
    assert_eq!(c.recv(), None);
    c.send_close(CLOSE_SLOW_CONSUMER.0, "");
    assert!(!c.is_open());
    assert_eq!(
        log.borrow().closed,
        [(c.id(), CLOSE_SLOW_CONSUMER.0, "slow consumer".to_owned())]
    );
}

#[test]
fn a_heartbeat_ping_goes_out_after_the_interval_and_an_unanswered_one_closes_4002() {
    let mut config = Config::default();
    config.heartbeat_interval = Some(Duration::from_secs(1));
    config.heartbeat_timeout = Duration::from_secs(1);
    let (engine, log) = engine_with(config, 1);
    let mut answers = engine.connect(0, "/");
    let mut silent = engine.connect(0, "/");

    // Timers are checked by a scan every 250 ms: a deadline fires within one scan after it.
    engine.run_for(Duration::from_millis(900));
    assert_eq!(silent.take_raw(), b"", "silent for 0.9 s only");
    engine.run_for(Duration::from_millis(350));
    assert_eq!(silent.take_raw(), [0x89, 0x00]);
    assert_eq!(answers.recv(), Some(Message::Ping(Default::default())));
    answers.send(OpCode::Pong, b"");

    engine.run_for(Duration::from_millis(900));
    assert!(silent.is_open(), "the ping is not a second old");
    engine.run_for(Duration::from_millis(350));
    assert_eq!(
        silent.take_raw(),
        close_frame(CLOSE_HEARTBEAT_TIMEOUT.0, "")
    );
    assert!(!silent.is_open());
    // The one that answered gets its next ping an interval after its pong instead.
    assert_eq!(answers.recv(), Some(Message::Ping(Default::default())));
    assert!(answers.is_open());
    assert_eq!(engine.metrics().heartbeat_timeouts, 1);
    assert_eq!(
        log.borrow().closed,
        [(silent.id(), CLOSE_HEARTBEAT_TIMEOUT.0, String::new())]
    );
}

#[test]
fn an_idle_connection_is_closed_4003_at_the_idle_timeout() {
    let mut config = Config::default();
    config.heartbeat_interval = None;
    config.idle_timeout = Some(Duration::from_secs(2));
    let (engine, log) = engine_with(config, 1);
    let mut c = engine.connect(0, "/");
    engine.tick(Duration::from_secs(1));
    c.send_text("still here");
    assert_eq!(c.recv_text().as_deref(), Some("still here"));
    engine.run_for(Duration::from_millis(1900));
    assert!(c.is_open(), "quiet for 1.9 s only");
    // Within one timer scan (250 ms) after the deadline.
    engine.run_for(Duration::from_millis(350));
    assert_eq!(c.expect_close(), Some(CLOSE_IDLE_TIMEOUT.0));
    assert!(!c.is_open());
    assert_eq!(engine.metrics().idle_timeouts, 1);
    assert_eq!(
        log.borrow().closed,
        [(c.id(), CLOSE_IDLE_TIMEOUT.0, String::new())]
    );
}

// ---- slow consumers ----

/// A client reading 500 bytes of a first 1000-byte message, then nothing, and a flood of 20
/// more 1000-byte messages with a 4096-byte write-buffer limit: 5 fit behind the message being
/// written (the 6th finds 5020 bytes waiting).
fn flood(policy: SlowConsumerPolicy) -> (MemEngine<App>, SharedLog, MemClient) {
    let mut config = Config::default();
    config.write_buffer_limit = 4096;
    config.slow_consumer = policy;
    let (engine, log) = engine_with(config, 1);
    let mut c = engine.connect(0, "/");
    c.set_window(Some(500));
    c.send_text("!flood 1 1000");
    assert_eq!(
        c.queued(),
        1004 - 500,
        "half of the first frame is in the kernel"
    );
    c.send_text("!flood 20 1000");
    (engine, log, c)
}

#[test]
fn a_handler_flooding_a_client_that_does_not_read_closes_it_4001_with_whole_frames() {
    let (engine, log, mut c) = flood(SlowConsumerPolicy::Close);
    let sends = std::mem::take(&mut log.borrow_mut().sends);
    let mut expected = vec![Ok(()); 6];
    expected.push(Err(SendError::SlowConsumer));
    expected.extend([Err(SendError::Closed); 14]);
    assert_eq!(sends, expected);
    let m = engine.metrics();
    assert_eq!((m.slow_consumer_closes, m.slow_consumer_drops), (1, 0));
    assert_eq!(m.messages_out, 6);
    // What waited was dropped; the frame partly written completes, the close follows it.
    c.set_window(None);
    assert_eq!(c.recv(), Some(Message::Binary(vec![0; 1000].into())));
    assert_eq!(c.expect_close(), Some(CLOSE_SLOW_CONSUMER.0));
    assert_eq!(c.recv(), None);
}

#[test]
fn drop_newest_drops_and_counts_what_does_not_fit_and_keeps_the_connection() {
    let (engine, log, mut c) = flood(SlowConsumerPolicy::DropNewest);
    let sends = std::mem::take(&mut log.borrow_mut().sends);
    let mut expected = vec![Ok(()); 6];
    expected.extend([Err(SendError::SlowConsumer); 15]);
    assert_eq!(sends, expected);
    let m = engine.metrics();
    assert_eq!((m.slow_consumer_closes, m.slow_consumer_drops), (0, 15));
    c.set_window(None);
    let got = c.recv_all();
    let want: Vec<Message> = [0u8, 0, 1, 2, 3, 4]
        .iter()
        .map(|&i| Message::Binary(vec![i; 1000].into()))
        .collect();
    assert_eq!(got, want);
    c.send_text("still served");
    assert_eq!(c.recv_text().as_deref(), Some("still served"));
    assert!(log.borrow().closed.is_empty());
}

// ---- fan-out ----

#[test]
fn subscribers_on_both_cores_receive_a_publish_after_the_pump() {
    let (engine, _log) = engine(2);
    let mut subs: Vec<MemClient> = (0..4).map(|i| engine.connect(i % 2, "/")).collect();
    for s in subs.iter_mut() {
        subscribe(s, "room");
    }
    let mut publisher = engine.connect(1, "/");
    assert_eq!(engine.handle().subscriber_count("room"), 4);

    publisher.send_text("!pub room hi");
    // Core 1's subscribers have it at once; core 0's once it is woken.
    assert_eq!(texts(&mut subs[1]), ["hi"]);
    assert_eq!(texts(&mut subs[0]), Vec::<String>::new());
    assert_eq!(engine.pump(), 1);
    for (i, s) in subs.iter_mut().enumerate() {
        let want: &[&str] = if i == 1 { &[] } else { &["hi"] };
        assert_eq!(texts(s), want, "subscriber {i} on core {}", s.core());
    }
    assert_eq!(
        texts(&mut publisher),
        Vec::<String>::new(),
        "not a subscriber"
    );
    let m = engine.metrics();
    assert_eq!((m.publishes, m.deliveries, m.forwarded), (1, 4, 1));
    assert_eq!(engine.core_metrics(0).unwrap().deliveries, 2);
}

#[test]
fn fan_out_spans_more_than_64_cores() {
    // 130 cores (three words of core set, 16,900 rings at the automatic capacity): subscribers
    // on cores 0, 64, 100 and 129 get a publish made on core 70, and a handle publish; the
    // cores without subscribers are not even woken for them.
    let (engine, _log) = engine(130);
    let mut subs: Vec<MemClient> = [0, 64, 100, 129]
        .into_iter()
        .map(|core| engine.connect(core, "/"))
        .collect();
    for s in subs.iter_mut() {
        subscribe(s, "wide");
    }
    let mut publisher = engine.connect(70, "/");
    publisher.send_text("!pub wide from core 70");
    engine.pump();
    engine.handle().publish("wide", "from outside");
    engine.pump();
    for s in subs.iter_mut() {
        assert_eq!(
            texts(s),
            ["from core 70", "from outside"],
            "subscriber on core {}",
            s.core()
        );
    }
    let m = engine.metrics();
    assert_eq!(m.deliveries, 8);
    assert_eq!(
        m.forwarded, 4,
        "core 70 forwarded to the four cores with subscribers only"
    );
}

#[test]
fn send_to_many_rings_every_core_past_the_first_64() {
    let (engine, _log) = engine(130);
    let mut clients: Vec<MemClient> = [1, 65, 129]
        .into_iter()
        .map(|c| engine.connect(c, "/"))
        .collect();
    let ids: Vec<_> = clients.iter().map(MemClient::id).collect();
    assert_eq!(engine.handle().send_text_to_many(&ids, "to all three"), 3);
    engine.pump();
    for c in clients.iter_mut() {
        assert_eq!(texts(c), ["to all three"], "client on core {}", c.core());
    }
}

#[test]
fn exclude_and_filter_pick_the_recipients_on_every_core() {
    let (engine, _log) = engine(2);
    let mut plain0 = engine.connect(0, "/");
    let mut vip0 = engine.connect(0, "/?vip");
    let mut plain1 = engine.connect(1, "/");
    let mut vip1 = engine.connect(1, "/?vip=1");
    for c in [&mut plain0, &mut vip0, &mut plain1, &mut vip1] {
        subscribe(c, "room");
    }
    // The sender (a subscriber) is excluded.
    plain1.send_text("!pubx room not-for-me");
    engine.pump();
    for c in [&mut plain0, &mut vip0, &mut vip1] {
        assert_eq!(texts(c), ["not-for-me"]);
    }
    assert_eq!(texts(&mut plain1), Vec::<String>::new());
    assert_eq!(engine.metrics().deliveries_filtered, 1);

    // Only connections whose user data is a `Vip`.
    plain0.send_text("!pubvip room vips-only");
    engine.pump();
    assert_eq!(texts(&mut vip0), ["vips-only"]);
    assert_eq!(texts(&mut vip1), ["vips-only"]);
    assert_eq!(texts(&mut plain0), Vec::<String>::new());
    assert_eq!(texts(&mut plain1), Vec::<String>::new());
    let m = engine.metrics();
    assert_eq!((m.deliveries, m.deliveries_filtered), (5, 3));
}

#[test]
fn broadcast_all_reaches_every_open_connection_on_every_core() {
    let (engine, _log) = engine(2);
    let mut clients: Vec<MemClient> = (0..5).map(|i| engine.connect(i % 2, "/")).collect();
    let mut gone = engine.connect(1, "/");
    gone.send_close(1000, "");
    assert!(!gone.is_open());
    clients[4].send_text("!all everyone");
    engine.pump();
    for c in clients.iter_mut() {
        assert_eq!(texts(c), ["everyone"], "{:?}", c.id());
    }
    let m = engine.metrics();
    assert_eq!((m.publishes, m.deliveries, m.forwarded), (1, 5, 1));
}

#[test]
fn order_holds_across_channels_and_direct_sends_from_one_publisher() {
    let (engine, _log) = engine(2);
    let mut publisher = engine.connect(0, "/");
    let mut both_far = engine.connect(1, "/");
    let mut a_only = engine.connect(0, "/");
    for c in [&mut publisher, &mut both_far] {
        subscribe(c, "ta");
        subscribe(c, "tb");
    }
    subscribe(&mut a_only, "ta");
    publisher.send_text("!mix ta tb");
    engine.pump();
    let mine: Vec<String> = (0..100)
        .flat_map(|i| [format!("a {i}"), format!("b {i}"), format!("d {i}")])
        .collect();
    assert_eq!(texts(&mut publisher), mine);
    let far: Vec<String> = (0..100)
        .flat_map(|i| [format!("a {i}"), format!("b {i}")])
        .collect();
    assert_eq!(texts(&mut both_far), far);
    let a: Vec<String> = (0..100).map(|i| format!("a {i}")).collect();
    assert_eq!(texts(&mut a_only), a);
}

#[test]
fn a_full_ring_spills_and_the_pump_delivers_everything_in_order() {
    let mut config = Config::default();
    config.ring_capacity = 4;
    let (engine, _log) = engine_with(config, 2);
    let mut far = engine.connect(1, "/");
    subscribe(&mut far, "t");
    let mut publisher = engine.connect(0, "/");
    publisher.send_text("!burst t 100");
    let m = engine.metrics();
    assert_eq!((m.forwarded, m.spills), (100, 96));
    let rounds = engine.pump();
    assert!(rounds > 1 && rounds <= MAX_PUMP_ROUNDS, "{rounds} rounds");
    let want: Vec<String> = (0..100).map(|i| format!("t {i}")).collect();
    assert_eq!(texts(&mut far), want);
    assert_eq!(engine.pump(), 1, "nothing left");
}

#[test]
#[should_panic(expected = "work still waiting after 64 rounds")]
fn the_pump_gives_up_after_its_round_limit() {
    let (engine, _log) = engine(1);
    let mut c = engine.connect(0, "/");
    subscribe(&mut c, "t");
    let handle = engine.handle();
    // Each wake takes at most 1024 publishes from outside: 70,000 need more than 64 rounds.
    for i in 0..70_000 {
        handle.publish("t", &i.to_string());
    }
    engine.pump();
}

// ---- the cork ----

#[test]
fn a_thousand_publishes_in_one_callback_reach_each_subscriber_in_a_few_buffers() {
    let (engine, _log) = engine(2);
    let mut near: Vec<MemClient> = (0..4).map(|_| engine.connect(0, "/")).collect();
    let mut far: Vec<MemClient> = (0..4).map(|_| engine.connect(1, "/")).collect();
    for c in near.iter_mut().chain(far.iter_mut()) {
        subscribe(c, "room");
    }
    let mut publisher = engine.connect(0, "/");
    let before = (
        engine.core_metrics(0).unwrap(),
        engine.core_metrics(1).unwrap(),
    );
    publisher.send_text("!burst room 1000");
    engine.pump();
    let after = (
        engine.core_metrics(0).unwrap(),
        engine.core_metrics(1).unwrap(),
    );
    let want: Vec<String> = (0..1000).map(|i| format!("room {i}")).collect();
    for c in near.iter_mut().chain(far.iter_mut()) {
        assert_eq!(texts(c), want);
    }
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1)] {
        assert_eq!(delta(b, a, "deliveries"), 4000);
        let runs = delta(b, a, "delivery_runs");
        assert!(
            (4..=4 * 16).contains(&runs),
            "{runs} buffers for 4 subscribers"
        );
    }
}

#[test]
fn a_direct_send_after_publishes_in_the_same_callback_arrives_after_them() {
    let (engine, _log) = engine(1);
    let mut buddy = engine.connect(0, "/");
    let mut other = engine.connect(0, "/");
    let mut publisher = engine.connect(0, "/");
    for c in [&mut buddy, &mut other, &mut publisher] {
        subscribe(c, "room");
    }
    buddy.send_text("!buddy");
    publisher.send_text("!corked room 1000");
    let published: Vec<String> = (0..1000).map(|i| format!("room {i}")).collect();
    let mut want = published.clone();
    want.push("self-done".into());
    assert_eq!(texts(&mut publisher), want);
    let mut want = published.clone();
    want.push("buddy-done".into());
    assert_eq!(texts(&mut buddy), want);
    assert_eq!(texts(&mut other), published);
}

// ---- the handle ----

#[test]
fn handle_operations_from_another_thread_arrive_after_the_pump() {
    let (engine, log) = engine(2);
    let mut a = engine.connect(0, "/");
    let mut b = engine.connect(1, "/");
    let mut stale = engine.connect(1, "/");
    stale.send_close(1000, "");
    let (a_id, b_id, stale_id) = (a.id(), b.id(), stale.id());
    let handle = engine.handle();

    let h = handle.clone();
    std::thread::spawn(move || {
        assert!(h.send_text(b_id, "to b"));
        assert!(h.send_binary(a_id, b"\x01\x02"));
        assert!(h.send_text(stale_id, "to nobody"));
        assert!(h.subscribe(a_id, "news"));
        assert!(h.subscribe(b_id, "news"));
    })
    .join()
    .unwrap();
    assert_eq!(b.recv(), None, "queued until the pump");
    engine.pump();
    assert_eq!(b.take_raw(), b"\x81\x04to b");
    assert_eq!(a.recv(), Some(Message::Binary(vec![1, 2].into())));
    assert_eq!(engine.metrics().sends_to_closed, 1);
    assert_eq!(handle.subscriber_count("news"), 2);
    assert_eq!(handle.channels(), [("news".to_owned(), 2)]);

    let h = handle.clone();
    std::thread::spawn(move || {
        h.publish("news", "extra");
        h.publish("nobody-listens", "lost");
        h.broadcast_all(b"all", MessageKind::Binary, PublishOptions::default());
    })
    .join()
    .unwrap();
    engine.pump();
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_text().as_deref(), Some("extra"));
        assert_eq!(c.recv(), Some(Message::Binary(b"all".to_vec().into())));
        assert_eq!(c.recv(), None);
    }

    let h = handle.clone();
    std::thread::spawn(move || assert!(h.close(a_id, CloseCode(4005), "kicked")))
        .join()
        .unwrap();
    engine.pump();
    assert_eq!(a.take_raw(), close_frame(4005, "kicked"));
    a.send_close(4005, "");
    assert!(!a.is_open());
    assert!(b.is_open());
    let m = engine.metrics();
    assert_eq!(m.publishes, 3);
    assert_eq!(
        log.borrow().closed.last(),
        Some(&(a_id, 4005, "kicked".to_owned()))
    );
}

#[test]
fn shutdown_closes_everyone_with_1001_and_stops_once_they_are_gone() {
    let mut config = Config::default();
    config.drain_timeout = Duration::from_secs(3);
    let (engine, log) = engine_with(config, 2);
    let mut polite = engine.connect(0, "/");
    let mut silent = engine.connect(1, "/");
    engine.handle().shutdown();
    engine.pump();
    assert_eq!(polite.take_raw(), close_frame(1001, "server shutting down"));
    assert_eq!(silent.expect_close(), Some(1001));
    assert!(!engine.accepting(0) && !engine.accepting(1));
    assert_eq!(
        engine.try_connect(0, &request("/", &[])).err(),
        Some(ConnectError::NotAccepting)
    );
    polite.send_close(1001, "");
    assert!(!polite.is_open());
    engine.tick(Duration::from_millis(100));
    assert!(engine.stopped(0), "core 0 has no connection left");
    assert!(!engine.stopped(1), "core 1 waits for its client");
    engine.tick(Duration::from_secs(3));
    assert!(engine.stopped(1), "the drain timeout passed");
    assert!(!silent.is_open());
    let codes: Vec<u16> = log.borrow().closed.iter().map(|c| c.1).collect();
    assert_eq!(codes, [1001, 1001]);
}

#[test]
fn a_handle_send_after_a_handle_publish_arrives_after_it() {
    let (engine, _log) = engine(1);
    let mut c = engine.connect(0, "/");
    subscribe(&mut c, "news");
    let handle = engine.handle();
    handle.publish("news", "first");
    handle.send_text(c.id(), "second");
    engine.pump();
    assert_eq!(texts(&mut c), ["first", "second"]);
}
