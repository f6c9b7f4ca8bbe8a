//! Health checks: active (`GET /health` over plain TCP, on an interval) and passive (the
//! outcome of every connect and handshake), with thresholds, events and per-backend status.
//!
//! A backend starts healthy (so a pool can start without waiting for a first round of
//! checks). It turns unhealthy after
//! [`unhealthy_threshold`](HealthConfig::unhealthy_threshold) consecutive failed checks, and
//! healthy again after [`healthy_threshold`](HealthConfig::healthy_threshold) consecutive
//! successful ones; each turn sends a [`BackendEvent`] to the receivers of
//! [`Backends::subscribe`](crate::Backends::subscribe).
//!
//! Active checks send `GET <path> HTTP/1.1` with `Connection: close` to the backend's host
//! and port and count any `2xx` status line within the [`timeout`](HealthConfig::timeout)
//! as a success (the body is not read). Passive reports (with
//! [`passive`](HealthConfig::passive) on) count a failed connect or opening handshake as a
//! failed check and an established connection as a successful one. An unhealthy backend is
//! not picked, so passive reports alone cannot bring it back: run the active checks
//! ([`Backends::start_health_checks`](crate::Backends::start_health_checks)) whenever health
//! is configured.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::breaker::BreakerState;

/// What the health checks do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The path of the active check's `GET`. Default `/health`.
    pub path: String,
    /// Time between active checks of one backend. Default 5 s.
    pub interval: Duration,
    /// How long one active check may take (connect, request, status line). Default 2 s.
    pub timeout: Duration,
    /// Consecutive successes that turn an unhealthy backend healthy (at least 1). Default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures that turn a healthy backend unhealthy (at least 1). Default 3.
    pub unhealthy_threshold: u32,
    /// Whether connect and handshake outcomes count as checks. Default on.
    pub passive: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/health".to_owned(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            passive: true,
        }
    }
}

/// Something that happened to a backend, sent on the
/// [`Backends::subscribe`](crate::Backends::subscribe) channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendEvent {
    /// The backend turned healthy (after `healthy_threshold` successful checks).
    Healthy {
        /// Its index.
        backend: usize,
        /// Its name.
        name: String,
    },
    /// The backend turned unhealthy (after `unhealthy_threshold` failed checks).
    Unhealthy {
        /// Its index.
        backend: usize,
        /// Its name.
        name: String,
        /// What the last failed check saw.
        reason: String,
    },
    /// The backend's circuit breaker changed state.
    Breaker {
        /// Its index.
        backend: usize,
        /// Its name.
        name: String,
        /// The new state.
        state: BreakerState,
    },
}

/// Why an active check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The TCP connection failed (the text is the I/O error).
    #[error("health check could not connect: {0}")]
    Connect(String),
    /// No complete status line within the timeout.
    #[error("health check timed out after {0:?}")]
    Timeout(Duration),
    /// A status other than 2xx.
    #[error("health check got HTTP status {0}")]
    Status(u16),
    /// Not an HTTP response, or the connection ended before the status line.
    #[error("health check got a malformed response")]
    BadResponse,
    /// Reading or writing failed after connecting.
    #[error("health check I/O error: {0}")]
    Io(String),
    /// A passive report: connecting or the opening handshake failed (the text is the
    /// error).
    #[error("connecting failed: {0}")]
    Passive(String),
}

/// One active check: `GET path` on `host:port` (with `Host: host_header`), a `2xx` status
/// within `timeout`. The round trip on success.
pub async fn check_http(
    host: &str,
    port: u16,
    host_header: &str,
    path: &str,
    timeout: Duration,
) -> Result<Duration, CheckError> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, check_inner(host, port, host_header, path)).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CheckError::Timeout(timeout)),
    }
}

async fn check_inner(
    host: &str,
    port: u16,
    host_header: &str,
    path: &str,
) -> Result<(), CheckError> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| CheckError::Connect(e.to_string()))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\
         User-Agent: edge-ws-client-health\r\nAccept: */*\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| CheckError::Io(e.to_string()))?;
    // The status line is all that is needed: read until its end (capped).
    let mut buf = Vec::with_capacity(256);
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status(&buf[..end]);
        }
        if buf.len() > 1024 {
            return Err(CheckError::BadResponse);
        }
        let mut chunk = [0u8; 512];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| CheckError::Io(e.to_string()))?;
        if n == 0 {
            return Err(CheckError::BadResponse);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `HTTP/1.x NNN reason` → Ok for 2xx.
fn parse_status(line: &[u8]) -> Result<(), CheckError> {
    let line = std::str::from_utf8(line).map_err(|_| CheckError::BadResponse)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(CheckError::BadResponse);
    }
    let code = parts
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(CheckError::BadResponse)?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(CheckError::Status(code))
    }
}

/// One backend's health: thresholds applied to a stream of check outcomes.
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub(crate) healthy: bool,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    pub(crate) last_latency: Option<Duration>,
    pub(crate) last_check: Option<Instant>,
    pub(crate) last_error: Option<CheckError>,
    pub(crate) checks: u64,
    pub(crate) failed_checks: u64,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: true,
            successes: 0,
            failures: 0,
            last_latency: None,
            last_check: None,
            last_error: None,
            checks: 0,
            failed_checks: 0,
        }
    }
}

impl HealthState {
    /// Records one check's outcome at `now`; the new health when it turned.
    pub(crate) fn record(
        &mut self,
        cfg: &HealthConfig,
        outcome: Result<Duration, CheckError>,
        now: Instant,
    ) -> Option<bool> {
        self.checks += 1;
        self.last_check = Some(now);
        match outcome {
            Ok(latency) => {
                self.last_latency = Some(latency);
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.healthy && self.successes >= cfg.healthy_threshold.max(1) {
                    self.healthy = true;
                    return Some(true);
                }
            }
            Err(e) => {
                self.failed_checks += 1;
                self.last_error = Some(e);
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.healthy && self.failures >= cfg.unhealthy_threshold.max(1) {
                    self.healthy = false;
                    return Some(false);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_turn_health_both_ways_and_only_on_consecutive_outcomes() {
        let cfg = HealthConfig {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthConfig::default()
        };
        let t = Instant::now();
        let fail = || Err(CheckError::Timeout(Duration::from_millis(1)));
        let ok = || Ok(Duration::from_millis(3));
        let mut h = HealthState::default();
        assert!(h.healthy, "starts healthy");
        assert_eq!(h.record(&cfg, fail(), t), None);
        assert_eq!(h.record(&cfg, fail(), t), None);
        assert_eq!(h.record(&cfg, ok(), t), None, "a success breaks the run");
        assert_eq!(h.record(&cfg, fail(), t), None);
        assert_eq!(h.record(&cfg, fail(), t), None);
        assert_eq!(h.record(&cfg, fail(), t), Some(false));
        assert_eq!(h.record(&cfg, fail(), t), None, "turns once");
        assert_eq!(h.record(&cfg, ok(), t), None);
        assert_eq!(h.record(&cfg, ok(), t), Some(true));
        assert_eq!(h.last_latency, Some(Duration::from_millis(3)));
        assert_eq!(h.last_check, Some(t));
        assert_eq!((h.checks, h.failed_checks), (9, 6));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Ok(()));
        assert_eq!(parse_status(b"HTTP/1.0 204 No Content"), Ok(()));
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Unavailable"),
            Err(CheckError::Status(503))
        );
        assert_eq!(parse_status(b"SSH-2.0-x"), Err(CheckError::BadResponse));
        assert_eq!(parse_status(b"HTTP/1.1 2000"), Err(CheckError::BadResponse));
    }
}
