//! The shadow engine under arbitrary sequences of requests (structured fuzzing).
//!
//! An input is a pair of small limits, a `local_wins` policy over the keys, and a list of
//! operations: `Update` (of `reported` or `desired`, with a patch given either as raw
//! JSON/CBOR bytes decoded by the codec or as a generated tree over a small set of keys,
//! so that updates collide, and the lifecycle fields: an expiry, the local-wins flag, the
//! author's time), `Refuse` (a patch of refused leaves), `Expire`, `Get` and `Delete`,
//! each with an optional expected version and a clock that may step back. They are
//! applied in order through `shadow::apply_update` / `refuse` / `expire` / `get` /
//! `delete`, keeping the document as the service does (stored when `changed`, dropped on
//! delete).
//!
//! Checked after every step, besides "no panic":
//! - the version never decreases while the document exists: +1 on every change, the same
//!   otherwise; the first document is version 1; a `clientToken` over 64 bytes, an update
//!   deeper than `max_depth` or with an empty key is refused with 400, then an expected
//!   version that is not the current one with 409; no other code than 400, 409, 413;
//! - an accepted change never exceeds the limits: serialized `state` ≤
//!   `max_document_bytes`, each section ≤ `max_depth` deep; a rejection changes nothing;
//! - the update holds afterwards (its leaves are in the section — or, for desired, were
//!   recorded expired or superseded at once —, its nulls are gone; the leaves' metadata
//!   is `{"timestamp": now, ...lifecycle fields}` when the state changed); an unchanged
//!   update returns the document untouched; the other section is untouched, except that
//!   a report may take desired leaves away (expired, superseded) and never adds one;
//! - the lifecycle: after any operation at `now` no desired leaf is due; no recorded leaf
//!   (refused, expired, superseded) shares a path or a prefix with a desired leaf, so
//!   none is in the delta; a refusal of the value desired holds takes that leaf out;
//! - applying the same update again changes nothing (merge is idempotent);
//! - the document is well formed: no `{}` and no `null` in the state, metadata mirrors
//!   the state leaf for leaf, in every section;
//! - `delta(doc)` is a sub-tree of `desired` (its keys ⊆ desired keys, its leaves are
//!   desired's), with metadata only for its own keys, the document's version, and is the
//!   one `apply_update` returned;
//! - the document survives the store's encoding (CBOR) unchanged.
#![no_main]

use arbitrary::Arbitrary;
use iotsphere_gateway::codec::{self, Encoding};
use iotsphere_gateway::shadow::{
    self, Applied, Document, ErrorCode, Limits, LocalWins, Object, Refusal, Section, Update,
    MAX_CLIENT_TOKEN_BYTES, METADATA_LEAF_KEYS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Number, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    max_document_bytes: u16,
    max_depth: u8,
    /// `[shadow] local_wins`: paths of one or two keys.
    local_wins: Vec<(Key, Option<Key>)>,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Update {
        desired: bool,
        patch: Patch,
        version: Option<VersionPick>,
        client_token: Option<String>,
        /// Desired: expires this many seconds after `now`.
        expires_in: Option<u8>,
        local_wins: bool,
        /// The author's time, in seconds relative to `now` (the engine judges it).
        changed_at: Option<i8>,
        /// Seconds since the previous operation; negative: the clock stepped back.
        clock: i8,
    },
    Refuse {
        patch: Patch,
        code: i64,
        clock: i8,
    },
    Expire {
        clock: i8,
    },
    Get,
    Delete {
        version: Option<VersionPick>,
    },
}

/// The expected version of a request, relative to the current one so that both matches
/// and conflicts are common.
#[derive(Debug, Arbitrary)]
enum VersionPick {
    Current,
    Next,
    Previous,
    Exact(u64),
}

#[derive(Debug, Arbitrary)]
enum Patch {
    /// Bytes as a device sends them; only a decoded object is an update.
    Raw(Vec<u8>),
    Tree(Vec<(Key, Node)>),
}

