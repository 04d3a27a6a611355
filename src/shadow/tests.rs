//! Rule table: one test per rule of the engine, each a JSON case in the style
//! of the mongodb/specifications tests, so a cloud team can read the expected
//! behaviour without reading Rust.
//!
//! A case is `{"given": <document or null>, "limits": {...}?, "localWins": [...]?,
//! "steps": [...]}`. Each step is an `update`, `refuse`, `expire`, `get`, `delete` or
//! `delta` operation with an `expect` object whose present fields are checked. The runner plays the
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
    /// `[shadow] local_wins`.
    #[serde(default, rename = "localWins")]
    local_wins: Vec<String>,
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
        #[serde(default)]
        expires_at: Option<u64>,
        #[serde(default)]
        local_wins: bool,
        #[serde(default)]
        changed_at: Option<u64>,
        now: u64,
        expect: Expect,
    },
    Refuse {
        state: Object,
        reason: String,
        code: i64,
        now: u64,
        expect: Expect,
    },
    Expire {
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
    /// `null` expects no pending expiry.
    #[serde(default, deserialize_with = "present")]
    next_expiry: Option<Value>,
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
    let local_wins = LocalWins::new(&case.local_wins).expect("malformed localWins");
    let mut current = case.given;
    for (index, step) in case.steps.into_iter().enumerate() {
        let at = format!("step {index}");
        match step {
            Step::Update {
                section,
                state,
                version,
                client_token,
                expires_at,
                local_wins: flag,
                changed_at,
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
                    expires_at,
                    local_wins: flag,
                    changed_at,
                };
                let result = apply_update(current.as_ref(), &update, now, &limits, &local_wins);
                if let Some(applied) = check_result(&at, result, &expect) {
                    check_applied(&at, &mut current, applied, &expect);
                }
            }
            Step::Refuse {
                state,
                reason,
                code,
                now,
                expect,
            } => {
                let refusal = Refusal {
                    state,
                    reason,
                    code,
                    client_token: None,
                };
                let result = refuse(current.as_ref(), &refusal, now, &limits);
                if let Some(applied) = check_result(&at, result, &expect) {
                    check_applied(&at, &mut current, applied, &expect);
                }
            }
            Step::Expire { now, expect } => {
                let document = current.clone().unwrap_or_default();
                let applied = expire(&document, now, &limits).expect("expire");
                check_applied(&at, &mut current, applied, &expect);
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

/// Checks an accepted change and keeps its document when it changed.
fn check_applied(at: &str, current: &mut Option<Document>, applied: Applied, expect: &Expect) {
    check_document(at, &applied.document, expect);
    if let Some(changed) = expect.changed {
        assert_eq!(applied.changed, changed, "{at}: changed");
    }
    if let Some(expected) = &expect.delta {
        assert_eq!(&to_json(&applied.delta), expected, "{at}: delta");
    }
    assert_eq!(applied.delta, delta(&applied.document), "{at}: delta");
    if let Some(expected) = expect.delta_state_changed {
        let changed = delta_state(current.as_ref()) != delta_state(Some(&applied.document));
        assert_eq!(changed, expected, "{at}: delta state changed");
    }
    if let Some(expected) = &expect.next_expiry {
        assert_eq!(
            &to_json(&next_expiry(&applied.document)),
            expected,
            "{at}: next expiry"
        );
    }
    if applied.changed {
        *current = Some(applied.document);
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

/// The heater of [`heater`] with a pending desired `temp` of 75 set at t=150.
fn heater_asked_for_75() -> Value {
    let mut document = heater();
    document["state"]["desired"] = json!({"heater": {"temp": 75, "mode": "boost"}});
    document["metadata"]["desired"] =
        json!({"heater": {"temp": {"timestamp": 150}, "mode": {"timestamp": 150}}});
    document["version"] = json!(2);
    document["timestamp"] = json!(150);
    document
}

#[test]
fn rule_12_refused_leaves_leave_desired_for_refused_until_desired_is_written_again() {
    run(json!({
        "given": heater_asked_for_75(),
        "steps": [
            {
                // 75.0 is the value desired holds; `fw` is not desired: ignored.
                "op": "refuse", "now": 200, "reason": "above the 70 °C limit", "code": 422,
                "state": {"heater": {"temp": 75.0}, "fw": "1.0"},
                "expect": {
                    "changed": true, "version": 3, "timestamp": 200,
                    "state": {
                        "reported": {"heater": {"temp": 50, "mode": "eco", "schedule": [6, 22]}, "fw": "1.0"},
                        "desired": {"heater": {"mode": "boost"}},
                        "refused": {"heater": {"temp": 75}}
                    },
                    "delta": {
                        "state": {"heater": {"mode": "boost"}},
                        "metadata": {"heater": {"mode": {"timestamp": 150}}},
                        "version": 3, "timestamp": 200
                    }
                }
            },
            {
                "op": "get",
                "expect": {"metadata": {
                    "reported": heater()["metadata"]["reported"],
                    "desired": {"heater": {"mode": {"timestamp": 150}}},
                    "refused": {"heater": {"temp": {
                        "timestamp": 200, "reason": "above the 70 °C limit", "code": 422
                    }}}
                }}
            },
            {
                // A stale refusal (75 is no longer desired) changes nothing.
                "op": "refuse", "now": 210, "reason": "again", "code": 422,
                "state": {"heater": {"temp": 75, "mode": "eco"}},
                "expect": {"changed": false, "version": 3}
            },
            {
                "op": "update", "section": "desired", "now": 300, "state": {"heater": {"temp": 65}},
                "expect": {
                    "changed": true,
                    "state": {
                        "reported": heater()["state"]["reported"],
                        "desired": {"heater": {"temp": 65, "mode": "boost"}}
                    }
                }
            }
        ]
    }));
}

#[test]
fn rule_12_refusal_reasons_are_bounded() {
    run(json!({
        "given": heater_asked_for_75(),
        "steps": [{
            "op": "refuse", "now": 200, "reason": "r".repeat(MAX_REASON_BYTES + 1), "code": 1,
            "state": {"heater": {"temp": 75}},
            "expect": {"error": 400, "messageContains": ["reason", "256"]}
        }]
    }));
}

#[test]
fn rule_12_records_count_toward_the_size_limit_and_the_oldest_give_way() {
    // {"reported":{},"desired":{"b":2},"refused":{"a":1}} is 51 bytes; with `b` refused
    // too it would be 52, so the older record (`a`, at t=20) is dropped.
    run(json!({
        "given": null,
        "limits": {"maxDocumentBytes": 51, "maxDepth": 6},
        "steps": [
            {
                "op": "update", "section": "desired", "now": 10, "state": {"a": 1, "b": 2},
                "expect": {"version": 1}
            },
            {
                "op": "refuse", "now": 20, "reason": "", "code": 0, "state": {"a": 1},
                "expect": {"state": {"reported": {}, "desired": {"b": 2}, "refused": {"a": 1}}}
            },
            {
                "op": "refuse", "now": 30, "reason": "", "code": 0, "state": {"b": 2},
                "expect": {
                    "state": {"reported": {}, "desired": {}, "refused": {"b": 2}},
                    "metadata": {
                        "reported": {}, "desired": {},
                        "refused": {"b": {"timestamp": 30, "reason": "", "code": 0}}
                    }
                }
            },
            {
                // A desired write makes room the same way rather than being refused 413.
                "op": "update", "section": "desired", "now": 40, "state": {"c": 33},
                "expect": {"state": {"reported": {}, "desired": {"c": 33}}}
            }
        ]
    }));
}

#[test]
fn rule_13_leaves_expire_at_expires_at_and_leave_the_delta_for_expired() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "desired", "now": 200, "expiresAt": 500,
                "state": {"heater": {"temp": 60}, "led": "on"},
                "expect": {
                    "nextExpiry": 500,
                    "metadata": {
                        "reported": heater()["metadata"]["reported"],
                        "desired": {
                            "heater": {"temp": {"timestamp": 200, "expiresAt": 500}},
                            "led": {"timestamp": 200, "expiresAt": 500}
                        }
                    }
                }
            },
            {
                // Rewritten without an expiry: `led` no longer expires.
                "op": "update", "section": "desired", "now": 300, "state": {"led": "on"},
                "expect": {"changed": false}
            },
            {
                "op": "update", "section": "desired", "now": 300, "state": {"led": "off"},
                "expect": {"changed": true, "nextExpiry": 500}
            },
            {"op": "expire", "now": 499, "expect": {"changed": false}},
            {
                "op": "expire", "now": 500,
                "expect": {
                    "changed": true, "version": 4, "timestamp": 500, "nextExpiry": null,
                    "state": {
                        "reported": heater()["state"]["reported"],
                        "desired": {"led": "off"},
                        "expired": {"heater": {"temp": 60}}
                    },
                    "delta": {
                        "state": {"led": "off"},
                        "metadata": {"led": {"timestamp": 300}},
                        "version": 4, "timestamp": 500
                    }
                }
            },
            {
                "op": "get",
                "expect": {"metadata": {
                    "reported": heater()["metadata"]["reported"],
                    "desired": {"led": {"timestamp": 300}},
                    "expired": {"heater": {"temp": {"timestamp": 500, "expiresAt": 500}}}
                }}
            },
            {
                // Setting the leaf again clears its record.
                "op": "update", "section": "desired", "now": 600, "state": {"heater": {"temp": 61}},
                "expect": {"state": {
                    "reported": heater()["state"]["reported"],
                    "desired": {"led": "off", "heater": {"temp": 61}}
                }}
            }
        ]
    }));
}

