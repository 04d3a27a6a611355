//! Alert rules end to end: readings and connections from real MQTT clients, alerts on
//! `devices/batch/alerts` and `system/alerts`, and in MongoDB `alerts`.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Gateway, Mongo};
use mongodb::bson::doc;
use serde_json::Value;

const OVER_TEMPERATURE: &str = r#"
[[alerts]]
name = "over-temperature"
source = "telemetry.temperature"
condition = "> 85"
for = "500ms"
severity = "critical"
cooldown = "1m"
"#;

const OFFLINE: &str = r#"
[[alerts]]
name = "offline"
source = "offline"
for = "1s"
"#;

async fn alert_listener(gateway: &Gateway) -> Client {
    let mut listener = Client::connect(gateway.port, "alert-listener").await;
    listener.subscribe("iotsphere/devices/batch/alerts").await;
    listener.subscribe("iotsphere/system/alerts").await;
    listener
}

/// The next alert on `devices/batch/alerts` (skipping the `system/alerts` copy).
async fn next_alert(listener: &mut Client) -> Value {
    listener
        .expect("/devices/batch/alerts")
        .await
        .payload_json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_over_temperature_fires_once_and_clears_once() {
    let gateway = Gateway::start_with(OVER_TEMPERATURE);
    let mut listener = alert_listener(&gateway).await;
    let heater = Client::connect(gateway.port, "h-hot").await;
    let topic = "iotsphere/devices/h-hot/telemetry/temperature";
    // 2 s around 87 with a dip to 83 every 750 ms, then 1.5 s cold with a spike to 86.
    for step in 0..70 {
        let value = match step {
            0..40 if step % 15 == 7 => 83.0,
            0..40 => 87.5,
            _ if step == 55 => 86.0,
            _ => 60.0,
        };
        heater.publish(topic, value.to_string()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fired = next_alert(&mut listener).await;
    assert_eq!(fired["state"], "firing", "{fired}");
    assert_eq!(fired["rule"], "over-temperature");
    assert_eq!(fired["deviceId"], "h-hot");
    assert_eq!(fired["severity"], "critical");
    let cleared = next_alert(&mut listener).await;
    assert_eq!(cleared["state"], "cleared", "{cleared}");
    assert_eq!(
        cleared["alertId"], fired["alertId"],
        "one alert, fired then cleared"
    );
    listener
        .expect_none("/devices/batch/alerts", Duration::from_millis(1500))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_offline_for_the_set_time_raises_an_alert_kept_in_mongodb() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&format!("{}\n{OFFLINE}", mongo.config("")));
    let mut listener = alert_listener(&gateway).await;
    // A device (it has a shadow here), not just any client.
    let mut heater = Client::connect(gateway.port, "h-away").await;
    heater
        .subscribe("iotsphere/devices/h-away/shadow/document")
        .await;
    heater
        .publish(
            "iotsphere/devices/h-away/shadow/reported",
            r#"{"state":{"on":true}}"#,
        )
        .await;
    heater.expect("/shadow/document").await;
    // An app going away is no device going offline: no alert for it.
    Client::connect(gateway.port, "tablet")
        .await
        .disconnect()
        .await;
    let gone = Instant::now();
    heater.disconnect().await;
    let fired = next_alert(&mut listener).await;
    assert!(
        gone.elapsed() >= Duration::from_secs(1),
        "fired before `for`"
    );
    assert_eq!(
        (&fired["state"], &fired["deviceId"]),
        (&"firing".into(), &"h-away".into())
    );
    let alert_id = fired["alertId"].as_str().expect("alertId").to_string();
    let stored = mongo
        .wait_for("alerts", doc! {"_id": &alert_id}, |d| {
            d.get_str("status") == Ok("open")
        })
        .await;
    assert_eq!(stored.get_str("rule"), Ok("offline"));
    assert_eq!(stored.get_str("gatewayId"), Ok("gw-test"));

    let _back = Client::connect(gateway.port, "h-away").await;
    let cleared = next_alert(&mut listener).await;
    assert_eq!(cleared["state"], "cleared");
    mongo
        .wait_for("alerts", doc! {"_id": &alert_id}, |d| {
            d.get_str("status") == Ok("cleared")
        })
        .await;
}

#[test]
fn a_broken_rule_is_a_config_error_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    let rule = "[[alerts]]\nname = \"hot\"\nsource = \"telemetry.humidity\"\ncondition = \"> 1\"\n";
    std::fs::write(&path, rule).expect("write");
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("alerts[0].source") && stderr.contains("temperature, pressure or status"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_status_counts_the_building() {
    let gateway = Gateway::start_with(OVER_TEMPERATURE);
    let reported = |id: &str| format!("iotsphere/devices/{id}/shadow/reported");
    let mut h1 = Client::connect(gateway.port, "h-b1").await;
    h1.subscribe("iotsphere/devices/h-b1/shadow/document").await;
    h1.publish(&reported("h-b1"), r#"{"state":{"targetTemp":50}}"#)
        .await;
    h1.expect("/shadow/document").await;
    let mut h2 = Client::connect(gateway.port, "h-b2").await;
    h2.subscribe("iotsphere/devices/h-b2/shadow/document").await;
    h2.publish(&reported("h-b2"), r#"{"state":{"targetTemp":50}}"#)
        .await;
    h2.expect("/shadow/document").await;
    h2.disconnect().await;
    let app = Client::connect(gateway.port, "app").await;
    app.publish(
        "iotsphere/devices/h-b1/shadow/desired",
        r#"{"state":{"targetTemp":60}}"#,
    )
    .await;
    for _ in 0..12 {
        h1.publish("iotsphere/devices/h-b1/telemetry/temperature", "90")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let expected = serde_json::json!({
        "devices": 2, "online": 1, "offline": 1, "pendingDeltas": 1, "openAlerts": 1
    });
    let started = Instant::now();
    let mut dashboard = Client::connect(gateway.port, "dashboard").await;
    dashboard.subscribe("iotsphere/devices/batch/status").await;
    loop {
        let status = dashboard.expect("/devices/batch/status").await;
        if status.payload_json() == expected {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "last: {}",
            status.payload_json()
        );
    }
    // Retained: a dashboard that connects now gets it at once.
    let mut late = Client::connect(gateway.port, "late-dashboard").await;
    late.subscribe("iotsphere/devices/batch/status").await;
    let status = late.expect("/devices/batch/status").await;
    assert!(status.retain);
    assert_eq!(status.payload_json(), expected);
}
