//! Server-side TLS of one connection, sans-IO, on the core's own thread (feature `tls`).
//!
//! A `TlsSession` wraps rustls' *unbuffered* server connection: the caller owns every buffer.
//! Received bytes are decrypted in place in a scratch buffer (or in the connection's
//! `pending` buffer when a record spans receives) and the plaintext is appended to the
//! caller's buffer; output is encrypted straight into the `Vec` that becomes the next send.
//! rustls itself keeps no buffer of ours between calls, so an idle TLS connection holds only
//! the session state (keys, sequence numbers) and no I/O buffer: `pending` exists only while a
//! partial record waits, and `out` only until the next send takes it.
//!
//! Ordering: rustls assigns a record its sequence number when it encrypts it, so ciphertext
//! must reach the socket in the order it was produced. Handshake records produced while
//! processing input are appended to `out`; application data is encrypted when the driver
//! plans a send (after `out`), never earlier, so urgent frames can still be queued ahead of
//! other plaintext. See `docs/design/tls.md`.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

pub use rustls::ServerConfig;

/// Most plaintext encrypted into one send (the rest waits for the next one): bounds the
/// ciphertext buffer of a connection with a long queue.
pub(crate) const MAX_PLAINTEXT_PER_SEND: usize = 256 * 1024;

/// Room for the record overhead when sizing an output buffer (per record of at most 16 KiB:
/// 5 header bytes + up to 24 bytes of nonce, tag and content type), plus one spare record.
fn encrypted_len_bound(plain: usize) -> usize {
    plain + (plain / 16384 + 2) * 40
}

/// A TLS record (type 21, alert; legacy version 3.3; length 2) holding a fatal (2)
/// `decode_error` (50), sent in the clear before the handshake has keys.
const PLAINTEXT_DECODE_ERROR_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 50];

/// What processing received bytes found, besides plaintext and output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The handshake completed during this call.
    pub(crate) handshake_done: bool,
    /// The peer sent close_notify: no more data will come.
    pub(crate) peer_closed: bool,
}

/// Why a TLS connection failed.
#[derive(Debug)]
pub(crate) struct TlsFailure {
    /// The handshake had not completed.
    pub(crate) during_handshake: bool,
    pub(crate) error: rustls::Error,
}

/// One connection's TLS state (boxed in its slot, so the plain slot stays small).
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received bytes not yet consumed (a partial record or handshake message); no allocation
    /// while empty.
    pending: Vec<u8>,
    /// Ciphertext waiting for the next send (handshake flights, alerts, close_notify).
    out: Vec<u8>,
    established: bool,
    failed: bool,
    close_notify_sent: bool,
}

