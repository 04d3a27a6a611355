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
//!
//! # The desired lifecycle
//!
//! Beyond AWS, a desired leaf can leave `desired` without the device applying it. It
//! then moves, value and all, into a record section of the same shape — `refused`,
//! `expired` or `superseded` — whose metadata leaf is `{"timestamp": <moved at>}` plus
//! the rule's own fields. Every move is a change (version + 1). The record sections are
//! absent while empty, so a device that never meets these rules sees AWS's document.
//!
//! - **Refusal** ([`refuse`]): each refused leaf whose value desired still holds
//!   (numerically equal) moves to `refused` with `reason` and `code`. A refusal of a
//!   value already replaced is stale and changes nothing.
//! - **Expiry** ([`expire`]): a desired update with `expires_at` stamps `expiresAt` on
//!   the leaves it writes; a later write without it clears it. Any operation at `now`
//!   first moves the leaves due (`expiresAt <= now`) to `expired`, metadata keeping
//!   `expiresAt`; a write already past its expiry is recorded expired at once.
//!   [`next_expiry`] tells the caller's timer when to call [`expire`].
//! - **Local change wins** ([`LocalWins`], `Update::local_wins`): a desired leaf under a
//!   `local_wins` path, or written with the flag, yields to the device. Each reported leaf
//!   there carries `changedAt`, the time its value last changed: the report's own time
//!   (`Update::changed_at`, the device's `timestamp`) if it is at most
//!   [`MAX_CLOCK_AHEAD_SECS`] ahead of the gateway and not before the newest `changedAt`
//!   already in the document, capped at `now`; otherwise the arrival time. A value
//!   re-reported unchanged keeps its `changedAt`, so a heater coming back online and
//!   reporting its old panel setting does not beat the app. When a report's value
//!   differs from the pending desired one and changed strictly later than the desired
//!   leaf (its `changedAt`, else `timestamp`), the desired leaf moves to `superseded`,
//!   metadata keeping the winning `changedAt`. Ties go to desired.
//! - **After an outage** a desired write may arrive late with its author's time
//!   (`Update::changed_at`: when the cloud service wrote MongoDB). It is judged by that
//!   time, not by its arrival: where local wins and the reported value changed after it,
//!   the write is superseded on arrival. A three-way merge that replays the cloud's
//!   changes therefore lets a panel change made during the outage stand, and lets a
//!   cloud change made after the panel change win. A write without a time of its own
//!   counts as made on arrival, which no reported change can be newer than.
//! - **Clearing.** A desired write to a path (a `null` included) clears every record
//!   there: a new wish replaces the old verdict.
//! - **Size.** Records are state and count toward `max_document_bytes`; when a change
//!   would outgrow it the oldest records (by `timestamp`) are dropped first, so a move
//!   never fails and an update is refused 413 only for what reported and desired hold.
//!
//! Invariants: no record leaf shares a path (or a prefix of one) with a desired leaf, so
//! a refused, expired or superseded value is never in the delta; after any call at `now`
//! no desired leaf is due. Disjoint updates still commute when they share the gateway's
//! clock; where local wins, the order of a report and a desired write with different
//! times is what decides, by design.

mod delta;
mod error;
mod lifecycle;
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
pub use lifecycle::{BadPath, LocalWins, MAX_CLOCK_AHEAD_SECS, METADATA_LEAF_KEYS};
pub use validate::{MAX_CLIENT_TOKEN_BYTES, MAX_REASON_BYTES};

use lifecycle::Record;

pub type Object = serde_json::Map<String, serde_json::Value>;

/// `state` and `metadata` both have this shape. The record sections hold desired
/// leaves that left `desired` under a lifecycle rule; they are absent while empty, so a
/// shadow that never used them looks exactly as before.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sections {
    #[serde(default)]
    pub reported: Object,
    #[serde(default)]
    pub desired: Object,
    /// Leaves the device refused; metadata adds `reason` and `code`.
    #[serde(default, skip_serializing_if = "Object::is_empty")]
    pub refused: Object,
    /// Leaves that expired before the device applied them; metadata adds `expiresAt`.
    #[serde(default, skip_serializing_if = "Object::is_empty")]
    pub expired: Object,
    /// Leaves a newer local change superseded; metadata adds the winning `changedAt`.
    #[serde(default, skip_serializing_if = "Object::is_empty")]
    pub superseded: Object,
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

