//! Fixtures for end-to-end tests: the real gateway binary in a temporary directory, and
//! real MQTT clients (rumqttc) talking to it over loopback.
#![allow(dead_code)] // each test binary uses a different subset of the fixtures

pub mod raw;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_iotsphere-gateway");
/// Longest wait for anything a test expects to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Says why a test did not run. Written to stderr directly, not through `eprintln!`, which
/// the test harness captures and hides for a passing test: a skip must never be silent.
pub fn skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A gateway process with its own data directory and port.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    extra_config: String,
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with("")
    }

    /// Starts with extra TOML appended to the base config (sections must not repeat
    /// `[gateway]` or `[mqtt]`; use env overrides for those — see `start_with_env`).
    pub fn start_with(extra_config: &str) -> Gateway {
        Self::start_with_env(extra_config, &[])
    }

    /// Starts with extra TOML and environment variables (e.g. `IOTSPHERE__…` overrides).
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Gateway {
        let mut gateway = Self::configure(extra_config);
        gateway.spawn(env);
        gateway
    }

    /// A gateway not started yet: set ports or pass env overrides to `spawn`.
    pub fn configure(extra_config: &str) -> Gateway {
        Gateway {
            child: None,
            port: free_port(),
            http_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra_config: extra_config.to_string(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    fn write_config(&self) {
        let config = format!(
            "[gateway]\nid = \"gw-test\"\ndata_dir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n[log]\nlevel = \"warn\"\n\n{}",
            self.dir.path().join("data").display(),
            self.port,
            self.http_port,
            self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Starts the process (again) and waits until its listener accepts connections.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        self.write_config();
        let log = std::fs::File::create(self.dir.path().join("gateway.log")).expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.config_path())
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the gateway");
        self.child = Some(child);
        wait_for_port(self.port, self.child.as_mut());
    }

    /// SIGTERM, then the exit status (the test fails if it takes more than 5 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("gateway is running");
        signal(&child, "TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "shutdown took {:?}",
                    started.elapsed()
                );
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(6),
                "the gateway did not exit within 5 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("gateway is running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Sends a signal (e.g. "HUP") to the running gateway.
    pub fn signal(&self, name: &str) {
        signal(self.child.as_ref().expect("gateway is running"), name);
    }

    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "exit status {status:?}");
        self.spawn(&[]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process id of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway is running").id()
    }

    /// VmRSS of the running gateway, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("gateway is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill command");
    assert!(status.success());
}

/// Waits until a loopback port accepts connections (and `child`, if given, still runs).
pub fn wait_for_port(port: u16, mut child: Option<&mut Child>) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the gateway exited before listening: {status:?}");
            }
        }
        assert!(started.elapsed() < WAIT, "port {port} never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A message a client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    /// The envelope decoded from JSON or CBOR.
    pub fn envelope(&self) -> Value {
        iotsphere_gateway::codec::decode_value(&self.payload)
            .map(|(_, v)| v)
            .unwrap_or_else(|e| panic!("{} is not an envelope: {e}", self.topic))
    }

    pub fn payload_json(&self) -> Value {
        self.envelope()["payload"].clone()
    }

    pub fn is_cbor(&self) -> bool {
        iotsphere_gateway::codec::detect(&self.payload)
            == Ok(iotsphere_gateway::codec::Encoding::Cbor)
    }
}

/// `certs dev` into `dir`: the lab CA, a server certificate, and one client certificate per
/// device (CN = id).
pub fn dev_certs(dir: &std::path::Path, devices: &[&str]) {
    let mut command = Command::new(BIN);
    command.args(["certs", "dev", "--out"]).arg(dir);
    for device in devices {
        command.args(["--device", device]);
    }
    let out = command.output().expect("certs dev");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate and its key.
pub type ClientCert<'a> = Option<(&'a std::path::Path, &'a std::path::Path)>;

/// `mosquitto_pub` or `mosquitto_sub` (OpenSSL) to the TLS listener as `client_id`,
/// trusting `ca`, with `cert` when given.
pub fn mosquitto_tls(
    program: &str,
    port: u16,
    ca: &std::path::Path,
    client_id: &str,
    cert: ClientCert,
) -> Command {
    let mut command = Command::new(program);
    command
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-i",
            client_id,
            "--cafile",
        ])
        .arg(ca);
    if let Some((crt, key)) = cert {
        command.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    command
}

