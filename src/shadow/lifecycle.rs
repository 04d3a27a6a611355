//! The desired lifecycle: refusal, expiry and "local change wins", as moves of desired
//! leaves into the record sections (`refused`, `expired`, `superseded`).
//!
//! Records keep the shape of `desired`: the record's `state` holds the value that left
//! desired, its `metadata` leaf says why (`timestamp` of the move plus the rule's own
//! fields). Leaves are scalars and arrays, as in the delta, so an object is always a
//! branch and a record is found by its path alone.

use serde_json::Value;

use super::delta::values_equal;
use super::{Document, Object};

/// How far ahead of the gateway's clock a device's `timestamp` may be and still count as
/// the time of its change. Beyond it the device's clock is wrong and the arrival time is
/// used instead (see [`effective_time`]).
pub const MAX_CLOCK_AHEAD_SECS: u64 = 60;

/// Metadata keys of a desired leaf beyond `timestamp`.
pub(crate) const EXPIRES_AT: &str = "expiresAt";
pub(crate) const LOCAL_WINS: &str = "localWins";
/// The time the leaf's value last changed by its author's clock, when it is not the
/// leaf's `timestamp` (the time the gateway wrote it).
pub(crate) const CHANGED_AT: &str = "changedAt";

/// Every key a metadata leaf may hold: its `timestamp`, the lifecycle's keys above, and a
/// refusal record's `reason` and `code` (what the property tests and the fuzz target check
/// the engine against).
pub const METADATA_LEAF_KEYS: [&str; 6] = [
    "timestamp",
    EXPIRES_AT,
    LOCAL_WINS,
    CHANGED_AT,
    "reason",
    "code",
];

/// The leaf paths where a newer reported value supersedes a pending desired one, from
/// `[shadow] local_wins`: a path covers its own leaf and every leaf below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalWins {
    paths: Vec<Vec<String>>,
}

/// A `local_wins` entry that is not a dotted path of non-empty keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("local_wins entry {0:?} is not a dotted path of non-empty keys (e.g. \"schedule.mode\")")]
pub struct BadPath(pub String);

impl LocalWins {
    /// Parses dotted paths (`"schedule.mode"`). A key that itself holds a dot cannot be
    /// named; such leaves can still be given the request flag.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Result<Self, BadPath> {
        let paths = paths
            .iter()
            .map(|path| {
                let path = path.as_ref();
                let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                if keys.iter().any(String::is_empty) {
                    Err(BadPath(path.to_owned()))
                } else {
                    Ok(keys)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { paths })
    }

    fn covers(&self, path: &[String]) -> bool {
        self.paths.iter().any(|prefix| path.starts_with(prefix))
    }
}

/// The time of a change whose author claims `claimed`: the claim when it is at most
/// [`MAX_CLOCK_AHEAD_SECS`] ahead of `now` and not before `not_before` (the newest change
/// already applied by that author's clock), capped at `now`; otherwise `now`, the arrival.
/// So a device with a wrong clock falls back to arrival order, and no claim can place a
/// change after the gateway received it.
pub(crate) fn effective_time(claimed: Option<u64>, now: u64, not_before: u64) -> u64 {
    match claimed {
        Some(at) if at <= now.saturating_add(MAX_CLOCK_AHEAD_SECS) && at >= not_before => {
            at.min(now)
        }
        _ => now,
    }
}

/// Every leaf of `tree` (scalars and arrays; nulls excluded) with its path.
pub(crate) fn leaves(tree: &Object) -> Vec<(Vec<String>, &Value)> {
    let mut out = Vec::new();
    collect_leaves(tree, &mut Vec::new(), &mut out);
    out
}

fn collect_leaves<'a>(
    tree: &'a Object,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'a Value)>,
) {
    for (key, value) in tree {
        path.push(key.clone());
        match value {
            Value::Object(child) => collect_leaves(child, path, out),
            Value::Null => {}
            leaf => out.push((path.clone(), leaf)),
        }
        path.pop();
    }
}

/// The value at `path`, if the tree has one there.
pub(crate) fn lookup<'a>(tree: &'a Object, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut node = tree;
    for key in parents {
        node = node.get(key)?.as_object()?;
    }
    node.get(last)
}

