//! Request and result checks: client token, keys, depth, size.

use serde_json::Value;

use super::{ErrorCode, Limits, Object, Rejection, Sections};

/// Longest `clientToken` accepted, in bytes (the AWS shadow limit).
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

/// Longest refusal `reason` accepted, in bytes: a reason is for a person to read.
pub const MAX_REASON_BYTES: usize = 256;

pub(crate) fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "reason is {} bytes; the limit is {MAX_REASON_BYTES}",
                reason.len()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_client_token(token: Option<&str>) -> Result<(), Rejection> {
    match token {
        Some(token) if token.len() > MAX_CLIENT_TOKEN_BYTES => Err(Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "clientToken is {} bytes; the limit is {MAX_CLIENT_TOKEN_BYTES}",
                token.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Rejects a tree nesting deeper than `limits.max_depth`; `what` names the
/// tree in the message.
pub(crate) fn check_depth(tree: &Object, limits: &Limits, what: &str) -> Result<(), Rejection> {
    let depth = depth(tree);
    if depth > limits.max_depth {
        return Err(Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "{what} nests {depth} levels deep; max_depth is {}",
                limits.max_depth
            ),
        ));
    }
    Ok(())
}

/// Nesting depth of an object tree: an object is one level more than its
/// deepest child (`{"a":1}` is 1, `{"a":{"b":1}}` is 2); an array is a level
/// only when it holds an object or an array, so a list of numbers is a plain
/// leaf while `{"a":[{"b":1}]}` is 3. Iterative, so a hostile tree cannot
/// exhaust the stack before it is measured.
pub(crate) fn depth(tree: &Object) -> usize {
    let mut deepest = 1;
    let mut pending: Vec<(&Value, usize)> = tree.values().map(|child| (child, 1)).collect();
    while let Some((value, parent_level)) = pending.pop() {
        let level = parent_level + 1;
        match value {
            Value::Object(map) => {
                deepest = deepest.max(level);
                pending.extend(map.values().map(|child| (child, level)));
            }
            Value::Array(items) if items.iter().any(is_container) => {
                deepest = deepest.max(level);
                pending.extend(items.iter().map(|child| (child, level)));
            }
            _ => {}
        }
    }
    deepest
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}

/// Rejects the empty key anywhere in the tree, objects inside arrays included.
/// Recursive: call only once the depth check has bounded the tree.
pub(crate) fn check_keys(state: &Object) -> Result<(), Rejection> {
    let mut path = vec!["state".to_owned()];
    match object_with_empty_key(state, &mut path) {
        Some(at) => Err(Rejection::new(
            ErrorCode::BadRequest,
            format!("empty object key in {at}"),
        )),
        None => Ok(()),
    }
}

/// Dotted path of the first object holding an empty key.
fn object_with_empty_key(map: &Object, path: &mut Vec<String>) -> Option<String> {
    if map.contains_key("") {
        return Some(path.join("."));
    }
    map.iter().find_map(|(key, child)| {
        path.push(key.clone());
        let found = value_with_empty_key(child, path);
        path.pop();
        found
    })
}

fn value_with_empty_key(value: &Value, path: &mut Vec<String>) -> Option<String> {
    match value {
        Value::Object(map) => object_with_empty_key(map, path),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            path.push(index.to_string());
            let found = value_with_empty_key(item, path);
            path.pop();
            found
        }),
        _ => None,
    }
}

/// Rejects a document whose `state` serializes to more than
/// `limits.max_document_bytes` of JSON.
pub(crate) fn check_size(state: &Sections, limits: &Limits) -> Result<(), Rejection> {
    let size = serde_json::to_vec(state)
        .map_err(|error| {
            Rejection::new(
                ErrorCode::Internal,
                format!("cannot serialize state: {error}"),
            )
        })?
        .len();
    if size > limits.max_document_bytes {
        return Err(Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "document state would be {size} bytes; max_document_bytes is {}",
                limits.max_document_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::shadow::test_object as object;

    #[test]
    fn depth_counts_objects_and_arrays_that_hold_containers() {
        let table = [
            (json!({}), 1),
            (json!({"a": 1}), 1),
            (json!({"a": {}}), 2),
            (json!({"a": {"b": 1}}), 2),
            (json!({"a": [1, 2, 3]}), 1),
            (json!({"a": []}), 1),
            (json!({"a": [[1]]}), 2),
            (json!({"a": [{"b": 1}]}), 3),
            (json!({"a": [1, {"b": [2]}]}), 3),
            (json!({"a": 1, "b": {"c": {"d": null}}}), 3),
        ];
        for (tree, expected) in table {
            assert_eq!(depth(&object(tree.clone())), expected, "{tree}");
        }
    }

    #[test]
    fn depth_of_a_very_deep_tree_does_not_overflow_the_stack() {
        // Built by hand: `json!` would serialize the nested value recursively.
        let mut value = json!(1);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        let mut tree = Object::new();
        tree.insert("a".to_owned(), value);
        assert_eq!(depth(&tree), 100_000);
        // serde_json drops values recursively; unwind the nesting by hand.
        let mut rest = tree.into_iter().next().map(|(_, value)| value);
        while let Some(Value::Array(mut items)) = rest {
            rest = items.pop();
        }
    }

    #[test]
    fn empty_key_is_found_inside_arrays_with_its_path() {
        let rejection = check_keys(&object(json!({"a": [0, {"b": {"": 1}}]}))).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::BadRequest);
        assert_eq!(rejection.message, "empty object key in state.a.1.b");
    }
}
