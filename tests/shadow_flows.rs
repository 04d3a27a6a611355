//! End to end: real MQTT clients against the gateway binary, one row of DESIGN.md §5 or one
//! rejection code per test.

mod common;

use std::time::Duration;

use common::{cbor, json, shadow_topic, Client, Gateway};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(400);

/// A heater and an app on the same broker, both watching the heater's shadow topics.
async fn heater_and_app(gateway: &Gateway, id: &str) -> (Client, Client) {
    let mut heater = Client::connect(gateway.port, id).await;
    heater.subscribe(&shadow_topic(id, "+")).await;
    let app = Client::connect(gateway.port, &format!("app-{id}")).await;
    (heater, app)
}

#[tokio::test]
async fn reported_then_desired_gives_the_heater_its_delta() {
    let gateway = Gateway::start();
    let (mut heater, app) = heater_and_app(&gateway, "heater-1").await;

    heater
        .publish(
            &shadow_topic("heater-1", "reported"),
            json(&json!({"state": {"temperature": 48.5, "targetTemp": 55}, "clientToken": "r1"})),
        )
        .await;
    let document = heater.expect("/shadow/document").await.envelope();
    assert_eq!(document["payload"]["version"], 1);
    assert_eq!(document["payload"]["state"]["reported"]["targetTemp"], 55);
    assert_eq!(document["payload"]["clientToken"], "r1");
    assert_eq!(document["metadata"]["correlationId"], "r1");
    assert_eq!(document["metadata"]["messageType"], "shadow.document");
    assert_eq!(document["metadata"]["source"], "gw-test");
    assert_eq!(document["metadata"]["version"], "1.0");
    assert!(document["metadata"]["messageId"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    app.publish(
        &shadow_topic("heater-1", "desired"),
        json(&json!({"state": {"targetTemp": 60}})),
    )
    .await;
    heater.expect("/shadow/document").await;
    let delta = heater.expect("/shadow/delta").await;
    let payload = delta.payload_json();
    assert_eq!(payload["state"], json!({"targetTemp": 60}));
    assert_eq!(payload["version"], 2);
    assert!(payload["metadata"]["targetTemp"]["timestamp"]
        .as_u64()
        .is_some());
    assert_eq!(delta.envelope()["metadata"]["messageType"], "shadow.delta");

    // The heater reaches the setpoint: the delta is cleared with an empty retained message.
    heater
        .publish(
            &shadow_topic("heater-1", "reported"),
            json(&json!({"state": {"targetTemp": 60}})),
        )
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["version"], 3);
    let cleared = heater.expect("/shadow/delta").await;
    assert!(
        cleared.payload.is_empty(),
        "an empty delta clears the retained one"
    );
}

#[tokio::test]
async fn get_answers_the_whole_document_and_404_when_there_is_none() {
    let gateway = Gateway::start();
    let (mut heater, _app) = heater_and_app(&gateway, "h-get").await;
    heater
        .publish(
            &shadow_topic("h-get", "get"),
            json(&json!({"clientToken": "g0"})),
        )
        .await;
    let rejected = heater.expect("/shadow/rejected").await.payload_json();
    assert_eq!(rejected["code"], 404);
    assert_eq!(rejected["clientToken"], "g0");

    heater
        .publish(
            &shadow_topic("h-get", "reported"),
            json(&json!({"state": {"on": true}})),
        )
        .await;
    heater.expect("/shadow/document").await;
    // An empty payload is a valid get.
    heater
        .publish(&shadow_topic("h-get", "get"), Vec::new())
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["state"]["reported"]["on"], true);
    assert_eq!(document["version"], 1);
}

#[tokio::test]
async fn delete_removes_the_shadow_and_its_pending_delta() {
    let gateway = Gateway::start();
    let (mut heater, app) = heater_and_app(&gateway, "h-del").await;
    app.publish(
        &shadow_topic("h-del", "desired"),
        json(&json!({"state": {"t": 1}})),
    )
    .await;
    heater.expect("/shadow/delta").await;
    heater
        .publish(
            &shadow_topic("h-del", "delete"),
            json(&json!({"version": 9})),
        )
        .await;
    assert_eq!(
        heater.expect("/shadow/rejected").await.payload_json()["code"],
        409
    );
    heater
        .publish(&shadow_topic("h-del", "delete"), Vec::new())
        .await;
    let deleted = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(deleted, json!({"deleted": true, "version": 1}));
    assert!(heater.expect("/shadow/delta").await.payload.is_empty());
    heater
        .publish(&shadow_topic("h-del", "get"), Vec::new())
        .await;
    assert_eq!(
        heater.expect("/shadow/rejected").await.payload_json()["code"],
        404
    );
    heater
        .publish(&shadow_topic("h-del", "delete"), Vec::new())
        .await;
    assert_eq!(
        heater.expect("/shadow/rejected").await.payload_json()["code"],
        404
    );
}

