//! Payload encoding: JSON or CBOR, detected per message (docs/DESIGN.md §5), and the envelope
//! every gateway publication carries.
//!
//! Decoding never trusts the device: anything that is not a well-formed object of the
//! expected shape becomes a [`DecodeError`] that the caller turns into a `rejected` reply.
//! The codec knows nothing of MQTT sessions, stores or MongoDB.

use serde::Serialize;
use serde_json::{Map, Value};

/// How a payload is encoded; the gateway answers a device in the encoding it last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Cbor,
}

/// Why a payload could not be decoded, with the shadow error code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Neither a JSON object nor a CBOR map (415).
    #[error("unsupported encoding: expected a JSON object or a CBOR map")]
    UnsupportedEncoding,
    /// Detected encoding, but the bytes are not valid in it (400).
    #[error("malformed {encoding:?}: {reason}")]
    Malformed { encoding: Encoding, reason: String },
    /// Valid encoding, wrong shape (400).
    #[error("bad request: {0}")]
    BadShape(String),
}

impl DecodeError {
    /// The shadow error code (docs/DESIGN.md §5) this failure is answered with.
    pub fn code(&self) -> u16 {
        match self {
            DecodeError::UnsupportedEncoding => 415,
            DecodeError::Malformed { .. } | DecodeError::BadShape(_) => 400,
        }
    }
}

/// A decoded shadow request: `{"state": {...}, "version": 7, "clientToken": "abc"}`, plus
/// the optional fields of the desired lifecycle (docs/DESIGN.md §11).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShadowRequest {
    /// Absent for `get` and `delete` requests.
    pub state: Option<Map<String, Value>>,
    pub version: Option<u64>,
    pub client_token: Option<String>,
    /// Desired: `"expiresIn": <seconds>`, after which the leaves it writes expire.
    pub expires_in: Option<u64>,
    /// Desired: `"localWins": true`, the leaves it writes yield to a newer local change.
    pub local_wins: bool,
    /// Reported: `"timestamp": <epoch seconds>`, when the device made the change by its
    /// clock. Anything else there (milliseconds, a date string) is ignored, as before this
    /// field had a meaning: the arrival time counts then.
    pub timestamp: Option<u64>,
    /// Refused: `"reason"` and `"code"`, both required there.
    pub reason: Option<String>,
    pub code: Option<i64>,
}

/// Detects the encoding of a payload from its first meaningful byte.
pub fn detect(payload: &[u8]) -> Result<Encoding, DecodeError> {
    let first_json = payload.iter().find(|b| !b.is_ascii_whitespace());
    match (payload.first(), first_json) {
        (_, Some(b'{')) => Ok(Encoding::Json),
        // CBOR major type 5 (map): 0b101x_xxxx.
        (Some(b), _) if b >> 5 == 5 => Ok(Encoding::Cbor),
        _ => Err(DecodeError::UnsupportedEncoding),
    }
}

/// Decodes any payload into a JSON value tree.
pub fn decode_value(payload: &[u8]) -> Result<(Encoding, Value), DecodeError> {
    let encoding = detect(payload)?;
    let malformed = |reason: String| DecodeError::Malformed { encoding, reason };
    let value = match encoding {
        Encoding::Json => {
            serde_json::from_slice::<Value>(payload).map_err(|e| malformed(e.to_string()))?
        }
        Encoding::Cbor => decode_cbor_value(payload)?,
    };
    check_keys(&value)?;
    Ok((encoding, value))
}

