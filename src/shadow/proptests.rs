//! Properties of the engine over small random JSON trees. Keys come from a
//! tiny alphabet (including `timestamp`, the metadata leaf's own key) so that
//! updates collide; leaves include nulls, integral floats and arrays. The
//! lifecycle properties add refusals, expiries, request times and flags, and a
//! random `local_wins` policy over the same keys.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

use super::*;

const ROOMY: Limits = Limits {
    max_document_bytes: 1 << 20,
    max_depth: 16,
};

/// No `[shadow] local_wins` paths: today's behaviour.
static NONE: std::sync::LazyLock<LocalWins> = std::sync::LazyLock::new(LocalWins::default);

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "timestamp"]).prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-2_i64..3).prop_map(Value::from),
        // Integral floats, so that `1` and `1.0` meet.
        (-2_i64..3).prop_map(|n| Value::from(n as f64)),
        prop::sample::select(vec!["", "x", "yy"]).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Null),
        6 => scalar(),
        1 => vec(scalar(), 0..3).prop_map(Value::Array),
    ]
}

/// An update's state: an object tree at most 4 deep.
fn tree() -> impl Strategy<Value = Object> {
    let value = leaf().prop_recursive(3, 24, 3, |inner| {
        btree_map(key(), inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect()))
    });
    btree_map(key(), value, 0..4).prop_map(|map| map.into_iter().collect())
}

fn section() -> impl Strategy<Value = Section> {
    prop_oneof![Just(Section::Reported), Just(Section::Desired)]
}

fn update() -> impl Strategy<Value = Update> {
    (section(), tree()).prop_map(|(section, state)| Update::new(section, state))
}

/// A desired update with random lifecycle fields, or a report with a random device
/// time; times are near the clock of [`play_ops`] (10 per step) so that they collide.
fn lifecycle_update() -> impl Strategy<Value = Update> {
    (
        update(),
        prop::option::of(0_u64..120),
        any::<bool>(),
        prop::option::of(0_u64..120),
    )
        .prop_map(|(update, expires_at, local_wins, changed_at)| {
            let desired = update.section == Section::Desired;
            Update {
                expires_at: expires_at.filter(|_| desired),
                local_wins: local_wins && desired,
                changed_at,
                ..update
            }
        })
}

#[derive(Debug, Clone)]
enum Op {
    Update(Update),
    Refuse(Object),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => lifecycle_update().prop_map(Op::Update),
        2 => tree().prop_map(Op::Refuse),
        1 => Just(Op::Expire),
    ]
}

/// A `[shadow] local_wins` over the generated keys.
fn local_wins() -> impl Strategy<Value = LocalWins> {
    vec(vec(key(), 1..3).prop_map(|keys| keys.join(".")), 0..3)
        .prop_map(|paths| LocalWins::new(&paths).expect("generated paths are valid"))
}

/// Applies `op` at `now`, returning the accepted result.
fn apply_op(
    current: Option<&Document>,
    op: &Op,
    now: u64,
    local_wins: &LocalWins,
) -> Result<Applied, Rejection> {
    match op {
        Op::Update(update) => apply_update(current, update, now, &ROOMY, local_wins),
        Op::Refuse(state) => {
            let refusal = Refusal {
                state: state.clone(),
                reason: "cannot".to_owned(),
                code: 422,
                client_token: None,
            };
            refuse(current, &refusal, now, &ROOMY)
        }
        Op::Expire => expire(&current.cloned().unwrap_or_default(), now, &ROOMY),
    }
}

/// Every leaf path of a tree.
fn leaf_paths(tree: &Object) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    leaves(tree, &mut Vec::new(), &mut out);
    out.into_iter().map(|(path, _)| path).collect()
}

/// Whether one path is a prefix of the other (or both are the same).
fn overlap(left: &[&str], right: &[&str]) -> bool {
    left.iter().zip(right).all(|(l, r)| l == r)
}

/// Applies updates in order at times 1, 2, ... the way the gateway would,
/// keeping the document of each changed update.
fn play(updates: &[Update], limits: &Limits) -> Option<Document> {
    let mut current = None;
    for (now, update) in (1..).zip(updates) {
        if let Ok(applied) = apply_update(current.as_ref(), update, now, limits, &NONE) {
            if applied.changed {
                current = Some(applied.document);
            }
        }
    }
    current
}

