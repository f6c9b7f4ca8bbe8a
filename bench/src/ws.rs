//! The minimal WebSocket client side wsload needs: a fixed-key upgrade request, response
//! verification, and masked frames built once with the protocol crate's header encoder.

use base64::Engine as _;
use edge_ws_protocol::frame::MAX_HEADER_LEN;
use edge_ws_protocol::mask::apply_mask;
use edge_ws_protocol::{FrameHeader, OpCode};
use sha1::{Digest, Sha1};

/// The fixed `Sec-WebSocket-Key` every wsload connection sends (the RFC 6455 sample nonce).
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The fixed masking key of every frame wsload sends. Servers must unmask whatever key they
/// get; a fixed one lets each frame be built once.
pub const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(sha1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The HTTP/1.1 upgrade request for `path` on `host`.
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Checks an upgrade response at the start of `buf`.
///
/// `Ok(None)`: incomplete; `Ok(Some(n))`: a valid 101 whose head took `n` bytes (anything after
/// is already WebSocket data); `Err`: not a valid upgrade.
pub fn check_upgrade_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > 16 * 1024 {
                return Err("upgrade response head over 16 KiB".into());
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("bad upgrade response: {e}")),
    };
    if resp.code != Some(101) {
        return Err(format!("upgrade refused: status {:?}", resp.code));
    }
    let mut accept_ok = false;
    let mut upgrade_ok = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = h.value == expected_accept.as_bytes();
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = h.value.eq_ignore_ascii_case(b"websocket");
        }
    }
    if !accept_ok {
        return Err("wrong or missing Sec-WebSocket-Accept".into());
    }
    if !upgrade_ok {
        return Err("missing Upgrade: websocket".into());
    }
    Ok(Some(n))
}

/// A deterministic ASCII payload of `len` bytes (valid as text or binary).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// One complete client frame (FIN, `opcode`, masked with [`MASK_KEY`]) carrying `payload`.
pub fn masked_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, payload.len() as u64);
    h.mask = Some(MASK_KEY);
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = h.encode(&mut head);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    apply_mask(&mut out[n..], MASK_KEY, 0);
    out
}

/// The header length of an unmasked server frame with a payload of `len` bytes.
pub fn server_header_len(len: usize) -> usize {
    FrameHeader::new(OpCode::Binary, len as u64).encoded_len()
}

/// A masked client close frame with status 1000.
pub fn close_frame() -> Vec<u8> {
    masked_frame(OpCode::Close, &1000u16.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(CLIENT_KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_roundtrip() {
        let p = payload(300);
        let f = masked_frame(OpCode::Binary, &p);
        let (h, n) = FrameHeader::decode(&f).unwrap().unwrap();
        assert_eq!(h.payload_len, 300);
        assert_eq!(h.mask, Some(MASK_KEY));
        let mut body = f[n..].to_vec();
        apply_mask(&mut body, MASK_KEY, 0);
        assert_eq!(body, p);
    }

    #[test]
    fn response_check() {
        let acc = accept_key(CLIENT_KEY.as_bytes());
        let r = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\nxx"
        );
        assert_eq!(
            check_upgrade_response(r.as_bytes(), &acc),
            Ok(Some(r.len() - 2))
        );
        assert_eq!(check_upgrade_response(&r.as_bytes()[..20], &acc), Ok(None));
        assert!(check_upgrade_response(b"HTTP/1.1 400 Bad\r\n\r\n", &acc).is_err());
    }
}
