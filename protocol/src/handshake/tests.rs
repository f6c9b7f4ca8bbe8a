//! Handshake tests: RFC 6455 examples, error table, both sides against each other.

use super::*;
use crate::extension::ExtensionOffer;

/// The RFC 6455 §1.2 request, plus a query and an extension offer.
const RFC_REQUEST: &str = "GET /chat?room=1&flag&x=a=b&room=2&a%20b=c HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n\
    \r\n";

fn parse(buf: &[u8]) -> Result<ParseOutcome, HandshakeError> {
    parse_request(buf, MAX_REQUEST_LEN)
}

fn complete(buf: &[u8]) -> (Request, usize) {
    match parse(buf) {
        Ok(ParseOutcome::Complete(r, n)) => (r, n),
        other => panic!("expected Complete, got {other:?}"),
    }
}

/// A valid upgrade request with `request_line`, the valid headers except those whose name
/// (before `:`) is in `drop`, and `extra` header lines.
fn build(request_line: &str, drop: &[&str], extra: &[&str]) -> Vec<u8> {
    let base = [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let mut s = format!("{request_line}\r\n");
    for h in base {
        if !drop.iter().any(|d| h.starts_with(&format!("{d}:"))) {
            s += h;
            s += "\r\n";
        }
    }
    for h in extra {
        s += h;
        s += "\r\n";
    }
    s += "\r\n";
    s.into_bytes()
}

fn valid() -> Vec<u8> {
    build("GET /ws HTTP/1.1", &[], &[])
}

#[test]
fn rfc_accept_key_example() {
    // RFC 6455 §1.3 (note "...9kYGzzhZ...", double z).
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn rfc_request_parsed_field_by_field_and_101_written() {
    let (req, n) = complete(RFC_REQUEST.as_bytes());
    assert_eq!(n, RFC_REQUEST.len());
    assert_eq!(req.path, "/chat");
    assert_eq!(
        req.query.as_deref(),
        Some("room=1&flag&x=a=b&room=2&a%20b=c")
    );
    assert_eq!(req.host, "server.example.com");
    assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(req.origin.as_deref(), Some("http://example.com"));
    assert_eq!(req.protocols, ["chat", "superchat"]);
    assert_eq!(
        req.extensions,
        [
            ExtensionOffer {
                name: "permessage-deflate".into(),
                params: vec![("client_max_window_bits".into(), None)],
            },
            ExtensionOffer {
                name: "x-foo".into(),
                params: vec![],
            },
        ]
    );
    assert_eq!(req.headers.len(), 8);
    assert_eq!(
        req.headers[0],
        ("host".to_owned(), "server.example.com".to_owned())
    );
    assert_eq!(
        req.headers[5],
        (
            "sec-websocket-protocol".to_owned(),
            "chat, superchat".to_owned()
        )
    );
    assert_eq!(req.header("SEC-WEBSOCKET-VERSION"), Some("13"));
    assert_eq!(req.header("origin"), Some("http://example.com"));
    assert_eq!(req.header("cookie"), None);

    // query_param: first match, bare name → "", value may contain '=', no percent-decoding.
    assert_eq!(req.query_param("room"), Some("1"));
    assert_eq!(req.query_param("flag"), Some(""));
    assert_eq!(req.query_param("x"), Some("a=b"));
    assert_eq!(req.query_param("a%20b"), Some("c"));
    assert_eq!(req.query_param("a b"), None);
    assert_eq!(req.query_param("missing"), None);

    let protocol = select_protocol(&req.protocols, &["superchat", "chat"]);
    assert_eq!(protocol, Some("chat"));
    let mut out = Vec::new();
    write_accept(
        &req,
        &Accept {
            protocol,
            extensions: Some("permessage-deflate; server_no_context_takeover"),
            extra_headers: &[("X-Served-By", "edge")],
        },
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
         Sec-WebSocket-Protocol: chat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\
         X-Served-By: edge\r\n\
         \r\n"
    );

    // Without the optional parts.
    let mut out = Vec::new();
    write_accept(&req, &Accept::default(), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn every_prefix_is_partial_and_trailing_bytes_are_not_consumed() {
    let full = RFC_REQUEST.as_bytes();
    for i in 0..full.len() {
        assert_eq!(parse(&full[..i]), Ok(ParseOutcome::Partial), "prefix {i}");
    }
    let mut with_frame = full.to_vec();
    with_frame.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, b'h']);
    let (req, n) = complete(&with_frame);
    assert_eq!(n, full.len());
    assert_eq!(req.path, "/chat");
}

#[test]
fn bad_requests_get_the_right_error_and_status() {
    let pad = format!("X-Pad: {}", "a".repeat(MAX_REQUEST_LEN));
    let too_many: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let mut non_utf8 = valid();
    non_utf8.splice(
        non_utf8.len() - 2..non_utf8.len() - 2,
        b"X-Bin: \xff\xfe\r\n".iter().copied(),
    );
    // The header block alone is over the cap; one without its final empty line is still
    // incomplete when the cap is reached.
    let oversize_complete = build("GET / HTTP/1.1", &[], &[pad.as_str()]);
    let oversize_partial = oversize_complete[..oversize_complete.len() - 2].to_vec();

    use HandshakeError as E;
    let cases: Vec<(&str, Vec<u8>, HandshakeError, u16)> = vec![
        (
            "POST with upgrade",
            build("POST /ws HTTP/1.1", &[], &[]),
            E::MethodNotAllowed,
            405,
        ),
        (
            "HTTP/1.0",
            build("GET /ws HTTP/1.0", &[], &[]),
            E::BadRequest("HTTP/1.1 required"),
            400,
        ),
        (
            "no Connection",
            build("GET /ws HTTP/1.1", &["Connection"], &[]),
            E::BadRequest("Connection header does not list upgrade"),
            400,
        ),
        (
            "Connection without upgrade",
            build(
                "GET /ws HTTP/1.1",
                &["Connection"],
                &["Connection: keep-alive"],
            ),
            E::BadRequest("Connection header does not list upgrade"),
            400,
        ),
        (
            "version 8",
            build(
                "GET /ws HTTP/1.1",
                &["Sec-WebSocket-Version"],
                &["Sec-WebSocket-Version: 8"],
            ),
            E::UnsupportedVersion,
            426,
        ),
        (
            "missing version",
            build("GET /ws HTTP/1.1", &["Sec-WebSocket-Version"], &[]),
            E::UnsupportedVersion,
            426,
        ),
        (
            "13 and 8",
            build("GET /ws HTTP/1.1", &[], &["Sec-WebSocket-Version: 8"]),
            E::UnsupportedVersion,
            426,
        ),
        (
            "key of 15 bytes",
            build(
                "GET /ws HTTP/1.1",
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
            ),
            E::BadKey,
            400,
        ),
        (
            "key of 18 bytes",
            build(
                "GET /ws HTTP/1.1",
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA"],
            ),
            E::BadKey,
            400,
        ),
        (
            "key not base64",
            build(
                "GET /ws HTTP/1.1",
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: not*base64*at*all*!!!=="],
            ),
            E::BadKey,
            400,
        ),
        (
            "two keys",
            build(
                "GET /ws HTTP/1.1",
                &[],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="],
            ),
            E::BadKey,
            400,
        ),
        (
            "missing key",
            build("GET /ws HTTP/1.1", &["Sec-WebSocket-Key"], &[]),
            E::BadKey,
            400,
        ),
        (
            "missing Host",
            build("GET /ws HTTP/1.1", &["Host"], &[]),
            E::MissingHost,
            400,
        ),
        (
            "empty Host",
            build("GET /ws HTTP/1.1", &["Host"], &["Host: "]),
            E::MissingHost,
            400,
        ),
        (
            "two Hosts",
            build("GET /ws HTTP/1.1", &[], &["Host: other.example"]),
            E::BadRequest("several Host headers"),
            400,
        ),
        (
            "oversize, complete",
            oversize_complete,
            E::RequestTooLarge,
            431,
        ),
        (
            "oversize, incomplete",
            oversize_partial,
            E::RequestTooLarge,
            431,
        ),
        (
            "too many headers",
            build("GET /ws HTTP/1.1", &[], &too_many),
            E::TooManyHeaders,
            431,
        ),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            E::Malformed,
            400,
        ),
        (
            "bad header name",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(),
            E::Malformed,
            400,
        ),
        (
            "non-token protocol",
            build(
                "GET /ws HTTP/1.1",
                &[],
                &["Sec-WebSocket-Protocol: chat, chat/1"],
            ),
            E::BadRequest("invalid Sec-WebSocket-Protocol value"),
            400,
        ),
        (
            "malformed extensions",
            build(
                "GET /ws HTTP/1.1",
                &[],
                &["Sec-WebSocket-Extensions: permessage-deflate; =1"],
            ),
            E::BadRequest("malformed Sec-WebSocket-Extensions value"),
            400,
        ),
        (
            "non-UTF-8 header value",
            non_utf8,
            E::BadRequest("header value is not UTF-8"),
            400,
        ),
        (
            "asterisk target",
            build("GET * HTTP/1.1", &[], &[]),
            E::BadRequest("invalid request target"),
            400,
        ),
        (
            "fragment in target",
            build("GET /ws#frag HTTP/1.1", &[], &[]),
            E::BadRequest("invalid request target"),
            400,
        ),
        (
            "ftp absolute-form",
            build("GET ftp://example.com/ws HTTP/1.1", &[], &[]),
            E::BadRequest("invalid request target"),
            400,
        ),
    ];
    for (name, bytes, err, status) in cases {
        assert_eq!(parse(&bytes), Err(err.clone()), "{name}");
        assert_eq!(err.status(), status, "{name}");

        // The written answer is a well-formed response with that status and a body that
        // matches its Content-Length.
        let mut out = Vec::new();
        err.write_response(&mut out);
        let mut hdrs = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut hdrs);
        let head = match resp.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(resp.code, Some(status), "{name}");
        let len = resp
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(len, Some(out.len() - head), "{name}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nConnection: close\r\n"), "{name}");
        assert!(text.ends_with(&format!("{err}\n")), "{name}");
        assert_eq!(
            text.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            status == 426,
            "{name}"
        );
        assert_eq!(text.contains("\r\nAllow: GET\r\n"), status == 405, "{name}");
    }
}

