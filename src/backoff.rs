//! Retry delays: capped exponential backoff with jitter, for the MongoDB uplink and the
//! upstream bridge. rumqttc retries as fast as it is polled after an error, and a fleet of
//! gateways whose uplink returns at once must not hammer MongoDB or the cloud broker in
//! step.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// After a successful connection: start from `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt: between half and all of the current step (so
    /// never below half of `min`), and the step doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random_u64() % spread)
    }
}

/// A random number from the standard library's per-instance hasher keys (no RNG crate for
/// jitter alone).
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut backoff = Backoff::new(min, max);
        let steps: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        for (delay, step) in steps
            .iter()
            .zip([100, 200, 400, 800, 1000, 1000, 1000, 1000])
        {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} for {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
