//! The outbox: everything bound for the cloud, kept durably in sled until MongoDB has it.
//!
//! Invariants (what survives a kill -9 or a power cut, and why):
//! - The outbox lives in the same sled database as the shadow store. The shadow service
//!   pushes a batch's cloud writes into it *before* the batch's one flush (fsync), and
//!   answers devices only after that flush: whatever a device was told (a `document` reply)
//!   is in the outbox on disk. Telemetry is acknowledged by the broker (PUBACK) when it is
//!   read, a few milliseconds before that flush: that window is documented in the README.
//! - Shadow writes coalesce: tree `outbox_shadows` holds the latest document per device (a
//!   day offline is one write per device). Telemetry and command results are kept one by
//!   one in tree `outbox`, keyed by sled's monotonic id, so replay keeps their order.
//! - An item leaves the outbox only after MongoDB accepted it; a shadow entry only if it was
//!   not replaced meanwhile (compare-and-swap). Removal is not fsynced at once: after a
//!   crash an item may be replayed again, which is harmless — telemetry `_id` is the
//!   message id, shadow writes are conditional on the version.
//! - Bounded by `max_bytes` (`when_full`: drop the oldest item, or refuse the new one) and
//!   `max_age`; items that keep failing for a non-transient reason move to `outbox_dead`
//!   after `max_attempts`, with the error. Every drop is counted and logged.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::IVec;

pub use crate::cloud::{CommandResult, Forwarded, TelemetryRecord, ToBridge, ToCloud};
use crate::codec::{self, Encoding};
use crate::config::{OutboxSection, WhenFull};
pub use crate::reports::OutboxStats;
use crate::store::StoreError;

/// Tree names: the uplink's outbox, and the bridge's (same rules, its own queue, so a
/// MongoDB outage never holds back the upstream broker's messages and vice versa).
const UPLINK_TREES: TreeNames = TreeNames {
    items: "outbox",
    shadows: "outbox_shadows",
    dead: "outbox_dead",
};
const BRIDGE_TREES: TreeNames = TreeNames {
    items: "bridge_outbox",
    shadows: "bridge_outbox_shadows",
    dead: "bridge_outbox_dead",
};

/// The sled trees of one outbox: its items in order, its coalesced items (one per device),
/// its dead letters.
pub struct TreeNames {
    pub items: &'static str,
    pub shadows: &'static str,
    pub dead: &'static str,
}

/// What an outbox holds: each outbox has its own item type, so a reader never meets
/// another queue's items.
pub trait OutboxItem: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Where this outbox lives in the sled database.
    const TREES: TreeNames;

    /// The device whose previous item of this kind this one replaces (kept in the
    /// coalesced tree, never refused when full); `None` for an item kept in order.
    fn coalesces(&self) -> Option<&str>;
}

impl OutboxItem for ToCloud {
    const TREES: TreeNames = UPLINK_TREES;

    fn coalesces(&self) -> Option<&str> {
        match self {
            ToCloud::Shadow { device_id, .. } => Some(device_id),
            _ => None,
        }
    }
}

impl OutboxItem for ToBridge {
    const TREES: TreeNames = BRIDGE_TREES;

    fn coalesces(&self) -> Option<&str> {
        None
    }
}

/// One stored write with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<T = ToCloud> {
    pub enqueued_ms: i64,
    pub attempts: u32,
    pub write: T,
    /// The last error, for dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A stored item as the writer sees it: its key (to remove it) and its entry.
#[derive(Debug, Clone)]
pub struct Pending<T = ToCloud> {
    pub key: IVec,
    pub raw: IVec,
    pub entry: Entry<T>,
}

#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    dropped_full: AtomicU64,
    dropped_expired: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Handle to an outbox of `T` items (the uplink's by default); cheap to clone.
#[derive(Clone)]
pub struct Outbox<T: OutboxItem = ToCloud> {
    db: sled::Db,
    items: sled::Tree,
    shadows: sled::Tree,
    dead: sled::Tree,
    limits: OutboxLimits,
    counters: Arc<Counters>,
    wakeup: Arc<tokio::sync::Notify>,
    item: PhantomData<fn() -> T>,
}

#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
    pub max_attempts: u32,
}