#[test]
fn error_response_bytes() {
    let mut out = Vec::new();
    HandshakeError::UnsupportedVersion.write_response(&mut out);
    let body = "unsupported WebSocket version (supported: 13)\n";
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "HTTP/1.1 426 Upgrade Required\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\
             Upgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\n\
             \r\n{body}",
            body.len()
        )
    );
}

#[test]
fn max_len_is_inclusive_and_bytes_past_it_are_ignored() {
    let req = valid();
    // A request exactly max_len long is fine, even with more bytes after it.
    let mut buf = req.clone();
    buf.extend_from_slice(b"trailing frame bytes");
    assert!(matches!(
        parse_request(&buf, req.len()),
        Ok(ParseOutcome::Complete(_, n)) if n == req.len()
    ));
    assert_eq!(
        parse_request(&req, req.len() - 1),
        Err(HandshakeError::RequestTooLarge)
    );
    // Short of the cap and incomplete: keep reading.
    assert_eq!(
        parse_request(&req[..10], req.len() - 1),
        Ok(ParseOutcome::Partial)
    );
}

#[test]
fn plain_http_requests_are_not_upgrades() {
    let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        parse(health),
        Ok(ParseOutcome::NotUpgrade(
            HttpRequestInfo {
                method: "GET".into(),
                path: "/health".into(),
                query: None,
            },
            health.len()
        ))
    );
    // HTTP/1.0 health checks (HAProxy's default) and other methods are handed over too.
    let cases: [(&[u8], &str, &str, Option<&str>); 4] = [
        (
            b"GET /health?verbose=1 HTTP/1.0\r\n\r\n",
            "GET",
            "/health",
            Some("verbose=1"),
        ),
        (
            b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
            "POST",
            "/submit",
            None,
        ),
        (
            b"GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET",
            "/h2",
            None,
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS",
            "*",
            None,
        ),
    ];
    for (bytes, method, path, query) in cases {
        let head = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            parse(bytes),
            Ok(ParseOutcome::NotUpgrade(
                HttpRequestInfo {
                    method: method.into(),
                    path: path.into(),
                    query: query.map(Into::into),
                },
                head
            )),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn connection_and_upgrade_token_lists_and_case_insensitive_names() {
    let cases = [
        build(
            "GET /ws HTTP/1.1",
            &["Connection"],
            &["Connection: keep-alive, Upgrade"],
        ),
        build(
            "GET /ws HTTP/1.1",
            &["Connection"],
            &["Connection: keep-alive", "Connection: Upgrade"],
        ),
        build(
            "GET /ws HTTP/1.1",
            &["Upgrade"],
            &["Upgrade: foo/2, WebSocket"],
        ),
        b"GET /ws HTTP/1.1\r\nhOsT: example.com\r\nUPGRADE: WEBSOCKET\r\n\
          connection: UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          SEC-WEBSOCKET-VERSION: 13\r\n\r\n"
            .to_vec(),
    ];
    for bytes in cases {
        let (req, n) = complete(&bytes);
        assert_eq!(n, bytes.len());
        assert_eq!(req.host, "example.com");
        assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.path, "/ws");
    }
}

