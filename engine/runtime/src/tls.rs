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
//!
//! After the handshake the session normally leaves rustls: the traffic keys and sequence
//! numbers are taken out (`dangerous_into_kernel_connection`, the same hand-off kTLS uses) and
//! the records are sealed and opened by the `records` module with `ring::aead`, so an idle
//! established connection holds its raw keys (tens of bytes per direction) instead of rustls'
//! session.
//! Connections the record layer cannot take (a cipher suite outside the `ring` provider's, a
//! configuration without secret extraction, a TLS 1.3 handshake whose traffic secrets were not
//! captured) stay on rustls for their whole life.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{AlertDescription, CipherSuite, KeyLog, ProtocolVersion};

pub use rustls::ServerConfig;

mod records;

use records::{Records, Secret, Version};

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
    /// The session left rustls for the runtime's own record layer during this call.
    pub(crate) record_layer: bool,
    /// TLS 1.3 KeyUpdates received from the peer (each followed; answered where asked).
    pub(crate) key_updates: u32,
}

/// Prepares a server configuration for the record-layer hand-off: secret extraction on, and
/// a key log that hands the TLS 1.3 application traffic secrets to the session being
/// processed on this thread (needed to follow KeyUpdate), forwarding everything to the
/// configuration's own key log as before. Certificates, resolver, session cache and tickets
/// stay shared with `config`.
pub(crate) fn prepare_config(config: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut c = (**config).clone();
    c.enable_secret_extraction = true;
    c.key_log = Arc::new(CaptureSecrets {
        inner: config.key_log.clone(),
    });
    Arc::new(c)
}

const CLIENT_TRAFFIC_SECRET_0: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET_0: &str = "SERVER_TRAFFIC_SECRET_0";

/// The TLS 1.3 application traffic secrets of one handshake, as rustls logs them.
#[derive(Default)]
struct Captured {
    client_random: Option<[u8; 32]>,
    client: Option<Secret>,
    server: Option<Secret>,
    /// Secrets of two different handshakes were logged into one capture: use neither.
    mixed: bool,
}

impl Captured {
    fn record(&mut self, label: &str, client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_TRAFFIC_SECRET_0 => &mut self.client,
            SERVER_TRAFFIC_SECRET_0 => &mut self.server,
            _ => return,
        };
        let Ok(random) = <[u8; 32]>::try_from(client_random) else {
            self.mixed = true;
            return;
        };
        if self.client_random.is_some_and(|r| r != random) {
            self.mixed = true;
        }
        self.client_random = Some(random);
        *slot = Secret::new(secret);
    }

    /// (client, server) secrets, if both were captured from one handshake.
    fn take(&mut self) -> Option<(Secret, Secret)> {
        if self.mixed {
            return None;
        }
        Some((self.client.take()?, self.server.take()?))
    }
}

thread_local! {
    /// The capture of the handshake rustls is processing on this thread, if any.
    static CAPTURE: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// The key log of a [`prepare_config`] configuration.
#[derive(Debug)]
struct CaptureSecrets {
    inner: Arc<dyn KeyLog>,
}

impl KeyLog for CaptureSecrets {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        if label == CLIENT_TRAFFIC_SECRET_0 || label == SERVER_TRAFFIC_SECRET_0 {
            CAPTURE.with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    if let Some(c) = c.as_mut() {
                        c.record(label, client_random, secret);
                    }
                }
            });
        }
        if self.inner.will_log(label) {
            self.inner.log(label, client_random, secret);
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET_0
            || label == SERVER_TRAFFIC_SECRET_0
            || self.inner.will_log(label)
    }
}

