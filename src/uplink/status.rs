//! What the uplink is doing, shared with the HTTP endpoints (`/health/uplink`).

use std::sync::{Arc, Mutex};

use crate::reports::OutboxStats;
pub use crate::reports::{UplinkMode, UplinkReport};

/// Shared, cheap to clone.
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
