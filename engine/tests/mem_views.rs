//! Messages lent to the handler (`Handler::on_message_view`): a whole, plain frame in one
//! receive comes as a view into the receive buffer, everything else (fragmented, cut by the end
//! of a receive) as an owned `Message` to `on_message`; both echo intact and in order, a bad
//! text frame on the view path closes with 1007 while the other connections go on, and a
//! handler that does not override `on_message_view` gets every message owned.

use std::cell::RefCell;
use std::rc::Rc;

use edge_ws::protocol::OpCode;
use edge_ws::testing::MemEngine;
use edge_ws::{Config, Handler, Message, MessageView, Socket};

#[derive(Default)]
struct Seen {
    views: usize,
    owned: usize,
    /// Every payload in arrival order, with whether it came as a view.
    payloads: Vec<(bool, Vec<u8>)>,
}

/// Echoes both kinds; counts them.
struct Viewer {
    seen: Rc<RefCell<Seen>>,
}

impl Handler for Viewer {
    fn on_message(&mut self, s: &mut Socket<'_, '_>, m: Message) {
        let mut seen = self.seen.borrow_mut();
        seen.owned += 1;
        seen.payloads.push((false, m.payload().to_vec()));
        let _ = s.send(m);
    }

    fn on_message_view(&mut self, s: &mut Socket<'_, '_>, m: MessageView<'_>) {
        let mut seen = self.seen.borrow_mut();
        seen.views += 1;
        seen.payloads.push((true, m.payload().to_vec()));
        let _ = s.send(m);
    }
}

fn payload(i: usize) -> Vec<u8> {
    let len = (i * 389) % 6000;
    (0..len).map(|k| (i * 11 + k) as u8).collect()
}

fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    edge_ws::protocol::Encoder::client(|| [9, 8, 7, 6]).encode(opcode, payload, &mut wire);
    wire.to_vec()
}

/// A one-core engine of [`Viewer`]s at the default config, and what they see.
fn viewer_engine() -> (MemEngine<Viewer>, Rc<RefCell<Seen>>) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let s = seen.clone();
    let engine = MemEngine::new(Config::default(), 1, move |_| Viewer { seen: s.clone() });
    (engine, seen)
}

#[test]
fn whole_frames_are_lent_and_the_rest_owned_and_all_echo_in_order() {
    let (engine, seen) = viewer_engine();
    let mut client = engine.connect(0, "/");
    let mut sent = Vec::new();
    for i in 0..90 {
        let p = payload(i);
        match i % 3 {
            // Two whole frames in one receive: views.
            0 => {
                let text = String::from_utf8_lossy(&p).into_owned();
                let mut wire = client_frame(OpCode::Binary, &p);
                wire.extend(client_frame(OpCode::Text, text.as_bytes()));
                client.send_raw(&wire);
                sent.push(p.clone());
                sent.push(text.into_bytes());
            }
            // Cut in two receives: owned.
            1 => {
                let wire = client_frame(OpCode::Binary, &p);
                let cut = wire.len() / 2;
                client.send_raw(&wire[..cut]);
                engine.pump();
                client.send_raw(&wire[cut..]);
                sent.push(p);
            }
            // Fragmented: owned.
            _ => {
                let half = p.len() / 2;
                client.send_fragment(OpCode::Binary, &p[..half], false);
                client.send_fragment(OpCode::Continuation, &p[half..], true);
                sent.push(p);
            }
        }
        engine.pump();
    }
    let seen = seen.borrow();
    assert_eq!(seen.views, 60, "two whole frames per third round");
    assert_eq!(seen.owned, 30 + 30, "the cut and the fragmented ones");
    let got: Vec<Vec<u8>> = seen.payloads.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, sent, "every message as sent, in order");
    assert!(seen.payloads.iter().any(|(v, p)| *v && p.len() > 4096));
    let echoed: Vec<Vec<u8>> = client
        .recv_all()
        .iter()
        .map(|m| m.payload().to_vec())
        .collect();
    assert_eq!(echoed, sent, "the echoes, whole and in order");
}

#[test]
fn invalid_text_on_the_view_path_closes_with_1007_and_others_go_on() {
    let (engine, seen) = viewer_engine();
    let mut bad = engine.connect(0, "/");
    let mut good = engine.connect(0, "/");
    let mut wire = client_frame(OpCode::Text, b"fine");
    wire.extend(client_frame(OpCode::Text, &[b'a', 0xff, b'b']));
    wire.extend(client_frame(OpCode::Text, b"never seen"));
    bad.send_raw(&wire);
    good.send_text("still served");
    engine.pump();
    assert_eq!(bad.recv_text().as_deref(), Some("fine"));
    assert_eq!(bad.expect_close(), Some(1007));
    assert_eq!(good.recv_text().as_deref(), Some("still served"));
    assert_eq!(engine.metrics().invalid_data_errors, 1);
    let seen = seen.borrow();
    assert_eq!(seen.views, 2, "\"fine\" and the good connection's message");
    assert!(!seen.payloads.iter().any(|(_, p)| p == b"never seen"));
}

/// Without an `on_message_view` of its own, a handler gets every message owned, the lent
/// ones copied.
#[test]
fn the_default_hands_views_to_on_message() {
    struct Owner(Rc<RefCell<Vec<Message>>>);
    impl Handler for Owner {
        fn on_message(&mut self, _: &mut Socket<'_, '_>, m: Message) {
            self.0.borrow_mut().push(m);
        }
    }
    let kept = Rc::new(RefCell::new(Vec::new()));
    let k = kept.clone();
    let engine = MemEngine::new(Config::default(), 1, move |_| Owner(k.clone()));
    let mut client = engine.connect(0, "/");
    client.send_text("one");
    client.send_binary(&[1, 2, 3]);
    engine.pump();
    // Overwrite what the receive buffer held: the kept messages are copies.
    client.send_binary(&[0xee; 64]);
    engine.pump();
    let kept = kept.borrow();
    assert_eq!(kept[0], Message::Text(bytes::Bytes::from_static(b"one")));
    assert_eq!(
        kept[1],
        Message::Binary(bytes::Bytes::from_static(&[1, 2, 3]))
    );
    assert_eq!(kept.len(), 3);
}
