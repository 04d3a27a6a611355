//! The change history ("oplog"): capped list of change events ordered by cluster time.

use std::collections::VecDeque;

use bson::{doc, Binary, Bson, DateTime, Document, Timestamp};
use tokio::sync::watch;

/// Kind of a recorded change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    Insert,
    Update,
    Replace,
    Delete,
    Drop,
    DropDatabase,
}

impl OpType {
    pub fn name(self) -> &'static str {
        match self {
            OpType::Insert => "insert",
            OpType::Update => "update",
            OpType::Replace => "replace",
            OpType::Delete => "delete",
            OpType::Drop => "drop",
            OpType::DropDatabase => "dropDatabase",
        }
    }

    fn from_name(s: &str) -> Option<OpType> {
        Some(match s {
            "insert" => OpType::Insert,
            "update" => OpType::Update,
            "replace" => OpType::Replace,
            "delete" => OpType::Delete,
            "drop" => OpType::Drop,
            "dropDatabase" => OpType::DropDatabase,
            _ => return None,
        })
    }
}

/// One change, as recorded at write time.
#[derive(Debug, Clone)]
pub struct Event {
    pub ts: Timestamp,
    pub wall: DateTime,
    pub op: OpType,
    pub db: String,
    /// Empty for `dropDatabase`.
    pub coll: String,
    pub uuid: Option<Binary>,
    /// `documentKey` for document events.
    pub key: Option<Document>,
    /// Post-image: always for insert/replace; for updates only with
    /// `changeStreamPreAndPostImages` enabled on the collection.
    pub post: Option<Document>,
    /// Pre-image (update/replace/delete) with `changeStreamPreAndPostImages` enabled.
    pub pre: Option<Document>,
    /// Rendered `updateDescription` for updates.
    pub update: Option<Document>,
}

impl Event {
    pub fn to_doc(&self) -> Document {
        let mut d = doc! {
            "ts": self.ts,
            "wall": self.wall,
            "op": self.op.name(),
            "db": self.db.clone(),
            "coll": self.coll.clone(),
        };
        let opt = |d: &mut Document, k: &str, v: Option<Bson>| {
            if let Some(v) = v {
                d.insert(k, v);
            }
        };
        opt(&mut d, "uuid", self.uuid.clone().map(Bson::Binary));
        opt(&mut d, "key", self.key.clone().map(Bson::Document));
        opt(&mut d, "post", self.post.clone().map(Bson::Document));
        opt(&mut d, "pre", self.pre.clone().map(Bson::Document));
        opt(&mut d, "update", self.update.clone().map(Bson::Document));
        d
    }

    pub fn from_doc(d: &Document) -> Option<Event> {
        let sub = |k: &str| d.get_document(k).ok().cloned();
        Some(Event {
            ts: d.get_timestamp("ts").ok()?,
            wall: *d.get_datetime("wall").ok()?,
            op: OpType::from_name(d.get_str("op").ok()?)?,
            db: d.get_str("db").ok()?.to_string(),
            coll: d.get_str("coll").ok()?.to_string(),
            uuid: d.get_binary_generic("uuid").ok().map(|b| Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes: b.clone(),
            }),
            key: sub("key"),
            post: sub("post"),
            pre: sub("pre"),
            update: sub("update"),
        })
    }
}

/// Total order on timestamps.
pub fn ts_key(t: Timestamp) -> (u32, u32) {
    (t.time, t.increment)
}

/// The capped change history plus the cluster clock.
#[derive(Debug)]
pub struct Oplog {
    /// Random at the first start of a data directory (or of an in-memory double): tells this
    /// history's resume tokens from another deployment's.
    deployment: u64,
    events: VecDeque<Event>,
    cap: usize,
    /// Every event with a cluster time after this one is retained, none at or before it.
    history_start: Timestamp,
    /// Whether events were ever discarded because of the cap.
    trimmed: bool,
    last: Timestamp,
    notify: watch::Sender<u64>,
}

impl Oplog {
    pub fn new(cap: usize, start: Timestamp) -> Oplog {
        let id = bson::Uuid::new().bytes();
        Oplog {
            deployment: u64::from_le_bytes([
                id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7],
            ]),
            events: VecDeque::new(),
            cap: cap.max(1),
            history_start: start,
            trimmed: false,
            last: start,
            notify: watch::channel(0).0,
        }
    }

    /// Restores identity (kept random if the snapshot predates it), clock and history bounds
    /// from a persisted snapshot.
    pub fn restore(
        &mut self,
        deployment: Option<u64>,
        history_start: Timestamp,
        trimmed: bool,
        last: Timestamp,
    ) {
        if let Some(d) = deployment {
            self.deployment = d;
        }
        self.history_start = history_start;
        self.trimmed = trimmed;
        if ts_key(last) > ts_key(self.last) {
            self.last = last;
        }
    }

    pub fn deployment(&self) -> u64 {
        self.deployment
    }

    pub fn history_start(&self) -> Timestamp {
        self.history_start
    }

    pub fn trimmed(&self) -> bool {
        self.trimmed
    }

    /// The current cluster time (the last assigned operation time).
    pub fn now(&self) -> Timestamp {
        self.last
    }

    /// Allocates the next cluster time: wall-clock seconds, increment within a second.
    pub fn next_ts(&mut self) -> Timestamp {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self.last = if secs > self.last.time {
            Timestamp {
                time: secs,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last.time,
                increment: self.last.increment.saturating_add(1),
            }
        };
        self.last
    }

    /// Appends an event (its `ts` must be the newest) and wakes waiting change streams.
    pub fn push(&mut self, ev: Event) {
        if ts_key(ev.ts) > ts_key(self.last) {
            self.last = ev.ts;
        }
        self.events.push_back(ev);
        while self.events.len() > self.cap {
            if let Some(old) = self.events.pop_front() {
                self.history_start = old.ts;
                self.trimmed = true;
            }
        }
        self.notify.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The event recorded at exactly `ts`.
    pub fn get(&self, ts: Timestamp) -> Option<&Event> {
        let i = self.events.partition_point(|e| ts_key(e.ts) < ts_key(ts));
        self.events.get(i).filter(|e| ts_key(e.ts) == ts_key(ts))
    }

    /// Events with a cluster time after `ts` (or at/after it when `inclusive`).
    pub fn since(&self, ts: Timestamp, inclusive: bool) -> impl Iterator<Item = &Event> {
        let i = self.events.partition_point(|e| {
            if inclusive {
                ts_key(e.ts) < ts_key(ts)
            } else {
                ts_key(e.ts) <= ts_key(ts)
            }
        });
        self.events.range(i..)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }
}
