//! Ingest in the broker: telemetry readings and command answers from devices go into the
//! outbox from inside rumqttd's router, as a [`Tap`] of our publish hook (`broker::hook`,
//! on vendor/rumqttd's `PublishHook`), *before* the router acknowledges them.
//!
//! Why in the router and not through the gateway's link: rumqttd sends PUBACK as soon as
//! it reads a QoS 1 PUBLISH, before any subscriber has the message. The hook appends each
//! reading to the outbox (a sled insert, microseconds) and, once per router iteration
//! before acknowledgements go out, the hook flushes sled (fsync) if a QoS 1 item was added
//! (one flush for every tap). So a
//! PUBACK means the reading is on disk: a kill -9 or a power cut loses nothing acknowledged
//! (QoS 0 readings are not acknowledged; they reach the disk with the next flush). The cost
//! is one fsync per router iteration with QoS 1 data, paid by the router thread (measured
//! in bench/RESULTS.md). It also means nothing is lost between the broker and the gateway
//! when the link lags (the link only carries shadow requests, which are all answered).
//!
//! Presence: the same hook hears connects and disconnects of devices (the hook decides
//! who is one), in router order, and queues `connected`/`lastSeen` for the device's shadow
//! in MongoDB.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::broker::tap::{Seen, Tap};
use crate::codec;
use crate::outbox::{CommandResult, Outbox, TelemetryRecord, ToCloud};
use crate::topics::Route;

/// Readings, command answers and presence, into the outbox.
pub struct Ingest {
    outbox: Outbox,
    /// A QoS 1 item was added since the outbox was last woken.
    unwoken: AtomicBool,
}

impl Ingest {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            outbox,
            unwoken: AtomicBool::new(false),
        }
    }

    /// The cloud write a device publication carries, if any; malformed ones are logged.
    fn to_cloud(route: Option<&Route<'_>>, payload: &[u8]) -> Option<ToCloud> {
        match route {
            Some(&Route::Telemetry { device_id, kind }) => {
                match crate::telemetry::decode(payload) {
                    Ok(reading) => Some(ToCloud::Telemetry(TelemetryRecord {
                        // Namespaced by device (docs/DESIGN.md §11): devices number their messages
                        // independently, so the same messageId from two heaters is two readings.
                        id: format!(
                            "{device_id}:{}",
                            reading
                                .message_id
                                .clone()
                                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
                        ),
                        device_id: device_id.to_string(),
                        kind: kind.to_string(),
                        reading,
                        received_ms: epoch_millis(),
                    })),
                    Err(e) => {
                        tracing::warn!(device_id, kind, error = %e, "dropped a malformed telemetry reading");
                        None
                    }
                }
            }
            Some(&Route::CommandResponse { device_id }) => {
                let answer = command_result(device_id, payload);
                if answer.is_none() {
                    tracing::warn!(
                        device_id,
                        "dropped a command response without commandId (string) and ok (bool)"
                    );
                }
                answer.map(ToCloud::CommandResult)
            }
            _ => None,
        }
    }
}

impl Tap for Ingest {
    /// Stores what a publication carries for the cloud.
    fn on_publish(&self, seen: &Seen<'_>) -> bool {
        let Some(write) = Self::to_cloud(seen.route.as_ref(), seen.payload) else {
            return false;
        };
        match self.outbox.push(write) {
            Ok(_) if seen.qos > 0 => {
                self.unwoken.store(true, Ordering::Relaxed);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(error = %e, "could not store a reading in the outbox");
                false
            }
        }
    }

    /// Presence: the hook calls this for devices only.
    fn on_connection(&self, client_id: &str, connected: bool) {
        if !crate::topics::is_valid_id(client_id) {
            return;
        }
        let presence = ToCloud::Presence {
            device_id: client_id.to_string(),
            connected,
            at_ms: epoch_millis(),
        };
        if let Err(e) = self.outbox.push(presence) {
            tracing::error!(error = %e, "could not store a presence change in the outbox");
        }
        self.outbox.wake();
    }

    /// The readings acknowledged now are on disk: the uplink may send them.
    fn before_acks(&self) {
        if self.unwoken.swap(false, Ordering::Relaxed) {
            self.outbox.wake();
        }
    }
}

/// `{"commandId", "ok", "result"}` (bare or enveloped) from a device.
fn command_result(device_id: &str, payload: &[u8]) -> Option<CommandResult> {
    let (_, value) = codec::decode_value(payload).ok()?;
    let body = match value.get("payload") {
        Some(inner) if value.get("commandId").is_none() => inner,
        _ => &value,
    };
    Some(CommandResult {
        device_id: device_id.to_string(),
        command_id: body.get("commandId")?.as_str()?.to_string(),
        ok: body.get("ok")?.as_bool()?,
        result: body
            .get("result")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    })
}

fn epoch_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