/// Keys from a small set, so that updates hit the same paths; `""` must be refused.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Key(u8);

const KEYS: [&str; 10] = [
    "temp",
    "targetTemp",
    "on",
    "mode",
    "heater",
    "a",
    "b",
    "",
    "x.y",
    "$set",
];

#[derive(Debug, Arbitrary)]
enum Node {
    Null,
    Bool(bool),
    Small(i8),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Array(Vec<Node>),
    Object(Vec<(Key, Node)>),
}

fn key(k: Key) -> String {
    KEYS[usize::from(k.0) % KEYS.len()].to_string()
}

fn object(entries: &[(Key, Node)]) -> Object {
    entries.iter().map(|(k, v)| (key(*k), value(v))).collect()
}

fn value(node: &Node) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Small(i) => Value::from(*i),
        Node::Int(i) => Value::from(*i),
        Node::UInt(u) => Value::from(*u),
        Node::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Node::Text(s) => Value::String(s.clone()),
        Node::Array(items) => Value::Array(items.iter().map(value).collect()),
        Node::Object(entries) => Value::Object(object(entries)),
    }
}

fn pick(version: &Option<VersionPick>, current: Option<&Document>) -> Option<u64> {
    let now = current.map_or(0, |d| d.version);
    version.as_ref().map(|v| match v {
        VersionPick::Current => now,
        VersionPick::Next => now.wrapping_add(1),
        VersionPick::Previous => now.wrapping_sub(1),
        VersionPick::Exact(v) => *v,
    })
}

