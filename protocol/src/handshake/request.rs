//! Server side: parsing the client's upgrade request and writing the 101 answer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{
    accept_key, has_token, headers_have_token, is_tchar, map_httparse, owned_headers, push_header,
    HandshakeError, MAX_HEADERS,
};
use crate::extension::{parse_extensions, ExtensionOffer};

/// A parsed, validated upgrade request (server side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path of the request target, e.g. `/chat` (always starts with `/`).
    ///
    /// For an absolute-form target (`GET ws://host/chat HTTP/1.1`) this is the path part of
    /// the URI (`/` when it has none); the URI's scheme and authority are discarded.
    pub path: String,
    /// The query string after `?`, without the `?`; `Some("")` for a bare trailing `?`.
    pub query: Option<String>,
    /// The `Host` header value (always present and non-empty).
    pub host: String,
    /// The `Sec-WebSocket-Key` value as sent (base64 text, trimmed).
    pub key: String,
    /// `Sec-WebSocket-Protocol` tokens in the client's order, over all header lines.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` offers in order, over all header lines.
    pub extensions: Vec<ExtensionOffer>,
    /// Every header in order, names lowercased, values trimmed of spaces and tabs.
    pub headers: Vec<(String, String)>,
    /// The `Origin` header value, if any (first line if several).
    pub origin: Option<String>,
}

impl Request {
    /// The value of the first header named `name` (ASCII case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first `name=value` pair of the query string whose name equals `name`
    /// (case-sensitive); `Some("")` for a bare `name` or `name=`.
    ///
    /// Pairs are separated by `&`. No percent-decoding is done, neither on names nor on
    /// values: `?a%20b=c` has the name `a%20b`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A plain HTTP request that is not a WebSocket upgrade (so the engine can answer
/// `GET /health`, or 400 "Expected WebSocket").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestInfo {
    /// The method, as sent (e.g. `GET`).
    pub method: String,
    /// The path of the request target (see [`Request::path`]); for a target that is neither
    /// origin-form nor absolute-form (e.g. `OPTIONS *`), the target as sent.
    pub path: String,
    /// The query string after `?`, without the `?`.
    pub query: Option<String>,
}

/// Outcome of looking at the bytes received so far (server side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// The header block is not complete yet: call again with more bytes.
    Partial,
    /// A valid upgrade request, and the bytes it took (including the final empty line).
    /// Bytes after that belong to the WebSocket connection.
    Complete(Request, usize),
    /// A complete HTTP request without `Upgrade: websocket`, and the bytes its header block
    /// took. Any request body is not parsed and not counted.
    NotUpgrade(HttpRequestInfo, usize),
}