impl Document {
    /// A record section's state and metadata.
    fn records_mut(&mut self, record: Record) -> (&mut Object, &mut Object) {
        match record {
            Record::Refused => (&mut self.state.refused, &mut self.metadata.refused),
            Record::Expired => (&mut self.state.expired, &mut self.metadata.expired),
            Record::Superseded => (&mut self.state.superseded, &mut self.metadata.superseded),
        }
    }
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
    /// Desired only: epoch seconds at which the leaves this update writes expire.
    pub expires_at: Option<u64>,
    /// Desired only: the leaves this update writes yield to a newer reported value even
    /// outside `[shadow] local_wins`.
    pub local_wins: bool,
    /// When the author made the change by its own clock (a device's `timestamp`, the
    /// time a cloud service wrote MongoDB); `None` means on arrival. Only trusted within
    /// the rules of [`MAX_CLOCK_AHEAD_SECS`].
    pub changed_at: Option<u64>,
}

impl Update {
    /// A plain update of `section`: no expected version, token or lifecycle fields.
    pub fn new(section: Section, state: Object) -> Self {
        Self {
            section,
            state,
            version: None,
            client_token: None,
            expires_at: None,
            local_wins: false,
            changed_at: None,
        }
    }
}

/// A device's refusal of desired leaves it will not apply (`shadow/refused`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The refused leaves with the values the device refuses.
    pub state: Object,
    pub reason: String,
    /// The device's own code, recorded as given.
    pub code: i64,
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
/// Checks, in order: client token length, update depth, empty keys, lifecycle fields on
/// a `reported` update (400); expected version (409); then, only if the state changes,
/// the resulting section's depth (400) and the resulting state's size (413).
///
/// Depth: `{"a":1}` is 1 and `{"a":{"b":1}}` is 2; an array is a level only
/// when it holds an object or array (`{"a":[1,2]}` is 1, `{"a":[{"b":1}]}` is 3).
///
/// Desired leaves due at `now` expire first (see [`expire`]); an accepted update that
/// changes nothing else still stores that. `local_wins` is `[shadow] local_wins`.
///
/// A document with version 0 is treated as missing.
pub fn apply_update(
    current: Option<&Document>,
    update: &Update,
    now: u64,
    limits: &Limits,
    local_wins: &LocalWins,
) -> Result<Applied, Rejection> {
    let current = current.filter(|document| document.version > 0);
    validate::check_client_token(update.client_token.as_deref())?;
    validate::check_depth(&update.state, limits, "update state")?;
    validate::check_keys(&update.state)?;
    if update.section == Section::Reported && (update.expires_at.is_some() || update.local_wins) {
        return Err(Rejection::new(
            ErrorCode::BadRequest,
            "expiresIn and localWins apply to desired updates only",
        ));
    }
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

    let mut base = current.cloned().unwrap_or_default();
    let expired = lifecycle::expire_due(&mut base, now);
    if expired {
        lifecycle::trim_records(&mut base, limits.max_document_bytes);
    }
    let mut document = base.clone();
    let section = update.section;
    let mut leaf = merge::leaf_metadata(now);
    match section {
        Section::Reported => {
            merge::merge_into(
                &mut document.state.reported,
                &mut document.metadata.reported,
                &update.state,
                &leaf,
            );
            lifecycle::after_report(
                &mut document,
                &base,
                &update.state,
                update.changed_at,
                now,
                local_wins,
            );
        }
        Section::Desired => {
            let at = lifecycle::effective_time(update.changed_at, now, 0);
            if at != now {
                leaf.insert(lifecycle::CHANGED_AT.to_owned(), at.into());
            }
            if let Some(expires_at) = update.expires_at {
                leaf.insert(lifecycle::EXPIRES_AT.to_owned(), expires_at.into());
            }
            if update.local_wins {
                leaf.insert(lifecycle::LOCAL_WINS.to_owned(), true.into());
            }
            merge::merge_into(
                &mut document.state.desired,
                &mut document.metadata.desired,
                &update.state,
                &leaf,
            );
            lifecycle::clear_records(&mut document, &update.state);
            // Only a write with a time of its own can be older than a local change (even
            // when the gateway's clock stepped back since that change was recorded).
            if update.changed_at.is_some() {
                lifecycle::after_desired(&mut document, &update.state, at, now, local_wins);
            }
            // A write that is already past its expiry is recorded as expired at once.
            lifecycle::expire_due(&mut document, now);
        }
    }
    lifecycle::trim_records(&mut document, limits.max_document_bytes);
    if document.state == base.state {
        // Return the document as it was: the merge may have refreshed
        // timestamps of rewritten leaves, which an unchanged update must not.
        return if expired {
            Ok(changed(base, current_version, now)?)
        } else {
            Ok(Applied {
                delta: current.and_then(delta),
                document: current.cloned().unwrap_or_default(),
                changed: false,
            })
        };
    }

    validate::check_depth(
        document.state.section(section),
        limits,
        &format!("resulting {} state", section.as_str()),
    )?;
    validate::check_size(&document.state, limits)?;
    changed(document, current_version, now)
}