/// Asserts that `metadata` has exactly the paths of `state`, each state leaf
/// mirrored by `{"timestamp": <u64>, ...}` (with only lifecycle fields besides),
/// and that the state holds no `{}`.
fn assert_mirrors(state: &Object, metadata: &Object) {
    let state_keys: Vec<&String> = state.keys().collect();
    let metadata_keys: Vec<&String> = metadata.keys().collect();
    assert_eq!(state_keys, metadata_keys);
    for (key, value) in state {
        match (value, &metadata[key]) {
            (Value::Object(state), Value::Object(metadata)) => {
                assert!(!state.is_empty(), "empty object stored at {key}");
                assert_mirrors(state, metadata);
            }
            (_, Value::Object(leaf)) => {
                assert!(
                    leaf.keys()
                        .all(|k| METADATA_LEAF_KEYS.contains(&k.as_str())),
                    "metadata leaf at {key}: {leaf:?}"
                );
                assert!(
                    leaf["timestamp"].is_u64(),
                    "metadata leaf at {key}: {leaf:?}"
                );
            }
            (_, other) => panic!("metadata at {key} is not an object: {other}"),
        }
    }
}

/// Depth as the rules define it, written independently of the engine.
fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        Value::Array(items) if items.iter().any(|item| item.is_object() || item.is_array()) => {
            1 + items.iter().map(depth_of).max().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Every leaf of a tree with its path.
fn leaves<'a>(tree: &'a Object, path: &mut Vec<&'a str>, out: &mut Vec<(Vec<&'a str>, &'a Value)>) {
    for (key, value) in tree {
        path.push(key);
        match value {
            Value::Object(child) => leaves(child, path, out),
            leaf => out.push((path.clone(), leaf)),
        }
        path.pop();
    }
}

fn lookup<'a>(tree: &'a Object, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut node = tree;
    for key in parents {
        node = node.get(*key)?.as_object()?;
    }
    node.get(*last)
}

/// Equality oracle for the generated values, whose numbers are small enough
/// for `f64`.
fn same(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => left.as_f64() == right.as_f64(),
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(l, r)| same(l, r))
        }
        _ => left == right,
    }
}

