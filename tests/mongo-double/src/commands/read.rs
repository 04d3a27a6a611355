//! Read commands and cursors: `find`, `count`, `distinct`, `aggregate` (incl. `$changeStream`),
//! `getMore`, `killCursors`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};

use super::{array_arg, bool_arg, coll_arg, cursor_reply, doc_arg, int_arg, Ctx};
use crate::changestream::{self, Scope};
use crate::cursor::{take_batch, CursorKind};
use crate::error::{code, error_labels, CmdError, CmdResult};
use crate::query::compare::{as_i64, key_bytes};
use crate::query::matcher::Filter;
use crate::query::path::{lookup, Found};
use crate::query::pipeline;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::state::State;

/// Default first-batch size of `find` and `aggregate`.
const DEFAULT_BATCH: usize = 101;
/// How long a change-stream `getMore` waits when the client sets no `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);
/// Upper bound for one `getMore` wait (drivers simply issue the next one).
const MAX_AWAIT: Duration = Duration::from_secs(24 * 3600);

fn batch_size(v: Option<i64>, field: &str) -> CmdResult<Option<usize>> {
    match v {
        Some(n) if n < 0 => Err(CmdError::bad_value(format!(
            "{field} must be non-negative, but received: {n}"
        ))),
        Some(n) => Ok(Some(n as usize)),
        None => Ok(None),
    }
}

