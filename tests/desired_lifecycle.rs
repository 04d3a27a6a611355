//! End to end: the desired lifecycle (issue 24) with real MQTT 3.1.1 clients against the
//! gateway binary — a heater refusing a setpoint, a setpoint expiring while the heater is
//! offline (across a gateway restart), and a change made at the heater's panel winning
//! over an older app setpoint but losing to a newer one. The MongoDB side is in
//! tests/uplink.rs.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{json, shadow_topic, Client, Gateway};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(400);

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A heater watching its shadow topics that has reported `targetTemp` 50, and an app
/// watching the heater's documents.
async fn heater_and_app(gateway: &Gateway, id: &str, report: Value) -> (Client, Client) {
    let mut heater = Client::connect(gateway.port, id).await;
    heater.subscribe(&shadow_topic(id, "+")).await;
    heater
        .publish(&shadow_topic(id, "reported"), json(&report))
        .await;
    heater.expect("/shadow/document").await;
    let mut app = Client::connect(gateway.port, &format!("app-{id}")).await;
    app.subscribe(&shadow_topic(id, "document")).await;
    (heater, app)
}

/// The app publishes a desired request for `id`; the document it sees next.
async fn set_desired(app: &mut Client, id: &str, request: Value) -> Value {
    app.publish(&shadow_topic(id, "desired"), json(&request))
        .await;
    document(app).await
}

/// The heater publishes a report; the document the app sees next.
async fn report(heater: &Client, app: &mut Client, id: &str, request: Value) -> Value {
    heater
        .publish(&shadow_topic(id, "reported"), json(&request))
        .await;
    document(app).await
}

/// The next document the client sees, as its payload.
async fn document(client: &mut Client) -> Value {
    client.expect("/shadow/document").await.payload_json()
}

#[tokio::test]
async fn a_refused_setpoint_leaves_the_delta_and_the_app_sees_why() {
    let gateway = Gateway::start();
    let id = "h-refuse";
    let report = json!({"state": {"targetTemp": 50, "mode": "eco"}});
    let (mut heater, mut app) = heater_and_app(&gateway, id, report).await;

    set_desired(
        &mut app,
        id,
        json!({"state": {"targetTemp": 75, "mode": "boost"}}),
    )
    .await;
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"targetTemp": 75, "mode": "boost"}));

    heater
        .publish(
            &shadow_topic(id, "refused"),
            json(&json!({
                "state": {"targetTemp": 75},
                "reason": "above the 70 °C limit of this model",
                "code": 1001,
                "clientToken": "refusal-1"
            })),
        )
        .await;
    let seen = document(&mut app).await;
    assert_eq!(seen["state"]["refused"], json!({"targetTemp": 75}));
    assert_eq!(seen["state"]["desired"], json!({"mode": "boost"}));
    let why = &seen["metadata"]["refused"]["targetTemp"];
    assert_eq!(why["reason"], "above the 70 °C limit of this model");
    assert_eq!(why["code"], 1001);
    assert!(why["timestamp"].as_u64().is_some(), "{why}");
    assert_eq!(seen["clientToken"], "refusal-1");
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"mode": "boost"}));

    // A heater that connects now gets the retained delta without the refused value.
    let mut late = Client::connect(gateway.port, "h-refuse-late").await;
    late.subscribe(&shadow_topic(id, "delta")).await;
    let retained = late.expect("/shadow/delta").await;
    assert!(retained.retain);
    assert_eq!(retained.payload_json()["state"], json!({"mode": "boost"}));

    // A new setpoint on the same leaf clears the refusal and is pending again.
    let seen = set_desired(&mut app, id, json!({"state": {"targetTemp": 68}})).await;
    assert_eq!(seen["state"].get("refused"), None, "{seen}");
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"targetTemp": 68, "mode": "boost"}));
}

#[tokio::test]
async fn a_refusal_without_reason_or_of_a_replaced_value_changes_nothing() {
    let gateway = Gateway::start();
    let id = "h-refuse-bad";
    let (mut heater, mut app) =
        heater_and_app(&gateway, id, json!({"state": {"targetTemp": 50}})).await;
    let version =
        set_desired(&mut app, id, json!({"state": {"targetTemp": 60}})).await["version"].clone();

    heater
        .publish(
            &shadow_topic(id, "refused"),
            json(&json!({"state": {"targetTemp": 60}, "clientToken": "no-reason"})),
        )
        .await;
    let rejected = heater.expect("/shadow/rejected").await.payload_json();
    assert_eq!(rejected["code"], 400);
    assert_eq!(rejected["clientToken"], "no-reason");

    // 75 was never desired (or no longer is): the document is answered unchanged.
    heater
        .publish(
            &shadow_topic(id, "refused"),
            json(&json!({"state": {"targetTemp": 75}, "reason": "stale", "code": 1})),
        )
        .await;
    let unchanged = document(&mut app).await;
    assert_eq!(unchanged["version"], version);
    assert_eq!(unchanged["state"].get("refused"), None);
}

