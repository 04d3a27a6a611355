//! Issue 17 item 1: a last will is a publish like any other. Checked against the
//! connecting identity's publish rights at CONNECT (CONNACK 5 "not authorized", audited),
//! and passed through the publish hook when it fires (ACL again, ingest into MongoDB,
//! retain rules). Password mode with a raw client, certificate mode with mosquitto's
//! clients (OpenSSL), anonymous mode for ingest.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::raw::{Connect, Raw};
use common::{add_credentials, dev_certs, mosquitto_tls, Client, Gateway, Mongo};
use mongodb::bson::doc;

const QUIET: Duration = Duration::from_millis(700);
const NOT_AUTHORIZED: u8 = 5;

/// Password mode: heater-a, heater-b, and `cloud-app` (may set desired of any heater).
fn password_gateway(extra: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    for name in ["heater-a", "heater-b", "cloud-app"] {
        add_credentials(&file, name, &format!("pw-{name}"));
    }
    let gateway = Gateway::start_with(&format!(
        "[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n[[auth.services]]\nname = \"cloud-app\"\npublish = [\"iotsphere/devices/+/shadow/desired\"]\nsubscribe = [\"iotsphere/devices/+/telemetry/#\"]\n\n{extra}",
        file.display()
    ));
    (gateway, dir)
}

