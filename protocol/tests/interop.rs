//! Interop with tungstenite over loopback TCP: tungstenite as client against our server codec,
//! and our client codec against a tungstenite server. Both sides must agree on every message.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edge_ws_protocol::handshake::{
    parse_request, parse_response, write_accept, Accept, ClientOutcome, ClientRequest, ParseOutcome,
};
use edge_ws_protocol::{CloseCode, Decoder, DecoderConfig, Encoder, Message, OpCode, Role};
use tungstenite::Message as TMsg;

fn messages() -> Vec<Message> {
    vec![
        Message::Text(Bytes::from_static(b"hello")),
        Message::Text(Bytes::from("ünïcødé ✓ 𝄞".repeat(50))),
        Message::Binary(Bytes::from(vec![0u8; 0])),
        Message::Binary(Bytes::from(
            (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )),
        Message::Text(Bytes::from("x".repeat(70_000))),
    ]
}

/// Reads until the decoder yields a message (answering nothing; test peers don't ping).
fn read_message(stream: &mut TcpStream, dec: &mut Decoder, buf: &mut BytesMut) -> Message {
    loop {
        if let Some(m) = dec.decode(buf).expect("valid frames from tungstenite") {
            return m;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "peer closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect_pair() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn tungstenite_client_against_our_server() {
    let (listener, addr) = connect_pair();
    let client = thread::spawn(move || {
        let (mut ws, resp) =
            tungstenite::connect(format!("ws://{addr}/chat?room=1")).expect("tungstenite connect");
        assert_eq!(resp.status(), 101);
        let mut echoed = Vec::new();
        for m in messages() {
            let t = match m {
                Message::Text(b) => TMsg::text(String::from_utf8(b.to_vec()).unwrap()),
                Message::Binary(b) => TMsg::binary(b),
                _ => unreachable!(),
            };
            ws.send(t).unwrap();
            echoed.push(ws.read().unwrap());
        }
        ws.send(TMsg::Ping(Bytes::from_static(b"are you there")))
            .unwrap();
        let pong = ws.read().unwrap();
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
        // Drain until the server's close reply ends the connection.
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        (echoed, pong)
    });

    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = BytesMut::new();
    let req = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, 8192).unwrap() {
            ParseOutcome::Partial => continue,
            ParseOutcome::Complete(req, used) => {
                let _ = buf.split_to(used);
                break req;
            }
            ParseOutcome::NotUpgrade(..) => panic!("not an upgrade"),
        }
    };
    assert_eq!(req.path, "/chat");
    assert_eq!(req.query_param("room"), Some("1"));
    let mut out = Vec::new();
    write_accept(
        &req,
        &Accept {
            protocol: None,
            extensions: None,
            extra_headers: &[],
        },
        &mut out,
    );
    s.write_all(&out).unwrap();

    let mut dec = Decoder::new(Role::Server, DecoderConfig::default());
    let mut enc = Encoder::server();
    let mut received = Vec::new();
    loop {
        let m = read_message(&mut s, &mut dec, &mut buf);
        let mut wire = BytesMut::new();
        match &m {
            Message::Text(b) => enc.encode(OpCode::Text, b, &mut wire),
            Message::Binary(b) => enc.encode(OpCode::Binary, b, &mut wire),
            Message::Ping(b) => enc.encode(OpCode::Pong, b, &mut wire),
            Message::Close(c) => {
                let c = c.as_ref().expect("close with code");
                assert_eq!(c.code, CloseCode::NORMAL);
                assert_eq!(c.reason_str(), "bye");
                enc.encode_close(c.code, "", &mut wire);
                s.write_all(&wire).unwrap();
                break;
            }
            Message::Pong(_) => {}
        }
        s.write_all(&wire).unwrap();
        received.push(m);
    }
    drop(s);
    let (echoed, pong) = client.join().unwrap();
    let want = messages();
    assert_eq!(&received[..want.len()], &want[..]);
    assert_eq!(echoed.len(), want.len());
    for (e, w) in echoed.iter().zip(&want) {
        assert_eq!(e.clone().into_data(), w.payload().clone());
    }
    assert_eq!(pong, TMsg::Pong(Bytes::from_static(b"are you there")));
}

#[test]
fn our_client_against_tungstenite_server() {
    let (listener, addr) = connect_pair();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(s).expect("tungstenite accept");
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(m @ (TMsg::Text(_) | TMsg::Binary(_))) => {
                    got.push(m.clone());
                    ws.send(m).unwrap();
                }
                Ok(TMsg::Close(c)) => {
                    got.push(TMsg::Close(c));
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("server error {e}"),
            }
        }
        got
    });

    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let creq = ClientRequest {
        host: &addr,
        path: "/",
        key: *b"0123456789abcdef",
        protocols: &[],
        extensions: None,
        extra_headers: &[],
    };
    let mut out = Vec::new();
    creq.write(&mut out);
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, &creq, 8192).unwrap() {
            ClientOutcome::Partial => continue,
            ClientOutcome::Complete(_, used) => {
                let _ = buf.split_to(used);
                break;
            }
        }
    }
    let mut n: u32 = 7;
    let mut enc = Encoder::client(move || {
        n = n.wrapping_mul(2_654_435_761).wrapping_add(1);
        n.to_be_bytes()
    });
    let mut dec = Decoder::new(Role::Client, DecoderConfig::default());
    for m in messages() {
        let mut wire = BytesMut::new();
        match &m {
            Message::Text(b) => enc.encode(OpCode::Text, b, &mut wire),
            Message::Binary(b) => enc.encode(OpCode::Binary, b, &mut wire),
            _ => unreachable!(),
        }
        s.write_all(&wire).unwrap();
        assert_eq!(read_message(&mut s, &mut dec, &mut buf), m);
    }
    let mut wire = BytesMut::new();
    enc.encode_close(CloseCode::GOING_AWAY, "done", &mut wire);
    s.write_all(&wire).unwrap();
    match read_message(&mut s, &mut dec, &mut buf) {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::GOING_AWAY),
        other => panic!("expected close echo, got {other:?}"),
    }
    drop(s);
    let got = server.join().unwrap();
    assert_eq!(got.len(), messages().len() + 1);
    assert!(
        matches!(got.last(), Some(TMsg::Close(Some(c))) if u16::from(c.code) == 1001 && c.reason == "done")
    );
}
