//! What the uplink, the bridge and the outbox report about themselves: plain data read by
//! the metrics, `/health`, `system/status` and the status page (serde only, no I/O), so
//! none of those readers imports the parts that fill them.

use serde::Serialize;

use crate::lease::LeaseRole;

/// Counts for `/health/uplink` and `outbox stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStats {
    pub items: usize,
    pub shadows: usize,
    pub dead: usize,
    pub bytes: u64,
    pub oldest_age_secs: Option<u64>,
    pub dropped_full: u64,
    pub dropped_expired: u64,
    pub dead_lettered: u64,
}

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
    pub lease: Option<LeaseRole>,
    /// The last attempt to reach MongoDB failed (not merely "not connected yet"): claims
    /// do not wait for it then.
    #[serde(skip)]
    pub unreachable: bool,
}

/// The `bridge` field of `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeReport {
    pub connected: bool,
    /// Connections to the upstream broker lost since start (each followed by a reconnect).
    pub reconnects: u64,
    /// Messages the upstream broker acknowledged (PUBACK).
    pub forwarded: u64,
    /// Messages from the upstream broker published locally.
    pub received: u64,
    /// Messages waiting in the bridge's outbox (sent and not yet acknowledged included).
    pub queued: usize,
    /// Messages dropped from the bridge's outbox (full or older than `outbox.max_age`).
    pub dropped: u64,
}
