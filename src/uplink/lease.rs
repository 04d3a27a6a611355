//! The active/standby pair (issue 12): two gateways at one site share a lease document in
//! `leases` (`{_id: <[mongodb] lease>, holder, epoch, expiresAt}`); the holder is active.
//!
//! - Both gateways run this task, every quarter of `lease_ttl_ms`. The holder renews
//!   (`{_id, holder: me, epoch}` → `expiresAt = now + ttl/2`); the other one takes the
//!   lease once it has expired (`expiresAt < now` → `holder: me`, `epoch + 1`). So the
//!   standby becomes active at most ¾ of the TTL after the active's last renewal.
//! - **Takeover**: the new holder first stamps every shadow MongoDB names for the previous
//!   holder with one `updateMany` → `{gatewayId: me, lease: {name, epoch}}`, then imports
//!   them (one cursor) exactly like devices that moved (`handover`): each pending delta is
//!   published retained, so a device that reconnects here gets it before it asks.
//! - **Fencing by epoch** ([`Fence`]): every shadow and presence write and every claim of a
//!   gateway in a pair stamps `lease: {name, epoch}` and is conditional on the document
//!   carrying no newer epoch of the same lease. Once the takeover has stamped epoch E+1, a
//!   stalled old holder (epoch E) can neither write those shadows nor claim one back (a
//!   device still connected to it would otherwise make it take the device again).
//! - **Standby** ([`LeaseRole::Standby`]): a gateway that knows another one holds the lease
//!   serves no MQTT client: CONNECT is answered "server unavailable" (3), so devices that
//!   list both addresses go to the active one; an active that finds it lost the lease steps
//!   down the same way and disconnects its clients (`broker::hook`). A standby that cannot
//!   reach MongoDB for a whole TTL no longer knows who is active and takes clients again
//!   (offline operation, as a gateway without a pair), and so does a gateway that has not
//!   reached MongoDB yet.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::DateTime;
use mongodb::bson::{doc, Document as BsonDocument};
use mongodb::options::ReturnDocument;
use mongodb::Database;
use tokio::sync::watch;

use super::mongo::{LEASES, SHADOWS};
use super::FromCloud;
pub use crate::lease::{LeaseRole, LeaseState};
use crate::status::UplinkStatus;

/// The epoch condition and stamp of a pair member's writes; inert without a lease.
#[derive(Debug, Clone, Default)]
pub struct Fence(Option<(String, watch::Receiver<LeaseState>)>);

impl Fence {
    pub fn new(name: &str, state: watch::Receiver<LeaseState>) -> Self {
        Self(Some((name.to_string(), state)))
    }

    fn current(&self) -> Option<(&str, i64)> {
        let (name, state) = self.0.as_ref()?;
        Some((name.as_str(), state.borrow().epoch))
    }

    /// Until this gateway knows its epoch (a pair member's first lease round): a restarted
    /// active still at epoch 0 would find its own shadows, stamped with its previous
    /// epoch, fenced, and drop its queued writes of them. At once without a pair.
    pub async fn decided(&self) {
        let Some((name, state)) = &self.0 else {
            return;
        };
        let mut state = state.clone();
        if !is_decided(&state.borrow()) {
            tracing::info!(lease = %name, "waiting for the lease before writing shadows");
        }
        // Only a gone lease task ends the wait otherwise (shutdown).
        let _ = state.wait_for(is_decided).await;
    }

    /// Adds to a write's filter: the document carries no newer epoch of this lease.
    pub fn guard(&self, filter: &mut BsonDocument) {
        if let Some((name, epoch)) = self.current() {
            filter.insert(
                "$and",
                vec![
                    doc! {"$or": [{"lease.name": {"$ne": name}}, {"lease.epoch": {"$lte": epoch}}]},
                ],
            );
        }
    }

    /// Adds to a write's `$set`: this lease and epoch.
    pub fn stamp(&self, set: &mut BsonDocument) {
        if let Some((name, epoch)) = self.current() {
            set.insert("lease", doc! {"name": name, "epoch": epoch});
        }
    }

    /// Whether `found` carries a newer epoch of this lease than this gateway holds.
    pub fn shuts_out(&self, found: &BsonDocument) -> bool {
        let Some((name, epoch)) = self.current() else {
            return false;
        };
        found.get_document("lease").is_ok_and(|lease| {
            lease.get_str("name") == Ok(name) && lease.get_i64("epoch").is_ok_and(|e| e > epoch)
        })
    }
}

