//! `codec::decode_request` on arbitrary bytes, as a device can publish them on
//! `devices/{id}/shadow/{reported,desired,get,delete}`.
//!
//! Checks: no panic, no stack overflow, no hang; and when a payload is accepted, the
//! decoded request survives a round trip through the gateway's own encoder in both
//! encodings, bare and enveloped (what the gateway stores and publishes reads back
//! as what the device sent; a request at the nesting limit only bare, since the
//! envelope adds a level).
#![no_main]

use iotsphere_gateway::codec::{self, Encoding, ShadowRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok((encoding, request)) = codec::decode_request(data) else {
        return;
    };
    // An encoding is reported exactly when the payload is not blank.
    assert_eq!(
        encoding.is_none(),
        data.iter().all(u8::is_ascii_whitespace),
        "encoding {encoding:?} for {data:?}"
    );
    if encoding.is_some() {
        assert_eq!(codec::detect(data).ok(), encoding);
    }

    let bare = Value::Object(request_object(&request));
    let enveloped = json!({"metadata": {"messageId": "fuzz"}, "payload": bare.clone()});
    // The envelope adds a level: a request at the nesting limit has no enveloped form.
    let forms = if nesting(&bare) < MAX_NESTING {
        vec![&bare, &enveloped]
    } else {
        vec![&bare]
    };
    for encoding in [Encoding::Json, Encoding::Cbor] {
        for &value in &forms {
            let bytes = codec::encode(encoding, value);
            match codec::decode_request(&bytes) {
                Ok((again_encoding, again)) => {
                    assert_eq!(again_encoding, Some(encoding), "{value}");
                    assert_eq!(again, request, "{encoding:?} round trip of {value}");
                }
                Err(e) => panic!("{encoding:?} re-encoding of an accepted request is refused: {e}; request {value}"),
            }
        }
        if let Some(state) = &request.state {
            let bytes = codec::encode(encoding, state);
            let (again_encoding, again) = codec::decode_value(&bytes).unwrap_or_else(|e| {
                panic!("{encoding:?} re-encoding of an accepted state is refused: {e}")
            });
            assert_eq!(again_encoding, encoding);
            assert_eq!(
                again,
                Value::Object(state.clone()),
                "{encoding:?} state round trip"
            );
        }
    }
});

/// The deepest nesting of objects and arrays a payload may have: serde_json's limit, which
/// the codec applies to CBOR too.
const MAX_NESTING: usize = 127;

/// Nesting of objects and arrays: `{}` is 1, `{"a": [1]}` is 2.
fn nesting(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// The bare request object that decodes to `request`.
fn request_object(request: &ShadowRequest) -> Map<String, Value> {
    let mut object = Map::new();
    if let Some(state) = &request.state {
        object.insert("state".into(), Value::Object(state.clone()));
    }
    if let Some(version) = request.version {
        object.insert("version".into(), Value::from(version));
    }
    if let Some(token) = &request.client_token {
        object.insert("clientToken".into(), Value::from(token.as_str()));
    }
    object
}
