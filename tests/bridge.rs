//! The upstream bridge with mosquitto as the cloud broker: a real third-party MQTT broker
//! process on loopback (installed by scripts/install-test-deps.sh), started, stopped and
//! restarted by the tests.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    dev_certs, free_port, http_get, shadow_topic, wait_for_port, Client, Gateway, RawClient, WAIT,
};
use serde_json::{json, Value};

/// What the bridge's tests configure upstream: `prefix` is `gateways/gw-test`.
const PREFIX: &str = "gateways/gw-test";

/// A mosquitto broker on a loopback port, with persistence (sessions and queued messages
/// survive a restart, as on a cloud broker).
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// A broker anyone may use.
    fn anonymous() -> Mosquitto {
        Self::start("allow_anonymous true")
    }

    /// `extra` follows the first listener's line: its options (e.g. TLS files), more
    /// listeners, and the access settings.
    fn start(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "listener {port} 127.0.0.1\n{extra}\n\
             persistence true\npersistence_location {}/\n\
             max_queued_messages 10000\nset_tcp_nodelay true\nlog_dest file {}\n\
             # Started as root, mosquitto would switch to its own user, who cannot write here.\n\
             user root\n",
            dir.path().display(),
            dir.path().join("mosquitto.log").display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("mosquitto.conf");
        let mut mosquitto = Mosquitto {
            child: None,
            port,
            dir,
        };
        mosquitto.spawn();
        mosquitto
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        wait_for_port(self.port, self.child.as_mut());
    }

    /// SIGTERM (mosquitto saves its sessions), then waits for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("mosquitto is running");
        common::signal(&child, "TERM");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            assert!(started.elapsed() < WAIT, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The broker binary: on PATH, or where Debian puts it.
fn binary() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let binary = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
    assert!(
        binary.exists(),
        "mosquitto is missing: run scripts/install-test-deps.sh"
    );
    binary
}

/// The `[bridge]` section towards `url`, with quick reconnects for the tests.
fn bridge_config(url: &str, extra: &str) -> String {
    format!(
        "[bridge]\nurl = \"{url}\"\nclient_id = \"gw-test\"\nprefix = \"{PREFIX}\"\n\
         reconnect_min_ms = 100\nreconnect_max_ms = 1000\n{extra}\n"
    )
}

/// The `bridge` field of the gateway's /health.
fn bridge_health(gateway: &Gateway) -> Value {
    let (status, body) = http_get(gateway.http_port, "/health");
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("health is JSON");
    health["bridge"].clone()
}

