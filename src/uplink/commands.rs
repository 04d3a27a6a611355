//! Commands from MongoDB to devices (docs/DESIGN.md §6): a `commands` document with
//! `status: "pending"` for a device this gateway serves is marked `sent` (conditionally, so
//! two gateways or a restart never send it twice) and published to
//! `devices/{id}/commands/request` as `{"commandId", "name", "args"}`. Past `expiresAt` it
//! becomes `expired` and is never sent. The device's answer comes back through the shadow
//! service and the outbox (`CommandResult`).
//!
//! **Scheduled commands** carry `notBefore` (a BSON date or an RFC 3339 string; the
//! seeds' `delayedUntil` is accepted too): they stay `pending` in MongoDB until then, so a
//! restart or an outage in between loses nothing — every scan finds them again and the
//! gateway sleeps until the earliest one is due. `expiresAt` still wins.
//!
//! Found by a change stream on inserts (replica set) or by polling (standalone), plus a
//! scan of pending commands at every (re)start, so nothing inserted while the gateway was
//! down is missed.
//!
//! **Offline devices**: a command is only sent while its device is connected; otherwise it
//! stays `pending`. A device that subscribes to its `commands/request` topic (as a heater
//! does right after connecting) triggers a scan, so it gets what waited for it at once —
//! sending at CONNECT instead would race its SUBSCRIBE and lose the command for a
//! clean-session device. Persistent-session devices, which do not subscribe again, get it
//! at the next periodic scan ([`RESCAN_INTERVAL`], or the poll interval).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document as BsonDocument};
use mongodb::options::FullDocumentType;
use mongodb::Database;
use tokio::sync::Notify;

use super::mongo::COMMANDS;
use crate::messages::CommandRequest;
use crate::status::UplinkMode;
use crate::store::ShadowStore;

/// Publishes a command request to a device (the uplink's broker link).
pub trait CommandSink: Send {
    fn send(&mut self, device_id: &str, request: &CommandRequest);
    /// Is a client with this device's id connected now?
    fn is_connected(&self, device_id: &str) -> bool;
    /// Notified when a device subscribes to its command topic.
    fn listeners(&self) -> Arc<Notify>;
}

/// Matches a command id as the device echoes it: an ObjectId's hex string or a plain id.
pub fn command_id_filter(command_id: &str) -> Bson {
    match ObjectId::parse_str(command_id) {
        Ok(oid) => Bson::Document(doc! {"$in": [oid, command_id]}),
        Err(_) => Bson::String(command_id.to_string()),
    }
}

/// Dispatches pending commands until the database fails; the caller retries.
pub async fn run(
    db: &Database,
    store: &ShadowStore,
    mode: UplinkMode,
    poll_interval: Duration,
    sink: &mut dyn CommandSink,
) -> Result<(), mongodb::error::Error> {
    let commands = db.collection::<BsonDocument>(COMMANDS);
    let listeners = sink.listeners();
    let mut next_due = dispatch_pending(db, store, sink).await?;
    if mode == UplinkMode::ChangeStream {
        let mut stream = commands
            .watch()
            .pipeline([
                doc! {"$match": {"operationType": "insert", "fullDocument.status": "pending"}},
            ])
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        loop {
            tokio::select! {
                event = stream.next() => {
                    let Some(event) = event else { return Ok(()) };
                    if let Some(command) = event?.full_document {
                        let due = dispatch(db, store, &command, sink).await?;
                        next_due = earliest(next_due, due);
                    }
                }
                () = next_scan(next_due, RESCAN_INTERVAL, &listeners) => {
                    next_due = dispatch_pending(db, store, sink).await?;
                }
            }
        }
    } else {
        loop {
            next_scan(next_due, poll_interval, &listeners).await;
            next_due = dispatch_pending(db, store, sink).await?;
        }
    }
}

/// Until the next scan of pending commands: a scheduled one is due, `cap` has passed, or
/// a device subscribed to its command topic.
async fn next_scan(due: Option<DateTime>, cap: Duration, listeners: &Notify) {
    tokio::select! {
        () = sleep_until_due(due, cap) => {}
        () = listeners.notified() => {}
    }
}