fn lookup_mut<'a>(tree: &'a mut Object, path: &[String]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let mut node = tree;
    for key in parents {
        node = node.get_mut(key)?.as_object_mut()?;
    }
    node.get_mut(last)
}

/// A metadata leaf's time field as u64.
pub(crate) fn stamp(metadata: Option<&Value>, field: &str) -> Option<u64> {
    metadata?.get(field)?.as_u64()
}

/// When the leaf's value last changed: its `changedAt`, else its `timestamp`.
pub(crate) fn changed_time(metadata: Option<&Value>) -> u64 {
    stamp(metadata, CHANGED_AT)
        .or_else(|| stamp(metadata, "timestamp"))
        .unwrap_or(0)
}

/// Removes the leaf at `path` from a state tree and its metadata, pruning objects it
/// leaves empty; returns the value and its metadata leaf.
fn take_leaf(state: &mut Object, metadata: &mut Object, path: &[String]) -> Option<(Value, Value)> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        if state.get(first).is_none_or(Value::is_object) {
            return None;
        }
        let value = state.remove(first)?;
        let leaf = metadata.remove(first).unwrap_or(Value::Null);
        return Some((value, leaf));
    }
    let Some(Value::Object(child)) = state.get_mut(first) else {
        return None;
    };
    let mut orphan = Object::new();
    let child_metadata = match metadata.get_mut(first) {
        Some(Value::Object(child_metadata)) => child_metadata,
        _ => &mut orphan,
    };
    let taken = take_leaf(child, child_metadata, rest);
    if child.is_empty() {
        state.remove(first);
        metadata.remove(first);
    }
    taken
}

/// Writes a leaf at `path`, replacing whatever lies on the way (a leaf where a branch is
/// needed, a branch where the leaf goes).
fn put_leaf(state: &mut Object, metadata: &mut Object, path: &[String], value: Value, leaf: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        state.insert(first.clone(), value);
        metadata.insert(first.clone(), leaf);
        return;
    }
    // The state decides what is a branch: a metadata leaf is an object too.
    if !state.get(first).is_some_and(Value::is_object) {
        state.insert(first.clone(), Value::Object(Object::new()));
        metadata.insert(first.clone(), Value::Object(Object::new()));
    }
    if !metadata.get(first).is_some_and(Value::is_object) {
        metadata.insert(first.clone(), Value::Object(Object::new()));
    }
    if let (Some(Value::Object(child)), Some(Value::Object(child_metadata))) =
        (state.get_mut(first), metadata.get_mut(first))
    {
        put_leaf(child, child_metadata, rest, value, leaf);
    }
}

/// The record sections a desired leaf can move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    Refused,
    Expired,
    Superseded,
}

impl Record {
    const ALL: [Record; 3] = [Record::Refused, Record::Expired, Record::Superseded];
}

/// Moves the desired leaf at `path` into `record`, with `why` added to its metadata
/// leaf's `timestamp: now`. False when desired holds no leaf there.
pub(crate) fn retire(
    document: &mut Document,
    path: &[String],
    record: Record,
    now: u64,
    why: Object,
) -> bool {
    let Some((value, _)) = take_leaf(
        &mut document.state.desired,
        &mut document.metadata.desired,
        path,
    ) else {
        return false;
    };
    let mut leaf = Object::new();
    leaf.insert("timestamp".to_owned(), Value::from(now));
    leaf.extend(why);
    let (state, metadata) = document.records_mut(record);
    put_leaf(state, metadata, path, value, Value::Object(leaf));
    true
}

/// Clears the records at every path a desired `patch` writes or removes: a new desired
/// value (or its removal) replaces whatever was refused, expired or superseded there.
pub(crate) fn clear_records(document: &mut Document, patch: &Object) {
    for record in Record::ALL {
        let (state, metadata) = document.records_mut(record);
        clear_at(state, metadata, patch);
    }
}