impl From<&OutboxSection> for OutboxLimits {
    fn from(section: &OutboxSection) -> Self {
        OutboxLimits {
            max_bytes: section.max_bytes,
            max_age: section
                .max_age()
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            when_full: section.when_full,
            max_attempts: section.max_attempts,
        }
    }
}

impl<T: OutboxItem> Outbox<T> {
    /// Opens the trees of `T`'s outbox ([`OutboxItem::TREES`]) in the store's sled database.
    pub fn open(db: &sled::Db, limits: OutboxLimits) -> Result<Self, StoreError> {
        let names = &T::TREES;
        let outbox = Outbox {
            items: db.open_tree(names.items)?,
            shadows: db.open_tree(names.shadows)?,
            dead: db.open_tree(names.dead)?,
            db: db.clone(),
            limits,
            counters: Arc::default(),
            wakeup: Arc::default(),
            item: PhantomData,
        };
        let bytes: u64 = [&outbox.items, &outbox.shadows]
            .into_iter()
            .flat_map(|tree| tree.iter().values())
            .filter_map(Result::ok)
            .map(|v| v.len() as u64)
            .sum();
        outbox.counters.bytes.store(bytes, Ordering::Relaxed);
        Ok(outbox)
    }

    /// Adds a write; durable with the next flush of the database. Returns false when the
    /// outbox is full and `when_full = "reject_new"` refused it (counted and logged;
    /// shadow writes are never refused).
    pub fn push(&self, write: T) -> Result<bool, StoreError> {
        let entry = Entry {
            enqueued_ms: now_ms(),
            attempts: 0,
            write,
            error: None,
        };
        let bytes = codec::encode(Encoding::Cbor, &entry);
        let size = bytes.len() as u64;
        // Coalesced items are bounded by the number of devices: never refused.
        let coalesces = entry.write.coalesces();
        if !self.make_room(size, coalesces.is_none())? {
            return Ok(false);
        }
        match coalesces {
            Some(device_id) => {
                if let Some(old) = self.shadows.insert(device_id.as_bytes(), bytes)? {
                    self.counters
                        .bytes
                        .fetch_sub(old.len() as u64, Ordering::Relaxed);
                }
            }
            None => {
                let key = self.db.generate_id()?.to_be_bytes();
                self.items.insert(key, bytes)?;
            }
        }
        self.counters.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// Drops the oldest items until `size` more bytes fit (or refuses, per `when_full`).
    fn make_room(&self, size: u64, refusable: bool) -> Result<bool, StoreError> {
        while self.counters.bytes.load(Ordering::Relaxed) + size > self.limits.max_bytes {
            if self.limits.when_full == WhenFull::RejectNew && refusable {
                self.count_drop(
                    &self.counters.dropped_full,
                    "the outbox is full (max_bytes); new item refused",
                );
                return Ok(false);
            }
            match self.items.pop_min()? {
                Some((_, old)) => {
                    self.counters
                        .bytes
                        .fetch_sub(old.len() as u64, Ordering::Relaxed);
                    self.count_drop(
                        &self.counters.dropped_full,
                        "the outbox is full (max_bytes); oldest item dropped",
                    );
                }
                // Only coalesced shadows left (one per device): keep them, go over the bound.
                None => break,
            }
        }
        Ok(true)
    }

    /// Counts a drop; logs the first and then every thousandth, so a long outage does not
    /// turn into a log flood.
    fn count_drop(&self, counter: &AtomicU64, reason: &str) {
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if count == 1 || count % 1000 == 0 {
            tracing::warn!(dropped = count, "{reason}");
        }
    }

    /// Wakes the writer: new items are durable.
    pub fn wake(&self) {
        self.wakeup.notify_one();
    }

    /// Waits for [`wake`](Self::wake) or `timeout`, whichever comes first.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wakeup.notified()).await;
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.shadows.is_empty()
    }

    /// The coalesced shadow writes waiting, in device order.
    pub fn pending_shadows(&self) -> Result<Vec<Pending<T>>, StoreError> {
        self.shadows
            .iter()
            .map(|entry| {
                let (key, raw) = entry?;
                Ok(Pending {
                    entry: decode_entry(&key, &raw)?,
                    key,
                    raw,
                })
            })
            .collect()
    }

