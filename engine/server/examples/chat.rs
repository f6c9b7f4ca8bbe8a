//! The seed's chat server on the library API: users named by `?user=` (swap in
//! `Auth::jwt` for real tokens), rooms as channels with history and presence, and a
//! `chat.send` route that stamps the sender on the server, so nobody can speak for someone
//! else. Typing indicators go to the others only.
//!
//! ```text
//! cargo run --example chat -- 127.0.0.1:9001
//! → {"type":"subscribe","id":1,"data":{"channel":"room:lobby"}}
//! → {"type":"chat.send","id":2,"data":{"room":"lobby","text":"hi"}}
//! ← {"type":"publication","channel":"room:lobby","offset":1,...,"data":{"user":"alice","text":"hi"}}
//! ```

use edge_ws::{ChannelConfig, ChannelPolicy, Engine, MessageKind, PublishOptions};
use edge_ws_server::{Auth, AuthRejection, Manager, RouteError, Router, UserContext};
use serde::Deserialize;

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Deserialize)]
struct Typing {
    room: String,
}

/// The chat server on `addr`.
pub fn start(addr: std::net::SocketAddr) -> (Manager, Engine) {
    let manager = Manager::builder()
        .auth(Auth::validator(|info| async move {
            match info.request.query_param("user") {
                Some(u) if !u.is_empty() && u.len() <= 32 => Ok(UserContext::new(u)),
                _ => Err(AuthRejection::unauthorized("connect with ?user=<name>")),
            }
        }))
        .build();
    // Rooms keep their last 100 messages for recovery after a reconnect, with presence.
    let room = ChannelPolicy {
        history_size: 100,
        presence: true,
        join_leave: true,
        ..ChannelPolicy::default()
    };
    let builder = Engine::builder()
        .bind(addr)
        .channels(ChannelConfig::default().namespace("room:", room));
    let engine = manager
        .start(builder, |_core| {
            Router::new()
                .channels()
                .route("chat.send", |ctx, msg| {
                    let say: Say = msg.data()?;
                    if say.text.is_empty() || say.text.len() > 2000 {
                        return Err(RouteError::new("text: 1 to 2000 bytes"));
                    }
                    let user = ctx.user().map(|u| u.id().to_string()).unwrap_or_default();
                    let data = serde_json::json!({"user": user, "text": say.text}).to_string();
                    let channel = format!("room:{}", say.room);
                    let id = msg.id().map(str::to_owned);
                    ctx.socket().publish_acked(
                        &channel,
                        data.as_bytes(),
                        MessageKind::Text,
                        PublishOptions::default(),
                        // Runs once the room's owner core sequenced it.
                        move |s, r| {
                            let mut answer = match r {
                                Ok(p) => serde_json::json!({"type":"chat.sent","data":{"offset":p.position.map(|p| p.offset)}}),
                                Err(e) => serde_json::json!({"type":"error","error":e.to_string()}),
                            };
                            if let Some(id) = id.and_then(|i| serde_json::from_str(&i).ok()) {
                                answer["id"] = id;
                            }
                            let _ = s.send_text(&answer.to_string());
                        },
                    );
                    Ok(())
                })
                .route("chat.typing", |ctx, msg| {
                    let t: Typing = msg.data()?;
                    let user = ctx.user().map(|u| u.id().to_string()).unwrap_or_default();
                    let data = serde_json::json!({"type":"chat.typing","data":{"room":t.room,"user":user}});
                    let opts = PublishOptions {
                        exclude: Some(ctx.id()),
                        transient: true,
                        ..PublishOptions::default()
                    };
                    ctx.socket().publish_with(
                        &format!("room:{}", t.room),
                        data.to_string().as_bytes(),
                        MessageKind::Text,
                        opts,
                    );
                    Ok(())
                })
        })
        .expect("the engine starts");
    (manager, engine)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("HOST:PORT");
    let (_manager, engine) = start(addr);
    println!("chat on ws://{}/?user=<name>", engine.local_addr());
    engine.join().expect("cores ran");
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use serde_json::{json, Value};
    use tungstenite::Message;

    type Ws = tungstenite::WebSocket<TcpStream>;

    fn join(addr: std::net::SocketAddr, user: &str) -> Ws {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/?user={user}"), s).unwrap();
        ws.send(Message::text(
            json!({"type":"subscribe","id":1,"data":{"channel":"room:lobby"}}).to_string(),
        ))
        .unwrap();
        assert_eq!(next(&mut ws, |v| v["id"] == 1)["type"], "subscribed");
        ws
    }

    fn next(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..50 {
            if let Message::Text(t) = ws.read().unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if want(&v) {
                    return v;
                }
            }
        }
        panic!("not received");
    }

    #[test]
    fn a_message_reaches_the_room_stamped_with_its_sender_and_typing_skips_the_typist() {
        let (_m, engine) = super::start("127.0.0.1:0".parse().unwrap());
        let addr = engine.local_addr();
        let mut alice = join(addr, "alice");
        let mut bob = join(addr, "bob");
        alice
            .send(Message::text(
                json!({"type":"chat.typing","data":{"room":"lobby"}}).to_string(),
            ))
            .unwrap();
        let t = next(&mut bob, |v| v["type"] == "chat.typing");
        assert_eq!(t["data"]["user"], "alice");
        alice
            .send(Message::text(
                json!({"type":"chat.send","id":7,"data":{"room":"lobby","text":"hi bob"}})
                    .to_string(),
            ))
            .unwrap();
        let p = next(&mut bob, |v| v["type"] == "publication");
        assert_eq!(
            (p["data"]["user"].as_str(), p["data"]["text"].as_str()),
            (Some("alice"), Some("hi bob"))
        );
        assert_eq!(p["offset"], 1);
        // alice gets her own message and the ack, but never her own typing indicator.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let v = next(&mut alice, |_| true);
            assert_ne!(v["type"], "chat.typing", "the typist got her own indicator");
            if v["type"] == "publication" || v["id"] == 7 {
                seen.push(v["type"].as_str().unwrap().to_string());
            }
        }
        seen.sort();
        assert_eq!(seen, ["chat.sent", "publication"]);
        // Clients that are gone need no close handshake: the shutdown does not wait.
        drop((alice, bob));
        engine.handle().shutdown();
        engine.join().unwrap();
    }
}
