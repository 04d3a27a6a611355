//! The shadow watcher: how a cloud change to `state.desired` in MongoDB reaches the device.
//!
//! - **Change stream** (replica set): `shadows.watch()` with `fullDocument: updateLookup`
//!   and a `$match` on this gateway's devices, plus the updates that hand a device to
//!   another gateway (`updatedFields.gatewayId` not ours: see `handover`), which become
//!   [`FromCloud::Released`]. The resume token of the last change delivered is stored in
//!   `resume_tokens` (`_id: "shadows:<gatewayId>"`) beside the stream (never holding up
//!   the next event), so a restart resumes where it stopped and a change made while the
//!   gateway was down still reaches the device. "History lost" (286) or "resume token
//!   not found" (280: a restored or replaced database) → a full resync of this gateway's
//!   shadows, then a fresh watch.
//! - **Polling** (standalone server, or `change_streams = "off"`): `updatedAt >= last seen`
//!   every `poll_interval_ms`. Cloud services must set `updatedAt` when they change
//!   `desired` for polling to see it (a change stream needs nothing). Polling sees
//!   handovers by looking for local devices claimed elsewhere every
//!   [`RELEASE_CHECK_POLLS`] polls.
//!
//! Echoes: every gateway write sets `version`; cloud services change `state.desired.*` and
//! never `version`. So an update event whose `updatedFields` holds `version` (or an
//! insert/replace carrying the version this gateway last wrote) is the gateway's own and
//! is skipped. Conflicts: for desired, the cloud wins on the fields it changed; changes to
//! `state.reported` from the cloud are ignored (the device is the truth) and logged.
//!
//! The desired lifecycle: a cloud service may set `desiredExpiresAt` (a date) in the same
//! write as the desired values that expire then, and sets `updatedAt` to the time of its
//! change, which is what "newer" means for `[shadow] local_wins` when the change arrives
//! late (after an outage). From a change stream's update both are taken only from that
//! update's own fields; from a whole document (insert, replace, polling, a merge) from
//! the document, which the gateway's writes clear of `desiredExpiresAt` (see `writer`).

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{self, doc, Bson, DateTime, Document as BsonDocument};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::options::{FullDocumentType, UpdateOptions};
use mongodb::Database;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::mongo::{error_code, HISTORY_LOST, RESUME_TOKENS, SHADOWS, TOKEN_NOT_FOUND};
use super::writer::OwnWrites;
use super::DEVICE_IDS_PER_QUERY;
use crate::cloud::{CloudDesired, FromCloud};
use crate::shadow::Object;
use crate::status::{UplinkMode, UplinkStatus};
use crate::store::ShadowStore;

/// Polling sees no handover events: every this many polls it looks for local devices
/// claimed elsewhere.
const RELEASE_CHECK_POLLS: u64 = 10;

/// A desired change read from the whole shadow document `document`.
pub(super) fn cloud_desired_of(
    device_id: &str,
    state: Object,
    replace: bool,
    document: &BsonDocument,
) -> CloudDesired {
    CloudDesired {
        device_id: device_id.to_string(),
        state,
        replace,
        expires_at: epoch_secs_at(document, "desiredExpiresAt"),
        changed_at: epoch_secs_at(document, "updatedAt"),
    }
}

/// A date field of a document in epoch seconds (a date before 1970 counts as none).
fn epoch_secs_at(document: &BsonDocument, field: &str) -> Option<u64> {
    let millis = document.get_datetime(field).ok()?.timestamp_millis();
    u64::try_from(millis / 1000).ok()
}

/// Everything the watcher needs.
pub struct Watcher {
    pub db: Database,
    pub gateway_id: String,
    pub store: ShadowStore,
    pub own_writes: OwnWrites,
    pub status: UplinkStatus,
    pub poll_interval: Duration,
    pub to_service: flume::Sender<FromCloud>,
}

/// The change stream's pipeline: this gateway's devices, plus the rare updates that hand
/// one of them to another gateway. Public for the benchmark that measures what it saves.
pub fn change_stream_pipeline(gateway_id: &str) -> [BsonDocument; 1] {
    [doc! {"$match": {
        "operationType": {"$in": ["insert", "update", "replace"]},
        "$or": [
            {"fullDocument.gatewayId": gateway_id},
            {"updateDescription.updatedFields.gatewayId": {"$exists": true, "$ne": gateway_id}},
        ],
    }}]
}

impl Watcher {
    fn token_id(&self) -> String {
        format!("shadows:{}", self.gateway_id)
    }

    /// Watches (or polls) until the database fails; the caller retries with backoff.
    pub async fn run(&self, mode: UplinkMode) -> Result<(), mongodb::error::Error> {
        match mode {
            UplinkMode::ChangeStream => self.watch().await,
            _ => self.poll().await,
        }
    }

