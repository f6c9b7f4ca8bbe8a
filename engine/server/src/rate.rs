//! Rate limits: token buckets in their GCRA form (one timestamp per bucket).
//!
//! A bucket with rate `r` and burst `b` is kept as its *theoretical arrival time* `tat`: a
//! message costing `n` units is allowed when `max(tat, now) + n/r - now <= b/r`, and then moves
//! `tat` to `max(tat, now) + n/r`. That is exactly a token bucket of capacity `b` refilled at
//! `r` per second, with one integer of state. Per-connection buckets are plain integers (only
//! their core touches them); per-user buckets are one `AtomicU64` each, updated with a
//! compare-and-swap, so no lock is taken on the message path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_ws::protocol::CloseCode;

/// One limit: `rate` units per second with bursts of up to `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Nanoseconds one unit costs (at least 1).
    interval: u64,
    /// `burst * interval`: how far `tat` may run ahead of now.
    window: u64,
}

impl Rule {
    fn new(per_second: f64, burst: u64) -> Rule {
        assert!(
            per_second.is_finite() && per_second > 0.0,
            "rate must be a positive number, got {per_second}"
        );
        let interval = (1e9 / per_second).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        Rule {
            interval,
            window: burst.max(1).saturating_mul(interval),
        }
    }

    /// The new `tat` if `n` units may pass at `now`, else `None`. A single message larger than
    /// the whole burst passes only when the bucket is full (and then empties it for a while),
    /// so a burst smaller than the largest message never locks a connection out for good.
    #[inline]
    fn check(&self, tat: u64, now: u64, n: u64) -> Option<u64> {
        let cost = n.saturating_mul(self.interval);
        let base = tat.max(now);
        let next = base.saturating_add(cost);
        let ok = if cost > self.window {
            tat <= now
        } else {
            next - now <= self.window
        };
        ok.then_some(next)
    }

    /// Lock-free [`Rule::check`] on a shared bucket: commits on success.
    #[inline]
    fn take_shared(&self, tat: &AtomicU64, now: u64, n: u64) -> bool {
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let Some(next) = self.check(cur, now, n) else {
                return false;
            };
            match tat.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Gives back what [`Rule::take_shared`] took (used when another bucket then refused).
    fn refund_shared(&self, tat: &AtomicU64, n: u64) {
        let cost = n.saturating_mul(self.interval);
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some(t.saturating_sub(cost))
        });
    }
}

/// A rate limit in messages per second and/or bytes per second, each with a burst.
///
/// ```
/// use edge_ws_server::RateLimit;
/// // 50 messages/s with bursts of 100, and 1 MB/s with bursts of 256 KiB.
/// let limit = RateLimit::new().messages(50.0, 100).bytes(1e6, 256 * 1024);
/// # let _ = limit;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub(crate) messages: Option<Rule>,
    pub(crate) bytes: Option<Rule>,
}

impl RateLimit {
    /// No limit yet; add one with [`RateLimit::messages`] and/or [`RateLimit::bytes`].
    pub fn new() -> RateLimit {
        RateLimit::default()
    }

    /// At most `per_second` messages per second, with bursts of up to `burst` messages.
    /// Panics unless `per_second` is a positive finite number.
    pub fn messages(mut self, per_second: f64, burst: u32) -> RateLimit {
        self.messages = Some(Rule::new(per_second, u64::from(burst)));
        self
    }

    /// At most `per_second` payload bytes per second, with bursts of up to `burst` bytes
    /// (precision: one byte per nanosecond at most). Panics unless `per_second` is a positive
    /// finite number.
    pub fn bytes(mut self, per_second: f64, burst: u32) -> RateLimit {
        self.bytes = Some(Rule::new(per_second, u64::from(burst)));
        self
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }
}

/// What to do with a client that keeps sending over its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbusePolicy {
    /// Refused messages tolerated within `window`; one more closes the connection.
    pub max_violations: u32,
    /// The window over which refused messages are counted.
    pub window: Duration,
    /// The close code (default [`crate::CLOSE_RATE_LIMITED`], 4029: the client may reconnect
    /// after a back-off).
    pub code: CloseCode,
}

impl AbusePolicy {
    /// Close with [`crate::CLOSE_RATE_LIMITED`] after more than `max_violations` refused
    /// messages within `window`.
    pub fn new(max_violations: u32, window: Duration) -> AbusePolicy {
        AbusePolicy {
            max_violations,
            window,
            code: crate::CLOSE_RATE_LIMITED,
        }
    }

    /// The close code to use instead of 4029.
    pub fn code(mut self, code: CloseCode) -> AbusePolicy {
        self.code = code;
        self
    }
}

/// A connection's own buckets (touched only by its core).
#[derive(Debug, Default)]
pub(crate) struct LocalBuckets {
    messages: u64,
    bytes: u64,
    /// Start of the current abuse window (ns) and refusals in it.
    abuse_since: u64,
    abuse_count: u32,
}

