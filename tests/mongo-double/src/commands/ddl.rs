//! Namespace and index commands: `create`, `collMod`, `drop`, `dropDatabase`,
//! `createIndexes`, `dropIndexes`, `listIndexes`, `listCollections`, `listDatabases`.

use bson::{doc, Bson, Document};

use super::{array_arg, bool_arg, coll_arg, cursor_reply, doc_arg, Ctx};
use crate::error::{code, CmdError, CmdResult};
use crate::query::matcher::Filter;
use crate::state::State;
use crate::storage::{ns_not_found, Index};

/// Generic command fields that are not collection options.
const GENERIC_FIELDS: [&str; 12] = [
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "writeConcern",
    "readConcern",
    "comment",
    "txnNumber",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
];

fn options_of(cmd: &Document) -> Document {
    cmd.iter()
        .skip(1)
        .filter(|(k, _)| !GENERIC_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn create(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "create")?;
    let options = options_of(ctx.cmd);
    for unsupported in ["viewOn", "timeseries", "clusteredIndex", "encryptedFields"] {
        if options.contains_key(unsupported) {
            return Err(CmdError::new(
                code::INVALID_OPTIONS,
                format!("mongo-double does not support '{unsupported}' collections"),
            ));
        }
    }
    st.store.create_collection(ctx.db, &coll, options)?;
    Ok(doc! {"ok": 1.0})
}

pub fn coll_mod(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "collMod")?;
    let mut options = st
        .store
        .collection(ctx.db, &coll)
        .ok_or_else(|| ns_not_found(ctx.db, &coll))?
        .options
        .clone();
    for (k, v) in options_of(ctx.cmd) {
        if k == "index" {
            return Err(CmdError::new(
                code::INVALID_OPTIONS,
                "mongo-double does not support collMod of an index",
            ));
        }
        options.insert(k, v);
    }
    st.store.set_options(ctx.db, &coll, options)?;
    Ok(doc! {"ok": 1.0})
}

pub fn drop(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "drop")?;
    // Since MongoDB 7.0 dropping a missing collection succeeds.
    Ok(match st.store.drop_collection(ctx.db, &coll) {
        Some(n) => doc! {"nIndexesWas": n as i32, "ns": format!("{}.{coll}", ctx.db), "ok": 1.0},
        None => doc! {"ok": 1.0},
    })
}

pub fn drop_database(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    st.store.drop_database(ctx.db);
    Ok(doc! {"dropped": ctx.db, "ok": 1.0})
}

pub fn create_indexes(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "createIndexes")?;
    let specs = array_arg(ctx, "createIndexes", "indexes")?;
    if specs.is_empty() {
        return Err(CmdError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    let indexes = specs
        .iter()
        .map(|s| match s {
            Bson::Document(d) => Index::from_spec(d),
            _ => Err(CmdError::wrong_type("createIndexes.indexes", "object")),
        })
        .collect::<CmdResult<Vec<_>>>()?;
    let created_collection = st.store.ensure_collection(ctx.db, &coll)?;
    let before = st
        .store
        .collection(ctx.db, &coll)
        .map(|c| c.indexes.len())
        .unwrap_or(1);
    let mut created = 0;
    for idx in indexes {
        if st.store.create_index(ctx.db, &coll, idx)? {
            created += 1;
        }
    }
    let mut reply = doc! {
        "numIndexesBefore": before as i32,
        "numIndexesAfter": (before + created) as i32,
        "createdCollectionAutomatically": created_collection,
    };
    if created == 0 {
        reply.insert("note", "all indexes already exist");
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}

pub fn drop_indexes(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let name = ctx.cmd.keys().next().cloned().unwrap_or_default();
    let coll = coll_arg(ctx, &name)?;
    let c = st
        .store
        .collection(ctx.db, &coll)
        .ok_or_else(|| ns_not_found(ctx.db, &coll))?;
    let names: Vec<String> = match ctx.cmd.get("index") {
        Some(Bson::String(s)) => vec![s.clone()],
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect(),
        Some(Bson::Document(key)) => match c
            .indexes
            .iter()
            .find(|i| crate::query::compare::docs_identical(&i.key, key))
        {
            Some(i) => vec![i.name.clone()],
            None => {
                return Err(CmdError::new(
                    code::INDEX_NOT_FOUND,
                    format!("can't find index with key: {key}"),
                ))
            }
        },
        _ => {
            return Err(CmdError::new(
                40414,
                "BSON field 'dropIndexes.index' is missing but a required field",
            ))
        }
    };
    let was = c.indexes.len();
    for n in names {
        st.store.drop_index(ctx.db, &coll, &n)?;
    }
    Ok(doc! {"nIndexesWas": was as i32, "ok": 1.0})
}

pub fn list_indexes(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let coll = coll_arg(ctx, "listIndexes")?;
    let c = st
        .store
        .collection(ctx.db, &coll)
        .ok_or_else(|| ns_not_found(ctx.db, &coll))?;
    let specs: Vec<Document> = c.indexes.iter().map(|i| i.spec.clone()).collect();
    Ok(cursor_reply(
        0,
        &format!("{}.{coll}", ctx.db),
        specs,
        true,
        None,
    ))
}

pub fn list_collections(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    let filter = Filter::parse(
        &doc_arg(ctx, "listCollections", "filter")?
            .cloned()
            .unwrap_or_default(),
    )?;
    let name_only = bool_arg(ctx, "nameOnly");
    let mut out = Vec::new();
    for (name, c) in st.store.collections(ctx.db) {
        let full = doc! {
            "name": name.clone(),
            "type": "collection",
            "options": c.options.clone(),
            "info": {"readOnly": false, "uuid": c.uuid.clone()},
            "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        };
        if filter.matches(&full) {
            out.push(if name_only {
                doc! {"name": name.clone(), "type": "collection"}
            } else {
                full
            });
        }
    }
    Ok(cursor_reply(
        0,
        &format!("{}.$cmd.listCollections", ctx.db),
        out,
        true,
        None,
    ))
}

pub fn list_databases(ctx: &Ctx<'_>, st: &mut State) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CmdError::new(
            code::UNAUTHORIZED,
            "listDatabases may only be run against the admin database.",
        ));
    }
    let filter = Filter::parse(
        &doc_arg(ctx, "listDatabases", "filter")?
            .cloned()
            .unwrap_or_default(),
    )?;
    let name_only = bool_arg(ctx, "nameOnly");
    let mut names = st.store.database_names();
    for internal in ["admin", "config", "local"] {
        if !names.iter().any(|n| n == internal) {
            names.push(internal.to_string());
        }
    }
    names.sort();
    let mut total: i64 = 0;
    let mut dbs = Vec::new();
    for name in names {
        let size: i64 = st
            .store
            .collections(&name)
            .iter()
            .flat_map(|(_, c)| c.docs())
            .map(|(_, d)| bson::to_vec(d).map(|v| v.len() as i64).unwrap_or(0))
            .sum::<i64>()
            + 4096;
        let entry = doc! {"name": name.clone(), "sizeOnDisk": size, "empty": false};
        if filter.matches(&entry) {
            total += size;
            dbs.push(if name_only {
                doc! {"name": name}
            } else {
                entry
            });
        }
    }
    let mut reply = doc! {"databases": dbs};
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}
