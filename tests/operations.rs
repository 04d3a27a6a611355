//! What an operator looks at: /health and /metrics.

mod common;

use common::{http_get, json, shadow_topic, Client, Gateway};
use iotsphere_gateway::health;
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
    heater
        .publish(
            &shadow_topic("h-ops", "desired"),
            json(&json!({"state": {"t": 55}})),
        )
        .await;
    heater.expect("/shadow/delta").await;

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
        "iotsphere_shadow_updates_total 2",
        "iotsphere_rejections_total{code=\"400\"} 1",
        "iotsphere_messages_in_total{kind=\"shadow\"} 3",
        "iotsphere_messages_out_total{kind=\"shadow.document\"} 2",
        "iotsphere_deltas_published_total 1",
        "iotsphere_delta_latency_seconds_count 1",
        "iotsphere_alerts_open 0",
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

/// A size-limited tmpfs (root only): a filesystem the test can fill to make the store
/// unwritable, honestly, and free again.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    /// `None`, with the reason printed, where it cannot be mounted.
    fn mount() -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallTmpfs { dir }),
            Ok(out) => {
                common::skip(&format!(
                    "cannot mount a small tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                common::skip(&format!("no mount command: {e}"));
                None
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem with one file until it is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Polls `/health` until its status is `want`; the last body.
async fn wait_for_health(port: u16, want: u16) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = http_get(port, "/health");
        if status == want {
            return serde_json::from_str(&body).expect("json");
        }
        assert!(
            started.elapsed() < common::WAIT,
            "/health stayed {status} (want {want}): {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_503_while_the_store_cannot_be_written() {
    let Some(tmpfs) = SmallTmpfs::mount() else {
        return;
    };
    let data_dir = tmpfs.path().join("data");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let systemd = NotifySocket::bind();
    let gateway = Gateway::start_with_env(
        "",
        &[
            ("IOTSPHERE__GATEWAY__DATA_DIR", data_dir),
            ("NOTIFY_SOCKET", systemd.path()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let health = wait_for_health(gateway.http_port, 200).await;
    assert_eq!(health["store"], "writable");
    systemd.wait_for_pings(2);

    let filler = tmpfs.fill();
    let health = wait_for_health(gateway.http_port, 503).await;
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["store"], "unwritable");
    let reason = health["reason"].as_str().expect("reason");
    assert!(reason.starts_with("store: "), "{reason}");
    // No WATCHDOG=1 while the store cannot be written (pings were due every 200 ms).
    systemd.drain();
    assert_eq!(
        systemd.pings_within(std::time::Duration::from_millis(1500)),
        0
    );

    // sled keeps its first I/O error for the life of the process: freeing the space is not
    // enough, a restart is (under systemd the watchdog, no longer fed, does it).
    std::fs::remove_file(filler).expect("free the space");
    tokio::time::sleep(health::PROBE_INTERVAL).await;
    assert_eq!(http_get(gateway.http_port, "/health").0, 503);
    let mut gateway = gateway;
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    gateway.spawn(&[("IOTSPHERE__GATEWAY__DATA_DIR", data_dir)]);
    let health = wait_for_health(gateway.http_port, 200).await;
    assert_eq!(health["store"], "writable");
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread")]
async fn system_metrics_arrive_every_interval_not_retained() {
    let gateway =
        Gateway::start_with_env("", &[("IOTSPHERE__GATEWAY__METRICS_INTERVAL_SECS", "1")]);
    let mut technician = Client::connect(gateway.port, "technician").await;
    technician.subscribe("iotsphere/system/metrics").await;
    let first = technician.expect("/system/metrics").await;
    assert!(!first.retain);
    let second = technician.expect("/system/metrics").await;
    let envelope = second.envelope();
    assert_eq!(envelope["metadata"]["messageType"], "system.metrics");
    let payload = &envelope["payload"];
    assert_eq!(payload["connectedClients"], 1);
    assert!(payload["messagesOut"].as_u64().expect("messagesOut") >= 1);
    assert!(payload["residentMemoryBytes"].as_u64().expect("RSS") > 1_000_000);
    assert_eq!(payload["outboxItems"], 0);
}

/// Plays systemd's side of the notify protocol: a unix datagram socket for NOTIFY_SOCKET.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: String,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        NotifySocket {
            socket,
            path: path.to_str().expect("utf-8 path").to_string(),
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        &self.path
    }

    /// The next notification within `wait`.
    fn next_within(&self, wait: std::time::Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(wait.max(std::time::Duration::from_millis(1))))
            .expect("timeout");
        let mut buffer = [0u8; 256];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    /// Everything received until `count` watchdog pings arrived (fails after `WAIT`).
    fn wait_for_pings(&self, count: usize) -> Vec<String> {
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        while received.iter().filter(|m| *m == "WATCHDOG=1").count() < count {
            let left = common::WAIT.saturating_sub(started.elapsed());
            let message = self
                .next_within(left)
                .unwrap_or_else(|| panic!("{count} watchdog pings expected: {received:?}"));
            received.push(message);
        }
        received
    }

    fn drain(&self) {
        while self
            .next_within(std::time::Duration::from_millis(1))
            .is_some()
        {}
    }

    fn pings_within(&self, wait: std::time::Duration) -> usize {
        let until = std::time::Instant::now() + wait;
        let mut pings = 0;
        while let Some(message) =
            self.next_within(until.saturating_duration_since(std::time::Instant::now()))
        {
            pings += usize::from(message == "WATCHDOG=1");
            if std::time::Instant::now() >= until {
                break;
            }
        }
        pings
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_then_watchdog_pings() {
    let systemd = NotifySocket::bind();
    // WatchdogSec=0.4 s: a ping every 200 ms.
    let _gateway = Gateway::start_with_env(
        "",
        &[
            ("NOTIFY_SOCKET", systemd.path()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let received = systemd.wait_for_pings(3);
    assert_eq!(received[0], "READY=1", "{received:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_live_keys_and_reports_the_rest() {
    let mut gateway = Gateway::start();
    let config = std::fs::read_to_string(gateway.config_path()).expect("config");
    let changed = config
        .replace(
            "id = \"gw-test\"",
            "id = \"gw-test\"\nmetrics_interval_secs = 1",
        )
        .replace("level = \"warn\"", "level = \"info\"")
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", gateway.http_port),
            "listen = \"127.0.0.1:1\"",
        )
        + "\n[shadow]\nrate_per_sec = 1\nrate_burst = 1\n";
    std::fs::write(gateway.config_path(), &changed).expect("write config");
    gateway.signal("HUP");
    // Logged at info: it shows only because log.level went from warn to info live.
    wait_for_log(&gateway, "configuration reloaded").await;
    let log = gateway.log();
    assert!(
        log.contains("needs a restart") && log.contains("http.listen"),
        "{log}"
    );

    // system/metrics, off by default for 60 s, now comes every second.
    let mut technician = Client::connect(gateway.port, "technician").await;
    technician.subscribe("iotsphere/system/metrics").await;
    technician.expect("/system/metrics").await;

    // The new rate limit is in force: the second request at once is refused with 429.
    let mut heater = Client::connect(gateway.port, "h-rate").await;
    heater.subscribe(&shadow_topic("h-rate", "+")).await;
    for _ in 0..2 {
        heater
            .publish(
                &shadow_topic("h-rate", "reported"),
                json(&json!({"state": {"t": 1}})),
            )
            .await;
    }
    heater.expect("/shadow/document").await;
    let rejected = heater.expect("/shadow/rejected").await;
    assert_eq!(rejected.payload_json()["code"], 429);

    // A broken file changes nothing and stops nothing.
    std::fs::write(gateway.config_path(), "[shadow]\nmax_depth = \"deep\"\n").expect("write");
    gateway.signal("HUP");
    wait_for_log(&gateway, "configuration not reloaded").await;
    assert!(gateway.is_running());
    assert_eq!(http_get(gateway.http_port, "/health").0, 200);
}

/// Waits until the gateway's log contains `text`.
async fn wait_for_log(gateway: &Gateway, text: &str) {
    let started = std::time::Instant::now();
    while !gateway.log().contains(text) {
        assert!(
            started.elapsed() < common::WAIT,
            "no `{text}` in the log:\n{}",
            gateway.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_new_service_roles_to_a_connected_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    let mut credentials = iotsphere_gateway::auth::Credentials::default();
    credentials.set("cloud-app", "pw-app").expect("hash");
    credentials.save(&file).expect("save");
    let role = "[[auth.services]]\nname = \"cloud-app\"\nsubscribe = [\"iotsphere/devices/+/shadow/document\"]\n";
    let gateway = Gateway::start_with(&format!(
        "[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n{role}",
        file.display()
    ));
    let mut app = Client::connect_as(gateway.port, "cloud-app:1", "cloud-app", "pw-app")
        .await
        .expect("the service connects");
    let telemetry = "iotsphere/devices/+/telemetry/#";
    let refused = app.subscribe_result(telemetry).await;
    assert!(refused.contains(&rumqttc::SubscribeReasonCode::Failure));

    let config = std::fs::read_to_string(gateway.config_path()).expect("config");
    let widened = config.replace(
        "subscribe = [\"iotsphere/devices/+/shadow/document\"]",
        &format!("subscribe = [\"iotsphere/devices/+/shadow/document\", \"{telemetry}\"]"),
    );
    assert_ne!(config, widened);
    std::fs::write(gateway.config_path(), widened).expect("write config");
    gateway.signal("HUP");
    let started = std::time::Instant::now();
    while app
        .subscribe_result(telemetry)
        .await
        .contains(&rumqttc::SubscribeReasonCode::Failure)
    {
        assert!(
            started.elapsed() < common::WAIT,
            "the widened role never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