fn clear_at(state: &mut Object, metadata: &mut Object, patch: &Object) {
    for (key, value) in patch {
        let clear = match (value, state.get_mut(key)) {
            (_, None) => false,
            (Value::Object(inner), Some(Value::Object(child))) => {
                let mut orphan = Object::new();
                let child_metadata = match metadata.get_mut(key) {
                    Some(Value::Object(child_metadata)) => child_metadata,
                    _ => &mut orphan,
                };
                clear_at(child, child_metadata, inner);
                child.is_empty()
            }
            // An object patch over a recorded leaf replaces it only if it writes something.
            (Value::Object(inner), Some(_)) => writes_a_leaf(inner),
            (_, Some(_)) => true,
        };
        if clear {
            state.remove(key);
            metadata.remove(key);
        }
    }
}

fn writes_a_leaf(patch: &Object) -> bool {
    patch.values().any(|value| match value {
        Value::Null => false,
        Value::Object(inner) => writes_a_leaf(inner),
        _ => true,
    })
}

/// Drops the oldest records (by their `timestamp`) until the serialized state fits in
/// `max_bytes`, or no record is left. Records count toward the document's size like the
/// rest of its state; without this, values that expire or get refused under ever new keys
/// would grow a document without bound, and a move of a leaf (which repeats its path in
/// the record section) could take a full document over its limit.
pub(crate) fn trim_records(document: &mut Document, max_bytes: usize) {
    let size = |document: &Document| serde_json::to_vec(&document.state).map_or(0, |v| v.len());
    if size(document) <= max_bytes {
        return;
    }
    let mut records: Vec<(u64, Record, Vec<String>)> = Vec::new();
    for record in Record::ALL {
        let (state, metadata) = document.records_mut(record);
        for (path, _) in leaves(state) {
            let at = stamp(lookup(metadata, &path), "timestamp").unwrap_or(0);
            records.push((at, record, path));
        }
    }
    records.sort_by_key(|(at, _, _)| *at);
    for (_, record, path) in records {
        let (state, metadata) = document.records_mut(record);
        take_leaf(state, metadata, &path);
        if size(document) <= max_bytes {
            return;
        }
    }
}

/// Moves every desired leaf whose `expiresAt` is at or before `now` to `expired`; true
/// when one moved.
pub(crate) fn expire_due(document: &mut Document, now: u64) -> bool {
    let due: Vec<(Vec<String>, u64)> = leaves(&document.state.desired)
        .into_iter()
        .filter_map(|(path, _)| {
            let at = stamp(lookup(&document.metadata.desired, &path), EXPIRES_AT)?;
            (at <= now).then_some((path, at))
        })
        .collect();
    for (path, at) in &due {
        let mut why = Object::new();
        why.insert(EXPIRES_AT.to_owned(), Value::from(*at));
        retire(document, path, Record::Expired, now, why);
    }
    !due.is_empty()
}

/// The earliest `expiresAt` of a desired leaf.
pub(crate) fn next_expiry(document: &Document) -> Option<u64> {
    leaves(&document.state.desired)
        .into_iter()
        .filter_map(|(path, _)| stamp(lookup(&document.metadata.desired, &path), EXPIRES_AT))
        .min()
}

/// Whether a newer reported value may supersede the desired leaf at `path`.
fn yields(document: &Document, local_wins: &LocalWins, path: &[String]) -> bool {
    local_wins.covers(path)
        || lookup(&document.metadata.desired, path)
            .and_then(|leaf| leaf.get(LOCAL_WINS))
            .is_some_and(|flag| flag == &Value::Bool(true))
}

/// The newest change time on the reported leaves that carry one: a device timestamp
/// before it is out of order.
fn newest_reported_change(document: &Document) -> u64 {
    leaves(&document.state.reported)
        .into_iter()
        .filter_map(|(path, _)| stamp(lookup(&document.metadata.reported, &path), CHANGED_AT))
        .max()
        .unwrap_or(0)
}

