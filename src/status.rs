//! The live status handles of the uplink and the bridge: each feature fills its own, and
//! `/health`, `/metrics`, `system/status` and the status page read them, so none of those
//! readers imports the feature that fills it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::outbox::{Outbox, ToBridge};
use crate::reports::OutboxStats;
pub use crate::reports::{BridgeReport, UplinkMode, UplinkReport};

/// The uplink's report, filled by the uplink; shared, cheap to clone.
#[derive(Debug, Clone)]
pub struct UplinkStatus(Arc<Mutex<UplinkReport>>);

impl Default for UplinkStatus {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(UplinkReport {
            mode: UplinkMode::Offline,
            connected: false,
            last_event_at: None,
            outbox: OutboxStats::default(),
            lease: None,
            unreachable: false,
        })))
    }
}

impl UplinkStatus {
    pub fn report(&self) -> UplinkReport {
        self.update(|r| r.clone())
    }

    /// Changes the report under the lock; a poisoned lock still holds a usable report.
    pub fn update<T>(&self, change: impl FnOnce(&mut UplinkReport) -> T) -> T {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut guard)
    }
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    reconnects: AtomicU64,
    forwarded: AtomicU64,
    received: AtomicU64,
}

/// Handle to the bridge's state, filled by the bridge; cheap to clone.
#[derive(Clone)]
pub struct BridgeStatus {
    counters: Arc<Counters>,
    outbox: Outbox<ToBridge>,
}

impl BridgeStatus {
    pub fn new(outbox: Outbox<ToBridge>) -> Self {
        Self {
            counters: Arc::default(),
            outbox,
        }
    }

    /// Sets the state; returns the previous one.
    pub fn set_connected(&self, connected: bool) -> bool {
        let was = self.counters.connected.swap(connected, Ordering::Relaxed);
        if was && !connected {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        was
    }

    pub fn forwarded(&self) {
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn received(&self) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> BridgeReport {
        let stats = self.outbox.stats();
        BridgeReport {
            connected: self.counters.connected.load(Ordering::Relaxed),
            reconnects: self.counters.reconnects.load(Ordering::Relaxed),
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
            queued: stats.items,
            dropped: stats.dropped_full + stats.dropped_expired,
        }
    }
}
