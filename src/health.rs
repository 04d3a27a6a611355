//! The gateway's health: whether the store takes writes (a [`StoreProbe`] writes and
//! fsyncs one small key, at most once per [`PROBE_INTERVAL`] however often it is asked),
//! and the summary that `/health`, the retained `system/status` message and the watchdog
//! read ([`HealthState::summary`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lease::LeaseRole;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::reports::{BridgeReport, UplinkMode};
use crate::status::{BridgeStatus, UplinkStatus};
use crate::store::ShadowStore;

/// Least time between two write probes of the store: one small fsync per interval at most,
/// however often `/health` is polled (an SD card wears with every write).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

type ProbeFn = dyn Fn() -> Result<(), String> + Send + Sync;
/// When the store was last probed, and what the probe said.
type LastProbe = Option<(Instant, Result<(), String>)>;

/// Checks that the store takes writes, rate-limited: answers from the last probe while it
/// is younger than the interval.
#[derive(Clone)]
pub struct StoreProbe {
    probe: Arc<ProbeFn>,
    interval: Duration,
    last: Arc<tokio::sync::Mutex<LastProbe>>,
}

impl StoreProbe {
    /// Probes `store` with [`ShadowStore::probe_write`].
    pub fn new(store: ShadowStore) -> Self {
        Self::with(
            move || store.probe_write().map_err(|e| e.to_string()),
            PROBE_INTERVAL,
        )
    }

    fn with(
        probe: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        interval: Duration,
    ) -> Self {
        Self {
            probe: Arc::new(probe),
            interval,
            last: Arc::default(),
        }
    }

    /// `Err(why)` when the store could not be written. Concurrent callers share one probe.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < self.interval {
                return result.clone();
            }
        }
        let probe = self.probe.clone();
        // The probe fsyncs: off the async workers.
        let result = tokio::task::spawn_blocking(move || probe())
            .await
            .unwrap_or_else(|e| Err(format!("the store probe failed: {e}")));
        if let Err(reason) = &result {
            tracing::error!(%reason, "the store cannot be written");
        }
        *last = Some((Instant::now(), result.clone()));
        result
    }

    /// Whether the last probe could write, without probing again; `None` before the first.
    pub async fn last_writable(&self) -> Option<bool> {
        self.last
            .lock()
            .await
            .as_ref()
            .map(|(_, result)| result.is_ok())
    }
}

/// What `/health`, `/metrics`, `system/status` and the watchdog read.
#[derive(Clone)]
pub struct HealthState {
    pub gateway_id: String,
    pub store: ShadowStore,
    pub probe: StoreProbe,
    /// `None` when no uplink is configured.
    pub uplink: Option<(UplinkStatus, Outbox)>,
    /// `None` when no bridge is configured.
    pub bridge: Option<BridgeStatus>,
    pub metrics: Metrics,
    pub started: Instant,
}

/// The gateway's summary: `/health`, and the retained `system/status` message.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
    pub broker: &'static str,
    /// `writable`, or `unwritable` with `reason`.
    pub store: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub uplink: UplinkMode,
    /// `active`, `standby` or `undecided` in an active/standby pair; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseRole>,
    pub shadows: usize,
    pub connected_clients: i64,
    pub outbox_items: usize,
    /// The upstream MQTT bridge; absent when none is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeReport>,
    pub version: &'static str,
    pub uptime_secs: u64,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.reason.is_none()
    }

    pub fn connected_clients(&self) -> i64 {
        self.connected_clients
    }

    pub fn outbox_items(&self) -> usize {
        self.outbox_items
    }

    pub fn uptime_secs(&self) -> u64 {
        self.uptime_secs
    }
}

impl HealthState {
    /// The summary, with the store probed (rate-limited).
    pub async fn summary(&self) -> Health {
        let store = self.probe.check().await;
        let (uplink, lease, outbox_items) = match &self.uplink {
            Some((status, outbox)) => {
                let stats = outbox.stats();
                let report = status.report();
                (report.mode, report.lease, stats.items + stats.shadows)
            }
            None => (UplinkMode::Offline, None, 0),
        };
        Health {
            status: if store.is_ok() { "ok" } else { "unavailable" },
            broker: "up",
            store: if store.is_ok() {
                "writable"
            } else {
                "unwritable"
            },
            reason: store.err().map(|e| format!("store: {e}")),
            uplink,
            lease,
            shadows: self.store.len(),
            connected_clients: self.metrics.connected_clients(),
            outbox_items,
            bridge: self.bridge.as_ref().map(BridgeStatus::report),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A probe that counts its runs and fails while `broken` is set.
    fn counting_probe(interval: Duration) -> (StoreProbe, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let (runs, broken) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, b) = (runs.clone(), broken.clone());
        let probe = StoreProbe::with(
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                if b.load(Ordering::SeqCst) {
                    Err("No space left on device".into())
                } else {
                    Ok(())
                }
            },
            interval,
        );
        (probe, runs, broken)
    }

    #[tokio::test]
    async fn the_probe_runs_at_most_once_per_interval() {
        let (probe, runs, broken) = counting_probe(Duration::from_secs(3600));
        assert_eq!(probe.check().await, Ok(()));
        broken.store(true, Ordering::SeqCst);
        // Within the interval: the last answer, no new write.
        assert_eq!(probe.check().await, Ok(()));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_last_answer_is_read_without_probing() {
        let (probe, runs, broken) = counting_probe(Duration::ZERO);
        assert_eq!(probe.last_writable().await, None, "nothing probed yet");
        broken.store(true, Ordering::SeqCst);
        assert!(probe.check().await.is_err());
        assert_eq!(probe.last_writable().await, Some(false));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "reading the answer wrote nothing"
        );
    }

    #[tokio::test]
    async fn a_failing_probe_is_reported_and_recovery_seen() {
        let (probe, runs, broken) = counting_probe(Duration::ZERO);
        broken.store(true, Ordering::SeqCst);
        assert_eq!(probe.check().await, Err("No space left on device".into()));
        broken.store(false, Ordering::SeqCst);
        assert_eq!(probe.check().await, Ok(()));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_real_store_passes_the_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ShadowStore::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(StoreProbe::new(store.clone()).check().await, Ok(()));
        assert!(store.is_empty(), "the probe must not add a shadow");
    }
}