/// Records a device's refusal: each refused leaf whose value desired still holds (a
/// stale refusal of a value already replaced changes nothing) moves to `refused` with
/// the reason and code, so it leaves the delta; the oldest records give way when the
/// state would outgrow `limits.max_document_bytes`. Due leaves expire first, as in
/// [`apply_update`]. 400 for a bad token, depth or key, or a reason over
/// [`MAX_REASON_BYTES`].
pub fn refuse(
    current: Option<&Document>,
    refusal: &Refusal,
    now: u64,
    limits: &Limits,
) -> Result<Applied, Rejection> {
    let current = current.filter(|document| document.version > 0);
    validate::check_client_token(refusal.client_token.as_deref())?;
    validate::check_depth(&refusal.state, limits, "refused state")?;
    validate::check_keys(&refusal.state)?;
    validate::check_reason(&refusal.reason)?;
    let current_version = current.map_or(0, |document| document.version);
    let mut document = current.cloned().unwrap_or_default();
    let mut changes = lifecycle::expire_due(&mut document, now);
    for (path, value) in lifecycle::leaves(&refusal.state) {
        let held = lifecycle::lookup(&document.state.desired, &path)
            .is_some_and(|desired| !desired.is_object() && delta::values_equal(desired, value));
        if held {
            let mut why = Object::new();
            why.insert("reason".to_owned(), refusal.reason.clone().into());
            why.insert("code".to_owned(), refusal.code.into());
            changes |= lifecycle::retire(&mut document, &path, Record::Refused, now, why);
        }
    }
    if !changes {
        return Ok(Applied {
            delta: current.and_then(delta),
            document: current.cloned().unwrap_or_default(),
            changed: false,
        });
    }
    lifecycle::trim_records(&mut document, limits.max_document_bytes);
    changed(document, current_version, now)
}

/// Expires the desired leaves due at `now` (`expiresAt` at or before it): they leave
/// desired, and so the delta, for `expired` (the oldest records give way when the state
/// would outgrow `limits.max_document_bytes`). The caller's timer calls this at
/// [`next_expiry`], and at start before any delta is published.
pub fn expire(current: &Document, now: u64, limits: &Limits) -> Result<Applied, Rejection> {
    let mut document = current.clone();
    if current.version == 0 || !lifecycle::expire_due(&mut document, now) {
        return Ok(Applied {
            delta: delta(current),
            document: current.clone(),
            changed: false,
        });
    }
    lifecycle::trim_records(&mut document, limits.max_document_bytes);
    changed(document, current.version, now)
}

/// The earliest `expiresAt` among the document's desired leaves.
pub fn next_expiry(document: &Document) -> Option<u64> {
    lifecycle::next_expiry(document)
}

/// A changed document: the next version, stamped `now`.
fn changed(mut document: Document, current_version: u64, now: u64) -> Result<Applied, Rejection> {
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

/// Merges a partial update into a bare section (no metadata) under the merge rules: how
/// the uplink follows its copy of MongoDB's desired.
pub fn merge_section(section: &mut Object, patch: &Object) {
    merge::merge_into(section, &mut Object::new(), patch, &Object::new());
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
