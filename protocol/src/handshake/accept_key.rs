//! The `Sec-WebSocket-Accept` computation (RFC 6455 §4.2.2 step 5.4).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a key: base64(sha1(key + GUID)).
///
/// `key` is the `Sec-WebSocket-Key` value exactly as sent (its base64 text, not the decoded
/// bytes).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    STANDARD.encode(h.finalize())
}
