//! What a handler can decide at the upgrade: refusals with headers, and the subprotocol per
//! request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use edge_ws::{Engine, Handler, Rejection, Socket, Upgrade, UpgradeRequest};
use edge_ws_tests::test_config;

/// `/busy` is refused 429 with `Retry-After` (and a header that tries to split the response);
/// `/pick` answers with the last subprotocol the client offered; `/wrong` picks one it did not
/// offer. Every open socket is told its protocol.
struct Chooser;

impl Handler for Chooser {
    fn on_upgrade(&mut self, req: &UpgradeRequest<'_>) -> Upgrade {
        match req.request.path.as_str() {
            "/busy" => Upgrade::Reject(
                Rejection::new(429, "busy")
                    .retry_after(30)
                    .with_header("X-Split: 1\r\nSet-Cookie", "evil"),
            ),
            "/pick" => Upgrade::AcceptProtocol {
                protocol: req.request.protocols.last().cloned(),
                data: None,
            },
            "/wrong" => Upgrade::AcceptProtocol {
                protocol: Some("never-offered".into()),
                data: None,
            },
            _ => Upgrade::Accept(None),
        }
    }

    fn on_open(&mut self, socket: &mut Socket<'_, '_>) {
        let p = socket.protocol().unwrap_or("none").to_string();
        let _ = socket.send_text(&p);
    }

    fn on_message(&mut self, _socket: &mut Socket<'_, '_>, _message: edge_ws::Message) {}
}

fn upgrade(addr: SocketAddr, path: &str, protocols: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let proto = if protocols.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Protocol: {protocols}\r\n")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // The 101 and the first frame, or an error response and the close.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 4 {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    if got.starts_with(b"HTTP/1.1 101") {
        // Read on until the server's first frame (its text payload names the protocol).
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        while got.len() < end + 2 || got.len() < end + 2 + usize::from(got[end + 1] & 0x7f) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn refusals_carry_headers_and_the_handler_picks_the_subprotocol() {
    let mut cfg = test_config(1);
    cfg.subprotocols = vec!["v1".into()];
    let engine = Engine::builder().config(cfg).build(|_| Chooser).unwrap();
    let addr = engine.local_addr();

    let busy = upgrade(addr, "/busy", "");
    assert!(
        busy.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{busy}"
    );
    assert!(busy.contains("\r\nRetry-After: 30\r\n"), "{busy}");
    assert!(
        !busy.contains("X-Split") && !busy.contains("Set-Cookie"),
        "{busy}"
    );

    // The configured list: the first offered that the server speaks.
    let configured = upgrade(addr, "/", "v2, v1");
    assert!(
        configured.contains("\r\nSec-WebSocket-Protocol: v1\r\n"),
        "{configured}"
    );
    assert!(configured.ends_with("v1"), "{configured}");

    // The handler's choice, outside the configured list.
    let picked = upgrade(addr, "/pick", "v1, chat.v3");
    assert!(
        picked.contains("\r\nSec-WebSocket-Protocol: chat.v3\r\n"),
        "{picked}"
    );
    assert!(picked.ends_with("chat.v3"), "{picked}");

    // None offered: no protocol header, whatever the handler's list.
    let none = upgrade(addr, "/pick", "");
    assert!(!none.contains("Sec-WebSocket-Protocol"), "{none}");
    assert!(none.ends_with("none"), "{none}");

    // A choice the client did not offer cannot be accepted by any client: 500.
    let wrong = upgrade(addr, "/wrong", "v1");
    assert!(wrong.starts_with("HTTP/1.1 500 "), "{wrong}");
    assert_eq!(engine.handle().metrics().rejected_by_application, 2);

    engine.handle().shutdown();
    engine.join().unwrap();
}
