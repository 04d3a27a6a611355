//! What an operator looks at: /health and /metrics.

mod common;

use common::{http_get, json, shadow_topic, Client, Gateway};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_show_what_happened() {
    let gateway = Gateway::start();
    let mut heater = Client::connect(gateway.port, "h-ops").await;
    heater.subscribe(&shadow_topic("h-ops", "+")).await;
    heater
        .publish(
            &shadow_topic("h-ops", "reported"),
            json(&json!({"state": {"t": 50}})),
        )
        .await;
    heater.expect("/shadow/document").await;
    heater
        .publish(&shadow_topic("h-ops", "reported"), b"{".to_vec())
        .await;
    heater.expect("/shadow/rejected").await;

    let (status, body) = http_get(gateway.http_port, "/health");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["broker"], "up");
    assert_eq!(health["uplink"], "offline");
    assert_eq!(health["shadows"], 1);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let (status, text) = http_get(gateway.http_port, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "iotsphere_shadow_updates_total 1",
        "iotsphere_rejections_total{code=\"400\"} 1",
        "iotsphere_messages_in_total{kind=\"shadow\"} 2",
        "iotsphere_messages_out_total{kind=\"shadow.document\"} 1",
        "iotsphere_connected_clients 1",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("iotsphere_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("RSS gauge");
    assert!(rss > 1_000_000.0, "{rss}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retained_system_status_greets_a_technician() {
    let gateway = Gateway::start();
    let mut technician = Client::connect(gateway.port, "technician").await;
    technician.subscribe("iotsphere/system/status").await;
    let status = technician.expect("/system/status").await;
    assert!(status.retain);
    let envelope = status.envelope();
    assert_eq!(envelope["metadata"]["messageType"], "system.status");
    assert_eq!(envelope["payload"]["broker"], "up");
    assert_eq!(envelope["payload"]["version"], env!("CARGO_PKG_VERSION"));
}