#[tokio::test]
async fn every_refused_request_gets_its_code() {
    let gateway = Gateway::start_with("[shadow]\nmax_document_bytes = 256\nmax_depth = 3\n");
    let (mut heater, _app) = heater_and_app(&gateway, "h-bad").await;
    let reported = shadow_topic("h-bad", "reported");
    heater
        .publish(&reported, json(&json!({"state": {"a": 1}})))
        .await;
    heater.expect("/shadow/document").await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"state\": {".to_vec(), 400),
        ("malformed CBOR", vec![0xa1, 0x65, b's'], 400),
        ("state not an object", json(&json!({"state": [1, 2]})), 400),
        ("missing state", json(&json!({"version": 1})), 400),
        (
            "negative version",
            json(&json!({"state": {}, "version": -3})),
            400,
        ),
        (
            "client token too long",
            json(&json!({"state": {"a": 2}, "clientToken": "x".repeat(65)})),
            400,
        ),
        (
            "too deep",
            json(&json!({"state": {"a": {"b": {"c": {"d": 1}}}}})),
            400,
        ),
        ("empty key", json(&json!({"state": {"": 1}})), 400),
        (
            "stale version",
            json(&json!({"state": {"a": 3}, "version": 7, "clientToken": "v"})),
            409,
        ),
        (
            "document too large",
            json(&json!({"state": {"big": "x".repeat(400)}})),
            413,
        ),
        ("not JSON nor CBOR", b"temperature=50".to_vec(), 415),
        ("a JSON array", b"[1]".to_vec(), 415),
    ];
    for (name, payload, code) in cases {
        heater.publish(&reported, payload).await;
        let rejected = heater.expect("/shadow/rejected").await;
        let body = rejected.payload_json();
        assert_eq!(body["code"], code, "{name}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(
            rejected.envelope()["metadata"]["messageType"],
            "shadow.rejected"
        );
    }
    // The 409 echoes the token, and nothing was changed by any of the refused requests.
    heater
        .publish(&shadow_topic("h-bad", "get"), Vec::new())
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["state"]["reported"], json!({"a": 1}));
    assert_eq!(document["version"], 1);
}

#[tokio::test]
async fn bad_input_from_one_device_does_not_disturb_another() {
    let gateway = Gateway::start();
    let (mut good, _) = heater_and_app(&gateway, "good").await;
    let bad = Client::connect(gateway.port, "bad").await;
    for payload in [&b"\xff\xfe"[..], b"{", b"[]", b"\xa1\x01\x02", b""] {
        bad.publish(&shadow_topic("bad", "reported"), payload).await;
    }
    // Topics of the wrong shape are not answered at all and break nothing.
    for topic in [
        "iotsphere/devices/bad/shadow/update",
        "iotsphere/devices/a.b/shadow/reported",
        "iotsphere/devices/bad/shadow/reported/extra",
        "iotsphere/devices",
    ] {
        bad.publish(topic, json(&json!({"state": {"x": 1}}))).await;
    }
    good.publish(
        &shadow_topic("good", "reported"),
        json(&json!({"state": {"ok": 1}})),
    )
    .await;
    let document = good.expect("/shadow/document").await.payload_json();
    assert_eq!(document["state"]["reported"]["ok"], 1);
}

