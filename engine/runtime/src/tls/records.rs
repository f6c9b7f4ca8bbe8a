//! The TLS record layer of an established connection, run by the runtime itself (TLS 1.3 and
//! 1.2, AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, with `ring::aead`).
//!
//! rustls runs the handshake; once it is complete, [`super::TlsSession`] takes the traffic keys
//! and sequence numbers out of rustls (`dangerous_into_kernel_connection`, the kTLS hand-off)
//! and the connection's records are sealed and opened here. Between bursts of traffic a
//! direction holds only its raw key, IV, sequence number and (TLS 1.3) traffic secret: the
//! expanded `ring` key (key schedule and GHASH tables, about 0.5 KiB) is built when a record
//! needs it and dropped by [`Records::release_keys`] when the connection goes quiet.
//!
//! What it does (RFC 8446 §5, RFC 5246 §6.2, RFC 5288, RFC 7905):
//! - nonce = IV XOR the 64-bit record sequence number (TLS 1.2 AES-GCM: 4-byte salt and an
//!   8-byte explicit nonce, sent in the record, equal to IV[4..] XOR sequence number);
//! - TLS 1.3: additional data = the record header; the inner plaintext ends with its content
//!   type, after which zero padding is stripped; TLS 1.2: additional data = sequence number,
//!   type, version and plaintext length;
//! - received `close_notify` ends the input cleanly; `user_canceled` (and, TLS 1.2, any other
//!   warning) is ignored; any other alert, a record that does not authenticate, an oversized or
//!   malformed record, a plaintext record, or a handshake message other than TLS 1.3 KeyUpdate
//!   is an error: a fatal alert is queued for the peer and the connection closes;
//! - TLS 1.3 KeyUpdate from the client: the receive key moves to the next traffic secret; if
//!   the client asked for it, our own KeyUpdate goes out (sealed with the old key) and the send
//!   key moves too. We also update our send key before reaching the cipher suite's
//!   confidentiality limit (AES-GCM: 2^24 records per key, as rustls); a TLS 1.2 connection
//!   that reaches it is closed instead (TLS 1.2 has no key update).
//!
//! Design and security reasoning: `docs/design/tls.md`.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rustls::{AlertDescription, ConnectionTrafficSecrets, Error};
use zeroize::Zeroize;

/// Largest plaintext of one record (2^14).
pub(crate) const MAX_FRAGMENT: usize = 16384;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of every supported cipher.
const TAG: usize = 16;
/// TLS 1.2 AES-GCM explicit nonce.
const EXPLICIT: usize = 8;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;

/// The negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Tls12,
    Tls13,
}

/// The negotiated AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }

    /// The TLS 1.3 suite's hash (for HKDF): SHA-384 for AES-256-GCM, SHA-256 otherwise.
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Cipher::Aes256Gcm => hkdf::HKDF_SHA384,
            Cipher::Aes128Gcm | Cipher::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn hash_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => 48,
            Cipher::Aes128Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }

    /// Records one key may seal (rustls' `confidentiality_limit` for the ring suites).
    fn confidentiality_limit(self) -> u64 {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => 1 << 24,
            Cipher::Chacha20Poly1305 => u64::MAX,
        }
    }
}

