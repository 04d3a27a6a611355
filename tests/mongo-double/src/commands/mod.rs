//! Command dispatch: fail points, sessions / retryable writes, cluster time gossip, and the
//! per-command handlers in the submodules.

mod admin;
mod crud;
mod ddl;
mod read;

pub use admin::SET_NAME;

use std::time::Duration;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use crate::error::{code, error_labels, retryable_write_labels, CmdError, CmdResult};
use crate::query::compare::{as_i64, key_bytes, truthy};
use crate::state::{ConnInfo, Shared, State};

/// What the connection should do after a command.
#[derive(Debug)]
pub enum Outcome {
    Reply(Document),
    /// Close the connection without replying (fail point `closeConnection`).
    Close,
}

/// Arguments of one command invocation.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub conn: &'a ConnInfo,
    pub db: &'a str,
    pub cmd: &'a Document,
}

const WRITE_COMMANDS: [&str; 5] = [
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
];

/// Is `name` one of the handshake commands (accepted over legacy OP_QUERY too)?
pub fn is_hello(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// Runs one command and builds its reply.
pub async fn dispatch(shared: &Shared, conn: &mut ConnInfo, db: &str, cmd: Document) -> Outcome {
    let name = cmd.keys().next().cloned().unwrap_or_default();
    if shared.verbose {
        eprintln!("mongo-double conn{} {db}: {cmd}", conn.id);
    }
    if is_hello(&name) && conn.app_name.is_none() {
        conn.app_name = cmd
            .get_document("client")
            .and_then(|c| c.get_document("application"))
            .and_then(|a| a.get_str("name"))
            .ok()
            .map(str::to_string);
    }
    let action = shared.failpoints().check(&name, conn.app_name.as_deref());
    let mut write_concern_error = None;
    let retryable_write = WRITE_COMMANDS.contains(&name.as_str()) && cmd.contains_key("txnNumber");
    if let Some(act) = action {
        if act.block_ms > 0 {
            tokio::time::sleep(Duration::from_millis(act.block_ms)).await;
        }
        if act.close_connection {
            return Outcome::Close;
        }
        if let Some(c) = act.error_code {
            let mut e = CmdError::new(c, "Failing command via 'failCommand' failpoint");
            e.labels = act.error_labels.unwrap_or_else(|| {
                error_labels(c, retryable_write, opens_change_stream(&name, &cmd))
            });
            return Outcome::Reply(finish(shared, e.to_doc()));
        }
        write_concern_error = act.write_concern_error.map(|w| (w, act.error_labels));
    }
    let ctx = Ctx {
        shared,
        conn,
        db,
        cmd: &cmd,
    };
    let mut reply = match run(&ctx, &name, retryable_write).await {
        Ok(d) => d,
        Err(mut e) => {
            // A handler sets labels only where it knows more (a getMore's cursor).
            if e.labels.is_empty() {
                e.labels = error_labels(e.code, retryable_write, opens_change_stream(&name, &cmd));
            }
            e.to_doc()
        }
    };
    if let Some((wce, labels)) = write_concern_error {
        if reply.get("ok").is_some_and(truthy) {
            let c = wce.get("code").and_then(as_i64).unwrap_or(0) as i32;
            let labels = labels.unwrap_or_else(|| retryable_write_labels(c, retryable_write));
            reply.insert("writeConcernError", wce);
            if !labels.is_empty() {
                reply.insert("errorLabels", labels);
            }
        }
    }
    Outcome::Reply(finish(shared, reply))
}

/// Is command `name` an aggregate whose pipeline starts with `$changeStream`?
fn opens_change_stream(name: &str, cmd: &Document) -> bool {
    name == "aggregate"
        && cmd
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.first())
            .and_then(Bson::as_document)
            .is_some_and(|stage| stage.contains_key("$changeStream"))
}

/// Adds the cluster-time gossip a replica-set member attaches to every reply.
fn finish(shared: &Shared, mut reply: Document) -> Document {
    if !shared.standalone {
        let now = shared.state().store.oplog.now();
        reply.insert(
            "$clusterTime",
            doc! {
                "clusterTime": now,
                "signature": {
                    "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 20] },
                    "keyId": 0i64,
                },
            },
        );
        reply.insert("operationTime", now);
    }
    reply
}

fn lsid_key(cmd: &Document) -> Option<Vec<u8>> {
    cmd.get_document("lsid")
        .ok()
        .and_then(|l| l.get("id"))
        .map(key_bytes)
}

async fn run(ctx: &Ctx<'_>, name: &str, retryable_write: bool) -> CmdResult<Document> {
    let cmd = ctx.cmd;
    if cmd.contains_key("startTransaction")
        || cmd.contains_key("autocommit")
        || matches!(name, "commitTransaction" | "abortTransaction")
    {
        return Err(CmdError::new(
            code::ILLEGAL_OPERATION,
            "mongo-double does not support multi-document transactions",
        ));
    }
    if ctx.shared.standalone && cmd.contains_key("txnNumber") {
        return Err(CmdError::new(
            code::ILLEGAL_OPERATION,
            "Transaction numbers are only allowed on a replica set member or mongos",
        ));
    }
    match name {
        "hello" | "isMaster" | "ismaster" => return admin::hello(ctx, name != "hello").await,
        "getMore" => return read::get_more(ctx).await,
        _ => {}
    }
    let retry_key = match (
        retryable_write,
        lsid_key(cmd),
        cmd.get("txnNumber").and_then(as_i64),
    ) {
        (true, Some(l), Some(t)) => Some((l, t)),
        _ => None,
    };
    let mut st = ctx.shared.state();
    if let Some(prev) = retry_key.as_ref().and_then(|k| st.retries.get(k)) {
        return Ok(prev.clone());
    }
    let result = run_locked(ctx, name, &mut st);
    let durable = cmd
        .get_document("writeConcern")
        .is_ok_and(|w| w.get("j").is_some_and(truthy) || w.get_str("w") == Ok("majority"));
    if let Err(e) = st.store.flush(durable) {
        return Err(CmdError::internal(format!(
            "could not persist the write: {e}"
        )));
    }
    if let (Some(k), Ok(reply)) = (retry_key, &result) {
        st.retries.put(k, reply.clone());
    }
    result
}

