//! The active/standby pair (issue 12): two gateways at one site share a lease document in
//! `leases` (`{_id: <[mongodb] lease>, holder, epoch, expiresAt}`); the holder is active.
//!
//! - Both gateways run this task, every quarter of `lease_ttl_ms`. The holder renews
//!   (`{_id, holder: me, epoch}` → `expiresAt = now + ttl/2`); the other one takes the
//!   lease once it has expired (`expiresAt < now` → `holder: me`, `epoch + 1`). So the
//!   standby becomes active at most ¾ of the TTL after the active's last renewal.
//! - Taking the lease, the new holder claims every device MongoDB names for the previous
//!   holder, one by one exactly like a device that moved (`handover`): each claimed shadow
//!   is imported and its pending delta published retained, so a device that reconnects
//!   here gets it at once, before it sends anything.
//! - A holder whose renewal matches nothing lost the lease (it was stalled or cut off for
//!   longer than the TTL): it logs that it steps down. Its devices leave it through the
//!   claims above (its change stream releases them, and its writes of a claimed device are
//!   refused on `gatewayId`), so there is no separate stop switch to forget.
//!
//! Fencing is by ownership (`gatewayId`), not yet by lease epoch: between the lease's
//! expiry and the claim of a device, a stalled old holder's write of that device still
//! lands (and is then merged by the claim, which reads the shadow as it is).

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::DateTime;
use mongodb::bson::{doc, Document as BsonDocument};
use mongodb::options::ReturnDocument;
use mongodb::Database;

use super::FromCloud;

/// One gateway's side of the lease.
pub struct Lease {
    pub db: Database,
    pub gateway_id: String,
    pub name: String,
    pub ttl: Duration,
    pub to_service: flume::Sender<FromCloud>,
}

impl Lease {
    /// Renews or takes the lease every `ttl / 4`, for ever; MongoDB errors are logged and
    /// retried at the next round.
    pub async fn run(self) {
        let mut held: Option<i64> = None;
        loop {
            match self.round(held).await {
                Ok(now_held) => held = now_held,
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease round failed"),
            }
            tokio::time::sleep(self.ttl / 4).await;
        }
    }

    /// One round; returns the epoch held afterwards, if any.
    async fn round(&self, held: Option<i64>) -> Result<Option<i64>, mongodb::error::Error> {
        let leases = self.db.collection::<BsonDocument>("leases");
        let now = DateTime::now();
        let expires = DateTime::from_millis(
            now.timestamp_millis() + i64::try_from((self.ttl / 2).as_millis()).unwrap_or(0),
        );
        if let Some(epoch) = held {
            let renewed = leases
                .update_one(
                    doc! {"_id": &self.name, "holder": &self.gateway_id, "epoch": epoch},
                    doc! {"$set": {"expiresAt": expires}},
                )
                .await?;
            if renewed.matched_count == 1 {
                return Ok(Some(epoch));
            }
            tracing::warn!(lease = %self.name, epoch, "lost the lease: stepping down (the new holder claims the devices)");
        }
        let taken = leases
            .find_one_and_update(
                doc! {"_id": &self.name, "$or": [
                    {"expiresAt": {"$lt": now}},
                    {"holder": &self.gateway_id},
                ]},
                doc! {"$set": {"holder": &self.gateway_id, "expiresAt": expires}, "$inc": {"epoch": 1_i64}},
            )
            .return_document(ReturnDocument::Before)
            .await?;
        let Some(previous) = taken else {
            return self.create(expires).await;
        };
        let epoch = previous.get_i64("epoch").unwrap_or(0) + 1;
        let previous_holder = previous.get_str("holder").unwrap_or_default();
        tracing::warn!(lease = %self.name, epoch, previous_holder, "took the lease: this gateway is active");
        if previous_holder != self.gateway_id {
            self.take_devices_of(previous_holder).await?;
        }
        Ok(Some(epoch))
    }

    /// The first holder creates the lease; a duplicate key means someone else holds it.
    async fn create(&self, expires: DateTime) -> Result<Option<i64>, mongodb::error::Error> {
        let lease = doc! {"_id": &self.name, "holder": &self.gateway_id, "epoch": 1_i64, "expiresAt": expires};
        match self
            .db
            .collection::<BsonDocument>("leases")
            .insert_one(lease)
            .await
        {
            Ok(_) => {
                tracing::warn!(lease = %self.name, "created the lease: this gateway is active");
                Ok(Some(1))
            }
            Err(e) if super::writer::is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Claims every device MongoDB names for `previous_holder` and hands each to the
    /// shadow service to import.
    async fn take_devices_of(&self, previous_holder: &str) -> Result<(), mongodb::error::Error> {
        let mut cursor = self
            .db
            .collection::<BsonDocument>("shadows")
            .find(doc! {"gatewayId": previous_holder})
            .projection(doc! {"_id": 1})
            .await?;
        let mut device_ids = Vec::new();
        while let Some(document) = cursor.next().await {
            if let Ok(device_id) = document?.get_str("_id") {
                device_ids.push(device_id.to_string());
            }
        }
        tracing::warn!(
            devices = device_ids.len(),
            previous_holder,
            "taking over the previous holder's devices"
        );
        for device_id in device_ids {
            match super::handover::claim(&self.db, &self.gateway_id, &device_id, false).await {
                Ok(shadow) => {
                    let shadow = shadow.map(Box::new);
                    let _ = self
                        .to_service
                        .send(FromCloud::Claimed { device_id, shadow });
                }
                Err(e) => {
                    tracing::warn!(device_id, error = %e, "could not take over the device");
                }
            }
        }
        Ok(())
    }
}
