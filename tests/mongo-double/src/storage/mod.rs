//! Databases, collections, indexes and the change history, with optional persistence.
//!
//! Every mutation goes through [`Store`], which refuses `_id`s MongoDB would not store,
//! enforces unique indexes, records the change event and queues the persistence records;
//! [`Store::flush`] writes them after each command.

pub mod oplog;
mod persist;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp};

use crate::error::{code, CmdError, CmdResult};
use crate::query::compare::{docs_identical, key_bytes};
use crate::query::matcher::Filter;
use crate::query::path;
use crate::update::UpdateDesc;
use oplog::{Event, OpType, Oplog};
use persist::Persist;

/// An index definition (enforced when unique; otherwise only recorded).
#[derive(Debug, Clone)]
pub struct Index {
    pub name: String,
    pub key: Document,
    unique: bool,
    sparse: bool,
    partial: Option<Filter>,
    /// The definition as `listIndexes` reports it.
    pub spec: Document,
    /// Key -> record id, maintained for unique indexes other than `_id_`.
    entries: HashMap<Vec<u8>, u64>,
}

impl Index {
    fn id_index() -> Index {
        Index {
            name: "_id_".into(),
            key: doc! {"_id": 1},
            unique: true,
            sparse: false,
            partial: None,
            spec: doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            entries: HashMap::new(),
        }
    }

    /// Builds an index from a `createIndexes` entry.
    pub fn from_spec(spec: &Document) -> CmdResult<Index> {
        let key = match spec.get("key") {
            Some(Bson::Document(k)) if !k.is_empty() => k.clone(),
            _ => {
                return Err(CmdError::new(
                    code::CANNOT_CREATE_INDEX_KEY,
                    "Index key must be a non-empty object",
                ))
            }
        };
        for (f, v) in &key {
            let ok = match v {
                Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
                    crate::query::compare::truthy(v)
                }
                Bson::String(s) => matches!(
                    s.as_str(),
                    "text" | "2d" | "2dsphere" | "hashed" | "wildcard"
                ),
                _ => false,
            };
            if !ok {
                return Err(CmdError::new(
                    code::CANNOT_CREATE_INDEX_KEY,
                    format!("Values in the index key pattern can only be numbers or strings (field {f})"),
                ));
            }
        }
        let name = match spec.get("name") {
            Some(Bson::String(n)) if !n.is_empty() => n.clone(),
            _ => {
                return Err(CmdError::failed_to_parse(
                    "The 'name' field is a required property of an index specification",
                ))
            }
        };
        let partial = match spec.get("partialFilterExpression") {
            Some(Bson::Document(f)) => Some(Filter::parse(f)?),
            Some(_) => {
                return Err(CmdError::type_mismatch(
                    "partialFilterExpression must be an object",
                ))
            }
            None => None,
        };
        let flag = |k: &str| spec.get(k).is_some_and(crate::query::compare::truthy);
        let mut normalized = doc! {"v": 2, "key": key.clone(), "name": name.clone()};
        for (k, v) in spec {
            if !matches!(k.as_str(), "v" | "key" | "name" | "ns") {
                normalized.insert(k.clone(), v.clone());
            }
        }
        Ok(Index {
            unique: flag("unique"),
            sparse: flag("sparse"),
            name,
            key,
            partial,
            spec: normalized,
            entries: HashMap::new(),
        })
    }

    fn tracks_entries(&self) -> bool {
        self.unique && self.name != "_id_"
    }

    /// Same definition apart from the name?
    fn same_options(&self, other: &Index) -> bool {
        let strip = |d: &Document| {
            let mut d = d.clone();
            d.remove("name");
            d
        };
        docs_identical(&strip(&self.spec), &strip(&other.spec))
    }

    /// The index key of `doc`, or `None` when the document is not indexed (sparse/partial).
    fn key_of(&self, doc: &Document) -> Option<(Vec<u8>, Document)> {
        if let Some(f) = &self.partial {
            if !f.matches(doc) {
                return None;
            }
        }
        let mut value = Document::new();
        let mut any = false;
        for field in self.key.keys() {
            let v = path::get(doc, field).cloned();
            any |= v.is_some();
            value.insert(field.clone(), v.unwrap_or(Bson::Null));
        }
        if self.sparse && !any {
            return None;
        }
        Some((key_bytes(&Bson::Document(value.clone())), value))
    }
}

