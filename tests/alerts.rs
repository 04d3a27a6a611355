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
    let heater = Client::connect(gateway.port, "h-away").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
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
