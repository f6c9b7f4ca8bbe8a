//! The README's example: every message is published to every connection on every core.
//!
//! ```text
//! cargo run --release --example chat
//! ```

use edge_ws::{Engine, Handler, Message, Socket};

struct Chat;

impl Handler for Chat {
    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        socket.subscribe("lobby");
    }
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        if let Some(text) = message.as_text() {
            socket.publish("lobby", text); // every subscriber, on every core
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder()
        .bind("127.0.0.1:9001".parse()?)
        .build(|_core| Chat)?;
    engine.join().map_err(|_| "a core panicked")?;
    Ok(())
}
