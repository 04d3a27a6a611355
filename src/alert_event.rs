//! What an alert is once judged: its severity, whether it fired or cleared, and the event
//! the gateway publishes, stores and sends to owners. Plain data shared by the alert
//! engine, the users' preferences, the configuration and the messages (serde only, no I/O).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

/// How bad an alert is; users choose which severities reach them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Cleared,
}

/// An alert fired or cleared.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEvent {
    /// Same for the firing and the clearing of one alert: `rule:device:firedAtMs`.
    pub alert_id: String,
    pub rule: String,
    pub device_id: String,
    pub severity: Severity,
    pub state: AlertState,
    /// The value that fired or cleared it (`null` for offline).
    pub value: Value,
    pub at_ms: i64,
}

/// How many alerts are open now (for `devices/batch/status`).
#[derive(Clone, Default)]
pub struct OpenAlerts(Arc<AtomicUsize>);

impl OpenAlerts {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// The alert task's count, after each round of events.
    pub fn set(&self, open: usize) {
        self.0.store(open, Ordering::Relaxed);
    }
}

/// Told by the shadow service when another gateway claimed a device, so that the device's
/// open alerts end here (the alert feed implements it; the service names no alert type).
pub trait ReleaseListener: Send {
    fn released(&self, device_id: &str);
}