proptest! {
    #[test]
    fn reporting_the_desired_tree_empties_the_delta(updates in vec(update(), 0..6)) {
        let document = play(&updates, &ROOMY);
        let desired = document.as_ref().map(|d| d.state.desired.clone()).unwrap_or_default();
        let report = Update::new(Section::Reported, desired);
        let applied =
            apply_update(document.as_ref(), &report, 100, &ROOMY, &NONE).expect("accepted");
        prop_assert_eq!(applied.delta, None);
        prop_assert!(delta_state(Some(&applied.document)).is_empty());
    }

    #[test]
    fn versions_grow_by_one_per_change_and_hold_otherwise(updates in vec(update(), 1..8)) {
        let mut current: Option<Document> = None;
        for (now, update) in (1..).zip(&updates) {
            let applied =
                apply_update(current.as_ref(), update, now, &ROOMY, &NONE).expect("accepted");
            let before = current.as_ref().map_or(0, |d| d.version);
            if applied.changed {
                prop_assert_eq!(applied.document.version, before + 1);
                prop_assert_eq!(applied.document.timestamp, now);
                current = Some(applied.document);
            } else {
                prop_assert_eq!(&applied.document, &current.clone().unwrap_or_default());
            }
        }
    }

    #[test]
    fn the_same_update_twice_changes_nothing_the_second_time(
        history in vec(update(), 0..4),
        update in update(),
    ) {
        let current = play(&history, &ROOMY);
        let first = apply_update(current.as_ref(), &update, 50, &ROOMY, &NONE).expect("accepted");
        let after_first = if first.changed { Some(first.document) } else { current };
        let second =
            apply_update(after_first.as_ref(), &update, 60, &ROOMY, &NONE).expect("accepted");
        prop_assert!(!second.changed);
        prop_assert_eq!(Some(second.document), after_first.or(Some(Document::default())));
    }

    #[test]
    fn delta_is_exactly_the_desired_leaves_that_differ_from_reported(
        updates in vec(update(), 0..8),
    ) {
        let document = play(&updates, &ROOMY).unwrap_or_default();
        let delta = delta(&document);
        let (state, metadata) = delta
            .as_ref()
            .map_or_else(Default::default, |d| (d.state.clone(), d.metadata.clone()));
        prop_assert!(delta.as_ref().is_none_or(|d| !d.state.is_empty()
            && d.version == document.version
            && d.timestamp == document.timestamp));
        assert_mirrors(&state, &metadata);

        let mut delta_leaves = Vec::new();
        leaves(&state, &mut Vec::new(), &mut delta_leaves);
        for (path, value) in &delta_leaves {
            let desired = lookup(&document.state.desired, path);
            prop_assert_eq!(desired, Some(*value), "not desired: {:?}", path);
            prop_assert_eq!(lookup(&metadata, path), lookup(&document.metadata.desired, path));
        }
        let mut desired_leaves = Vec::new();
        leaves(&document.state.desired, &mut Vec::new(), &mut desired_leaves);
        for (path, value) in &desired_leaves {
            let reported = lookup(&document.state.reported, path);
            let differs = !reported.is_some_and(|reported| same(value, reported));
            prop_assert_eq!(lookup(&state, path).is_some(), differs, "path {:?}", path);
        }
    }

    #[test]
    fn metadata_mirrors_state_leaf_for_leaf(updates in vec(update(), 0..8)) {
        let document = play(&updates, &ROOMY).unwrap_or_default();
        assert_mirrors(&document.state.reported, &document.metadata.reported);
        assert_mirrors(&document.state.desired, &document.metadata.desired);
    }

    #[test]
    fn accepted_documents_respect_the_limits(
        updates in vec((update(), any::<Option<u64>>(), prop::option::of(0_usize..70)), 1..8),
        max_depth in 0_usize..5,
        max_document_bytes in 0_usize..200,
    ) {
        let limits = Limits { max_document_bytes, max_depth };
        let mut current: Option<Document> = None;
        for (now, (update, version, token_len)) in (1..).zip(updates) {
            let update = Update {
                version: version.map(|v| v % 3),
                client_token: token_len.map(|len| "t".repeat(len)),
                ..update
            };
            match apply_update(current.as_ref(), &update, now, &limits, &NONE) {
                Ok(applied) if applied.changed => {
                    let document = applied.document;
                    for section in [&document.state.reported, &document.state.desired] {
                        prop_assert!(depth_of(&Value::Object(section.clone())) <= max_depth);
                    }
                    let size = serde_json::to_vec(&document.state).expect("serializable").len();
                    prop_assert!(size <= max_document_bytes);
                    current = Some(document);
                }
                Ok(applied) => {
                    let unchanged = current.clone().unwrap_or_default();
                    prop_assert_eq!(applied.document, unchanged);
                }
                Err(rejection) => prop_assert!(matches!(
                    rejection.code,
                    ErrorCode::BadRequest | ErrorCode::Conflict | ErrorCode::PayloadTooLarge
                )),
            }
        }
    }

    #[test]
    fn delete_then_get_is_not_found_and_stale_versions_conflict(
        updates in vec(update(), 1..6),
        stale in any::<u64>(),
    ) {
        let Some(document) = play(&updates, &ROOMY) else { return Ok(()) };
        let stale = if stale == document.version { stale.wrapping_add(1) } else { stale };

        let write = Update { version: Some(stale), ..updates[0].clone() };
        let rejection = apply_update(Some(&document), &write, 99, &ROOMY, &NONE).unwrap_err();
        prop_assert_eq!(rejection.code, ErrorCode::Conflict);
        prop_assert!(rejection.message.contains(&stale.to_string()));
        prop_assert!(rejection.message.contains(&document.version.to_string()));
        let rejection = delete(Some(&document), Some(stale)).unwrap_err();
        prop_assert_eq!(rejection.code, ErrorCode::Conflict);
        prop_assert_eq!(get(Some(&document)), Ok(&document));

        prop_assert_eq!(delete(Some(&document), Some(document.version)), Ok(document.version));
        prop_assert_eq!(get(None).unwrap_err().code, ErrorCode::NotFound);
        prop_assert_eq!(delete(None, None).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn updates_on_disjoint_keys_commute(
        history in vec(update(), 0..4),
        first in update(),
        second in update(),
    ) {
        let mut second = second;
        if first.section == second.section {
            second.state.retain(|key, _| !first.state.contains_key(key));
        }
        let base = play(&history, &ROOMY);
        let apply_both = |one: &Update, two: &Update| {
            let mut current = base.clone();
            for update in [one, two] {
                let applied =
                    apply_update(current.as_ref(), update, 77, &ROOMY, &NONE).expect("accepted");
                if applied.changed {
                    current = Some(applied.document);
                }
            }
            current
        };
        prop_assert_eq!(apply_both(&first, &second), apply_both(&second, &first));
    }

    #[test]
    fn a_replacement_patch_turns_one_desired_section_into_another(
        from in vec(update(), 0..6),
        to in vec(update(), 0..6),
    ) {
        let current = play(&from, &ROOMY);
        let target = play(&to, &ROOMY).map(|d| d.state.desired).unwrap_or_default();
        let have = current.as_ref().map(|d| d.state.desired.clone()).unwrap_or_default();
        let patch = Update::new(Section::Desired, replacement_patch(&have, &target));
        let applied = apply_update(current.as_ref(), &patch, 99, &ROOMY, &NONE).expect("accepted");
        prop_assert_eq!(applied.document.state.desired, target);
    }

    #[test]
    fn refused_and_expired_leaves_never_appear_in_a_delta(
        ops in vec(op(), 1..12),
        local_wins in local_wins(),
    ) {
        let mut current: Option<Document> = None;
        for (step, op) in (1..).zip(&ops) {
            let now = step * 10;
            let Ok(applied) = apply_op(current.as_ref(), op, now, &local_wins) else {
                continue;
            };
            let document = &applied.document;
            let delta = delta_state(Some(document));
            // Nothing due is left pending: the next expiry is in the future.
            prop_assert!(next_expiry(document).is_none_or(|at| at > now));
            for records in [
                &document.state.refused,
                &document.state.expired,
                &document.state.superseded,
            ] {
                for recorded in leaf_paths(records) {
                    for pending in leaf_paths(&delta) {
                        prop_assert!(!overlap(&recorded, &pending), "{:?} pending", recorded);
                    }
                    for wanted in leaf_paths(&document.state.desired) {
                        prop_assert!(!overlap(&recorded, &wanted), "{:?} desired", recorded);
                    }
                }
            }
            if let Op::Refuse(state) = op {
                // A refusal of the value desired held takes it out; a stale one is moot.
                let before = current.as_ref().map(|d| d.state.desired.clone()).unwrap_or_default();
                for (path, value) in lifecycle::leaves(state) {
                    let path: Vec<&str> = path.iter().map(String::as_str).collect();
                    if lookup(&before, &path).is_some_and(|held| same(held, value)) {
                        prop_assert!(lookup(&delta, &path).is_none(), "refused {:?} pending", path);
                        prop_assert!(lookup(&document.state.refused, &path).is_some());
                    }
                }
            }
            assert_mirrors(&document.state.reported, &document.metadata.reported);
            assert_mirrors(&document.state.desired, &document.metadata.desired);
            assert_mirrors(&document.state.refused, &document.metadata.refused);
            assert_mirrors(&document.state.expired, &document.metadata.expired);
            assert_mirrors(&document.state.superseded, &document.metadata.superseded);
            if applied.changed {
                current = Some(applied.document);
            }
        }
    }

    #[test]
    fn disjoint_updates_still_commute_under_the_lifecycle_rules(
        history in vec(op(), 0..6),
        first in lifecycle_update(),
        second in lifecycle_update(),
        local_wins in local_wins(),
    ) {
        let (mut first, mut second, mut history) = (first, second, history);
        if first.section == second.section {
            second.state.retain(|key, _| !first.state.contains_key(key));
        } else {
            // Across sections, order is the point of local wins when the two carry
            // different times or a request flag; with one clock and no flag they commute.
            // No flag in the history either: a report before the flagged desired leaf is
            // cleared is under local wins (stamped `changedAt`), one after it is not.
            let flagged = history.iter_mut().filter_map(|op| match op {
                Op::Update(update) => Some(update),
                _ => None,
            });
            for update in [&mut first, &mut second].into_iter().chain(flagged) {
                update.local_wins = false;
            }
            first.changed_at = None;
            second.changed_at = None;
        }
        // A device's own times are a sequence: one before the newest already applied
        // is out of order by definition, so reports commute only on the gateway's clock.
        for update in [&mut first, &mut second] {
            if update.section == Section::Reported {
                update.changed_at = None;
            }
        }
        let mut base: Option<Document> = None;
        for (step, op) in (1..).zip(&history) {
            if let Ok(applied) = apply_op(base.as_ref(), op, step * 10, &local_wins) {
                if applied.changed {
                    base = Some(applied.document);
                }
            }
        }
        // Both orders start from the same expiries, which the first request would apply.
        if let Some(document) = &base {
            let applied = expire(document, 77, &ROOMY).expect("expire");
            base = Some(applied.document);
        }
        let apply_both = |one: &Update, two: &Update| {
            let mut current = base.clone();
            for update in [one, two] {
                let applied = apply_update(current.as_ref(), update, 77, &ROOMY, &local_wins)
                    .expect("accepted");
                if applied.changed {
                    current = Some(applied.document);
                }
            }
            current
        };
        prop_assert_eq!(apply_both(&first, &second), apply_both(&second, &first));
    }
}