fn patch_object(patch: &Patch) -> Option<Object> {
    match patch {
        Patch::Raw(bytes) => match codec::decode_value(bytes) {
            Ok((_, Value::Object(state))) => Some(state),
            _ => None,
        },
        Patch::Tree(entries) => Some(object(entries)),
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_document_bytes: 16 + usize::from(input.max_document_bytes % 2048),
        max_depth: 1 + usize::from(input.max_depth % 8),
    };
    let paths: Vec<String> = input
        .local_wins
        .iter()
        .map(|(first, second)| match second {
            Some(second) => format!("{}.{}", key(*first), key(*second)),
            None => key(*first),
        })
        .collect();
    // Paths with an empty key (or "x.y", two keys) are what check-config refuses or
    // reads as two keys; the engine's own parser decides.
    let local_wins = LocalWins::new(&paths).unwrap_or_default();
    let mut current: Option<Document> = None;
    let mut now: u64 = 1_764_000_000;
    for op in &input.ops {
        match op {
            Op::Update {
                desired,
                patch,
                version,
                client_token,
                expires_in,
                local_wins: flag,
                changed_at,
                clock,
            } => {
                now = now.saturating_add_signed(i64::from(*clock));
                let Some(state) = patch_object(patch) else {
                    continue;
                };
                let update = Update {
                    section: if *desired {
                        Section::Desired
                    } else {
                        Section::Reported
                    },
                    state,
                    version: pick(version, current.as_ref()),
                    client_token: client_token.clone(),
                    expires_at: expires_in.map(|secs| now + u64::from(secs)),
                    local_wins: *flag,
                    changed_at: changed_at.map(|at| now.saturating_add_signed(i64::from(at))),
                };
                match shadow::apply_update(current.as_ref(), &update, now, &limits, &local_wins) {
                    Ok(applied) => {
                        check_nothing_due(&applied, now);
                        check_accepted(
                            current.as_ref(),
                            &update,
                            &applied,
                            now,
                            &limits,
                            &local_wins,
                        );
                        if applied.changed {
                            current = Some(applied.document);
                        }
                    }
                    Err(rejection) => {
                        let code = rejection.code;
                        assert!(
                            matches!(
                                code,
                                ErrorCode::BadRequest
                                    | ErrorCode::Conflict
                                    | ErrorCode::PayloadTooLarge
                            ),
                            "unexpected rejection {rejection}"
                        );
                        // The engine checks the request in this order.
                        let current_version = current.as_ref().map_or(0, |d| d.version);
                        let token_too_long = update
                            .client_token
                            .as_ref()
                            .is_some_and(|t| t.len() > MAX_CLIENT_TOKEN_BYTES);
                        let lifecycle_on_a_report = update.section == Section::Reported
                            && (update.expires_at.is_some() || update.local_wins);
                        let bad_request = token_too_long
                            || depth(&update.state) > limits.max_depth
                            || has_empty_key(&update.state)
                            || lifecycle_on_a_report;
                        if bad_request {
                            assert_eq!(code, ErrorCode::BadRequest, "{rejection}");
                        } else if update.version.is_some_and(|v| v != current_version) {
                            assert_eq!(code, ErrorCode::Conflict, "{rejection}");
                        }
                    }
                }
            }
            Op::Refuse { patch, code, clock } => {
                now = now.saturating_add_signed(i64::from(*clock));
                let Some(state) = patch_object(patch) else {
                    continue;
                };
                let refusal = Refusal {
                    state,
                    reason: "cannot".into(),
                    code: *code,
                    client_token: None,
                };
                match shadow::refuse(current.as_ref(), &refusal, now, &limits) {
                    Ok(applied) => {
                        check_nothing_due(&applied, now);
                        check_refused(current.as_ref(), &refusal, &applied);
                        if applied.changed {
                            current = Some(applied.document);
                        }
                    }
                    Err(rejection) => {
                        assert_eq!(rejection.code, ErrorCode::BadRequest, "{rejection}")
                    }
                }
            }
            Op::Expire { clock } => {
                now = now.saturating_add_signed(i64::from(*clock));
                if let Some(document) = &current {
                    let applied = shadow::expire(document, now, &limits).expect("expire");
                    check_nothing_due(&applied, now);
                    assert_eq!(applied.delta, shadow::delta(&applied.document));
                    if applied.changed {
                        assert_eq!(applied.document.version, document.version + 1);
                        current = Some(applied.document);
                    } else {
                        assert_eq!(&applied.document, document);
                    }
                }
            }
            Op::Get => match shadow::get(current.as_ref()) {
                Ok(document) => assert_eq!(Some(document), current.as_ref()),
                Err(rejection) => {
                    assert!(current.is_none(), "get refused: {rejection}");
                    assert_eq!(rejection.code, ErrorCode::NotFound);
                }
            },
            Op::Delete { version } => {
                let expected = pick(version, current.as_ref());
                match shadow::delete(current.as_ref(), expected) {
                    Ok(deleted) => {
                        let document = current.take().expect("deleted a missing document");
                        assert_eq!(deleted, document.version);
                        assert!(expected.is_none_or(|v| v == deleted));
                    }
                    Err(rejection) => match &current {
                        None => assert_eq!(rejection.code, ErrorCode::NotFound),
                        Some(document) => {
                            assert_eq!(rejection.code, ErrorCode::Conflict, "{rejection}");
                            assert_ne!(expected, Some(document.version));
                        }
                    },
                }
            }
        }
        if let Some(document) = &current {
            check_document(document, &limits);
        }
    }
});

/// After an accepted update, refusal or expiry at `now` (a rejection or a `get` leaves
/// the document as it was), no desired leaf is due.
fn check_nothing_due(applied: &Applied, now: u64) {
    assert!(
        shadow::next_expiry(&applied.document).is_none_or(|at| at > now),
        "a desired leaf is left due at {now}"
    );
}

/// A refusal takes out of the delta every refused leaf whose value desired held. (Its
/// record may be gone already: under the small limits here the oldest records give way,
/// and a leaf due at `now` expires before it can be refused.)
fn check_refused(before: Option<&Document>, refusal: &Refusal, applied: &Applied) {
    let before = before.cloned().unwrap_or_default();
    let delta = shadow::delta_state(Some(&applied.document));
    for (path, value) in leaf_paths(&refusal.state) {
        let held = lookup(&before.state.desired, &path)
            .is_some_and(|desired| !desired.is_object() && same(desired, value));
        if held && before.version > 0 {
            assert!(lookup(&delta, &path).is_none(), "refused {path:?} pending");
        }
    }
}

