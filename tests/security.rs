//! Password mode and the per-device topic ACL, with real MQTT clients.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{add_credentials, json, shadow_topic, Client, Gateway, BIN};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(500);

/// A gateway in password mode with heater-1, heater-2 and a cloud service `cloud-app`.
fn secure_gateway() -> (Gateway, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    for name in ["heater-1", "heater-2", "cloud-app"] {
        add_credentials(&file, name, &format!("pw-{name}"));
    }
    let config = format!(
        "[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n[[auth.services]]\nname = \"cloud-app\"\npublish = [\"iotsphere/devices/+/shadow/desired\", \"iotsphere/devices/+/shadow/delta\"]\nsubscribe = [\"iotsphere/devices/+/shadow/document\"]\n",
        file.display()
    );
    let gateway = Gateway::start_with(&config);
    // Keep the credentials directory alive as long as the gateway.
    std::mem::forget(dir);
    (gateway, file)
}

async fn device(gateway: &Gateway, id: &str) -> Client {
    Client::connect_as(gateway.port, id, id, &format!("pw-{id}"))
        .await
        .expect("device connects")
}

#[test]
fn the_credentials_file_holds_hashes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    add_credentials(&file, "heater-1", "correct horse");
    add_credentials(&file, "heater-2", "battery staple");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(!text.contains("correct horse") && !text.contains("battery staple"));
    assert_eq!(text.matches("$argon2id$").count(), 2, "{text}");
    let list = |file: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["credentials", "list", "--file"])
            .arg(file)
            .output()
            .expect("list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(list(&file), "heater-1\nheater-2\n");
    let removed = Command::new(BIN)
        .args(["credentials", "remove", "--file"])
        .arg(&file)
        .arg("heater-1")
        .output()
        .expect("remove");
    assert!(removed.status.success());
    assert_eq!(list(&file), "heater-2\n");
    // The password never appears in argv: `add` takes no password argument at all.
    let refused = Command::new(BIN)
        .args(["credentials", "add", "--file"])
        .arg(&file)
        .args(["heater-3", "secret"])
        .output()
        .expect("add with a password argument");
    assert!(!refused.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_and_borrowed_identities_are_refused() {
    let (gateway, _) = secure_gateway();
    assert!(
        Client::connect_as(gateway.port, "heater-1", "heater-1", "pw-heater-1")
            .await
            .is_ok()
    );
    for (client_id, username, password) in [
        ("heater-1", "heater-1", "wrong"),
        ("heater-9", "heater-9", "pw-heater-9"),
        ("heater-2", "heater-1", "pw-heater-1"),
        ("iotsphere:gateway", "cloud-app", "pw-cloud-app"),
    ] {
        let refused = Client::connect_as(gateway.port, client_id, username, password).await;
        let error = refused
            .err()
            .unwrap_or_else(|| panic!("{client_id}/{username} was accepted"));
        assert!(
            error.contains("BadUserNamePassword") || error.contains("refused"),
            "{error}"
        );
    }
    // Without credentials at all.
    assert!(Client::try_connect(gateway.port, "heater-1", true, None)
        .await
        .is_err());
    let log = gateway.log();
    assert!(
        log.contains("connection refused") && log.contains("bad username or password"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_touch_another_devices_topics() {
    let (gateway, _) = secure_gateway();
    let mut victim = device(&gateway, "heater-2").await;
    victim.subscribe("iotsphere/devices/heater-2/#").await;
    let mut attacker = device(&gateway, "heater-1").await;

    for kind in ["reported", "desired", "delta", "document", "get"] {
        attacker
            .publish(
                &shadow_topic("heater-2", kind),
                json(&json!({"state": {"targetTemp": 90}})),
            )
            .await;
    }
    attacker
        .publish(
            "iotsphere/devices/heater-2/telemetry/temperature",
            b"99".to_vec(),
        )
        .await;
    victim.expect_none("", QUIET).await;

    let codes = attacker
        .subscribe_result("iotsphere/devices/heater-2/shadow/delta")
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    let codes = attacker
        .subscribe_result("iotsphere/devices/+/shadow/delta")
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // Not even its own desired: only the cloud and apps set it.
    attacker
        .subscribe("iotsphere/devices/heater-1/shadow/+")
        .await;
    attacker
        .publish(
            &shadow_topic("heater-1", "desired"),
            json(&json!({"state": {"t": 1}})),
        )
        .await;
    attacker.expect_none("/shadow/delta", QUIET).await;

    // Its own shadow works as usual.
    attacker
        .publish(
            &shadow_topic("heater-1", "reported"),
            json(&json!({"state": {"t": 50}})),
        )
        .await;
    attacker.expect("/shadow/document").await;
    let log = gateway.log();
    assert!(
        log.contains("publish denied") && log.contains("subscribe denied"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_sets_desired_within_its_filters_only() {
    let (gateway, _) = secure_gateway();
    let mut heater = device(&gateway, "heater-1").await;
    heater
        .subscribe("iotsphere/devices/heater-1/shadow/delta")
        .await;
    let mut app = Client::connect_as(gateway.port, "cloud-app:7", "cloud-app", "pw-cloud-app")
        .await
        .expect("service connects");
    app.subscribe("iotsphere/devices/+/shadow/document").await;
    assert_eq!(
        app.subscribe_result("iotsphere/devices/+/telemetry/#")
            .await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    app.publish(
        &shadow_topic("heater-1", "desired"),
        json(&json!({"state": {"targetTemp": 61}})),
    )
    .await;
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 61}));
    app.expect("/shadow/document").await;
    // Even listed in its filters, delta belongs to the gateway alone.
    app.publish(
        &shadow_topic("heater-1", "delta"),
        json(&json!({"state": {"targetTemp": 99}})),
    )
    .await;
    heater.expect_none("/shadow/delta", QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_credentials_without_dropping_connections() {
    let (gateway, file) = secure_gateway();
    let mut heater = device(&gateway, "heater-1").await;
    heater
        .subscribe("iotsphere/devices/heater-1/shadow/document")
        .await;
    assert!(
        Client::connect_as(gateway.port, "heater-3", "heater-3", "pw-heater-3")
            .await
            .is_err()
    );
    add_credentials(&file, "heater-3", "pw-heater-3");
    gateway.signal("HUP");
    let started = std::time::Instant::now();
    while Client::connect_as(gateway.port, "heater-3", "heater-3", "pw-heater-3")
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < common::WAIT,
            "heater-3 never accepted after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heater
        .publish(
            &shadow_topic("heater-1", "reported"),
            json(&json!({"state": {"t": 1}})),
        )
        .await;
    heater.expect("/shadow/document").await;
}
