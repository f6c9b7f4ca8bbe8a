//! [`HandshakeError`]: every way an opening handshake can fail, on either side.

/// Why an opening handshake failed.
///
/// Server-side variants map to the HTTP status to answer with ([`HandshakeError::status`]) and
/// can write that answer themselves ([`HandshakeError::write_response`]). Client-side variants
/// (from [`parse_response`](super::parse_response)) are never answered on the wire; the client
/// just drops the connection.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a syntactically valid HTTP/1.x message (httparse rejected them).
    #[error("malformed HTTP message")]
    Malformed,
    /// The request header block is longer than the configured cap. Status 431.
    #[error("request header block too large")]
    RequestTooLarge,
    /// More header lines than the parser accepts ([`MAX_HEADERS`](super::MAX_HEADERS)).
    /// Status 431.
    #[error("too many header fields")]
    TooManyHeaders,
    /// An upgrade request with a method other than `GET`. Status 405.
    #[error("WebSocket upgrade requires GET")]
    MethodNotAllowed,
    /// An upgrade request that breaks a rule of RFC 6455 §4.2.1; the reason says which.
    /// Status 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` missing or not `13`. Status 426; the answer carries
    /// `Sec-WebSocket-Version: 13`.
    #[error("unsupported WebSocket version (supported: 13)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, repeated, or not base64 of exactly 16 bytes. Status 400.
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
    /// No (or an empty) `Host` header. Status 400.
    #[error("missing Host header")]
    MissingHost,
    /// Client side: the server answered with a status other than 101.
    #[error("server answered with status {0} instead of 101")]
    BadStatus(u16),
    /// Client side: `Sec-WebSocket-Accept` missing, repeated, or not the expected value.
    #[error("missing or wrong Sec-WebSocket-Accept")]
    BadAccept,
    /// Client side: the 101 lacks `Upgrade: websocket` or `Connection: upgrade`.
    #[error("101 response without Upgrade: websocket / Connection: upgrade")]
    MissingUpgrade,
    /// Client side: the server selected a subprotocol the client did not offer (or several).
    #[error("server selected a subprotocol that was not offered")]
    UnexpectedProtocol,
    /// Client side: the server answered with an extension the client did not offer.
    #[error("server answered with an extension that was not offered")]
    UnexpectedExtension,
    /// Client side: the response header block is longer than the configured cap.
    #[error("response header block too large")]
    ResponseTooLarge,
    /// Client side: a 101 response that breaks another rule; the reason says which.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

impl HandshakeError {
    /// The HTTP status code a server answers this error with.
    ///
    /// 400 for malformed or invalid requests, 405 for a non-GET upgrade, 426 for a version
    /// other than 13, 431 for an oversized header block. Client-side variants are never
    /// answered; they report 400 only so that the method is total.
    pub const fn status(&self) -> u16 {
        match self {
            HandshakeError::RequestTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// Appends a complete HTTP/1.1 error response for this error to `out`.
    ///
    /// Status line, `Content-Type: text/plain; charset=utf-8`, `Content-Length`,
    /// `Connection: close`, plus `Upgrade: websocket` and `Sec-WebSocket-Version: 13` for 426
    /// and `Allow: GET` for 405; the body is the error's message and a newline. The caller
    /// closes the connection after sending it.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let status = self.status();
        let reason = match status {
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let extra: &[(&str, &str)] = match self {
            HandshakeError::UnsupportedVersion => {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            }
            HandshakeError::MethodNotAllowed => &[("Allow", "GET")],
            _ => &[],
        };
        let body = format!("{self}\n");
        super::write_response_with(
            status,
            reason,
            "text/plain; charset=utf-8",
            extra,
            body.as_bytes(),
            out,
        );
    }
}