/// A collection: documents in insertion order plus an `_id` lookup table.
#[derive(Debug, Clone)]
pub struct Collection {
    pub uuid: Binary,
    pub options: Document,
    docs: BTreeMap<u64, Document>,
    by_id: HashMap<Vec<u8>, u64>,
    next_rid: u64,
    pub indexes: Vec<Index>,
}

impl Collection {
    fn new(options: Document, uuid: Option<Binary>) -> Collection {
        Collection {
            uuid: uuid.unwrap_or_else(|| Binary {
                subtype: BinarySubtype::Uuid,
                bytes: bson::Uuid::new().bytes().to_vec(),
            }),
            options,
            docs: BTreeMap::new(),
            by_id: HashMap::new(),
            next_rid: 1,
            indexes: vec![Index::id_index()],
        }
    }

    /// Documents with their record ids, in natural (insertion) order.
    pub fn docs(&self) -> impl Iterator<Item = (u64, &Document)> {
        self.docs.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn get(&self, rid: u64) -> Option<&Document> {
        self.docs.get(&rid)
    }

    /// Documents matching `filter` in natural order (via the `_id` table when the filter
    /// pins `_id`).
    pub fn matching<'a>(&'a self, filter: &Filter) -> Vec<(u64, &'a Document)> {
        if let Some(ids) = filter.id_values() {
            let mut rids: Vec<u64> = ids
                .iter()
                .filter_map(|id| self.by_id.get(&key_bytes(id)).copied())
                .collect();
            rids.sort_unstable();
            rids.dedup();
            return rids
                .into_iter()
                .filter_map(|r| self.docs.get(&r).map(|d| (r, d)))
                .filter(|(_, d)| filter.matches(d))
                .collect();
        }
        self.docs().filter(|(_, d)| filter.matches(d)).collect()
    }

    /// The document whose `_id` equals `id`.
    pub fn find_by_id(&self, id: &Bson) -> Option<&Document> {
        self.by_id
            .get(&key_bytes(id))
            .and_then(|rid| self.docs.get(rid))
    }

    /// Whether `changeStreamPreAndPostImages: {enabled: true}` is set.
    pub fn images_enabled(&self) -> bool {
        self.options
            .get_document("changeStreamPreAndPostImages")
            .ok()
            .and_then(|d| d.get_bool("enabled").ok())
            .unwrap_or(false)
    }

    /// Checks unique indexes for `doc` (ignoring record `except`).
    fn check_unique(&self, ns: &str, doc: &Document, except: Option<u64>) -> CmdResult<()> {
        for idx in self.indexes.iter().filter(|i| i.unique) {
            let (key, value) = match idx.key_of(doc) {
                Some(k) => k,
                None => continue,
            };
            let holder = if idx.name == "_id_" {
                self.by_id
                    .get(&key_bytes(doc.get("_id").unwrap_or(&Bson::Null)))
            } else {
                idx.entries.get(&key)
            };
            if holder.is_some_and(|r| Some(*r) != except) {
                return Err(dup_key_error(ns, idx, &value));
            }
        }
        Ok(())
    }

    /// Adds an index, filling its key table; fails on duplicates for a unique index.
    fn add_index(&mut self, ns: &str, mut idx: Index) -> CmdResult<()> {
        if idx.tracks_entries() {
            for (rid, d) in &self.docs {
                if let Some((k, v)) = idx.key_of(d) {
                    if idx.entries.insert(k, *rid).is_some() {
                        return Err(dup_key_error(ns, &idx, &v));
                    }
                }
            }
        }
        self.indexes.retain(|i| i.name != idx.name);
        self.indexes.push(idx);
        Ok(())
    }

