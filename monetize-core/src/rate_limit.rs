//! A per-customer request rate limit: GCRA in one atomic word, as governor does it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::RateLimitConfig;
use crate::error::ConfigError;

/// Compiled GCRA parameters, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// Time between requests at the sustained rate.
    emission: u64,
    /// How far ahead of now the theoretical arrival time may run (burst allowance).
    tolerance: u64,
    /// Requests per period, for `RateLimit-Limit`.
    pub(crate) limit: u64,
    /// Period in seconds, for `RateLimit-Reset`.
    pub(crate) per_secs: u64,
}

/// What a rate-limit check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// Requests per window (`RateLimit-Limit`).
    pub limit: u64,
    /// Requests left right now (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_secs: u64,
    /// Seconds to wait before retrying, when refused (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl RateLimit {
    pub(crate) fn compile(cfg: &RateLimitConfig, field: &str) -> Result<RateLimit, ConfigError> {
        if cfg.requests == 0 {
            return Err(ConfigError::new(
                format!("{field}.requests"),
                0,
                "must be at least 1",
            ));
        }
        if cfg.per_secs == 0 || cfg.per_secs > 86_400 {
            return Err(ConfigError::new(
                format!("{field}.per_secs"),
                cfg.per_secs,
                "must be between 1 and 86400",
            ));
        }
        let burst = cfg.burst.unwrap_or(cfg.requests);
        if burst == 0 {
            return Err(ConfigError::new(
                format!("{field}.burst"),
                0,
                "must be at least 1",
            ));
        }
        let emission = (cfg.per_secs * 1_000_000_000 / cfg.requests).max(1);
        Ok(RateLimit {
            emission,
            tolerance: emission.saturating_mul(burst - 1),
            limit: cfg.requests,
            per_secs: cfg.per_secs,
        })
    }

    /// Checks and, when allowed, consumes one request. `now` is nanoseconds on a
    /// monotonic clock; `tat` the customer's theoretical arrival time.
    pub(crate) fn check(&self, tat: &AtomicU64, now: u64) -> RateLimitInfo {
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let base = cur.max(now);
            if base - now > self.tolerance {
                let wait = base - now - self.tolerance;
                return RateLimitInfo {
                    limit: self.limit,
                    remaining: 0,
                    reset_secs: (base - now).div_ceil(1_000_000_000),
                    retry_after_secs: Some(wait.div_ceil(1_000_000_000).max(1)),
                };
            }
            let next = base + self.emission;
            match tat.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let used = next - now;
                    let room = (self.tolerance + self.emission).saturating_sub(used);
                    return RateLimitInfo {
                        limit: self.limit,
                        remaining: room / self.emission,
                        reset_secs: used.div_ceil(1_000_000_000),
                        retry_after_secs: None,
                    };
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// The rate limit's GCRA on its own, for `benches/benches/peers.rs` (compared with
/// `governor`). Not part of the API.
#[doc(hidden)]
#[derive(Debug)]
pub struct BenchGcra {
    limit: RateLimit,
    tat: AtomicU64,
}

#[doc(hidden)]
impl BenchGcra {
    /// `requests` per `per_secs`, bursts of `burst`; `None` when the figures are invalid.
    pub fn new(requests: u64, per_secs: u64, burst: u64) -> Option<BenchGcra> {
        let cfg = RateLimitConfig {
            requests,
            per_secs,
            burst: Some(burst),
        };
        Some(BenchGcra {
            limit: RateLimit::compile(&cfg, "bench").ok()?,
            tat: AtomicU64::new(0),
        })
    }

    /// One check at `now` (nanoseconds): the requests left, `None` when refused.
    #[inline]
    pub fn check(&self, now: u64) -> Option<u64> {
        let info = self.limit.check(&self.tat, now);
        info.retry_after_secs.is_none().then_some(info.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_recover() {
        let rl = RateLimit::compile(
            &RateLimitConfig {
                requests: 10,
                per_secs: 1,
                burst: Some(3),
            },
            "r",
        )
        .unwrap();
        let tat = AtomicU64::new(0);
        let t0 = 1_000_000_000_000;
        let a = rl.check(&tat, t0);
        assert_eq!(a.retry_after_secs, None);
        assert_eq!(a.remaining, 2);
        assert_eq!(rl.check(&tat, t0).remaining, 1);
        assert_eq!(rl.check(&tat, t0).remaining, 0);
        let refused = rl.check(&tat, t0);
        assert_eq!(refused.retry_after_secs, Some(1));
        // 100 ms later one request is allowed again
        assert_eq!(rl.check(&tat, t0 + 100_000_000).retry_after_secs, None);
        assert!(rl.check(&tat, t0 + 100_000_000).retry_after_secs.is_some());
    }

    #[test]
    fn bad_config() {
        let e = RateLimit::compile(&RateLimitConfig::new(0, 1), "plans[0].rate_limit").unwrap_err();
        assert_eq!(e.field, "plans[0].rate_limit.requests");
    }
}
