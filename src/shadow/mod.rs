//! Device shadow engine: the pure core of the gateway's shadow service.
//!
//! Given the stored document (if any), a request and the current time, it
//! returns the next document and its delta, or a [`Rejection`] carrying an
//! HTTP-like code. It does no I/O and reads no clock: the caller loads and
//! stores documents, passes `now` in epoch seconds, and decides what to publish.
//!
//! Semantics are those of the AWS IoT Device Shadow:
//!
//! - **Merge.** An update merges recursively into its section (`reported` or
//!   `desired`): objects key by key, arrays and scalars replace whole. `null`
//!   removes a key; an object left empty is removed too, so the state never
//!   holds `{}`. Nulls for missing keys and empty objects are no-ops.
//! - **Metadata** mirrors the state tree leaf for leaf; each leaf (scalar or
//!   array) is `{"timestamp": <epoch secs>}`, set when an accepted change
//!   writes it. Leaves the update does not mention keep their timestamps.
//! - **Version.** 0 means "no document". The first change creates version 1;
//!   each change adds exactly 1 and sets `timestamp = now`. An update that
//!   changes no state is accepted with `changed: false` and returns the
//!   document untouched (same version, same timestamps), so a device
//!   re-reporting identical values writes nothing downstream. On a missing
//!   document that document is [`Document::default()`] (version 0).
//! - **Concurrency.** `Update::version`, when given, must equal the current
//!   version (0 when there is no document), else 409.
//! - **Limits.** `clientToken` at most 64 bytes, no empty keys, update and
//!   resulting section at most `max_depth` deep (400); resulting `state` JSON
//!   at most `max_document_bytes` (413). A rejection changes nothing.
//! - **Delta.** Desired leaves whose value differs from reported (numbers by
//!   numeric value), with their desired metadata and the document's version
//!   and timestamp; `None` when empty.
//!
//! The change checks compare JSON exactly, so re-reporting `60.0` over `60` is
//! a change (the stored document would differ), while the delta treats the two
//! as equal.

mod delta;
mod error;
mod merge;
mod validate;

/// A JSON object literal as an `Object`, for the engine's tests.
#[cfg(test)]
fn test_object(value: serde_json::Value) -> Object {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use error::{ErrorCode, Rejection};
pub use validate::MAX_CLIENT_TOKEN_BYTES;

pub type Object = serde_json::Map<String, serde_json::Value>;

/// `state` and `metadata` both have this shape.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sections {
    #[serde(default)]
    pub reported: Object,
    #[serde(default)]
    pub desired: Object,
}

impl Sections {
    pub fn section(&self, section: Section) -> &Object {
        match section {
            Section::Reported => &self.reported,
            Section::Desired => &self.desired,
        }
    }

    pub fn section_mut(&mut self, section: Section) -> &mut Object {
        match section {
            Section::Reported => &mut self.reported,
            Section::Desired => &mut self.desired,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Document {
    /// Current state.
    pub state: Sections,
    /// Same tree shape as `state`; each leaf replaced by `{"timestamp": <epoch secs>}`.
    pub metadata: Sections,
    /// 1 after the first accepted change, +1 on every accepted change; 0 = no document.
    pub version: u64,
    /// Epoch seconds of the last change.
    pub timestamp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Reported,
    Desired,
}

impl Section {
    /// The section's name in shadow JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Reported => "reported",
            Section::Desired => "desired",
        }
    }
}

/// A partial update of one section, as decoded from an `/update` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub section: Section,
    pub state: Object,
    /// Expected current version, for optimistic concurrency.
    pub version: Option<u64>,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted serialized `state` (both sections), in bytes.
    pub max_document_bytes: usize,
    /// Deepest accepted object nesting; see [`apply_update`] for how it counts.
    pub max_depth: usize,
}

/// An accepted update.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The document after the update; identical to the current one when
    /// `changed` is false.
    pub document: Document,
    /// `delta(&document)`; compare [`delta_state`] of the old and new documents
    /// to decide whether a delta is worth publishing.
    pub delta: Option<Delta>,
    /// Whether the state changed, i.e. whether the document must be stored.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    pub state: Object,
    pub metadata: Object,
    pub version: u64,
    pub timestamp: u64,
}