    /// Inserts or replaces (by `_id`) a document.
    fn put(&mut self, doc: Document) -> u64 {
        let id_key = key_bytes(doc.get("_id").unwrap_or(&Bson::Null));
        let rid = match self.by_id.get(&id_key) {
            Some(rid) => *rid,
            None => {
                let rid = self.next_rid;
                self.next_rid += 1;
                self.by_id.insert(id_key, rid);
                rid
            }
        };
        self.replace(rid, doc);
        rid
    }

    /// Replaces record `rid` (same `_id`), keeping unique-index tables in step; returns the
    /// previous version.
    fn replace(&mut self, rid: u64, doc: Document) -> Option<Document> {
        let new_keys: Vec<Option<Vec<u8>>> = self
            .indexes
            .iter()
            .map(|i| {
                i.tracks_entries()
                    .then(|| i.key_of(&doc).map(|(k, _)| k))
                    .flatten()
            })
            .collect();
        let old = self.docs.insert(rid, doc);
        for (idx, new_key) in self.indexes.iter_mut().zip(new_keys) {
            if let Some((k, _)) = old.as_ref().and_then(|o| idx.key_of(o)) {
                if Some(&k) != new_key.as_ref() && idx.entries.get(&k) == Some(&rid) {
                    idx.entries.remove(&k);
                }
            }
            if let Some(k) = new_key {
                idx.entries.insert(k, rid);
            }
        }
        old
    }

    fn remove(&mut self, rid: u64) -> Option<Document> {
        let doc = self.docs.remove(&rid)?;
        self.by_id
            .remove(&key_bytes(doc.get("_id").unwrap_or(&Bson::Null)));
        for idx in self.indexes.iter_mut().filter(|i| i.tracks_entries()) {
            if let Some((k, _)) = idx.key_of(&doc) {
                if idx.entries.get(&k) == Some(&rid) {
                    idx.entries.remove(&k);
                }
            }
        }
        Some(doc)
    }
}

fn dup_key_error(ns: &str, idx: &Index, value: &Document) -> CmdError {
    let shown: Vec<String> = value.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut e = CmdError::new(
        code::DUPLICATE_KEY,
        format!(
            "E11000 duplicate key error collection: {ns} index: {} dup key: {{ {} }}",
            idx.name,
            shown.join(", ")
        ),
    );
    e.extra = Some(Box::new(
        doc! {"keyPattern": idx.key.clone(), "keyValue": value.clone()},
    ));
    e
}

/// All data of one server.
#[derive(Debug)]
pub struct Store {
    dbs: BTreeMap<String, BTreeMap<String, Collection>>,
    pub oplog: Oplog,
    persist: Option<Persist>,
    pending: Vec<Document>,
}

fn now_ts() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp {
        time: u32::try_from(secs).unwrap_or(u32::MAX),
        increment: 0,
    }
}

impl Store {
    /// Opens an in-memory store, or loads (and compacts) the one in `dbpath`.
    pub fn open(dbpath: Option<&Path>, oplog_size: usize) -> std::io::Result<Store> {
        let mut store = Store {
            dbs: BTreeMap::new(),
            oplog: Oplog::new(oplog_size, now_ts()),
            persist: None,
            pending: Vec::new(),
        };
        if let Some(dir) = dbpath {
            let (lock, records) = persist::open(dir)?;
            for r in &records {
                store.replay(r);
            }
            let snapshot = store.snapshot();
            store.persist = Some(Persist::rewrite(dir, lock, &snapshot)?);
        }
        Ok(store)
    }

