//! HTTP/1.1 upgrade handshake (RFC 6455 §4), server and client sides.
