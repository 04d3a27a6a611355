//! What crosses between the gateway and the cloud, as plain data (serde only, no I/O):
//! the writes bound for MongoDB ([`ToCloud`]) or the upstream broker ([`ToBridge`]), each
//! kept in its own outbox, and what the uplink hands to the shadow service ([`FromCloud`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alert_event::AlertEvent;
use crate::shadow::{Document, Object};
use crate::telemetry::Reading;
use crate::users::Preferences;

/// A write bound for MongoDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToCloud {
    /// The device's whole shadow after a change; `None` when it was deleted. Boxed: a
    /// document is far larger than the other writes.
    Shadow {
        device_id: String,
        document: Option<Box<Document>>,
    },
    Telemetry(TelemetryRecord),
    CommandResult(CommandResult),
    /// A device connected or disconnected: `connected` and `lastSeen` of its shadow.
    Presence {
        device_id: String,
        connected: bool,
        at_ms: i64,
    },
    /// An alert fired or cleared: its document in `alerts`.
    Alert(AlertEvent),
    /// A user's app changed the user's preferences: `preferences` of its `users` document.
    Preferences {
        user_id: String,
        preferences: Preferences,
    },
}

/// A write bound for the upstream MQTT broker (the bridge's outbox). One variant, named
/// as the uplink's enum once named it, so the bridge queues of existing data directories
/// still decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToBridge {
    /// A local publication for the upstream MQTT broker.
    Forward(Forwarded),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The local topic (the bridge adds its prefix when publishing).
    pub topic: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    /// `_id`: the device's message id, or one the gateway gave it on receipt.
    pub id: String,
    pub device_id: String,
    pub kind: String,
    pub reading: Reading,
    pub received_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub device_id: String,
    pub command_id: String,
    pub ok: bool,
    pub result: Value,
}

/// What the uplink hands to the shadow service, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum FromCloud {
    /// A desired change made in the cloud.
    Desired(CloudDesired),
    /// The answer to a claim ([`handover`]): MongoDB's shadow of a device this gateway now
    /// owns, to import before serving its parked requests (None: start a fresh one).
    Claimed {
        device_id: String,
        shadow: Option<Box<Document>>,
    },
    /// Another gateway claimed the device: stop serving it here.
    Released { device_id: String },
    /// A claim this gateway may not make (a newer holder of its lease has the device):
    /// the requests waiting for it are dropped.
    ShutOut { device_id: String },
}

impl From<CloudDesired> for FromCloud {
    fn from(change: CloudDesired) -> Self {
        FromCloud::Desired(change)
    }
}

/// A desired change from the cloud, for the shadow service to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudDesired {
    pub device_id: String,
    /// A partial desired update, or with `replace` the whole desired section.
    pub state: Object,
    pub replace: bool,
    /// `desiredExpiresAt` (epoch seconds): when the desired values it writes expire.
    pub expires_at: Option<u64>,
    /// `updatedAt` (epoch seconds): when the cloud service made the change.
    pub changed_at: Option<u64>,
}
