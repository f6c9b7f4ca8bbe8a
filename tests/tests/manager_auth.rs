//! Manager authentication over real sockets: every method accepts a valid credential and
//! refuses the bad ones before the `101`, with the right status, body and counter; deferred
//! (async) upgrades release their reservations however they end.

#[path = "manager_util.rs"]
mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_ws_server::{
    ApiKeyAuth, Auth, AuthRejection, Event, JwtAuth, Manager, RejectReason, UserContext,
};
use util::*;

#[test]
fn jwt_accepted_from_every_source() {
    let manager = Manager::builder().auth(Auth::jwt(jwt())).build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let t = token("alice");

    let bearer = format!("Bearer {t}");
    let mut ws = upgrade(addr, "/", &[("Authorization", &bearer)]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"alice"}"#
    );

    let mut ws = upgrade(addr, &format!("/chat?x=1&token={t}"), &[]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami","id":1}"#),
        r#"{"type":"whoami","id":1,"data":"alice"}"#
    );

    let protocols = format!("edge-ws.v1, bearer.{t}");
    let mut ws = upgrade(addr, "/", &[("Sec-WebSocket-Protocol", &protocols)]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"alice"}"#
    );

    // HS384 / HS512 keys work the same way.
    for j in [JwtAuth::hs384(SECRET), JwtAuth::hs512(SECRET)] {
        let m = Manager::builder().auth(Auth::jwt(j.clone())).build();
        let e = start(&m, config(1), basic_router);
        let t = j.sign(&format!(r#"{{"sub":"zed","exp":{}}}"#, now_secs() + 60));
        let mut ws = upgrade(
            e.local_addr(),
            "/",
            &[("Authorization", &format!("Bearer {t}"))],
        )
        .open();
        assert_eq!(
            ask(&mut ws, r#"{"type":"whoami"}"#),
            r#"{"type":"whoami","data":"zed"}"#
        );
    }
    assert_eq!(manager.stats().rejected_total(), 0);
}

#[test]
fn jwt_refusals_are_401_and_counted_by_reason() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .on_event(move |e| {
            if let Event::Rejected { reason, status, .. } = e {
                log.lock().unwrap().push((*reason, *status));
            }
        })
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let now = now_secs();
    let claims = |extra: &str| format!(r#"{{"sub":"alice","iss":"{ISS}","aud":"{AUD}",{extra}}}"#);
    let good = token("alice");
    let (signed, _) = good.rsplit_once('.').unwrap();
    let forged_payload = format!(
        "{}.{}.{}",
        signed.split_once('.').unwrap().0,
        b64(claims(&format!(r#""exp":{}"#, now + 99_999)).as_bytes()),
        good.rsplit_once('.').unwrap().1
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&format!(r#""exp":{}"#, now + 60)).as_bytes())
    );
    let cases: Vec<(&str, String, RejectReason)> = vec![
        (
            "expired",
            jwt().sign(&claims(&format!(r#""exp":{}"#, now - 5))),
            RejectReason::Expired,
        ),
        (
            "not yet valid",
            jwt().sign(&claims(&format!(
                r#""exp":{},"nbf":{}"#,
                now + 7200,
                now + 3600
            ))),
            RejectReason::NotYetValid,
        ),
        (
            "wrong issuer",
            jwt().sign(&format!(
                r#"{{"sub":"a","iss":"evil","aud":"{AUD}","exp":{}}}"#,
                now + 60
            )),
            RejectReason::WrongIssuer,
        ),
        (
            "wrong audience",
            jwt().sign(&format!(
                r#"{{"sub":"a","iss":"{ISS}","aud":"other","exp":{}}}"#,
                now + 60
            )),
            RejectReason::WrongAudience,
        ),
        (
            "bad signature",
            JwtAuth::hs256("not-the-secret").sign(&claims(&format!(r#""exp":{}"#, now + 60))),
            RejectReason::BadSignature,
        ),
        ("forged payload", forged_payload, RejectReason::BadSignature),
        ("alg none", none, RejectReason::UnsupportedAlgorithm),
        (
            "algorithm confusion (HS512 with the same secret)",
            JwtAuth::hs512(SECRET).sign(&claims(&format!(r#""exp":{}"#, now + 60))),
            RejectReason::UnsupportedAlgorithm,
        ),
        (
            "truncated signature",
            good[..good.len() - 4].to_owned(),
            RejectReason::BadSignature,
        ),
        (
            "truncated to two segments",
            signed.to_owned(),
            RejectReason::MalformedToken,
        ),
        (
            "garbage",
            "not.a.jwt".to_owned(),
            RejectReason::MalformedToken,
        ),
        (
            "no exp",
            jwt().sign(&claims(r#""x":1"#)),
            RejectReason::MissingClaim,
        ),
    ];
    for (what, token, reason) in &cases {
        let before = manager.stats().rejected(*reason);
        let (status, body) =
            upgrade(addr, "/", &[("Authorization", &format!("Bearer {token}"))]).refused();
        assert_eq!(status, 401, "{what}");
        assert_eq!(body, reason.as_str(), "{what}");
        assert_eq!(manager.stats().rejected(*reason), before + 1, "{what}");
    }
    // No credentials at all.
    let (status, body) = upgrade(addr, "/", &[]).refused();
    assert_eq!((status, body.as_str()), (401, "missing credentials"));
    let (status, _) = upgrade(addr, "/", &[("Authorization", "Basic YTpi")]).refused();
    assert_eq!(status, 401);

    let stats = manager.stats();
    assert_eq!(stats.rejected_total(), cases.len() as u64 + 2);
    assert_eq!(stats.rejected(RejectReason::MissingCredentials), 2);
    assert_eq!(stats.rejected(RejectReason::BadSignature), 3);
    assert_eq!(stats.active, 0);
    eventually("reservations released", || manager.stats().pending == 0);
    assert_eq!(seen.lock().unwrap().len(), cases.len() + 2);
    assert!(seen.lock().unwrap().iter().all(|&(_, s)| s == 401));
    // The engine counted them as application rejections, and opened nothing.
    let m = engine.handle().metrics();
    assert_eq!(m.rejected_by_application, cases.len() as u64 + 2);
    assert_eq!(m.opened, 0);
}

#[test]
fn api_keys() {
    let manager = Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::keys(
            "x-api-key",
            [
                (
                    "key-alice",
                    UserContext::new("alice").with_permissions(["read"]),
                ),
                ("key-bob", UserContext::new("bob")),
            ],
        )))
        .build();
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();
    let mut ws = upgrade(addr, "/", &[("X-Api-Key", "key-alice")]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"alice"}"#
    );
    let mut ws = upgrade(addr, "/", &[("x-api-key", "key-bob")]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"bob"}"#
    );

    let (status, body) = upgrade(addr, "/", &[("x-api-key", "key-mallory")]).refused();
    assert_eq!((status, body.as_str()), (401, "invalid API key"));
    let (status, body) = upgrade(addr, "/", &[]).refused();
    assert_eq!((status, body.as_str()), (401, "missing credentials"));
    let s = manager.stats();
    assert_eq!(s.rejected(RejectReason::InvalidApiKey), 1);
    assert_eq!(s.rejected(RejectReason::MissingCredentials), 1);

    // A validator closure sees the request and may refuse with its own status.
    let manager = Manager::builder()
        .auth(Auth::api_key(ApiKeyAuth::new(
            "x-api-key",
            |key, req| match (key, req.request.path.as_str()) {
                ("admin", "/admin") => Ok(UserContext::new("root")),
                ("admin", _) => Err(AuthRejection::forbidden("admin keys only on /admin")),
                _ => Err(AuthRejection::invalid_api_key()),
            },
        )))
        .build();
    let engine = start(&manager, config(1), basic_router);
    let addr = engine.local_addr();
    upgrade(addr, "/admin", &[("x-api-key", "admin")]).open();
    let (status, body) = upgrade(addr, "/", &[("x-api-key", "admin")]).refused();
    assert_eq!((status, body.as_str()), (403, "admin keys only on /admin"));
    assert_eq!(manager.stats().rejected(RejectReason::Rejected), 1);
}

/// A validator driven by the `x-user` header: `ok:NAME` (after 30 ms), `forbid`, `fail`,
/// `hang` (never answers).
fn validator_manager(auth_timeout: Duration) -> Manager {
    Manager::builder()
        .auth(Auth::validator(|info| async move {
            let h = info.request.header("x-user").unwrap_or("").to_owned();
            if let Some(name) = h.strip_prefix("ok:") {
                delay(Duration::from_millis(30)).await;
                return Ok(UserContext::new(name).with_data(info.peer));
            }
            match h.as_str() {
                "forbid" => Err(AuthRejection::forbidden("not you")),
                "fail" => Err(AuthRejection::error("directory down")),
                "hang" => std::future::pending().await,
                _ => Err(AuthRejection::unauthorized("who?")),
            }
        }))
        .auth_timeout(auth_timeout)
        .max_connections_per_user(1)
        .build()
}

#[test]
fn async_validator_accepts_refuses_errors_and_times_out() {
    let manager = validator_manager(Duration::from_millis(300));
    let engine = start(&manager, config(2), basic_router);
    let addr = engine.local_addr();

    let mut ws = upgrade(addr, "/", &[("x-user", "ok:bob")]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"bob"}"#
    );
    // Per-user limit 1 applies to validated users too.
    let (status, _) = upgrade(addr, "/", &[("x-user", "ok:bob")]).refused();
    assert_eq!(status, 429);

    let (status, body) = upgrade(addr, "/", &[("x-user", "forbid")]).refused();
    assert_eq!((status, body.as_str()), (403, "not you"));
    let (status, body) = upgrade(addr, "/", &[("x-user", "nobody")]).refused();
    assert_eq!((status, body.as_str()), (401, "who?"));
    let (status, body) = upgrade(addr, "/", &[("x-user", "fail")]).refused();
    assert_eq!((status, body.as_str()), (503, "directory down"));
    let (status, body) = upgrade(addr, "/", &[("x-user", "hang")]).refused();
    assert_eq!((status, body.as_str()), (503, "authentication timed out"));

    let s = manager.stats();
    assert_eq!(s.rejected(RejectReason::Rejected), 2);
    assert_eq!(s.rejected(RejectReason::ValidatorError), 1);
    assert_eq!(s.rejected(RejectReason::AuthTimeout), 1);
    assert_eq!(s.rejected(RejectReason::UserLimit), 1);
    assert_eq!(s.active, 1);
    eventually("only bob's reservation left", || {
        manager.stats().pending == 0
    });
    assert_eq!(manager.user_sockets("bob").len(), 1);
    drop(ws);
    eventually("bob gone", || manager.stats().active == 0);
    assert!(manager.user_sockets("bob").is_empty());
    upgrade(addr, "/", &[("x-user", "ok:bob")]).open();
}

#[test]
fn deferred_upgrades_release_reservations_when_the_client_is_gone() {
    // The engine drops a handshake after 300 ms; the validator says yes after 2 s, to a
    // connection that no longer exists: the engine discards the decision, and with it the
    // reservation (global and per-user limits are both 1 here).
    let mut cfg = config(2);
    cfg.handshake_timeout = Duration::from_millis(300);
    let manager = Manager::builder()
        .auth(validator_auth())
        .auth_timeout(Duration::from_secs(5))
        .max_connections(1)
        .max_connections_per_user(1)
        .build();
    let engine = start(&manager, cfg, basic_router);
    let addr = engine.local_addr();

    assert!(matches!(
        upgrade(addr, "/", &[("x-user", "slow:erin")]),
        Outcome::Dropped
    ));
    // While the validator still runs, its reservation holds the only slot.
    let s = manager.stats();
    assert_eq!((s.active, s.pending), (0, 1));
    let (status, _) = upgrade(addr, "/", &[("x-user", "ok:erin")]).refused();
    assert_eq!(status, 503);
    eventually("late decision discarded and released", || {
        manager.stats().pending == 0
    });
    let mut ws = upgrade(addr, "/", &[("x-user", "ok:erin")]).open();
    assert_eq!(
        ask(&mut ws, r#"{"type":"whoami"}"#),
        r#"{"type":"whoami","data":"erin"}"#
    );
    drop(ws);
    eventually("closed", || manager.stats().active == 0);

    // A client that hangs up itself during validation: same.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         x-user: slow:frank\r\n\r\n"
    )
    .unwrap();
    eventually("validation pending", || manager.stats().pending == 1);
    drop(s);
    eventually("released after the decision", || {
        manager.stats().pending == 0
    });
    upgrade(addr, "/", &[("x-user", "ok:frank")]).open();
}

fn validator_auth() -> Auth {
    Auth::validator(|info| async move {
        let h = info.request.header("x-user").unwrap_or("").to_owned();
        if let Some(name) = h.strip_prefix("slow:") {
            delay(Duration::from_millis(2000)).await;
            return Ok(UserContext::new(name));
        }
        match h.strip_prefix("ok:") {
            Some(name) => Ok(UserContext::new(name)),
            None => Err(AuthRejection::unauthorized("who?")),
        }
    })
}

#[test]
fn refusals_tell_the_client_how_to_proceed() {
    // 401 names the scheme (WWW-Authenticate); 429/503 say when to come back (Retry-After).
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .max_connections_per_user(1)
        .build();
    let engine = start(&manager, config(1), basic_router);
    let addr = engine.local_addr();
    let (_, head) = send_upgrade(addr, "/", &[]).expect("an answer");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(head.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{head}");
    assert!(!head.contains("Retry-After"), "{head}");

    let path = format!("/?token={}", token("alice"));
    let _first = upgrade(addr, &path, &[]).open();
    let (_, head) = send_upgrade(addr, &path, &[]).expect("an answer");
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    assert!(
        head.contains(&format!(
            "\r\nRetry-After: {}\r\n",
            edge_ws_server::REFUSAL_RETRY_AFTER_SECS
        )),
        "{head}"
    );
    engine.handle().shutdown();
    engine.join().unwrap();
}