fn filtered_docs(st: &State, db: &str, coll: &str, filter: &Filter) -> Vec<Document> {
    st.store
        .collection(db, coll)
        .map(|c| {
            c.matching(filter)
                .into_iter()
                .map(|(_, d)| d.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the first batch and registers a cursor for the rest (unless `single_batch`).
fn open_cursor(
    st: &mut State,
    ns: String,
    docs: Vec<Document>,
    first: Option<usize>,
    single_batch: bool,
) -> Document {
    let mut rest: VecDeque<Document> = docs.into();
    let batch = take_batch(&mut rest, Some(first.unwrap_or(DEFAULT_BATCH)));
    let id = if rest.is_empty() || single_batch {
        0
    } else {
        st.cursors.insert(ns.clone(), CursorKind::Docs(rest))
    };
    cursor_reply(id, &ns, batch, true, None)
}

pub fn find(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "find")?;
    let filter = Filter::parse(&doc_arg(ctx, "find", "filter")?.cloned().unwrap_or_default())?;
    let sort = doc_arg(ctx, "find", "sort")?
        .map(SortSpec::parse)
        .transpose()?;
    let projection = doc_arg(ctx, "find", "projection")?
        .filter(|p| !p.is_empty())
        .map(Projection::parse)
        .transpose()?;
    if bool_arg(ctx, "tailable") {
        return Err(CmdError::bad_value(format!(
            "error processing query: ns={}.{coll} tailable cursor requested on non capped collection",
            ctx.db
        )));
    }
    let skip = int_arg(ctx, "find", "skip")?.unwrap_or(0);
    if skip < 0 {
        return Err(CmdError::bad_value(format!(
            "skip value must be non-negative, but received: {skip}"
        )));
    }
    let limit = int_arg(ctx, "find", "limit")?.unwrap_or(0);
    let single_batch = bool_arg(ctx, "singleBatch") || limit < 0;
    let batch = batch_size(int_arg(ctx, "find", "batchSize")?, "batchSize")?;
    let mut docs = filtered_docs(st, ctx.db, &coll, &filter);
    if let Some(s) = &sort {
        s.sort(&mut docs);
    }
    let mut docs: Vec<Document> = docs.into_iter().skip(skip as usize).collect();
    if limit != 0 {
        docs.truncate(limit.unsigned_abs() as usize);
    }
    if let Some(p) = &projection {
        docs = docs.iter().map(|d| p.apply(d)).collect();
    }
    let first = match (batch, limit) {
        (Some(b), l) if l != 0 => Some(b.min(l.unsigned_abs() as usize)),
        (b, _) => b,
    };
    Ok(open_cursor(
        st,
        format!("{}.{coll}", ctx.db),
        docs,
        first,
        single_batch,
    ))
}

pub fn count(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "count")?;
    let filter = Filter::parse(&doc_arg(ctx, "count", "query")?.cloned().unwrap_or_default())?;
    let skip = int_arg(ctx, "count", "skip")?.unwrap_or(0).max(0) as usize;
    let limit = int_arg(ctx, "count", "limit")?.unwrap_or(0).unsigned_abs() as usize;
    let total = st
        .store
        .collection(ctx.db, &coll)
        .map(|c| {
            if ctx.cmd.contains_key("query") {
                c.matching(&filter).len()
            } else {
                c.len()
            }
        })
        .unwrap_or(0);
    let mut n = total.saturating_sub(skip);
    if limit > 0 {
        n = n.min(limit);
    }
    Ok(doc! {"n": n as i32, "ok": 1.0})
}

pub fn distinct(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "distinct")?;
    let key = ctx
        .cmd
        .get_str("key")
        .map_err(|_| CmdError::wrong_type("distinct.key", "string"))?;
    let filter = Filter::parse(
        &doc_arg(ctx, "distinct", "query")?
            .cloned()
            .unwrap_or_default(),
    )?;
    let mut seen = std::collections::HashSet::new();
    let mut values = Vec::new();
    for d in filtered_docs(st, ctx.db, &coll, &filter) {
        for f in lookup(&d, key) {
            let items: Vec<Bson> = match f {
                Found::Missing => continue,
                Found::Value(Bson::Array(a)) => a.clone(),
                Found::Value(v) => vec![v.clone()],
            };
            for v in items {
                if seen.insert(key_bytes(&v)) {
                    values.push(v);
                }
            }
        }
    }
    Ok(doc! {"values": values, "ok": 1.0})
}

pub fn aggregate(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let stages = array_arg(ctx, "aggregate", "pipeline")?;
    let cursor_opts =
        match ctx.cmd.get("cursor") {
            Some(Bson::Document(c)) => c,
            _ if bool_arg(ctx, "explain") => {
                return Err(CmdError::new(
                    code::COMMAND_NOT_FOUND,
                    "mongo-double does not support explain",
                ))
            }
            _ => return Err(CmdError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            )),
        };
    let batch = batch_size(
        cursor_opts.get("batchSize").and_then(as_i64),
        "cursor.batchSize",
    )?;
    let coll = match ctx.cmd.get("aggregate") {
        Some(Bson::String(s)) => Some(s.clone()),
        Some(v) if as_i64(v) == Some(1) => None,
        _ => {
            return Err(CmdError::new(
                code::INVALID_NAMESPACE,
                "aggregate field must be a collection name or 1",
            ))
        }
    };
    if let Some(Bson::Document(first)) = stages.first() {
        if let Some(cs) = first.get("$changeStream") {
            return change_stream(ctx, st, coll, cs, &stages[1..], batch);
        }
    }
    let coll = coll.ok_or_else(|| {
        CmdError::new(
            code::INVALID_NAMESPACE,
            "{aggregate: 1} is only supported with $changeStream by mongo-double; a collection is required",
        )
    })?;
    let parsed = pipeline::parse(stages)?;
    let docs = filtered_docs(st, ctx.db, &coll, &Filter::And(Vec::new()));
    let out = pipeline::run(&parsed, docs)?;
    Ok(open_cursor(
        st,
        format!("{}.{coll}", ctx.db),
        out,
        batch,
        false,
    ))
}

fn change_stream(
    ctx: &Ctx<'_>,
    st: &mut State,
    coll: Option<String>,
    cs: &Bson,
    rest: &[Bson],
    batch: Option<usize>,
) -> CmdResult<Document> {
    if ctx.shared.standalone {
        return Err(CmdError::new(
            code::CHANGE_STREAM_NOT_ON_STANDALONE,
            "The $changeStream stage is only supported on replica sets",
        ));
    }
    let opts = match cs {
        Bson::Document(d) => d,
        _ => {
            return Err(CmdError::failed_to_parse(
                "the $changeStream stage specification must be an object",
            ))
        }
    };
    let all_for_cluster = opts
        .get("allChangesForCluster")
        .is_some_and(crate::query::compare::truthy);
    let scope = match (coll, ctx.db) {
        (Some(c), db) => Scope::Collection {
            db: db.to_string(),
            coll: c,
        },
        (None, "admin") if all_for_cluster => Scope::Cluster,
        (None, "admin" | "config" | "local") => {
            return Err(CmdError::new(
                code::INVALID_NAMESPACE,
                format!(
                    "$changeStream may not be opened on the internal {} database",
                    ctx.db
                ),
            ))
        }
        (None, db) => Scope::Database { db: db.to_string() },
    };
    let ns = scope.cursor_ns();
    let mut cursor = changestream::open(&st.store.oplog, scope, opts, rest)?;
    let b = cursor.next_batch(&st.store, batch.unwrap_or(DEFAULT_BATCH))?;
    let id = if cursor.closed {
        0
    } else {
        st.cursors
            .insert(ns.clone(), CursorKind::Stream(Box::new(cursor)))
    };
    Ok(cursor_reply(
        id,
        &ns,
        b.events,
        true,
        Some(b.post_batch_resume_token),
    ))
}