/// Waits until the bridge's state satisfies `check`.
fn wait_for_bridge(gateway: &Gateway, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let bridge = bridge_health(gateway);
        if check(&bridge) {
            return bridge;
        }
        assert!(
            started.elapsed() < WAIT,
            "bridge state never matched: {bridge}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A device reports; `subscriber` (on the cloud broker) gets the gateway's document under
/// the prefix.
async fn reported_state_goes_up(gateway: &Gateway, subscriber: &mut Client) {
    subscriber
        .subscribe(&format!(
            "{PREFIX}/{}",
            shadow_topic("heater-1", "document")
        ))
        .await;
    wait_for_bridge(gateway, |b| b["connected"] == true);
    let heater = Client::connect(gateway.port, "heater-1").await;
    heater
        .publish(
            &shadow_topic("heater-1", "reported"),
            common::json(&json!({"state": {"temperature": 48.5}})),
        )
        .await;
    let document = subscriber.expect("/shadow/document").await;
    assert_eq!(
        document.topic,
        format!("{PREFIX}/iotsphere/devices/heater-1/shadow/document")
    );
    assert_eq!(
        document.payload_json()["state"]["reported"]["temperature"],
        48.5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_state_reaches_the_upstream_subscriber() {
    let cloud = Mosquitto::anonymous();
    let mut gateway = Gateway::start_with(&bridge_config(
        &format!("mqtt://127.0.0.1:{}", cloud.port),
        "",
    ));
    let mut subscriber = Client::connect(cloud.port, "cloud-service").await;
    reported_state_goes_up(&gateway, &mut subscriber).await;
    // The document and the gateway's system/status, acknowledged and out of the outbox.
    wait_for_bridge(&gateway, |b| {
        b["forwarded"].as_u64() >= Some(2) && b["queued"] == 0
    });
    let (_, metrics) = http_get(gateway.http_port, "/metrics");
    assert!(
        metrics.contains("iotsphere_bridge_connected 1"),
        "{metrics}"
    );
    // The bridge does not hold up shutdown (terminate() requires exit 0 within 5 s).
    assert!(gateway.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_desired_reaches_the_device_without_loops() {
    let cloud = Mosquitto::anonymous();
    // `shadow/desired` is in both lists: a local app's desired goes up, the cloud's comes
    // down, and neither comes back.
    let forward = "forward = [\"iotsphere/devices/+/shadow/document\", \
                   \"iotsphere/devices/+/shadow/desired\"]";
    let gateway = Gateway::start_with(&bridge_config(
        &format!("mqtt://127.0.0.1:{}", cloud.port),
        forward,
    ));
    let mut heater = Client::connect(gateway.port, "heater-1").await;
    heater.subscribe(&shadow_topic("heater-1", "delta")).await;
    // Every accepted request yields one document: counting them shows what was applied.
    let mut documents = Client::connect(gateway.port, "local-observer").await;
    documents
        .subscribe(&shadow_topic("heater-1", "document"))
        .await;
    heater
        .publish(
            &shadow_topic("heater-1", "reported"),
            common::json(&json!({"state": {"targetTemp": 55}})),
        )
        .await;
    documents.expect("/shadow/document").await;

    let cloud_desired = format!("{PREFIX}/{}", shadow_topic("heater-1", "desired"));
    let mut watcher = Client::connect(cloud.port, "cloud-watcher").await;
    watcher.subscribe(&cloud_desired).await;
    let service = Client::connect(cloud.port, "cloud-service").await;
    // Retained: the bridge gets it whenever its subscription lands.
    service
        .client
        .publish(
            &cloud_desired,
            rumqttc::QoS::AtLeastOnce,
            true,
            common::json(&json!({"state": {"targetTemp": 60}})),
        )
        .await
        .expect("publish");
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 60}));
    documents.expect("/shadow/document").await;
    watcher.expect("/shadow/desired").await;
    // Live now: the next desired arrives the same way.
    service
        .publish(
            &cloud_desired,
            common::json(&json!({"state": {"targetTemp": 62}})),
        )
        .await;
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 62}));
    documents.expect("/shadow/document").await;
    watcher.expect("/shadow/desired").await;

    // A command from the cloud reaches the device as sent.
    heater
        .subscribe("iotsphere/devices/heater-1/commands/request")
        .await;
    let command = json!({"commandId": "c-1", "name": "reboot", "args": {}});
    service
        .publish(
            &format!("{PREFIX}/iotsphere/devices/heater-1/commands/request"),
            common::json(&command),
        )
        .await;
    let received = heater.expect("/commands/request").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&received.payload).expect("JSON"),
        command
    );

    // A local app's desired: forwarded once; its echo from upstream is not applied again.
    let app = Client::connect(gateway.port, "local-app").await;
    app.publish(
        &shadow_topic("heater-1", "desired"),
        common::json(&json!({"state": {"targetTemp": 64}})),
    )
    .await;
    let up = watcher.expect("/shadow/desired").await;
    let forwarded: Value = serde_json::from_slice(&up.payload).expect("JSON");
    assert_eq!(
        forwarded["state"]["targetTemp"], 64,
        "payloads go up unchanged"
    );
    documents.expect("/shadow/document").await;
    let quiet = Duration::from_secs(1);
    documents.expect_none("/shadow/document", quiet).await;
    watcher.expect_none("/shadow/desired", quiet).await;
    let bridge = bridge_health(&gateway);
    assert_eq!(bridge["received"], 3, "the echo is not counted: {bridge}");
}

/// One device's readings, `seq` 0.., on its telemetry topic.
fn readings(device_id: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|seq| {
            (
                format!("iotsphere/devices/{device_id}/telemetry/temperature"),
                common::json(&json!({"value": 50, "seq": seq})),
            )
        })
        .collect()
}

/// `devices` devices publish `per_device` readings each at once, QoS 1; every one acknowledged.
fn publish_readings(port: u16, devices: usize, per_device: usize) {
    let publishers: Vec<_> = (0..devices)
        .map(|d| {
            std::thread::spawn(move || {
                let device_id = format!("heater-{d}");
                let mut device = RawClient::connect(port, &device_id).expect("connect");
                let acked = device.publish_all(&readings(&device_id, per_device));
                device.disconnect();
                acked
            })
        })
        .collect();
    for publisher in publishers {
        assert_eq!(publisher.join().expect("publisher"), Ok(per_device));
    }
}