/// After a report merged into `document` (`before` is the document it merged into):
/// stamps `changedAt` on the reported leaves it wrote where local wins, keeping the old
/// change time of a value that did not change; then supersedes each pending desired leaf
/// whose reported value differs and changed after it.
pub(crate) fn after_report(
    document: &mut Document,
    before: &Document,
    patch: &Object,
    claimed: Option<u64>,
    now: u64,
    local_wins: &LocalWins,
) {
    let at = effective_time(claimed, now, newest_reported_change(before));
    for (path, value) in leaves(patch) {
        if !yields(before, local_wins, &path) {
            continue;
        }
        let old_metadata = lookup(&before.metadata.reported, &path);
        let changed_at = match lookup(&before.state.reported, &path) {
            Some(old) if values_equal(old, value) => changed_time(old_metadata),
            _ => at,
        };
        if let Some(Value::Object(leaf)) = lookup_mut(&mut document.metadata.reported, &path) {
            leaf.insert(CHANGED_AT.to_owned(), Value::from(changed_at));
        }
        let Some(desired) = lookup(&document.state.desired, &path) else {
            continue;
        };
        let desired_at = changed_time(lookup(&document.metadata.desired, &path));
        if !values_equal(desired, value) && changed_at > desired_at {
            supersede(document, &path, changed_at, now);
        }
    }
}

/// After a desired write merged at time `at` (its author's, see [`effective_time`]): a
/// leaf where local wins whose reported value differs and changed after `at` is
/// superseded at once, as if the report had come after it. This is what keeps a change
/// made at the heater while the uplink was down from being undone by an older cloud
/// setpoint that arrives late.
pub(crate) fn after_desired(
    document: &mut Document,
    patch: &Object,
    at: u64,
    now: u64,
    local_wins: &LocalWins,
) {
    for (path, value) in leaves(patch) {
        if !yields(document, local_wins, &path) {
            continue;
        }
        let Some(reported) = lookup(&document.state.reported, &path) else {
            continue;
        };
        let reported_at = changed_time(lookup(&document.metadata.reported, &path));
        if !values_equal(reported, value) && reported_at > at {
            supersede(document, &path, reported_at, now);
        }
    }
}

/// Moves the desired leaf at `path` to `superseded`: the reported value that changed at
/// `changed_at` won.
fn supersede(document: &mut Document, path: &[String], changed_at: u64, now: u64) {
    let mut why = Object::new();
    why.insert(CHANGED_AT.to_owned(), Value::from(changed_at));
    retire(document, path, Record::Superseded, now, why);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::shadow::test_object as object;

    #[test]
    fn local_wins_paths_cover_their_subtree_and_reject_empty_keys() {
        let wins = LocalWins::new(&["targetTemp", "schedule.mode"]).expect("valid");
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert!(wins.covers(&path("targetTemp")));
        assert!(wins.covers(&path("schedule.mode.start")));
        assert!(!wins.covers(&path("schedule")));
        assert!(!wins.covers(&path("targetTempMax")));
        for bad in ["", "a.", ".a", "a..b"] {
            assert_eq!(LocalWins::new(&[bad]), Err(BadPath(bad.to_owned())));
        }
    }

    #[test]
    fn claimed_times_count_only_when_plausible() {
        let table = [
            (None, 0, 1000),
            (Some(990), 0, 990),
            (Some(1060), 0, 1000),
            (Some(1061), 0, 1000),
            (Some(990), 995, 1000),
            (Some(995), 995, 995),
        ];
        for (claimed, not_before, expected) in table {
            assert_eq!(
                effective_time(claimed, 1000, not_before),
                expected,
                "{claimed:?} not before {not_before}"
            );
        }
    }

    #[test]
    fn a_record_replaces_what_lies_on_its_path_and_a_take_prunes_empty_branches() {
        let mut state = object(json!({"a": 1, "b": {"c": {"d": 2}}}));
        let mut metadata =
            object(json!({"a": {"timestamp": 1}, "b": {"c": {"d": {"timestamp": 1}}}}));
        let path = |p: &[&str]| p.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        put_leaf(
            &mut state,
            &mut metadata,
            &path(&["a", "x"]),
            json!(3),
            json!({"timestamp": 2}),
        );
        assert_eq!(
            Value::Object(state.clone()),
            json!({"a": {"x": 3}, "b": {"c": {"d": 2}}})
        );
        assert_eq!(take_leaf(&mut state, &mut metadata, &path(&["b"])), None);
        assert_eq!(
            take_leaf(&mut state, &mut metadata, &path(&["b", "c", "d"])),
            Some((json!(2), json!({"timestamp": 1})))
        );
        assert_eq!(Value::Object(state), json!({"a": {"x": 3}}));
        assert_eq!(
            Value::Object(metadata),
            json!({"a": {"x": {"timestamp": 2}}})
        );
    }
}
