//! Shadows survive a clean restart and a kill -9: the gateway flushes the store before it
//! answers, so whatever a device was told is on disk.

mod common;

use common::{json, shadow_topic, Client, Gateway};
use serde_json::json;

#[tokio::test]
async fn shadows_and_pending_deltas_survive_a_restart() {
    let mut gateway = Gateway::start();
    let mut heater = Client::connect(gateway.port, "h-restart").await;
    heater
        .subscribe(&shadow_topic("h-restart", "document"))
        .await;
    heater
        .publish(
            &shadow_topic("h-restart", "reported"),
            json(&json!({"state": {"t": 50}})),
        )
        .await;
    heater.expect("/shadow/document").await;
    heater
        .publish(
            &shadow_topic("h-restart", "desired"),
            json(&json!({"state": {"t": 57}})),
        )
        .await;
    heater.expect("/shadow/document").await;

    gateway.restart();

    // The retained delta lives in broker memory; the gateway republishes it at startup.
    let mut heater = Client::connect(gateway.port, "h-restart").await;
    heater.subscribe(&shadow_topic("h-restart", "+")).await;
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"t": 57}));
    heater
        .publish(&shadow_topic("h-restart", "get"), Vec::new())
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["version"], 2);
    assert_eq!(document["state"]["reported"]["t"], 50);
}

#[tokio::test]
async fn everything_answered_survives_kill_9() {
    let mut gateway = Gateway::start();
    let devices: Vec<String> = (0..20).map(|i| format!("h-k{i}")).collect();
    let mut watcher = Client::connect(gateway.port, "watcher").await;
    watcher
        .subscribe("iotsphere/devices/+/shadow/document")
        .await;
    let writer = Client::connect(gateway.port, "writer").await;
    for round in 1..=5 {
        for id in &devices {
            writer
                .publish(
                    &shadow_topic(id, "reported"),
                    json(&json!({"state": {"round": round}})),
                )
                .await;
        }
    }
    // Every document seen means that write was flushed before it was published.
    let mut answered = std::collections::HashMap::new();
    for _ in 0..devices.len() * 5 {
        let document = watcher.expect("/shadow/document").await;
        let payload = document.payload_json();
        answered.insert(
            document.topic.clone(),
            payload["version"].as_u64().unwrap_or(0),
        );
    }
    gateway.kill9();
    gateway.spawn(&[]);

    let mut reader = Client::connect(gateway.port, "reader").await;
    reader
        .subscribe("iotsphere/devices/+/shadow/document")
        .await;
    for id in &devices {
        reader.publish(&shadow_topic(id, "get"), Vec::new()).await;
        let document = reader.expect(&format!("{id}/shadow/document")).await;
        let version = document.payload_json()["version"].as_u64().unwrap_or(0);
        assert!(
            version >= answered[&document.topic],
            "{id}: version {version} after kill -9, {} was answered before",
            answered[&document.topic]
        );
        assert_eq!(document.payload_json()["state"]["reported"]["round"], 5);
    }
}