/// A gateway in certificate mode, TLS only, with the lab certificates of `certs` (made by
/// [`dev_certs`]) and `extra_config` (its `[auth]` section is this one's).
pub fn certificate_gateway(certs: &std::path::Path, extra_config: &str) -> Gateway {
    let mut gateway =
        Gateway::configure(&format!("[auth]\nmode = \"certificate\"\n\n{extra_config}"));
    // No plain listener: the fixture waits on the TLS port instead.
    gateway.port = free_port();
    let tls = format!("127.0.0.1:{}", gateway.port);
    let path = |name: &str| certs.join(name).display().to_string();
    gateway.spawn(&[
        ("IOTSPHERE__MQTT__LISTEN", ""),
        ("IOTSPHERE__MQTT__TLS_LISTEN", tls.as_str()),
        ("IOTSPHERE__MQTT__CERT", path("server.crt").as_str()),
        ("IOTSPHERE__MQTT__KEY", path("server.key").as_str()),
        ("IOTSPHERE__MQTT__CLIENT_CA", path("ca.crt").as_str()),
    ]);
    gateway
}

/// A real MQTT client (rumqttc) with its event loop on a task.
pub struct Client {
    pub client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Received>,
    suback: mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
    disconnected: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(port: u16, client_id: &str) -> Client {
        Self::connect_with(port, client_id, true).await
    }

    pub async fn connect_with(port: u16, client_id: &str, clean_session: bool) -> Client {
        Self::try_connect(port, client_id, clean_session, None)
            .await
            .unwrap_or_else(|e| panic!("{client_id} could not connect: {e}"))
    }

    /// Connects with a username and password; the error text when refused.
    pub async fn connect_as(
        port: u16,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Client, String> {
        Self::try_connect(port, client_id, true, Some((username, password))).await
    }

    pub async fn try_connect(
        port: u16,
        client_id: &str,
        clean_session: bool,
        login: Option<(&str, &str)>,
    ) -> Result<Client, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(clean_session);
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (suback_tx, suback) = mpsc::unbounded_channel();
        let (disc_tx, disconnected) = mpsc::unbounded_channel();
        let (connack_tx, connack) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let task = tokio::spawn(async move {
            let mut connack_tx = Some(connack_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connack_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let _ = suback_tx.send(ack.return_codes);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = connack_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        let _ = disc_tx.send(e.to_string());
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, connack)
            .await
            .map_err(|_| "no CONNACK in time".to_string())?
            .map_err(|_| "the event loop ended".to_string())??;
        Ok(Client {
            client,
            incoming,
            suback,
            disconnected,
            task,
        })
    }

    /// Subscribes and asserts the broker granted it.
    pub async fn subscribe(&mut self, filter: &str) {
        let codes = self.subscribe_result(filter).await;
        assert!(
            codes
                .iter()
                .all(|c| *c != rumqttc::SubscribeReasonCode::Failure),
            "{filter} refused: {codes:?}"
        );
    }

    /// Subscribes; the SUBACK return codes.
    pub async fn subscribe_result(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, self.suback.recv())
            .await
            .expect("SUBACK in time")
            .unwrap_or_default()
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// The next message, or None after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on a topic ending with `suffix`, skipping others.
    pub async fn expect(&mut self, suffix: &str) -> Received {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("no message on …{suffix} within {WAIT:?}"));
            if message.topic.ends_with(suffix) {
                return message;
            }
        }
    }

    /// Nothing more arrives on topics ending with `suffix` within `wait`.
    pub async fn expect_none(&mut self, suffix: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(message) = self
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            assert!(
                !message.topic.ends_with(suffix),
                "unexpected message on {}: {}",
                message.topic,
                String::from_utf8_lossy(&message.payload)
            );
        }
    }

    /// Waits until the broker closed this client's connection; returns the error text.
    pub async fn expect_disconnected(&mut self) -> String {
        tokio::time::timeout(WAIT, self.disconnected.recv())
            .await
            .expect("disconnected in time")
            .unwrap_or_default()
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// `ROOT/devices/{id}/shadow/{kind}` with the default root.
pub fn shadow_topic(device_id: &str, kind: &str) -> String {
    format!("iotsphere/devices/{device_id}/shadow/{kind}")
}

pub fn cbor(value: &Value) -> Vec<u8> {
    iotsphere_gateway::codec::encode(iotsphere_gateway::codec::Encoding::Cbor, value)
}

pub fn json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}

/// The MongoDB a test talks to: a real replica set when `MONGODB_URI` is set, otherwise a
/// fresh in-process tests/mongo-double. Each test gets its own database.
pub struct Mongo {
    pub uri: String,
    pub database: String,
    pub client: mongodb::Client,
    pub double: Option<mongo_double::Server>,
}

impl Mongo {
    pub async fn start() -> Mongo {
        Self::start_with(false).await
    }

    /// `standalone`: a double without replica set (no change streams). With `MONGODB_URI`
    /// the real server is used as it is.
    pub async fn start_with(standalone: bool) -> Mongo {
        Self::start_double(mongo_double::Options {
            standalone,
            ..Default::default()
        })
        .await
    }