/// A TLS 1.3 application traffic secret (32 or 48 bytes).
#[derive(Clone)]
pub(crate) struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    pub(crate) fn new(s: &[u8]) -> Option<Self> {
        if s.len() != 32 && s.len() != 48 {
            return None;
        }
        let mut bytes = [0; 48];
        bytes[..s.len()].copy_from_slice(s);
        Some(Secret {
            bytes,
            len: s.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// `ring`'s HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(alg: hkdf::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) -> bool {
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    match prk.expand(&info, Len(out.len())) {
        Ok(okm) => okm.fill(out).is_ok(),
        Err(_) => false,
    }
}

/// One direction's keys: raw bytes always, the expanded `ring` key only while in use.
pub(crate) struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.3: the current application traffic secret, for KeyUpdate.
    secret: Option<Secret>,
    ring: Option<Box<LessSafeKey>>,
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Direction {
    fn new(
        cipher: Cipher,
        seq: u64,
        key: &[u8],
        iv: &[u8],
        secret: Option<Secret>,
    ) -> Option<Self> {
        if key.len() != cipher.key_len() || iv.len() != 12 {
            return None;
        }
        let mut d = Direction {
            key: [0; 32],
            iv: [0; 12],
            seq,
            secret,
            ring: None,
        };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        Some(d)
    }

    /// The keys of the next generation (TLS 1.3 KeyUpdate): secret' = HKDF-Expand-Label(secret,
    /// "traffic upd"), key and IV from it, sequence number 0.
    fn update(&mut self, cipher: Cipher) -> Result<(), Error> {
        let Some(secret) = &self.secret else {
            return Err(Error::General(
                "TLS 1.3 KeyUpdate: the traffic secret is not available".into(),
            ));
        };
        let alg = cipher.hkdf();
        let mut next = [0u8; 48];
        let n = cipher.hash_len();
        let mut key = [0u8; 32];
        let mut iv = [0u8; 12];
        let ok = expand_label(alg, secret.as_bytes(), b"traffic upd", &mut next[..n])
            && expand_label(alg, &next[..n], b"key", &mut key[..cipher.key_len()])
            && expand_label(alg, &next[..n], b"iv", &mut iv);
        let result = if ok {
            self.secret = Secret::new(&next[..n]);
            self.key = key;
            self.iv = iv;
            self.seq = 0;
            self.ring = None;
            Ok(())
        } else {
            Err(Error::General(
                "TLS 1.3 KeyUpdate: key derivation failed".into(),
            ))
        };
        next.zeroize();
        key.zeroize();
        iv.zeroize();
        result
    }

    /// Derives key and IV from the secret and checks they are the ones in use.
    fn secret_matches(&self, cipher: Cipher) -> bool {
        let Some(secret) = &self.secret else {
            return false;
        };
        let alg = cipher.hkdf();
        let mut key = [0u8; 32];
        let mut iv = [0u8; 12];
        let ok = expand_label(alg, secret.as_bytes(), b"key", &mut key[..cipher.key_len()])
            && expand_label(alg, secret.as_bytes(), b"iv", &mut iv)
            && key == self.key
            && iv == self.iv;
        key.zeroize();
        iv.zeroize();
        ok
    }

    fn key(&mut self, cipher: Cipher) -> Result<&LessSafeKey, Error> {
        if self.ring.is_none() {
            let unbound = UnboundKey::new(cipher.algorithm(), &self.key[..cipher.key_len()])
                .map_err(|_| Error::General("TLS record key rejected by ring".into()))?;
            self.ring = Some(Box::new(LessSafeKey::new(unbound)));
        }
        match &self.ring {
            Some(k) => Ok(k),
            None => Err(Error::EncryptError),
        }
    }

    /// IV XOR the sequence number (big-endian, in the last 8 bytes).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next_seq(&mut self) -> Result<(), Error> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| Error::General("TLS record sequence number exhausted".into()))?;
        Ok(())
    }
}

/// A record-layer failure: the error and the alert to send the peer (none for a received
/// alert).
#[derive(Debug)]
pub(crate) struct RecordError {
    pub(crate) error: Error,
    pub(crate) alert: Option<AlertDescription>,
}

fn fail(alert: AlertDescription, what: &str) -> RecordError {
    RecordError {
        error: Error::General(what.into()),
        alert: Some(alert),
    }
}

impl From<Error> for RecordError {
    fn from(error: Error) -> Self {
        RecordError {
            error,
            alert: Some(AlertDescription::InternalError),
        }
    }
}

/// What a call to [`Records::open`] found besides application data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Bytes of the input consumed (complete records).
    pub(crate) consumed: usize,
    /// The peer sent close_notify (everything after it is ignored).
    pub(crate) peer_closed: bool,
    /// TLS 1.3 KeyUpdates received (and answered where asked).
    pub(crate) key_updates: u32,
}

/// The record layer of one established connection.
pub(crate) struct Records {
    version: Version,
    cipher: Cipher,
    tx: Direction,
    rx: Direction,
    /// Records one send key may seal before it is updated (TLS 1.3) or the connection closed.
    tx_limit: u64,
}

