//! What the uplink is doing, shared with the HTTP endpoints (`/health/uplink`).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::outbox::OutboxStats;

/// How the gateway learns about cloud changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkMode {
    /// A change stream on `shadows` (replica set or sharded cluster).
    ChangeStream,
    /// Polling `shadows` by `updatedAt` (standalone server, or `change_streams = "off"`).
    Polling,
    /// No uplink configured, or not connected yet.
    Offline,
}

impl UplinkMode {
    pub const ALL: [UplinkMode; 3] = [Self::ChangeStream, Self::Polling, Self::Offline];

    /// The name used in JSON and in the `uplink_mode` metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChangeStream => "change_stream",
            Self::Polling => "polling",
            Self::Offline => "offline",
        }
    }
}

/// The body of `/health/uplink`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkReport {
    pub mode: UplinkMode,
    pub connected: bool,
    /// RFC 3339 time of the last change seen from the cloud.
    pub last_event_at: Option<String>,
    /// The outbox: what waits for MongoDB, and what was dropped.
    pub outbox: OutboxStats,
    /// This gateway's role in its active/standby pair (`[mongodb] lease`), if in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<&'static str>,
    /// The last attempt to reach MongoDB failed (not merely "not connected yet"): claims
    /// do not wait for it then.
    #[serde(skip)]
    pub unreachable: bool,
}

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
