//! A circuit breaker per backend: closed → open → half-open → closed.
//!
//! - **Closed**: requests pass. Each failure counts; a success resets the count. At
//!   [`failure_threshold`](BreakerConfig::failure_threshold) consecutive failures the breaker
//!   opens.
//! - **Open**: requests are refused (the balancer skips the backend) until the
//!   [`recovery_timeout`](BreakerConfig::recovery_timeout) has passed since it opened.
//! - **Half-open**: exactly one request, the probe, is let through. Its success closes the
//!   breaker; its failure opens it again for another recovery timeout. A probe that never
//!   reports (its task was cancelled) is given up after one recovery timeout, and the next
//!   request becomes the probe, so the breaker cannot stay half-open forever.
//!
//! The breaker has no clock and no lock: every call takes `now`, so its transitions are
//! tested without sleeping, and [`Backends`](crate::Backends) keeps it behind its
//! per-backend mutex.

use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (at least 1). Default 5.
    pub failure_threshold: u32,
    /// How long an open breaker refuses requests before it lets a probe through. Default
    /// 10 s.
    pub recovery_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(10),
        }
    }
}

/// The state a breaker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests pass.
    Closed,
    /// Requests are refused until the recovery timeout has passed.
    Open,
    /// The recovery timeout has passed: one probe may go (or is out).
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
    },
    /// `probe`: when the probe was let through, if one is out.
    HalfOpen {
        probe: Option<Instant>,
    },
}

/// One backend's circuit breaker (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    inner: Inner,
    opened: u64,
}

/// What [`CircuitBreaker::try_acquire`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: go ahead.
    Allowed,
    /// The breaker is half-open and this request is its one probe: report how it went.
    Probe,
    /// Open, or half-open with its probe out: do not send.
    Refused,
}

impl Admission {
    /// Whether the request may go.
    pub fn is_allowed(self) -> bool {
        self != Admission::Refused
    }
}

impl CircuitBreaker {
    /// A closed breaker. A `failure_threshold` of 0 is taken as 1.
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker {
            cfg: BreakerConfig {
                failure_threshold: cfg.failure_threshold.max(1),
                ..cfg
            },
            inner: Inner::Closed { failures: 0 },
            opened: 0,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The state at `now`: an open breaker whose recovery timeout has passed reports
    /// [`BreakerState::HalfOpen`].
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { since } if now < since + self.cfg.recovery_timeout => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        match self.inner {
            Inner::Closed { failures } => failures,
            _ => 0,
        }
    }

    /// How many times the breaker has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Whether [`try_acquire`](Self::try_acquire) at `now` would let a request through,
    /// without taking the probe.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed { .. } => true,
            Inner::Open { since } => now >= since + self.cfg.recovery_timeout,
            Inner::HalfOpen { probe } => self.probe_lapsed(probe, now),
        }
    }

    fn probe_lapsed(&self, probe: Option<Instant>, now: Instant) -> bool {
        probe.is_none_or(|at| now >= at + self.cfg.recovery_timeout)
    }

    /// Asks to send a request at `now`. In half-open state the first caller gets
    /// [`Admission::Probe`] and everyone after it [`Admission::Refused`] until the probe
    /// reports (or lapses after a recovery timeout).
    pub fn try_acquire(&mut self, now: Instant) -> Admission {
        match self.inner {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { since } => {
                if now >= since + self.cfg.recovery_timeout {
                    self.inner = Inner::HalfOpen { probe: Some(now) };
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
            Inner::HalfOpen { probe } => {
                if self.probe_lapsed(probe, now) {
                    self.inner = Inner::HalfOpen { probe: Some(now) };
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
        }
    }

    /// A request succeeded: closes a half-open breaker, resets a closed one's count. Returns
    /// the new state when it changed.
    pub fn on_success(&mut self, _now: Instant) -> Option<BreakerState> {
        let changed = !matches!(self.inner, Inner::Closed { .. });
        self.inner = Inner::Closed { failures: 0 };
        changed.then_some(BreakerState::Closed)
    }

    /// A request failed at `now`: counts it while closed (opening at the threshold), opens a
    /// half-open breaker again. Returns the new state when it changed.
    pub fn on_failure(&mut self, now: Instant) -> Option<BreakerState> {
        match self.inner {
            Inner::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.cfg.failure_threshold {
                    self.open(now);
                    Some(BreakerState::Open)
                } else {
                    self.inner = Inner::Closed { failures };
                    None
                }
            }
            Inner::HalfOpen { .. } => {
                self.open(now);
                Some(BreakerState::Open)
            }
            // Already open (a late report from before it opened): keep the first opening.
            Inner::Open { .. } => None,
        }
    }

    fn open(&mut self, now: Instant) {
        self.inner = Inner::Open { since: now };
        self.opened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, recovery_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            recovery_timeout: Duration::from_millis(recovery_ms),
        })
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn opens_at_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1000);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.failures(), 2);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.try_acquire(t0), Admission::Allowed);
        assert_eq!(b.on_failure(t0), Some(BreakerState::Open));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.try_acquire(ms(t0, 999)), Admission::Refused);
        assert!(!b.would_allow(ms(t0, 999)));
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1000);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.on_success(t0), None, "closed stays closed");
        assert_eq!(b.failures(), 0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "2 after the reset is under 3"
        );
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_success_closes() {
        let t0 = Instant::now();
        let mut b = breaker(1, 1000);
        b.on_failure(t0);
        let t1 = ms(t0, 1000);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.would_allow(t1));
        assert_eq!(b.try_acquire(t1), Admission::Probe);
        assert_eq!(b.try_acquire(t1), Admission::Refused, "one probe only");
        assert_eq!(b.try_acquire(ms(t0, 1500)), Admission::Refused);
        assert_eq!(b.on_success(ms(t0, 1600)), Some(BreakerState::Closed));
        assert_eq!(b.try_acquire(ms(t0, 1600)), Admission::Allowed);
        assert_eq!(b.state(ms(t0, 1600)), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_full_recovery_timeout() {
        let t0 = Instant::now();
        let mut b = breaker(2, 1000);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.try_acquire(ms(t0, 1000)), Admission::Probe);
        assert_eq!(b.on_failure(ms(t0, 1200)), Some(BreakerState::Open));
        assert_eq!(b.state(ms(t0, 2199)), BreakerState::Open);
        assert_eq!(b.try_acquire(ms(t0, 2199)), Admission::Refused);
        assert_eq!(b.try_acquire(ms(t0, 2200)), Admission::Probe);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn a_probe_that_never_reports_lapses_after_a_recovery_timeout() {
        let t0 = Instant::now();
        let mut b = breaker(1, 100);
        b.on_failure(t0);
        assert_eq!(b.try_acquire(ms(t0, 100)), Admission::Probe);
        assert_eq!(b.try_acquire(ms(t0, 199)), Admission::Refused);
        assert_eq!(b.try_acquire(ms(t0, 200)), Admission::Probe, "a new probe");
    }

    #[test]
    fn a_late_failure_while_open_does_not_extend_it() {
        let t0 = Instant::now();
        let mut b = breaker(1, 100);
        b.on_failure(t0);
        assert_eq!(b.on_failure(ms(t0, 50)), None);
        assert_eq!(b.state(ms(t0, 100)), BreakerState::HalfOpen);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn zero_threshold_is_one() {
        let t0 = Instant::now();
        let mut b = breaker(0, 100);
        assert_eq!(b.config().failure_threshold, 1);
        assert_eq!(b.on_failure(t0), Some(BreakerState::Open));
    }
}