impl Records {
    /// From the secrets rustls hands over; `secrets` (TLS 1.3: the application traffic
    /// secrets of the receive and the send direction, i.e. the client's and the server's on a
    /// server) enable KeyUpdate. `None` if the suite is not supported.
    pub(crate) fn new(
        version: Version,
        tx: (u64, &ConnectionTrafficSecrets),
        rx: (u64, &ConnectionTrafficSecrets),
        secrets: Option<(Secret, Secret)>,
    ) -> Option<Self> {
        let (cipher, tx_key, tx_iv) = parts(tx.1)?;
        let (rx_cipher, rx_key, rx_iv) = parts(rx.1)?;
        if cipher != rx_cipher {
            return None;
        }
        let (rx_secret, tx_secret) = match (version, secrets) {
            (Version::Tls13, Some((rx, tx))) => (Some(rx), Some(tx)),
            _ => (None, None),
        };
        let mut r = Records {
            version,
            cipher,
            tx: Direction::new(cipher, tx.0, tx_key, tx_iv, tx_secret)?,
            rx: Direction::new(cipher, rx.0, rx_key, rx_iv, rx_secret)?,
            tx_limit: cipher.confidentiality_limit(),
        };
        // The captured secrets must be the ones behind the keys: otherwise KeyUpdate would
        // derive wrong keys, so it is refused instead (with a clear error) than get wrong.
        if version == Version::Tls13
            && !(r.tx.secret_matches(cipher) && r.rx.secret_matches(cipher))
        {
            r.tx.secret = None;
            r.rx.secret = None;
        }
        Some(r)
    }

    /// TLS 1.3 KeyUpdate can be followed (the traffic secrets are known and verified).
    pub(crate) fn key_update_supported(&self) -> bool {
        self.version == Version::Tls13 && self.rx.secret.is_some() && self.tx.secret.is_some()
    }

    /// Drops the expanded keys; the raw keys stay (called when the connection goes quiet).
    pub(crate) fn release_keys(&mut self) {
        self.tx.ring = None;
        self.rx.ring = None;
    }

    /// Whether an expanded key is held (for memory accounting in tests).
    #[cfg(test)]
    pub(crate) fn holds_expanded_keys(&self) -> bool {
        self.tx.ring.is_some() || self.rx.ring.is_some()
    }

    #[cfg(test)]
    pub(crate) fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    #[cfg(test)]
    pub(crate) fn seqs(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Moves the send key to the next generation (tests: a peer that sent its KeyUpdate).
    #[cfg(test)]
    pub(crate) fn update_tx(&mut self) {
        self.tx.update(self.cipher).unwrap();
    }

    /// Seals one record of any content type (tests: a peer that sends what it likes).
    #[cfg(test)]
    pub(crate) fn seal_raw(&mut self, typ: u8, body: &[u8], out: &mut Vec<u8>) {
        self.seal_record(typ, &[body], out).unwrap();
    }

    fn max_ciphertext(&self) -> usize {
        match self.version {
            // 2^14 + 256 (RFC 8446 §5.2).
            Version::Tls13 => MAX_FRAGMENT + 256,
            // 2^14 + 2048 (RFC 5246 §6.2.3).
            Version::Tls12 => MAX_FRAGMENT + 2048,
        }
    }

    /// Length of the record starting at `data` if its header is complete; an error if the
    /// header announces more than a record may hold.
    pub(crate) fn record_len(&self, data: &[u8]) -> Result<Option<usize>, RecordError> {
        if data.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([data[3], data[4]]));
        if len > self.max_ciphertext() {
            return Err(RecordError {
                error: Error::PeerSentOversizedRecord,
                alert: Some(AlertDescription::RecordOverflow),
            });
        }
        Ok(Some(HEADER + len))
    }

