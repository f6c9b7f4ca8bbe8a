//! The manager's message path over real sockets: router errors (the connection stays open),
//! middleware order and short-circuit, schema checks, the per-message context, size and rate
//! limits (trigger at the configured rate, recover, close after repeated abuse).

#[path = "manager_util.rs"]
mod util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_ws_server::{AbusePolicy, Auth, ErrorKind, Manager, RateLimit, RouteError, Router};
use tungstenite::Message as T;
use util::*;

#[test]
fn router_errors_answer_and_keep_the_connection_open() {
    let manager = Manager::builder().build();
    let engine = start(&manager, config(2), basic_router);
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();
    let cases = [
        (
            "not json",
            r#"{"type":"error","error":"Invalid message format"}"#,
        ),
        (
            r#"[{"type":"echo"}]"#,
            r#"{"type":"error","error":"Invalid message format"}"#,
        ),
        (
            r#""echo""#,
            r#"{"type":"error","error":"Invalid message format"}"#,
        ),
        (
            r#"{"type":5,"id":1}"#,
            r#"{"type":"error","error":"Invalid message format"}"#,
        ),
        (
            r#"{"type":"echo""#,
            r#"{"type":"error","error":"Invalid message format"}"#,
        ),
        (
            r#"{"id":7,"data":{}}"#,
            r#"{"type":"error","id":7,"error":"Missing message type"}"#,
        ),
        (
            r#"{"type":"","id":"a"}"#,
            r#"{"type":"error","id":"a","error":"Missing message type"}"#,
        ),
        (
            r#"{"type":"nope","id":{"k":[1]}}"#,
            r#"{"type":"error","id":{"k":[1]},"error":"Unknown message type"}"#,
        ),
        (
            r#"{"type":"nope"}"#,
            r#"{"type":"error","error":"Unknown message type"}"#,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(ask(&mut ws, input), want, "{input}");
    }
    ws.send(T::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(
        recv(&mut ws),
        r#"{"type":"error","error":"Invalid message format"}"#
    );
    // Still open and routing; ids of any JSON type are echoed verbatim.
    assert_eq!(
        ask(
            &mut ws,
            r#"{"id":"x-1","data":{"a":[1,"é"]},"type":"echo","extra":true}"#
        ),
        r#"{"type":"echo","id":"x-1","data":{"a":[1,"é"]}}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"ping","id":3}"#),
        r#"{"type":"pong","id":3}"#
    );
    let s = manager.stats();
    assert_eq!(s.error_count(ErrorKind::InvalidFormat), 6);
    assert_eq!(s.error_count(ErrorKind::MissingType), 2);
    assert_eq!(s.error_count(ErrorKind::UnknownType), 2);
}

#[test]
fn middleware_runs_in_order_around_the_route_and_can_stop() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let manager = Manager::builder().build();
    let l = log.clone();
    let engine = start(&manager, config(1), move || {
        let (l1, l2, l3) = (l.clone(), l.clone(), l.clone());
        Router::new()
            .middleware(move |ctx, msg, next| {
                l1.lock().unwrap().push(format!("a>{}", msg.kind()));
                next.run(ctx, msg);
                l1.lock().unwrap().push("a<".into());
            })
            .middleware(move |ctx, msg, next| {
                l2.lock().unwrap().push("b>".into());
                match msg.kind() {
                    "blocked" => {
                        let _ = ctx.error("Blocked");
                    }
                    "silent" => {}
                    "answered" => {
                        let _ = ctx.reply("answered", &"by b");
                    }
                    _ => next.run(ctx, msg),
                }
                l2.lock().unwrap().push("b<".into());
            })
            .route("echo", move |ctx, msg| {
                l3.lock().unwrap().push("route".into());
                ctx.reply_raw("echo", msg.data_raw())?;
                Ok(())
            })
    });
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();
    let take = || std::mem::take(&mut *log.lock().unwrap()).join(" ");

    assert_eq!(
        ask(&mut ws, r#"{"type":"echo","data":1}"#),
        r#"{"type":"echo","data":1}"#
    );
    assert_eq!(take(), "a>echo b> route b< a<");
    assert_eq!(
        ask(&mut ws, r#"{"type":"blocked","id":2}"#),
        r#"{"type":"error","id":2,"error":"Blocked"}"#
    );
    assert_eq!(take(), "a>blocked b> b< a<");
    assert_eq!(
        ask(&mut ws, r#"{"type":"answered","id":3}"#),
        r#"{"type":"answered","id":3,"data":"by b"}"#
    );
    assert_eq!(take(), "a>answered b> b< a<");
    // Stopped silently: nothing is sent; the next message is answered normally.
    send(&mut ws, r#"{"type":"silent"}"#);
    assert_eq!(
        ask(&mut ws, r#"{"type":"echo","data":2}"#),
        r#"{"type":"echo","data":2}"#
    );
    assert_eq!(take(), "a>silent b> b< a< a>echo b> route b< a<");
    // Unknown types pass the whole chain first (middleware may handle any type).
    assert_eq!(
        ask(&mut ws, r#"{"type":"zzz"}"#),
        r#"{"type":"error","error":"Unknown message type"}"#
    );
    assert_eq!(take(), "a>zzz b> b< a<");
    // Parse errors never reach middleware.
    ask(&mut ws, "{");
    assert_eq!(take(), "");
}

fn app_router() -> Router {
    Router::new()
        .schema("join", |msg| match msg.data::<String>() {
            Ok(channel) if !channel.is_empty() && channel.len() <= 32 => Ok(()),
            _ => Err("channel must be a non-empty string of at most 32 bytes".into()),
        })
        .route("join", |ctx, msg| {
            let channel: String = msg.data()?;
            ctx.join(&channel);
            let mut channels = ctx.channels();
            channels.sort();
            ctx.reply("channels", &channels)?;
            Ok(())
        })
        .route("leave", |ctx, msg| {
            let channel: String = msg.data()?;
            if !ctx.leave(&channel) {
                return Err(RouteError::new("not in that channel"));
            }
            ctx.reply("channels", &ctx.channels())?;
            Ok(())
        })
        .route("add", |ctx, msg| {
            let (a, b): (i64, i64) = msg.data()?;
            ctx.reply("sum", &(a + b))?;
            Ok(())
        })
        .route("remember", |ctx, msg| {
            let v: String = msg.data()?;
            ctx.set_data(v);
            ctx.reply_raw("ok", None)?;
            Ok(())
        })
        .route("recall", |ctx, _| {
            let v = ctx.data::<String>().cloned();
            ctx.reply("recall", &v)?;
            Ok(())
        })
        .route("me", |ctx, _| {
            let u = ctx.user().expect("authenticated");
            let (id, perms) = (u.id().to_owned(), u.permissions().to_vec());
            let chat = ctx.has_permission("chat");
            ctx.reply("me", &(id, perms, chat))?;
            Ok(())
        })
        .route("say", |ctx, msg| {
            let text: String = msg.data()?;
            ctx.publish_others("lobby", &text);
            Ok(())
        })
}

#[test]
fn schema_checks_route_errors_and_the_message_context() {
    let manager = Manager::builder().auth(Auth::jwt(jwt())).build();
    let engine = start(&manager, config(2), app_router);
    let addr = engine.local_addr();
    let mut ws = upgrade(addr, &format!("/?token={}", token("gina")), &[]).open();

    assert_eq!(
        ask(&mut ws, r#"{"type":"join","id":1,"data":""}"#),
        r#"{"type":"error","id":1,"error":"channel must be a non-empty string of at most 32 bytes"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"join","id":2,"data":42}"#),
        r#"{"type":"error","id":2,"error":"channel must be a non-empty string of at most 32 bytes"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"join","data":"lobby"}"#),
        r#"{"type":"channels","data":["lobby"]}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"join","data":"games"}"#),
        r#"{"type":"channels","data":["games","lobby"]}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"leave","data":"games"}"#),
        r#"{"type":"channels","data":["lobby"]}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"leave","id":"l","data":"games"}"#),
        r#"{"type":"error","id":"l","error":"not in that channel"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"add","id":9,"data":[2,40]}"#),
        r#"{"type":"sum","id":9,"data":42}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"add","id":10,"data":["2"]}"#),
        r#"{"type":"error","id":10,"error":"Invalid message data"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"recall"}"#),
        r#"{"type":"recall","data":null}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"remember","id":0,"data":"blue"}"#),
        r#"{"type":"ok","id":0}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"recall"}"#),
        r#"{"type":"recall","data":"blue"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"type":"me"}"#),
        r#"{"type":"me","data":["gina",["chat"],true]}"#
    );

    // Rooms reach across cores: others in the lobby (on either core) hear gina.
    let mut others: Vec<Ws> = (0..6)
        .map(|i| {
            let mut o = upgrade(addr, &format!("/?token={}", token(&format!("o{i}"))), &[]).open();
            ask(&mut o, r#"{"type":"join","data":"lobby"}"#);
            o
        })
        .collect();
    send(&mut ws, r#"{"type":"say","data":"{\"hello\":1}"}"#);
    for o in &mut others {
        assert_eq!(recv(o), r#"{"hello":1}"#);
    }
    let s = manager.stats();
    assert_eq!(s.error_count(ErrorKind::InvalidData), 3);
    assert_eq!(s.error_count(ErrorKind::Handler), 1);
}

#[test]
fn oversized_messages_are_refused_and_the_connection_stays() {
    let manager = Manager::builder().max_message_size(1024).build();
    let engine = start(&manager, config(1), basic_router);
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();
    let big = format!(r#"{{"type":"echo","id":1,"data":"{}"}}"#, "x".repeat(2000));
    assert_eq!(
        ask(&mut ws, &big),
        r#"{"type":"error","error":"Message too large"}"#
    );
    let fits = format!(r#"{{"type":"echo","data":"{}"}}"#, "x".repeat(900));
    assert_eq!(ask(&mut ws, &fits), fits);
    assert_eq!(manager.stats().error_count(ErrorKind::TooLarge), 1);
}

/// Sends `n` echo requests back to back, then reads `n` answers: (echoed, refused).
fn burst(ws: &mut Ws, n: usize) -> (usize, usize) {
    for i in 0..n {
        ws.write(T::text(format!(r#"{{"type":"echo","data":{i}}}"#)))
            .unwrap();
    }
    ws.flush().unwrap();
    let mut echoed = 0;
    let mut refused = 0;
    for _ in 0..n {
        let m = recv(ws);
        if m.starts_with(r#"{"type":"echo""#) {
            echoed += 1;
        } else {
            assert_eq!(m, r#"{"type":"error","error":"Rate limit exceeded"}"#);
            refused += 1;
        }
    }
    (echoed, refused)
}

#[test]
fn rate_limit_triggers_at_the_configured_rate_and_recovers() {
    // 20 messages/s with bursts of 5.
    let manager = Manager::builder()
        .rate_limit(RateLimit::new().messages(20.0, 5))
        .build();
    let engine = start(&manager, config(1), basic_router);
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();

    let t0 = Instant::now();
    let (ok, refused) = burst(&mut ws, 30);
    // The burst, plus one per 50 ms that passed while sending.
    let slack = (t0.elapsed().as_millis() / 50) as usize;
    assert!((5..=5 + slack + 1).contains(&ok), "{ok} passed");
    assert_eq!(ok + refused, 30);

    // Recovery: after 300 ms the bucket is full again (5), and not more.
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    let (ok, _) = burst(&mut ws, 10);
    let slack = (t1.elapsed().as_millis() / 50) as usize;
    assert!(
        (5..=5 + slack + 1).contains(&ok),
        "{ok} passed after recovery"
    );

    // Sustained at the rate (one every 60 ms): nothing refused.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..8 {
        let m = ask(&mut ws, &format!(r#"{{"type":"echo","data":{i}}}"#));
        assert_eq!(m, format!(r#"{{"type":"echo","data":{i}}}"#));
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(manager.stats().error_count(ErrorKind::RateLimited) >= 25);
}

#[test]
fn byte_rate_limit() {
    // 10 bytes/s, bursts of 300 bytes: two 120-byte messages pass, the third does not.
    let manager = Manager::builder()
        .rate_limit(RateLimit::new().bytes(10.0, 300))
        .build();
    let engine = start(&manager, config(1), basic_router);
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();
    let msg = format!(r#"{{"type":"echo","data":"{}"}}"#, "y".repeat(120 - 25));
    assert_eq!(msg.len(), 120);
    assert_eq!(ask(&mut ws, &msg), msg);
    assert_eq!(ask(&mut ws, &msg), msg);
    assert_eq!(
        ask(&mut ws, &msg),
        r#"{"type":"error","error":"Rate limit exceeded"}"#
    );
}

#[test]
fn repeated_abuse_closes_with_4029() {
    let manager = Manager::builder()
        .rate_limit(RateLimit::new().messages(1.0, 2))
        .abuse_policy(AbusePolicy::new(3, Duration::from_secs(10)))
        .build();
    let engine = start(&manager, config(1), basic_router);
    let mut ws = upgrade(engine.local_addr(), "/", &[]).open();
    for i in 0..6 {
        ws.write(T::text(format!(r#"{{"type":"echo","data":{i}}}"#)))
            .unwrap();
    }
    ws.flush().unwrap();
    // 2 pass, 3 refusals are tolerated, the 4th refusal closes.
    let mut answers = Vec::new();
    let (code, reason) = loop {
        match ws.read().unwrap() {
            T::Text(t) => answers.push(t.as_str().to_owned()),
            T::Close(Some(f)) => break (u16::from(f.code), f.reason.as_str().to_owned()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((code, reason.as_str()), (4029, "rate limit exceeded"));
    // Every reply queued before the close arrives first: 2 echoes, 4 refusals.
    assert_eq!(answers.len(), 6, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|a| a.contains("Rate limit")).count(),
        4
    );
    let s = manager.stats();
    assert_eq!(s.error_count(ErrorKind::RateLimited), 4);
    assert_eq!(s.abuse_closes, 1);
}

#[test]
fn per_user_rate_limit_is_shared_across_cores() {
    // The user may send 6 messages in a burst, whatever the connection or core.
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .user_rate_limit(RateLimit::new().messages(0.1, 6))
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let t = token("hank");
    let mut socks: Vec<Ws> = (0..8)
        .map(|_| upgrade(addr, &format!("/?token={t}"), &[]).open())
        .collect();
    let cores: std::collections::HashSet<usize> = manager
        .user_sockets("hank")
        .iter()
        .map(|id| id.core())
        .collect();
    assert_eq!(cores.len(), 2);
    let mut ok = 0;
    for round in 0..2 {
        for ws in &mut socks {
            let a = ask(ws, &format!(r#"{{"type":"echo","data":{round}}}"#));
            ok += usize::from(a.starts_with(r#"{"type":"echo""#));
        }
    }
    assert_eq!(ok, 6);
    // Another user is not affected.
    let mut other = upgrade(addr, &format!("/?token={}", token("ivy")), &[]).open();
    assert_eq!(
        ask(&mut other, r#"{"type":"echo","data":0}"#),
        r#"{"type":"echo","data":0}"#
    );
}
