//! `Topics::parse` on arbitrary topics, and `Topics::shadow` → `parse` round trips.
//!
//! Checks: no panic; whatever parses formats back to the very same topic (so the
//! gateway answers on the topic family the request came from); a shadow topic built
//! from any string parses back to that device and kind exactly when the string is a
//! valid device id, and is refused as a bad device id otherwise.
#![no_main]

use iotsphere_gateway::topics::{is_valid_id, Route, ShadowTopic, TopicError, Topics};
use libfuzzer_sys::fuzz_target;

// Input: one flags byte (bit 0: the root `site/7`, a root of several levels, instead of
// `iotsphere`; bits 1-7: the shadow kind), then the topic, which is also the device id
// candidate for the round trip when it holds no `/`. Seeds stay readable this way.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return; // MQTT topics are UTF-8: the broker refuses anything else.
    };
    let root = if flags & 1 == 1 {
        "site/7"
    } else {
        "iotsphere"
    };
    let topics = Topics::new(root).expect("a valid root");

    // 1. Arbitrary topic: no panic, and a route formats back to the same topic.
    if let Ok(route) = topics.parse(text) {
        assert_eq!(format(&topics, &route), text, "{route:?}");
    }

    // 2. The shadow topic of an arbitrary device id candidate.
    if text.contains('/') {
        return; // another topic shape altogether; covered by 1.
    }
    let kind = ShadowTopic::ALL[usize::from(flags >> 1) % ShadowTopic::ALL.len()];
    let topic = topics.shadow(text, kind);
    let parsed = topics.parse(&topic);
    if is_valid_id(text) {
        assert_eq!(
            parsed,
            Ok(Route::Shadow {
                device_id: text,
                kind
            }),
            "{topic}"
        );
    } else {
        assert_eq!(
            parsed,
            Err(TopicError::BadDeviceId(text.to_string())),
            "{topic}"
        );
    }
});

/// The topic a route stands for, as the gateway formats it (DESIGN.md §5).
fn format(topics: &Topics, route: &Route<'_>) -> String {
    let root = topics.root();
    match *route {
        Route::Shadow { device_id, kind } => topics.shadow(device_id, kind),
        Route::Telemetry { device_id, kind } => {
            format!("{root}/devices/{device_id}/telemetry/{kind}")
        }
        Route::CommandRequest { device_id } => {
            format!("{root}/devices/{device_id}/commands/request")
        }
        Route::CommandResponse { device_id } => {
            format!("{root}/devices/{device_id}/commands/response")
        }
        Route::UserPreferences { user_id } => topics.user(user_id, "preferences"),
    }
}
