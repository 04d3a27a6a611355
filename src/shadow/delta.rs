//! The delta: desired leaves that reported does not (yet) match.

use serde_json::{Number, Value};

use super::Object;

/// Delta state and its metadata for one `desired` object against `reported`
/// (`None` when reported holds no object at this path).
///
/// Objects on both sides recurse; everything else compares whole, so a desired
/// object over a reported scalar, or a key reported lacks, yields the whole
/// desired subtree. Keys only reported never appear. Empty desired objects have
/// no leaves and so contribute nothing.
pub(crate) fn diff(
    desired: &Object,
    reported: Option<&Object>,
    desired_metadata: Option<&Object>,
) -> (Object, Object) {
    let mut state = Object::new();
    let mut metadata = Object::new();
    for (key, wanted) in desired {
        let actual = reported.and_then(|reported| reported.get(key));
        let wanted_metadata = desired_metadata.and_then(|metadata| metadata.get(key));
        match wanted {
            Value::Object(wanted) => {
                let (child_state, child_metadata) = diff(
                    wanted,
                    actual.and_then(Value::as_object),
                    wanted_metadata.and_then(Value::as_object),
                );
                if !child_state.is_empty() {
                    state.insert(key.clone(), Value::Object(child_state));
                    metadata.insert(key.clone(), Value::Object(child_metadata));
                }
            }
            leaf => {
                if actual.is_some_and(|actual| values_equal(leaf, actual)) {
                    continue;
                }
                state.insert(key.clone(), leaf.clone());
                if let Some(wanted_metadata) = wanted_metadata {
                    metadata.insert(key.clone(), wanted_metadata.clone());
                }
            }
        }
    }
    (state, metadata)
}

/// JSON equality where numbers compare by numeric value, at any depth
/// (arrays element-wise, objects key-wise): a device reporting `60.0` has
/// reached a desired `60`.
pub(crate) fn values_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => numbers_equal(left, right),
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| values_equal(left, right))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left.iter().all(|(key, left)| {
                    right
                        .get(key)
                        .is_some_and(|right| values_equal(left, right))
                })
        }
        _ => left == right,
    }
}

/// Exact numeric equality: integers compare as integers (no rounding through
/// `f64`, so 2^53 + 1 differs from 2^53), floats as floats, and a float equals
/// an integer only if it is that very integer.
fn numbers_equal(left: &Number, right: &Number) -> bool {
    match (integer(left), integer(right)) {
        (Some(left), Some(right)) => left == right,
        (Some(integer), None) => right
            .as_f64()
            .is_some_and(|float| float_is_integer(float, integer)),
        (None, Some(integer)) => left
            .as_f64()
            .is_some_and(|float| float_is_integer(float, integer)),
        (None, None) => left.as_f64() == right.as_f64(),
    }
}

fn integer(number: &Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
}

fn float_is_integer(float: f64, integer: i128) -> bool {
    // Every JSON integer lies in [-2^63, 2^64); both bounds are exact in f64
    // (`u64::MAX as f64` rounds up to 2^64). Inside that range an integral
    // float converts to i128 exactly, so no precision is lost either way.
    let range = (i64::MIN as f64)..(u64::MAX as f64);
    float.fract() == 0.0 && range.contains(&float) && float as i128 == integer
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_by_value_exactly() {
        let table = [
            (json!(60), json!(60.0), true),
            (json!(-3), json!(-3.0), true),
            (json!(0), json!(-0.0), true),
            (json!(60), json!(60.5), false),
            (json!(0.5), json!(0.5), true),
            (
                json!(9_007_199_254_740_993_u64),
                json!(9_007_199_254_740_992.0),
                false,
            ),
            (
                json!(9_007_199_254_740_992_u64),
                json!(9_007_199_254_740_992.0),
                true,
            ),
            (json!(u64::MAX), json!(18_446_744_073_709_551_616.0), false),
            (json!(u64::MAX), json!(u64::MAX), true),
            (json!(i64::MIN), json!(-9_223_372_036_854_775_808.0), true),
            (json!(i64::MIN), json!(1e300), false),
            (json!(-1), json!(u64::MAX), false),
        ];
        for (left, right, equal) in table {
            assert_eq!(values_equal(&left, &right), equal, "{left} vs {right}");
            assert_eq!(values_equal(&right, &left), equal, "{right} vs {left}");
        }
    }

    #[test]
    fn containers_compare_deeply_with_numeric_leaves() {
        assert!(values_equal(
            &json!([1, {"a": 2.0}]),
            &json!([1.0, {"a": 2}])
        ));
        assert!(!values_equal(&json!([1, 2]), &json!([1])));
        assert!(!values_equal(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!values_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!values_equal(&json!("1"), &json!(1)));
        assert!(values_equal(&json!(null), &json!(null)));
    }
}