/// With a change stream, pending commands are still scanned this often: one inserted for
/// a device before that device first reported here is only found by a scan.
const RESCAN_INTERVAL: Duration = Duration::from_secs(60);

fn earliest(a: Option<DateTime>, b: Option<DateTime>) -> Option<DateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `due` (a scheduled command's time), or at most `cap`.
async fn sleep_until_due(due: Option<DateTime>, cap: Duration) {
    let until_due = due.map_or(cap, |due| {
        let millis = due.timestamp_millis() - DateTime::now().timestamp_millis();
        Duration::from_millis(u64::try_from(millis).unwrap_or(0))
    });
    tokio::time::sleep(until_due.min(cap)).await;
}

/// A point in time given as a BSON date or an RFC 3339 string.
fn instant(command: &BsonDocument, key: &str) -> Option<DateTime> {
    match command.get(key)? {
        Bson::DateTime(at) => Some(*at),
        Bson::String(text) => DateTime::parse_rfc3339_str(text).ok(),
        _ => None,
    }
}

/// Sends every pending command of the devices served here that is due; returns when the
/// next scheduled one is. Only this gateway's devices are asked for (index
/// `status_deviceId_createdAt`), so many gateways on one MongoDB do not each read the
/// whole fleet's pending commands.
async fn dispatch_pending(
    db: &Database,
    store: &ShadowStore,
    sink: &mut dyn CommandSink,
) -> Result<Option<DateTime>, mongodb::error::Error> {
    let mut next_due = None;
    for device_ids in store.device_ids().chunks(super::DEVICE_IDS_PER_QUERY) {
        let mut cursor = db
            .collection::<BsonDocument>(COMMANDS)
            .find(doc! {"status": "pending", "deviceId": {"$in": device_ids}})
            .sort(doc! {"createdAt": 1})
            .await?;
        while let Some(command) = cursor.next().await {
            let due = dispatch(db, store, &command?, sink).await?;
            next_due = earliest(next_due, due);
        }
    }
    Ok(next_due)
}

/// Sends one pending command if its device is served here, it is due and it has not
/// expired; returns its time when it is scheduled for later.
async fn dispatch(
    db: &Database,
    store: &ShadowStore,
    command: &BsonDocument,
    sink: &mut dyn CommandSink,
) -> Result<Option<DateTime>, mongodb::error::Error> {
    let Ok(device_id) = command.get_str("deviceId") else {
        return Ok(None);
    };
    // Devices this gateway serves are those in its shadow store.
    if !matches!(store.get(device_id), Ok(Some(_))) {
        return Ok(None);
    }
    let Some(id) = command.get("_id").cloned() else {
        return Ok(None);
    };
    let commands = db.collection::<BsonDocument>(COMMANDS);
    let now = DateTime::now();
    let expired = instant(command, "expiresAt").is_some_and(|expires_at| expires_at <= now);
    let not_before = instant(command, "notBefore").or_else(|| instant(command, "delayedUntil"));
    if let Some(not_before) = not_before.filter(|at| *at > now && !expired) {
        return Ok(Some(not_before));
    }
    // An offline device's command waits (see the module doc); an expired one is marked now.
    if !expired && !sink.is_connected(device_id) {
        return Ok(None);
    }
    let status = if expired { "expired" } else { "sent" };
    let marked = commands
        .update_one(
            doc! {"_id": id.clone(), "status": "pending"},
            doc! {"$set": {"status": status, format!("{status}At"): now}},
        )
        .await?;
    if marked.modified_count == 0 || expired {
        return Ok(None);
    }
    let request = CommandRequest {
        command_id: match &id {
            Bson::ObjectId(oid) => oid.to_hex(),
            Bson::String(s) => s.clone(),
            other => other.to_string(),
        },
        name: command.get_str("name").unwrap_or_default().to_string(),
        args: command
            .get("args")
            .cloned()
            .map(Bson::into_relaxed_extjson)
            .unwrap_or(serde_json::Value::Null),
    };
    sink.send(device_id, &request);
    tracing::info!(device_id, command_id = %request.command_id, name = %request.name, "command sent");
    Ok(None)
}