#[tokio::test]
async fn a_setpoint_that_expires_while_the_heater_is_offline_never_reaches_it() {
    let mut gateway = Gateway::start();
    let id = "h-expire";
    let (heater, mut app) =
        heater_and_app(&gateway, id, json!({"state": {"targetTemp": 50}})).await;
    heater.disconnect().await;

    let seen = set_desired(
        &mut app,
        id,
        json!({"state": {"targetTemp": 65, "boost": true}, "expiresIn": 2}),
    )
    .await;
    let expires_at = seen["metadata"]["desired"]["targetTemp"]["expiresAt"]
        .as_u64()
        .expect("expiresAt stamped");
    assert!(expires_at <= epoch_secs() + 2, "{seen}");
    app.disconnect().await;

    // The gateway is down when the setpoint expires.
    let status = gateway.terminate();
    assert!(status.success(), "exit status {status:?}");
    while epoch_secs() <= expires_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.spawn(&[]);

    let mut heater = Client::connect(gateway.port, id).await;
    heater.subscribe(&shadow_topic(id, "+")).await;
    heater.publish(&shadow_topic(id, "get"), Vec::new()).await;
    let answer = heater.expect("/shadow/document").await;
    assert!(!answer.retain);
    let answer = answer.payload_json();
    assert_eq!(
        answer["state"]["expired"],
        json!({"targetTemp": 65, "boost": true})
    );
    assert_eq!(answer["state"]["desired"], json!({}));
    assert_eq!(
        answer["metadata"]["expired"]["targetTemp"]["expiresAt"],
        expires_at
    );
    heater.expect_none("/shadow/delta", QUIET).await;
}

#[tokio::test]
async fn a_setpoint_expires_on_time_while_the_gateway_runs() {
    let gateway = Gateway::start();
    let id = "h-expire-live";
    let (mut heater, mut app) =
        heater_and_app(&gateway, id, json!({"state": {"targetTemp": 50}})).await;
    set_desired(
        &mut app,
        id,
        json!({"state": {"targetTemp": 65}, "expiresIn": 1}),
    )
    .await;
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"targetTemp": 65}));

    // Nobody asks anything: the gateway's timer expires it and clears the delta.
    let seen = document(&mut app).await;
    assert_eq!(seen["state"]["expired"], json!({"targetTemp": 65}));
    let cleared = heater.expect("/shadow/delta").await;
    assert!(cleared.payload.is_empty(), "the retained delta is cleared");
}

#[tokio::test]
async fn a_panel_change_made_offline_beats_an_older_app_setpoint() {
    let gateway = Gateway::start_with("[shadow]\nlocal_wins = [\"targetTemp\"]\n");
    let id = "h-panel";
    let (heater, mut app) =
        heater_and_app(&gateway, id, json!({"state": {"targetTemp": 50}})).await;
    heater.disconnect().await;
    set_desired(&mut app, id, json!({"state": {"targetTemp": 60}})).await;

    // While offline, the tenant turns the panel to 55 (after the app's 60); the heater
    // comes back, gets the retained delta, and reports with its own clock.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut heater = Client::connect(gateway.port, id).await;
    heater.subscribe(&shadow_topic(id, "+")).await;
    let pending = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(pending["state"], json!({"targetTemp": 60}));
    let seen = report(
        &heater,
        &mut app,
        id,
        json!({"state": {"targetTemp": 55}, "timestamp": epoch_secs()}),
    )
    .await;
    assert_eq!(seen["state"]["reported"], json!({"targetTemp": 55}));
    assert_eq!(seen["state"]["desired"], json!({}));
    assert_eq!(seen["state"]["superseded"], json!({"targetTemp": 60}));
    let cleared = heater.expect("/shadow/delta").await;
    assert!(
        cleared.payload.is_empty(),
        "the superseded setpoint is not pushed back"
    );
}

#[tokio::test]
async fn a_newer_app_setpoint_beats_an_older_panel_change() {
    let gateway = Gateway::start_with("[shadow]\nlocal_wins = [\"targetTemp\"]\n");
    let id = "h-app-wins";
    // The heater's clock runs in the past relative to the gateway, but in order.
    let first = epoch_secs() - 1000;
    let first_report = json!({"state": {"targetTemp": 50}, "timestamp": first});
    let (heater, mut app) = heater_and_app(&gateway, id, first_report).await;
    heater.disconnect().await;
    set_desired(&mut app, id, json!({"state": {"targetTemp": 60}})).await;

    // The panel change was before the app's setpoint: the heater must still apply 60.
    let mut heater = Client::connect(gateway.port, id).await;
    heater.subscribe(&shadow_topic(id, "+")).await;
    heater.expect("/shadow/delta").await;
    let seen = report(
        &heater,
        &mut app,
        id,
        json!({"state": {"targetTemp": 55}, "timestamp": first + 500}),
    )
    .await;
    assert_eq!(seen["state"]["desired"], json!({"targetTemp": 60}));
    assert_eq!(seen["state"].get("superseded"), None);
    assert_eq!(
        seen["metadata"]["reported"]["targetTemp"]["changedAt"],
        first + 500
    );
    heater.expect_none("/shadow/delta", QUIET).await;
}

#[tokio::test]
async fn without_local_wins_a_report_never_supersedes_and_a_timestamp_changes_nothing() {
    let gateway = Gateway::start();
    let id = "h-legacy";
    let first_report = json!({"state": {"targetTemp": 50}, "timestamp": epoch_secs()});
    let (mut heater, mut app) = heater_and_app(&gateway, id, first_report).await;
    set_desired(&mut app, id, json!({"state": {"targetTemp": 60}})).await;
    heater.expect("/shadow/delta").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let seen = report(
        &heater,
        &mut app,
        id,
        json!({"state": {"targetTemp": 55}, "timestamp": epoch_secs()}),
    )
    .await;
    assert_eq!(seen["state"]["desired"], json!({"targetTemp": 60}));
    assert_eq!(
        seen["metadata"]["reported"]["targetTemp"]
            .as_object()
            .map(|leaf| leaf.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["timestamp".to_owned()]),
        "{seen}"
    );
    heater.expect_none("/shadow/delta", QUIET).await;
}