    /// Opens the complete records at the start of `data`: application data is appended to
    /// `plain` (decrypted in place there: one copy from the input), answers (our KeyUpdate) to
    /// `out`. Stops at a partial record, or after close_notify.
    pub(crate) fn open(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Opened, RecordError> {
        let mut o = Opened::default();
        while let Some(total) = self.record_len(&data[o.consumed..])? {
            let rec = &data[o.consumed..];
            if rec.len() < total {
                break;
            }
            let start = plain.len();
            let r = self.open_record(&rec[..total], plain, out, &mut o);
            if r.is_err() {
                plain.truncate(start);
            }
            r?;
            o.consumed += total;
            if o.peer_closed {
                // Nothing after close_notify counts.
                o.consumed = data.len();
                break;
            }
        }
        Ok(o)
    }

    fn open_record(
        &mut self,
        rec: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        o: &mut Opened,
    ) -> Result<(), RecordError> {
        let (typ, body) = (rec[0], &rec[HEADER..]);
        let cipher = self.cipher;
        let start = plain.len();
        let content = match self.version {
            Version::Tls13 => {
                if typ != CONTENT_APPLICATION_DATA {
                    return Err(fail(
                        AlertDescription::UnexpectedMessage,
                        "TLS 1.3: unencrypted record after the handshake",
                    ));
                }
                if body.len() < TAG + 1 {
                    return Err(decrypt_error());
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
                let aad: [u8; HEADER] = [rec[0], rec[1], rec[2], rec[3], rec[4]];
                plain.extend_from_slice(body);
                let key = self.rx.key(cipher)?;
                let n = key
                    .open_in_place(nonce, Aad::from(aad), &mut plain[start..])
                    .map_err(|_| decrypt_error())?
                    .len();
                self.rx.next_seq()?;
                // Strip the zero padding; the last non-zero byte is the content type.
                let Some(last) = plain[start..start + n].iter().rposition(|&b| b != 0) else {
                    return Err(fail(
                        AlertDescription::UnexpectedMessage,
                        "TLS 1.3 record without a content type",
                    ));
                };
                if last > MAX_FRAGMENT {
                    return Err(RecordError {
                        error: Error::PeerSentOversizedRecord,
                        alert: Some(AlertDescription::RecordOverflow),
                    });
                }
                let content = plain[start + last];
                plain.truncate(start + last);
                content
            }
            Version::Tls12 => {
                let explicit = if cipher == Cipher::Chacha20Poly1305 {
                    0
                } else {
                    EXPLICIT
                };
                if body.len() < explicit + TAG {
                    return Err(decrypt_error());
                }
                let nonce = if explicit == 0 {
                    self.rx.nonce()
                } else {
                    let mut n = [0u8; 12];
                    n[..4].copy_from_slice(&self.rx.iv[..4]);
                    n[4..].copy_from_slice(&body[..EXPLICIT]);
                    n
                };
                let plain_len = body.len() - explicit - TAG;
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.rx.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&rec[..3]);
                aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
                plain.extend_from_slice(&body[explicit..]);
                let key = self.rx.key(cipher)?;
                let n = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut plain[start..],
                    )
                    .map_err(|_| decrypt_error())?
                    .len();
                self.rx.next_seq()?;
                if n > MAX_FRAGMENT {
                    return Err(RecordError {
                        error: Error::PeerSentOversizedRecord,
                        alert: Some(AlertDescription::RecordOverflow),
                    });
                }
                plain.truncate(start + n);
                typ
            }
        };
        match content {
            CONTENT_APPLICATION_DATA => Ok(()),
            CONTENT_ALERT => {
                let alert = plain.get(start..).unwrap_or_default();
                let (level, desc) = match *alert {
                    [level, desc] => (level, desc),
                    _ => {
                        return Err(fail(AlertDescription::DecodeError, "malformed TLS alert"));
                    }
                };
                plain.truncate(start);
                let desc = AlertDescription::from(desc);
                match (self.version, level, desc) {
                    (_, _, AlertDescription::CloseNotify) => {
                        o.peer_closed = true;
                        Ok(())
                    }
                    (_, ALERT_WARNING, AlertDescription::UserCanceled) => Ok(()),
                    (Version::Tls12, ALERT_WARNING, _) => Ok(()),
                    _ => Err(RecordError {
                        error: Error::AlertReceived(desc),
                        alert: None,
                    }),
                }
            }
            CONTENT_HANDSHAKE if self.version == Version::Tls13 => {
                let msg = plain[start..].to_vec();
                plain.truncate(start);
                self.handshake_message(&msg, out, o)
            }
            CONTENT_HANDSHAKE => Err(fail(
                AlertDescription::UnexpectedMessage,
                "TLS 1.2 renegotiation is not supported",
            )),
            _ => Err(fail(
                AlertDescription::UnexpectedMessage,
                "unexpected TLS record type after the handshake",
            )),
        }
    }

