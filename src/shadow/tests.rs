//! Rule table: one test per rule of the engine, each a JSON case in the style
//! of the mongodb/specifications tests, so a cloud team can read the expected
//! behaviour without reading Rust.
//!
//! A case is `{"given": <document or null>, "limits": {...}?, "steps": [...]}`.
//! Each step is an `update`, `get`, `delete` or `delta` operation with an
//! `expect` object whose present fields are checked. The runner plays the
//! gateway: it keeps the document of a changed update, keeps the old one on a
//! rejection, and drops it after a delete.

use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    given: Option<Document>,
    #[serde(default)]
    limits: Option<LimitsSpec>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitsSpec {
    max_document_bytes: usize,
    max_depth: usize,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
enum Step {
    #[serde(rename_all = "camelCase")]
    Update {
        section: String,
        state: Object,
        #[serde(default)]
        version: Option<u64>,
        #[serde(default)]
        client_token: Option<String>,
        now: u64,
        expect: Expect,
    },
    Get {
        expect: Expect,
    },
    Delete {
        #[serde(default)]
        version: Option<u64>,
        expect: Expect,
    },
    Delta {
        expect: Expect,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    /// HTTP-like code of the expected rejection.
    error: Option<u16>,
    /// Substrings of the rejection message.
    #[serde(default)]
    message_contains: Vec<String>,
    changed: Option<bool>,
    document: Option<Value>,
    state: Option<Value>,
    metadata: Option<Value>,
    version: Option<u64>,
    timestamp: Option<u64>,
    /// `null` expects no delta; absent means unchecked.
    #[serde(default, deserialize_with = "present")]
    delta: Option<Value>,
    /// Whether `delta_state` differs between the previous and the new document.
    delta_state_changed: Option<bool>,
    deleted_version: Option<u64>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

const DEFAULT_LIMITS: Limits = Limits {
    max_document_bytes: 8192,
    max_depth: 6,
};

fn run(case: Value) {
    let case: Case = serde_json::from_value(case).expect("malformed case");
    let limits = case.limits.map_or(DEFAULT_LIMITS, |limits| Limits {
        max_document_bytes: limits.max_document_bytes,
        max_depth: limits.max_depth,
    });
    let mut current = case.given;
    for (index, step) in case.steps.into_iter().enumerate() {
        let at = format!("step {index}");
        match step {
            Step::Update {
                section,
                state,
                version,
                client_token,
                now,
                expect,
            } => {
                let section = match section.as_str() {
                    "reported" => Section::Reported,
                    "desired" => Section::Desired,
                    other => panic!("{at}: unknown section {other}"),
                };
                let update = Update {
                    section,
                    state,
                    version,
                    client_token,
                };
                let result = apply_update(current.as_ref(), &update, now, &limits);
                let Some(applied) = check_result(&at, result, &expect) else {
                    continue;
                };
                check_document(&at, &applied.document, &expect);
                if let Some(changed) = expect.changed {
                    assert_eq!(applied.changed, changed, "{at}: changed");
                }
                if let Some(expected) = &expect.delta {
                    assert_eq!(&to_json(&applied.delta), expected, "{at}: delta");
                }
                assert_eq!(applied.delta, delta(&applied.document), "{at}: delta");
                if let Some(expected) = expect.delta_state_changed {
                    let changed =
                        delta_state(current.as_ref()) != delta_state(Some(&applied.document));
                    assert_eq!(changed, expected, "{at}: delta state changed");
                }
                if applied.changed {
                    current = Some(applied.document);
                }
            }
            Step::Get { expect } => {
                if let Some(document) = check_result(&at, get(current.as_ref()), &expect) {
                    check_document(&at, document, &expect);
                }
            }
            Step::Delete { version, expect } => {
                let result = delete(current.as_ref(), version);
                if let Some(deleted) = check_result(&at, result, &expect) {
                    if let Some(expected) = expect.deleted_version {
                        assert_eq!(deleted, expected, "{at}: deleted version");
                    }
                    current = None;
                }
            }
            Step::Delta { expect } => {
                let document = current.clone().unwrap_or_default();
                let expected = expect.delta.expect("delta step without expect.delta");
                assert_eq!(to_json(&delta(&document)), expected, "{at}: delta");
            }
        }
    }
}

/// Checks an expected rejection, or returns the accepted value.
fn check_result<T: std::fmt::Debug>(
    at: &str,
    result: Result<T, Rejection>,
    expect: &Expect,
) -> Option<T> {
    match (result, expect.error) {
        (Ok(value), None) => Some(value),
        (Ok(value), Some(code)) => panic!("{at}: expected rejection {code}, accepted {value:?}"),
        (Err(rejection), None) => panic!("{at}: unexpected rejection: {rejection}"),
        (Err(rejection), Some(code)) => {
            assert_eq!(rejection.code.as_u16(), code, "{at}: {rejection}");
            for part in &expect.message_contains {
                assert!(
                    rejection.message.contains(part.as_str()),
                    "{at}: message {:?} lacks {part:?}",
                    rejection.message
                );
            }
            None
        }
    }
}

fn check_document(at: &str, document: &Document, expect: &Expect) {
    if let Some(expected) = &expect.document {
        assert_eq!(&to_json(document), expected, "{at}: document");
    }
    if let Some(expected) = &expect.state {
        assert_eq!(&to_json(&document.state), expected, "{at}: state");
    }
    if let Some(expected) = &expect.metadata {
        assert_eq!(&to_json(&document.metadata), expected, "{at}: metadata");
    }
    if let Some(expected) = expect.version {
        assert_eq!(document.version, expected, "{at}: version");
    }
    if let Some(expected) = expect.timestamp {
        assert_eq!(document.timestamp, expected, "{at}: timestamp");
    }
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializable")
}

/// A water heater reported at t=100 (version 1).
fn heater() -> Value {
    json!({
        "state": {
            "reported": {"heater": {"temp": 50, "mode": "eco", "schedule": [6, 22]}, "fw": "1.0"},
            "desired": {}
        },
        "metadata": {
            "reported": {
                "heater": {
                    "temp": {"timestamp": 100},
                    "mode": {"timestamp": 100},
                    "schedule": {"timestamp": 100}
                },
                "fw": {"timestamp": 100}
            },
            "desired": {}
        },
        "version": 1,
        "timestamp": 100
    })
}

#[test]
fn rule_01_partial_updates_merge_recursively_arrays_and_scalars_replace() {
    run(json!({
        "given": heater(),
        "steps": [{
            "op": "update", "section": "reported", "now": 200,
            "state": {"heater": {"temp": 55, "schedule": [7]}},
            "expect": {
                "changed": true,
                "state": {
                    "reported": {"heater": {"temp": 55, "mode": "eco", "schedule": [7]}, "fw": "1.0"},
                    "desired": {}
                }
            }
        }]
    }));
}

#[test]
fn rule_02_null_removes_field_and_its_metadata() {
    run(json!({
        "given": heater(),
        "steps": [{
            "op": "update", "section": "reported", "now": 200,
            "state": {"heater": {"mode": null}, "fw": null},
            "expect": {
                "changed": true,
                "state": {"reported": {"heater": {"temp": 50, "schedule": [6, 22]}}, "desired": {}},
                "metadata": {
                    "reported": {"heater": {"temp": {"timestamp": 100}, "schedule": {"timestamp": 100}}},
                    "desired": {}
                }
            }
        }]
    }));
}

#[test]
fn rule_02_removing_last_child_removes_emptied_objects() {
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "desired", "now": 10,
                "state": {"a": {"b": {"c": 1}}, "x": 1},
                "expect": {"version": 1}
            },
            {
                "op": "update", "section": "desired", "now": 20,
                "state": {"a": {"b": {"c": null}}},
                "expect": {
                    "changed": true,
                    "state": {"reported": {}, "desired": {"x": 1}},
                    "metadata": {"reported": {}, "desired": {"x": {"timestamp": 10}}}
                }
            }
        ]
    }));
}