/// Refuses object keys MongoDB cannot store (a NUL byte: BSON keys are C strings). Left
/// in, one such reading would block the uplink's queue (found while writing the fuzzers).
pub fn check_keys(value: &Value) -> Result<(), DecodeError> {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(object) => {
                if object.keys().any(|k| k.contains('\0')) {
                    return Err(DecodeError::BadShape("keys must not contain NUL".into()));
                }
                pending.extend(object.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// ciborium's recursion limit that accepts exactly the nesting serde_json accepts (127
/// containers; serde_json's limit of 128 counts differently). Found by fuzzing.
const JSON_RECURSION_LIMIT: usize = 127;

/// Decodes one CBOR value (of any type) into a JSON value tree.
pub fn decode_cbor_value(payload: &[u8]) -> Result<Value, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        encoding: Encoding::Cbor,
        reason,
    };
    let mut reader = payload;
    // The same nesting bound as serde_json's, so both encodings accept the same requests.
    let cbor: ciborium::Value =
        ciborium::de::from_reader_with_recursion_limit(&mut reader, JSON_RECURSION_LIMIT)
            .map_err(|e| malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(malformed(format!("{} trailing bytes", reader.len())));
    }
    cbor_to_json(cbor).map_err(malformed)
}

/// Decodes a shadow request; an empty payload is an empty request (for `get`/`delete`).
pub fn decode_request(payload: &[u8]) -> Result<(Option<Encoding>, ShadowRequest), DecodeError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, ShadowRequest::default()));
    }
    let (encoding, value) = decode_value(payload)?;
    let object = unwrap_envelope(value)?;
    Ok((Some(encoding), request_from_object(object)?))
}

/// Accepts the seed's envelope `{"metadata": {...}, "payload": {...}}` as well as the bare form.
fn unwrap_envelope(value: Value) -> Result<Map<String, Value>, DecodeError> {
    let Value::Object(mut object) = value else {
        return Err(DecodeError::BadShape("payload must be an object".into()));
    };
    let is_envelope = object.contains_key("payload")
        && !object.contains_key("state")
        && object.get("metadata").is_none_or(Value::is_object);
    if !is_envelope {
        return Ok(object);
    }
    match object.remove("payload") {
        Some(Value::Object(inner)) => Ok(inner),
        _ => Err(DecodeError::BadShape(
            "envelope payload must be an object".into(),
        )),
    }
}

fn request_from_object(mut object: Map<String, Value>) -> Result<ShadowRequest, DecodeError> {
    let state = match object.remove("state") {
        None => None,
        Some(Value::Object(state)) => Some(state),
        Some(other) => {
            return Err(DecodeError::BadShape(format!(
                "state must be an object, got {}",
                type_name(&other)
            )))
        }
    };
    let version = field(
        &mut object,
        "version",
        "a non-negative integer",
        Value::as_u64,
    )?;
    let client_token = field(&mut object, "clientToken", "a string", |v| {
        v.as_str().map(str::to_owned)
    })?;
    let expires_in = field(
        &mut object,
        "expiresIn",
        "a non-negative integer of seconds",
        Value::as_u64,
    )?;
    let local_wins = field(&mut object, "localWins", "a boolean", Value::as_bool)?;
    let reason = field(&mut object, "reason", "a string", |v| {
        v.as_str().map(str::to_owned)
    })?;
    let code = field(&mut object, "code", "an integer", Value::as_i64)?;
    Ok(ShadowRequest {
        state,
        version,
        client_token,
        expires_in,
        local_wins: local_wins.unwrap_or(false),
        timestamp: object.get("timestamp").and_then(Value::as_u64),
        reason,
        code,
    })
}

/// Takes an optional field of a request: absent or `null` is `None`; anything `extract`
/// does not accept is refused, naming what the field must be and what it got.
fn field<T>(
    object: &mut Map<String, Value>,
    key: &str,
    must_be: &str,
    extract: impl FnOnce(&Value) -> Option<T>,
) -> Result<Option<T>, DecodeError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match extract(&value) {
            Some(taken) => Ok(Some(taken)),
            None => {
                let got = match &value {
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    other => type_name(other).to_owned(),
                };
                Err(DecodeError::BadShape(format!(
                    "{key} must be {must_be}, got {got}"
                )))
            }
        },
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// CBOR → JSON: text keys only; byte strings, undefined and non-finite floats have no JSON form.
fn cbor_to_json(value: ciborium::Value) -> Result<Value, String> {
    use ciborium::Value as C;
    Ok(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Text(s) => Value::String(s),
        C::Integer(i) => {
            let i = i128::from(i);
            if let Ok(u) = u64::try_from(i) {
                Value::from(u)
            } else if let Ok(s) = i64::try_from(i) {
                Value::from(s)
            } else {
                return Err(format!("integer {i} is out of range"));
            }
        }
        C::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("float {f} has no JSON form"))?,
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(cbor_to_json)
                .collect::<Result<_, _>>()?,
        ),
        C::Map(entries) => {
            let mut object = Map::with_capacity(entries.len());
            for (key, value) in entries {
                let C::Text(key) = key else {
                    return Err("map keys must be text strings".into());
                };
                object.insert(key, cbor_to_json(value)?);
            }
            Value::Object(object)
        }
        C::Tag(_, inner) => cbor_to_json(*inner)?,
        C::Bytes(_) => return Err("byte strings are not supported".into()),
        _ => return Err("unsupported CBOR value".into()),
    })
}