fn cursor_not_found(id: i64) -> CmdError {
    CmdError::new(code::CURSOR_NOT_FOUND, format!("cursor id {id} not found"))
}

/// `getMore`; on a change stream it waits up to `maxTimeMS` (default 1 s) for new events.
pub async fn get_more(ctx: &Ctx<'_>) -> CmdResult<Document> {
    let id = ctx
        .cmd
        .get("getMore")
        .and_then(as_i64)
        .ok_or_else(|| CmdError::wrong_type("getMore.getMore", "long"))?;
    let batch = batch_size(int_arg(ctx, "getMore", "batchSize")?, "batchSize")?.filter(|n| *n > 0);
    let wait = int_arg(ctx, "getMore", "maxTimeMS")?
        .map(|ms| Duration::from_millis(ms.max(0) as u64).min(MAX_AWAIT))
        .unwrap_or(DEFAULT_AWAIT);
    let deadline = Instant::now() + wait;
    {
        let mut st = ctx.shared.state();
        if st.cursors.get_mut(id).is_none() {
            return Err(cursor_not_found(id));
        }
        let app = ctx.conn.app_name.as_deref();
        if let Some(code) = ctx.shared.failpoints().check_after_checkout(app) {
            // As mongod, an error after the checkout deletes the cursor.
            let stream = st.cursors.is_stream(id);
            st.cursors.remove(id);
            let mut e = CmdError::new(code, "Hit the 'failGetMoreAfterCursorCheckout' failpoint");
            e.labels = error_labels(code, false, stream);
            return Err(e);
        }
    }
    loop {
        let mut changed = {
            let mut guard = ctx.shared.state();
            let st = &mut *guard;
            let cursor = st.cursors.get_mut(id).ok_or_else(|| cursor_not_found(id))?;
            let ns = cursor.ns.clone();
            match &mut cursor.kind {
                CursorKind::Docs(rest) => {
                    let out = take_batch(rest, batch);
                    let done = rest.is_empty();
                    if done {
                        st.cursors.remove(id);
                    }
                    return Ok(cursor_reply(
                        if done { 0 } else { id },
                        &ns,
                        out,
                        false,
                        None,
                    ));
                }
                CursorKind::Stream(stream) => {
                    let result = stream.next_batch(&st.store, batch.unwrap_or(usize::MAX));
                    let b = match result {
                        Ok(b) => b,
                        Err(e) => {
                            st.cursors.remove(id);
                            return Err(e);
                        }
                    };
                    let closed = stream.closed;
                    if closed || !b.events.is_empty() || Instant::now() >= deadline {
                        if closed {
                            st.cursors.remove(id);
                        }
                        let rid = if closed { 0 } else { id };
                        return Ok(cursor_reply(
                            rid,
                            &ns,
                            b.events,
                            false,
                            Some(b.post_batch_resume_token),
                        ));
                    }
                    st.store.oplog.subscribe()
                }
            }
        };
        // Woken by the next write, or give up at the deadline (re-checked above).
        let _ = tokio::time::timeout_at(deadline.into(), changed.changed()).await;
    }
}

pub fn kill_cursors(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    coll_arg(ctx, "killCursors")?;
    let ids = array_arg(ctx, "killCursors", "cursors")?;
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for v in ids {
        let id = as_i64(v).ok_or_else(|| CmdError::wrong_type("killCursors.cursors", "long"))?;
        if st.cursors.remove(id).is_some() {
            killed.push(id);
        } else {
            not_found.push(id);
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": Vec::<i64>::new(),
        "cursorsUnknown": Vec::<i64>::new(),
        "ok": 1.0,
    })
}
