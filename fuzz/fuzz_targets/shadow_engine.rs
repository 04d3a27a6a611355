//! The shadow engine under arbitrary sequences of requests (structured fuzzing).
//!
//! An input is a pair of small limits and a list of operations: `Update` (of `reported`
//! or `desired`, with a patch given either as raw JSON/CBOR bytes decoded by the codec or
//! as a generated tree over a small set of keys, so that updates collide), `Get` and
//! `Delete`, each with an optional expected version and a clock that may step back.
//! They are applied in order through `shadow::apply_update` / `get` / `delete`, keeping
//! the document as the service does (stored when `changed`, dropped on delete).
//!
//! Checked after every step, besides "no panic":
//! - the version never decreases while the document exists: +1 on every change, the same
//!   otherwise; the first document is version 1; a `clientToken` over 64 bytes, an update
//!   deeper than `max_depth` or with an empty key is refused with 400, then an expected
//!   version that is not the current one with 409; no other code than 400, 409, 413;
//! - an accepted change never exceeds the limits: serialized `state` ≤
//!   `max_document_bytes`, each section ≤ `max_depth` deep; a rejection changes nothing;
//! - the update holds afterwards (its leaves are in the section, its nulls are gone; the
//!   leaves' metadata is `{"timestamp": now}` when the state changed); an unchanged
//!   update returns the document untouched; the other section is untouched;
//! - applying the same update again changes nothing (merge is idempotent);
//! - the document is well formed: no `{}` and no `null` in the state, metadata mirrors
//!   the state leaf for leaf;
//! - `delta(doc)` is a sub-tree of `desired` (its keys ⊆ desired keys, its leaves are
//!   desired's), with metadata only for its own keys, the document's version, and is the
//!   one `apply_update` returned;
//! - the document survives the store's encoding (CBOR) unchanged.
#![no_main]

use arbitrary::Arbitrary;
use iotsphere_gateway::codec::{self, Encoding};
use iotsphere_gateway::shadow::{
    self, Applied, Document, ErrorCode, Limits, Object, Section, Update, MAX_CLIENT_TOKEN_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Number, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    max_document_bytes: u16,
    max_depth: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Update {
        desired: bool,
        patch: Patch,
        version: Option<VersionPick>,
        client_token: Option<String>,
        /// Seconds since the previous operation; negative: the clock stepped back.
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

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_document_bytes: 16 + usize::from(input.max_document_bytes % 2048),
        max_depth: 1 + usize::from(input.max_depth % 8),
    };
    let mut current: Option<Document> = None;
    let mut now: u64 = 1_764_000_000;
    for op in &input.ops {
        match op {
            Op::Update {
                desired,
                patch,
                version,
                client_token,
                clock,
            } => {
                now = now.saturating_add_signed(i64::from(*clock));
                let state = match patch {
                    Patch::Raw(bytes) => match codec::decode_value(bytes) {
                        Ok((_, Value::Object(state))) => state,
                        _ => continue,
                    },
                    Patch::Tree(entries) => object(entries),
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
                };
                match shadow::apply_update(current.as_ref(), &update, now, &limits) {
                    Ok(applied) => {
                        check_accepted(current.as_ref(), &update, &applied, now, &limits);
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
                        let bad_request = token_too_long
                            || depth(&update.state) > limits.max_depth
                            || has_empty_key(&update.state);
                        if bad_request {
                            assert_eq!(code, ErrorCode::BadRequest, "{rejection}");
                        } else if update.version.is_some_and(|v| v != current_version) {
                            assert_eq!(code, ErrorCode::Conflict, "{rejection}");
                        }
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

/// Checks an accepted update of `before` (the stored document, if any).
fn check_accepted(
    before: Option<&Document>,
    update: &Update,
    applied: &Applied,
    now: u64,
    limits: &Limits,
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
        assert_eq!(document.state.section(other), old.state.section(other));
        assert_eq!(
            document.metadata.section(other),
            old.metadata.section(other)
        );
        assert_ne!(document.state.section(section), old.state.section(section));
    } else {
        assert_eq!(
            document, &old,
            "an unchanged update returns the document untouched"
        );
    }
    check_holds(
        document.state.section(section),
        document.metadata.section(section),
        &update.state,
        applied.changed.then_some(now),
    );

    // Merge is idempotent: the same update again changes nothing.
    let again = Update {
        version: None,
        ..update.clone()
    };
    match shadow::apply_update(Some(document), &again, now, limits) {
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

/// After a merge of `patch`: its leaves are in `state`, its nulls are gone, and when the
/// state changed at `now` the leaves' metadata is `{"timestamp": now}`.
fn check_holds(state: &Object, metadata: &Object, patch: &Object, now: Option<u64>) {
    for (key, wanted) in patch {
        match wanted {
            Value::Null => {
                assert!(!state.contains_key(key), "null left {key:?} in place");
                assert!(!metadata.contains_key(key), "null left metadata of {key:?}");
            }
            Value::Object(inner) => match (state.get(key), metadata.get(key)) {
                (Some(Value::Object(child)), Some(Value::Object(child_metadata))) => {
                    check_holds(child, child_metadata, inner, now)
                }
                (Some(Value::Object(_)), other) => {
                    panic!("metadata of object {key:?} is {other:?}")
                }
                // Nothing was merged: the patch must have had nothing to write.
                _ => assert!(!has_leaf(inner), "object patch {key:?} lost: {wanted}"),
            },
            leaf => {
                assert_eq!(state.get(key), Some(leaf), "leaf {key:?} not written");
                if let Some(now) = now {
                    assert_eq!(
                        metadata.get(key),
                        Some(&serde_json::json!({ "timestamp": now })),
                        "metadata of leaf {key:?}"
                    );
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
                let ok = meta
                    .as_object()
                    .is_some_and(|m| m.len() == 1 && m.get("timestamp").is_some_and(Value::is_u64));
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