/// The upstream topic filter of every device's telemetry.
fn upstream_telemetry() -> String {
    format!("{PREFIX}/iotsphere/devices/+/telemetry/#")
}

/// Reads what `publish_readings` sent from the cloud subscriber: each device's readings
/// exactly once and in order, then nothing more for a second. Returns when the last one
/// arrived.
async fn expect_every_reading_once_in_order(
    subscriber: &mut Client,
    devices: usize,
    per_device: usize,
    gateway: &Gateway,
) -> Instant {
    let mut seqs: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..devices * per_device {
        let message = subscriber.next_within(WAIT).await.unwrap_or_else(|| {
            panic!(
                "only {seqs:?} arrived; bridge {}\n{}",
                bridge_health(gateway),
                gateway.log(),
            )
        });
        let reading: Value = serde_json::from_slice(&message.payload).expect("reading");
        let seq = reading["seq"].as_i64().expect("seq");
        seqs.entry(message.topic).or_default().push(seq);
    }
    let last_arrived = Instant::now();
    subscriber
        .expect_none("/telemetry/temperature", Duration::from_secs(1))
        .await;
    assert_eq!(seqs.len(), devices);
    let expected: Vec<i64> = (0..).take(per_device).collect();
    for (topic, seqs) in &seqs {
        assert_eq!(*seqs, expected, "{topic}: every reading once, in order");
    }
    last_arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_loses_nothing_and_duplicates_nothing() {
    const DEVICES: usize = 4;
    const PER_DEVICE: usize = 250;
    let total = DEVICES * PER_DEVICE;
    let mut cloud = Mosquitto::anonymous();
    // A persistent cloud subscriber: the broker queues for it across the restart.
    let mut subscriber = Client::connect_with(cloud.port, "cloud-archive", false).await;
    subscriber.subscribe(&upstream_telemetry()).await;
    let gateway = Gateway::start_with(&bridge_config(
        &format!("mqtt://127.0.0.1:{}", cloud.port),
        "",
    ));
    wait_for_bridge(&gateway, |b| b["connected"] == true);

    cloud.stop();
    subscriber.expect_disconnected().await;
    wait_for_bridge(&gateway, |b| b["connected"] == false);
    publish_readings(gateway.port, DEVICES, PER_DEVICE);
    let bridge = wait_for_bridge(&gateway, |b| b["queued"].as_u64() >= Some(total as u64));
    assert_eq!(bridge["connected"], false, "{bridge}");

    let restarted = Instant::now();
    cloud.spawn();
    let mut subscriber = Client::connect_with(cloud.port, "cloud-archive", false).await;
    let last_arrived =
        expect_every_reading_once_in_order(&mut subscriber, DEVICES, PER_DEVICE, &gateway).await;
    let replay = last_arrived - restarted;
    let bridge = wait_for_bridge(&gateway, |b| b["queued"] == 0);
    assert_eq!(bridge["reconnects"], 1, "{bridge}");
    assert!(
        bridge["forwarded"].as_u64() >= Some(total as u64),
        "{bridge}"
    );
    eprintln!("{total} messages replayed upstream {replay:?} after the broker restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_devices_were_acknowledged_survives_a_kill_9_while_upstream_is_down() {
    const DEVICES: usize = 2;
    const PER_DEVICE: usize = 100;
    let mut cloud = Mosquitto::anonymous();
    let mut subscriber = Client::connect_with(cloud.port, "cloud-archive", false).await;
    subscriber.subscribe(&upstream_telemetry()).await;
    cloud.stop();
    subscriber.expect_disconnected().await;

    let mut gateway = Gateway::start_with(&bridge_config(
        &format!("mqtt://127.0.0.1:{}", cloud.port),
        "",
    ));
    publish_readings(gateway.port, DEVICES, PER_DEVICE);
    gateway.kill9();
    // With the gateway stopped, the operator sees the bridge's queue.
    let stats = std::process::Command::new(common::BIN)
        .args(["outbox", "stats", "--bridge", "--config"])
        .arg(gateway.config_path())
        .output()
        .expect("outbox stats --bridge");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    // The readings, plus what else is forwarded (system/status).
    let queued = stats["items"].as_u64().unwrap_or(0);
    assert!(queued >= (DEVICES * PER_DEVICE) as u64, "{stats}");
    gateway.spawn(&[]);
    let total = (DEVICES * PER_DEVICE) as u64;
    wait_for_bridge(&gateway, |b| b["queued"].as_u64() >= Some(total));
    cloud.spawn();
    let mut subscriber = Client::connect_with(cloud.port, "cloud-archive", false).await;
    expect_every_reading_once_in_order(&mut subscriber, DEVICES, PER_DEVICE, &gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_speaks_tls_to_mosquitto_with_a_ca_file() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["gw-test"]);
    let plain_port = free_port();
    let file = |name: &str| certs.path().join(name).display().to_string();
    // TLS for the bridge; a plain listener for the test's subscriber.
    let cloud = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nlistener {plain_port} 127.0.0.1\nallow_anonymous true",
        file("ca.crt"),
        file("server.crt"),
        file("server.key"),
    ));
    wait_for_port(plain_port, None);
    let gateway = Gateway::start_with(&bridge_config(
        &format!("mqtts://localhost:{}", cloud.port),
        &format!("ca_file = \"{}\"", file("ca.crt")),
    ));
    let mut subscriber = Client::connect(plain_port, "cloud-service").await;
    reported_state_goes_up(&gateway, &mut subscriber).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_logs_in_with_a_client_certificate_and_a_password() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["gw-test"]);
    let file = |name: &str| certs.path().join(name).display().to_string();
    let passwords = file("mosquitto.passwd");
    for (create, user, password) in [
        (true, "gw-test", "bridge-secret"),
        (false, "cloud-service", "service-secret"),
    ] {
        let mut passwd = Command::new("mosquitto_passwd");
        if create {
            passwd.arg("-c");
        }
        let status = passwd
            .args(["-b", passwords.as_str(), user, password])
            .status()
            .expect("mosquitto_passwd: run scripts/install-test-deps.sh");
        assert!(status.success());
    }
    let plain_port = free_port();
    let cloud = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}",
        file("ca.crt"),
        file("server.crt"),
        file("server.key"),
    ));
    wait_for_port(plain_port, None);
    let password_file = certs.path().join("bridge-password");
    std::fs::write(&password_file, "bridge-secret\n").expect("password file");
    let gateway = Gateway::start_with(&bridge_config(
        &format!("mqtts://127.0.0.1:{}", cloud.port),
        &format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n\
             username = \"gw-test\"\npassword_file = \"{}\"",
            file("ca.crt"),
            file("gw-test.crt"),
            file("gw-test.key"),
            password_file.display()
        ),
    ));
    let mut subscriber = Client::connect_as(
        plain_port,
        "cloud-service",
        "cloud-service",
        "service-secret",
    )
    .await
    .expect("the cloud service logs in");
    reported_state_goes_up(&gateway, &mut subscriber).await;
}

