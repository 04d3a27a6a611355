//! The per-device request rate limit of the shadow service (docs/DESIGN.md §10).

use std::collections::HashMap;
use std::time::Instant;

/// Per-device token bucket: `rate_per_sec` sustained, `burst` at once (docs/DESIGN.md §10).
pub(super) struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

/// Above this many tracked devices, idle buckets (full again) are forgotten, so requests
/// for random device ids cannot grow memory without bound.
const RATE_BUCKETS_PRUNE_AT: usize = 20_000;

impl RateLimiter {
    pub(super) fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst),
            buckets: HashMap::new(),
        }
    }

    /// New limits from a reload; buckets keep their tokens, capped at the new burst.
    pub(super) fn set_limits(&mut self, rate_per_sec: u32, burst: u32) {
        self.rate_per_sec = f64::from(rate_per_sec);
        self.burst = f64::from(burst);
        for (tokens, _) in self.buckets.values_mut() {
            *tokens = tokens.min(self.burst);
        }
    }

    pub(super) fn allow(&mut self, device_id: &str, now: Instant) -> bool {
        if self.buckets.len() >= RATE_BUCKETS_PRUNE_AT {
            let (rate, burst) = (self.rate_per_sec, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self
            .buckets
            .entry(device_id.to_string())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate_per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
