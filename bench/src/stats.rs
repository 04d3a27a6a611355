//! Latency histograms (HDR, microseconds), the run's clock, and the publish pacer.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Nanoseconds since the first call in this process: the timestamps carried in payloads
/// (publisher and subscriber are the same process, so one monotonic clock serves both).
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid"))
    }
}

impl Latency {
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record((ns / 1000).max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides; `add` fails only on a range mismatch.
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            count: h.len(),
            min_us: if empty { 0 } else { h.min() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0 } else { h.max() },
            mean_us: if empty {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// Spreads `rate` messages per second over time; `None` = as fast as possible.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    pub fn new(start: Instant, rate: Option<f64>) -> Self {
        Self { start, rate }
    }

    /// How many messages should have been sent by `now` (the first is due at `start`).
    pub fn due(&self, now: Instant) -> u64 {
        let Some(rate) = self.rate else {
            return u64::MAX;
        };
        match now.checked_duration_since(self.start) {
            None => 0,
            Some(elapsed) => (elapsed.as_secs_f64() * rate) as u64 + 1,
        }
    }

    /// When message number `sent` (0-based) is due.
    pub fn at(&self, sent: u64) -> Instant {
        match self.rate {
            None => self.start,
            Some(rate) => self.start + Duration::from_secs_f64(sent as f64 / rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_messages() {
        let start = Instant::now();
        let pacer = Pacer::new(start, Some(100.0));
        assert_eq!(pacer.due(start), 1);
        assert_eq!(pacer.due(start + Duration::from_millis(995)), 100);
        assert_eq!(pacer.at(50), start + Duration::from_millis(500));
        let unpaced = Pacer::new(start, None);
        assert_eq!(unpaced.due(start), u64::MAX);
    }

    #[test]
    fn latency_quantiles_in_microseconds() {
        let mut h = Latency::default();
        for ms in 1..=100 {
            h.record_ns(ms * 1_000_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((49_900..=50_100).contains(&s.p50_us), "{s:?}");
        assert!((98_900..=99_100).contains(&s.p99_us), "{s:?}");
        assert_eq!(Latency::default().summary().p99_us, 0);
    }
}
