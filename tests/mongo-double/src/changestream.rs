//! Change streams (`$changeStream`), following the server's "Change Events" documentation and
//! the drivers' change-streams specification: resume tokens, `postBatchResumeToken`,
//! `fullDocument` / `fullDocumentBeforeChange` modes, invalidation, history loss.

use bson::{doc, Bson, Document, Timestamp};

use crate::error::{code, CmdError, CmdResult};
use crate::query::compare::identical;
use crate::query::pipeline::{self, Stage};
use crate::storage::oplog::{ts_key, Event, OpType, Oplog};
use crate::storage::Store;
use crate::wire::Crc32c;

/// What a resume token points at. At one cluster time a high-water mark sorts before the
/// event, and the event before the invalidate it causes (as in MongoDB's tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// "Every event before this cluster time was scanned": resuming returns the events at or
    /// after it (a `postBatchResumeToken` past the last returned event).
    HighWaterMark = 0,
    Event = 1,
    Invalidate = 2,
}

/// A decoded resume token: `_data` is `82`, the cluster time, the kind and the deployment id
/// in fixed-width hex, and a checksum. Cluster time first, so the tokens of one deployment
/// sort as strings in stream order, like MongoDB's KeyString tokens. The deployment id tells
/// a token of this double's history from one of another deployment with the same cluster
/// time, which MongoDB tells apart by the collection UUID and document key in its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    ts: Timestamp,
    kind: TokenKind,
    deployment: u64,
}

/// Hex digits before the checksum.
const TOKEN_BODY_LEN: usize = 36;

/// The cluster time right after `ts`: no event of this double's history falls in between.
fn tick(ts: Timestamp) -> Timestamp {
    match ts.increment.checked_add(1) {
        Some(increment) => Timestamp {
            time: ts.time,
            increment,
        },
        None => Timestamp {
            time: ts.time.saturating_add(1),
            increment: 0,
        },
    }
}

impl Token {
    fn to_doc(self) -> Document {
        let body = format!(
            "82{:08X}{:08X}{:02X}{:016X}",
            self.ts.time, self.ts.increment, self.kind as u8, self.deployment
        );
        let mut crc = Crc32c::new();
        crc.update(body.as_bytes());
        doc! {"_data": format!("{body}{:04X}", crc.finish() & 0xFFFF)}
    }

    /// The earliest cluster time a stream resumed from this token returns.
    fn resumes_at(self) -> Timestamp {
        match self.kind {
            TokenKind::HighWaterMark => self.ts,
            TokenKind::Event | TokenKind::Invalidate => tick(self.ts),
        }
    }

    fn parse(v: &Bson) -> CmdResult<Token> {
        let bad = |why: &str| {
            CmdError::new(
                code::INVALID_RESUME_TOKEN,
                format!("Invalid resume token {v}: {why}"),
            )
        };
        let data = match v {
            Bson::Document(d) => match d.get("_data") {
                Some(Bson::String(s)) => s.as_str(),
                _ => return Err(bad("_data of missing or of wrong type")),
            },
            _ => return Err(bad("a resume token must be a document")),
        };
        if data.len() != TOKEN_BODY_LEN + 4 || !data.is_ascii() || !data.starts_with("82") {
            return Err(bad("unrecognised _data"));
        }
        let hex = |r: std::ops::Range<usize>| {
            u64::from_str_radix(&data[r], 16).map_err(|_| bad("_data is not hex"))
        };
        let mut crc = Crc32c::new();
        crc.update(&data.as_bytes()[..TOKEN_BODY_LEN]);
        if hex(TOKEN_BODY_LEN..TOKEN_BODY_LEN + 4)? != u64::from(crc.finish() & 0xFFFF) {
            return Err(bad("checksum mismatch"));
        }
        let kind = match hex(18..20)? {
            0 => TokenKind::HighWaterMark,
            1 => TokenKind::Event,
            2 => TokenKind::Invalidate,
            _ => return Err(bad("unknown token type")),
        };
        let half = |r| hex(r).map(|n| n as u32);
        Ok(Token {
            ts: Timestamp {
                time: half(2..10)?,
                increment: half(10..18)?,
            },
            kind,
            deployment: hex(20..TOKEN_BODY_LEN)?,
        })
    }
}

