//! Device handover between gateways sharing one MongoDB (issue 12).
//!
//! `shadows.gatewayId` names the one gateway that serves a device. A gateway serves only
//! devices in its local store, and a device enters a local store in exactly one way once
//! the uplink is on: by being **claimed**.
//!
//! 1. The first request (or cloud change) of a device the local store does not hold is
//!    *parked* by the shadow service, with everything after it for that device, and the
//!    device id goes to the claim task here. The link loop never waits for MongoDB. (A
//!    cloud change of such a device comes after a lease takeover, or when the store was
//!    lost; the lease task claims devices itself, see `lease`.)
//! 2. The claim task reads the shadow by `_id` and takes it with a conditional update on
//!    what it read: `{_id, version: v, state.desired: d}` → `$set {gatewayId: me,
//!    connected: true, lastSeen}`. A write in between (the old gateway's last report sets
//!    `version`; a cloud change sets `state.desired` only) makes it match nothing; it
//!    then reads again (up to [`CLAIM_ATTEMPTS`] times). The claim does not change
//!    `version` or `desired`, so it is no cloud change for anyone's watcher.
//! 3. The claimed document comes back to the service as [`FromCloud::Claimed`]: it is
//!    imported as the local shadow (the version continues, the pending delta is kept and
//!    published retained on this broker, MongoDB's `desired` becomes the merge base), then
//!    what was parked is handled in order. No shadow in MongoDB → a fresh one.
//! 4. The old owner's watcher matches, besides its own documents, updates whose
//!    `updatedFields.gatewayId` names another gateway (handovers are rare, so this adds
//!    little traffic), and turns them into [`FromCloud::Released`]: the device leaves its
//!    local store and its retained delta is cleared, so it publishes nothing more for it.
//!    A gateway that was not watching when its device was claimed (down, polling, history
//!    lost) releases it at its next resync, or when MongoDB refuses its next write of it.
//!
//! Fencing: every shadow and presence write of a gateway is conditional on `gatewayId`
//! being its own (or unset), so a write still queued at the old owner when the device
//! moved is refused (logged), never undoing the claim. A delta is therefore delivered by
//! one broker at a time: the old one clears its retained copy, the new one publishes it
//! from the claimed document, and later cloud changes match only the new owner's stream.
//! In an active/standby pair writes and claims are also fenced by the lease epoch
//! (`lease::Fence`): a stalled former holder cannot claim a device back either.
//!
//! MongoDB unreachable: a claim gives up after [`CLAIM_TIMEOUT`] and the device is served
//! from a fresh local shadow (the gateway works offline); once the uplink found MongoDB
//! unreachable, claims are not even tried until it is back; if MongoDB holds the device for
//! another gateway, this gateway's writes are then refused until the device is claimed
//! again (its next request after a restart, or after a release).

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document as BsonDocument};
use mongodb::Database;
use serde_json::Value;

use super::lease::Fence;
use super::mongo::SHADOWS;
use super::FromCloud;
use crate::shadow::{Document, Sections};
use crate::status::UplinkStatus;

/// How long a device's first requests may wait for its claim.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);
/// Reads + conditional updates before a claim gives up (each lost race costs one).
pub const CLAIM_ATTEMPTS: usize = 5;

/// The claim task: what it needs to claim devices and answer the shadow service.
pub struct Claims {
    pub db: Database,
    pub gateway_id: String,
    pub fence: Fence,
    /// While MongoDB is known to be unreachable, a claim is not even tried.
    pub status: UplinkStatus,
    pub to_service: flume::Sender<FromCloud>,
}

