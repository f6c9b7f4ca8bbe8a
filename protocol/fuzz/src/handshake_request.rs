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

use crate::seed::{Encode, Writer};
use arbitrary::Arbitrary;
use edge_ws_protocol::handshake::{
    parse_request, parse_response, write_accept, Accept, ClientOutcome, ClientRequest,
    ParseOutcome, MAX_REQUEST_LEN,
};

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

/// A request piece: an entry of one of the tables above, or any string.
#[derive(Arbitrary, Debug)]
pub enum Piece {
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

/// A header line.
#[derive(Arbitrary, Debug)]
pub struct Line {
    name: Piece,
    value: Piece,
    /// Bare `\n` instead of `\r\n`.
    bare_lf: bool,
}

#[derive(Arbitrary, Debug)]
pub enum Input {
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

/// The target: checks one input, panicking on any failed check.
pub fn run(input: Input) {
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
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------

impl Encode for Piece {
    fn encode(&self, w: &mut Writer) {
        match self {
            Piece::Known(i) => {
                w.variant(0, 2);
                i.encode(w);
            }
            Piece::Any(s) => {
                w.variant(1, 2);
                s.encode(w);
            }
        }
    }
}

crate::encode_struct!(Line { name, value ; bare_lf });

impl Encode for Input {
    fn encode(&self, w: &mut Writer) {
        self.write(w, false);
    }
    fn encode_rest(&self, w: &mut Writer) {
        self.write(w, true);
    }
}

impl Input {
    fn write(&self, w: &mut Writer, rest: bool) {
        match self {
            Input::Raw { max_len, data } => {
                w.variant(0, 2);
                max_len.encode(w);
                if rest {
                    data.encode_rest(w);
                } else {
                    data.encode(w);
                }
            }
            Input::Built {
                max_len,
                method,
                target,
                version,
                base,
                headers,
                trailing,
            } => {
                w.variant(1, 2);
                max_len.encode(w);
                method.encode(w);
                target.encode(w);
                version.encode(w);
                base.encode(w);
                headers.encode(w);
                if rest {
                    trailing.encode_rest(w);
                } else {
                    trailing.encode(w);
                }
            }
        }
    }
}

/// The index of `s` in `table`, as a [`Piece::Known`].
fn known(table: &[&str], s: &str) -> Piece {
    let i = table
        .iter()
        .position(|t| *t == s)
        .expect("not in the table");
    Piece::Known(u8::try_from(i).unwrap())
}

fn line(name: &str, value: &str) -> Line {
    Line {
        name: known(NAMES, name),
        value: known(VALUES, value),
        bare_lf: false,
    }
}

fn raw(max_len: u16, data: &str) -> Input {
    Input::Raw {
        max_len,
        data: data.as_bytes().to_vec(),
    }
}

fn built(
    max_len: u16,
    method: &str,
    target: &str,
    version: &str,
    base: bool,
    headers: Vec<Line>,
) -> Input {
    Input::Built {
        max_len,
        method: known(METHODS, method),
        target: known(TARGETS, target),
        version: known(VERSIONS, version),
        base,
        headers,
        trailing: Vec::new(),
    }
}

/// Valid upgrade requests and near misses (one thing wrong each), raw and assembled.
pub fn seeds() -> Vec<(&'static str, Input)> {
    const HEADERS: &str = "Host: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let valid = format!(
        "GET /chat HTTP/1.1\r\n{HEADERS}Origin: http://example.com\r\n\
         Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut pipelined = format!(
        "GET /chat?room=1 HTTP/1.1\r\n{HEADERS}Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    .into_bytes();
    pipelined.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    vec![
        ("raw-rfc6455-example", raw(0, &valid)),
        (
            "raw-deflate-offer-pipelined-frame",
            Input::Raw {
                max_len: 0,
                data: pipelined,
            },
        ),
        (
            "raw-version-8",
            raw(
                0,
                &format!("GET / HTTP/1.1\r\n{HEADERS}Sec-WebSocket-Version: 8\r\n\r\n"),
            ),
        ),
        (
            "raw-missing-host",
            raw(
                0,
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            ),
        ),
        (
            "raw-bare-lf",
            raw(
                0,
                "GET / HTTP/1.1\nHost: h\nUpgrade: websocket\nConnection: Upgrade\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n",
            ),
        ),
        (
            "raw-not-upgrade",
            raw(
                0,
                "GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            ),
        ),
        ("raw-over-max-len", raw(64, &valid)),
        ("raw-truncated", raw(0, &valid[..valid.len() - 2])),
        (
            "raw-absolute-form-repeated-headers",
            raw(
                0,
                &format!(
                    "GET ws://example.com/chat?x=1 HTTP/1.1\r\nConnection: keep-alive\r\n\
                     {HEADERS}Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ),
            ),
        ),
        (
            "built-chat-subprotocols",
            built(
                0,
                "GET",
                "/chat",
                "HTTP/1.1",
                true,
                vec![line("Sec-WebSocket-Protocol", "chat, superchat")],
            ),
        ),
        (
            "built-fragment-in-target",
            built(0, "GET", "/a#frag", "HTTP/1.1", true, Vec::new()),
        ),
        (
            "built-short-key",
            built(
                0,
                "GET",
                "/",
                "HTTP/1.1",
                false,
                vec![
                    line("Host", "example.com:80"),
                    line("Upgrade", "websocket"),
                    line("Connection", "keep-alive, Upgrade"),
                    line("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ="),
                    line("Sec-WebSocket-Version", "13"),
                ],
            ),
        ),
        (
            "built-post-http10",
            built(0, "POST", "/", "HTTP/1.0", true, Vec::new()),
        ),
        (
            "built-any-pieces-bare-lf-trailing",
            Input::Built {
                max_len: 0,
                method: Piece::Any("GET".into()),
                target: Piece::Any("/caf\u{e9}?q=%20&x".into()),
                version: Piece::Any("HTTP/1.1".into()),
                base: true,
                headers: vec![
                    Line {
                        name: Piece::Any("Upgrade".into()),
                        value: Piece::Any("WebSocket".into()),
                        bare_lf: false,
                    },
                    Line {
                        bare_lf: true,
                        ..line(
                            "Sec-WebSocket-Extensions",
                            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
                        )
                    },
                ],
                trailing: vec![0x88, 0x80, 0, 0, 0, 0],
            },
        ),
        (
            "built-small-max-len",
            built(
                150,
                "GET",
                "ws://h/p?q",
                "HTTP/1.1",
                true,
                vec![line("Origin", "example.com:80")],
            ),
        ),
    ]
}