    async fn watch(&self) -> Result<(), mongodb::error::Error> {
        let shadows = self.db.collection::<BsonDocument>(SHADOWS);
        let pipeline = change_stream_pipeline(&self.gateway_id);
        // The stream is opened before any resync, so a change made during the resync is
        // seen by one or the other (applying it twice is harmless: the same values).
        let token = self.load_token().await?;
        let resuming = token.is_some();
        let opened = shadows
            .watch()
            .pipeline(pipeline.clone())
            .full_document(FullDocumentType::UpdateLookup)
            .resume_after(token)
            .await;
        let mut stream = match opened {
            Err(e) if matches!(error_code(&e), Some(HISTORY_LOST | TOKEN_NOT_FOUND)) => {
                tracing::warn!(
                    error = %e,
                    "the stored resume token cannot be resumed from (history lost, or not \
                     this deployment's): resyncing this gateway's shadows"
                );
                let stream = shadows
                    .watch()
                    .pipeline(pipeline)
                    .full_document(FullDocumentType::UpdateLookup)
                    .await?;
                self.resync().await?;
                stream
            }
            Ok(stream) if !resuming => {
                // Nothing to resume from: catch up with what changed before we watched.
                self.resync().await?;
                stream
            }
            other => other?,
        };
        // A position to resume from even if no cloud change comes before a restart.
        if let Some(token) = stream.resume_token() {
            self.store_token(&token).await?;
        }
        tracing::info!("watching shadows for cloud changes (change stream)");
        // The token of the last change delivered is stored by a saver beside the stream,
        // never between two events: a round trip per event would cap delivery at one
        // event per MongoDB round trip. Tokens that arrive while one is being stored are
        // coalesced; after a crash at most the changes of that round trip come again.
        let (latest, mut to_save) = watch::channel(None::<ResumeToken>);
        let events = async move {
            while let Some(event) = stream.next().await {
                let event = event?;
                let token = event.id.clone();
                if let Some(change) = self.released(&event).or_else(|| self.cloud_change(event)) {
                    self.deliver(change);
                    latest.send_replace(Some(token));
                }
            }
            Ok(())
        };
        let saver = async {
            // Ends once the stream ended and its last token is stored.
            while to_save.changed().await.is_ok() {
                let token = to_save.borrow_and_update().clone();
                if let Some(token) = token {
                    self.store_token(&token).await?;
                }
            }
            Ok(())
        };
        tokio::try_join!(events, saver).map(|_| ())
    }

    async fn poll(&self) -> Result<(), mongodb::error::Error> {
        tracing::info!(interval = ?self.poll_interval, "polling shadows for cloud changes");
        let mut since = self.resync().await?;
        for polls in 1_u64.. {
            tokio::time::sleep(self.poll_interval).await;
            if polls % RELEASE_CHECK_POLLS == 0 {
                self.release_claimed_elsewhere().await?;
            }
            // `$gte`: a change stamped in the same millisecond as the newest one seen must
            // not be missed; documents seen again compare equal and change nothing.
            since = self
                .compare_with_cloud(doc! {"updatedAt": {"$gte": since}}, since)
                .await?;
        }
        Ok(())
    }

    /// Releases the local devices another gateway claimed meanwhile, then compares every
    /// shadow of this gateway with the local store; returns the newest `updatedAt` seen.
    async fn resync(&self) -> Result<DateTime, mongodb::error::Error> {
        self.release_claimed_elsewhere().await?;
        self.compare_with_cloud(doc! {}, DateTime::from_millis(0))
            .await
    }