#[test]
fn a_broken_bridge_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    let run = |command: &str, text: &str| {
        std::fs::write(&path, text).expect("write");
        let out = Command::new(common::BIN)
            .args([command, "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "F");
        (out.status.code(), stderr)
    };
    let (code, stderr) = run(
        "check-config",
        "[bridge]\nurl = \"http://cloud:1883\"\nprefix = \"a/#\"\nsubscribe = [\"a/#/b\"]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "F:2:7: bridge.url: must be mqtt://host:port or mqtts://host:port",
            "F:3:10: bridge.prefix: must be a topic without wildcards and without leading or trailing /",
            "F:4:14: bridge.subscribe[0]: `a/#/b` is not an MQTT topic filter",
        ]
    );
    let (code, stderr) = run("check-config", "[bridge]\nurl = \"mqtts://cloud\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("F: bridge.ca_file: mqtts needs the CA"),
        "{stderr}"
    );
    // Well-formed but the file is missing: the gateway does not start, and says why.
    let missing = dir.path().join("missing-ca.crt");
    let (code, stderr) = run(
        "run",
        &format!(
            "[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"\"\n[gateway]\ndata_dir = \"{}\"\n[bridge]\nurl = \"mqtts://127.0.0.1:1\"\nca_file = \"{}\"\n",
            free_port(),
            dir.path().join("data").display(),
            missing.display()
        ),
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bridge.ca_file: {}: No such file",
            missing.display()
        )),
        "{stderr}"
    );
}