#[test]
fn rule_02_null_for_missing_key_is_a_noop() {
    run(json!({
        "given": heater(),
        "steps": [{
            "op": "update", "section": "reported", "now": 200,
            "state": {"ghost": null, "heater": {"ghost": null}, "fw": {"ghost": null}},
            "expect": {"changed": false, "document": heater()}
        }]
    }));
}

#[test]
fn rule_03_written_leaves_get_now_and_untouched_leaves_keep_their_timestamp() {
    run(json!({
        "given": heater(),
        "steps": [{
            "op": "update", "section": "reported", "now": 200,
            // `mode` is rewritten with its old value: written, so stamped.
            "state": {"heater": {"temp": 55, "mode": "eco"}},
            "expect": {
                "changed": true,
                "metadata": {
                    "reported": {
                        "heater": {
                            "temp": {"timestamp": 200},
                            "mode": {"timestamp": 200},
                            "schedule": {"timestamp": 100}
                        },
                        "fw": {"timestamp": 100}
                    },
                    "desired": {}
                }
            }
        }]
    }));
}

#[test]
fn rule_03_object_replaced_by_scalar_drops_subtree_metadata_and_vice_versa() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "reported", "now": 200,
                "state": {"heater": "offline", "fw": {"main": "1.1", "radio": [2, 0]}},
                "expect": {
                    "state": {
                        "reported": {"heater": "offline", "fw": {"main": "1.1", "radio": [2, 0]}},
                        "desired": {}
                    },
                    "metadata": {
                        "reported": {
                            "heater": {"timestamp": 200},
                            "fw": {"main": {"timestamp": 200}, "radio": {"timestamp": 200}}
                        },
                        "desired": {}
                    }
                }
            },
            {
                // An object of nulls over a scalar has nothing to write: no-op.
                "op": "update", "section": "reported", "now": 300,
                "state": {"heater": {"temp": null}},
                "expect": {"changed": false, "version": 2}
            }
        ]
    }));
}