fn heater_a() -> Connect<'static> {
    Connect::new("heater-a").login("heater-a", "pw-heater-a")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_will_the_identity_may_not_publish_is_refused_at_connect() {
    let (gateway, _dir) = password_gateway("");
    let mut victim = Client::connect_as(gateway.port, "heater-b", "heater-b", "pw-heater-b")
        .await
        .expect("heater-b");
    victim.subscribe("iotsphere/devices/heater-b/#").await;
    let scald = br#"{"state":{"targetTemp":91}}"#;
    for (topic, payload, retain) in [
        (
            "iotsphere/devices/heater-b/shadow/desired",
            &scald[..],
            false,
        ),
        (
            "iotsphere/devices/heater-b/commands/request",
            br#"{"commandId":"x","name":"boost","args":{}}"#,
            false,
        ),
        (
            "iotsphere/devices/heater-b/shadow/delta",
            br#"{"state":{"targetTemp":91}}"#,
            true,
        ),
        ("iotsphere/devices/heater-b/shadow/delta", b"", true),
        // A forged refusal would take heater-b's pending setpoint out of its delta.
        (
            "iotsphere/devices/heater-b/shadow/refused",
            br#"{"state":{"targetTemp":60},"reason":"forged","code":1}"#,
            false,
        ),
        ("iotsphere/system/status", br#"{"status":"down"}"#, true),
    ] {
        let mut attacker = Raw::open(gateway.port).expect("tcp");
        let (_, code) = attacker
            .connect(&heater_a().will(topic, payload, 1, retain))
            .expect("CONNACK");
        assert_eq!(code, NOT_AUTHORIZED, "a will on {topic} was accepted");
        attacker.drop_abruptly();
    }
    victim.expect_none("", QUIET).await;
    // Nothing retained either: a fresh subscriber of the delta and the status finds the
    // gateway's own only (no delta is pending; the status is the gateway's).
    let mut later = Client::connect_as(gateway.port, "heater-b", "heater-b", "pw-heater-b")
        .await
        .expect("heater-b again");
    later
        .subscribe("iotsphere/devices/heater-b/shadow/delta")
        .await;
    later.expect_none("", QUIET).await;
    let log = gateway.log();
    assert!(
        log.contains("a will on a topic this identity may not publish"),
        "not audited:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_will_arrives_and_is_stored_and_a_device_retains_nothing() {
    let mongo = Mongo::start().await;
    let (gateway, _dir) = password_gateway(&mongo.config(""));
    let mut app = Client::connect_as(gateway.port, "cloud-app", "cloud-app", "pw-cloud-app")
        .await
        .expect("cloud-app");
    app.subscribe("iotsphere/devices/+/telemetry/#").await;

    let topic = "iotsphere/devices/heater-a/telemetry/status";
    let will = br#"{"value":"power lost"}"#;
    let mut heater = Raw::open(gateway.port).expect("tcp");
    let (_, code) = heater
        .connect(&heater_a().will(topic, will, 1, true))
        .expect("CONNACK");
    assert_eq!(code, 0, "its own telemetry is allowed");
    heater.drop_abruptly();

    let arrived = app.expect("/telemetry/status").await;
    assert_eq!(arrived.payload, will);
    mongo
        .wait_for(
            "telemetry",
            doc! {"deviceId": "heater-a", "kind": "status"},
            |d| d.get_str("value") == Ok("power lost"),
        )
        .await;
    // A device's retained will is delivered, not retained.
    let mut later =
        Client::connect_as(gateway.port, "cloud-app:later", "cloud-app", "pw-cloud-app")
            .await
            .expect("cloud-app:later");
    later.subscribe("iotsphere/devices/+/telemetry/#").await;
    later.expect_none("", QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_will_that_fires_passes_the_acl_of_that_moment() {
    let (gateway, _dir) = password_gateway("");
    let mut victim = Client::connect_as(gateway.port, "heater-b", "heater-b", "pw-heater-b")
        .await
        .expect("heater-b");
    victim
        .subscribe("iotsphere/devices/heater-b/shadow/delta")
        .await;
    // Allowed at CONNECT: cloud-app may set desired.
    let mut app = Raw::open(gateway.port).expect("tcp");
    let (_, code) = app
        .connect(
            &Connect::new("cloud-app:will")
                .login("cloud-app", "pw-cloud-app")
                .will(
                    "iotsphere/devices/heater-b/shadow/desired",
                    br#"{"state":{"targetTemp":91}}"#,
                    1,
                    false,
                ),
        )
        .expect("CONNACK");
    assert_eq!(code, 0);
    // The operator takes that right away (SIGHUP), then the service's connection drops.
    let config = std::fs::read_to_string(gateway.config_path()).expect("config");
    let narrowed = config.replace(
        "publish = [\"iotsphere/devices/+/shadow/desired\"]",
        "publish = []",
    );
    std::fs::write(gateway.config_path(), narrowed).expect("write config");
    gateway.signal("HUP");
    // Applied once the same will is refused at CONNECT.
    let started = Instant::now();
    loop {
        let mut probe = Raw::open(gateway.port).expect("tcp");
        let will = Connect::new("cloud-app:probe")
            .login("cloud-app", "pw-cloud-app")
            .will("iotsphere/devices/heater-b/shadow/desired", b"{}", 0, false);
        if probe.connect(&will).expect("CONNACK").1 == NOT_AUTHORIZED {
            break;
        }
        probe.disconnect();
        assert!(started.elapsed() < common::WAIT, "the reload never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.drop_abruptly();
    victim.expect_none("/shadow/delta", QUIET).await;
    let log = gateway.log();
    assert!(log.contains("will dropped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_mode_stores_a_will_reading() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = Raw::open(gateway.port).expect("tcp");
    let (_, code) = heater
        .connect(&Connect::new("h-anon").will(
            "iotsphere/devices/h-anon/telemetry/status",
            br#"{"value":"gone"}"#,
            1,
            false,
        ))
        .expect("CONNACK");
    assert_eq!(code, 0);
    heater.drop_abruptly();
    mongo
        .wait_for("telemetry", doc! {"deviceId": "h-anon"}, |d| {
            d.get_str("value") == Ok("gone")
        })
        .await;
}

#[test]
fn certificate_mode_refuses_a_foreign_will_and_delivers_an_own_one() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-a", "heater-b", "cloud-app"]);
    let gateway = common::certificate_gateway(
        certs.path(),
        "[[auth.services]]\nname = \"cloud-app\"\nsubscribe = [\"iotsphere/devices/+/telemetry/#\", \"iotsphere/devices/+/shadow/delta\"]\n",
    );
    let ca = certs.path().join("ca.crt");
    let cert = |name: &str| {
        (
            certs.path().join(format!("{name}.crt")),
            certs.path().join(format!("{name}.key")),
        )
    };
    let (a_crt, a_key) = cert("heater-a");
    let heater_a = Some((a_crt.as_path(), a_key.as_path()));
    let (app_crt, app_key) = cert("cloud-app");
    let app = Some((app_crt.as_path(), app_key.as_path()));

    // A will on heater-b's desired state: mosquitto_sub reports "not authorised".
    let refused = mosquitto_tls("mosquitto_sub", gateway.port, &ca, "heater-a", heater_a)
        .args([
            "-t",
            "iotsphere/devices/heater-a/shadow/delta",
            "-C",
            "1",
            "-W",
            "3",
        ])
        .args(["--will-topic", "iotsphere/devices/heater-b/shadow/desired"])
        .args(["--will-payload", r#"{"state":{"targetTemp":91}}"#])
        .output()
        .expect("mosquitto_sub");
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        !refused.status.success() && said.contains("not author"),
        "{said}"
    );

    // Its own telemetry as a will: kill -9 the heater's client, the service gets it.
    let watcher = mosquitto_tls("mosquitto_sub", gateway.port, &ca, "cloud-app:watch", app)
        .args([
            "-t",
            "iotsphere/devices/+/telemetry/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher");
    std::thread::sleep(Duration::from_millis(500));
    let mut device = mosquitto_tls("mosquitto_sub", gateway.port, &ca, "heater-a", heater_a)
        .args(["-t", "iotsphere/devices/heater-a/shadow/delta"])
        .args([
            "--will-topic",
            "iotsphere/devices/heater-a/telemetry/status",
        ])
        .args(["--will-payload", r#"{"value":"power lost"}"#])
        .stdout(Stdio::null())
        .spawn()
        .expect("device");
    std::thread::sleep(Duration::from_millis(700));
    let _ = Command::new("kill")
        .args(["-9", &device.id().to_string()])
        .status();
    let _ = device.wait();
    let out = watcher.wait_with_output().expect("watcher output");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("iotsphere/devices/heater-a/telemetry/status {\"value\":\"power lost\"}"),
        "{seen}"
    );
    assert!(gateway
        .log()
        .contains("a will on a topic this identity may not publish"));
}