    /// Removes a shadow write unless a newer one replaced it meanwhile.
    pub fn remove_shadow(&self, pending: &Pending<T>) -> Result<(), StoreError> {
        if self
            .shadows
            .compare_and_swap(&pending.key, Some(&pending.raw), None as Option<&[u8]>)?
            .is_ok()
        {
            self.counters
                .bytes
                .fetch_sub(pending.raw.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Up to `max` oldest items; items older than `max_age` are dropped on the way.
    pub fn next_items(&self, max: usize) -> Result<Vec<Pending<T>>, StoreError> {
        self.next_items_after(None, max)
    }

    /// Like [`next_items`](Self::next_items), but only items after `after` (a key of an
    /// item already handed out and not yet removed).
    pub fn next_items_after(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<Pending<T>>, StoreError> {
        let oldest_allowed =
            now_ms() - i64::try_from(self.limits.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(max);
        if max == 0 {
            return Ok(out);
        }
        let range = match after {
            Some(key) => self
                .items
                .range::<&[u8], _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)),
            None => self.items.iter(),
        };
        for entry in range {
            let (key, raw) = entry?;
            let entry = decode_entry(&key, &raw)?;
            if entry.enqueued_ms < oldest_allowed {
                self.remove_item(&Pending { key, raw, entry })?;
                self.count_drop(
                    &self.counters.dropped_expired,
                    "an outbox item is older than max_age; dropped",
                );
                continue;
            }
            out.push(Pending { key, raw, entry });
            if out.len() == max {
                break;
            }
        }
        Ok(out)
    }

    pub fn remove_item(&self, pending: &Pending<T>) -> Result<(), StoreError> {
        if self.items.remove(&pending.key)?.is_some() {
            self.counters
                .bytes
                .fetch_sub(pending.raw.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Records a non-transient failure; after `max_attempts` the item moves to the dead
    /// letters with its error. Returns true when it did.
    pub fn fail_item(&self, pending: &Pending<T>, error: &str) -> Result<bool, StoreError> {
        let mut entry = pending.entry.clone();
        entry.attempts += 1;
        entry.error = Some(error.to_string());
        let bytes = codec::encode(Encoding::Cbor, &entry);
        if entry.attempts >= self.limits.max_attempts {
            self.dead.insert(&pending.key, bytes)?;
            self.remove_item(pending)?;
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                error,
                attempts = entry.attempts,
                "an outbox item keeps failing; moved to the dead letters"
            );
            return Ok(true);
        }
        // The entry grew by its error and count: the byte counter follows what is stored,
        // or the dead letter's removal would later subtract more than was ever added.
        let size = bytes.len() as u64;
        let old = self.items.insert(&pending.key, bytes)?;
        self.counters.bytes.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = old {
            self.counters
                .bytes
                .fetch_sub(old.len() as u64, Ordering::Relaxed);
        }
        Ok(false)
    }

    /// Persists removals now (cheaply: not an fsync on every filesystem; see module doc).
    pub async fn flush_removals(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn stats(&self) -> OutboxStats {
        let oldest_age_secs = self
            .items
            .first()
            .ok()
            .flatten()
            .and_then(|(key, raw)| decode_entry::<T>(&key, &raw).ok())
            .map(|entry| u64::try_from((now_ms() - entry.enqueued_ms).max(0) / 1000).unwrap_or(0));
        OutboxStats {
            items: self.items.len(),
            shadows: self.shadows.len(),
            dead: self.dead.len(),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            oldest_age_secs,
            dropped_full: self.counters.dropped_full.load(Ordering::Relaxed),
            dropped_expired: self.counters.dropped_expired.load(Ordering::Relaxed),
            dead_lettered: self.counters.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Up to `limit` entries as JSON (shadows, then items, then dead letters), for the CLI.
    pub fn list(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        for (name, tree) in [
            ("shadow", &self.shadows),
            ("item", &self.items),
            ("dead", &self.dead),
        ] {
            for entry in tree.iter() {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (key, raw) = entry?;
                let entry = decode_entry::<T>(&key, &raw)?;
                out.push(serde_json::json!({"tree": name, "entry": entry}));
            }
        }
        Ok(out)
    }

    /// Deletes everything waiting (or only the dead letters); returns how many entries.
    pub fn purge(&self, dead_only: bool) -> Result<usize, StoreError> {
        let mut count = self.dead.len();
        self.dead.clear()?;
        if !dead_only {
            count += self.items.len() + self.shadows.len();
            self.items.clear()?;
            self.shadows.clear()?;
            self.counters.bytes.store(0, Ordering::Relaxed);
        }
        self.db.flush()?;
        Ok(count)
    }
}

fn decode_entry<T: OutboxItem>(key: &[u8], raw: &[u8]) -> Result<Entry<T>, StoreError> {
    ciborium::from_reader(raw).map_err(|e| StoreError::Corrupt {
        device_id: format!("outbox entry {}", String::from_utf8_lossy(key)),
        reason: e.to_string(),
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::Document;
    use crate::telemetry::Reading;

    fn limits(max_bytes: u64, when_full: WhenFull) -> OutboxLimits {
        OutboxLimits {
            max_bytes,
            max_age: Duration::from_secs(3600),
            when_full,
            max_attempts: 3,
        }
    }

    fn reading(device_id: &str, seq: i64) -> ToCloud {
        ToCloud::Telemetry(TelemetryRecord {
            id: format!("{device_id}-{seq}"),
            device_id: device_id.into(),
            kind: "temperature".into(),
            reading: Reading {
                value: serde_json::json!(50),
                ts_ms: None,
                seq: Some(seq),
                unit: None,
                message_id: None,
            },
            received_ms: 0,
        })
    }

    fn shadow(device_id: &str, version: u64) -> ToCloud {
        ToCloud::Shadow {
            device_id: device_id.into(),
            document: Some(Box::new(Document {
                version,
                ..Document::default()
            })),
        }
    }

    fn forward(seq: i64) -> ToBridge {
        ToBridge::Forward(Forwarded {
            topic: format!("iotsphere/devices/h1/telemetry/{seq}"),
            payload: b"{}".to_vec(),
        })
    }

    fn open(dir: &std::path::Path, limits: OutboxLimits) -> Outbox {
        let db = sled::open(dir).expect("sled");
        Outbox::open(&db, limits).expect("outbox")
    }

    #[test]
    fn shadows_coalesce_and_items_keep_their_order_across_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let outbox = open(dir.path(), limits(1 << 20, WhenFull::DropOldest));
            for version in 1..=100 {
                outbox.push(shadow("h1", version)).expect("push");
            }
            for seq in 0..10 {
                outbox.push(reading("h1", seq)).expect("push");
            }
            outbox.db.flush().expect("flush");
        }
        let outbox = open(dir.path(), limits(1 << 20, WhenFull::DropOldest));
        let shadows = outbox.pending_shadows().expect("shadows");
        assert_eq!(shadows.len(), 1, "a hundred writes, one pending");
        assert!(
            matches!(&shadows[0].entry.write, ToCloud::Shadow { document: Some(d), .. } if d.version == 100)
        );
        let seqs: Vec<i64> = outbox
            .next_items(100)
            .expect("items")
            .iter()
            .filter_map(|p| match &p.entry.write {
                ToCloud::Telemetry(t) => t.reading.seq,
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        assert!(outbox.stats().bytes > 0);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_or_refuses_the_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), limits(2_000, WhenFull::DropOldest));
        for seq in 0..100 {
            assert!(outbox.push(reading("h1", seq)).expect("push"));
        }
        let stats = outbox.stats();
        assert!(stats.bytes <= 2_000, "{stats:?}");
        assert!(stats.dropped_full > 0);
        let items = outbox.next_items(1000).expect("items");
        let last = items.last().map(|p| p.entry.write.clone());
        assert_eq!(last, Some(reading("h1", 99)), "the newest are kept");

        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), limits(2_000, WhenFull::RejectNew));
        let accepted = (0..100)
            .filter(|seq| outbox.push(reading("h1", *seq)).expect("push"))
            .count();
        assert!(accepted < 100);
        assert_eq!(outbox.stats().dropped_full, (100 - accepted) as u64);
        let first = outbox
            .next_items(1)
            .expect("items")
            .first()
            .map(|p| p.entry.write.clone());
        assert_eq!(first, Some(reading("h1", 0)), "the oldest are kept");
    }

    #[test]
    fn a_replaced_shadow_is_not_removed_and_poison_items_become_dead_letters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), limits(1 << 20, WhenFull::DropOldest));
        outbox.push(shadow("h1", 1)).expect("push");
        let pending = outbox.pending_shadows().expect("shadows").remove(0);
        outbox.push(shadow("h1", 2)).expect("push");
        outbox.remove_shadow(&pending).expect("remove");
        assert_eq!(
            outbox.pending_shadows().expect("shadows").len(),
            1,
            "version 2 is still waiting"
        );

        outbox.push(reading("h1", 1)).expect("push");
        for attempt in 1..=3 {
            let item = outbox.next_items(1).expect("items").remove(0);
            assert_eq!(item.entry.attempts, attempt - 1);
            let dead = outbox
                .fail_item(&item, "document failed validation")
                .expect("fail");
            assert_eq!(dead, attempt == 3);
        }
        let stats = outbox.stats();
        assert_eq!((stats.items, stats.dead, stats.dead_lettered), (0, 1, 1));
        let listed = outbox.list(10).expect("list");
        assert!(listed
            .iter()
            .any(|e| e["tree"] == "dead" && e["entry"]["error"] == "document failed validation"));
        assert_eq!(outbox.purge(true).expect("purge"), 1);
    }

    #[test]
    fn the_bridge_outbox_is_its_own_queue_read_after_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let uplink =
            Outbox::<ToCloud>::open(&db, limits(1 << 20, WhenFull::DropOldest)).expect("outbox");
        let bridge =
            Outbox::<ToBridge>::open(&db, limits(1 << 20, WhenFull::DropOldest)).expect("outbox");
        for seq in 0..5 {
            bridge.push(forward(seq)).expect("push");
        }
        assert!(uplink.is_empty());
        let first = bridge.next_items(2).expect("items");
        let rest = bridge
            .next_items_after(Some(&first[1].key), 10)
            .expect("items");
        let after: Vec<ToBridge> = rest.iter().map(|p| p.entry.write.clone()).collect();
        assert_eq!(after, (2..5).map(forward).collect::<Vec<_>>());
        assert!(bridge.next_items_after(None, 0).expect("items").is_empty());
    }

    #[test]
    fn the_bytes_count_follows_failed_and_dead_lettered_items() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open(dir.path(), limits(1 << 20, WhenFull::DropOldest));
        outbox.push(reading("h1", 1)).expect("push");
        for _ in 0..3 {
            let item = outbox.next_items(1).expect("items").remove(0);
            outbox
                .fail_item(&item, "document failed validation")
                .expect("fail");
            let stored: u64 = outbox
                .items
                .iter()
                .values()
                .map(|v| v.expect("value").len() as u64)
                .sum();
            assert_eq!(outbox.stats().bytes, stored, "the count is what is stored");
        }
        assert_eq!(outbox.stats().dead, 1);
        assert_eq!(outbox.stats().bytes, 0, "nothing waits: no underflow");
    }

    #[test]
    fn a_bridge_entry_is_stored_as_the_forward_variant_of_before() {
        let entry = Entry {
            enqueued_ms: 1,
            attempts: 0,
            write: forward(1),
            error: None,
        };
        let raw = codec::encode(Encoding::Cbor, &entry);
        let value: ciborium::Value = ciborium::from_reader(raw.as_slice()).expect("cbor");
        let write = value
            .as_map()
            .and_then(|map| map.iter().find(|(k, _)| k.as_text() == Some("write")))
            .and_then(|(_, write)| write.as_map())
            .expect("a write map");
        assert_eq!(write.len(), 1);
        assert_eq!(write[0].0.as_text(), Some("Forward"), "tagged as before");
    }

    #[test]
    fn expired_items_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut limits = limits(1 << 20, WhenFull::DropOldest);
        limits.max_age = Duration::ZERO;
        let outbox = open(dir.path(), limits);
        outbox.push(reading("h1", 1)).expect("push");
        std::thread::sleep(Duration::from_millis(5));
        assert!(outbox.next_items(10).expect("items").is_empty());
        assert_eq!(outbox.stats().dropped_expired, 1);
    }
}
