//! Smoke test of `loadgen`: a short `fanin` against a mosquitto started on a free port
//! (scripts/install-test-deps.sh installs it), a short `roundtrip` against the gateway
//! when its binary was built next to this test (`cargo test --workspace` builds it;
//! `cargo test -p iotsphere-bench` alone may not, and then that part is skipped), and
//! `mongochange` and `fanin --mongo` against the gateway with a mongo-double as its
//! MongoDB when both binaries are there, and `fleetwatch` on that double; and `failover`
//! against an active/standby pair of gateways on a mongo-double.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Kills the broker when the test ends, whatever happens.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn wait_for_port(port: u16, broker: &mut Broker) {
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = broker.0.try_wait() {
            panic!("the broker exited with {status}");
        }
        assert!(
            Instant::now() < until,
            "the broker did not listen on {port} within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mosquitto_path() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Runs loadgen and returns its JSON line.
fn loadgen(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run loadgen");
    assert!(output.status.success(), "loadgen {args:?} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("one JSON line");
    serde_json::from_str(line).expect("the line is JSON")
}

/// Runs a scenario (its words, space-separated) against the broker at `address` within
/// `deadline` seconds.
fn against(address: &str, deadline: &str, scenario: &str) -> Value {
    let mut args = vec!["--broker", address, "--deadline", deadline];
    args.extend(scenario.split_whitespace());
    loadgen(&args)
}

/// Nothing missing, nothing twice, no errors (`results`: where the run reports them).
fn assert_exactly_once(run: &Value, results: &Value) {
    assert_eq!(results["missing"], 0, "{run}");
    assert_eq!(results["duplicates"], 0, "{run}");
    assert_eq!(run["errors"]["count"], 0, "{run}");
}

#[test]
fn fanin_against_mosquitto() {
    let mosquitto =
        mosquitto_path().expect("mosquitto is not installed: run scripts/install-test-deps.sh");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n"
        ),
    )
    .expect("write mosquitto.conf");
    let mut broker = Broker(
        Command::new(mosquitto)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start mosquitto"),
    );
    wait_for_port(port, &mut broker);

    let address = format!("127.0.0.1:{port}");
    let run = against(
        &address,
        "10",
        "fanin --publishers 5 --messages 2000 --rate 4000 --qos 1",
    );
    let results = &run["results"];
    assert_eq!(results["sent"], 2000, "{run}");
    assert_eq!(results["lost"], 0, "{run}");
    assert_eq!(results["duplicates"], 0, "{run}");
    assert_eq!(results["acked"], 2000, "{run}");
    assert!(
        results["delivered_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{run}"
    );
    assert_eq!(run["errors"]["count"], 0, "{run}");
}

/// A binary of this workspace, if it was built in this test's target directory.
fn workspace_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/smoke-HASH → target/<profile>/NAME
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
}

/// Starts the gateway with config/gateway.toml, a data dir in `dir` and `env` on top, on
/// a free port; returns it and the port.
fn start_gateway(gateway: &Path, dir: &Path, env: &[(&str, &str)]) -> (Broker, u16) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = dir.join("gateway.toml");
    std::fs::copy(workspace.join("config/gateway.toml"), &config)
        .expect("copy config/gateway.toml");
    let port = free_port();
    let mut broker = Broker(
        Command::new(gateway)
            .args(["run", "--config"])
            .arg(&config)
            .env("IOTSPHERE__MQTT__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "IOTSPHERE__HTTP__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("IOTSPHERE__GATEWAY__DATA_DIR", dir.join("data"))
            .env("IOTSPHERE__LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway"),
    );
    wait_for_port(port, &mut broker);
    (broker, port)
}

