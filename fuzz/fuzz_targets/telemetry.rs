//! `telemetry::decode` on arbitrary bytes, as a device can publish them on
//! `devices/{id}/telemetry/{kind}`.
//!
//! Checks: no panic, no stack overflow, no hang; an accepted reading has the shape the
//! uplink stores (a number, a string or an object as its value) and serializes.
#![no_main]

use iotsphere_gateway::telemetry;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(reading) = telemetry::decode(data) else {
        return;
    };
    assert!(
        matches!(
            reading.value,
            Value::Number(_) | Value::String(_) | Value::Object(_)
        ),
        "accepted value {}",
        reading.value
    );
    if let Err(e) = serde_json::to_vec(&reading.value) {
        panic!("an accepted reading does not serialize: {e}");
    }
});