fn run_locked(ctx: &Ctx<'_>, name: &str, st: &mut State) -> CmdResult<Document> {
    match name {
        "ping" => Ok(doc! {"ok": 1.0}),
        "buildInfo" | "buildinfo" => Ok(admin::build_info()),
        "getParameter" => admin::get_parameter(ctx),
        "endSessions"
        | "killSessions"
        | "killAllSessions"
        | "refreshSessions"
        | "killAllSessionsByPattern" => Ok(doc! {"ok": 1.0}),
        "startSession" => Ok(admin::start_session()),
        "connectionStatus" => Ok(doc! {
            "authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []},
            "ok": 1.0,
        }),
        "whatsmyuri" => Ok(doc! {"you": ctx.conn.peer.clone(), "ok": 1.0}),
        "serverStatus" => Ok(admin::server_status(ctx)),
        "getCmdLineOpts" => Ok(doc! {"argv": ["mongo-double"], "parsed": {}, "ok": 1.0}),
        "replSetGetStatus" => admin::repl_set_get_status(ctx, st),
        "configureFailPoint" => {
            if ctx.db != "admin" {
                return Err(CmdError::new(
                    code::UNAUTHORIZED,
                    "configureFailPoint may only be run against the admin database.",
                ));
            }
            ctx.shared.failpoints().configure(ctx.cmd)
        }
        "saslStart" | "saslContinue" | "authenticate" => Err(CmdError::new(
            code::AUTHENTICATION_FAILED,
            "mongo-double does not implement authentication",
        )),
        "insert" => crud::insert(ctx, st),
        "update" => crud::update(ctx, st),
        "delete" => crud::delete(ctx, st),
        "findAndModify" | "findandmodify" => crud::find_and_modify(ctx, st),
        "find" => read::find(ctx, st),
        "count" => read::count(ctx, st),
        "distinct" => read::distinct(ctx, st),
        "aggregate" => read::aggregate(ctx, st),
        "killCursors" => read::kill_cursors(ctx, st),
        "create" => ddl::create(ctx, st),
        "collMod" => ddl::coll_mod(ctx, st),
        "drop" => ddl::drop(ctx, st),
        "dropDatabase" => ddl::drop_database(ctx, st),
        "createIndexes" => ddl::create_indexes(ctx, st),
        "dropIndexes" | "deleteIndexes" => ddl::drop_indexes(ctx, st),
        "listIndexes" => ddl::list_indexes(ctx, st),
        "listCollections" => ddl::list_collections(ctx, st),
        "listDatabases" => ddl::list_databases(ctx, st),
        other => Err(CmdError::new(
            code::COMMAND_NOT_FOUND,
            format!("no such command: '{other}'"),
        )),
    }
}

// ---- argument helpers ----

/// The collection named by the command's first field.
fn coll_arg(ctx: &Ctx<'_>, name: &str) -> CmdResult<String> {
    match ctx.cmd.get(name) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(CmdError::new(
            code::INVALID_NAMESPACE,
            format!(
                "collection name has invalid type {}",
                crate::query::compare::type_alias(other)
            ),
        )),
        None => Err(CmdError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid namespace specified '{}.'", ctx.db),
        )),
    }
}

fn doc_arg<'a>(ctx: &'a Ctx<'_>, cmd_name: &str, field: &str) -> CmdResult<Option<&'a Document>> {
    match ctx.cmd.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(_) => Err(CmdError::wrong_type(
            &format!("{cmd_name}.{field}"),
            "object",
        )),
    }
}

fn int_arg(ctx: &Ctx<'_>, cmd_name: &str, field: &str) -> CmdResult<Option<i64>> {
    match ctx.cmd.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(v) => as_i64(v)
            .map(Some)
            .ok_or_else(|| CmdError::wrong_type(&format!("{cmd_name}.{field}"), "long")),
    }
}

fn bool_arg(ctx: &Ctx<'_>, field: &str) -> bool {
    ctx.cmd.get(field).is_some_and(truthy)
}

fn array_arg<'a>(ctx: &'a Ctx<'_>, cmd_name: &str, field: &str) -> CmdResult<&'a Vec<Bson>> {
    match ctx.cmd.get(field) {
        Some(Bson::Array(a)) => Ok(a),
        Some(_) => Err(CmdError::wrong_type(
            &format!("{cmd_name}.{field}"),
            "array",
        )),
        None => Err(CmdError::new(
            40414,
            format!("BSON field '{cmd_name}.{field}' is missing but a required field"),
        )),
    }
}

/// `{cursor: {firstBatch|nextBatch, id, ns, postBatchResumeToken?}, ok: 1}`.
fn cursor_reply(
    id: i64,
    ns: &str,
    batch: Vec<Document>,
    first: bool,
    pbrt: Option<Document>,
) -> Document {
    let mut c = doc! {
        if first { "firstBatch" } else { "nextBatch" }: batch,
        "id": id,
        "ns": ns,
    };
    if let Some(t) = pbrt {
        c.insert("postBatchResumeToken", t);
    }
    doc! {"cursor": c, "ok": 1.0}
}
