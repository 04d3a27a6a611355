//! Write commands: `insert`, `update`, `delete`, `findAndModify`.

use bson::{doc, oid::ObjectId, Bson, Document};

use super::{array_arg, bool_arg, coll_arg, doc_arg, Ctx};
use crate::error::{code, CmdError, CmdResult};
use crate::query::matcher::Filter;
use crate::query::path;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::state::State;
use crate::storage::Store;
use crate::update::Update;
use crate::wire::MAX_WRITE_BATCH_SIZE;

/// Moves `_id` to the front, generating an ObjectId when missing (as the server does).
fn with_id_first(doc: Document) -> Document {
    if doc.keys().next().map(String::as_str) == Some("_id") {
        return doc;
    }
    let mut out =
        doc! {"_id": doc.get("_id").cloned().unwrap_or_else(|| Bson::ObjectId(ObjectId::new()))};
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

fn check_batch(cmd: &str, n: usize) -> CmdResult<()> {
    if n == 0 || n > MAX_WRITE_BATCH_SIZE {
        return Err(CmdError::new(
            16,
            format!("Write batch sizes must be between 1 and {MAX_WRITE_BATCH_SIZE}. Got {n} operations. ({cmd})"),
        ));
    }
    Ok(())
}

fn write_reply(n: i64, extra: Document, errors: Vec<Document>) -> Document {
    let mut d = doc! {"n": n as i32};
    d.extend(extra);
    if !errors.is_empty() {
        d.insert("writeErrors", errors);
    }
    d.insert("ok", 1.0);
    d
}

fn stmt_doc<'a>(cmd: &str, v: &'a Bson) -> CmdResult<&'a Document> {
    match v {
        Bson::Document(d) => Ok(d),
        _ => Err(CmdError::wrong_type(&format!("{cmd} statement"), "object")),
    }
}

pub fn insert(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "insert")?;
    let docs = array_arg(ctx, "insert", "documents")?;
    check_batch("insert", docs.len())?;
    let ordered = ctx
        .cmd
        .get("ordered")
        .is_none_or(crate::query::compare::truthy);
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let res = stmt_doc("insert", d)
            .and_then(|d| st.store.insert(ctx.db, &coll, with_id_first(d.clone())));
        match res {
            Ok(()) => n += 1,
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(n, Document::new(), errors))
}

/// Record ids of documents matching `filter`, in natural order (optionally sorted).
fn matching(
    store: &Store,
    db: &str,
    coll: &str,
    filter: &Filter,
    sort: Option<&SortSpec>,
) -> Vec<u64> {
    let c = match store.collection(db, coll) {
        Some(c) => c,
        None => return Vec::new(),
    };
    let mut found = c.matching(filter);
    if let Some(s) = sort {
        s.sort_by(&mut found, |(_, d)| d);
    }
    found.into_iter().map(|(rid, _)| rid).collect()
}

/// Builds the document an upsert inserts.
fn upsert_doc(filter: &Filter, update: &Update, store: &Store) -> CmdResult<Document> {
    let mut seed = Document::new();
    let mut eq = Vec::new();
    filter.equality_fields(&mut eq);
    for (p, v) in eq {
        if !p.starts_with('$') && path::get(&seed, &p).is_none() {
            path::set(&mut seed, &p, v)?;
        }
    }
    let built = match update {
        Update::Replacement(_) => {
            let mut base = Document::new();
            if let Some(id) = seed.get("_id") {
                base.insert("_id", id.clone());
            }
            update.apply(&base, true, store.oplog.now())?.doc
        }
        _ => update.apply(&seed, true, store.oplog.now())?.doc,
    };
    Ok(with_id_first(built))
}

struct StmtResult {
    matched: i64,
    modified: i64,
    upserted: Option<Bson>,
}