/// Leaves of a tree (nulls excluded) with their paths.
fn leaf_paths(tree: &Object) -> Vec<(Vec<String>, &Value)> {
    let mut out = Vec::new();
    let mut pending: Vec<(Vec<String>, &Object)> = vec![(Vec::new(), tree)];
    while let Some((path, node)) = pending.pop() {
        for (key, value) in node {
            let mut here = path.clone();
            here.push(key.clone());
            match value {
                Value::Object(child) => pending.push((here, child)),
                Value::Null => {}
                leaf => out.push((here, leaf)),
            }
        }
    }
    out
}

fn lookup<'a>(tree: &'a Object, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut node = tree;
    for key in parents {
        node = node.get(key)?.as_object()?;
    }
    node.get(last)
}

/// JSON equality with numbers by value (the engine's own rule is exact for integers; the
/// refusal check only needs "the engine would have matched" for the generated values).
fn same(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(l), Value::Number(r)) => {
            match (l.as_i64(), r.as_i64(), l.as_u64(), r.as_u64()) {
                (Some(l), Some(r), _, _) => l == r,
                (_, _, Some(l), Some(r)) => l == r,
                _ => l.is_f64() && r.is_f64() && l.as_f64() == r.as_f64(),
            }
        }
        (Value::Array(l), Value::Array(r)) => {
            l.len() == r.len() && l.iter().zip(r).all(|(l, r)| same(l, r))
        }
        _ => left == right,
    }
}

/// Whether one path is a prefix of the other.
fn overlap(left: &[String], right: &[String]) -> bool {
    left.iter().zip(right).all(|(l, r)| l == r)
}

/// Checks an accepted update of `before` (the stored document, if any).
fn check_accepted(
    before: Option<&Document>,
    update: &Update,
    applied: &Applied,
    now: u64,
    limits: &Limits,
    local_wins: &LocalWins,
) {
    let old = before.cloned().unwrap_or_default();
    let document = &applied.document;
    assert!(
        update
            .client_token
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_CLIENT_TOKEN_BYTES),
        "accepted a clientToken of {} bytes",
        update.client_token.as_ref().map_or(0, String::len)
    );
    assert!(!has_empty_key(&update.state), "accepted an empty key");
    if let Some(expected) = update.version {
        assert_eq!(expected, old.version, "accepted a version conflict");
    }
    assert_eq!(applied.delta, shadow::delta(document), "Applied::delta");

    let section = update.section;
    let other = match section {
        Section::Reported => Section::Desired,
        Section::Desired => Section::Reported,
    };
    if applied.changed {
        assert_eq!(
            document.version,
            old.version + 1,
            "a change bumps the version by one"
        );
        assert_eq!(document.timestamp, now);
        let size = serde_json::to_vec(&document.state).map_or(usize::MAX, |v| v.len());
        assert!(
            size <= limits.max_document_bytes,
            "accepted state of {size} bytes > {}",
            limits.max_document_bytes
        );
        match other {
            Section::Reported => {
                assert_eq!(document.state.reported, old.state.reported);
                assert_eq!(document.metadata.reported, old.metadata.reported);
            }
            // A report (or the expiry before it) only takes desired leaves away.
            Section::Desired => {
                for (path, value) in leaf_paths(&document.state.desired) {
                    assert_eq!(
                        lookup(&old.state.desired, &path),
                        Some(value),
                        "a report added desired {path:?}"
                    );
                }
            }
        }
        // The state differs, or (a due leaf rewritten with its value) only its metadata.
        assert!(
            document.state != old.state || document.metadata != old.metadata,
            "a change that changed nothing"
        );
    } else {
        assert_eq!(
            document, &old,
            "an unchanged update returns the document untouched"
        );
    }
    // A desired leaf may have been recorded expired or superseded at once. When only the
    // expiry before the update changed the state, the update's leaves keep their stamps.
    let after_expiry =
        shadow::expire(&old, now, limits).map_or(old.state.clone(), |a| a.document.state);
    let merged = applied.changed && document.state != after_expiry;
    // A desired write already past its expiry, or older than a local change (only a
    // write with its own time can be), leaves desired at once; its record may even have
    // given way to the size limit.
    let may_vanish = section == Section::Desired
        && (update.expires_at.is_some_and(|at| at <= now) || update.changed_at.is_some());
    check_holds(
        document.state.section(section),
        document.metadata.section(section),
        &update.state,
        merged.then_some(now),
        may_vanish,
    );

    // Merge is idempotent: the same update again changes nothing.
    let again = Update {
        version: None,
        ..update.clone()
    };
    match shadow::apply_update(Some(document), &again, now, limits, local_wins) {
        Ok(second) => {
            assert!(
                !second.changed,
                "the same update applied twice changed the state twice"
            );
            if document.version > 0 {
                assert_eq!(&second.document, document);
            }
        }
        Err(rejection) => panic!("the same update applied again is refused: {rejection}"),
    }
}

