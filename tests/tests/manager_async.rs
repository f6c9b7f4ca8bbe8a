//! Async routes and the credential lifecycle over real WebSockets: async replies in arrival
//! order (and concurrent ones out of it), bounded in-flight work that pauses reading the
//! connection, cancellation on close, error replies from routes and guards; token expiry
//! closing with 4401 at the time of a clock the test controls, `refresh` extending it and
//! re-reading permissions, a refresh for another user refused.

#[path = "manager_util.rs"]
mod util;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_ws_server::{Auth, AuthRejection, Manager, RouteError, Router, UserContext};
use serde_json::{json, Value};
use util::*;

fn call(ws: &mut Ws, v: Value) -> Value {
    send(ws, &v.to_string());
    serde_json::from_str(&recv(ws)).unwrap()
}

fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv(ws)).unwrap()
}

struct CountOnDrop(Arc<AtomicUsize>);
impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn router(done: Arc<AtomicUsize>, dropped: Arc<AtomicUsize>) -> Router {
    Router::new()
        .max_in_flight(4)
        // Waits `data` ms, then echoes it.
        .route_async("wait", |req| async move {
            let ms: u64 = req.data()?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            req.reply("waited", &ms)?;
            Ok(())
        })
        .route_async_concurrent("wait_any", |req| async move {
            let ms: u64 = req.data()?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            req.reply("waited", &ms)?;
            Ok(())
        })
        .route_async("long", move |req| {
            let (done, dropped) = (done.clone(), dropped.clone());
            async move {
                let _guard = CountOnDrop(dropped);
                tokio::time::sleep(Duration::from_secs(30)).await;
                done.fetch_add(1, Ordering::SeqCst);
                req.reply_raw("long", None);
                Ok(())
            }
        })
        .route_async("fail_now", |_req| async move {
            Err(RouteError::new("refused at once"))
        })
        .route_async("fail_later", |_req| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Err(RouteError::new("refused later"))
        })
        .route_async("ready", |req| async move {
            req.reply_raw("ready", req.data_raw());
            Ok(())
        })
        .guard_async(|req| async move {
            tokio::task::yield_now().await;
            if req.kind() == "fail_now" || req.has_permission("chat") || req.user().is_none() {
                Ok(req)
            } else {
                Err(RouteError::new("Forbidden"))
            }
        })
        .route("perm", |ctx, _| {
            let admin = ctx.has_permission("admin");
            ctx.reply("perm", &admin)?;
            Ok(())
        })
}