/// Which namespaces a stream watches.
#[derive(Debug, Clone)]
pub enum Scope {
    Collection { db: String, coll: String },
    Database { db: String },
    Cluster,
}

impl Scope {
    fn sees(&self, ev: &Event) -> bool {
        match self {
            Scope::Collection { db, coll } => {
                ev.db == *db && ev.coll == *coll && ev.op != OpType::DropDatabase
            }
            Scope::Database { db } => ev.db == *db && !ev.coll.starts_with("system."),
            Scope::Cluster => {
                !matches!(ev.db.as_str(), "admin" | "config" | "local")
                    && !ev.coll.starts_with("system.")
            }
        }
    }

    fn invalidated_by(&self, ev: &Event) -> bool {
        match self {
            Scope::Collection { .. } => ev.op == OpType::Drop,
            Scope::Database { .. } => ev.op == OpType::DropDatabase,
            Scope::Cluster => false,
        }
    }

    /// The cursor namespace MongoDB reports for this stream.
    pub fn cursor_ns(&self) -> String {
        match self {
            Scope::Collection { db, coll } => format!("{db}.{coll}"),
            Scope::Database { db } => format!("{db}.$cmd.aggregate"),
            Scope::Cluster => "admin.$cmd.aggregate".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ImageMode {
    Off,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// An open change stream: its options and position in the history.
#[derive(Debug, Clone)]
pub struct StreamCursor {
    scope: Scope,
    full_document: ImageMode,
    before_change: ImageMode,
    show_expanded: bool,
    stages: Vec<Stage>,
    /// Next events are those after (or at, when `inclusive`) this cluster time.
    pos: Timestamp,
    inclusive: bool,
    /// The `postBatchResumeToken` so far.
    pbrt: Token,
    pending_invalidate: Option<Event>,
    /// Set once the invalidate event was returned.
    pub closed: bool,
}

/// One batch of change events.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Document>,
    pub post_batch_resume_token: Document,
}

fn mode(v: Option<&Bson>, field: &str, allowed: &[(&str, ImageMode)]) -> CmdResult<ImageMode> {
    match v {
        None => Ok(allowed[0].1),
        Some(Bson::String(s)) => allowed
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| CmdError::bad_value(format!("Enumeration value '{s}' for field '$changeStream.{field}' is not a valid value."))),
        Some(_) => Err(CmdError::wrong_type(&format!("$changeStream.{field}"), "string")),
    }
}

fn history_lost() -> CmdError {
    CmdError::new(
        code::CHANGE_STREAM_HISTORY_LOST,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}

/// Opens a stream from the `$changeStream` stage options and the stages that follow it.
pub fn open(
    oplog: &Oplog,
    scope: Scope,
    opts: &Document,
    rest: &[Bson],
) -> CmdResult<StreamCursor> {
    for k in opts.keys() {
        if !matches!(
            k.as_str(),
            "fullDocument"
                | "fullDocumentBeforeChange"
                | "resumeAfter"
                | "startAfter"
                | "startAtOperationTime"
                | "showExpandedEvents"
                | "allChangesForCluster"
                | "showSystemEvents"
                | "showRawUpdateDescription"
        ) {
            return Err(CmdError::new(
                code::UNKNOWN_IDL_FIELD,
                format!("BSON field '$changeStream.{k}' is an unknown field."),
            ));
        }
    }
    let full_document = mode(
        opts.get("fullDocument"),
        "fullDocument",
        &[
            ("default", ImageMode::Off),
            ("updateLookup", ImageMode::UpdateLookup),
            ("whenAvailable", ImageMode::WhenAvailable),
            ("required", ImageMode::Required),
        ],
    )?;
    let before_change = mode(
        opts.get("fullDocumentBeforeChange"),
        "fullDocumentBeforeChange",
        &[
            ("off", ImageMode::Off),
            ("whenAvailable", ImageMode::WhenAvailable),
            ("required", ImageMode::Required),
        ],
    )?;
    let stages = pipeline::parse(rest)?;
    if let Some(bad) = stages.iter().find(|s| !pipeline::is_per_document(s)) {
        return Err(CmdError::new(
            code::ILLEGAL_OPERATION,
            format!(
                "{} is not permitted in a $changeStream pipeline",
                stage_name(bad)
            ),
        ));
    }
    let starts: Vec<&str> = ["resumeAfter", "startAfter", "startAtOperationTime"]
        .into_iter()
        .filter(|k| opts.contains_key(*k))
        .collect();
    if starts.len() > 1 {
        return Err(CmdError::new(
            40674,
            "Only one type of resume option is allowed, but multiple were found.",
        ));
    }
    let deployment = oplog.deployment();
    let high_water_mark = |ts| Token {
        ts,
        kind: TokenKind::HighWaterMark,
        deployment,
    };
    let (pos, inclusive, pbrt) = match starts.first().copied() {
        None => (oplog.now(), false, high_water_mark(tick(oplog.now()))),
        Some("startAtOperationTime") => {
            let ts = opts.get_timestamp("startAtOperationTime").map_err(|_| {
                CmdError::wrong_type("$changeStream.startAtOperationTime", "timestamp")
            })?;
            check_in_history(oplog, ts)?;
            (ts, true, high_water_mark(ts))
        }
        Some(which) => {
            let raw = opts.get(which).unwrap_or(&Bson::Null);
            let token = Token::parse(raw)?;
            let (pos, inclusive) = resume_point(oplog, token, which == "startAfter", raw)?;
            (
                pos,
                inclusive,
                Token {
                    deployment,
                    ..token
                },
            )
        }
    };
    Ok(StreamCursor {
        scope,
        full_document,
        before_change,
        show_expanded: opts
            .get("showExpandedEvents")
            .is_some_and(crate::query::compare::truthy),
        stages,
        pos,
        inclusive,
        pbrt,
        pending_invalidate: None,
        closed: false,
    })
}

/// Refuses a start at or after `ts` when events from then on were trimmed from the history.
fn check_in_history(oplog: &Oplog, ts: Timestamp) -> CmdResult<()> {
    let hs = oplog.history_start();
    if ts_key(ts) < ts_key(hs) || (ts_key(ts) == ts_key(hs) && oplog.trimmed()) {
        return Err(history_lost());
    }
    Ok(())
}

fn stage_name(s: &Stage) -> &'static str {
    match s {
        Stage::Sort(_) => "$sort",
        Stage::Skip(_) => "$skip",
        Stage::Limit(_) => "$limit",
        Stage::Count(_) => "$count",
        Stage::Group(_) => "$group",
        _ => "stage",
    }
}

/// Where a stream given `resumeAfter` / `startAfter` `token` starts: `(cluster time,
/// inclusive)`.
fn resume_point(
    oplog: &Oplog,
    token: Token,
    start_after: bool,
    raw: &Bson,
) -> CmdResult<(Timestamp, bool)> {
    let not_found = || {
        CmdError::new(
            code::CHANGE_STREAM_FATAL_ERROR,
            format!("cannot resume stream; the resume token was not found. {raw}"),
        )
    };
    match token.kind {
        TokenKind::Invalidate if !start_after => Err(CmdError::new(
            code::INVALID_RESUME_TOKEN,
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
        )),
        TokenKind::Event | TokenKind::Invalidate => {
            if token.deployment == oplog.deployment() && oplog.get(token.ts).is_some() {
                Ok((token.ts, false))
            } else if ts_key(token.ts) <= ts_key(oplog.history_start()) {
                Err(history_lost())
            } else {
                Err(not_found())
            }
        }
        // Like MongoDB's, a high-water mark names only a cluster time, whichever deployment
        // made it.
        TokenKind::HighWaterMark => {
            check_in_history(oplog, token.ts)?;
            if ts_key(token.ts) > ts_key(tick(oplog.now())) {
                return Err(not_found());
            }
            Ok((token.ts, true))
        }
    }
}

impl StreamCursor {
    /// Collects up to `max` events after the current position and advances it.
    pub fn next_batch(&mut self, store: &Store, max: usize) -> CmdResult<Batch> {
        let mut events = Vec::new();
        if self.closed {
            return Ok(Batch {
                events,
                post_batch_resume_token: self.pbrt.to_doc(),
            });
        }
        let oplog = &store.oplog;
        let deployment = oplog.deployment();
        if let Some(ev) = self.pending_invalidate.take() {
            return self.emit_invalidate(&ev, events, deployment);
        }
        let hs = ts_key(oplog.history_start());
        let p = ts_key(self.pos);
        if oplog.trimmed() && (p < hs || (p == hs && self.inclusive)) {
            return Err(history_lost());
        }
        let mut full = false;
        for ev in oplog.since(self.pos, self.inclusive) {
            self.pos = ev.ts;
            self.inclusive = false;
            if !self.scope.sees(ev) {
                continue;
            }
            let token = Token {
                ts: ev.ts,
                kind: TokenKind::Event,
                deployment,
            };
            let token_doc = token.to_doc();
            let rendered = self.render(ev, store, &token_doc)?;
            if let Some(out) = self.transform(rendered, &token_doc)? {
                events.push(out);
                self.pbrt = token;
            }
            if self.scope.invalidated_by(ev) {
                if events.len() < max {
                    return self.emit_invalidate(ev, events, deployment);
                }
                self.pending_invalidate = Some(ev.clone());
                break;
            }
            if events.len() >= max {
                full = true;
                break;
            }
        }
        if !full && self.pending_invalidate.is_none() {
            // Everything up to the current cluster time has been scanned. As mongod, the
            // PBRT becomes a high-water mark only once the scan went past the last returned
            // event; otherwise it stays that event's token.
            let now = oplog.now();
            if ts_key(now) >= ts_key(self.pos) {
                self.pos = now;
                self.inclusive = false;
            }
            if ts_key(tick(now)) > ts_key(self.pbrt.resumes_at()) {
                self.pbrt = Token {
                    ts: tick(now),
                    kind: TokenKind::HighWaterMark,
                    deployment,
                };
            }
        }
        Ok(Batch {
            events,
            post_batch_resume_token: self.pbrt.to_doc(),
        })
    }

    fn emit_invalidate(
        &mut self,
        ev: &Event,
        mut events: Vec<Document>,
        deployment: u64,
    ) -> CmdResult<Batch> {
        self.pbrt = Token {
            ts: ev.ts,
            kind: TokenKind::Invalidate,
            deployment,
        };
        let token = self.pbrt.to_doc();
        let inv = doc! {
            "_id": token.clone(),
            "operationType": "invalidate",
            "clusterTime": ev.ts,
            "wallTime": ev.wall,
        };
        if let Some(out) = self.transform(inv, &token)? {
            events.push(out);
        }
        self.closed = true;
        Ok(Batch {
            events,
            post_batch_resume_token: token,
        })
    }

    /// Applies the user's stages; the resume token must survive them.
    fn transform(&self, event: Document, token: &Document) -> CmdResult<Option<Document>> {
        let out = pipeline::apply_one(&self.stages, event)?;
        if let Some(d) = &out {
            if !d
                .get("_id")
                .is_some_and(|id| identical(id, &Bson::Document(token.clone())))
            {
                return Err(CmdError::new(
                    code::CHANGE_STREAM_FATAL_ERROR,
                    "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
                ));
            }
        }
        Ok(out)
    }

    fn render(&self, ev: &Event, store: &Store, token: &Document) -> CmdResult<Document> {
        let mut d = doc! {
            "_id": token.clone(),
            "operationType": ev.op.name(),
            "clusterTime": ev.ts,
            "wallTime": ev.wall,
        };
        if self.show_expanded {
            if let Some(u) = &ev.uuid {
                d.insert("collectionUUID", u.clone());
            }
        }
        let summary = || {
            format!(
                "{{clusterTime: {}, operationType: \"{}\", ns: {}.{}}}",
                Bson::Timestamp(ev.ts),
                ev.op.name(),
                ev.db,
                ev.coll
            )
        };
        match ev.op {
            OpType::Insert | OpType::Replace => {
                d.insert("fullDocument", ev.post.clone().map(Bson::Document).unwrap_or(Bson::Null));
            }
            OpType::Update => match self.full_document {
                ImageMode::Off => {}
                ImageMode::UpdateLookup => {
                    let current = ev
                        .key
                        .as_ref()
                        .and_then(|k| k.get("_id"))
                        .and_then(|id| store.collection(&ev.db, &ev.coll).and_then(|c| c.find_by_id(id)));
                    d.insert("fullDocument", current.cloned().map(Bson::Document).unwrap_or(Bson::Null));
                }
                ImageMode::WhenAvailable | ImageMode::Required => match &ev.post {
                    Some(p) => {
                        d.insert("fullDocument", p.clone());
                    }
                    None if self.full_document == ImageMode::Required => {
                        return Err(CmdError::new(
                            code::NO_MATCHING_DOCUMENT,
                            format!("Change stream was configured to require a post-image for all update events, but the post-image was not found for event: {}", summary()),
                        ))
                    }
                    None => {
                        d.insert("fullDocument", Bson::Null);
                    }
                },
            },
            _ => {}
        }
        let mut ns = doc! {"db": ev.db.clone()};
        if ev.op != OpType::DropDatabase {
            ns.insert("coll", ev.coll.clone());
        }
        d.insert("ns", ns);
        if let Some(k) = &ev.key {
            d.insert("documentKey", k.clone());
        }
        if let Some(u) = &ev.update {
            d.insert("updateDescription", u.clone());
        }
        if matches!(ev.op, OpType::Update | OpType::Replace | OpType::Delete) {
            match (self.before_change, &ev.pre) {
                (ImageMode::Off | ImageMode::UpdateLookup, _) => {}
                (_, Some(pre)) => {
                    d.insert("fullDocumentBeforeChange", pre.clone());
                }
                (ImageMode::Required, None) => {
                    return Err(CmdError::new(
                        code::NO_MATCHING_DOCUMENT,
                        format!("Change stream was configured to require a pre-image for all update, delete and replace events, but the pre-image was not found for event: {}", summary()),
                    ))
                }
                (ImageMode::WhenAvailable, None) => {
                    d.insert("fullDocumentBeforeChange", Bson::Null);
                }
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_garbage() {
        let t = Token {
            ts: Timestamp {
                time: 1_700_000_000,
                increment: 7,
            },
            kind: TokenKind::Event,
            deployment: 0x0123_4567_89AB_CDEF,
        };
        let d = t.to_doc();
        assert_eq!(Token::parse(&Bson::Document(d.clone())).expect("parse"), t);
        let mut bad = d.get_str("_data").expect("data").to_string();
        bad.replace_range(5..6, if &bad[5..6] == "0" { "1" } else { "0" });
        let err = Token::parse(&Bson::Document(doc! {"_data": bad})).expect_err("garbage");
        assert_eq!(err.code, 260);
        assert_eq!(Token::parse(&Bson::Int32(1)).expect_err("type").code, 260);
    }

    #[test]
    fn tokens_sort_as_strings_in_stream_order() {
        let at = |ts, kind| {
            Token {
                ts,
                kind,
                deployment: u64::MAX,
            }
            .to_doc()
            .get_str("_data")
            .expect("data")
            .to_string()
        };
        let t = Timestamp {
            time: 1_700_000_000,
            increment: u32::MAX,
        };
        let order = [
            at(t, TokenKind::HighWaterMark),
            at(t, TokenKind::Event),
            at(t, TokenKind::Invalidate),
            at(tick(t), TokenKind::HighWaterMark),
            at(tick(tick(t)), TokenKind::Event),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
}