#[test]
fn rule_04_first_change_creates_version_1() {
    run(json!({
        "given": null,
        "steps": [{
            "op": "update", "section": "desired", "now": 10,
            "state": {"temp": 60},
            "expect": {
                "changed": true,
                "document": {
                    "state": {"reported": {}, "desired": {"temp": 60}},
                    "metadata": {"reported": {}, "desired": {"temp": {"timestamp": 10}}},
                    "version": 1,
                    "timestamp": 10
                }
            }
        }]
    }));
}

#[test]
fn rule_04_each_change_increments_version_by_one_and_sets_timestamp() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "reported", "now": 200, "state": {"fw": "1.1"},
                "expect": {"changed": true, "version": 2, "timestamp": 200}
            },
            {
                "op": "update", "section": "desired", "now": 300, "state": {"heater": {"temp": 60}},
                "expect": {"changed": true, "version": 3, "timestamp": 300}
            }
        ]
    }));
}

#[test]
fn rule_04_unchanged_update_keeps_version_and_timestamps() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "reported", "now": 200,
                "state": {"heater": {"temp": 50, "schedule": [6, 22]}, "fw": "1.0", "gone": null},
                "expect": {"changed": false, "document": heater()}
            },
            {
                // Exact JSON: 50.0 is stored differently from 50, so it is a change.
                "op": "update", "section": "reported", "now": 300,
                "state": {"heater": {"temp": 50.0}},
                "expect": {"changed": true, "version": 2}
            }
        ]
    }));
}

#[test]
fn rule_04_empty_update_on_missing_document_returns_default_document() {
    let empty = json!({
        "state": {"reported": {}, "desired": {}},
        "metadata": {"reported": {}, "desired": {}},
        "version": 0,
        "timestamp": 0
    });
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "reported", "now": 10, "state": {},
                "expect": {"changed": false, "document": empty, "delta": null}
            },
            {
                "op": "update", "section": "desired", "now": 10, "state": {"a": null, "b": {}},
                "expect": {"changed": false, "document": empty, "delta": null}
            },
            {"op": "get", "expect": {"error": 404}}
        ]
    }));
}

#[test]
fn rule_05_version_mismatch_is_conflict_naming_both_versions() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "reported", "now": 200, "version": 7, "state": {"fw": "2"},
                "expect": {"error": 409, "messageContains": ["7", "1"]}
            },
            {
                // Even an update that would change nothing is checked.
                "op": "update", "section": "reported", "now": 200, "version": 0, "state": {},
                "expect": {"error": 409}
            },
            {
                "op": "update", "section": "reported", "now": 200, "version": 1, "state": {"fw": "2"},
                "expect": {"changed": true, "version": 2}
            },
            {"op": "get", "expect": {"version": 2}}
        ]
    }));
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "desired", "now": 10, "version": 3, "state": {"a": 1},
                "expect": {"error": 409, "messageContains": ["3", "0"]}
            },
            {
                "op": "update", "section": "desired", "now": 10, "version": 0, "state": {"a": 1},
                "expect": {"changed": true, "version": 1}
            }
        ]
    }));
}