/// Applies `update` to `current` at time `now`.
///
/// Checks, in order: client token length, update depth, empty keys (400);
/// expected version (409); then, only if the state changes, the resulting
/// section's depth (400) and the resulting state's size (413).
///
/// Depth: `{"a":1}` is 1 and `{"a":{"b":1}}` is 2; an array is a level only
/// when it holds an object or array (`{"a":[1,2]}` is 1, `{"a":[{"b":1}]}` is 3).
///
/// A document with version 0 is treated as missing.
pub fn apply_update(
    current: Option<&Document>,
    update: &Update,
    now: u64,
    limits: &Limits,
) -> Result<Applied, Rejection> {
    let current = current.filter(|document| document.version > 0);
    validate::check_client_token(update.client_token.as_deref())?;
    validate::check_depth(&update.state, limits, "update state")?;
    validate::check_keys(&update.state)?;
    let current_version = current.map_or(0, |document| document.version);
    if let Some(expected) = update.version {
        if expected != current_version {
            return Err(Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "version conflict: update expects version {expected}, \
                     current version is {current_version}"
                ),
            ));
        }
    }

    let mut document = current.cloned().unwrap_or_default();
    let section = update.section;
    let old_state = document.state.section(section).clone();
    merge::merge_into(
        document.state.section_mut(section),
        document.metadata.section_mut(section),
        &update.state,
        now,
    );
    if *document.state.section(section) == old_state {
        // Return the document as it was: the merge may have refreshed
        // timestamps of rewritten leaves, which an unchanged update must not.
        let document = current.cloned().unwrap_or_default();
        return Ok(Applied {
            delta: current.and_then(delta),
            document,
            changed: false,
        });
    }

    validate::check_depth(
        document.state.section(section),
        limits,
        &format!("resulting {} state", section.as_str()),
    )?;
    validate::check_size(&document.state, limits)?;
    document.version = current_version
        .checked_add(1)
        .ok_or_else(|| Rejection::new(ErrorCode::Internal, "document version overflow"))?;
    document.timestamp = now;
    Ok(Applied {
        delta: delta(&document),
        document,
        changed: true,
    })
}

/// The stored document; 404 when there is none (or its version is 0).
pub fn get(current: Option<&Document>) -> Result<&Document, Rejection> {
    current
        .filter(|document| document.version > 0)
        .ok_or_else(not_found)
}

/// Checks a delete request and returns the deleted document's version; the
/// caller then drops the document. 404 when there is none, 409 when `version`
/// is given and differs.
pub fn delete(current: Option<&Document>, version: Option<u64>) -> Result<u64, Rejection> {
    let document = get(current)?;
    match version {
        Some(expected) if expected != document.version => Err(Rejection::new(
            ErrorCode::Conflict,
            format!(
                "version conflict: delete expects version {expected}, current version is {}",
                document.version
            ),
        )),
        _ => Ok(document.version),
    }
}

/// The document's delta, `None` when reported matches every desired leaf.
pub fn delta(document: &Document) -> Option<Delta> {
    let (state, metadata) = delta::diff(
        &document.state.desired,
        Some(&document.state.reported),
        Some(&document.metadata.desired),
    );
    if state.is_empty() {
        return None;
    }
    Some(Delta {
        state,
        metadata,
        version: document.version,
        timestamp: document.timestamp,
    })
}

/// The delta's state, empty when there is no document or no delta. The caller
/// compares it for the previous and the new document to publish a delta only
/// when it changed.
pub fn delta_state(document: Option<&Document>) -> Object {
    document
        .and_then(delta)
        .map(|delta| delta.state)
        .unwrap_or_default()
}

/// The partial update that turns section `current` into exactly `target` under the merge
/// rules: changed or new fields as in `target`, fields missing from `target` set to
/// `null`, objects present on both sides patched recursively.
pub fn replacement_patch(current: &Object, target: &Object) -> Object {
    let mut patch = Object::new();
    for key in current.keys().filter(|k| !target.contains_key(*k)) {
        patch.insert(key.clone(), serde_json::Value::Null);
    }
    for (key, wanted) in target {
        match (current.get(key), wanted) {
            (Some(have), _) if have == wanted => {}
            (Some(serde_json::Value::Object(have)), serde_json::Value::Object(wanted)) => {
                patch.insert(
                    key.clone(),
                    serde_json::Value::Object(replacement_patch(have, wanted)),
                );
            }
            _ => {
                patch.insert(key.clone(), wanted.clone());
            }
        }
    }
    patch
}

fn not_found() -> Rejection {
    Rejection::new(ErrorCode::NotFound, "no shadow document")
}