/// The cipher suites the record layer runs (those of rustls' `ring` provider).
fn record_layer_suite(s: CipherSuite) -> bool {
    matches!(
        s,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// Where a session's records are processed.
// `Records` is what an established (and idle) connection keeps, so it stays inline in the
// session's box (no second allocation); the large handshake state is the boxed one.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// rustls: the handshake, and the whole connection where the hand-off does not apply.
    Rustls(Box<Handshaking>),
    /// The runtime's own record layer, after the hand-off.
    Records(Records),
    /// The hand-off failed: nothing more is processed.
    Gone,
}

/// rustls' connection and what the hand-off needs from its handshake.
struct Handshaking {
    conn: UnbufferedServerConnection,
    /// The configuration allows the hand-off (secret extraction enabled).
    extraction: bool,
    captured: Captured,
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
    phase: Phase,
    /// Received bytes not yet consumed (a partial record or handshake message); no allocation
    /// while empty.
    pending: Vec<u8>,
    /// Ciphertext waiting for the next send (handshake flights, alerts, close_notify).
    out: Vec<u8>,
    established: bool,
    failed: bool,
    close_notify_sent: bool,
    /// The peer's close_notify came (record layer): input after it is ignored.
    peer_closed: bool,
    /// The negotiated ALPN protocol (kept for tests; rustls' copy leaves with the hand-off).
    #[cfg(test)]
    alpn: Option<Vec<u8>>,
}

impl TlsSession {
    /// A session for a newly accepted connection.
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            phase: Phase::Rustls(Box::new(Handshaking {
                conn: UnbufferedServerConnection::new(config.clone())?,
                extraction: config.enable_secret_extraction,
                captured: Captured::default(),
            })),
            pending: Vec::new(),
            out: Vec::new(),
            established: false,
            failed: false,
            close_notify_sent: false,
            peer_closed: false,
            #[cfg(test)]
            alpn: None,
        })
    }

    /// The session runs on the runtime's record layer (it left rustls after the handshake).
    #[cfg(test)]
    pub(crate) fn on_record_layer(&self) -> bool {
        matches!(self.phase, Phase::Records(_))
    }

    /// The connection went quiet: drop the expanded AEAD keys (rebuilt from the raw keys when
    /// traffic comes), so an idle session holds only its raw key material.
    pub(crate) fn release_idle(&mut self) {
        if let Phase::Records(r) = &mut self.phase {
            r.release_keys();
        }
    }

    /// Gives the established session to the record layer, if it can take it. `Ok(false)`:
    /// the session stays on rustls.
    fn hand_off(&mut self) -> Result<bool, rustls::Error> {
        let Phase::Rustls(hs) = &mut self.phase else {
            return Ok(false);
        };
        #[cfg(test)]
        {
            self.alpn = hs.conn.alpn_protocol().map(<[u8]>::to_vec);
        }
        if !hs.extraction || hs.conn.is_handshaking() || hs.conn.wants_write() {
            return Ok(false);
        }
        if !hs
            .conn
            .negotiated_cipher_suite()
            .is_some_and(|s| record_layer_suite(s.suite()))
        {
            return Ok(false);
        }
        let (version, secrets) = match hs.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => match hs.captured.take() {
                Some(s) => (Version::Tls13, Some(s)),
                None => return Ok(false),
            },
            Some(ProtocolVersion::TLSv1_2) => (Version::Tls12, None),
            _ => return Ok(false),
        };
        let Phase::Rustls(hs) = std::mem::replace(&mut self.phase, Phase::Gone) else {
            return Ok(false);
        };
        let (ex, _kernel) = hs.conn.dangerous_into_kernel_connection()?;
        let records = Records::new(version, (ex.tx.0, &ex.tx.1), (ex.rx.0, &ex.rx.1), secrets)
            .ok_or_else(|| {
                rustls::Error::General("TLS record layer: unsupported traffic secrets".into())
            })?;
        self.phase = Phase::Records(records);
        Ok(true)
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
        if self.failed || self.peer_closed {
            return Ok(ev);
        }
        if matches!(self.phase, Phase::Records(_)) {
            return self.receive_records(data, plain, &mut ev).map(|()| ev);
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
        let result = result.and_then(|_| {
            if self.established && !ev.peer_closed {
                ev.record_layer = self.hand_off()?;
            }
            Ok(())
        });
        if ev.record_layer && !self.pending.is_empty() {
            // Records that followed the handshake's last one, not yet looked at.
            let rest = std::mem::take(&mut self.pending);
            return self.receive_records(&rest, plain, &mut ev).map(|()| ev);
        }
        match result {
            Ok(()) => Ok(ev),
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

    /// Runs rustls over `buf`; returns how many bytes of it were consumed. While the handshake
    /// runs, the traffic secrets rustls logs are captured for the hand-off.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        ev: &mut Received,
    ) -> Result<usize, rustls::Error> {
        let Phase::Rustls(hs) = &mut self.phase else {
            return Ok(0);
        };
        if self.established {
            return Self::process_rustls(hs, &mut self.out, &mut self.established, buf, plain, ev);
        }
        CAPTURE.with(|c| *c.borrow_mut() = Some(std::mem::take(&mut hs.captured)));
        let r = Self::process_rustls(hs, &mut self.out, &mut self.established, buf, plain, ev);
        hs.captured = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
        r
    }

    fn process_rustls(
        hs: &mut Handshaking,
        out: &mut Vec<u8>,
        established: &mut bool,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        ev: &mut Received,
    ) -> Result<usize, rustls::Error> {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                hs.conn.process_tls_records(&mut buf[consumed..]);
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
                ConnectionState::EncodeTlsData(mut e) => encode_into(out, &mut e),
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => ev.peer_closed = true,
                ConnectionState::WriteTraffic(_) => {
                    if !*established {
                        *established = true;
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
        let Phase::Rustls(hs) = &mut self.phase else {
            return;
        };
        for _ in 0..16 {
            if !hs.conn.wants_write() {
                return;
            }
            let UnbufferedStatus { state, .. } = hs.conn.process_tls_records(&mut []);
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
        self.encrypt_parts(std::iter::once(plaintext), &mut Vec::new(), out)
    }

    /// [`Self::encrypt`] of the concatenation of `parts` (the waiting entries of a send
    /// queue): on the record layer each part is copied once, straight into its record; on
    /// rustls they are gathered into `scratch` first (left empty).
    pub(crate) fn encrypt_parts<'a, I>(
        &mut self,
        parts: I,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
        if parts.clone().all(<[u8]>::is_empty) {
            return true;
        }
        if self.failed || self.close_notify_sent || !self.established {
            return false;
        }
        match &mut self.phase {
            Phase::Rustls(_) => {}
            Phase::Records(r) => {
                let start = out.len();
                return match r.seal_parts(parts, out) {
                    Ok(()) => true,
                    Err(e) => {
                        // Nothing of this plaintext goes out (no record of a cut message), only
                        // the alert after what was sealed before.
                        tracing::debug!(error = %e.error, "TLS record layer: cannot seal");
                        out.truncate(start);
                        self.failed = true;
                        if let Some(alert) = e.alert {
                            let _ = r.seal_alert(alert, out);
                        }
                        false
                    }
                };
            }
            Phase::Gone => return false,
        }
        let mut one = parts.clone();
        match (one.next(), one.next()) {
            (Some(p), None) => self.encrypt_rustls(p, out),
            _ => {
                scratch.clear();
                for p in parts {
                    scratch.extend_from_slice(p);
                }
                let ok = self.encrypt_rustls(scratch, out);
                scratch.clear();
                ok
            }
        }
    }

    /// rustls' record layer (the fallback): `plaintext` is not empty, the session established.
    fn encrypt_rustls(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
        let Phase::Rustls(hs) = &mut self.phase else {
            return false;
        };
        for _ in 0..64 {
            // rustls is handed the bytes it has not consumed yet (a partial record at most, so
            // it deframes nothing new): its deframer remembers positions in that buffer.
            let UnbufferedStatus { state, discard } =
                hs.conn.process_tls_records(&mut self.pending[..]);
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
        let hs = match &mut self.phase {
            Phase::Rustls(hs) => hs,
            Phase::Records(r) => {
                let _ = r.seal_alert(AlertDescription::CloseNotify, &mut self.out);
                return;
            }
            Phase::Gone => return,
        };
        let UnbufferedStatus { state, .. } = hs.conn.process_tls_records(&mut self.pending[..]);
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
        match &self.phase {
            Phase::Rustls(hs) => hs.conn.alpn_protocol(),
            _ => self.alpn.as_deref(),
        }
    }

    /// The record layer, once the session is on it (tests).
    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> Option<&mut Records> {
        match &mut self.phase {
            Phase::Records(r) => Some(r),
            _ => None,
        }
    }

    /// Received bytes on the record layer: completes a partial record kept in `pending` (only
    /// the bytes it lacks are copied there), then opens the records of `data` straight from
    /// it; a partial record at the end is kept in `pending`.
    fn receive_records(
        &mut self,
        mut data: &[u8],
        plain: &mut Vec<u8>,
        ev: &mut Received,
    ) -> Result<(), TlsFailure> {
        let Phase::Records(r) = &mut self.phase else {
            return Ok(());
        };
        let result = (|| {
            if !self.pending.is_empty() {
                let want = r.record_len(&self.pending)?.unwrap_or(5);
                let take = want.saturating_sub(self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                let Some(total) = r.record_len(&self.pending)? else {
                    return Ok(());
                };
                let take = total.saturating_sub(self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.pending.len() < total {
                    return Ok(());
                }
                let rec = std::mem::take(&mut self.pending);
                let o = r.open(&rec, plain, &mut self.out)?;
                debug_assert_eq!(o.consumed, rec.len());
                ev.key_updates += o.key_updates;
                if o.peer_closed {
                    self.peer_closed = true;
                    ev.peer_closed = true;
                    return Ok(());
                }
            }
            let o = r.open(data, plain, &mut self.out)?;
            ev.key_updates += o.key_updates;
            if o.peer_closed {
                self.peer_closed = true;
                ev.peer_closed = true;
            } else if o.consumed < data.len() {
                // A partial record: its header was checked (no oversized announcement).
                let rest = &data[o.consumed..];
                self.pending.reserve_exact(r.record_len(rest)?.unwrap_or(5));
                self.pending.extend_from_slice(rest);
            }
            Ok(())
        })();
        result.map_err(|e: records::RecordError| {
            self.failed = true;
            self.pending = Vec::new();
            if let Some(alert) = e.alert {
                let _ = r.seal_alert(alert, &mut self.out);
            }
            TlsFailure {
                during_handshake: false,
                error: e.error,
            }
        })
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