/// Serializes a value in the given encoding.
pub fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Vec<u8> {
    match encoding {
        // Serializing our own in-memory values cannot fail: maps have string keys.
        Encoding::Json => serde_json::to_vec(value).unwrap_or_default(),
        Encoding::Cbor => {
            let mut out = Vec::new();
            // Writing into a Vec cannot fail.
            let _ = ciborium::into_writer(value, &mut out);
            out
        }
    }
}

/// `metadata` of the envelope every gateway publication carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvelopeMetadata<'a> {
    pub message_id: String,
    pub timestamp: String,
    pub topic: &'a str,
    pub source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
    pub message_type: &'a str,
    pub version: &'static str,
}

/// `{"metadata": {...}, "payload": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a, P: Serialize> {
    pub metadata: EnvelopeMetadata<'a>,
    pub payload: P,
}

/// Current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-24T10:00:00.123Z`.
pub fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cbor(value: &Value) -> Vec<u8> {
        encode(Encoding::Cbor, value)
    }

    #[test]
    fn detects_json_and_cbor() {
        assert_eq!(detect(b"{}"), Ok(Encoding::Json));
        assert_eq!(detect(b"  \n{\"a\":1}"), Ok(Encoding::Json));
        assert_eq!(detect(&cbor(&json!({"a": 1}))), Ok(Encoding::Cbor));
        for bad in [&b"[1]"[..], b"42", b"\"s\"", b"", b"\x81\x01", b"null"] {
            assert_eq!(
                detect(bad),
                Err(DecodeError::UnsupportedEncoding),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decodes_the_lifecycle_fields_and_ignores_a_timestamp_that_is_not_seconds() {
        let request = |value: Value| decode_request(&encode(Encoding::Json, &value)).map(|r| r.1);
        let desired = request(json!({"state": {}, "expiresIn": 600, "localWins": true}));
        let desired = desired.expect("valid");
        assert_eq!((desired.expires_in, desired.local_wins), (Some(600), true));
        let refusal = request(json!({"state": {}, "reason": "too hot", "code": -2}));
        let refusal = refusal.expect("valid");
        assert_eq!(refusal.reason.as_deref(), Some("too hot"));
        assert_eq!(refusal.code, Some(-2));
        let reported = request(json!({"state": {}, "timestamp": 1_764_000_000}));
        assert_eq!(reported.expect("valid").timestamp, Some(1_764_000_000));
        for legacy in [json!("2026-11-24T10:00:00Z"), json!(-1), json!(1.5)] {
            let reported = request(json!({"state": {}, "timestamp": legacy}));
            assert_eq!(reported.expect("valid").timestamp, None, "{legacy}");
        }
        for bad in [
            json!({"state": {}, "expiresIn": -1}),
            json!({"state": {}, "expiresIn": "1h"}),
            json!({"state": {}, "localWins": "yes"}),
            json!({"state": {}, "reason": 5}),
            json!({"state": {}, "code": 1.5}),
        ] {
            assert!(
                matches!(request(bad.clone()), Err(DecodeError::BadShape(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn decodes_the_bare_and_the_enveloped_request_alike() {
        let bare = json!({"state": {"temperature": 54.5}, "version": 7, "clientToken": "abc"});
        let wrapped = json!({"metadata": {"messageId": "m1"}, "payload": bare.clone()});
        let expected = ShadowRequest {
            state: Some(
                json!({"temperature": 54.5})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            version: Some(7),
            client_token: Some("abc".into()),
            ..ShadowRequest::default()
        };
        for value in [&bare, &wrapped] {
            let json_bytes = encode(Encoding::Json, value);
            assert_eq!(
                decode_request(&json_bytes),
                Ok((Some(Encoding::Json), expected.clone()))
            );
            assert_eq!(
                decode_request(&cbor(value)),
                Ok((Some(Encoding::Cbor), expected.clone()))
            );
        }
    }

    #[test]
    fn an_empty_payload_is_an_empty_request() {
        assert_eq!(decode_request(b""), Ok((None, ShadowRequest::default())));
        assert_eq!(decode_request(b" \n"), Ok((None, ShadowRequest::default())));
    }

    #[test]
    fn bad_shapes_are_400_and_foreign_encodings_415() {
        let cases: [(&[u8], u16); 10] = [
            (b"{\"state\": 5}", 400),
            (b"{\"state\": {}, \"version\": -1}", 400),
            (b"{\"state\": {}, \"version\": 1.5}", 400),
            (b"{\"state\": {}, \"clientToken\": 5}", 400),
            (b"{\"state\": {", 400),
            (b"{\"payload\": 5}", 400),
            (b"<xml/>", 415),
            (b"[]", 415),
            (b"\xa1\x01\x02", 400),      // CBOR map with an integer key
            (b"\xa1\x61a\x41\x00", 400), // CBOR byte string value
        ];
        for (payload, code) in cases {
            let err = decode_request(payload).expect_err("must be refused");
            assert_eq!(err.code(), code, "{payload:?}: {err}");
        }
    }

    #[test]
    fn cbor_trailing_bytes_and_truncation_are_malformed() {
        let mut bytes = cbor(&json!({"state": {"a": 1}}));
        bytes.push(0);
        assert_eq!(decode_request(&bytes).map_err(|e| e.code()), Err(400));
        let bytes = cbor(&json!({"state": {"a": 1}}));
        assert_eq!(
            decode_request(&bytes[..bytes.len() - 1]).map_err(|e| e.code()),
            Err(400)
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "{\"a\":".repeat(100_000);
        assert_eq!(
            decode_request(deep.as_bytes()).map_err(|e| e.code()),
            Err(400)
        );
        let mut deep_cbor = [0xa1, 0x61, b'a'].repeat(100_000);
        deep_cbor.push(0x01);
        assert_eq!(decode_request(&deep_cbor).map_err(|e| e.code()), Err(400));
    }

    #[test]
    fn both_encodings_accept_the_same_nesting_and_floats() {
        // Found by fuzzing (fuzz/artifacts-found/codec_request).
        let mut deep = json!(1);
        for depth in 1..=130 {
            deep = json!({ "a": deep });
            let as_json = decode_value(&encode(Encoding::Json, &deep)).is_ok();
            let as_cbor = decode_value(&cbor(&deep)).is_ok();
            assert_eq!(as_json, as_cbor, "{depth} levels");
        }
        for float in [1.0440133473554483e21_f64, 1.88501188223486e-309] {
            let value = json!({ "state": { "t": float } });
            let (_, from_json) = decode_request(&encode(Encoding::Json, &value)).expect("json");
            let (_, from_cbor) = decode_request(&cbor(&value)).expect("cbor");
            assert_eq!(from_json, from_cbor, "{float:e}");
        }
    }

    #[test]
    fn keys_with_nul_are_refused() {
        let bad = br#"{"state": {"a\u0000b": 1}}"#;
        assert_eq!(decode_request(bad).map_err(|e| e.code()), Err(400));
        assert!(decode_request(br#"{"state": {"a": [{"b\u0000": 1}]}}"#).is_err());
    }

    #[test]
    fn cbor_round_trips_through_json_values() {
        let value = json!({"t": 54.5, "n": -3, "big": u64::MAX, "s": "x", "b": true, "z": null, "a": [1, {"k": "v"}]});
        let (encoding, back) = decode_value(&cbor(&value)).expect("decodes");
        assert_eq!(encoding, Encoding::Cbor);
        assert_eq!(back, value);
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let ts = rfc3339_now();
        assert_eq!(ts.len(), "2026-11-24T10:00:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