/// Parses an upgrade request from the bytes received so far (RFC 6455 §4.2.1).
///
/// `max_len` caps the header block: an incomplete block already `max_len` bytes long, or a
/// complete one longer than that, is [`HandshakeError::RequestTooLarge`]. Bytes past
/// `max_len` are never looked at.
///
/// A request is an upgrade attempt when an `Upgrade` header lists the token `websocket`
/// (case-insensitive). Anything else is [`ParseOutcome::NotUpgrade`], whatever its method
/// and HTTP version. An upgrade attempt must then:
/// - use `GET`, else [`HandshakeError::MethodNotAllowed`] (405);
/// - be HTTP/1.1, else `BadRequest` (400);
/// - have a `Connection` header listing `upgrade` (on any of its lines), else `BadRequest`;
/// - have exactly one non-empty `Host` header, else [`HandshakeError::MissingHost`] (none
///   or empty) or `BadRequest` (several);
/// - carry `Sec-WebSocket-Version: 13`, else [`HandshakeError::UnsupportedVersion`] (426).
///   A *missing* version header is also answered 426, so that the client learns which
///   version is supported (RFC 6455 §4.4);
/// - carry exactly one `Sec-WebSocket-Key` that is base64 of exactly 16 bytes, else
///   [`HandshakeError::BadKey`];
/// - have an origin-form (`/path?query`) or absolute-form (`ws://host/path?query`, also
///   `wss`, `http`, `https`) target without a `#fragment`, else `BadRequest`;
/// - have only tokens in `Sec-WebSocket-Protocol` and well-formed
///   `Sec-WebSocket-Extensions` values, else `BadRequest`;
/// - have UTF-8 header values only, else `BadRequest`.
///
/// More than [`MAX_HEADERS`] header lines is [`HandshakeError::TooManyHeaders`] (431);
/// bytes that are not HTTP at all are [`HandshakeError::Malformed`] (400).
pub fn parse_request(buf: &[u8], max_len: usize) -> Result<ParseOutcome, HandshakeError> {
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw_headers);
    let consumed = match req.parse(&buf[..buf.len().min(max_len)]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_len => {
            return Err(HandshakeError::RequestTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(ParseOutcome::Partial),
        Err(e) => return Err(map_httparse(e)),
    };
    // httparse fills these in on a complete parse.
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let version = req.version.unwrap_or_default();
    let raw = &*req.headers;

    let is_upgrade = raw.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && core::str::from_utf8(h.value).is_ok_and(|v| has_token(v, "websocket"))
    });
    if !is_upgrade {
        let (path, query) = split_target(target).unwrap_or((target, None));
        let info = HttpRequestInfo {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
        };
        return Ok(ParseOutcome::NotUpgrade(info, consumed));
    }
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version != 1 {
        return Err(HandshakeError::BadRequest("HTTP/1.1 required"));
    }
    let headers = owned_headers(raw, HandshakeError::BadRequest("header value is not UTF-8"))?;
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };

    if !headers_have_token(&headers, "connection", "upgrade") {
        return Err(HandshakeError::BadRequest(
            "Connection header does not list upgrade",
        ));
    }

    let mut hosts = all("host");
    let host = match (hosts.next(), hosts.next()) {
        (None | Some(""), None) => return Err(HandshakeError::MissingHost),
        (Some(h), None) => h.to_owned(),
        (_, Some(_)) => return Err(HandshakeError::BadRequest("several Host headers")),
    };

    let mut versions = all("sec-websocket-version").peekable();
    if versions.peek().is_none() || !versions.all(|v| v == "13") {
        return Err(HandshakeError::UnsupportedVersion);
    }

    let mut keys = all("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if is_valid_key(k) => k.to_owned(),
        _ => return Err(HandshakeError::BadKey),
    };

    let (path, query) =
        split_target(target).ok_or(HandshakeError::BadRequest("invalid request target"))?;

    let mut protocols = Vec::new();
    for value in all("sec-websocket-protocol") {
        for p in value.split(',').map(|p| p.trim_matches([' ', '\t'])) {
            if p.is_empty() {
                continue;
            }
            if !p.bytes().all(is_tchar) {
                return Err(HandshakeError::BadRequest(
                    "invalid Sec-WebSocket-Protocol value",
                ));
            }
            protocols.push(p.to_owned());
        }
    }

    let mut extensions = Vec::new();
    for value in all("sec-websocket-extensions") {
        parse_extensions(value, &mut extensions)
            .map_err(|_| HandshakeError::BadRequest("malformed Sec-WebSocket-Extensions value"))?;
    }

    let origin = all("origin").next().map(str::to_owned);
    let request = Request {
        path: path.to_owned(),
        query: query.map(str::to_owned),
        host,
        key,
        protocols,
        extensions,
        origin,
        headers,
    };
    Ok(ParseOutcome::Complete(request, consumed))
}

/// Base64 (standard alphabet, padded, canonical) of exactly 16 bytes.
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// Splits an origin-form or absolute-form target into path and query.
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    if target.contains('#') {
        return None;
    }
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !["ws", "wss", "http", "https"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return None;
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if authority_end == 0 {
            return None;
        }
        &rest[authority_end..]
    };
    let (path, query) = match origin_form.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin_form, None),
    };
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// What the server answers to an accepted request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accept<'a> {
    /// The selected subprotocol (see [`select_protocol`]), sent as `Sec-WebSocket-Protocol`.
    pub protocol: Option<&'a str>,
    /// The already-formatted extension answer, e.g.
    /// `permessage-deflate; server_no_context_takeover`, sent as `Sec-WebSocket-Extensions`.
    pub extensions: Option<&'a str>,
    /// More `(name, value)` header lines, written after the others.
    pub extra_headers: &'a [(&'a str, &'a str)],
}

/// Writes "HTTP/1.1 101 Switching Protocols" with Upgrade, Connection, Sec-WebSocket-Accept
/// (from `req.key`), and the optional headers, ending with CRLFCRLF.
///
/// Appends to `out`. Order: `Upgrade: websocket`, `Connection: Upgrade`,
/// `Sec-WebSocket-Accept`, then `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when
/// given, then `extra_headers`.
pub fn write_accept(req: &Request, accept: &Accept<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    push_header(out, "Upgrade", "websocket");
    push_header(out, "Connection", "Upgrade");
    push_header(out, "Sec-WebSocket-Accept", &accept_key(req.key.as_bytes()));
    if let Some(p) = accept.protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = accept.extensions {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    for (name, value) in accept.extra_headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Picks the first protocol in the client's order that the server supports (server list),
/// if any.
///
/// The client's preference wins: with `offered = ["b", "a"]` and `supported = ["a", "b"]`
/// the answer is `"b"`. Names compare exactly (case-sensitive).
pub fn select_protocol<'a>(offered: &'a [String], supported: &[&str]) -> Option<&'a str> {
    offered
        .iter()
        .map(String::as_str)
        .find(|p| supported.contains(p))
}
