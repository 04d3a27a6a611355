//! What the bridge is doing, shared with `/health` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::outbox::Outbox;
pub use crate::reports::BridgeReport;

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    reconnects: AtomicU64,
    forwarded: AtomicU64,
    received: AtomicU64,
}

/// Handle to the bridge's state; cheap to clone.
#[derive(Clone)]
pub struct BridgeStatus {
    counters: Arc<Counters>,
    outbox: Outbox,
}

impl BridgeStatus {
    pub fn new(outbox: Outbox) -> Self {
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