    /// A TLS 1.3 post-handshake record from the client: only KeyUpdate is accepted.
    fn handshake_message(
        &mut self,
        msg: &[u8],
        out: &mut Vec<u8>,
        o: &mut Opened,
    ) -> Result<(), RecordError> {
        match *msg {
            [HANDSHAKE_KEY_UPDATE, 0, 0, 1, request] => {
                if request > 1 {
                    return Err(fail(
                        AlertDescription::IllegalParameter,
                        "TLS 1.3 KeyUpdate with an invalid request_update",
                    ));
                }
                if !self.key_update_supported() {
                    return Err(fail(
                        AlertDescription::UnexpectedMessage,
                        "TLS 1.3 KeyUpdate refused: traffic secret not available",
                    ));
                }
                self.rx.update(self.cipher)?;
                o.key_updates += 1;
                if request == 1 {
                    self.send_key_update(out)?;
                }
                Ok(())
            }
            [HANDSHAKE_KEY_UPDATE, ..] => Err(fail(
                AlertDescription::DecodeError,
                "TLS 1.3 KeyUpdate: malformed (or not alone in its record)",
            )),
            [typ, ..] => Err(RecordError {
                error: Error::General(format!(
                    "TLS 1.3 post-handshake message type {typ} not accepted (only KeyUpdate; \
                     a message split across records is not accepted either)"
                )),
                alert: Some(AlertDescription::UnexpectedMessage),
            }),
            [] => Err(fail(
                AlertDescription::DecodeError,
                "empty TLS 1.3 handshake record",
            )),
        }
    }