fn update_stmt(
    ctx: &Ctx<'_>,
    st: &mut State,
    coll: &str,
    stmt: &Document,
) -> CmdResult<StmtResult> {
    let q = match stmt.get("q") {
        Some(Bson::Document(q)) => q,
        _ => {
            return Err(CmdError::new(
                40414,
                "BSON field 'update.updates.q' is missing but a required field",
            ))
        }
    };
    let u = stmt.get("u").ok_or_else(|| {
        CmdError::new(
            40414,
            "BSON field 'update.updates.u' is missing but a required field",
        )
    })?;
    if stmt.contains_key("arrayFilters") {
        return Err(CmdError::bad_value(
            "mongo-double does not support arrayFilters",
        ));
    }
    let filter = Filter::parse(q)?;
    let update = Update::parse(u)?;
    let multi = stmt.get("multi").is_some_and(crate::query::compare::truthy);
    if multi && matches!(update, Update::Replacement(_)) {
        return Err(CmdError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let mut rids = matching(&st.store, ctx.db, coll, &filter, None);
    if !multi {
        rids.truncate(1);
    }
    let mut res = StmtResult {
        matched: 0,
        modified: 0,
        upserted: None,
    };
    for rid in rids {
        let old = match st.store.collection(ctx.db, coll).and_then(|c| c.get(rid)) {
            Some(d) => d.clone(),
            None => continue,
        };
        res.matched += 1;
        let applied = update.apply(&old, false, st.store.oplog.now())?;
        if applied.changed {
            st.store
                .update(ctx.db, coll, rid, applied.doc, applied.desc.as_ref())?;
            res.modified += 1;
        }
    }
    if res.matched == 0
        && stmt
            .get("upsert")
            .is_some_and(crate::query::compare::truthy)
    {
        let doc = upsert_doc(&filter, &update, &st.store)?;
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        st.store.insert(ctx.db, coll, doc)?;
        res.upserted = Some(id);
    }
    Ok(res)
}

/// The fields of an update statement MongoDB 7.0 knows. Its parser is strict, so any other
/// field — `sort` too, which came with 8.0 — fails the whole command before anything runs.
const UPDATE_STATEMENT_FIELDS: [&str; 11] = [
    "q",
    "u",
    "c",
    "arrayFilters",
    "hint",
    "multi",
    "upsert",
    "upsertSupplied",
    "collation",
    "sampleId",
    "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery",
];

fn check_update_statement_fields(stmts: &[Bson]) -> CmdResult<()> {
    let unknown = stmts
        .iter()
        .filter_map(Bson::as_document)
        .flat_map(Document::keys)
        .find(|k| !UPDATE_STATEMENT_FIELDS.contains(&k.as_str()));
    match unknown {
        Some(k) => Err(CmdError::new(
            code::UNKNOWN_IDL_FIELD,
            format!("BSON field 'update.updates.{k}' is an unknown field."),
        )),
        None => Ok(()),
    }
}

pub fn update(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "update")?;
    let stmts = array_arg(ctx, "update", "updates")?;
    check_batch("update", stmts.len())?;
    check_update_statement_fields(stmts)?;
    let ordered = ctx
        .cmd
        .get("ordered")
        .is_none_or(crate::query::compare::truthy);
    let (mut n, mut modified) = (0, 0);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        match stmt_doc("update", s).and_then(|s| update_stmt(ctx, st, &coll, s)) {
            Ok(r) => {
                n += r.matched;
                modified += r.modified;
                if let Some(id) = r.upserted {
                    n += 1;
                    upserted.push(doc! {"index": i as i32, "_id": id});
                }
            }
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut extra = doc! {"nModified": modified as i32};
    if !upserted.is_empty() {
        extra.insert("upserted", upserted);
    }
    Ok(write_reply(n, extra, errors))
}

fn delete_stmt(ctx: &Ctx<'_>, st: &mut State, coll: &str, stmt: &Document) -> CmdResult<i64> {
    let q = match stmt.get("q") {
        Some(Bson::Document(q)) => q,
        _ => {
            return Err(CmdError::new(
                40414,
                "BSON field 'delete.deletes.q' is missing but a required field",
            ))
        }
    };
    let limit = stmt
        .get("limit")
        .and_then(crate::query::compare::as_i64)
        .unwrap_or(0);
    if !(0..=1).contains(&limit) {
        return Err(CmdError::failed_to_parse(format!(
            "The limit field in delete objects must be 0 or 1. Got {limit}"
        )));
    }
    let filter = Filter::parse(q)?;
    let mut rids = matching(&st.store, ctx.db, coll, &filter, None);
    if limit == 1 {
        rids.truncate(1);
    }
    for rid in &rids {
        st.store.delete(ctx.db, coll, *rid)?;
    }
    Ok(rids.len() as i64)
}

pub fn delete(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "delete")?;
    let stmts = array_arg(ctx, "delete", "deletes")?;
    check_batch("delete", stmts.len())?;
    let ordered = ctx
        .cmd
        .get("ordered")
        .is_none_or(crate::query::compare::truthy);
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        match stmt_doc("delete", s).and_then(|s| delete_stmt(ctx, st, &coll, s)) {
            Ok(k) => n += k,
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(n, Document::new(), errors))
}

pub fn find_and_modify(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let name = ctx.cmd.keys().next().cloned().unwrap_or_default();
    let coll = coll_arg(ctx, &name)?;
    let query = doc_arg(ctx, &name, "query")?.cloned().unwrap_or_default();
    let filter = Filter::parse(&query)?;
    let sort = doc_arg(ctx, &name, "sort")?
        .map(SortSpec::parse)
        .transpose()?;
    let fields = doc_arg(ctx, &name, "fields")?
        .map(Projection::parse)
        .transpose()?;
    let remove = bool_arg(ctx, "remove");
    let return_new = bool_arg(ctx, "new");
    let upsert = bool_arg(ctx, "upsert");
    let update = match ctx.cmd.get("update") {
        None | Some(Bson::Null) => None,
        Some(u) => Some(Update::parse(u)?),
    };
    if ctx.cmd.contains_key("arrayFilters") {
        return Err(CmdError::bad_value(
            "mongo-double does not support arrayFilters",
        ));
    }
    match (&update, remove) {
        (Some(_), true) => {
            return Err(CmdError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ))
        }
        (None, false) => {
            return Err(CmdError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ))
        }
        _ => {}
    }
    if remove && (return_new || upsert) {
        return Err(CmdError::failed_to_parse(
            "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
        ));
    }
    let project = |d: Document| match &fields {
        Some(p) => p.apply(&d),
        None => d,
    };
    let rid = matching(&st.store, ctx.db, &coll, &filter, sort.as_ref())
        .into_iter()
        .next();
    let old = rid.and_then(|r| {
        st.store
            .collection(ctx.db, &coll)
            .and_then(|c| c.get(r))
            .cloned()
    });
    let (last_error, value) = match (rid, old, update) {
        (Some(rid), Some(_), None) => {
            let old = st.store.delete(ctx.db, &coll, rid)?;
            (doc! {"n": 1}, Bson::Document(project(old)))
        }
        (Some(rid), Some(old), Some(u)) => {
            let applied = u.apply(&old, false, st.store.oplog.now())?;
            let new = applied.doc.clone();
            if applied.changed {
                st.store
                    .update(ctx.db, &coll, rid, applied.doc, applied.desc.as_ref())?;
            }
            let shown = if return_new { new } else { old };
            (
                doc! {"n": 1, "updatedExisting": true},
                Bson::Document(project(shown)),
            )
        }
        (_, _, Some(u)) if upsert => {
            let doc = upsert_doc(&filter, &u, &st.store)?;
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            st.store.insert(ctx.db, &coll, doc.clone())?;
            let value = if return_new {
                Bson::Document(project(doc))
            } else {
                Bson::Null
            };
            (
                doc! {"n": 1, "updatedExisting": false, "upserted": id},
                value,
            )
        }
        (_, _, Some(_)) => (doc! {"n": 0, "updatedExisting": false}, Bson::Null),
        _ => (doc! {"n": 0}, Bson::Null),
    };
    Ok(doc! {"lastErrorObject": last_error, "value": value, "ok": 1.0})
}