impl Claims {
    /// Claims every device id received, each in a task of its own, and answers the shadow
    /// service with [`FromCloud::Claimed`] (always, even when the claim failed).
    pub async fn run(self, claims: flume::Receiver<String>) {
        while let Ok(device_id) = claims.recv_async().await {
            if self.status.update(|r| r.unreachable) {
                // It would only time out: serve the device now (see the module doc).
                tracing::debug!(device_id, "MongoDB is unreachable: serving the device from a fresh local shadow without a claim");
                let _ = self.to_service.send(FromCloud::Claimed {
                    device_id,
                    shadow: None,
                });
                continue;
            }
            let (db, gateway_id, to_service) = (
                self.db.clone(),
                self.gateway_id.clone(),
                self.to_service.clone(),
            );
            let fence = self.fence.clone();
            tokio::spawn(async move {
                let claimed = tokio::time::timeout(CLAIM_TIMEOUT, async {
                    fence.decided().await;
                    claim(&db, &gateway_id, &fence, &device_id).await
                });
                let shadow = match claimed.await {
                    Ok(Ok(shadow)) => shadow,
                    Ok(Err(ClaimError::ShutOut)) => {
                        tracing::warn!(device_id, "the device belongs to a newer holder of this gateway's lease: not serving it here");
                        let _ = to_service.send(FromCloud::ShutOut { device_id });
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(device_id, error = %e, "could not claim the device in MongoDB; serving it from a fresh local shadow");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(device_id, timeout = ?CLAIM_TIMEOUT, "MongoDB did not answer the claim in time; serving the device from a fresh local shadow");
                        None
                    }
                };
                // The service is gone only at shutdown.
                let shadow = shadow.map(Box::new);
                let _ = to_service.send(FromCloud::Claimed { device_id, shadow });
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("the shadow kept changing; gave up after {CLAIM_ATTEMPTS} attempts")]
    Contended,
    #[error("a newer holder of this gateway's lease owns the device")]
    ShutOut,
}

/// Takes `device_id` (connected: it sent a request) for `gateway_id`, unless a newer
/// holder of its lease has it; returns MongoDB's shadow to import, if it has one.
pub(super) async fn claim(
    db: &Database,
    gateway_id: &str,
    fence: &Fence,
    device_id: &str,
) -> Result<Option<Document>, ClaimError> {
    let shadows = db.collection::<BsonDocument>(SHADOWS);
    for _ in 0..CLAIM_ATTEMPTS {
        let Some(found) = shadows.find_one(doc! {"_id": device_id}).await? else {
            return Ok(None);
        };
        if fence.shuts_out(&found) {
            return Err(ClaimError::ShutOut);
        }
        let version = found.get("version").cloned().unwrap_or(Bson::Null);
        let desired = found
            .get_document("state")
            .ok()
            .and_then(|s| s.get("desired"))
            .cloned()
            .unwrap_or(Bson::Null);
        let mut set =
            doc! {"gatewayId": gateway_id, "connected": true, "lastSeen": DateTime::now()};
        fence.stamp(&mut set);
        let mut filter = doc! {"_id": device_id, "version": version, "state.desired": desired};
        fence.guard(&mut filter);
        let claimed = shadows.update_one(filter, doc! {"$set": set}).await?;
        if claimed.matched_count == 1 {
            let previous = found.get_str("gatewayId").unwrap_or("none").to_string();
            let shadow = shadow_of(found);
            tracing::info!(
                device_id,
                previous_gateway = %previous,
                version = shadow.as_ref().map_or(0, |s| s.version),
                "claimed the device in MongoDB"
            );
            return Ok(shadow);
        }
    }
    Err(ClaimError::Contended)
}

/// A `shadows` document as a local shadow; None without `state` (a presence-only
/// document of a device that never reported).
pub(super) fn shadow_of(found: BsonDocument) -> Option<Document> {
    let updated_ms = found.get_datetime("updatedAt").map_or_else(
        |_| DateTime::now().timestamp_millis(),
        |d| d.timestamp_millis(),
    );
    let Value::Object(mut json) = Bson::Document(found).into_relaxed_extjson() else {
        return None;
    };
    let state = serde_json::from_value::<Sections>(json.remove("state")?).ok()?;
    let metadata = json
        .remove("metadata")
        .and_then(|m| serde_json::from_value::<Sections>(m).ok())
        .unwrap_or_default();
    // A shadow a cloud service created has no version yet; locally a shadow with state
    // has at least version 1 (0 means none).
    let version = json
        .get("version")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .max(1);
    Some(Document {
        state,
        metadata,
        version,
        timestamp: u64::try_from(updated_ms / 1000).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_mongodb_shadow_becomes_a_local_one() {
        let found = doc! {
            "_id": "h1",
            "state": {"reported": {"t": 20}, "desired": {"t": 60}},
            "metadata": {"reported": {"t": {"timestamp": 5_i64}}, "desired": {}},
            "version": 7_i64,
            "updatedAt": DateTime::from_millis(1_764_000_000_000),
            "gatewayId": "gw-a",
        };
        let shadow = shadow_of(found).expect("a shadow");
        assert_eq!(shadow.version, 7);
        assert_eq!(shadow.timestamp, 1_764_000_000);
        assert_eq!(shadow.state.desired.get("t"), Some(&json!(60)));
        assert_eq!(shadow.state.reported.get("t"), Some(&json!(20)));
        assert_eq!(
            shadow.metadata.reported.get("t"),
            Some(&json!({"timestamp": 5}))
        );
        assert_eq!(shadow_of(doc! {"_id": "h2", "connected": true}), None);
        let provisioned = shadow_of(doc! {"_id": "h3", "state": {"desired": {"t": 1}}});
        assert_eq!(provisioned.map(|s| s.version), Some(1));
    }
}