#[test]
fn rule_13_due_leaves_expire_before_any_update_and_a_past_expiry_expires_at_once() {
    run(json!({
        "given": heater(),
        "steps": [
            {
                "op": "update", "section": "desired", "now": 200, "expiresAt": 250,
                "state": {"heater": {"temp": 60}},
                "expect": {"version": 2}
            },
            {
                // A report long after the expiry: the delta it sees is already empty.
                "op": "update", "section": "reported", "now": 900, "state": {"fw": "1.1"},
                "expect": {
                    "version": 3, "delta": null,
                    "state": {
                        "reported": {"heater": {"temp": 50, "mode": "eco", "schedule": [6, 22]}, "fw": "1.1"},
                        "desired": {},
                        "expired": {"heater": {"temp": 60}}
                    }
                }
            },
            {
                "op": "update", "section": "desired", "now": 950, "expiresAt": 960,
                "state": {"led": "on"},
                "expect": {"version": 4}
            },
            {
                // A report that changes nothing still stores the expiry that fell due.
                "op": "update", "section": "reported", "now": 970, "state": {"fw": "1.1"},
                "expect": {"changed": true, "version": 5, "state": {
                    "reported": {"heater": {"temp": 50, "mode": "eco", "schedule": [6, 22]}, "fw": "1.1"},
                    "desired": {},
                    "expired": {"heater": {"temp": 60}, "led": "on"}
                }}
            },
            {
                "op": "update", "section": "desired", "now": 1000, "expiresAt": 990,
                "state": {"led": "off"},
                "expect": {"changed": true, "delta": null, "state": {
                    "reported": {"heater": {"temp": 50, "mode": "eco", "schedule": [6, 22]}, "fw": "1.1"},
                    "desired": {},
                    "expired": {"heater": {"temp": 60}, "led": "off"}
                }}
            },
            {
                "op": "update", "section": "reported", "now": 1000, "expiresAt": 2000,
                "state": {"fw": "1.2"},
                "expect": {"error": 400, "messageContains": ["desired"]}
            }
        ]
    }));
}