/// After a merge of `patch`: its leaves are in `state` (unless they `may_vanish`), its
/// nulls are gone, and when the state changed at `now` the leaves' metadata is
/// `{"timestamp": now, ...}`.
fn check_holds(
    state: &Object,
    metadata: &Object,
    patch: &Object,
    now: Option<u64>,
    may_vanish: bool,
) {
    for (key, wanted) in patch {
        match wanted {
            Value::Null => {
                assert!(!state.contains_key(key), "null left {key:?} in place");
                assert!(!metadata.contains_key(key), "null left metadata of {key:?}");
            }
            Value::Object(inner) => match (state.get(key), metadata.get(key)) {
                (Some(Value::Object(child)), Some(Value::Object(child_metadata))) => {
                    check_holds(child, child_metadata, inner, now, may_vanish)
                }
                (Some(Value::Object(_)), other) => {
                    panic!("metadata of object {key:?} is {other:?}")
                }
                // Nothing was merged (the patch had nothing to write), or all of it
                // left at once.
                _ => assert!(
                    !has_leaf(inner) || may_vanish,
                    "object patch {key:?} lost: {wanted}"
                ),
            },
            _ if state.get(key).is_none() && may_vanish => {}
            leaf => {
                assert_eq!(state.get(key), Some(leaf), "leaf {key:?} not written");
                if let Some(now) = now {
                    let stamped = metadata
                        .get(key)
                        .and_then(|leaf| leaf.get("timestamp"))
                        .and_then(Value::as_u64);
                    assert_eq!(stamped, Some(now), "metadata of leaf {key:?}");
                }
            }
        }
    }
}

fn has_leaf(patch: &Object) -> bool {
    patch.values().any(|value| match value {
        Value::Null => false,
        Value::Object(inner) => has_leaf(inner),
        _ => true,
    })
}

fn has_empty_key(tree: &Object) -> bool {
    tree.iter()
        .any(|(key, value)| key.is_empty() || value_has_empty_key(value))
}

fn value_has_empty_key(value: &Value) -> bool {
    match value {
        Value::Object(map) => has_empty_key(map),
        Value::Array(items) => items.iter().any(value_has_empty_key),
        _ => false,
    }
}

