//! A core reuses a drained read buffer for the next receive (of any connection) and copies
//! small frames straight into a connection's send queue. Neither may ever alter a message the
//! application still holds, or mix two connections' bytes: this drives both paths on
//! in-memory cores (no socket) with messages that are kept, split across receives, and echoed.

use std::cell::RefCell;
use std::rc::Rc;

use edge_ws::protocol::OpCode;
use edge_ws::testing::MemEngine;
use edge_ws::{Config, Handler, Message, Socket};

/// Keeps every message it receives and echoes it.
struct Keeper {
    kept: Rc<RefCell<Vec<Message>>>,
}

impl Handler for Keeper {
    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let _ = s.send(&m);
        self.kept.borrow_mut().push(m);
    }
}

fn payload(conn: usize, i: usize) -> Vec<u8> {
    // Sizes from 0 to ~3 KiB, contents unique per connection and message.
    let len = (i * 197 + conn * 31) % 3000;
    (0..len).map(|k| (conn * 7 + i * 13 + k) as u8).collect()
}

#[test]
fn kept_messages_survive_buffer_reuse_and_echoes_stay_whole() {
    let kept = Rc::new(RefCell::new(Vec::new()));
    let k = kept.clone();
    let engine = MemEngine::new(Config::default(), 1, move |_| Keeper { kept: k.clone() });
    let mut clients: Vec<_> = (0..3).map(|_| engine.connect(0, "/")).collect();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); clients.len()];
    for i in 0..60 {
        for (c, client) in clients.iter_mut().enumerate() {
            let p = payload(c, i);
            if i % 3 == 0 {
                // Split mid-frame: the rest arrives with the next receive, so the connection
                // keeps a partial frame in its own buffer while others reuse the spare one.
                let mut wire = bytes::BytesMut::new();
                edge_ws::protocol::Encoder::client(|| [1, 2, 3, 4]).encode(
                    OpCode::Binary,
                    &p,
                    &mut wire,
                );
                let cut = wire.len() / 2;
                client.send_raw(&wire[..cut]);
                engine.pump();
                client.send_raw(&wire[cut..]);
            } else {
                client.send_binary(&p);
            }
            sent.push(p.clone());
            expected[c].push(p);
        }
        engine.pump();
    }
    // Every kept message is exactly what was sent, in arrival order.
    let kept: Vec<Vec<u8>> = kept.borrow().iter().map(|m| m.payload().to_vec()).collect();
    assert_eq!(kept, sent);
    // Each connection got its own echoes back, whole and in order.
    for (c, client) in clients.iter_mut().enumerate() {
        let echoed: Vec<Vec<u8>> = client
            .recv_all()
            .iter()
            .map(|m| m.payload().to_vec())
            .collect();
        assert_eq!(echoed, expected[c], "connection {c}");
    }
}
