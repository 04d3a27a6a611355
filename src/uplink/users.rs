//! Keeps [`crate::users::Directory`] equal to MongoDB `users`: a full load at every
//! (re)connect, then a change stream on the collection (replica set) or a reload every
//! [`POLL_RELOAD`] (standalone).

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{self, Bson, Document as BsonDocument};
use mongodb::change_stream::event::OperationType;
use mongodb::options::FullDocumentType;
use mongodb::Database;

use super::mongo::USERS;
use crate::status::UplinkMode;
use crate::users::{Directory, Preferences, User};

/// Without change streams the whole collection is read again this often.
const POLL_RELOAD: Duration = Duration::from_secs(30);

/// Follows `users` until the database fails; the caller retries.
pub async fn run(
    db: &Database,
    mode: UplinkMode,
    directory: &Directory,
) -> Result<(), mongodb::error::Error> {
    let users = db.collection::<BsonDocument>(USERS);
    // Watch first, then load: a change between the two is seen twice, never missed.
    let stream = match mode {
        UplinkMode::ChangeStream => Some(
            users
                .watch()
                .full_document(FullDocumentType::UpdateLookup)
                .await?,
        ),
        _ => None,
    };
    load_all(db, directory).await?;
    let Some(mut stream) = stream else {
        loop {
            tokio::time::sleep(POLL_RELOAD).await;
            load_all(db, directory).await?;
        }
    };
    while let Some(event) = stream.next().await {
        let event = event?;
        let id = event
            .document_key
            .as_ref()
            .and_then(|key| key.get_str("_id").ok())
            .map(str::to_string);
        match (event.operation_type, event.full_document, id) {
            (OperationType::Delete, _, Some(id)) => directory.remove(&id),
            (_, Some(document), _) => match user(&document) {
                Some((id, user)) => directory.upsert(id, user),
                None => tracing::warn!(?document, "ignored a malformed users document"),
            },
            // Updated and deleted again before the lookup: the delete event follows.
            _ => {}
        }
    }
    Ok(())
}

async fn load_all(db: &Database, directory: &Directory) -> Result<(), mongodb::error::Error> {
    let mut cursor = db
        .collection::<BsonDocument>(USERS)
        .find(BsonDocument::new())
        .await?;
    let mut users = Vec::new();
    while let Some(document) = cursor.next().await {
        let document = document?;
        match user(&document) {
            Some(entry) => users.push(entry),
            None => tracing::warn!(?document, "ignored a malformed users document"),
        }
    }
    tracing::info!(users = users.len(), "users loaded");
    directory.replace_all(users);
    Ok(())
}

/// `{_id: "alice", devices: ["heater-1"], preferences: {severities: ["critical"]}}`.
fn user(document: &BsonDocument) -> Option<(String, User)> {
    let id = document.get_str("_id").ok()?;
    if !crate::topics::is_valid_id(id) {
        return None;
    }
    let devices = match document.get("devices") {
        Some(Bson::Array(devices)) => devices
            .iter()
            .filter_map(Bson::as_str)
            .filter(|d| crate::topics::is_valid_id(d))
            .map(str::to_string)
            .collect(),
        None => Default::default(),
        Some(_) => return None,
    };
    let preferences = document
        .get("preferences")
        .and_then(|p| bson::from_bson::<Preferences>(p.clone()).ok())
        .unwrap_or_default();
    Some((
        id.to_string(),
        User {
            devices,
            preferences,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn documents_become_users() {
        let (id, alice) = user(&doc! {
            "_id": "alice",
            "devices": ["h1", "not valid!", 7],
            "preferences": {"severities": ["critical"]},
        })
        .expect("a user");
        assert_eq!(id, "alice");
        assert_eq!(alice.devices.iter().collect::<Vec<_>>(), ["h1"]);
        assert_eq!(
            alice.preferences.severities,
            Some([crate::alert_event::Severity::Critical].into())
        );
        assert!(user(&doc! {"_id": 5, "devices": []}).is_none());
        assert!(user(&doc! {"_id": "bob", "devices": "h1"}).is_none());
        let (_, bob) = user(&doc! {"_id": "bob", "preferences": {"bogus": 1}}).expect("a user");
        assert_eq!(
            bob.preferences,
            Preferences::default(),
            "bad preferences: defaults"
        );
    }
}