impl TlsSession {
    /// A session for a newly accepted connection.
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config.clone())?,
            pending: Vec::new(),
            out: Vec::new(),
            established: false,
            failed: false,
            close_notify_sent: false,
        })
    }

    /// The handshake completed.
    pub(crate) fn established(&self) -> bool {
        self.established
    }

    /// The session failed: nothing more is decrypted or encrypted.
    pub(crate) fn is_dead(&self) -> bool {
        self.failed || self.close_notify_sent
    }

    /// An established session not yet closed with close_notify.
    pub(crate) fn owes_close_notify(&self) -> bool {
        self.established && !self.failed && !self.close_notify_sent
    }

    /// Ciphertext waits for a send.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes held by this session's buffers (for memory accounting in tests).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.pending.capacity() + self.out.capacity()
    }

    /// Feeds received bytes; appends decrypted application data to `plain` and handshake
    /// output to the session's output. `scratch` is a per-core buffer reused across
    /// connections (left empty).
    pub(crate) fn receive(
        &mut self,
        data: &[u8],
        scratch: &mut Vec<u8>,
        plain: &mut Vec<u8>,
    ) -> Result<Received, TlsFailure> {
        let mut ev = Received::default();
        if self.failed {
            return Ok(ev);
        }
        let result = if self.pending.is_empty() {
            scratch.clear();
            scratch.extend_from_slice(data);
            let r = self.process(scratch, plain, &mut ev);
            if let Ok(consumed) = r {
                if consumed < scratch.len() {
                    self.pending.extend_from_slice(&scratch[consumed..]);
                }
            }
            scratch.clear();
            r
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let r = self.process(&mut pending, plain, &mut ev);
            if let Ok(consumed) = r {
                pending.drain(..consumed);
                if !pending.is_empty() {
                    self.pending = pending;
                }
            }
            r
        };
        match result {
            Ok(_) => Ok(ev),
            Err(error) => {
                self.failed = true;
                self.pending = Vec::new();
                // The alert rustls queued for the error goes out with the next send; where it
                // queued none before the handshake (a malformed first record), a plaintext
                // fatal `decode_error` tells the peer why the connection ends.
                self.drain_alerts();
                if self.out.is_empty() && !self.established {
                    self.out.extend_from_slice(&PLAINTEXT_DECODE_ERROR_ALERT);
                }
                Err(TlsFailure {
                    during_handshake: !self.established,
                    error,
                })
            }
        }
    }

    /// Runs rustls over `buf`; returns how many bytes of it were consumed.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        ev: &mut Received,
    ) -> Result<usize, rustls::Error> {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[consumed..]);
            let state = state?;
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        discard += rec.discard;
                        plain.extend_from_slice(rec.payload);
                    }
                }
                ConnectionState::ReadEarlyData(mut r) => {
                    // Early data is not enabled (max_early_data_size 0); drain it regardless.
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        discard += rec.discard;
                        plain.extend_from_slice(rec.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode_into(&mut self.out, &mut e),
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => ev.peer_closed = true,
                ConnectionState::WriteTraffic(_) => {
                    if !self.established {
                        self.established = true;
                        ev.handshake_done = true;
                    }
                    done = true;
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => done = true,
                _ => done = true,
            }
            consumed += discard;
            if done {
                return Ok(consumed);
            }
        }
    }

    /// Moves records rustls queued (e.g. an alert after an error) into `out`. Only while
    /// rustls has records queued: past them it would deframe input again, which after an
    /// error must not happen.
    fn drain_alerts(&mut self) {
        for _ in 0..16 {
            if !self.conn.wants_write() {
                return;
            }
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode_into(&mut self.out, &mut e),
                _ => return,
            }
        }
    }

    /// Moves the session's pending ciphertext into `out`, then encrypts `plaintext` after it.
    /// Returns false (and encrypts nothing) if application data cannot be sent yet (the
    /// handshake is not done) or any more (the session failed or closed).
    pub(crate) fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
        if plaintext.is_empty() {
            return true;
        }
        if self.failed || self.close_notify_sent || !self.established {
            return false;
        }
        for _ in 0..64 {
            // rustls is handed the bytes it has not consumed yet (a partial record at most, so
            // it deframes nothing new): its deframer remembers positions in that buffer.
            let UnbufferedStatus { state, discard } =
                self.conn.process_tls_records(&mut self.pending[..]);
            debug_assert_eq!(discard, 0, "complete records are consumed by receive");
            match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let mut need = encrypted_len_bound(plaintext.len());
                    loop {
                        let start = out.len();
                        out.resize(start + need, 0);
                        match w.encrypt(plaintext, &mut out[start..]) {
                            Ok(n) => {
                                out.truncate(start + n);
                                return true;
                            }
                            Err(EncryptError::InsufficientSize(e)) if e.required_size > need => {
                                out.truncate(start);
                                need = e.required_size;
                            }
                            Err(_) => {
                                out.truncate(start);
                                self.failed = true;
                                return false;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode_into(out, &mut e),
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return false,
            }
        }
        false
    }

    /// Appends a close_notify alert to the pending output (once).
    pub(crate) fn close_notify(&mut self) {
        if self.close_notify_sent || self.failed || !self.established {
            return;
        }
        self.close_notify_sent = true;
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.pending[..]);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let start = self.out.len();
            self.out.resize(start + 64, 0);
            match w.queue_close_notify(&mut self.out[start..]) {
                Ok(n) => self.out.truncate(start + n),
                Err(_) => self.out.truncate(start),
            }
        }
    }

    /// The negotiated ALPN protocol, if any.
    #[cfg(test)]
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }
}

/// Appends one handshake record to `out`, growing it as rustls asks.
fn encode_into<D>(out: &mut Vec<u8>, e: &mut rustls::unbuffered::EncodeTlsData<'_, D>) {
    let mut need = 4096;
    loop {
        let start = out.len();
        out.resize(start + need, 0);
        match e.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(s)) => {
                out.truncate(start);
                need = s.required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