    fn replay(&mut self, r: &Document) {
        let s = |k: &str| r.get_str(k).unwrap_or_default().to_string();
        match r.get_str("op").unwrap_or_default() {
            "meta" => {
                if let (Ok(h), Ok(l)) = (r.get_timestamp("historyStart"), r.get_timestamp("lastTs"))
                {
                    self.oplog.restore(
                        r.get_i64("deployment")
                            .ok()
                            .map(|d| u64::from_ne_bytes(d.to_ne_bytes())),
                        h,
                        r.get_bool("trimmed").unwrap_or(false),
                        l,
                    );
                }
            }
            "create" => {
                let uuid = r.get_binary_generic("uuid").ok().map(|b| Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: b.clone(),
                });
                let options = r.get_document("options").cloned().unwrap_or_default();
                self.dbs
                    .entry(s("db"))
                    .or_default()
                    .insert(s("coll"), Collection::new(options, uuid));
            }
            "options" => {
                if let Some(c) = self.coll_mut(&s("db"), &s("coll")) {
                    c.options = r.get_document("options").cloned().unwrap_or_default();
                }
            }
            "index" => {
                if let Some(idx) = r
                    .get_document("spec")
                    .ok()
                    .and_then(|d| Index::from_spec(d).ok())
                {
                    if let Some(c) = self.coll_mut(&s("db"), &s("coll")) {
                        let _ = c.add_index("", idx);
                    }
                }
            }
            "dropIndex" => {
                if let Some(c) = self.coll_mut(&s("db"), &s("coll")) {
                    let name = s("name");
                    c.indexes.retain(|i| i.name != name);
                }
            }
            "put" => {
                if let (Some(c), Ok(d)) = (
                    self.dbs
                        .get_mut(&s("db"))
                        .and_then(|d| d.get_mut(&s("coll"))),
                    r.get_document("doc"),
                ) {
                    c.put(d.clone());
                }
            }
            "del" => {
                if let (Some(c), Some(id)) = (
                    self.dbs
                        .get_mut(&s("db"))
                        .and_then(|d| d.get_mut(&s("coll"))),
                    r.get("id"),
                ) {
                    if let Some(rid) = c.by_id.get(&key_bytes(id)).copied() {
                        c.remove(rid);
                    }
                }
            }
            "drop" => {
                if let Some(d) = self.dbs.get_mut(&s("db")) {
                    d.remove(&s("coll"));
                }
            }
            "dropDatabase" => {
                self.dbs.remove(&s("db"));
            }
            "event" => {
                if let Some(ev) = r.get_document("ev").ok().and_then(Event::from_doc) {
                    if self.oplog.get(ev.ts).is_none() {
                        self.oplog.push(ev);
                    }
                }
            }
            _ => {}
        }
    }

    /// The full state as persistence records.
    fn snapshot(&self) -> Vec<Document> {
        let mut out = vec![doc! {
            "op": "meta",
            "deployment": i64::from_ne_bytes(self.oplog.deployment().to_ne_bytes()),
            "historyStart": self.oplog.history_start(),
            "trimmed": self.oplog.trimmed(),
            "lastTs": self.oplog.now(),
        }];
        for (db, colls) in &self.dbs {
            for (name, c) in colls {
                out.push(doc! {"op": "create", "db": db, "coll": name, "uuid": c.uuid.clone(), "options": c.options.clone()});
                for idx in c.indexes.iter().filter(|i| i.name != "_id_") {
                    out.push(
                        doc! {"op": "index", "db": db, "coll": name, "spec": idx.spec.clone()},
                    );
                }
                for d in c.docs.values() {
                    out.push(doc! {"op": "put", "db": db, "coll": name, "doc": d.clone()});
                }
            }
        }
        out.extend(
            self.oplog
                .iter()
                .map(|e| doc! {"op": "event", "ev": e.to_doc()}),
        );
        out
    }

    fn log(&mut self, rec: Document) {
        if self.persist.is_some() {
            self.pending.push(rec);
        }
    }

    /// Writes the records queued by the last command (fsync when `sync`).
    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        match &mut self.persist {
            Some(p) => p.append(&pending, sync),
            None => Ok(()),
        }
    }

    /// Syncs and releases the data directory (the store stays usable, in memory only).
    pub fn close(&mut self) -> std::io::Result<()> {
        let r = self.flush(true);
        self.persist = None;
        r
    }

    pub fn collection(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db).and_then(|d| d.get(coll))
    }

    fn coll_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db).and_then(|d| d.get_mut(coll))
    }

    /// Names of databases that hold at least one collection.
    pub fn database_names(&self) -> Vec<String> {
        self.dbs
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn collections(&self, db: &str) -> Vec<(&String, &Collection)> {
        self.dbs
            .get(db)
            .map(|d| d.iter().collect())
            .unwrap_or_default()
    }

    /// Creates a collection; error 48 when it exists.
    pub fn create_collection(&mut self, db: &str, coll: &str, options: Document) -> CmdResult<()> {
        if self.collection(db, coll).is_some() {
            return Err(CmdError::new(
                code::NAMESPACE_EXISTS,
                format!("Collection {db}.{coll} already exists."),
            ));
        }
        validate_namespace(db, coll)?;
        let c = Collection::new(options.clone(), None);
        self.log(doc! {"op": "create", "db": db, "coll": coll, "uuid": c.uuid.clone(), "options": options});
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(coll.to_string(), c);
        Ok(())
    }

    /// Creates the collection if needed (implicit creation on first write); true if created.
    pub fn ensure_collection(&mut self, db: &str, coll: &str) -> CmdResult<bool> {
        if self.collection(db, coll).is_some() {
            return Ok(false);
        }
        self.create_collection(db, coll, Document::new())?;
        Ok(true)
    }

    /// `collMod`: replaces the collection options.
    pub fn set_options(&mut self, db: &str, coll: &str, options: Document) -> CmdResult<()> {
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        c.options = options.clone();
        self.log(doc! {"op": "options", "db": db, "coll": coll, "options": options});
        Ok(())
    }

    fn event(&mut self, op: OpType, db: &str, coll: &str) -> Event {
        let ts = self.oplog.next_ts();
        Event {
            ts,
            wall: DateTime::now(),
            op,
            db: db.to_string(),
            coll: coll.to_string(),
            uuid: self.collection(db, coll).map(|c| c.uuid.clone()),
            key: None,
            post: None,
            pre: None,
            update: None,
        }
    }

    fn record(&mut self, ev: Event) {
        self.log(doc! {"op": "event", "ev": ev.to_doc()});
        self.oplog.push(ev);
    }

    /// Inserts a document (which must have an `_id`), creating the collection if needed.
    pub fn insert(&mut self, db: &str, coll: &str, doc: Document) -> CmdResult<()> {
        let size = bson::to_vec(&doc).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > crate::wire::MAX_BSON_OBJECT_SIZE {
            return Err(CmdError::new(
                code::BSON_OBJECT_TOO_LARGE,
                format!(
                    "object to insert too large. size in bytes: {size}, max size: {}",
                    crate::wire::MAX_BSON_OBJECT_SIZE
                ),
            ));
        }
        validate::id_field(&doc)?;
        self.ensure_collection(db, coll)?;
        let ns = format!("{db}.{coll}");
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        c.check_unique(&ns, &doc, None)?;
        c.put(doc.clone());
        self.log(doc! {"op": "put", "db": db, "coll": coll, "doc": doc.clone()});
        let mut ev = self.event(OpType::Insert, db, coll);
        ev.key = Some(doc! {"_id": doc.get("_id").cloned().unwrap_or(Bson::Null)});
        ev.post = Some(doc);
        self.record(ev);
        Ok(())
    }

    /// Replaces record `rid` with `new`: an `update` event when `desc` is given, else `replace`.
    pub fn update(
        &mut self,
        db: &str,
        coll: &str,
        rid: u64,
        new: Document,
        desc: Option<&UpdateDesc>,
    ) -> CmdResult<()> {
        let ns = format!("{db}.{coll}");
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        c.check_unique(&ns, &new, Some(rid))?;
        let images = c.images_enabled();
        let old = c.replace(rid, new.clone());
        self.log(doc! {"op": "put", "db": db, "coll": coll, "doc": new.clone()});
        let mut ev = self.event(
            if desc.is_some() {
                OpType::Update
            } else {
                OpType::Replace
            },
            db,
            coll,
        );
        ev.key = Some(doc! {"_id": new.get("_id").cloned().unwrap_or(Bson::Null)});
        ev.update = desc.map(|d| d.render(&new));
        if images {
            ev.pre = old;
        }
        if images || desc.is_none() {
            ev.post = Some(new);
        }
        self.record(ev);
        Ok(())
    }

    /// Deletes record `rid`.
    pub fn delete(&mut self, db: &str, coll: &str, rid: u64) -> CmdResult<Document> {
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        let images = c.images_enabled();
        let old = c
            .remove(rid)
            .ok_or_else(|| CmdError::internal("record vanished"))?;
        let id = old.get("_id").cloned().unwrap_or(Bson::Null);
        self.log(doc! {"op": "del", "db": db, "coll": coll, "id": id.clone()});
        let mut ev = self.event(OpType::Delete, db, coll);
        ev.key = Some(doc! {"_id": id});
        if images {
            ev.pre = Some(old.clone());
        }
        self.record(ev);
        Ok(old)
    }

    /// Drops a collection, returning its index count (`None` if it did not exist).
    pub fn drop_collection(&mut self, db: &str, coll: &str) -> Option<usize> {
        let n = self.collection(db, coll)?.indexes.len();
        let ev = self.event(OpType::Drop, db, coll);
        if let Some(d) = self.dbs.get_mut(db) {
            d.remove(coll);
        }
        self.log(doc! {"op": "drop", "db": db, "coll": coll});
        self.record(ev);
        Some(n)
    }

    /// Drops a database (a `drop` event per collection, then `dropDatabase`).
    pub fn drop_database(&mut self, db: &str) {
        let names: Vec<String> = self
            .collections(db)
            .into_iter()
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.drop_collection(db, n);
        }
        if self.dbs.remove(db).is_some() || !names.is_empty() {
            self.log(doc! {"op": "dropDatabase", "db": db});
            let ev = self.event(OpType::DropDatabase, db, "");
            self.record(ev);
        }
    }

    /// Adds an index; `Ok(false)` when an identical one exists.
    pub fn create_index(&mut self, db: &str, coll: &str, idx: Index) -> CmdResult<bool> {
        let ns = format!("{db}.{coll}");
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        if let Some(existing) = c.indexes.iter().find(|i| i.name == idx.name) {
            if docs_identical(&existing.key, &idx.key) && existing.same_options(&idx) {
                return Ok(false);
            }
            return Err(CmdError::new(
                code::INDEX_KEY_SPECS_CONFLICT,
                format!(
                    "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                    idx.spec, existing.spec
                ),
            ));
        }
        if let Some(existing) = c.indexes.iter().find(|i| docs_identical(&i.key, &idx.key)) {
            return Err(CmdError::new(
                code::INDEX_OPTIONS_CONFLICT,
                format!(
                    "Index already exists with a different name: {}",
                    existing.name
                ),
            ));
        }
        let spec = idx.spec.clone();
        c.add_index(&ns, idx)?;
        self.log(doc! {"op": "index", "db": db, "coll": coll, "spec": spec});
        Ok(true)
    }

    /// Drops an index by name (`"*"`: all but `_id_`); returns the previous index count.
    pub fn drop_index(&mut self, db: &str, coll: &str, name: &str) -> CmdResult<usize> {
        let c = self
            .coll_mut(db, coll)
            .ok_or_else(|| ns_not_found(db, coll))?;
        let before = c.indexes.len();
        let names: Vec<String> = if name == "*" {
            c.indexes
                .iter()
                .filter(|i| i.name != "_id_")
                .map(|i| i.name.clone())
                .collect()
        } else if name == "_id_" {
            return Err(CmdError::new(72, "cannot drop _id index"));
        } else if c.indexes.iter().any(|i| i.name == name) {
            vec![name.to_string()]
        } else {
            return Err(CmdError::new(
                code::INDEX_NOT_FOUND,
                format!("index not found with name [{name}]"),
            ));
        };
        c.indexes.retain(|i| !names.contains(&i.name));
        for n in names {
            self.log(doc! {"op": "dropIndex", "db": db, "coll": coll, "name": n});
        }
        Ok(before)
    }
}

/// `ns does not exist` (code 26).
pub fn ns_not_found(db: &str, coll: &str) -> CmdError {
    CmdError::new(
        code::NAMESPACE_NOT_FOUND,
        format!("ns does not exist: {db}.{coll}"),
    )
}

fn validate_namespace(db: &str, coll: &str) -> CmdResult<()> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CmdError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    if coll.is_empty() || coll.contains('\0') || coll.starts_with('.') || coll.contains('$') {
        return Err(CmdError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid collection name: {coll}"),
        ));
    }
    Ok(())
}