#[test]
fn rule_06_client_token_over_64_bytes_is_bad_request() {
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "reported", "now": 10, "state": {"a": 1},
                "clientToken": "t".repeat(64),
                "expect": {"changed": true}
            },
            {
                "op": "update", "section": "reported", "now": 20, "state": {"a": 2},
                "clientToken": "t".repeat(65),
                "expect": {"error": 400, "messageContains": ["65", "64"]}
            },
            {
                // 33 characters, 66 bytes: the limit is in bytes.
                "op": "update", "section": "reported", "now": 20, "state": {"a": 2},
                "clientToken": "é".repeat(33),
                "expect": {"error": 400, "messageContains": ["66"]}
            }
        ]
    }));
}

#[test]
fn rule_07_update_deeper_than_max_depth_is_bad_request() {
    run(json!({
        "given": null,
        "limits": {"maxDocumentBytes": 8192, "maxDepth": 2},
        "steps": [
            {
                "op": "update", "section": "desired", "now": 10, "state": {"a": {"b": 1}},
                "expect": {"changed": true}
            },
            {
                // Depth counts the update itself, nulls included.
                "op": "update", "section": "desired", "now": 20,
                "state": {"a": {"b": {"c": null}}},
                "expect": {"error": 400, "messageContains": ["3", "2"]}
            }
        ]
    }));
}

#[test]
fn rule_07_resulting_section_deeper_than_max_depth_is_bad_request() {
    // A document stored under a larger max_depth cannot grow further once the
    // limit is lowered.
    run(json!({
        "given": {
            "state": {"reported": {"a": {"b": {"c": 1}}}, "desired": {}},
            "metadata": {"reported": {"a": {"b": {"c": {"timestamp": 1}}}}, "desired": {}},
            "version": 1,
            "timestamp": 1
        },
        "limits": {"maxDocumentBytes": 8192, "maxDepth": 2},
        "steps": [
            {
                "op": "update", "section": "reported", "now": 20, "state": {"x": 1},
                "expect": {"error": 400, "messageContains": ["resulting reported state", "3", "2"]}
            },
            {
                "op": "update", "section": "desired", "now": 20, "state": {"x": 1},
                "expect": {"changed": true}
            }
        ]
    }));
}

#[test]
fn rule_07_arrays_count_as_a_level_only_when_they_hold_containers() {
    run(json!({
        "given": null,
        "limits": {"maxDocumentBytes": 8192, "maxDepth": 2},
        "steps": [
            {
                "op": "update", "section": "reported", "now": 10, "state": {"a": [1, 2, 3]},
                "expect": {"changed": true}
            },
            {
                "op": "update", "section": "reported", "now": 20, "state": {"a": [[1], [2]]},
                "expect": {"changed": true}
            },
            {
                "op": "update", "section": "reported", "now": 30, "state": {"a": [{"b": 1}]},
                "expect": {"error": 400, "messageContains": ["3"]}
            }
        ]
    }));
}

#[test]
fn rule_08_state_over_max_document_bytes_is_payload_too_large() {
    // {"reported":{"a":"x"},"desired":{}} is 35 bytes.
    run(json!({
        "given": null,
        "limits": {"maxDocumentBytes": 35, "maxDepth": 6},
        "steps": [
            {
                "op": "update", "section": "reported", "now": 10, "state": {"a": "x"},
                "expect": {"changed": true}
            },
            {
                "op": "update", "section": "reported", "now": 20, "state": {"a": "xy"},
                "expect": {"error": 413, "messageContains": ["36", "35"]}
            },
            {"op": "get", "expect": {"version": 1, "state": {"reported": {"a": "x"}, "desired": {}}}}
        ]
    }));
}

#[test]
fn rule_09_delta_holds_desired_leaves_that_differ_from_reported() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "desired", "now": 200,
                "state": {
                    "heater": {"temp": 60, "mode": "eco", "schedule": [6]},
                    "fw": {"main": "1.1"},
                    "led": "on"
                },
                "expect": {
                    "delta": {
                        "state": {
                            "heater": {"temp": 60, "schedule": [6]},
                            "fw": {"main": "1.1"},
                            "led": "on"
                        },
                        "metadata": {
                            "heater": {"temp": {"timestamp": 200}, "schedule": {"timestamp": 200}},
                            "fw": {"main": {"timestamp": 200}},
                            "led": {"timestamp": 200}
                        },
                        "version": 2,
                        "timestamp": 200
                    }
                }
            },
            {
                "op": "update", "section": "reported", "now": 300,
                "state": {"heater": {"temp": 60, "schedule": [6]}, "fw": {"main": "1.1"}, "led": "on"},
                "expect": {"delta": null}
            }
        ]
    }));
}

