//! The uplink writer: drains the outbox into MongoDB — shadow writes, telemetry, command
//! results — in order, paced, retried with capped backoff while MongoDB is unreachable.
//!
//! Transient failures (network, server selection, server errors) stop the drain and are
//! retried; an item MongoDB refuses for itself (a write error other than a duplicate key,
//! a value BSON cannot hold) is counted against it and becomes a dead letter after
//! `outbox.max_attempts`, so one poison item never blocks the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use mongodb::bson::{self, doc, Bson, DateTime, Document as BsonDocument};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{InsertManyOptions, UpdateOptions};
use mongodb::Database;
use serde_json::Value;

use super::lease::Fence;
use super::mongo::{ALERTS, COMMANDS, DUPLICATE_KEY, SHADOWS, TELEMETRY, USERS};
use super::FromCloud;
use crate::backoff::Backoff;
use crate::outbox::{CommandResult, Outbox, Pending, TelemetryRecord, ToCloud};
use crate::shadow::Document;
use crate::status::UplinkStatus;
use crate::store::{ShadowStore, StoreError};

/// Writes of different devices (shadows, presence) in flight at once: with a distant
/// MongoDB, one at a time would cap them at one per round trip.
const WRITES_IN_FLIGHT: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// An item that waited longer than this in the outbox is replayed (paced), not live.
const REPLAY_AGE: Duration = Duration::from_secs(5);
/// How often the writer looks at the outbox without being woken (retries, expiry).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The versions this gateway wrote last, per device: how the watcher tells its own writes
/// (echoes) from the cloud's.
#[derive(Debug, Clone, Default)]
pub struct OwnWrites(Arc<Mutex<HashMap<String, u64>>>);

impl OwnWrites {
    pub fn record(&self, device_id: &str, version: u64) {
        self.lock().insert(device_id.to_string(), version);
    }