    /// Our KeyUpdate (update_not_requested), sealed with the current key; then the next key.
    fn send_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_record(
            CONTENT_HANDSHAKE,
            &[&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]],
            out,
        )?;
        self.tx.update(self.cipher)?;
        Ok(())
    }

    /// Seals `plaintext` as application data records of at most 16 KiB each, appended to
    /// `out` (one copy: the plaintext is copied into `out` and encrypted there). Tests: the
    /// session seals through [`Self::seal_parts`].
    #[cfg(test)]
    pub(crate) fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_parts(std::iter::once(plaintext), out)
    }

    /// Seals the concatenation of `parts` as application data records of at most 16 KiB
    /// each (a record may span parts), appended to `out`: each part is copied once, straight
    /// into its record, and encrypted there.
    pub(crate) fn seal_parts<'a, I>(
        &mut self,
        parts: I,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        let total: usize = parts.clone().map(<[u8]>::len).sum();
        let records = total.div_ceil(MAX_FRAGMENT) as u64;
        let can_update = self.version == Version::Tls13 && self.tx.secret.is_some();
        if !can_update && self.tx.seq.saturating_add(records) > self.tx_limit {
            // Checked before sealing anything: the close_notify that follows must carry the
            // next sequence number, so no sealed record may be dropped.
            return Err(limit_reached());
        }
        out.reserve(sealed_len(total));
        let mut open: Option<(usize, usize)> = None; // (start, plaintext bytes in it)
        for mut part in parts {
            while !part.is_empty() {
                let (start, filled) = match open {
                    Some(o) => o,
                    None => (self.begin_record(CONTENT_APPLICATION_DATA, out)?, 0),
                };
                let take = (MAX_FRAGMENT - filled).min(part.len());
                out.extend_from_slice(&part[..take]);
                part = &part[take..];
                if filled + take == MAX_FRAGMENT {
                    self.finish_record(CONTENT_APPLICATION_DATA, start, out)?;
                    open = None;
                } else {
                    open = Some((start, filled + take));
                }
            }
        }
        if let Some((start, _)) = open {
            self.finish_record(CONTENT_APPLICATION_DATA, start, out)?;
        }
        Ok(())
    }

    /// An alert record (close_notify or a fatal one).
    pub(crate) fn seal_alert(
        &mut self,
        desc: AlertDescription,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let level = if desc == AlertDescription::CloseNotify {
            ALERT_WARNING
        } else {
            ALERT_FATAL
        };
        self.seal_record(CONTENT_ALERT, &[&[level, u8::from(desc)]], out)
    }

    /// One record of `typ` holding the concatenation of `parts` (at most 16 KiB).
    fn seal_record(
        &mut self,
        typ: u8,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = self.begin_record(typ, out)?;
        for p in parts {
            out.extend_from_slice(p);
        }
        self.finish_record(typ, start, out)
    }

    /// Starts a record at the end of `out` (header, TLS 1.2 explicit nonce; our KeyUpdate
    /// first if the send key reached its limit); the plaintext is appended after it, then
    /// [`Self::finish_record`] seals it. Returns where the record starts.
    fn begin_record(&mut self, typ: u8, out: &mut Vec<u8>) -> Result<usize, RecordError> {
        // The limit applies to what carries data; the final alert may still go out.
        if self.tx.seq >= self.tx_limit && typ != CONTENT_ALERT {
            match self.version {
                Version::Tls13 if self.tx.secret.is_some() => {
                    // Our own update, before the key has sealed too many records.
                    let limit = std::mem::replace(&mut self.tx_limit, u64::MAX);
                    let r = self.send_key_update(out);
                    self.tx_limit = limit;
                    r?;
                }
                _ => return Err(limit_reached()),
            }
        }
        let start = out.len();
        // The length is filled in by finish_record.
        out.extend_from_slice(&[typ, 3, 3, 0, 0]);
        if self.version == Version::Tls12 && self.cipher != Cipher::Chacha20Poly1305 {
            out.extend_from_slice(&self.tx.nonce()[4..]);
        }
        Ok(start)
    }

    /// Seals the record begun at `start` (its plaintext is everything after the header).
    fn finish_record(
        &mut self,
        typ: u8,
        start: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let cipher = self.cipher;
        let nonce = Nonce::assume_unique_for_key(self.tx.nonce());
        match self.version {
            Version::Tls13 => {
                let len = out.len() - start - HEADER;
                debug_assert!(len <= MAX_FRAGMENT);
                out.push(typ);
                let body = len + 1 + TAG;
                let header = [
                    CONTENT_APPLICATION_DATA,
                    3,
                    3,
                    (body >> 8) as u8,
                    body as u8,
                ];
                out[start..start + HEADER].copy_from_slice(&header);
                let key = self.tx.key(cipher)?;
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(header),
                        &mut out[start + HEADER..],
                    )
                    .map_err(|_| Error::EncryptError)?;
                out.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let explicit = if cipher == Cipher::Chacha20Poly1305 {
                    0
                } else {
                    EXPLICIT
                };
                let len = out.len() - start - HEADER - explicit;
                debug_assert!(len <= MAX_FRAGMENT);
                let body = explicit + len + TAG;
                out[start + 3..start + HEADER].copy_from_slice(&(body as u16).to_be_bytes());
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.tx.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&[typ, 3, 3]);
                aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
                let key = self.tx.key(cipher)?;
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(aad),
                        &mut out[start + HEADER + explicit..],
                    )
                    .map_err(|_| Error::EncryptError)?;
                out.extend_from_slice(tag.as_ref());
            }
        }
        self.tx.next_seq()?;
        Ok(())
    }
}

/// Bytes `plain` bytes of application data take as records (an upper bound).
pub(crate) fn sealed_len(plain: usize) -> usize {
    plain + plain.div_ceil(MAX_FRAGMENT).max(1) * (HEADER + EXPLICIT + 1 + TAG)
}

fn limit_reached() -> RecordError {
    RecordError {
        error: Error::General(
            "TLS record limit of the cipher suite reached (no key update)".into(),
        ),
        alert: Some(AlertDescription::CloseNotify),
    }
}

fn decrypt_error() -> RecordError {
    RecordError {
        error: Error::DecryptError,
        alert: Some(AlertDescription::BadRecordMac),
    }
}

fn parts(s: &ConnectionTrafficSecrets) -> Option<(Cipher, &[u8], &[u8])> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            Some((Cipher::Aes128Gcm, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            Some((Cipher::Aes256Gcm, key.as_ref(), iv.as_ref()))
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Some((Cipher::Chacha20Poly1305, key.as_ref(), iv.as_ref()))
        }
        _ => None,
    }
}