#[test]
fn rule_14_a_newer_local_change_supersedes_a_pending_desired_leaf_an_older_one_does_not() {
    run(json!({
        "given": heater_asked_for_75(),
        "localWins": ["heater.temp"],
        "steps": [
            {
                // The heater's panel set 55 at t=120, before the app's 75 (t=150): the
                // app's setpoint stays pending. The report's clock is kept as changedAt.
                "op": "update", "section": "reported", "now": 200, "changedAt": 120,
                "state": {"heater": {"temp": 55}},
                "expect": {
                    "delta": {
                        "state": {"heater": {"temp": 75, "mode": "boost"}},
                        "metadata": {"heater": {"temp": {"timestamp": 150}, "mode": {"timestamp": 150}}},
                        "version": 3, "timestamp": 200
                    }
                }
            },
            {
                // Re-reported unchanged: its change time stays 120, still older.
                "op": "update", "section": "reported", "now": 300, "changedAt": 290,
                "state": {"heater": {"temp": 55, "mode": "eco"}, "fw": "1.1"},
                "expect": {"metadata": {
                    "reported": {
                        "heater": {
                            "temp": {"timestamp": 300, "changedAt": 120},
                            "mode": {"timestamp": 300},
                            "schedule": {"timestamp": 100}
                        },
                        "fw": {"timestamp": 300}
                    },
                    "desired": {"heater": {"temp": {"timestamp": 150}, "mode": {"timestamp": 150}}}
                }}
            },
            {
                // The panel changed it again at t=350, after the app: local wins.
                "op": "update", "section": "reported", "now": 400, "changedAt": 350,
                "state": {"heater": {"temp": 58}},
                "expect": {
                    "state": {
                        "reported": {"heater": {"temp": 58, "mode": "eco", "schedule": [6, 22]}, "fw": "1.1"},
                        "desired": {"heater": {"mode": "boost"}},
                        "superseded": {"heater": {"temp": 75}}
                    },
                    "delta": {
                        "state": {"heater": {"mode": "boost"}},
                        "metadata": {"heater": {"mode": {"timestamp": 150}}},
                        "version": 5, "timestamp": 400
                    }
                }
            },
            {
                "op": "get",
                "expect": {"metadata": {
                    "reported": {
                        "heater": {
                            "temp": {"timestamp": 400, "changedAt": 350},
                            "mode": {"timestamp": 300},
                            "schedule": {"timestamp": 100}
                        },
                        "fw": {"timestamp": 300}
                    },
                    "desired": {"heater": {"mode": {"timestamp": 150}}},
                    "superseded": {"heater": {"temp": {"timestamp": 400, "changedAt": 350}}}
                }}
            },
            {
                // `mode` is not in local_wins: a differing report never supersedes it.
                "op": "update", "section": "reported", "now": 500, "state": {"heater": {"mode": "off"}},
                "expect": {"delta": {
                    "state": {"heater": {"mode": "boost"}},
                    "metadata": {"heater": {"mode": {"timestamp": 150}}},
                    "version": 6, "timestamp": 500
                }}
            }
        ]
    }));
}

