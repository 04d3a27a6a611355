//! Commands from MongoDB to devices (DESIGN.md §6): a `commands` document with
//! `status: "pending"` for a device this gateway serves is marked `sent` (conditionally, so
//! two gateways or a restart never send it twice) and published to
//! `devices/{id}/commands/request` as `{"commandId", "name", "args"}`. Past `expiresAt` it
//! becomes `expired` and is never sent. The device's answer comes back through the shadow
//! service and the outbox (`CommandResult`).
//!
//! Found by a change stream on inserts (replica set) or by polling (standalone), plus a
//! scan of pending commands at every (re)start, so nothing inserted while the gateway was
//! down is missed.

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document as BsonDocument};
use mongodb::options::FullDocumentType;
use mongodb::Database;
use serde::Serialize;

use super::status::UplinkMode;
use crate::store::ShadowStore;

/// What the device receives on `commands/request`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    pub command_id: String,
    pub name: String,
    pub args: serde_json::Value,
}

/// Publishes a command request to a device (the uplink's broker link).
pub trait CommandSink: Send {
    fn send(&mut self, device_id: &str, request: &CommandRequest);
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
    let commands = db.collection::<BsonDocument>("commands");
    dispatch_pending(db, store, sink).await?;
    if mode == UplinkMode::ChangeStream {
        let mut stream = commands
            .watch()
            .pipeline([
                doc! {"$match": {"operationType": "insert", "fullDocument.status": "pending"}},
            ])
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        while let Some(event) = stream.next().await {
            if let Some(command) = event?.full_document {
                dispatch(db, store, &command, sink).await?;
            }
        }
        Ok(())
    } else {
        loop {
            tokio::time::sleep(poll_interval).await;
            dispatch_pending(db, store, sink).await?;
        }
    }
}

async fn dispatch_pending(
    db: &Database,
    store: &ShadowStore,
    sink: &mut dyn CommandSink,
) -> Result<(), mongodb::error::Error> {
    let mut cursor = db
        .collection::<BsonDocument>("commands")
        .find(doc! {"status": "pending"})
        .sort(doc! {"createdAt": 1})
        .await?;
    while let Some(command) = cursor.next().await {
        dispatch(db, store, &command?, sink).await?;
    }
    Ok(())
}

/// Sends one pending command if its device is served here and it has not expired.
async fn dispatch(
    db: &Database,
    store: &ShadowStore,
    command: &BsonDocument,
    sink: &mut dyn CommandSink,
) -> Result<(), mongodb::error::Error> {
    let Ok(device_id) = command.get_str("deviceId") else {
        return Ok(());
    };
    // Devices this gateway serves are those in its shadow store.
    if !matches!(store.get(device_id), Ok(Some(_))) {
        return Ok(());
    }
    let Some(id) = command.get("_id").cloned() else {
        return Ok(());
    };
    let commands = db.collection::<BsonDocument>("commands");
    let now = DateTime::now();
    let expired = command
        .get_datetime("expiresAt")
        .is_ok_and(|expires_at| *expires_at <= now);
    let status = if expired { "expired" } else { "sent" };
    let marked = commands
        .update_one(
            doc! {"_id": id.clone(), "status": "pending"},
            doc! {"$set": {"status": status, format!("{status}At"): now}},
        )
        .await?;
    if marked.modified_count == 0 || expired {
        return Ok(());
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
    Ok(())
}