/// A user's buckets, shared by the user's connections on every core.
#[derive(Debug, Default)]
pub(crate) struct SharedBuckets {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// Takes one message of `len` bytes from the connection's buckets (`local`, limit `conn`) and
/// the user's (`shared`, limit `user`): all or nothing.
#[inline]
pub(crate) fn take(
    now: u64,
    len: u64,
    conn: Option<&RateLimit>,
    local: &mut LocalBuckets,
    user: Option<&RateLimit>,
    shared: Option<&SharedBuckets>,
) -> bool {
    // Local buckets: check without committing.
    let mut next_msgs = None;
    let mut next_bytes = None;
    if let Some(limit) = conn {
        if let Some(rule) = &limit.messages {
            match rule.check(local.messages, now, 1) {
                Some(t) => next_msgs = Some(t),
                None => return false,
            }
        }
        if let Some(rule) = &limit.bytes {
            match rule.check(local.bytes, now, len) {
                Some(t) => next_bytes = Some(t),
                None => return false,
            }
        }
    }
    // Shared buckets: commit one at a time, refunding on a later refusal.
    if let (Some(limit), Some(shared)) = (user, shared) {
        let took_msgs = match &limit.messages {
            Some(rule) => {
                if !rule.take_shared(&shared.messages, now, 1) {
                    return false;
                }
                true
            }
            None => false,
        };
        if let Some(rule) = &limit.bytes {
            if !rule.take_shared(&shared.bytes, now, len) {
                if took_msgs {
                    if let Some(r) = &limit.messages {
                        r.refund_shared(&shared.messages, 1);
                    }
                }
                return false;
            }
        }
    }
    if let Some(t) = next_msgs {
        local.messages = t;
    }
    if let Some(t) = next_bytes {
        local.bytes = t;
    }
    true
}

/// Records a refused message; `true` when the abuse policy says to close.
pub(crate) fn abused(now: u64, local: &mut LocalBuckets, policy: &AbusePolicy) -> bool {
    let window = policy.window.as_nanos().min(u128::from(u64::MAX)) as u64;
    if local.abuse_count == 0 || now.saturating_sub(local.abuse_since) > window {
        local.abuse_since = now;
        local.abuse_count = 0;
    }
    local.abuse_count = local.abuse_count.saturating_add(1);
    local.abuse_count > policy.max_violations
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let limit = RateLimit::new().messages(10.0, 5);
        let mut b = LocalBuckets::default();
        let now = 100 * S;
        let passed = (0..20)
            .filter(|_| take(now, 1, Some(&limit), &mut b, None, None))
            .count();
        assert_eq!(passed, 5);
        // 10/s: one more every 100 ms.
        assert!(!take(now + S / 20, 1, Some(&limit), &mut b, None, None));
        assert!(take(now + S / 10, 1, Some(&limit), &mut b, None, None));
        assert!(!take(now + S / 10, 1, Some(&limit), &mut b, None, None));
        // After a long pause the full burst is back, not more.
        let later = now + 10 * S;
        let passed = (0..20)
            .filter(|_| take(later, 1, Some(&limit), &mut b, None, None))
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn bytes_and_oversized_messages() {
        let limit = RateLimit::new().bytes(1000.0, 100);
        let mut b = LocalBuckets::default();
        let now = S;
        assert!(take(now, 60, Some(&limit), &mut b, None, None));
        assert!(!take(now, 60, Some(&limit), &mut b, None, None));
        assert!(take(now, 40, Some(&limit), &mut b, None, None));
        // A 500-byte message passes only with a full bucket, then blocks for 500 ms.
        let t = now + S;
        assert!(take(t, 500, Some(&limit), &mut b, None, None));
        assert!(!take(t + S / 4, 1, Some(&limit), &mut b, None, None));
        assert!(take(t + S / 2, 1, Some(&limit), &mut b, None, None));
    }

    #[test]
    fn shared_is_all_or_nothing() {
        let conn = RateLimit::new().messages(1000.0, 1000);
        let user = RateLimit::new().messages(1000.0, 3).bytes(1e6, 10);
        let shared = SharedBuckets::default();
        let mut b = LocalBuckets::default();
        let now = S;
        let mut take_n = |n| take(now, n, Some(&conn), &mut b, Some(&user), Some(&shared));
        assert!(take_n(4));
        assert!(take_n(4));
        // Bytes refuse: the user's message token is refunded, the connection's not taken.
        assert!(!take_n(4));
        assert!(take_n(2));
        assert!(!take_n(1));
    }

    #[test]
    fn abuse_window() {
        let p = AbusePolicy::new(2, Duration::from_secs(1));
        let mut b = LocalBuckets::default();
        assert!(!abused(S, &mut b, &p));
        assert!(!abused(S, &mut b, &p));
        assert!(abused(S, &mut b, &p));
        let mut b = LocalBuckets::default();
        assert!(!abused(S, &mut b, &p));
        assert!(!abused(S, &mut b, &p));
        assert!(!abused(3 * S, &mut b, &p));
    }
}
