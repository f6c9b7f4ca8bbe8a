//! The seed's notification server on the library API: a durable inbox per user (in the
//! embedded store), delivered at once to every open connection of the user or kept until
//! they connect, read and marked over the envelope (`notifications.*`), and sent by a
//! backend through the HTTP API (`POST /api/notify`) or from Rust.
//!
//! ```text
//! cargo run --example notifications -- 127.0.0.1:9001 127.0.0.1:9002 ./inbox-data
//! curl -XPOST -H 'X-API-Key: dev-key' -d '{"user":"bob","type":"mention","title":"hi"}' \
//!      http://127.0.0.1:9002/api/notify
//! ```

use std::net::SocketAddr;
use std::path::Path;

use edge_ws::Engine;
use edge_ws_server::http_api::{HttpApi, HttpApiConfig};
use edge_ws_server::notifications::{NotificationConfig, Notifications};
use edge_ws_server::store::{Store, StoreOptions};
use edge_ws_server::{Auth, AuthRejection, Manager, Router, UserContext};

/// The server: WebSockets on `ws`, the HTTP API on `api` (key `key`), inboxes under `dir`.
pub fn start(ws: SocketAddr, api: SocketAddr, key: &str, dir: &Path) -> (Manager, Engine, HttpApi) {
    let store = Store::open(dir, StoreOptions::default()).expect("the store opens");
    let manager = Manager::builder()
        .auth(Auth::validator(|info| async move {
            match info.request.query_param("user") {
                Some(u) if !u.is_empty() && u.len() <= 32 => Ok(UserContext::new(u)),
                _ => Err(AuthRejection::unauthorized("connect with ?user=<name>")),
            }
        }))
        .notifications(Notifications::start(store, NotificationConfig::default()))
        .build();
    let engine = manager
        .start(Engine::builder().bind(ws), |_core| Router::new().channels())
        .expect("the engine starts");
    let api =
        HttpApi::start(manager.clone(), HttpApiConfig::new(api, [key])).expect("the API binds");
    (manager, engine, api)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ws = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("HOST:PORT");
    let api = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9002".into())
        .parse()
        .expect("HOST:PORT");
    let dir = args.next().unwrap_or_else(|| "inbox-data".into());
    let (_manager, engine, api) = start(ws, api, "dev-key", Path::new(&dir));
    println!(
        "inboxes on ws://{}/?user=<name>, HTTP API on http://{}/api/ (key dev-key)",
        engine.local_addr(),
        api.local_addr()
    );
    engine.join().expect("cores ran");
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use edge_ws::testing::TempDir;
    use edge_ws_server::notifications::NewNotification;
    use serde_json::{json, Value};
    use tungstenite::Message;

    type Ws = tungstenite::WebSocket<TcpStream>;

    fn connect(addr: std::net::SocketAddr, user: &str) -> Ws {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tungstenite::client(format!("ws://{addr}/?user={user}"), s)
            .unwrap()
            .0
    }

    fn next(ws: &mut Ws, kind: &str) -> Value {
        for _ in 0..50 {
            if let Message::Text(t) = ws.read().unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
        }
        panic!("no {kind}");
    }

    #[test]
    fn online_users_get_it_at_once_offline_ones_on_connect() {
        let dir = TempDir::new("edge-ws-example-inbox");
        let any = "127.0.0.1:0".parse().unwrap();
        let (manager, engine, api) = super::start(any, any, "k", dir.path());
        let mut bob = connect(engine.local_addr(), "bob");
        // The first push after the open is the unread count: bob is registered.
        assert_eq!(next(&mut bob, "notifications.unread")["data"]["count"], 0);

        // A backend sends through the HTTP API: bob is online and gets it at once.
        let body = json!({"user":"bob","type":"mention","title":"alice mentioned you"}).to_string();
        let mut c = TcpStream::connect(api.local_addr()).unwrap();
        write!(c, "POST /api/notify HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let n = next(&mut bob, "notification");
        assert_eq!(n["data"]["title"], "alice mentioned you");

        // From Rust, to carol who is offline: kept, delivered when she connects.
        let id = manager
            .notifications()
            .unwrap()
            .send_blocking(
                "carol",
                NewNotification {
                    kind: "invite".into(),
                    title: "join the room".into(),
                    body: String::new(),
                    data: None,
                },
            )
            .unwrap();
        let mut carol = connect(engine.local_addr(), "carol");
        let n = next(&mut carol, "notification");
        assert_eq!(n["data"]["id"].as_u64(), Some(id));
        carol
            .send(Message::text(
                json!({"type":"notifications.read","id":1,"data":{"ids":[id]}}).to_string(),
            ))
            .unwrap();
        assert_eq!(
            next(&mut carol, "notifications.marked")["data"]["changed"],
            1
        );
        // Clients that are gone need no close handshake: the shutdown does not wait.
        drop((bob, carol));
        engine.handle().shutdown();
        engine.join().unwrap();
    }
}
