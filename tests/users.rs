//! Users (MongoDB `users`): each user's app gets the alerts of the user's own devices on
//! `users/{userId}/notifications`, filtered by the preferences it sets, and sees nothing
//! of other users or their devices.

mod common;

use std::time::{Duration, Instant};

use common::{add_credentials, Client, Gateway, Mongo};
use mongodb::bson::{doc, Document as BsonDocument};
use rumqttc::SubscribeReasonCode;

const QUIET: Duration = Duration::from_millis(700);

/// Connects a user's app once the gateway knows the user (it loads `users` at connect).
async fn user_app(gateway: &Gateway, user: &str) -> Client {
    let started = Instant::now();
    loop {
        let mut app = Client::connect_as(
            gateway.port,
            &format!("{user}:phone"),
            user,
            &format!("pw-{user}"),
        )
        .await
        .expect("the user's app connects");
        let own = format!("iotsphere/users/{user}/notifications");
        if app.subscribe_result(&own).await != vec![SubscribeReasonCode::Failure] {
            return app;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "{user} never became a user"
        );
        app.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heater(gateway: &Gateway, id: &str) -> Client {
    Client::connect_as(gateway.port, id, id, &format!("pw-{id}"))
        .await
        .expect("heater connects")
}

#[tokio::test(flavor = "multi_thread")]
async fn users_get_their_own_devices_alerts_as_they_prefer() {
    let mongo = Mongo::start().await;
    let users = mongo.db().collection::<BsonDocument>("users");
    users
        .insert_many([
            doc! {"_id": "alice", "devices": ["h-a1"]},
            doc! {"_id": "bob", "devices": ["h-b1"]},
        ])
        .await
        .expect("insert users");
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secrets.path().join("credentials");
    for name in ["alice", "bob", "h-a1", "h-b1", "ops"] {
        add_credentials(&file, name, &format!("pw-{name}"));
    }
    let config = format!(
        "{}\n[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n[[auth.services]]\nname = \"ops\"\nsubscribe = [\"iotsphere/devices/batch/alerts\"]\n\n[[alerts]]\nname = \"hot\"\nsource = \"telemetry.temperature\"\ncondition = \"> 85\"\ncooldown = \"0s\"\n",
        mongo.config(""),
        file.display()
    );
    let gateway = Gateway::start_with(&config);
    let mut alice = user_app(&gateway, "alice").await;
    let mut bob = user_app(&gateway, "bob").await;
    let mut ops = Client::connect_as(gateway.port, "ops", "ops", "pw-ops")
        .await
        .expect("ops connects");
    ops.subscribe("iotsphere/devices/batch/alerts").await;

    // Alice sees her own device only.
    for (filter, granted) in [
        ("iotsphere/users/bob/notifications", false),
        ("iotsphere/devices/h-b1/shadow/document", false),
        ("iotsphere/devices/+/shadow/document", false),
        ("iotsphere/devices/h-a1/shadow/document", true),
    ] {
        let codes = alice.subscribe_result(filter).await;
        assert_eq!(
            codes == vec![SubscribeReasonCode::Failure],
            !granted,
            "{filter}"
        );
    }

    let temperature = |id: &str| format!("iotsphere/devices/{id}/telemetry/temperature");
    let h_a1 = heater(&gateway, "h-a1").await;
    let h_b1 = heater(&gateway, "h-b1").await;
    h_a1.publish(&temperature("h-a1"), "90").await;
    let note = alice.expect("/users/alice/notifications").await.envelope();
    assert_eq!(note["metadata"]["messageType"], "notification");
    assert_eq!(note["payload"]["deviceId"], "h-a1");
    assert_eq!(note["payload"]["state"], "firing");
    bob.expect_none("/notifications", QUIET).await;
    h_b1.publish(&temperature("h-b1"), "91").await;
    let note = bob.expect("/users/bob/notifications").await.payload_json();
    assert_eq!(note["deviceId"], "h-b1");
    alice.expect_none("/notifications", QUIET).await;

    // Alice wants critical alerts only; "hot" is a warning.
    h_a1.publish(&temperature("h-a1"), "60").await;
    alice.expect("/users/alice/notifications").await;
    alice
        .publish(
            "iotsphere/users/alice/preferences",
            r#"{"severities": ["critical"]}"#,
        )
        .await;
    mongo
        .wait_for("users", doc! {"_id": "alice"}, |d| {
            d.get_document("preferences")
                .and_then(|p| p.get_array("severities"))
                .is_ok_and(|s| s.len() == 1 && s[0].as_str() == Some("critical"))
        })
        .await;
    h_a1.publish(&temperature("h-a1"), "95").await;
    // The ops service saw every alert: the second firing of h-a1 is the one after the change.
    let mut firings = 0;
    let fired = loop {
        let alert = ops.expect("/devices/batch/alerts").await.payload_json();
        if alert["deviceId"] == "h-a1" && alert["state"] == "firing" {
            firings += 1;
            if firings == 2 {
                break alert;
            }
        }
    };
    assert_eq!(fired["severity"], "warning");
    alice.expect_none("/notifications", QUIET).await;
}