#[tokio::test]
async fn cbor_devices_are_answered_in_cbor() {
    let gateway = Gateway::start();
    let (mut heater, app) = heater_and_app(&gateway, "h-cbor").await;
    heater
        .publish(
            &shadow_topic("h-cbor", "reported"),
            cbor(&json!({"state": {"temperature": 51.25, "mode": "eco", "on": true}, "clientToken": "c1"})),
        )
        .await;
    let document = heater.expect("/shadow/document").await;
    assert!(document.is_cbor(), "the answer to a CBOR device is CBOR");
    let payload = document.payload_json();
    assert_eq!(payload["state"]["reported"]["temperature"], 51.25);
    assert_eq!(payload["state"]["reported"]["mode"], "eco");
    assert_eq!(payload["clientToken"], "c1");

    // The app speaks JSON, but the delta goes to the heater in the heater's encoding
    // only if the heater spoke last; the rule is "the last encoding used on the device's
    // topics" (README). Here the enveloped CBOR desired keeps the device in CBOR.
    app.publish(
        &shadow_topic("h-cbor", "desired"),
        cbor(&json!({"metadata": {"messageId": "m"}, "payload": {"state": {"temperature": 55}}})),
    )
    .await;
    let delta = heater.expect("/shadow/delta").await;
    assert!(delta.is_cbor());
    assert_eq!(delta.payload_json()["state"], json!({"temperature": 55}));

    // A malformed request is rejected in the device's encoding.
    heater
        .publish(&shadow_topic("h-cbor", "reported"), b"nonsense".to_vec())
        .await;
    let rejected = heater.expect("/shadow/rejected").await;
    assert!(rejected.is_cbor());
    assert_eq!(rejected.payload_json()["code"], 415);
}

#[tokio::test]
async fn a_heater_that_was_offline_gets_the_pending_delta_when_it_subscribes() {
    let gateway = Gateway::start();
    let app = Client::connect(gateway.port, "app").await;
    let heater = Client::connect(gateway.port, "h-off").await;
    heater
        .publish(
            &shadow_topic("h-off", "reported"),
            json(&json!({"state": {"targetTemp": 50}})),
        )
        .await;
    heater.disconnect().await;

    // While the heater is away the setpoint changes twice.
    app.publish(
        &shadow_topic("h-off", "desired"),
        json(&json!({"state": {"targetTemp": 58}})),
    )
    .await;
    app.publish(
        &shadow_topic("h-off", "desired"),
        json(&json!({"state": {"targetTemp": 62}})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut heater = Client::connect(gateway.port, "h-off").await;
    heater.subscribe(&shadow_topic("h-off", "delta")).await;
    let delta = heater.expect("/shadow/delta").await;
    assert!(delta.retain, "the pending delta is the retained one");
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 62}));
    heater.expect_none("/shadow/delta", QUIET).await;
}

#[tokio::test]
async fn unchanged_reports_do_not_bump_the_version() {
    let gateway = Gateway::start();
    let (mut heater, _) = heater_and_app(&gateway, "h-same").await;
    for _ in 0..3 {
        heater
            .publish(
                &shadow_topic("h-same", "reported"),
                json(&json!({"state": {"t": 50}})),
            )
            .await;
        let document = heater.expect("/shadow/document").await.payload_json();
        assert_eq!(document["version"], 1);
    }
}

#[tokio::test]
async fn a_flooding_device_gets_429_and_others_are_served() {
    let gateway = Gateway::start_with("[shadow]\nrate_per_sec = 1\nrate_burst = 5\n");
    let (mut heater, _) = heater_and_app(&gateway, "h-flood").await;
    for i in 0..12 {
        heater
            .publish(
                &shadow_topic("h-flood", "reported"),
                json(&json!({"state": {"n": i}})),
            )
            .await;
    }
    let mut codes = Vec::new();
    while let Some(message) = heater.next_within(QUIET).await {
        if message.topic.ends_with("/rejected") {
            codes.push(message.payload_json()["code"].as_u64().unwrap_or(0));
        }
    }
    assert!(
        codes.len() >= 6,
        "at least 12 - burst(5) - refill rejected: {codes:?}"
    );
    assert!(codes.iter().all(|c| *c == 429), "{codes:?}");

    let (mut other, _) = heater_and_app(&gateway, "h-calm").await;
    other
        .publish(
            &shadow_topic("h-calm", "reported"),
            json(&json!({"state": {"n": 1}})),
        )
        .await;
    other.expect("/shadow/document").await;
}

#[tokio::test]
async fn an_oversized_publish_disconnects_its_sender_only() {
    let gateway = Gateway::start();
    let (mut good, _) = heater_and_app(&gateway, "h-ok").await;
    let mut big = Client::connect(gateway.port, "h-big").await;
    let payload = vec![b' '; 70_000]; // over the default max_payload_bytes (65536)
    big.publish(&shadow_topic("h-big", "reported"), payload)
        .await;
    big.expect_disconnected().await;
    good.publish(
        &shadow_topic("h-ok", "reported"),
        json(&json!({"state": {"a": 1}})),
    )
    .await;
    good.expect("/shadow/document").await;
}
