//! Handshake and administrative commands: `hello`, `buildInfo`, `getParameter`, `serverStatus`,
//! `replSetGetStatus`, sessions.

use std::time::Duration;

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use super::{as_i64, Ctx};
use crate::error::{CmdError, CmdResult};
use crate::state::State;
use crate::wire::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE, MAX_WRITE_BATCH_SIZE};

/// MongoDB 7.0's wire version.
pub const MAX_WIRE_VERSION: i32 = 21;
pub const SERVER_VERSION: &str = "7.0.14";
pub const SET_NAME: &str = "rs0";
/// Longest a `hello` with `maxAwaitTimeMS` is held (the topology never changes).
const MAX_AWAIT: Duration = Duration::from_secs(3600);

fn election_id() -> ObjectId {
    ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1])
}

fn date_of(ts: Timestamp) -> DateTime {
    DateTime::from_millis(i64::from(ts.time) * 1000)
}

/// `hello` / legacy `isMaster`. An awaitable hello (with `topologyVersion` and
/// `maxAwaitTimeMS`) is answered after `maxAwaitTimeMS`, since nothing ever changes.
pub async fn hello(ctx: &Ctx<'_>, legacy: bool) -> CmdResult<Document> {
    let cmd = ctx.cmd;
    if let (Ok(tv), Some(wait)) = (
        cmd.get_document("topologyVersion"),
        cmd.get("maxAwaitTimeMS").and_then(as_i64),
    ) {
        if tv.get_object_id("processId").ok() == Some(ctx.shared.process_id) {
            let wait = Duration::from_millis(wait.max(0) as u64).min(MAX_AWAIT);
            tokio::time::sleep(wait).await;
        }
    }
    let shared = ctx.shared;
    let mut d = Document::new();
    if cmd
        .get("helloOk")
        .is_some_and(crate::query::compare::truthy)
    {
        d.insert("helloOk", true);
    }
    d.insert(
        "topologyVersion",
        doc! {"processId": shared.process_id, "counter": 0i64},
    );
    if !shared.standalone {
        d.insert("hosts", vec![shared.host.clone()]);
        d.insert("setName", SET_NAME);
        d.insert("setVersion", 1);
    }
    d.insert(
        if legacy {
            "ismaster"
        } else {
            "isWritablePrimary"
        },
        true,
    );
    if !shared.standalone {
        let now = shared.state().store.oplog.now();
        d.insert("secondary", false);
        d.insert("primary", shared.host.clone());
        d.insert("me", shared.host.clone());
        d.insert("electionId", election_id());
        let op_time = doc! {"ts": now, "t": 1i64};
        d.insert(
            "lastWrite",
            doc! {
                "opTime": op_time.clone(),
                "lastWriteDate": date_of(now),
                "majorityOpTime": op_time,
                "majorityWriteDate": date_of(now),
            },
        );
    }
    d.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE as i32);
    d.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    d.insert("maxWriteBatchSize", MAX_WRITE_BATCH_SIZE as i32);
    d.insert("localTime", DateTime::now());
    d.insert("logicalSessionTimeoutMinutes", 30);
    d.insert("connectionId", ctx.conn.id);
    d.insert("minWireVersion", 0);
    d.insert("maxWireVersion", MAX_WIRE_VERSION);
    d.insert("readOnly", false);
    d.insert("ok", 1.0);
    Ok(d)
}

pub fn build_info() -> Document {
    doc! {
        "version": SERVER_VERSION,
        "gitVersion": "mongo-double",
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": [7, 0, 14, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE as i32,
        "storageEngines": ["wiredTiger"],
        "ok": 1.0,
    }
}

/// `getParameter` for the parameters drivers and tools commonly read.
pub fn get_parameter(ctx: &Ctx<'_>) -> CmdResult<Document> {
    let all = ctx
        .cmd
        .get("getParameter")
        .is_some_and(|v| v.as_str() == Some("*"));
    let known = [
        (
            "featureCompatibilityVersion",
            Bson::Document(doc! {"version": "7.0"}),
        ),
        ("authenticationMechanisms", Bson::Array(vec![])),
        ("enableTestCommands", Bson::Boolean(true)),
        ("cursorTimeoutMillis", Bson::Int64(600_000)),
        ("transactionLifetimeLimitSeconds", Bson::Int32(60)),
    ];
    let mut out = Document::new();
    for (name, value) in known {
        if all || ctx.cmd.contains_key(name) {
            out.insert(name, value);
        }
    }
    if out.is_empty() {
        return Err(CmdError::new(
            crate::error::code::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    out.insert("ok", 1.0);
    Ok(out)
}

pub fn start_session() -> Document {
    doc! {
        "id": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: bson::Uuid::new().bytes().to_vec() }},
        "timeoutMinutes": 30,
        "ok": 1.0,
    }
}

pub fn server_status(ctx: &Ctx<'_>) -> Document {
    let shared = ctx.shared;
    let uptime = shared.started.elapsed();
    let mut d = doc! {
        "host": shared.host.clone(),
        "version": SERVER_VERSION,
        "process": "mongod",
        "pid": i64::from(std::process::id()),
        "uptime": uptime.as_secs_f64(),
        "uptimeMillis": uptime.as_millis() as i64,
        "localTime": DateTime::now(),
        "connections": {"current": shared.connections(), "available": 1_000_000 - shared.connections()},
    };
    if !shared.standalone {
        d.insert(
            "repl",
            doc! {"setName": SET_NAME, "isWritablePrimary": true, "secondary": false, "primary": shared.host.clone(), "me": shared.host.clone(), "hosts": [shared.host.clone()]},
        );
    }
    d.insert("ok", 1.0);
    d
}

pub fn repl_set_get_status(ctx: &Ctx<'_>, st: &State) -> CmdResult<Document> {
    if ctx.shared.standalone {
        return Err(CmdError::new(76, "not running with --replSet"));
    }
    let now = st.store.oplog.now();
    let op_time = doc! {"ts": now, "t": 1i64};
    Ok(doc! {
        "set": SET_NAME,
        "date": DateTime::now(),
        "myState": 1,
        "term": 1i64,
        "members": [{
            "_id": 0,
            "name": ctx.shared.host.clone(),
            "health": 1.0,
            "state": 1,
            "stateStr": "PRIMARY",
            "uptime": ctx.shared.started.elapsed().as_secs() as i64,
            "optime": op_time.clone(),
            "optimeDate": date_of(now),
            "self": true,
        }],
        "optimes": {"lastCommittedOpTime": op_time.clone(), "appliedOpTime": op_time.clone(), "durableOpTime": op_time},
        "ok": 1.0,
    })
}
