//! Local shadow store: one sled tree under `data_dir`, the source of truth when there is no
//! uplink.
//!
//! Invariants:
//! - A record is a [`StoredShadow`] (document + the encoding its device last used) encoded
//!   as CBOR under the device id.
//! - Writes are visible to later reads at once, but durable only after [`ShadowStore::flush`]
//!   returns: the shadow service flushes once per batch of requests and only then answers
//!   the devices (group commit), so no device is told about a change a kill -9 could undo.
//!   `flush` is sled's fsync point (not `flush_async`, which relies on `sync_file_range`).
//! - A record that cannot be decoded (disk corruption, a future format) is reported, not
//!   silently replaced: reads return [`StoreError::Corrupt`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::Encoding;
use crate::shadow::{Document, Object};

const SHADOWS_TREE: &str = "shadows";
/// Per device, the desired section as MongoDB last had it from us: the base of the
/// three-way merge when both sides changed `desired` while apart.
const CLOUD_BASE_TREE: &str = "cloud_desired_base";
/// One key rewritten by [`ShadowStore::probe_write`]; never read back by the gateway.
const PROBE_KEY: &[u8] = b"__iotsphere_write_probe";
const PROBE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shadow store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("shadow store: {0}")]
    Sled(#[from] sled::Error),
    #[error("shadow store: record of `{device_id}` is unreadable: {reason}")]
    Corrupt { device_id: String, reason: String },
}

/// What the store keeps per device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredShadow {
    pub document: Document,
    /// The encoding the device last used, so replies after a restart match it.
    pub encoding: Encoding,
}

/// Shadows by device id, in sled.
#[derive(Clone)]
pub struct ShadowStore {
    db: sled::Db,
    shadows: sled::Tree,
    cloud_base: sled::Tree,
}

impl ShadowStore {
    /// Opens (or creates) the store in `dir` with a bounded page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<ShadowStore, StoreError> {
        let open_error = |source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Our flush after each batch is the durability point; sled's background flush
            // every 500 ms (its default) would only add SD-card writes.
            .flush_every_ms(None)
            .open()
            .map_err(open_error)?;
        let shadows = db.open_tree(SHADOWS_TREE).map_err(open_error)?;
        let cloud_base = db.open_tree(CLOUD_BASE_TREE).map_err(open_error)?;
        Ok(ShadowStore {
            db,
            shadows,
            cloud_base,
        })
    }

    pub fn get(&self, device_id: &str) -> Result<Option<StoredShadow>, StoreError> {
        self.shadows
            .get(device_id)?
            .map(|bytes| decode(device_id, &bytes))
            .transpose()
    }

    /// Whether this gateway holds a shadow for `device_id` (no decoding).
    pub fn contains(&self, device_id: &str) -> bool {
        self.shadows.contains_key(device_id).unwrap_or(false)
    }

    /// Writes a record; durable after the next [`flush`](Self::flush).
    pub fn put(&self, device_id: &str, shadow: &StoredShadow) -> Result<(), StoreError> {
        self.shadows
            .insert(device_id, crate::codec::encode(Encoding::Cbor, shadow))?;
        Ok(())
    }

    /// Removes a record; durable after the next [`flush`](Self::flush).
    pub fn remove(&self, device_id: &str) -> Result<(), StoreError> {
        self.shadows.remove(device_id)?;
        Ok(())
    }

    /// Makes every earlier write durable (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Proves the store still takes writes: one durable write (insert + fsync) to a key
    /// outside the shadows tree. `/health` and the watchdog call it, rate-limited.
    /// The value is one page: a smaller one would land in the page sled's log last
    /// touched, which needs no new space, and a full disk would go unseen for minutes.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut value = vec![0u8; PROBE_BYTES];
        value[..16].copy_from_slice(&now.to_be_bytes());
        self.db.insert(PROBE_KEY, value)?;
        self.flush()
    }

    /// Every stored shadow, in device-id order; unreadable records are yielded as errors.
    pub fn iter(&self) -> impl Iterator<Item = Result<(String, StoredShadow), StoreError>> + '_ {
        self.shadows.iter().map(|entry| {
            let (key, bytes) = entry?;
            let device_id = String::from_utf8_lossy(&key).into_owned();
            let shadow = decode(&device_id, &bytes)?;
            Ok((device_id, shadow))
        })
    }

    /// The ids of every stored shadow, in order (keys only: nothing is decoded).
    pub fn device_ids(&self) -> Vec<String> {
        self.shadows
            .iter()
            .keys()
            .filter_map(|key| key.ok())
            .map(|key| String::from_utf8_lossy(&key).into_owned())
            .collect()
    }

    /// The desired section MongoDB last received from this gateway for `device_id`: empty
    /// when the gateway never wrote it (then all of MongoDB's desired is the cloud's).
    pub fn cloud_base(&self, device_id: &str) -> Object {
        self.cloud_base
            .get(device_id)
            .ok()
            .flatten()
            .and_then(|bytes| ciborium::from_reader(bytes.as_ref()).ok())
            .unwrap_or_default()
    }

    /// Records what MongoDB now holds as `device_id`'s desired section (after our write, or
    /// after a cloud change the shadow service applied).
    pub fn set_cloud_base(&self, device_id: &str, desired: &Object) -> Result<(), StoreError> {
        self.cloud_base
            .insert(device_id, crate::codec::encode(Encoding::Cbor, desired))?;
        Ok(())
    }

    /// The sled database, shared with the outbox so one flush covers both.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn len(&self) -> usize {
        self.shadows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shadows.is_empty()
    }
}

fn decode(device_id: &str, bytes: &[u8]) -> Result<StoredShadow, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        device_id: device_id.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(version: u64) -> StoredShadow {
        let mut document = Document {
            version,
            timestamp: 1_764_000_000,
            ..Document::default()
        };
        document
            .state
            .reported
            .insert("temperature".into(), serde_json::json!(54.5));
        StoredShadow {
            document,
            encoding: Encoding::Cbor,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = ShadowStore::open(dir.path(), 1 << 20).expect("open");
            store.put("h1", &shadow(3)).expect("put");
            store.put("h2", &shadow(1)).expect("put");
            store.remove("h2").expect("remove");
            store.flush().expect("flush");
        }
        let store = ShadowStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.get("h1").expect("get"), Some(shadow(3)));
        assert_eq!(store.get("h2").expect("get"), None);
        let all: Vec<_> = store.iter().collect::<Result<_, _>>().expect("iter");
        assert_eq!(all, vec![("h1".to_string(), shadow(3))]);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ShadowStore::open(dir.path(), 1 << 20).expect("open");
        store
            .shadows
            .insert("bad", &b"\xff\x00"[..])
            .expect("insert");
        assert!(matches!(
            store.get("bad"),
            Err(StoreError::Corrupt { device_id, .. }) if device_id == "bad"
        ));
    }
}