#[test]
fn rule_09_numbers_compare_by_value_and_big_integers_exactly() {
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "desired", "now": 10,
                "state": {"temp": 60, "big": 9_007_199_254_740_993_u64, "list": [1, 2]},
                "expect": {"version": 1}
            },
            {
                "op": "update", "section": "reported", "now": 20,
                "state": {"temp": 60.0, "big": 9_007_199_254_740_992.0, "list": [1.0, 2.0]},
                "expect": {
                    "delta": {
                        "state": {"big": 9_007_199_254_740_993_u64},
                        "metadata": {"big": {"timestamp": 10}},
                        "version": 2,
                        "timestamp": 20
                    }
                }
            }
        ]
    }));
}

#[test]
fn rule_10_applied_delta_is_the_new_documents_delta_and_delta_state_tracks_changes() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "desired", "now": 200, "state": {"heater": {"temp": 60}},
                "expect": {"deltaStateChanged": true}
            },
            {
                // Reported changes elsewhere: same delta state, new version.
                "op": "update", "section": "reported", "now": 300, "state": {"fw": "1.1"},
                "expect": {
                    "deltaStateChanged": false,
                    "delta": {
                        "state": {"heater": {"temp": 60}},
                        "metadata": {"heater": {"temp": {"timestamp": 200}}},
                        "version": 3,
                        "timestamp": 300
                    }
                }
            },
            {
                "op": "update", "section": "reported", "now": 400, "state": {"heater": {"temp": 60}},
                "expect": {"deltaStateChanged": true, "delta": null}
            },
            {"op": "delta", "expect": {"delta": null}}
        ]
    }));
}

#[test]
fn rule_11_empty_key_is_bad_request_any_other_key_is_allowed() {
    run(json!({
        "given": null,
        "steps": [
            {
                "op": "update", "section": "reported", "now": 10, "state": {"": 1},
                "expect": {"error": 400, "messageContains": ["empty"]}
            },
            {
                "op": "update", "section": "reported", "now": 10, "state": {"a": {"": null}},
                "expect": {"error": 400, "messageContains": ["state.a"]}
            },
            {
                "op": "update", "section": "reported", "now": 10,
                "state": {
                    "$set": true, "a.b": "dot", "timestamp": {"timestamp": 5},
                    "ключ": [null, {}], " ": "s"
                },
                "expect": {
                    "changed": true,
                    "metadata": {
                        "reported": {
                            "$set": {"timestamp": 10},
                            "a.b": {"timestamp": 10},
                            "timestamp": {"timestamp": {"timestamp": 10}},
                            "ключ": {"timestamp": 10},
                            " ": {"timestamp": 10}
                        },
                        "desired": {}
                    }
                }
            }
        ]
    }));
}

#[test]
fn get_without_document_is_not_found() {
    run(json!({
        "given": null,
        "steps": [{"op": "get", "expect": {"error": 404}}]
    }));
    run(json!({
        "given": heater(),
        "steps": [{"op": "get", "expect": {"document": heater()}}]
    }));
}

#[test]
fn delete_returns_the_deleted_version_and_checks_the_expected_one() {
    run(json!({
        "given": heater(),
        "steps": [
            {"op": "delete", "version": 2, "expect": {"error": 409, "messageContains": ["2", "1"]}},
            {"op": "delete", "version": 1, "expect": {"deletedVersion": 1}},
            {"op": "get", "expect": {"error": 404}},
            {"op": "delete", "expect": {"error": 404}},
            {
                // A new document starts again at version 1.
                "op": "update", "section": "reported", "now": 500, "state": {"a": 1},
                "expect": {"version": 1}
            }
        ]
    }));
}

#[test]
fn document_with_version_0_counts_as_missing() {
    let stored = Document::default();
    assert_eq!(get(Some(&stored)).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        delete(Some(&stored), None).unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn document_round_trips_through_json() {
    let document: Document = serde_json::from_value(heater()).expect("valid document");
    assert_eq!(to_json(&document), heater());
    let sparse: Document = serde_json::from_value(json!({
        "state": {"reported": {"a": 1}},
        "metadata": {"reported": {"a": {"timestamp": 1}}},
        "version": 1,
        "timestamp": 1
    }))
    .expect("sections default to empty");
    assert!(sparse.state.desired.is_empty());
}