#[test]
fn multi_line_protocols_and_extensions_and_absolute_form() {
    let bytes = build(
        "GET ws://example.com:9000/chat?x=1 HTTP/1.1",
        &[],
        &[
            "Sec-WebSocket-Protocol: a,, b ,",
            "Sec-WebSocket-Protocol: c",
            "Sec-WebSocket-Extensions: permessage-deflate",
            "Sec-WebSocket-Extensions: x-foo; y=\"2\"",
        ],
    );
    let (req, _) = complete(&bytes);
    assert_eq!(req.path, "/chat");
    assert_eq!(req.query.as_deref(), Some("x=1"));
    assert_eq!(req.host, "example.com");
    assert_eq!(req.protocols, ["a", "b", "c"]);
    assert_eq!(req.extensions.len(), 2);
    assert_eq!(req.extensions[1].to_string(), "x-foo; y=2");
    assert_eq!(req.origin, None);

    for (target, path, query) in [
        ("http://example.com", "/", None),
        ("WSS://example.com?q", "/", Some("q")),
        ("/?", "/", Some("")),
    ] {
        let (req, _) = complete(&build(&format!("GET {target} HTTP/1.1"), &[], &[]));
        assert_eq!((req.path.as_str(), req.query.as_deref()), (path, query));
    }
    assert_eq!(
        parse(&build("GET http:///ws HTTP/1.1", &[], &[])),
        Err(HandshakeError::BadRequest("invalid request target"))
    );
}

