//! Telemetry readings (docs/DESIGN.md §10): decoding what a heater publishes on
//! `devices/{id}/telemetry/{kind}`, without trusting it.
//!
//! Accepted payloads, JSON or CBOR: a bare number; `{"value": <number|string|object>,
//! "ts": <epoch ms | RFC 3339>?, "seq": <integer>?, "unit": <string>?}`; or the envelope
//! `{"metadata": {"messageId": …}, "payload": <either>}`. A `messageId` from the envelope
//! becomes the stored `_id`, so a device's retransmission cannot be stored twice.

use serde_json::{Map, Value};

use crate::codec::DecodeError;

/// One decoded reading.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub value: Value,
    /// Device time in epoch milliseconds; the receive time is used when absent.
    pub ts_ms: Option<i64>,
    pub seq: Option<i64>,
    pub unit: Option<String>,
    /// The device's own message id (envelope `metadata.messageId`), if it sent one.
    pub message_id: Option<String>,
}

/// Decodes a telemetry payload.
pub fn decode(payload: &[u8]) -> Result<Reading, DecodeError> {
    let value = decode_any(payload)?;
    crate::codec::check_keys(&value)?;
    let (message_id, body) = match value {
        Value::Object(mut object) if object.contains_key("payload") => {
            let message_id = object
                .get("metadata")
                .and_then(|m| m.get("messageId"))
                .and_then(Value::as_str)
                .map(str::to_string);
            (message_id, object.remove("payload").unwrap_or(Value::Null))
        }
        other => (None, other),
    };
    let mut reading = match body {
        Value::Number(_) => Reading {
            value: body,
            ts_ms: None,
            seq: None,
            unit: None,
            message_id: None,
        },
        Value::Object(object) => from_object(object)?,
        other => {
            return Err(DecodeError::BadShape(format!(
                "telemetry must be a number or an object with \"value\", got {other}"
            )))
        }
    };
    reading.message_id = message_id;
    Ok(reading)
}

/// Any JSON value (a bare number included) or any CBOR value. Bytes that look like JSON
/// but do not parse are tried as CBOR (a CBOR integer can be an ASCII digit or `-`).
fn decode_any(payload: &[u8]) -> Result<Value, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::BadShape("empty telemetry payload".into()));
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'-' | b'0'..=b'9')) {
        return crate::codec::decode_cbor_value(payload);
    }
    serde_json::from_slice(payload).or_else(|json_error| {
        crate::codec::decode_cbor_value(payload).map_err(|_| DecodeError::Malformed {
            encoding: crate::codec::Encoding::Json,
            reason: json_error.to_string(),
        })
    })
}

fn from_object(mut object: Map<String, Value>) -> Result<Reading, DecodeError> {
    let bad = |what: &str| DecodeError::BadShape(format!("telemetry {what}"));
    let value = match object.remove("value") {
        Some(v @ (Value::Number(_) | Value::String(_) | Value::Object(_))) => v,
        Some(_) => return Err(bad("value must be a number, a string or an object")),
        None => return Err(bad("object needs a \"value\"")),
    };
    let ts_ms = match object.remove("ts") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| bad("ts must be epoch ms"))?),
        Some(Value::String(s)) => {
            Some(parse_rfc3339_ms(&s).ok_or_else(|| bad("ts is not RFC 3339"))?)
        }
        Some(_) => return Err(bad("ts must be epoch ms or an RFC 3339 string")),
    };
    let seq = match object.remove("seq") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| bad("seq must be an integer"))?),
        Some(_) => return Err(bad("seq must be an integer")),
    };
    let unit = match object.remove("unit") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("unit must be a string")),
    };
    Ok(Reading {
        value,
        ts_ms,
        seq,
        unit,
        message_id: None,
    })
}

fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading(value: Value) -> Reading {
        Reading {
            value,
            ts_ms: None,
            seq: None,
            unit: None,
            message_id: None,
        }
    }

    #[test]
    fn accepted_forms() {
        let full = Reading {
            ts_ms: Some(1_764_000_000_123),
            seq: Some(7),
            unit: Some("C".into()),
            ..reading(json!(54.5))
        };
        let cases: Vec<(Vec<u8>, Reading)> = vec![
            (b"54.5".to_vec(), reading(json!(54.5))),
            (b" -3".to_vec(), reading(json!(-3))),
            (
                br#"{"value": 54.5, "ts": 1764000000123, "seq": 7, "unit": "C"}"#.to_vec(),
                full.clone(),
            ),
            (
                br#"{"value": 54.5, "ts": "2025-11-24T16:00:00.123Z", "seq": 7, "unit": "C"}"#
                    .to_vec(),
                full.clone(),
            ),
            (
                br#"{"value": "fault-E3"}"#.to_vec(),
                reading(json!("fault-E3")),
            ),
            (
                br#"{"value": {"code": 3}}"#.to_vec(),
                reading(json!({"code": 3})),
            ),
            (
                br#"{"metadata": {"messageId": "m-1"}, "payload": 60}"#.to_vec(),
                Reading {
                    message_id: Some("m-1".into()),
                    ..reading(json!(60))
                },
            ),
            (
                crate::codec::encode(
                    crate::codec::Encoding::Cbor,
                    &json!({"value": 54.5, "ts": 1764000000123_i64, "seq": 7, "unit": "C"}),
                ),
                full,
            ),
            (
                crate::codec::encode(crate::codec::Encoding::Cbor, &json!(12)),
                reading(json!(12)),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                decode(&payload),
                Ok(expected),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
    }

    #[test]
    fn refused_forms_say_why() {
        for payload in [
            &b""[..],
            b"\"hot\"",
            b"[1]",
            b"{\"temp\": 5}",
            b"{\"value\": [1]}",
            b"{\"value\": 1, \"ts\": \"yesterday\"}",
            b"{\"value\": 1, \"seq\": 1.5}",
            b"{\"value\": 1, \"unit\": 5}",
            b"{\"value\": ",
            b"true",
        ] {
            let err = decode(payload).expect_err("refused");
            assert_eq!(
                err.code(),
                400,
                "{}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