fn is_decided(state: &LeaseState) -> bool {
    state.role != LeaseRole::Undecided || state.epoch > 0
}

/// One gateway's side of the lease.
pub struct Lease {
    pub db: Database,
    pub gateway_id: String,
    pub name: String,
    pub ttl: Duration,
    pub to_service: flume::Sender<FromCloud>,
    pub state: watch::Sender<LeaseState>,
    /// Shows the role in `/health/uplink`.
    pub status: UplinkStatus,
}

impl Lease {
    /// Renews or takes the lease every `ttl / 4`, for ever; MongoDB errors are logged and
    /// retried at the next round.
    pub async fn run(self) {
        self.set_role(LeaseRole::Undecided, None);
        let mut held: Option<i64> = None;
        let mut last_answer: Option<Instant> = None;
        loop {
            match self.round(held).await {
                Ok(now_held) => {
                    held = now_held;
                    last_answer = Some(Instant::now());
                    if held.is_none() {
                        self.set_role(LeaseRole::Standby, None);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease round failed");
                    let lost_touch = last_answer.is_none_or(|at| at.elapsed() >= self.ttl);
                    if held.is_none() && lost_touch {
                        self.set_role(LeaseRole::Undecided, None);
                    }
                }
            }
            tokio::time::sleep(self.ttl / 4).await;
        }
    }

    fn set_role(&self, role: LeaseRole, epoch: Option<i64>) {
        self.status.update(|r| r.lease = Some(role));
        self.state.send_if_modified(|state| {
            let before = *state;
            state.role = role;
            state.epoch = epoch.map_or(state.epoch, |e| e.max(state.epoch));
            if state.role != before.role {
                tracing::warn!(lease = %self.name, role = role.as_str(), epoch = state.epoch, "lease role changed");
            }
            *state != before
        });
    }

    /// One round; returns the epoch held afterwards, if any.
    async fn round(&self, held: Option<i64>) -> Result<Option<i64>, mongodb::error::Error> {
        let leases = self.db.collection::<BsonDocument>(LEASES);
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
            tracing::warn!(lease = %self.name, epoch, "lost the lease: stepping down (the new holder has the devices)");
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
        // Before the takeover: the imported devices' writes carry the new epoch.
        self.set_role(LeaseRole::Active, Some(epoch));
        if previous_holder != self.gateway_id {
            if let Err(e) = self.take_devices_of(previous_holder, epoch).await {
                // Stamped devices not imported yet are claimed when they connect or change.
                tracing::warn!(lease = %self.name, error = %e, "the takeover of the previous holder's devices was interrupted");
            }
        }
        Ok(Some(epoch))
    }

    /// The first holder creates the lease; a duplicate key means someone else holds it.
    async fn create(&self, expires: DateTime) -> Result<Option<i64>, mongodb::error::Error> {
        let lease = doc! {"_id": &self.name, "holder": &self.gateway_id, "epoch": 1_i64, "expiresAt": expires};
        match self
            .db
            .collection::<BsonDocument>(LEASES)
            .insert_one(lease)
            .await
        {
            Ok(_) => {
                tracing::warn!(lease = %self.name, "created the lease: this gateway is active");
                self.set_role(LeaseRole::Active, Some(1));
                Ok(Some(1))
            }
            Err(e) if super::writer::is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stamps every device MongoDB names for `previous_holder` as this gateway's at
    /// `epoch` (one `updateMany`: from then on the old holder's writes of them are
    /// refused), then hands each to the shadow service to import.
    async fn take_devices_of(
        &self,
        previous_holder: &str,
        epoch: i64,
    ) -> Result<(), mongodb::error::Error> {
        let shadows = self.db.collection::<BsonDocument>(SHADOWS);
        let taken = shadows
            .update_many(
                doc! {"gatewayId": previous_holder},
                doc! {"$set": {
                    "gatewayId": &self.gateway_id,
                    "lease": {"name": &self.name, "epoch": epoch},
                }},
            )
            .await?;
        tracing::warn!(
            devices = taken.modified_count,
            previous_holder,
            "took over the previous holder's devices"
        );
        let mut cursor = shadows
            .find(doc! {"gatewayId": &self.gateway_id, "lease.name": &self.name, "lease.epoch": epoch})
            .await?;
        while let Some(found) = cursor.next().await {
            let found = found?;
            let Ok(device_id) = found.get_str("_id").map(str::to_string) else {
                continue;
            };
            let shadow = super::handover::shadow_of(found).map(Box::new);
            let _ = self
                .to_service
                .send(FromCloud::Claimed { device_id, shadow });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_shuts_out_only_a_newer_epoch_of_its_own_lease() {
        let (state, receiver) = watch::channel(LeaseState {
            role: LeaseRole::Active,
            epoch: 3,
        });
        let fence = Fence::new("site-1", receiver);
        let stamped = |name: &str, epoch: i64| doc! {"lease": {"name": name, "epoch": epoch}};
        assert!(fence.shuts_out(&stamped("site-1", 4)));
        assert!(!fence.shuts_out(&stamped("site-1", 3)));
        assert!(
            !fence.shuts_out(&stamped("site-2", 9)),
            "another pair's epochs do not compare"
        );
        assert!(!fence.shuts_out(&doc! {"_id": "h1"}));
        assert!(
            !Fence::default().shuts_out(&stamped("site-1", 4)),
            "no pair, no fence"
        );
        state.send_modify(|s| s.epoch = 4);
        assert!(
            !fence.shuts_out(&stamped("site-1", 4)),
            "the fence follows the lease"
        );

        let mut set = doc! {};
        fence.stamp(&mut set);
        assert_eq!(set, stamped("site-1", 4));
        let mut filter = doc! {"_id": "h1"};
        fence.guard(&mut filter);
        assert!(filter.contains_key("$and"));
        let mut unfenced = doc! {"_id": "h1"};
        Fence::default().guard(&mut unfenced);
        assert_eq!(unfenced, doc! {"_id": "h1"});
    }

    /// Against the MongoDB test double (or the server of `MONGODB_URI`): the guard's query
    /// means in MongoDB what `shuts_out` means here, and a claim is refused the same way.
    #[tokio::test(flavor = "multi_thread")]
    async fn mongodb_refuses_writes_and_claims_stamped_by_a_newer_holder() {
        let (uri, _double) = match std::env::var("MONGODB_URI") {
            Ok(uri) if !uri.is_empty() => (uri, None),
            _ => {
                let double = mongo_double::Server::start(mongo_double::Options::default())
                    .await
                    .expect("start mongo-double");
                (double.uri(), Some(double))
            }
        };
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let db = client.database(&format!("iotsphere_fence_{}", std::process::id()));
        let shadows = db.collection::<BsonDocument>(SHADOWS);
        shadows
            .insert_many([
                doc! {"_id": "newer", "gatewayId": "gw-b", "version": 2_i64, "lease": {"name": "site-1", "epoch": 2_i64}},
                doc! {"_id": "same", "gatewayId": "gw-a", "version": 2_i64, "lease": {"name": "site-1", "epoch": 1_i64}},
                doc! {"_id": "other-pair", "gatewayId": "gw-x", "version": 2_i64, "lease": {"name": "site-2", "epoch": 9_i64}},
                doc! {"_id": "unstamped", "gatewayId": "gw-c", "version": 2_i64},
            ])
            .await
            .expect("seed");
        let (state, receiver) = watch::channel(LeaseState {
            role: LeaseRole::Active,
            epoch: 1,
        });
        let fence = Fence::new("site-1", receiver);
        for (device_id, writable) in [
            ("newer", false),
            ("same", true),
            ("other-pair", true),
            ("unstamped", true),
        ] {
            let mut filter = doc! {"_id": device_id};
            fence.guard(&mut filter);
            let matched = shadows.count_documents(filter).await.expect("count");
            assert_eq!(matched == 1, writable, "{device_id}");
            let found = shadows
                .find_one(doc! {"_id": device_id})
                .await
                .expect("find")
                .expect("seeded");
            assert_eq!(fence.shuts_out(&found), !writable, "{device_id}");
        }

        let refused = super::super::handover::claim(&db, "gw-a", &fence, "newer").await;
        assert!(matches!(
            refused,
            Err(super::super::handover::ClaimError::ShutOut)
        ));
        // The same gateway holding a newer epoch later (it took the lease back) may.
        state.send_modify(|s| s.epoch = 3);
        super::super::handover::claim(&db, "gw-a", &fence, "newer")
            .await
            .expect("claimed");
        let claimed = shadows
            .find_one(doc! {"_id": "newer"})
            .await
            .expect("find")
            .expect("seeded");
        assert_eq!(claimed.get_str("gatewayId"), Ok("gw-a"));
        assert_eq!(
            claimed.get_document("lease").ok(),
            Some(&doc! {"name": "site-1", "epoch": 3_i64})
        );
        db.drop().await.expect("drop the test database");
    }
}
