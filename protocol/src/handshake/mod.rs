//! HTTP/1.1 upgrade handshake (RFC 6455 §4), server and client sides.
//!
//! Sans-IO like the rest of the crate: the parsers look at the bytes received so far and say
//! whether they need more ([`ParseOutcome::Partial`], [`ClientOutcome::Partial`]), and how
//! many bytes the handshake took once it is complete; anything after it (frames the peer sent
//! right away) is left to the caller. The writers append to a caller-owned `Vec<u8>`.
//!
//! Server side: [`parse_request`] → [`Request`] (or [`HttpRequestInfo`] for plain HTTP, or a
//! [`HandshakeError`] that can [write its own response](HandshakeError::write_response)), then
//! [`select_protocol`] and [`write_accept`].
//!
//! Client side: [`ClientRequest::write`], then [`parse_response`] → [`ClientResponse`].
//!
//! Caller-supplied strings written into headers (paths, hosts, protocol names, extra headers,
//! reasons) have any CR and LF bytes dropped, so they cannot inject header lines.

mod accept_key;
mod client;
mod error;
mod request;
#[cfg(test)]
mod tests;

pub use accept_key::accept_key;
pub use client::{parse_response, ClientOutcome, ClientRequest, ClientResponse};
pub use error::HandshakeError;
pub use request::{
    parse_request, select_protocol, write_accept, Accept, HttpRequestInfo, ParseOutcome, Request,
};

/// Default cap on the size of a request (or response) header block, in bytes.
pub const MAX_REQUEST_LEN: usize = 8192;

/// Most header lines a request or response may carry; more is
/// [`HandshakeError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 64;

/// Appends a complete HTTP/1.1 response with a body to `out`, e.g. for `GET /health`.
///
/// Writes the status line, `Content-Type` (left out when `content_type` is empty),
/// `Content-Length`, `Connection: close`, an empty line and `body`. The caller closes the
/// connection after sending it.
pub fn write_http_response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    write_response_with(status, reason, content_type, &[], body, out);
}

/// [`write_http_response`] with extra headers (e.g. `Retry-After`, `WWW-Authenticate`). Header
/// names that are not HTTP tokens are skipped and CR/LF in values are dropped, so nothing a
/// caller passes can split the response.
pub fn write_http_response_with_headers(
    status: u16,
    reason: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let is_token = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let kept: Vec<(&str, &str)> = headers
        .iter()
        .copied()
        .filter(|(n, _)| is_token(n))
        .collect();
    write_response_with(status, reason, content_type, &kept, body, out);
}

pub(crate) fn write_response_with(
    status: u16,
    reason: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    push_clean(out, reason);
    out.extend_from_slice(b"\r\n");
    if !content_type.is_empty() {
        push_header(out, "Content-Type", content_type);
    }
    push_header(out, "Content-Length", &body.len().to_string());
    push_header(out, "Connection", "close");
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends `s` without its CR and LF bytes.
pub(crate) fn push_clean(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
}

/// Appends `name: value\r\n` (CR/LF dropped from both).
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_clean(out, name);
    out.extend_from_slice(b": ");
    push_clean(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Whether the comma-separated list `value` contains `token` (ASCII case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
}

/// Whether any header named `name` (lowercase) lists `token`.
pub(crate) fn headers_have_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == name && has_token(v, token))
}

/// An RFC 7230 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// httparse's headers, names lowercased and values trimmed; non-UTF-8 values give `err`.
pub(crate) fn owned_headers(
    raw: &[httparse::Header<'_>],
    err: HandshakeError,
) -> Result<Vec<(String, String)>, HandshakeError> {
    raw.iter()
        .map(|h| {
            let value = core::str::from_utf8(h.value).map_err(|_| err.clone())?;
            Ok((
                h.name.to_ascii_lowercase(),
                value.trim_matches([' ', '\t']).to_owned(),
            ))
        })
        .collect()
}

/// Maps an httparse error.
pub(crate) fn map_httparse(e: httparse::Error) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders,
        _ => HandshakeError::Malformed,
    }
}