    /// A double with these options (or the real server of `MONGODB_URI`).
    pub async fn start_double(options: mongo_double::Options) -> Mongo {
        let database = format!("iotsphere_test_{}", uuid::Uuid::now_v7().simple());
        let (uri, double) = match std::env::var("MONGODB_URI") {
            Ok(uri) if !uri.is_empty() => (uri, None),
            _ => {
                let double = mongo_double::Server::start(options)
                    .await
                    .expect("start mongo-double");
                (double.uri(), Some(double))
            }
        };
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        Mongo {
            uri,
            database,
            client,
            double,
        }
    }

    pub fn db(&self) -> mongodb::Database {
        self.client.database(&self.database)
    }

    /// The `[mongodb]` section pointing a gateway at this database.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[mongodb]\nuri = \"{}\"\ndatabase = \"{}\"\npoll_interval_ms = 100\n{extra}\n",
            self.uri, self.database
        )
    }

    /// Polls `find_one` until `check` accepts the document (or panics after `WAIT`).
    pub async fn wait_for(
        &self,
        collection: &str,
        filter: mongodb::bson::Document,
        check: impl Fn(&mongodb::bson::Document) -> bool,
    ) -> mongodb::bson::Document {
        let started = Instant::now();
        loop {
            if let Ok(Some(doc)) = self
                .db()
                .collection::<mongodb::bson::Document>(collection)
                .find_one(filter.clone())
                .await
            {
                if check(&doc) {
                    return doc;
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "{collection} never held a matching {filter}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A device subscribed to its shadow topics that has reported once (`targetTemp` 50), so
/// its shadow exists locally and in MongoDB (version 1).
pub async fn reported_device(gateway: &Gateway, mongo: &Mongo, id: &str) -> Client {
    let mut device = Client::connect(gateway.port, id).await;
    device.subscribe(&shadow_topic(id, "+")).await;
    device
        .publish(
            &shadow_topic(id, "reported"),
            json(&serde_json::json!({"state": {"targetTemp": 50}})),
        )
        .await;
    device.expect("/shadow/document").await;
    mongo
        .wait_for("shadows", mongodb::bson::doc! {"_id": id}, |d| {
            d.get_i64("version") == Ok(1)
        })
        .await;
    device
}

/// GET an HTTP path on loopback; returns (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, "")
}

/// GET with extra header lines (each ending in `\r\n`); returns (status, body).
pub fn http_get_with(port: u16, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// A raw MQTT 3.1.1 CONNECT, clean session, for `client_id`.
pub fn connect_packet(client_id: &str, keepalive_secs: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keepalive_secs.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

/// A minimal MQTT 3.1.1 client over a blocking socket, for tests that must know exactly
/// which QoS 1 publishes were acknowledged (PUBACK read) when the gateway is killed.
pub struct RawClient {
    stream: TcpStream,
}

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

impl RawClient {
    pub fn connect(port: u16, client_id: &str) -> std::io::Result<RawClient> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        stream.write_all(&connect_packet(client_id, 60))?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack)?;
        if connack != [0x20, 2, 0, 0] {
            return Err(std::io::Error::other(format!("CONNACK {connack:?}")));
        }
        Ok(RawClient { stream })
    }

    /// Sends every message at QoS 1 (pipelined), then reads the PUBACKs in order. Returns
    /// how many were acknowledged; on an error, how many were before it.
    pub fn publish_all(&mut self, messages: &[(String, Vec<u8>)]) -> Result<usize, usize> {
        use std::io::{Read, Write};
        let mut wire = Vec::new();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let pkid = (i % 65535 + 1) as u16;
            let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&pkid.to_be_bytes());
            body.extend_from_slice(payload);
            wire.push(0x32);
            remaining_length(body.len(), &mut wire);
            wire.extend(body);
        }
        if self.stream.write_all(&wire).is_err() {
            return Err(0);
        }
        for acked in 0..messages.len() {
            let mut puback = [0u8; 4];
            if self.stream.read_exact(&mut puback).is_err() || puback[0] != 0x40 {
                return Err(acked);
            }
        }
        Ok(messages.len())
    }

    /// DISCONNECT, then wait for the broker to close (so nothing unread is reset).
    pub fn disconnect(mut self) {
        use std::io::{Read, Write};
        let _ = self.stream.write_all(&[0xe0, 0]);
        let _ = self.stream.read(&mut [0u8; 1]);
    }
}

/// `iotsphere-gateway credentials add`, the password on stdin as an operator types it.
pub fn add_credentials(file: &std::path::Path, name: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["credentials", "add", "--file"])
        .arg(file)
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("credentials add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password on stdin");
    assert!(child.wait().expect("wait").success());
}
