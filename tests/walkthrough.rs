//! The README's 5-minute walkthrough, run with the mosquitto command-line clients exactly as
//! a new user types it (mosquitto-clients is installed by scripts/install-test-deps.sh).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Gateway;

fn mosquitto(tool: &str) -> Command {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{tool} is missing: run scripts/install-test-deps.sh"
    );
    Command::new(tool)
}

fn publish(port: u16, topic: &str, message: &str) {
    let status = mosquitto("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
}

#[test]
fn reported_desired_delta_with_mosquitto_clients() {
    let gateway = Gateway::start();
    let port = gateway.port.to_string();
    // Terminal 1: the heater listens for its delta.
    let heater = mosquitto("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .args(["-t", "iotsphere/devices/heater-1/shadow/delta"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(300));
    // Terminal 2: the heater reports, then an app sets the desired temperature.
    publish(
        gateway.port,
        "iotsphere/devices/heater-1/shadow/reported",
        r#"{"state": {"temperature": 48.5, "targetTemp": 55}}"#,
    );
    publish(
        gateway.port,
        "iotsphere/devices/heater-1/shadow/desired",
        r#"{"state": {"targetTemp": 60}}"#,
    );
    let out = heater.wait_with_output().expect("mosquitto_sub output");
    assert!(out.status.success(), "no delta within 10 s");
    let delta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("delta is JSON");
    assert_eq!(
        delta["payload"]["state"],
        serde_json::json!({"targetTemp": 60})
    );
    assert_eq!(delta["metadata"]["messageType"], "shadow.delta");

    // Later, the heater (re)subscribes and still finds the pending delta (retained).
    let again = mosquitto("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "-C", "1", "-W", "5"])
        .args(["-t", "iotsphere/devices/heater-1/shadow/delta"])
        .output()
        .expect("mosquitto_sub");
    assert!(again.status.success(), "the pending delta is retained");
    assert!(String::from_utf8_lossy(&again.stdout).contains("\"targetTemp\":60"));
}
