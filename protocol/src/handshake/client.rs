//! Client side: writing the upgrade request and checking the server's answer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{
    accept_key, headers_have_token, map_httparse, owned_headers, push_clean, push_header,
    HandshakeError, MAX_HEADERS,
};
use crate::extension::{parse_extensions, ExtensionOffer};

/// The upgrade request a client sends.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// The `Host` header value, e.g. `example.com:8080`.
    pub host: &'a str,
    /// The request target: path and optional query, e.g. `/chat?room=1`. A missing leading
    /// `/` is added; bytes that cannot appear in a request line (controls, space, DEL,
    /// non-ASCII) are percent-encoded.
    pub path: &'a str,
    /// The 16 random bytes behind `Sec-WebSocket-Key` (the caller supplies randomness).
    pub key: [u8; 16],
    /// Subprotocols to offer, in order of preference; none → no `Sec-WebSocket-Protocol`.
    pub protocols: &'a [&'a str],
    /// The `Sec-WebSocket-Extensions` offer value, e.g. `permessage-deflate;
    /// client_max_window_bits`.
    pub extensions: Option<&'a str>,
    /// More `(name, value)` header lines (e.g. `Origin`), written after the others.
    pub extra_headers: &'a [(&'a str, &'a str)],
}

impl ClientRequest<'_> {
    /// Appends the request to `out`: `GET <path> HTTP/1.1`, `Host`, `Upgrade: websocket`,
    /// `Connection: Upgrade`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`, then
    /// `Sec-WebSocket-Protocol` (offered protocols joined by `, `) and
    /// `Sec-WebSocket-Extensions` when given, then `extra_headers`, then the empty line.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"GET ");
        if !self.path.starts_with('/') {
            out.push(b'/');
        }
        for &b in self.path.as_bytes() {
            if b <= b' ' || b >= 0x7f {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_header(out, "Host", self.host);
        push_header(out, "Upgrade", "websocket");
        push_header(out, "Connection", "Upgrade");
        push_header(out, "Sec-WebSocket-Key", &self.key_base64());
        push_header(out, "Sec-WebSocket-Version", "13");
        if !self.protocols.is_empty() {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            for (i, p) in self.protocols.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                push_clean(out, p);
            }
            out.extend_from_slice(b"\r\n");
        }
        if let Some(e) = self.extensions {
            push_header(out, "Sec-WebSocket-Extensions", e);
        }
        for (name, value) in self.extra_headers {
            push_header(out, name, value);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The `Sec-WebSocket-Key` value: base64 of [`ClientRequest::key`].
    pub fn key_base64(&self) -> String {
        STANDARD.encode(self.key)
    }
}

/// What the server agreed to in its 101 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The subprotocol the server selected (one of those offered), if any.
    pub protocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions` answer, over all header lines. Each name was
    /// offered; the parameters are not checked here.
    pub extensions: Vec<ExtensionOffer>,
    /// Every header in order, names lowercased, values trimmed of spaces and tabs.
    pub headers: Vec<(String, String)>,
}

/// Outcome of looking at the bytes received so far (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    /// The header block is not complete yet: call again with more bytes.
    Partial,
    /// A valid 101 answer, and the bytes it took (including the final empty line). Bytes
    /// after that are WebSocket frames.
    Complete(ClientResponse, usize),
}

/// Checks the server's answer: status 101 (else BadStatus(code)), Upgrade: websocket,
/// Connection: upgrade, Sec-WebSocket-Accept == accept_key(key_base64) (else BadAccept), a
/// protocol only if it is one of those offered (else UnexpectedProtocol), extensions parsed
/// (an extension answer when the client offered none → UnexpectedExtension; checking deflate
/// params is done elsewhere). max_len cap → ResponseTooLarge.
///
/// In detail: anything but HTTP is [`HandshakeError::Malformed`]; a status other than 101
/// is checked first and gives [`HandshakeError::BadStatus`]; a missing `Upgrade: websocket`
/// or `Connection: upgrade` token gives [`HandshakeError::MissingUpgrade`]; zero or several
/// `Sec-WebSocket-Accept` lines or a wrong value give [`HandshakeError::BadAccept`]; several
/// `Sec-WebSocket-Protocol` lines, or one naming a protocol not offered (exact match), give
/// [`HandshakeError::UnexpectedProtocol`]; an extension whose name the client's offer does
/// not contain gives [`HandshakeError::UnexpectedExtension`]; an HTTP/1.0 status line, a
/// non-UTF-8 header value or a malformed extension answer give
/// [`HandshakeError::BadResponse`]. An incomplete header block already `max_len` bytes
/// long, or a complete one longer than that, is [`HandshakeError::ResponseTooLarge`].
pub fn parse_response(
    buf: &[u8],
    req: &ClientRequest<'_>,
    max_len: usize,
) -> Result<ClientOutcome, HandshakeError> {
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw_headers);
    let consumed = match resp.parse(&buf[..buf.len().min(max_len)]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_len => {
            return Err(HandshakeError::ResponseTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(ClientOutcome::Partial),
        Err(e) => return Err(map_httparse(e)),
    };
    // httparse fills these in on a complete parse.
    let code = resp.code.unwrap_or_default();
    if code != 101 {
        return Err(HandshakeError::BadStatus(code));
    }
    if resp.version != Some(1) {
        return Err(HandshakeError::BadResponse("HTTP/1.1 required"));
    }
    let headers = owned_headers(
        resp.headers,
        HandshakeError::BadResponse("header value is not UTF-8"),
    )?;
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };

    if !headers_have_token(&headers, "upgrade", "websocket")
        || !headers_have_token(&headers, "connection", "upgrade")
    {
        return Err(HandshakeError::MissingUpgrade);
    }

    let mut accepts = all("sec-websocket-accept");
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if a == accept_key(req.key_base64().as_bytes()) => {}
        _ => return Err(HandshakeError::BadAccept),
    }

    let mut protocols = all("sec-websocket-protocol");
    let protocol = match (protocols.next(), protocols.next()) {
        (None, _) => None,
        (Some(p), None) if req.protocols.contains(&p) => Some(p.to_owned()),
        _ => return Err(HandshakeError::UnexpectedProtocol),
    };

    let mut extensions = Vec::new();
    for value in all("sec-websocket-extensions") {
        parse_extensions(value, &mut extensions)
            .map_err(|_| HandshakeError::BadResponse("malformed Sec-WebSocket-Extensions value"))?;
    }
    if !extensions.is_empty() {
        let mut offered = Vec::new();
        if let Some(offer) = req.extensions {
            // A malformed offer is the caller's fault; keep what parsed.
            let _ = parse_extensions(offer, &mut offered);
        }
        if !extensions
            .iter()
            .all(|e| offered.iter().any(|o| o.name == e.name))
        {
            return Err(HandshakeError::UnexpectedExtension);
        }
    }

    let response = ClientResponse {
        protocol,
        extensions,
        headers,
    };
    Ok(ClientOutcome::Complete(response, consumed))
}