#[test]
fn select_protocol_prefers_the_client_order() {
    let offered: Vec<String> = ["b", "a", "c"].map(String::from).to_vec();
    assert_eq!(select_protocol(&offered, &["a", "b"]), Some("b"));
    assert_eq!(select_protocol(&offered, &["c", "a"]), Some("a"));
    assert_eq!(select_protocol(&offered, &["z"]), None);
    assert_eq!(select_protocol(&offered, &[]), None);
    assert_eq!(select_protocol(&[], &["a"]), None);
    assert_eq!(select_protocol(&["Chat".to_owned()], &["chat"]), None);
}

#[test]
fn write_http_response_bytes() {
    let mut out = Vec::new();
    write_http_response(200, "OK", "text/plain", b"ok\n", &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nok\n"
    );
    let mut out = Vec::new();
    write_http_response(204, "No\r\nContent", "", b"", &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 204 NoContent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

const CLIENT: ClientRequest<'static> = ClientRequest {
    host: "server.example.com",
    path: "/chat?room=1",
    key: *b"the sample nonce",
    protocols: &["chat", "superchat"],
    extensions: Some("permessage-deflate; client_max_window_bits"),
    extra_headers: &[("Origin", "http://example.com")],
};

const RFC_RESPONSE: &str = "HTTP/1.1 101 Switching Protocols\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
    Sec-WebSocket-Protocol: chat\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n\
    \r\n";

fn client_parse(buf: &[u8], req: &ClientRequest<'_>) -> Result<ClientOutcome, HandshakeError> {
    parse_response(buf, req, MAX_REQUEST_LEN)
}

#[test]
fn client_request_bytes_and_round_trip() {
    assert_eq!(CLIENT.key_base64(), "dGhlIHNhbXBsZSBub25jZQ==");
    let mut out = Vec::new();
    CLIENT.write(&mut out);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "GET /chat?room=1 HTTP/1.1\r\n\
         Host: server.example.com\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: chat, superchat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Origin: http://example.com\r\n\
         \r\n"
    );
    let (req, n) = complete(&out);
    assert_eq!(n, out.len());
    assert_eq!(req.path, "/chat");
    assert_eq!(req.query_param("room"), Some("1"));
    assert_eq!(req.host, "server.example.com");
    assert_eq!(req.key, CLIENT.key_base64());
    assert_eq!(req.protocols, ["chat", "superchat"]);
    assert_eq!(
        req.extensions[0].to_string(),
        "permessage-deflate; client_max_window_bits"
    );
    assert_eq!(req.origin.as_deref(), Some("http://example.com"));

    // The server's answer to it is accepted by the client; frame bytes after it are left.
    let mut answer = Vec::new();
    write_accept(
        &req,
        &Accept {
            protocol: select_protocol(&req.protocols, &["superchat"]),
            extensions: Some("permessage-deflate"),
            extra_headers: &[],
        },
        &mut answer,
    );
    let head = answer.len();
    answer.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    match client_parse(&answer, &CLIENT) {
        Ok(ClientOutcome::Complete(resp, n)) => {
            assert_eq!(n, head);
            assert_eq!(resp.protocol.as_deref(), Some("superchat"));
            assert_eq!(resp.extensions.len(), 1);
            assert_eq!(resp.extensions[0].name, "permessage-deflate");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_request_sanitizes_path_and_headers() {
    let req = ClientRequest {
        host: "h",
        path: "chat room\u{e9}",
        key: [7; 16],
        protocols: &[],
        extensions: None,
        extra_headers: &[("X-A", "a\r\nEvil: 1")],
    };
    let mut out = Vec::new();
    req.write(&mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.starts_with("GET /chat%20room%C3%A9 HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(!text.contains("Sec-WebSocket-Protocol"));
    assert!(!text.contains("Sec-WebSocket-Extensions"));
    let (parsed, _) = complete(&out);
    assert_eq!(parsed.header("x-a"), Some("aEvil: 1"));
    assert_eq!(parsed.header("evil"), None);
    assert!(parsed.protocols.is_empty() && parsed.extensions.is_empty());
}

#[test]
fn client_accepts_the_rfc_response() {
    let full = RFC_RESPONSE.as_bytes();
    for i in 0..full.len() {
        assert_eq!(
            client_parse(&full[..i], &CLIENT),
            Ok(ClientOutcome::Partial)
        );
    }
    match client_parse(full, &CLIENT) {
        Ok(ClientOutcome::Complete(resp, n)) => {
            assert_eq!(n, full.len());
            assert_eq!(resp.protocol.as_deref(), Some("chat"));
            assert_eq!(
                resp.extensions,
                [ExtensionOffer {
                    name: "permessage-deflate".into(),
                    params: vec![("server_max_window_bits".into(), Some("10".into()))],
                }]
            );
            assert_eq!(resp.headers.len(), 5);
            assert_eq!(resp.headers[0], ("upgrade".into(), "websocket".into()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_rejects_bad_responses() {
    let edit = |from: &str, to: &str| RFC_RESPONSE.replacen(from, to, 1).into_bytes();
    let bare = ClientRequest {
        protocols: &[],
        extensions: None,
        ..CLIENT
    };
    use HandshakeError as E;
    let cases: Vec<(&str, Vec<u8>, &ClientRequest<'_>, HandshakeError)> = vec![
        (
            "wrong accept",
            edit(
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                &accept_key(b"AAAAAAAAAAAAAAAAAAAAAA=="),
            ),
            &CLIENT,
            E::BadAccept,
        ),
        (
            "no accept",
            edit("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", ""),
            &CLIENT,
            E::BadAccept,
        ),
        (
            "two accepts",
            edit(
                "Connection: Upgrade\r\n",
                "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
            ),
            &CLIENT,
            E::BadAccept,
        ),
        (
            "200",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            &CLIENT,
            E::BadStatus(200),
        ),
        (
            "403 with otherwise valid headers",
            edit("101 Switching Protocols", "403 Forbidden"),
            &CLIENT,
            E::BadStatus(403),
        ),
        (
            "missing Upgrade",
            edit("Upgrade: websocket\r\n", ""),
            &CLIENT,
            E::MissingUpgrade,
        ),
        (
            "Upgrade not websocket",
            edit("Upgrade: websocket", "Upgrade: h2c"),
            &CLIENT,
            E::MissingUpgrade,
        ),
        (
            "missing Connection",
            edit("Connection: Upgrade\r\n", ""),
            &CLIENT,
            E::MissingUpgrade,
        ),
        (
            "unoffered protocol",
            edit("Protocol: chat", "Protocol: mqtt"),
            &CLIENT,
            E::UnexpectedProtocol,
        ),
        (
            "protocol when none offered",
            edit(
                "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
                "",
            ),
            &bare,
            E::UnexpectedProtocol,
        ),
        (
            "extension when none offered",
            edit("Sec-WebSocket-Protocol: chat\r\n", ""),
            &bare,
            E::UnexpectedExtension,
        ),
        (
            "extension not offered",
            edit(
                "permessage-deflate; server",
                "x-webkit-deflate-frame; server",
            ),
            &CLIENT,
            E::UnexpectedExtension,
        ),
        (
            "malformed extension answer",
            edit("server_max_window_bits=10", "=10"),
            &CLIENT,
            E::BadResponse("malformed Sec-WebSocket-Extensions value"),
        ),
        (
            "HTTP/1.0",
            edit("HTTP/1.1 101", "HTTP/1.0 101"),
            &CLIENT,
            E::BadResponse("HTTP/1.1 required"),
        ),
        (
            "garbage",
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            &CLIENT,
            E::Malformed,
        ),
    ];
    for (name, bytes, req, err) in cases {
        assert_eq!(client_parse(&bytes, req), Err(err), "{name}");
    }

    // Size cap: complete but too long, and incomplete at the cap.
    let full = RFC_RESPONSE.as_bytes();
    assert_eq!(
        parse_response(full, &CLIENT, full.len() - 1),
        Err(E::ResponseTooLarge)
    );
    assert_eq!(
        parse_response(&full[..20], &CLIENT, 20),
        Err(E::ResponseTooLarge)
    );
    assert!(matches!(
        parse_response(full, &CLIENT, full.len()),
        Ok(ClientOutcome::Complete(_, _))
    ));
}

#[test]
fn extra_headers_cannot_split_the_response() {
    let mut out = Vec::new();
    write_http_response_with_headers(
        429,
        "Too Many Requests",
        "text/plain",
        &[
            ("Retry-After", "30"),
            ("X-Evil: 1\r\nSet-Cookie", "a"),
            ("WWW-Authenticate", "Bearer\r\nSet-Cookie: b"),
        ],
        b"slow down",
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nRetry-After: 30\r\n"), "{text}");
    assert!(!text.contains("X-Evil"), "{text}");
    assert!(
        text.contains("\r\nWWW-Authenticate: BearerSet-Cookie: b\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("\r\n").count(), 7, "{text}");
}