#[test]
fn roundtrip_against_the_gateway() {
    let Some(gateway) = workspace_binary("iotsphere-gateway") else {
        eprintln!(
            "skipped: no iotsphere-gateway binary next to this test (run cargo test --workspace)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (_gateway, port) = start_gateway(&gateway, dir.path(), &[]);

    let address = format!("127.0.0.1:{port}");
    let run = against(
        &address,
        "10",
        "roundtrip --devices 20 --rounds 2 --rate 100",
    );
    let results = &run["results"];
    assert_eq!(results["desired_sent"], 40, "{run}");
    assert_exactly_once(&run, results);
    assert!(
        results["desired_to_delta"]["p50_us"].as_u64().unwrap_or(0) > 0,
        "{run}"
    );
}

/// The gateway and mongo-double binaries, if both were built next to this test.
fn gateway_and_double() -> Option<(PathBuf, PathBuf)> {
    let found = workspace_binary("iotsphere-gateway").zip(workspace_binary("mongo-double"));
    if found.is_none() {
        eprintln!(
            "skipped: no iotsphere-gateway and mongo-double binaries next to this test (run cargo test --workspace)"
        );
    }
    found
}

/// Starts a mongo-double on a free port; returns it and its URI (replica set rs0).
fn start_double(double: &Path) -> (Broker, String) {
    let port = free_port();
    let mut mongo = Broker(
        Command::new(double)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start mongo-double"),
    );
    wait_for_port(port, &mut mongo);
    (mongo, format!("mongodb://127.0.0.1:{port}/?replicaSet=rs0"))
}

#[test]
fn mongochange_and_ingest_against_the_gateway_and_a_mongo_double() {
    let Some((gateway, double)) = gateway_and_double() else {
        return;
    };
    let (_mongo, uri) = start_double(&double);
    let dir = tempfile::tempdir().expect("temp dir");
    let (_gateway, port) = start_gateway(
        &gateway,
        dir.path(),
        &[("IOTSPHERE__MONGODB__URI", uri.as_str())],
    );
    let address = format!("127.0.0.1:{port}");

    let run = against(
        &address,
        "20",
        &format!("mongochange --mongo {uri} --devices 20 --rounds 2 --rate 100"),
    );
    let results = &run["results"];
    assert_eq!(results["changes_sent"], 40, "{run}");
    assert_exactly_once(&run, results);

    let run = against(
        &address,
        "20",
        &format!("fanin --publishers 5 --messages 2000 --qos 1 --no-subscriber --mongo {uri}"),
    );
    let landed = &run["results"]["landed"];
    assert_eq!(landed["stored"], 2000, "{run}");
    assert_exactly_once(&run, landed);

    // Three gateways' change streams: each gets its third of the changes, or all of them
    // without the ownership $match.
    for (filter, per_gateway) in [("", 20), ("--no-filter", 60)] {
        let run = against(
            &address,
            "20",
            &format!("fleetwatch --mongo {uri} --gateways 3 --devices 30 --changes 60 {filter}"),
        );
        let results = &run["results"];
        assert_eq!(results["events_per_gateway_min"], per_gateway, "{run}");
        assert_eq!(results["events_per_gateway_max"], per_gateway, "{run}");
    }
}

/// Waits until the gateway's `/health/uplink` on `http_port` contains `wanted`.
fn wait_for_uplink(http_port: u16, wanted: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut body = String::new();
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", http_port)) {
            let _ = stream.write_all(b"GET /health/uplink HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let _ = stream.read_to_string(&mut body);
        }
        if body.contains(wanted) {
            return;
        }
        assert!(
            Instant::now() < until,
            "/health/uplink never showed {wanted} within 10 s (last: {body})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failover_from_a_killed_active_to_its_standby() {
    let Some((gateway, double)) = gateway_and_double() else {
        return;
    };
    let (_mongo, uri) = start_double(&double);
    let mut pair = Vec::new();
    for (id, role) in [("gw-a", "active"), ("gw-b", "standby")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = free_port();
        let listen = format!("127.0.0.1:{http}");
        let (broker, port) = start_gateway(
            &gateway,
            dir.path(),
            &[
                ("IOTSPHERE__MONGODB__URI", uri.as_str()),
                ("IOTSPHERE__MONGODB__LEASE", "site-1"),
                ("IOTSPHERE__MONGODB__LEASE_TTL_MS", "1000"),
                ("IOTSPHERE__GATEWAY__ID", id),
                ("IOTSPHERE__HTTP__LISTEN", listen.as_str()),
            ],
        );
        wait_for_uplink(http, &format!("\"lease\":\"{role}\""));
        pair.push((broker, port, dir));
    }
    let active_pid = pair[0].0 .0.id().to_string();
    let run = against(
        &format!("127.0.0.1:{}", pair[0].1),
        "15",
        &format!(
            "failover --mongo {uri} --standby 127.0.0.1:{} --active-pid {active_pid} \
             --lease site-1 --lease-ttl-ms 1000 --devices 20 --settle-ms 300",
            pair[1].1
        ),
    );
    let results = &run["results"];
    assert_eq!(results["holder"], "gw-b", "{run}");
    assert_eq!(results["reconnected_standby"], 20, "{run}");
    assert_eq!(results["delivered"], 20, "{run}");
    assert_eq!(results["missing"], 0, "{run}");
    assert_eq!(results["duplicated"], 0, "{run}");
    assert_eq!(results["wrong"], 0, "{run}");
    assert_eq!(run["deadline_hit"], false, "{run}");
    assert_eq!(run["errors"]["count"], 0, "{run}");
}
