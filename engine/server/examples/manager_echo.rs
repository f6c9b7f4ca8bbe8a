//! Echo through the full connection manager: JWT authentication at connect (query parameter
//! `token` or `Authorization: Bearer`), a permission-checking middleware, the JSON router, and
//! per-connection and per-user rate limits (set high enough never to refuse, but evaluated on
//! every message). The overhead benchmark against the bare `echo` example (docs/bench-manager.md).
//!
//! ```text
//! cargo run --release --example manager_echo -- 127.0.0.1:9001
//! cargo run --release --example manager_echo -- --token        # prints a valid token
//! wsload echo --text --path "/?token=$TOKEN" --payload '{"type":"echo","data":"hello"}'
//! ```
//!
//! `{"type":"echo","id":…,"data":…}` is answered with `{"type":"echo","id":…,"data":…}`: a
//! request without `id` whose fields come in that order is echoed byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use edge_ws::Engine;
use edge_ws_server::{Auth, JwtAuth, Manager, RateLimit, Router, TokenSource};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "edge-ws-bench-secret: not for production";
const ISSUER: &str = "edge-ws-bench";

fn jwt() -> JwtAuth {
    JwtAuth::hs256(SECRET).issuer(ISSUER).sources([
        TokenSource::Query("token".into()),
        TokenSource::BearerHeader,
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    // Usage: manager_echo [ADDR [--async]] | manager_echo --token
    if arg == "--token" {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = format!(
            r#"{{"sub":"bench","iss":"{ISSUER}","exp":{},"permissions":["echo"]}}"#,
            now + 7 * 24 * 3600
        );
        println!("{}", jwt().sign(&claims));
        return Ok(());
    }
    let manager = Manager::builder()
        .auth(Auth::jwt(jwt()))
        .max_connections(1_000_000)
        .max_connections_per_ip(1_000_000)
        .max_connections_per_user(1_000_000)
        .rate_limit(
            RateLimit::new()
                .messages(10_000_000.0, 1_000_000)
                .bytes(1e9, u32::MAX),
        )
        .user_rate_limit(RateLimit::new().messages(100_000_000.0, u32::MAX))
        .build();
    // `--async` (second argument): the same echo as an async route (a ready future).
    let is_async = std::env::args().nth(2).as_deref() == Some("--async");
    let engine = manager.start(Engine::builder().bind(arg.parse()?), move |_core| {
        let r = Router::new().middleware(|ctx, msg, next| {
            if !ctx.has_permission("echo") {
                let _ = ctx.error("Forbidden");
                return;
            }
            next.run(ctx, msg)
        });
        if is_async {
            r.route_async("echo", |req| async move {
                req.reply_raw("echo", req.data_raw());
                Ok(())
            })
        } else {
            r.route("echo", |ctx, msg| {
                ctx.reply_raw("echo", msg.data_raw())?;
                Ok(())
            })
        }
    })?;
    eprintln!("manager echo server on ws://{}", engine.local_addr());
    engine.join().map_err(|_| "a core panicked")?;
    Ok(())
}
