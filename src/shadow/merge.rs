//! Recursive merge of a partial update into one section, keeping the metadata
//! tree in step with the state tree.

use serde_json::Value;

use super::Object;

/// The metadata leaf recorded for a state leaf written at `now`.
pub(crate) fn leaf_metadata(now: u64) -> Object {
    let mut leaf = Object::new();
    leaf.insert("timestamp".to_owned(), Value::from(now));
    leaf
}

/// Merges `update` into `state`, mirroring every change into `metadata`.
///
/// - an object merges key by key into an existing object; over anything else
///   (scalar, array, missing) it starts from an empty object, and replaces the
///   old value only if something is left after the merge, so an update made of
///   nulls and empty objects never destroys or creates anything;
/// - `null` removes the key and its metadata;
/// - scalars and arrays replace whatever was there, and get the metadata leaf `leaf`
///   (`{"timestamp": now}` plus the update's lifecycle fields);
/// - an object emptied by the merge is removed, so the tree never holds `{}`.
///
/// Recursion depth is that of `update`, which the caller has already bounded.
pub(crate) fn merge_into(
    state: &mut Object,
    metadata: &mut Object,
    update: &Object,
    leaf: &Object,
) {
    for (key, patch) in update {
        match patch {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(patch) => merge_object_at(state, metadata, key, patch, leaf),
            value => {
                state.insert(key.clone(), value.clone());
                metadata.insert(key.clone(), Value::Object(leaf.clone()));
            }
        }
    }
}

fn merge_object_at(
    state: &mut Object,
    metadata: &mut Object,
    key: &str,
    patch: &Object,
    leaf: &Object,
) {
    if let Some(Value::Object(child_state)) = state.get_mut(key) {
        // Metadata of an object must be an object; repair a stored document
        // whose metadata disagrees rather than fail the device's update.
        if !matches!(metadata.get(key), Some(Value::Object(_))) {
            metadata.insert(key.to_owned(), Value::Object(Object::new()));
        }
        if let Some(Value::Object(child_metadata)) = metadata.get_mut(key) {
            merge_into(child_state, child_metadata, patch, leaf);
        }
        if child_state.is_empty() {
            state.remove(key);
            metadata.remove(key);
        }
        return;
    }
    let mut fresh_state = Object::new();
    let mut fresh_metadata = Object::new();
    merge_into(&mut fresh_state, &mut fresh_metadata, patch, leaf);
    if !fresh_state.is_empty() {
        state.insert(key.to_owned(), Value::Object(fresh_state));
        metadata.insert(key.to_owned(), Value::Object(fresh_metadata));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::shadow::test_object as object;

    fn merged(state: Value, metadata: Value, update: Value) -> (Value, Value) {
        let mut state = object(state);
        let mut metadata = object(metadata);
        merge_into(
            &mut state,
            &mut metadata,
            &object(update),
            &leaf_metadata(9),
        );
        (Value::Object(state), Value::Object(metadata))
    }

    #[test]
    fn object_over_scalar_made_only_of_nulls_keeps_the_scalar() {
        let (state, metadata) = merged(
            json!({"a": 1}),
            json!({"a": {"timestamp": 1}}),
            json!({"a": {"b": null, "c": {}}}),
        );
        assert_eq!(state, json!({"a": 1}));
        assert_eq!(metadata, json!({"a": {"timestamp": 1}}));
    }

    #[test]
    fn empty_object_creates_nothing() {
        let (state, metadata) = merged(json!({}), json!({}), json!({"a": {"b": {}}}));
        assert_eq!(state, json!({}));
        assert_eq!(metadata, json!({}));
    }

    #[test]
    fn inconsistent_stored_metadata_is_repaired() {
        let (state, metadata) = merged(
            json!({"a": {"b": 1, "c": 2}}),
            json!({"a": 5}),
            json!({"a": {"b": 3}}),
        );
        assert_eq!(state, json!({"a": {"b": 3, "c": 2}}));
        assert_eq!(metadata, json!({"a": {"b": {"timestamp": 9}}}));
    }

    #[test]
    fn arrays_are_leaves_even_when_they_hold_objects() {
        let (state, metadata) = merged(
            json!({"a": [{"x": 1}]}),
            json!({"a": {"timestamp": 1}}),
            json!({"a": [{"y": null}]}),
        );
        assert_eq!(state, json!({"a": [{"y": null}]}));
        assert_eq!(metadata, json!({"a": {"timestamp": 9}}));
    }
}
