//! Randomness from the operating system ([`getrandom`]): masking keys in batches, handshake
//! keys, backoff jitter. Nothing here is predictable (RFC 6455 §5.3 asks for masking keys an
//! intermediary cannot guess) and nothing is seeded.

use edge_ws_protocol::codec::MaskKeySource;

use crate::error::{Error, Result};

/// Keys fetched per system call.
const BATCH: usize = 64;

/// Masking keys drawn from the OS generator, 64 at a time (one `getrandom` call per 64 frames).
#[derive(Debug)]
pub(crate) struct MaskKeys {
    buf: [[u8; 4]; BATCH],
    next: usize,
}

impl MaskKeys {
    /// A source with its first batch already drawn, so that a broken generator fails the
    /// connect rather than a later frame.
    pub(crate) fn new() -> Result<Self> {
        let mut keys = MaskKeys {
            buf: [[0; 4]; BATCH],
            next: BATCH,
        };
        keys.refill()?;
        Ok(keys)
    }

    fn refill(&mut self) -> Result<()> {
        getrandom::fill(self.buf.as_flattened_mut()).map_err(Error::Random)?;
        self.next = 0;
        Ok(())
    }
}

impl MaskKeySource for MaskKeys {
    fn next_key(&mut self) -> [u8; 4] {
        if self.next == BATCH {
            // `MaskKeySource` has no error path. The generator worked for the first batch;
            // on Linux `getrandom` does not fail once the pool is initialised, and a
            // predictable fallback would break RFC 6455 §5.3, so a failure here is fatal to
            // this connection's task (the application sees the connection end).
            self.refill()
                .expect("the OS random number generator failed after working at connect");
        }
        let key = self.buf[self.next];
        self.next += 1;
        key
    }
}

/// 16 random bytes for `Sec-WebSocket-Key`.
pub(crate) fn handshake_key() -> Result<[u8; 16]> {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(Error::Random)?;
    Ok(key)
}

/// A uniform random number in `0..=1`, for backoff jitter; `None` if the generator failed.
pub(crate) fn unit_interval() -> Option<f64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).ok()?;
    // 53 random bits: every value is an exact f64 in [0, 1].
    Some((u64::from_le_bytes(b) >> 11) as f64 / ((1u64 << 53) - 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_batches_and_differ() {
        let mut k = MaskKeys::new().unwrap();
        let keys: Vec<[u8; 4]> = (0..3 * BATCH + 1).map(|_| k.next_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // 193 draws of 32 bits: a collision is about a 4-in-a-million event.
        assert!(distinct.len() >= keys.len() - 1);
        assert_ne!(handshake_key().unwrap(), handshake_key().unwrap());
        let u = unit_interval().unwrap();
        assert!((0.0..=1.0).contains(&u));
    }
}