    /// Local devices whose MongoDB shadow names another gateway (claimed while this one
    /// was down or not watching) → [`FromCloud::Released`].
    async fn release_claimed_elsewhere(&self) -> Result<(), mongodb::error::Error> {
        for ids in self.store.device_ids().chunks(DEVICE_IDS_PER_QUERY) {
            let mut cursor = self
                .db
                .collection::<BsonDocument>(SHADOWS)
                .find(doc! {
                    "_id": {"$in": ids},
                    "gatewayId": {"$exists": true, "$ne": &self.gateway_id},
                })
                .projection(doc! {"_id": 1})
                .await?;
            while let Some(document) = cursor.next().await {
                if let Ok(device_id) = document?.get_str("_id") {
                    self.deliver(FromCloud::Released {
                        device_id: device_id.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn compare_with_cloud(
        &self,
        mut filter: BsonDocument,
        mut newest: DateTime,
    ) -> Result<DateTime, mongodb::error::Error> {
        filter.insert("gatewayId", &self.gateway_id);
        let mut cursor = self
            .db
            .collection::<BsonDocument>(SHADOWS)
            .find(filter)
            .sort(doc! {"updatedAt": 1})
            .await?;
        while let Some(document) = cursor.next().await {
            let document = document?;
            if let Ok(updated_at) = document.get_datetime("updatedAt") {
                newest = newest.max(*updated_at);
            }
            if let Some(change) = self.differing_desired(&document) {
                self.deliver(change.into());
            }
        }
        Ok(newest)
    }

    /// The cloud's whole desired section when it differs from the local one, unless the
    /// cloud copy is older than the local shadow (our newer write is on its way).
    fn differing_desired(&self, document: &BsonDocument) -> Option<CloudDesired> {
        let device_id = document.get_str("_id").ok()?;
        if !document.contains_key("state") {
            return None;
        }
        let cloud_version = document.get("version").and_then(bson_u64).unwrap_or(0);
        let cloud_desired = desired_of(document);
        let local = self.store.get(device_id).ok().flatten();
        let local_desired = local
            .as_ref()
            .map(|s| s.document.state.desired.clone())
            .unwrap_or_default();
        let local_version = local.map(|s| s.document.version).unwrap_or(0);
        if cloud_desired == local_desired {
            return None;
        }
        if cloud_version < local_version {
            // Our newer version is still queued, so both sides may have changed `desired`
            // while apart: a three-way merge against what MongoDB last had from us. The
            // cloud's own changes win on their fields; local changes elsewhere are kept.
            let base = self.store.cloud_base(device_id);
            let cloud_changes = crate::shadow::replacement_patch(&base, &cloud_desired);
            return (!cloud_changes.is_empty())
                .then(|| cloud_desired_of(device_id, cloud_changes, false, document));
        }
        Some(cloud_desired_of(device_id, cloud_desired, true, document))
    }

    /// An update that gives the device to another gateway (a claim, see `handover`).
    fn released(&self, event: &ChangeStreamEvent<BsonDocument>) -> Option<FromCloud> {
        let owner = event
            .update_description
            .as_ref()?
            .updated_fields
            .get_str("gatewayId")
            .ok()?;
        let device_id = event.document_key.as_ref()?.get_str("_id").ok()?;
        (owner != self.gateway_id).then(|| FromCloud::Released {
            device_id: device_id.to_string(),
        })
    }

    /// The cloud's desired change in an event, or None for the gateway's own writes and
    /// for changes that do not touch `state.desired`.
    fn cloud_change(&self, event: ChangeStreamEvent<BsonDocument>) -> Option<FromCloud> {
        let device_id = event
            .document_key
            .as_ref()?
            .get_str("_id")
            .ok()?
            .to_string();
        let full = event.full_document.as_ref();
        let version = full.and_then(|d| d.get("version")).and_then(bson_u64);
        match event.operation_type {
            OperationType::Insert | OperationType::Replace => {
                // Our own write, or a document without state (presence of a device that
                // has not reported yet): nothing desired to apply.
                let stateless = full.is_none_or(|d| !d.contains_key("state"));
                if stateless || version.is_some_and(|v| self.own_writes.is_own(&device_id, v)) {
                    return None;
                }
                let full = full?;
                Some(FromCloud::Desired(cloud_desired_of(
                    &device_id,
                    desired_of(full),
                    true,
                    full,
                )))
            }
            OperationType::Update => {
                let update = event.update_description.as_ref()?;
                if update.updated_fields.contains_key("version") {
                    return None;
                }
                let (state, replace) =
                    desired_patch(update.updated_fields.iter(), &update.removed_fields, full);
                let reported_touched = update
                    .updated_fields
                    .keys()
                    .chain(update.removed_fields.iter())
                    .any(|k| k.starts_with("state.reported"));
                if reported_touched {
                    tracing::info!(
                        device_id,
                        "ignored a cloud change to state.reported: the device is the truth"
                    );
                }
                // This update's own fields only: the document may hold older ones.
                let fields = &update.updated_fields;
                (!state.is_empty() || replace).then_some(FromCloud::Desired(CloudDesired {
                    device_id,
                    state,
                    replace,
                    expires_at: epoch_secs_at(fields, "desiredExpiresAt"),
                    changed_at: epoch_secs_at(fields, "updatedAt"),
                }))
            }
            _ => None,
        }
    }

    fn deliver(&self, change: FromCloud) {
        self.status
            .update(|r| r.last_event_at = Some(crate::codec::rfc3339_now()));
        match &change {
            FromCloud::Desired(c) => {
                tracing::info!(device_id = %c.device_id, "desired changed in the cloud");
            }
            FromCloud::Released { device_id } => {
                tracing::info!(device_id, "the device was claimed by another gateway");
            }
            FromCloud::Claimed { .. } | FromCloud::ShutOut { .. } => {}
        }
        if self.to_service.send(change).is_err() {
            tracing::error!("the shadow service is gone; a cloud change was not applied");
        }
    }

    async fn load_token(&self) -> Result<Option<ResumeToken>, mongodb::error::Error> {
        let stored = self
            .db
            .collection::<BsonDocument>(RESUME_TOKENS)
            .find_one(doc! {"_id": self.token_id()})
            .await?;
        Ok(stored
            .and_then(|d| d.get("token").cloned())
            .and_then(|token| bson::from_bson(token).ok()))
    }

    async fn store_token(&self, token: &ResumeToken) -> Result<(), mongodb::error::Error> {
        let token =
            bson::to_bson(token).map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
        self.db
            .collection::<BsonDocument>(RESUME_TOKENS)
            .update_one(
                doc! {"_id": self.token_id()},
                doc! {"$set": {"token": token, "lastProcessedAt": DateTime::now()}},
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await?;
        Ok(())
    }
}

/// `state.desired` of a shadow document as JSON.
pub(super) fn desired_of(document: &BsonDocument) -> Object {
    match document
        .get_document("state")
        .ok()
        .and_then(|s| s.get("desired"))
        .cloned()
        .map(Bson::into_relaxed_extjson)
    {
        Some(Value::Object(desired)) => desired,
        _ => Map::new(),
    }
}

/// Turns `updatedFields`/`removedFields` paths under `state.desired` into a partial desired
/// update (removed → null). A path through an array index, or the whole section, is taken
/// from the full document instead. Returns `(patch, replace_whole_section)`.
fn desired_patch<'a>(
    updated: impl Iterator<Item = (&'a String, &'a Bson)>,
    removed: &[String],
    full: Option<&BsonDocument>,
) -> (Object, bool) {
    let mut patch = Map::new();
    let full_desired = full.map(desired_of).unwrap_or_default();
    let mut set = |path: &str, value: Value| {
        let segments: Vec<&str> = path.split('.').collect();
        if segments.iter().any(|s| s.parse::<usize>().is_ok()) {
            let top = segments[0];
            patch.insert(
                top.to_string(),
                full_desired.get(top).cloned().unwrap_or(Value::Null),
            );
        } else {
            insert_path(&mut patch, &segments, value);
        }
    };
    for (path, value) in updated {
        if path == "state" || path == "state.desired" {
            return (full_desired.clone(), true);
        }
        if let Some(rest) = path.strip_prefix("state.desired.") {
            set(rest, value.clone().into_relaxed_extjson());
        }
    }
    for path in removed {
        if path == "state.desired" {
            return (Map::new(), true);
        }
        if let Some(rest) = path.strip_prefix("state.desired.") {
            set(rest, Value::Null);
        }
    }
    (patch, false)
}

fn insert_path(object: &mut Object, segments: &[&str], value: Value) {
    match segments {
        [] => {}
        [last] => {
            object.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let child = object
                .entry((*first).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}

fn bson_u64(value: &Bson) -> Option<u64> {
    match value {
        Bson::Int32(v) => u64::try_from(*v).ok(),
        Bson::Int64(v) => u64::try_from(*v).ok(),
        Bson::Double(v) if v.fract() == 0.0 && *v >= 0.0 => Some(*v as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(updated: BsonDocument, removed: &[&str], full: BsonDocument) -> (Value, bool) {
        let removed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
        let (p, replace) = desired_patch(updated.iter(), &removed, Some(&full));
        (Value::Object(p), replace)
    }

    #[test]
    fn dotted_paths_become_a_nested_partial_update() {
        let full = doc! {"state": {"desired": {"t": 60, "heater": {"on": true, "mode": "eco"}, "list": [1, 2]}}};
        assert_eq!(
            patch(
                doc! {"state.desired.t": 60, "state.desired.heater.on": true},
                &["state.desired.old"],
                full.clone()
            ),
            (json!({"t": 60, "heater": {"on": true}, "old": null}), false)
        );
        assert_eq!(
            patch(doc! {"state.desired.list.1": 2}, &[], full.clone()),
            (json!({"list": [1, 2]}), false)
        );
        assert_eq!(
            patch(doc! {"state.desired": {"t": 1}}, &[], full.clone()),
            (
                json!({"t": 60, "heater": {"on": true, "mode": "eco"}, "list": [1, 2]}),
                true
            )
        );
        assert_eq!(
            patch(doc! {"state.reported.t": 1, "updatedAt": 5}, &[], full),
            (json!({}), false)
        );
    }
}
