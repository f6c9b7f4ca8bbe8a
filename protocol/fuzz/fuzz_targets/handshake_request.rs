//! `handshake::parse_request` on every prefix of the input.
//!
//! Reference: the result on the whole input. On every prefix the parser must not panic and
//! must answer `Partial` until some length `p`, then the very same answer at every longer
//! prefix (more bytes never change a decision). A `Complete`/`NotUpgrade` answer is decided
//! exactly at its consumed count `c` (`p == c`, `c <= max_len`). Accepted requests must satisfy
//! the documented invariants, and the server's 101 for them must pass the client's
//! `parse_response`.
//!
//! Inputs are either raw bytes or requests assembled from plausible and arbitrary pieces, so
//! that both garbage and near-valid upgrade requests are common.
#![no_main]

use arbitrary::Arbitrary;
use edge_ws_protocol::handshake::{
    parse_request, parse_response, write_accept, Accept, ClientOutcome, ClientRequest,
    ParseOutcome, MAX_REQUEST_LEN,
};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "POST", "get", "OPTIONS", "HEAD"];
const TARGETS: &[&str] = &[
    "/",
    "/chat",
    "/chat?room=1&x",
    "ws://h/p?q",
    "wss://h",
    "http://h?x",
    "*",
    "/a#frag",
    "ftp://h/",
    "ws:///x",
    "//x",
    "/?",
];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"];
const NAMES: &[&str] = &[
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Origin",
    "upgrade",
    "X-Other",
];
const VALUES: &[&str] = &[
    "websocket",
    "Upgrade",
    "keep-alive, Upgrade",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "dGhlIHNhbXBsZSBub25jZQ=",
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "13",
    "8, 13",
    "chat, superchat",
    "chat,,x",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; server_max_window_bits=10, permessage-deflate",
    "x; a=\"b,c\"",
    "example.com:80",
    "",
    " \t ",
];

#[derive(Arbitrary, Debug)]
enum Piece {
    Known(u8),
    Any(String),
}

impl Piece {
    fn get<'a>(&'a self, table: &[&'a str]) -> &'a str {
        match self {
            Piece::Known(i) => table[usize::from(*i) % table.len()],
            Piece::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Line {
    name: Piece,
    value: Piece,
    /// Bare `\n` instead of `\r\n`.
    bare_lf: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        max_len: u16,
        data: Vec<u8>,
    },
    Built {
        max_len: u16,
        method: Piece,
        target: Piece,
        version: Piece,
        /// Start from the five headers a valid request needs.
        base: bool,
        headers: Vec<Line>,
        trailing: Vec<u8>,
    },
}

fn build(input: &Input) -> (usize, Vec<u8>) {
    let (max_len, data) = match input {
        Input::Raw { max_len, data } => (*max_len, data.clone()),
        Input::Built {
            max_len,
            method,
            target,
            version,
            base,
            headers,
            trailing,
        } => {
            let mut s = format!(
                "{} {} {}\r\n",
                method.get(METHODS),
                target.get(TARGETS),
                version.get(VERSIONS)
            );
            if *base {
                s += "Host: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
            }
            for h in headers {
                s += h.name.get(NAMES);
                s += ": ";
                s += h.value.get(VALUES);
                s += if h.bare_lf { "\n" } else { "\r\n" };
            }
            s += "\r\n";
            let mut data = s.into_bytes();
            data.extend_from_slice(trailing);
            (*max_len, data)
        }
    };
    // 0 means the default cap; otherwise small caps exercise RequestTooLarge.
    let max_len = if max_len == 0 {
        MAX_REQUEST_LEN
    } else {
        usize::from(max_len)
    };
    (max_len, data)
}

fn decode_key(key: &str) -> [u8; 16] {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    }
    let b = key.as_bytes();
    let mut out = [0u8; 18];
    for (i, chunk) in b.chunks(4).enumerate() {
        let n = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | val(c));
        out[i * 3..i * 3 + 3].copy_from_slice(&n.to_be_bytes()[1..]);
    }
    out[..16].try_into().unwrap()
}

fuzz_target!(|input: Input| {
    let (max_len, data) = build(&input);
    let full = parse_request(&data, max_len);

    let mut decided_at = None;
    for p in 0..=data.len() {
        let r = parse_request(&data[..p], max_len);
        match decided_at {
            None if r == Ok(ParseOutcome::Partial) => {}
            None => {
                assert_eq!(
                    r, full,
                    "prefix {p} decided differently from the whole input"
                );
                decided_at = Some(p);
            }
            Some(at) => assert_eq!(r, full, "prefix {p} changed the answer decided at {at}"),
        }
    }
    assert_eq!(decided_at.is_none(), full == Ok(ParseOutcome::Partial));

    match &full {
        Ok(ParseOutcome::Complete(_, c)) | Ok(ParseOutcome::NotUpgrade(_, c)) => {
            assert_eq!(decided_at, Some(*c), "complete before its consumed count");
            assert!(*c <= max_len, "consumed {c} > max_len {max_len}");
        }
        Ok(ParseOutcome::Partial) => assert!(data.len() < max_len, "partial past max_len"),
        Err(_) => {}
    }

    if let Ok(ParseOutcome::Complete(req, _)) = &full {
        assert!(req.path.starts_with('/'), "path {:?}", req.path);
        assert!(!req.host.is_empty());
        assert_eq!(req.key.len(), 24);
        assert!(!req.path.contains('#'));

        // The server's answer must satisfy the client that sent this key and these protocols.
        let offered: Vec<&str> = req.protocols.iter().map(String::as_str).collect();
        let chosen = offered.first().copied();
        let mut resp = Vec::new();
        write_accept(
            req,
            &Accept {
                protocol: chosen,
                ..Accept::default()
            },
            &mut resp,
        );
        let client = ClientRequest {
            host: &req.host,
            path: &req.path,
            key: decode_key(&req.key),
            protocols: &offered,
            extensions: None,
            extra_headers: &[],
        };
        assert_eq!(client.key_base64(), req.key, "key does not round-trip");
        match parse_response(&resp, &client, MAX_REQUEST_LEN) {
            Ok(ClientOutcome::Complete(r, n)) => {
                assert_eq!(n, resp.len());
                assert_eq!(r.protocol.as_deref(), chosen);
            }
            other => panic!("client rejects our 101: {other:?}"),
        }
    }
});