/// Invariants of every stored document.
fn check_document(document: &Document, limits: &Limits) {
    assert!(document.version >= 1, "stored a document of version 0");
    let size = serde_json::to_vec(&document.state).map_or(usize::MAX, |v| v.len());
    assert!(
        size <= limits.max_document_bytes,
        "stored state of {size} bytes"
    );
    for section in [Section::Reported, Section::Desired] {
        let state = document.state.section(section);
        let depth = depth(state);
        assert!(depth <= limits.max_depth, "{section:?} is {depth} deep");
        check_mirror(state, document.metadata.section(section));
    }
    let records = [
        (&document.state.refused, &document.metadata.refused),
        (&document.state.expired, &document.metadata.expired),
        (&document.state.superseded, &document.metadata.superseded),
    ];
    let desired = leaf_paths(&document.state.desired);
    for (state, metadata) in records {
        check_mirror(state, metadata);
        for (recorded, _) in leaf_paths(state) {
            for (wanted, _) in &desired {
                assert!(
                    !overlap(&recorded, wanted),
                    "{recorded:?} recorded and desired"
                );
            }
        }
    }

    match shadow::delta(document) {
        Some(delta) => {
            assert!(!delta.state.is_empty(), "an empty delta is None");
            assert_eq!(delta.version, document.version);
            assert_eq!(delta.timestamp, document.timestamp);
            check_subtree(&delta.state, &delta.metadata, &document.state.desired);
        }
        None => assert!(shadow::delta_state(Some(document)).is_empty()),
    }

    // The store keeps documents as CBOR (store::put): they must read back the same.
    let bytes = codec::encode(Encoding::Cbor, document);
    match ciborium::from_reader::<Document, _>(bytes.as_slice()) {
        Ok(back) => assert_eq!(&back, document, "CBOR round trip of the stored document"),
        Err(e) => panic!("the stored document does not read back: {e}"),
    }
}

/// No `{}` and no `null` in the state; metadata has the same keys, an object for each
/// object and `{"timestamp": <u64>}` for each leaf.
fn check_mirror(state: &Object, metadata: &Object) {
    let keys = |map: &Object| {
        map.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        keys(state),
        keys(metadata),
        "metadata keys differ from state keys"
    );
    for (key, value) in state {
        let meta = &metadata[key];
        match value {
            Value::Null => panic!("null stored at {key:?}"),
            Value::Object(child) => {
                assert!(!child.is_empty(), "{{}} stored at {key:?}");
                let Value::Object(child_metadata) = meta else {
                    panic!("metadata of object {key:?} is {meta}");
                };
                check_mirror(child, child_metadata);
            }
            _ => {
                let ok = meta.as_object().is_some_and(|m| {
                    m.get("timestamp").is_some_and(Value::is_u64)
                        && m.keys().all(|k| METADATA_LEAF_KEYS.contains(&k.as_str()))
                });
                assert!(ok, "metadata of leaf {key:?} is {meta}");
            }
        }
    }
}

/// `delta` is a sub-tree of `desired`, its metadata only for its own keys.
fn check_subtree(delta: &Object, metadata: &Object, desired: &Object) {
    for key in metadata.keys() {
        assert!(
            delta.contains_key(key),
            "delta metadata for {key:?} outside the delta"
        );
    }
    for (key, value) in delta {
        let wanted = desired
            .get(key)
            .unwrap_or_else(|| panic!("delta key {key:?} is not desired"));
        match (value, wanted) {
            (Value::Object(child), Value::Object(wanted)) => {
                assert!(!child.is_empty(), "{{}} in the delta at {key:?}");
                let empty = Object::new();
                let child_metadata = metadata
                    .get(key)
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                check_subtree(child, child_metadata, wanted);
            }
            _ => assert_eq!(value, wanted, "delta leaf {key:?} is not the desired one"),
        }
    }
}

/// The engine's depth (shadow::validate::depth): an object is one level more than its
/// deepest child; an array is a level only when it holds an object or an array.
fn depth(tree: &Object) -> usize {
    let mut deepest = 1;
    let mut pending: Vec<(&Value, usize)> = tree.values().map(|child| (child, 1)).collect();
    while let Some((value, parent)) = pending.pop() {
        let level = parent + 1;
        match value {
            Value::Object(map) => {
                deepest = deepest.max(level);
                pending.extend(map.values().map(|child| (child, level)));
            }
            Value::Array(items)
                if items
                    .iter()
                    .any(|v| matches!(v, Value::Object(_) | Value::Array(_))) =>
            {
                deepest = deepest.max(level);
                pending.extend(items.iter().map(|child| (child, level)));
            }
            _ => {}
        }
    }
    deepest
}
