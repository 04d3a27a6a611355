//! `ROOT/devices/batch/status`: the building at a glance for apps and dashboards —
//! how many heaters are known, online, offline, waiting for a setpoint (pending delta),
//! and how many alerts are open. Retained, so a dashboard sees it on subscribing;
//! published by the system task when it changes (checked every [`CHECK_INTERVAL`]) and
//! at least every [`REFRESH_INTERVAL`].

use std::collections::BTreeSet;
use std::time::Duration;

pub use crate::messages::BatchStatus;
use crate::store::ShadowStore;

pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Counts over the store (one pass; the documents are small) and the connected clients.
pub fn count(store: &ShadowStore, connected: &[String], open_alerts: usize) -> BatchStatus {
    let connected: BTreeSet<&str> = connected.iter().map(String::as_str).collect();
    let mut status = BatchStatus {
        devices: 0,
        online: 0,
        offline: 0,
        pending_deltas: 0,
        open_alerts,
    };
    for entry in store.iter() {
        let Ok((device_id, stored)) = entry else {
            continue;
        };
        status.devices += 1;
        if connected.contains(device_id.as_str()) {
            status.online += 1;
        } else {
            status.offline += 1;
        }
        if crate::shadow::delta(&stored.document).is_some() {
            status.pending_deltas += 1;
        }
    }
    status
}