#[test]
fn rule_14_a_wrong_device_clock_falls_back_to_arrival_order() {
    run(json!({
        "given": heater_asked_for_75(),
        "localWins": ["heater"],
        "steps": [
            {
                // 61 s in the future: not trusted, the arrival (200) counts instead,
                // which is after the app's 75.
                "op": "update", "section": "reported", "now": 200, "changedAt": 261,
                "state": {"heater": {"temp": 55}},
                "expect": {
                    "state": {
                        "reported": {"heater": {"temp": 55, "mode": "eco", "schedule": [6, 22]}, "fw": "1.0"},
                        "desired": {"heater": {"mode": "boost"}},
                        "superseded": {"heater": {"temp": 75}}
                    }
                }
            },
            {
                // Before the newest change already applied (200): arrival again.
                "op": "update", "section": "desired", "now": 300, "state": {"heater": {"schedule": [1]}},
                "expect": {"version": 4}
            },
            {
                "op": "update", "section": "reported", "now": 400, "changedAt": 10,
                "state": {"heater": {"schedule": [2]}},
                "expect": {"state": {
                    "reported": {"heater": {"temp": 55, "mode": "eco", "schedule": [2]}, "fw": "1.0"},
                    "desired": {"heater": {"mode": "boost"}},
                    "superseded": {"heater": {"temp": 75, "schedule": [1]}}
                }}
            }
        ]
    }));
}

#[test]
fn rule_14_a_late_desired_write_older_than_the_local_change_is_superseded_on_arrival() {
    // After an uplink outage the cloud's setpoint of t=150 arrives at t=500, but the
    // panel changed the value at t=300: the request flag (no local_wins path here)
    // makes it yield. A write without a time of its own counts as made on arrival.
    let mut given = heater();
    given["metadata"]["reported"]["heater"]["temp"] = json!({"timestamp": 300});
    run(json!({
        "given": given,
        "steps": [
            {
                "op": "update", "section": "desired", "now": 500, "changedAt": 150, "localWins": true,
                "state": {"heater": {"temp": 75}},
                "expect": {
                    "delta": null,
                    "state": {
                        "reported": heater()["state"]["reported"],
                        "desired": {},
                        "superseded": {"heater": {"temp": 75}}
                    }
                }
            },
            {
                "op": "update", "section": "desired", "now": 600, "localWins": true,
                "state": {"heater": {"temp": 75}},
                "expect": {
                    "state": {"reported": heater()["state"]["reported"], "desired": {"heater": {"temp": 75}}},
                    "metadata": {
                        "reported": {
                            "heater": {
                                "temp": {"timestamp": 300},
                                "mode": {"timestamp": 100},
                                "schedule": {"timestamp": 100}
                            },
                            "fw": {"timestamp": 100}
                        },
                        "desired": {"heater": {"temp": {"timestamp": 600, "localWins": true}}}
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