#[test]
fn async_replies_keep_order_bounded_concurrency_pauses_reading_and_close_cancels() {
    let (done, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let manager = Manager::builder().build();
    let (d2, x2) = (done.clone(), dropped.clone());
    let engine = start(&manager, config(1), move || router(d2.clone(), x2.clone()));
    let addr = engine.local_addr();
    let mut c = upgrade(addr, "/", &[]).open();
    c.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // In order: the slow first one is answered first.
    for (i, ms) in [80u64, 1, 30, 0, 5].iter().enumerate() {
        send(&mut c, &json!({"type":"wait","id":i,"data":ms}).to_string());
    }
    let got: Vec<u64> = (0..5)
        .map(|_| next(&mut c)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // Concurrent: the short ones overtake.
    for (i, ms) in [150u64, 1].iter().enumerate() {
        send(
            &mut c,
            &json!({"type":"wait_any","id":i,"data":ms}).to_string(),
        );
    }
    let got: Vec<u64> = (0..2)
        .map(|_| next(&mut c)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 0]);
    // A ready future answers without a task; sync routes keep working beside async ones.
    assert_eq!(
        call(&mut c, json!({"type":"ready","id":"r","data":[1]}))["data"],
        json!([1])
    );
    // Bounded: 4 in flight, then reading pauses; 20 arrive in order all the same.
    let pauses = engine.handle().metrics().read_pauses;
    for i in 0..20 {
        send(&mut c, &json!({"type":"wait","id":i,"data":10}).to_string());
    }
    let got: Vec<u64> = (0..20)
        .map(|_| next(&mut c)["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..20).collect::<Vec<u64>>());
    assert!(
        engine.handle().metrics().read_pauses > pauses,
        "reading paused at the bound"
    );
    // Errors: at once and after an await, same envelope.
    let r = call(&mut c, json!({"type":"fail_now","id":7}));
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64(), r["error"].as_str()),
        (Some("error"), Some(7), Some("refused at once"))
    );
    let r = call(&mut c, json!({"type":"fail_later","id":8}));
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64(), r["error"].as_str()),
        (Some("error"), Some(8), Some("refused later"))
    );
    let r = call(&mut c, json!({"type":"wait","id":9,"data":"x"}));
    assert_eq!(r["error"], "Invalid message data");
    // Close with 3 long handlers pending (one running, two queued): all dropped, none finish.
    for i in 0..3 {
        send(&mut c, &json!({"type":"long","id":i}).to_string());
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    eventually("the running handler dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    });
    assert_eq!(done.load(Ordering::SeqCst), 0);
    engine.handle().shutdown();
    engine.join().unwrap();
}

fn token_at(sub: &str, exp_secs: u64, perms: &[&str]) -> String {
    jwt().sign(
        &json!({"sub":sub,"exp":exp_secs,"iss":ISS,"aud":AUD,"permissions":perms}).to_string(),
    )
}

#[test]
fn expiry_closes_with_4401_unless_refreshed_and_refresh_rereads_permissions() {
    let now_ms = Arc::new(AtomicU64::new(now_secs() * 1000));
    let clock = now_ms.clone();
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .clock(move || clock.load(Ordering::SeqCst))
        .build();
    let (d, x) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let engine = start(&manager, config(2), move || router(d.clone(), x.clone()));
    let addr = engine.local_addr();
    let t0 = now_secs();
    let connect = |tok: &str| {
        let mut ws = upgrade(addr, &format!("/?token={tok}"), &[]).open();
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        ws
    };
    // Expires at t0+60: before that, nothing; after it, 4401.
    let mut a = connect(&token_at("ann", t0 + 60, &["chat"]));
    let mut b = connect(&token_at("ben", t0 + 60, &["chat"]));
    eventually("both open", || manager.active_connections() == 2);
    now_ms.store((t0 + 59) * 1000, Ordering::SeqCst);
    assert_eq!(manager.enforce_token_expiry(), 0);
    // ben refreshes to t0+600 with new permissions; ann's refresh names another user.
    assert_eq!(call(&mut b, json!({"type":"perm","id":1}))["data"], false);
    let r = call(
        &mut b,
        json!({"type":"refresh","id":2,"data":{"token":token_at("ben", t0 + 600, &["chat","admin"])}}),
    );
    assert_eq!(
        (r["type"].as_str(), r["data"]["expires_at"].as_u64()),
        (Some("refreshed"), Some((t0 + 600) * 1000))
    );
    assert_eq!(
        call(&mut b, json!({"type":"perm","id":3}))["data"],
        true,
        "permissions re-read"
    );
    let r = call(
        &mut a,
        json!({"type":"refresh","id":4,"data":{"token":token_at("ben", t0 + 600, &[])}}),
    );
    assert!(r["error"].as_str().unwrap().contains("another user"), "{r}");
    let r = call(
        &mut a,
        json!({"type":"refresh","id":5,"data":{"token":"garbage"}}),
    );
    assert!(
        r["error"].as_str().unwrap().contains("malformed token"),
        "{r}"
    );
    // t0+61: ann is closed with 4401, ben is not.
    now_ms.store((t0 + 61) * 1000, Ordering::SeqCst);
    assert_eq!(manager.enforce_token_expiry(), 1);
    assert_eq!(expect_close(&mut a).0, 4401);
    assert_eq!(
        call(&mut b, json!({"type":"ready","id":6}))["type"],
        "ready"
    );
    // A refresh with a token already expired by the clock is refused.
    let r = call(
        &mut b,
        json!({"type":"refresh","id":7,"data":{"token":token_at("ben", t0 + 30, &["chat"])}}),
    );
    assert!(
        r["error"].as_str().unwrap().contains("token expired"),
        "{r}"
    );
    // Past the refreshed expiry: ben goes too.
    now_ms.store((t0 + 601) * 1000, Ordering::SeqCst);
    assert_eq!(manager.enforce_token_expiry(), 1);
    assert_eq!(expect_close(&mut b).0, 4401);
    engine.handle().shutdown();
    engine.join().unwrap();
}

#[test]
fn an_async_validator_refreshes_and_a_refusal_keeps_the_rights_until_expiry() {
    let t0 = now_secs();
    let now_ms = Arc::new(AtomicU64::new(t0 * 1000));
    let clock = now_ms.clone();
    let manager = Manager::builder()
        // Users sign in by name (an async validator), with rights until t0+60.
        .auth(Auth::validator(move |info| async move {
            let user = info
                .request
                .query_param("user")
                .unwrap_or("nobody")
                .to_string();
            Ok(UserContext::new(user)
                .with_permissions(["chat"])
                .with_expiry((t0 + 60) * 1000))
        }))
        // Refresh tokens: "renew:<user>:<permission>" (after a lookup), "revoked", "slow".
        .refresh_validator(move |info| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if info.token == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            match info.token.split(':').collect::<Vec<_>>()[..] {
                ["renew", user, perm] => Ok(UserContext::new(user)
                    .with_permissions(["chat", perm])
                    .with_expiry((t0 + 600) * 1000)),
                _ => Err(AuthRejection::unauthorized("session revoked")),
            }
        })
        .auth_timeout(Duration::from_millis(300))
        .clock(move || clock.load(Ordering::SeqCst))
        .build();
    let (d, x) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let engine = start(&manager, config(2), move || router(d.clone(), x.clone()));
    let addr = engine.local_addr();
    let mut b = upgrade(addr, "/?user=ben", &[]).open();
    b.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    eventually("ben open", || manager.active_connections() == 1);
    assert_eq!(call(&mut b, json!({"type":"perm","id":1}))["data"], false);

    // Renewed by the validator: new permissions at once, a later expiry.
    let r = call(
        &mut b,
        json!({"type":"refresh","id":2,"data":{"token":"renew:ben:admin"}}),
    );
    assert_eq!(
        (
            r["type"].as_str(),
            r["id"].as_u64(),
            r["data"]["expires_at"].as_u64()
        ),
        (Some("refreshed"), Some(2), Some((t0 + 600) * 1000)),
        "{r}"
    );
    assert_eq!(call(&mut b, json!({"type":"perm","id":3}))["data"], true);

    // Refusals: another user, the validator's no, a timeout, two at once. Rights unchanged.
    let r = call(
        &mut b,
        json!({"type":"refresh","id":4,"data":{"token":"renew:ann:admin"}}),
    );
    assert_eq!(
        r["error"], "refresh refused: the token is for another user",
        "{r}"
    );
    let r = call(
        &mut b,
        json!({"type":"refresh","id":5,"data":{"token":"revoked"}}),
    );
    assert_eq!(r["error"], "refresh refused: session revoked", "{r}");
    send(
        &mut b,
        &json!({"type":"refresh","id":6,"data":{"token":"slow"}}).to_string(),
    );
    send(
        &mut b,
        &json!({"type":"refresh","id":7,"data":{"token":"renew:ben:x"}}).to_string(),
    );
    let mut answers: Vec<Value> = vec![next(&mut b), next(&mut b)];
    answers.sort_by_key(|v| v["id"].as_u64());
    assert_eq!(
        answers[0]["error"],
        "refresh refused: the validator timed out"
    );
    assert_eq!(
        answers[1]["error"],
        "refresh refused: one is already in progress"
    );
    assert_eq!(call(&mut b, json!({"type":"perm","id":8}))["data"], true);
    assert_eq!(manager.stats().refresh_refused, 4);

    // The renewed expiry holds: not closed at t0+61, closed with 4401 after t0+600.
    now_ms.store((t0 + 61) * 1000, Ordering::SeqCst);
    assert_eq!(manager.enforce_token_expiry(), 0);
    now_ms.store((t0 + 601) * 1000, Ordering::SeqCst);
    assert_eq!(manager.enforce_token_expiry(), 1);
    assert_eq!(expect_close(&mut b).0, 4401);
    assert_eq!(manager.stats().expired_closes, 1);
    engine.handle().shutdown();
    engine.join().unwrap();
}