    pub fn is_own(&self, device_id: &str, version: u64) -> bool {
        self.lock().get(device_id) == Some(&version)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the writer needs.
#[derive(Clone)]
pub struct Writer {
    pub db: Database,
    pub gateway_id: String,
    pub store: ShadowStore,
    /// Cloud changes found before a write, for the shadow service to merge.
    pub to_service: flume::Sender<FromCloud>,
    pub outbox: Outbox,
    pub own_writes: OwnWrites,
    pub status: UplinkStatus,
    /// The lease epoch of every shadow and presence write (active/standby pair).
    pub fence: Fence,
    /// Items per second at most.
    pub replay_rate: u32,
    /// Items per MongoDB round trip at most (`mongodb.telemetry_batch`).
    pub batch: usize,
    /// After a wake-up, wait this long for more before writing (`mongodb.telemetry_flush_ms`).
    pub flush: Duration,
}

impl Writer {
    /// Drains the outbox for ever: when woken, every `IDLE_CHECK`, and with backoff after
    /// failures. Only a replay is paced at `replay_rate`: a batch whose oldest item waited
    /// more than `REPLAY_AGE` (it piled up while MongoDB was away, or an earlier run left
    /// it). Live traffic goes out as fast as it comes, so the replay rate does not cap the
    /// ingest rate.
    pub async fn run(self) {
        self.fence.decided().await;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let result = self.drain_paced(false).await;
            match result {
                Ok(written) => {
                    // An empty drain proves nothing about the connection.
                    if written > 0 {
                        self.status.update(|r| {
                            r.connected = true;
                            r.unreachable = false;
                        });
                    }
                    backoff.reset();
                    self.outbox.wait(IDLE_CHECK).await;
                    if !self.flush.is_zero() {
                        tokio::time::sleep(self.flush).await;
                    }
                }
                Err(e) => {
                    self.status.update(|r| r.connected = false);
                    let retry = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?retry, "MongoDB write failed; the outbox keeps the data and retries");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// Writes everything pending, paced at `replay_rate` (the `outbox replay` command);
    /// returns how many entries left the outbox, or the first transient failure.
    pub async fn drain(&self) -> Result<usize, DrainError> {
        self.drain_paced(true).await
    }

    /// [`Self::drain`], pacing every batch if `always`, else only batches of a replay.
    async fn drain_paced(&self, always: bool) -> Result<usize, DrainError> {
        let mut written = 0;
        let shadows = self.outbox.pending_shadows()?;
        let writes = shadows
            .iter()
            .map(|pending| self.write_pending_shadow(pending));
        for_each_in_flight(writes, |done| {
            written += usize::from(done?);
            Ok(())
        })
        .await?;
        loop {
            let items = self.outbox.next_items(self.batch)?;
            if items.is_empty() {
                break;
            }
            let started = tokio::time::Instant::now();
            let waited_ms = DateTime::now().timestamp_millis() - items[0].entry.enqueued_ms;
            let replay =
                always || u128::try_from(waited_ms).is_ok_and(|ms| ms > REPLAY_AGE.as_millis());
            self.write_items(&items).await?;
            self.outbox.flush_removals().await?;
            written += items.len();
            if replay {
                // `replay_rate` items per second at most.
                let budget =
                    Duration::from_secs_f64(items.len() as f64 / f64::from(self.replay_rate));
                tokio::time::sleep_until(started + budget).await;
            }
        }
        Ok(written)
    }

    /// One coalesced shadow write; false when it waits for a merge of cloud changes.
    async fn write_pending_shadow(&self, pending: &Pending) -> Result<bool, DrainError> {
        if let ToCloud::Shadow {
            device_id,
            document,
        } = &pending.entry.write
        {
            if document.is_some() && self.cloud_changes_first(device_id).await? {
                // The merged version replaces this pending write.
                return Ok(false);
            }
            match self.write_shadow(device_id, document.as_deref()).await {
                Ok(true) => {
                    if let Some(document) = document {
                        self.store
                            .set_cloud_base(device_id, &document.state.desired)?;
                    }
                }
                Ok(false) => self.release_if_owned_elsewhere(device_id).await?,
                // The local store keeps the shadow; its next change writes it whole.
                Err(e) if is_permanent(&e) => {
                    tracing::error!(device_id, error = %e, "MongoDB refused this shadow; not retried");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.outbox.remove_shadow(pending)?;
        Ok(true)
    }

    /// Before a device's shadow replaces MongoDB's: did the cloud change `desired` since
    /// MongoDB last had it from us? Then those changes go to the shadow service first (the
    /// cloud wins on the fields it changed, local changes elsewhere are kept: a three-way
    /// merge against the last synced desired) and this write waits for the merged version.
    /// One read by `_id` per shadow write; a live change stream makes it rare to matter,
    /// but after an outage both sides may have changed.
    async fn cloud_changes_first(&self, device_id: &str) -> Result<bool, DrainError> {
        // A shadow another gateway owns is not merged (the write is refused, see
        // `release_if_owned_elsewhere`).
        let current = self
            .db
            .collection::<BsonDocument>(SHADOWS)
            .find_one(self.owned(device_id))
            .projection(doc! {"state.desired": 1, "desiredExpiresAt": 1, "updatedAt": 1})
            .await?;
        let Some(current) = current else {
            return Ok(false);
        };
        let cloud_desired = super::watcher::desired_of(&current);
        let base = self.store.cloud_base(device_id);
        if cloud_desired == base {
            return Ok(false);
        }
        let changes = crate::shadow::replacement_patch(&base, &cloud_desired);
        tracing::info!(
            device_id,
            "desired changed in the cloud since the last sync; merging before writing"
        );
        let merge = super::watcher::cloud_desired_of(device_id, changes, false, &current);
        if self.to_service.send(merge.into()).is_ok() {
            self.store.set_cloud_base(device_id, &cloud_desired)?;
        } else {
            // No shadow service (offline `outbox replay`): the write stays pending for the
            // gateway's next start, which merges it.
            tracing::warn!(
                device_id,
                "cloud changes to merge first; this shadow write stays in the outbox"
            );
        }
        Ok(true)
    }

    /// After MongoDB refused a shadow write: if another gateway owns the device now (it
    /// was claimed while this gateway was not watching), stop serving it here.
    async fn release_if_owned_elsewhere(&self, device_id: &str) -> Result<(), DrainError> {
        let found = self
            .db
            .collection::<BsonDocument>(SHADOWS)
            .find_one(doc! {"_id": device_id})
            .projection(doc! {"gatewayId": 1})
            .await?;
        let owner = found.as_ref().and_then(|d| d.get_str("gatewayId").ok());
        if let Some(owner) = owner.filter(|owner| *owner != self.gateway_id) {
            tracing::warn!(
                device_id,
                owner,
                "another gateway owns this device; releasing it here"
            );
            let released = FromCloud::Released {
                device_id: device_id.to_string(),
            };
            // No shadow service (offline `outbox replay`): the gateway's next start does it.
            let _ = self.to_service.send(released);
        }
        Ok(())
    }

    /// The filter of every shadow-document write: this gateway owns the device, or nobody
    /// does, and no newer holder of its lease stamped it (`lease::Fence`). A write still
    /// queued here when another gateway claimed the device matches nothing (its upsert
    /// collides on `_id`), so it cannot undo the claim (see `handover`).
    fn owned(&self, device_id: &str) -> BsonDocument {
        let mut filter =
            doc! {"_id": device_id, "gatewayId": {"$in": [&self.gateway_id, Bson::Null]}};
        self.fence.guard(&mut filter);
        filter
    }

    /// `$set` of this gateway's ownership (and lease epoch, in a pair).
    fn ownership(&self, mut set: BsonDocument) -> BsonDocument {
        set.insert("gatewayId", &self.gateway_id);
        self.fence.stamp(&mut set);
        doc! {"$set": set}
    }

    /// Upserts the whole shadow, only over an older (or the same: a replay) version of a
    /// shadow this gateway owns: a concurrent writer with a newer version, or another
    /// owner, makes the upsert collide on `_id` (11000), which is logged, never silent.
    /// Returns whether MongoDB took it.
    async fn write_shadow(
        &self,
        device_id: &str,
        document: Option<&Document>,
    ) -> Result<bool, mongodb::error::Error> {
        let shadows = self.db.collection::<BsonDocument>(SHADOWS);
        let mut filter = self.owned(device_id);
        let Some(document) = document else {
            shadows.delete_one(filter).await?;
            return Ok(true);
        };
        let version = i64::try_from(document.version).unwrap_or(i64::MAX);
        filter.insert(
            "$or",
            vec![
                doc! {"version": {"$lte": version}},
                doc! {"version": {"$exists": false}},
            ],
        );
        let mut update = self.ownership(doc! {
            "state": to_bson(&document.state)?,
            "metadata": to_bson(&document.metadata)?,
            "version": version,
            "updatedAt": DateTime::now(),
        });
        // A cloud service's `desiredExpiresAt` was for the change it came with, which
        // `cloud_changes_first` merged before this write; each leaf's `expiresAt` is in
        // `metadata.desired` now, and the field must not stick to the cloud's next change.
        update.insert("$unset", doc! {"desiredExpiresAt": ""});
        self.own_writes.record(device_id, document.version);
        let upsert = UpdateOptions::builder().upsert(true).build();
        match shadows
            .update_one(filter, update)
            .with_options(upsert)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => {
                tracing::warn!(
                    device_id,
                    version,
                    "MongoDB holds a newer version of this shadow, or another gateway owns it; the local write was not applied there"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `connected`/`lastSeen` of the device's shadow, creating a state-less document for
    /// a device that has not reported yet (the watcher ignores documents without `state`).
    /// Skipped for a device another gateway owns: a late disconnect here must not mark a
    /// device that moved as offline.
    async fn write_presence(
        &self,
        device_id: &str,
        connected: bool,
        at_ms: i64,
    ) -> Result<(), mongodb::error::Error> {
        let written = self
            .db
            .collection::<BsonDocument>(SHADOWS)
            .update_one(
                self.owned(device_id),
                self.ownership(doc! {
                    "connected": connected,
                    "lastSeen": DateTime::from_millis(at_ms),
                }),
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await;
        match written {
            Err(e) if is_duplicate_key(&e) => {
                tracing::debug!(
                    device_id,
                    connected,
                    "presence not written: another gateway owns the device"
                );
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Writes a batch in order: runs of telemetry with one `insertMany`, runs of presence
    /// changes together ([`Self::write_presence_run`]), the rest one by one.
    async fn write_items(&self, items: &[Pending]) -> Result<(), DrainError> {
        let mut index = 0;
        while index < items.len() {
            let run = Run::of(&items[index].entry.write);
            let run_end = match run {
                Run::Single => index + 1,
                _ => items[index..]
                    .iter()
                    .position(|p| Run::of(&p.entry.write) != run)
                    .map_or(items.len(), |offset| index + offset),
            };
            let run_items = &items[index..run_end];
            index = run_end;
            match run {
                Run::Telemetry => self.write_telemetry(run_items).await?,
                Run::Presence => self.write_presence_run(run_items).await?,
                Run::Single => {
                    for pending in run_items {
                        let written = match &pending.entry.write {
                            ToCloud::CommandResult(result) => {
                                write_command_result(&self.db, result).await
                            }
                            ToCloud::Alert(event) => {
                                write_alert(&self.db, &self.gateway_id, event).await
                            }
                            ToCloud::Preferences {
                                user_id,
                                preferences,
                            } => write_preferences(&self.db, user_id, preferences).await,
                            _ => Ok(()),
                        };
                        self.settle(pending, written)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes a written item, or counts a refusal against it; a transient failure stops
    /// the drain.
    fn settle(
        &self,
        pending: &Pending,
        written: Result<(), mongodb::error::Error>,
    ) -> Result<(), DrainError> {
        match written {
            Ok(()) => self.outbox.remove_item(pending)?,
            Err(e) if is_permanent(&e) => {
                self.outbox.fail_item(pending, &e.to_string())?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Presence changes in a row: each write sets `connected` and `lastSeen`, so only a
    /// device's last change in the run is written, and different devices' at once.
    async fn write_presence_run(&self, run: &[Pending]) -> Result<(), DrainError> {
        let mut last: HashMap<&str, (bool, i64)> = HashMap::new();
        for pending in run {
            if let ToCloud::Presence {
                device_id,
                connected,
                at_ms,
            } = &pending.entry.write
            {
                last.insert(device_id, (*connected, *at_ms));
            }
        }
        let writes = last
            .into_iter()
            .map(|(device_id, (connected, at_ms))| async move {
                (
                    device_id,
                    self.write_presence(device_id, connected, at_ms).await,
                )
            });
        let mut outcomes = HashMap::new();
        for_each_in_flight(writes, |(device_id, written)| {
            outcomes.insert(device_id, written);
            Ok(())
        })
        .await?;
        for pending in run {
            let ToCloud::Presence { device_id, .. } = &pending.entry.write else {
                continue;
            };
            let written = match outcomes.get(device_id.as_str()) {
                Some(Err(e)) => Err(e.clone()),
                _ => Ok(()),
            };
            self.settle(pending, written)?;
        }
        Ok(())
    }

    async fn write_telemetry(&self, run: &[Pending]) -> Result<(), DrainError> {
        // A document BSON cannot hold fails the whole insertMany on the client side, as if
        // the network had: dead-letter it alone here, so it cannot block the queue.
        let mut documents = Vec::with_capacity(run.len());
        let mut sent = Vec::with_capacity(run.len());
        for pending in run {
            let ToCloud::Telemetry(record) = &pending.entry.write else {
                continue;
            };
            let document = telemetry_document(&self.gateway_id, record);
            match bson::to_vec(&document) {
                Ok(_) => {
                    documents.push(document);
                    sent.push(pending);
                }
                Err(e) => {
                    self.outbox
                        .fail_item(pending, &format!("not storable as BSON: {e}"))?;
                }
            }
        }
        if documents.is_empty() {
            return Ok(());
        }
        let unordered = InsertManyOptions::builder().ordered(false).build();
        let refused: HashMap<usize, String> = match self
            .db
            .collection::<BsonDocument>(TELEMETRY)
            .insert_many(documents)
            .with_options(unordered)
            .await
        {
            Ok(_) => HashMap::new(),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => failure
                    .write_errors
                    .iter()
                    .flatten()
                    // Already stored (a replay): not a failure.
                    .filter(|w| !is_id_duplicate(w.code, &w.message))
                    .map(|w| (w.index, w.message.clone()))
                    .collect(),
                _ => return Err(e.into()),
            },
        };
        for (index, pending) in sent.into_iter().enumerate() {
            match refused.get(&index) {
                Some(error) => {
                    self.outbox.fail_item(pending, error)?;
                }
                None => self.outbox.remove_item(pending)?,
            }
        }
        Ok(())
    }
}

/// Runs `writes` (of different devices) [`WRITES_IN_FLIGHT`] at a time, handing each
/// outcome to `each` as it ends; the first error of `each` stops them.
async fn for_each_in_flight<W: std::future::Future>(
    mut writes: impl Iterator<Item = W>,
    mut each: impl FnMut(W::Output) -> Result<(), DrainError>,
) -> Result<(), DrainError> {
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT {
            let Some(write) = writes.next() else { break };
            in_flight.push(write);
        }
        let Some(done) = in_flight.next().await else {
            return Ok(());
        };
        each(done)?;
    }
}

/// How a queued item is written: with the items of its kind around it, or alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Telemetry,
    Presence,
    Single,
}

impl Run {
    fn of(write: &ToCloud) -> Run {
        match write {
            ToCloud::Telemetry(_) => Run::Telemetry,
            ToCloud::Presence { .. } => Run::Presence,
            _ => Run::Single,
        }
    }
}

/// A duplicate `_id`: the item is already stored. (A duplicate on another unique index is
/// a real refusal.)
fn is_id_duplicate(code: i32, message: &str) -> bool {
    code == DUPLICATE_KEY && message.contains("index: _id_ ")
}

/// A failure that retrying the same item will not fix.
fn is_permanent(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(_))
            | ErrorKind::BsonSerialization(_)
            | ErrorKind::InvalidArgument { .. }
    )
}

fn telemetry_document(gateway_id: &str, record: &TelemetryRecord) -> BsonDocument {
    let reading = &record.reading;
    let ts = DateTime::from_millis(reading.ts_ms.unwrap_or(record.received_ms));
    let mut document = doc! {
        "_id": &record.id,
        "deviceId": &record.device_id,
        "kind": &record.kind,
        "value": json_to_bson(&reading.value),
        "ts": ts,
        "gatewayId": gateway_id,
    };
    if let Some(seq) = reading.seq {
        document.insert("seq", seq);
    }
    if let Some(unit) = &reading.unit {
        document.insert("unit", unit);
    }
    document
}

/// One document per alert (`_id` = alert id): opened by its firing, closed by its
/// clearing; both upsert, so a replay changes nothing and a clearing whose firing was
/// dropped (outbox full) still leaves a record.
async fn write_alert(
    db: &Database,
    gateway_id: &str,
    event: &crate::alert_event::AlertEvent,
) -> Result<(), mongodb::error::Error> {
    use crate::alert_event::AlertState;
    let at = DateTime::from_millis(event.at_ms);
    let severity = bson::to_bson(&event.severity).unwrap_or(Bson::Null);
    let update = match event.state {
        AlertState::Firing => doc! {
            "$set": {"status": "open"},
            "$setOnInsert": {
                "rule": &event.rule, "deviceId": &event.device_id, "severity": severity,
                "gatewayId": gateway_id, "firedAt": at, "value": json_to_bson(&event.value),
            },
        },
        AlertState::Cleared => doc! {
            "$set": {"status": "cleared", "clearedAt": at, "clearValue": json_to_bson(&event.value)},
            "$setOnInsert": {
                "rule": &event.rule, "deviceId": &event.device_id, "severity": severity,
                "gatewayId": gateway_id, "firedAt": at,
            },
        },
    };
    db.collection::<BsonDocument>(ALERTS)
        .update_one(doc! {"_id": &event.alert_id}, update)
        .upsert(true)
        .await?;
    Ok(())
}

async fn write_preferences(
    db: &Database,
    user_id: &str,
    preferences: &crate::users::Preferences,
) -> Result<(), mongodb::error::Error> {
    let preferences = bson::to_bson(preferences).unwrap_or(Bson::Null);
    db.collection::<BsonDocument>(USERS)
        .update_one(
            doc! {"_id": user_id},
            doc! {"$set": {"preferences": preferences}},
        )
        .await?;
    Ok(())
}

async fn write_command_result(
    db: &Database,
    result: &CommandResult,
) -> Result<(), mongodb::error::Error> {
    let status = if result.ok { "succeeded" } else { "failed" };
    let outcome = db
        .collection::<BsonDocument>(COMMANDS)
        .update_one(
            doc! {
                "_id": super::commands::command_id_filter(&result.command_id),
                "deviceId": &result.device_id,
                "status": {"$in": ["sent", "pending"]},
            },
            doc! {"$set": {
                "status": status,
                "response": json_to_bson(&result.result),
                "respondedAt": DateTime::now(),
            }},
        )
        .await?;
    if outcome.matched_count == 0 {
        tracing::warn!(
            device_id = %result.device_id,
            command_id = %result.command_id,
            "a command response matched no sent command (unknown id, other device, or already answered)"
        );
    }
    Ok(())
}

pub(super) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY
    )
}

fn to_bson<T: serde::Serialize>(value: &T) -> Result<Bson, mongodb::error::Error> {
    bson::to_bson(value).map_err(|e| mongodb::error::Error::custom(e.to_string()))
}

/// JSON → BSON for device-supplied values (integers stay integers).
pub fn json_to_bson(value: &Value) -> Bson {
    Bson::try_from(value.clone()).unwrap_or(Bson::Null)
}
