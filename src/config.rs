//! Configuration: one TOML file, overridable by `IOTSPHERE__SECTION__KEY` environment variables.
//!
//! Field technicians edit the file by hand, so every problem is reported with the place it
//! comes from — `FILE:LINE:COL: key: message` for the file, `env VAR: key: message` for an
//! environment variable — and all problems are reported in one run, not the first one only.
//!
//! How: the `config` crate layers the file and the environment and deserializes the result;
//! but it keeps no positions, so the file is first checked on its own with `toml_edit`
//! (which keeps spans): unknown keys come from `serde_ignored`, type errors from
//! `serde_path_to_error` (the offending key is removed and deserialization retried until
//! clean), and value rules from [`GatewayConfig::validate`]. Each problem's key path is
//! then looked up in the span-keeping document.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `IOTSPHERE__MQTT__LISTEN=127.0.0.1:18830`.
pub const ENV_PREFIX: &str = "IOTSPHERE";
const ENV_SEPARATOR: &str = "__";
/// Keys whose environment value is a comma-separated list.
const ENV_LIST_KEYS: [&str; 2] = ["bridge.forward", "bridge.subscribe"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    pub gateway: GatewaySection,
    pub mqtt: MqttSection,
    pub auth: AuthSection,
    pub topics: TopicsSection,
    pub shadow: ShadowSection,
    pub mongodb: MongoSection,
    pub outbox: OutboxSection,
    pub bridge: BridgeSection,
    pub http: HttpSection,
    pub log: LogSection,
    /// `[[alerts]]`: alert rules.
    pub alerts: Vec<AlertRuleConfig>,
}

/// An alert rule as written in the config (checked by `alerts::AlertRule::parse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub name: String,
    /// `telemetry.<kind>[.<field>]`, `reported.<field>` or `offline`.
    pub source: String,
    /// `> N`, `>= N`, `< N`, `<= N`, `== V`, `!= V` or `changed`; empty for `offline`.
    pub condition: String,
    /// How long the condition must hold before the alert fires (and stop before it clears).
    #[serde(rename = "for")]
    pub hold: String,
    pub severity: crate::alert_event::Severity,
    pub cooldown: String,
}

impl Default for AlertRuleConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            source: String::new(),
            condition: String::new(),
            hold: "0s".into(),
            severity: crate::alert_event::Severity::Warning,
            cooldown: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySection {
    pub id: String,
    pub data_dir: PathBuf,
    /// sled page cache; sled's own default (1 GiB) would not fit a 1 GiB Pi.
    pub store_cache_bytes: u64,
    /// Period of the `system/metrics` summary in seconds; 0 = not published.
    pub metrics_interval_secs: u64,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            id: "gw-dev-01".into(),
            data_dir: PathBuf::from("./data"),
            store_cache_bytes: 8 * 1024 * 1024,
            metrics_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttSection {
    pub listen: String,
    pub tls_listen: String,
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    /// QoS 1/2 messages sent to a connection and not yet acknowledged (QoS 2: completed).
    pub max_inflight: usize,
    /// Incoming QoS 2 publishes one connection may leave awaiting PUBREL; one more
    /// disconnects it.
    pub max_awaiting_release: usize,
    /// Retained messages one identity may hold; beyond, a retained publish is delivered
    /// but not kept. Devices retain nothing at all.
    pub max_retained: usize,
    /// Bytes (topic + payload) of one identity's retained messages.
    pub max_retained_bytes: usize,
    /// Bytes of every client's retained messages together (the gateway's own are not
    /// counted).
    pub max_retained_total_bytes: usize,
    /// Time a new TCP connection gets to send CONNECT.
    pub connect_timeout_ms: u16,
    /// Router commit-log segment size per subscription filter (rumqttd `max_segment_size`).
    pub segment_bytes: usize,
    /// Segments kept per filter (rumqttd `max_segment_count`); memory per busy filter is
    /// at most `segment_bytes * segments`.
    pub segments: usize,
    /// Subscriptions one identity may hold, its connections and saved persistent sessions
    /// together; each filter costs the router a commit log (freed when no session uses
    /// it), so this bounds what one client can make the gateway allocate.
    pub max_subscriptions: usize,
    /// The same for a device (password and certificate mode): it needs a few, and each
    /// filter's commit log holds up to `segments × segment_bytes` of what it publishes.
    pub max_device_subscriptions: usize,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1883".into(),
            tls_listen: String::new(),
            cert: "certs/dev/server.crt".into(),
            key: "certs/dev/server.key".into(),
            client_ca: String::new(),
            max_payload_bytes: 65536,
            max_connections: 10000,
            max_inflight: 100,
            max_awaiting_release: 16,
            max_retained: 1000,
            max_retained_bytes: 1024 * 1024,
            max_retained_total_bytes: 16 * 1024 * 1024,
            connect_timeout_ms: 5000,
            segment_bytes: 256 * 1024,
            segments: 4,
            max_subscriptions: 1000,
            max_device_subscriptions: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Anonymous,
    Password,
    Certificate,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSection {
    pub mode: AuthMode,
    pub credentials_file: String,
    /// Cloud services and apps: `[[auth.services]]`.
    pub services: Vec<ServiceRole>,
}

/// A cloud service or app: its username (in the credentials file) and the topic filters
/// it may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceRole {
    pub name: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicsSection {
    pub root: String,
}

impl Default for TopicsSection {
    fn default() -> Self {
        Self {
            root: "iotsphere".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowSection {
    pub max_document_bytes: usize,
    pub max_depth: usize,
    /// Sustained shadow requests per second per device; beyond it requests get 429.
    pub rate_per_sec: u32,
    /// Requests a device may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Dotted leaf paths (`"schedule.mode"`) where a newer reported value supersedes a
    /// pending desired one (README "The desired lifecycle"); empty = desired always waits.
    pub local_wins: Vec<String>,
}

impl Default for ShadowSection {
    fn default() -> Self {
        Self {
            max_document_bytes: 8192,
            max_depth: 6,
            rate_per_sec: 20,
            rate_burst: 50,
            local_wins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeStreams {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MongoSection {
    pub uri: String,
    pub database: String,
    pub change_streams: ChangeStreams,
    pub poll_interval_ms: u64,
    /// Days MongoDB keeps telemetry (a TTL index on `ts`); 0 = for ever.
    pub telemetry_retention_days: u32,
    /// Days MongoDB keeps alerts (a TTL index on `firedAt`); 0 = for ever.
    pub alerts_retention_days: u32,
    /// Readings (and other outbox items) per MongoDB write at most.
    pub telemetry_batch: usize,
    /// After new readings arrive, wait this long for more before writing (fewer, fuller
    /// batches; 0 = write at once).
    pub telemetry_flush_ms: u64,
    /// Name of the lease an active/standby pair shares (both gateways set the same one);
    /// empty = no pair.
    pub lease: String,
    /// The standby takes the active's devices at most this long after the active stopped
    /// renewing the lease.
    pub lease_ttl_ms: u64,
}

impl Default for MongoSection {
    fn default() -> Self {
        Self {
            uri: String::new(),
            database: "iotsphere".into(),
            change_streams: ChangeStreams::Auto,
            poll_interval_ms: 1000,
            telemetry_retention_days: 90,
            alerts_retention_days: 365,
            telemetry_batch: 500,
            telemetry_flush_ms: 0,
            lease: String::new(),
            lease_ttl_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    DropOldest,
    RejectNew,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxSection {
    pub max_bytes: u64,
    /// A duration such as `"7d"`, `"12h"`, `"30m"`.
    pub max_age: String,
    pub when_full: WhenFull,
    /// Replay pace once the uplink is back, in items per second (protects MongoDB when
    /// many gateways return at once).
    pub replay_rate: u32,
    /// Attempts before an item failing for a non-transient reason becomes a dead letter.
    pub max_attempts: u32,
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age: "7d".into(),
            when_full: WhenFull::DropOldest,
            replay_rate: 5000,
            max_attempts: 5,
        }
    }
}

impl OutboxSection {
    /// `max_age` as a duration; `validate` has already refused unparsable values.
    pub fn max_age(&self) -> Option<Duration> {
        humantime::parse_duration(&self.max_age).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeSection {
    /// `mqtt://host:port` or `mqtts://host:port`; empty: no bridge.
    pub url: String,
    /// Empty: `gateway.id` (filled in at load).
    pub client_id: String,
    /// Empty: `gateways/<gateway.id>` (filled in at load).
    pub prefix: String,
    pub forward: Vec<String>,
    pub subscribe: Vec<String>,
    /// PEM CA bundle that signs the upstream broker's certificate (mqtts).
    pub ca_file: String,
    /// PEM client certificate and key, when the upstream broker wants mTLS.
    pub client_cert: String,
    pub client_key: String,
    pub username: String,
    /// A file holding the password (first line), so it is not in this file in clear.
    pub password_file: String,
    pub keepalive_secs: u16,
    /// Reconnect delays: doubling from min to max, with jitter.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            prefix: String::new(),
            forward: [
                "iotsphere/devices/+/shadow/document",
                "iotsphere/devices/+/shadow/delta",
                "iotsphere/devices/+/telemetry/#",
                "iotsphere/system/#",
            ]
            .map(String::from)
            .to_vec(),
            subscribe: [
                "iotsphere/devices/+/shadow/desired",
                "iotsphere/devices/+/commands/request",
            ]
            .map(String::from)
            .to_vec(),
            ca_file: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            username: String::new(),
            password_file: String::new(),
            keepalive_secs: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// Where the upstream broker is, from `bridge.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BridgeSection {
    /// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (default 8883).
    pub fn parsed_url(&self) -> Result<BridgeUrl, String> {
        let shape = "must be mqtt://host:port or mqtts://host:port";
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = self.url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(shape.into());
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !rest.ends_with(']') => {
                (host, port.parse::<u16>().map_err(|_| shape.to_string())?)
            }
            _ => (rest, default_port),
        };
        check_listen_address(&format!("{host}:{port}")).map_err(|_| shape.to_string())?;
        Ok(BridgeUrl {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    fn validate(&self, problem: &mut impl FnMut(&str, String)) {
        let url = self.parsed_url();
        if let Err(message) = &url {
            problem("bridge.url", message.clone());
        }
        let tls = url.is_ok_and(|u| u.tls);
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            problem("bridge.client_id", "must be 1-128 characters".into());
        }
        let prefix_ok = !self.prefix.is_empty()
            && !self.prefix.starts_with('/')
            && !self.prefix.ends_with('/')
            && !self.prefix.contains(['+', '#']);
        if !prefix_ok {
            problem(
                "bridge.prefix",
                "must be a topic without wildcards and without leading or trailing /".into(),
            );
        }
        for (list, filters) in [
            ("bridge.forward", &self.forward),
            ("bridge.subscribe", &self.subscribe),
        ] {
            if let Some((index, bad)) = filters
                .iter()
                .enumerate()
                .find(|(_, f)| !is_valid_filter(f))
            {
                problem(
                    &format!("{list}[{index}]"),
                    format!("`{bad}` is not an MQTT topic filter"),
                );
            }
        }
        if tls && self.ca_file.is_empty() {
            problem(
                "bridge.ca_file",
                "mqtts needs the CA that signs the broker's certificate (for a public CA: \
                 /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            );
        }
        for (key, value) in [
            ("bridge.ca_file", &self.ca_file),
            ("bridge.client_cert", &self.client_cert),
        ] {
            if !tls && !value.is_empty() {
                problem(key, "only used with an mqtts:// url".into());
            }
        }
        if self.client_cert.is_empty() != self.client_key.is_empty() {
            problem(
                "bridge.client_key",
                "client_cert and client_key go together".into(),
            );
        }
        if !self.password_file.is_empty() && self.username.is_empty() {
            problem("bridge.username", "password_file needs a username".into());
        }
        if self.keepalive_secs < 5 {
            problem("bridge.keepalive_secs", "must be at least 5".into());
        }
        if self.reconnect_min_ms < 10 {
            problem("bridge.reconnect_min_ms", "must be at least 10 (ms)".into());
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            problem(
                "bridge.reconnect_max_ms",
                "must be at least reconnect_min_ms".into(),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSection {
    pub listen: String,
    /// Required for the status page when `listen` is not a loopback address.
    pub token: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token: String::new(),
        }
    }
}

impl HttpSection {
    /// True when only this machine can reach `listen` (an IP loopback or `localhost`).
    pub fn is_loopback(&self) -> bool {
        match self.listen.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => self
                .listen
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSection {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// One problem of a configuration, with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `FILE:LINE:COL`, `FILE` when the place is unknown, or `env VAR`.
    pub location: String,
    /// Dotted key path, e.g. `mqtt.listen`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.key, self.message)
    }
}

/// Every problem found in a configuration; the gateway refuses to start on any.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.lines())]
pub struct ConfigErrors(pub Vec<Problem>);

impl ConfigErrors {
    fn lines(&self) -> String {
        self.0
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Environment overrides that apply, as `(VAR, dotted key, value)`.
type EnvOverrides = Vec<(String, String, String)>;

impl GatewayConfig {
    /// Loads `path` with the environment overrides of this process.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
        let overrides = env_overrides(std::env::vars());
        Self::load_with_env(path, &overrides)
    }

    fn load_with_env(path: &Path, overrides: &EnvOverrides) -> Result<GatewayConfig, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                location: file.clone(),
                key: "-".into(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let located = LocatedFile::parse(&file, &text)?;
        let (mut problems, mut from_file) = located.shape_problems();
        from_file.fill_derived_defaults();
        problems.extend(unknown_env_keys(overrides));
        if !problems.is_empty() {
            // Value rules too, on what the file says once the broken keys fall back to
            // their defaults, so one run reports everything.
            let reported: BTreeSet<String> = problems.iter().map(|p| p.key.clone()).collect();
            problems.extend(
                from_file
                    .validate()
                    .into_iter()
                    .filter(|(key, _)| {
                        !reported.contains(key) && located.offset_of(key, false).is_some()
                    })
                    .map(|(key, message)| Problem {
                        location: located.locate(&key, false),
                        key,
                        message,
                    }),
            );
            problems.sort_by_key(|p| located.offset_of(&p.key, false).unwrap_or(usize::MAX));
            return Err(ConfigErrors(problems));
        }

        let mut config = layer_with_config_crate(&file, &text, overrides)?;
        config.fill_derived_defaults();
        let problems: Vec<Problem> = config
            .validate()
            .into_iter()
            .map(|(key, message)| Problem {
                location: located.locate_override_aware(&key, overrides),
                key,
                message,
            })
            .collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Defaults that follow other keys: the bridge's client id and prefix name this
    /// gateway, so two gateways left on the defaults never share an upstream session.
    pub fn fill_derived_defaults(&mut self) {
        if self.bridge.client_id.is_empty() {
            self.bridge.client_id = self.gateway.id.clone();
        }
        if self.bridge.prefix.is_empty() {
            self.bridge.prefix = format!("gateways/{}", self.gateway.id);
        }
    }

    /// Value rules that types cannot express, as `(dotted key, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_string(), message));

        if !crate::topics::is_valid_id(&self.gateway.id) {
            problem(
                "gateway.id",
                "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            );
        }
        if self.gateway.data_dir.as_os_str().is_empty() {
            problem("gateway.data_dir", "must not be empty".into());
        }
        if self.gateway.store_cache_bytes < 1024 * 1024 {
            problem(
                "gateway.store_cache_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        for (key, value) in [
            ("mqtt.listen", &self.mqtt.listen),
            ("mqtt.tls_listen", &self.mqtt.tls_listen),
        ] {
            if !value.is_empty() {
                if let Err(message) = check_listen_address(value) {
                    problem(key, message);
                }
            }
        }
        if self.mqtt.listen.is_empty() && self.mqtt.tls_listen.is_empty() {
            problem(
                "mqtt.listen",
                "no listener: set listen or tls_listen (devices could not connect)".into(),
            );
        }
        if !self.mqtt.tls_listen.is_empty() {
            for (key, value) in [("mqtt.cert", &self.mqtt.cert), ("mqtt.key", &self.mqtt.key)] {
                if value.is_empty() {
                    problem(key, "the TLS listener needs it".into());
                }
            }
        }
        if !self.mqtt.client_ca.is_empty() && self.mqtt.tls_listen.is_empty() {
            problem(
                "mqtt.client_ca",
                "client certificates need the TLS listener: set tls_listen".into(),
            );
        }
        if !(1..=10_000).contains(&self.mqtt.max_subscriptions) {
            problem(
                "mqtt.max_subscriptions",
                "must be between 1 and 10000".into(),
            );
        }
        if !(128..=256 * 1024 * 1024).contains(&self.mqtt.max_payload_bytes) {
            problem(
                "mqtt.max_payload_bytes",
                "must be between 128 and 268435456".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.mqtt.max_connections) {
            problem(
                "mqtt.max_connections",
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=65535).contains(&self.mqtt.max_inflight) {
            problem("mqtt.max_inflight", "must be between 1 and 65535".into());
        }
        if !(1..=10_000).contains(&self.mqtt.max_device_subscriptions) {
            problem(
                "mqtt.max_device_subscriptions",
                "must be between 1 and 10000".into(),
            );
        }
        if !(1..=65535).contains(&self.mqtt.max_awaiting_release) {
            problem(
                "mqtt.max_awaiting_release",
                "must be between 1 and 65535".into(),
            );
        }
        if self.mqtt.max_retained_bytes > self.mqtt.max_retained_total_bytes {
            problem(
                "mqtt.max_retained_bytes",
                "must not exceed max_retained_total_bytes".into(),
            );
        }
        if self.mqtt.connect_timeout_ms < 100 {
            problem(
                "mqtt.connect_timeout_ms",
                "must be at least 100 (ms)".into(),
            );
        }
        if self.mqtt.segment_bytes < self.mqtt.max_payload_bytes + 1024 {
            problem(
                "mqtt.segment_bytes",
                "must exceed max_payload_bytes by at least 1024 (a segment holds whole messages)"
                    .into(),
            );
        }
        if !(1..=1024).contains(&self.mqtt.segments) {
            problem("mqtt.segments", "must be between 1 and 1024".into());
        }
        if self.auth.mode == AuthMode::Certificate {
            if self.mqtt.client_ca.is_empty() {
                problem(
                    "auth.mode",
                    "certificate mode needs mqtt.client_ca (the CA that signs device certificates) and mqtt.tls_listen"
                        .into(),
                );
            }
            if !self.mqtt.listen.is_empty() {
                problem(
                    "mqtt.listen",
                    "certificate mode: clients on the plain listener have no certificate and would all be refused; set listen = \"\""
                        .into(),
                );
            }
        }
        if self.auth.mode == AuthMode::Password && self.auth.credentials_file.is_empty() {
            problem(
                "auth.credentials_file",
                "password mode needs a credentials file (iotsphere-gateway credentials add)".into(),
            );
        }
        for (index, service) in self.auth.services.iter().enumerate() {
            if !crate::topics::is_valid_id(&service.name) {
                problem(
                    &format!("auth.services[{index}].name"),
                    "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
                );
            }
            let filters = service.publish.iter().chain(&service.subscribe);
            if let Some(bad) = filters.into_iter().find(|f| !is_valid_filter(f)) {
                problem(
                    &format!("auth.services[{index}]"),
                    format!("`{bad}` is not an MQTT topic filter"),
                );
            }
        }
        if let Err(message) = crate::topics::Topics::check_root(&self.topics.root) {
            problem("topics.root", message);
        }
        if !(64..=16 * 1024 * 1024).contains(&self.shadow.max_document_bytes) {
            problem(
                "shadow.max_document_bytes",
                "must be between 64 and 16777216".into(),
            );
        }
        if !(1..=32).contains(&self.shadow.max_depth) {
            problem("shadow.max_depth", "must be between 1 and 32".into());
        }
        if self.shadow.rate_per_sec == 0 {
            problem("shadow.rate_per_sec", "must be at least 1".into());
        }
        if self.shadow.rate_burst < self.shadow.rate_per_sec {
            problem("shadow.rate_burst", "must be at least rate_per_sec".into());
        }
        if let Err(bad) = crate::shadow::LocalWins::new(&self.shadow.local_wins) {
            problem("shadow.local_wins", bad.to_string());
        }
        let uri = &self.mongodb.uri;
        let known_scheme = uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://");
        if !uri.is_empty() && !known_scheme {
            problem(
                "mongodb.uri",
                "must start with mongodb:// or mongodb+srv://".into(),
            );
        }
        if self.mongodb.database.is_empty()
            || self
                .mongodb
                .database
                .contains(['/', '\\', '.', ' ', '"', '$'])
        {
            problem(
                "mongodb.database",
                "must be a MongoDB database name (no / \\ . space \" $)".into(),
            );
        }
        if self.mongodb.lease_ttl_ms < 400 {
            problem("mongodb.lease_ttl_ms", "must be at least 400 (ms)".into());
        }
        if self.mongodb.poll_interval_ms < 50 {
            problem(
                "mongodb.poll_interval_ms",
                "must be at least 50 (ms)".into(),
            );
        }
        for (key, days) in [
            (
                "mongodb.telemetry_retention_days",
                self.mongodb.telemetry_retention_days,
            ),
            (
                "mongodb.alerts_retention_days",
                self.mongodb.alerts_retention_days,
            ),
        ] {
            if days > 36_500 {
                problem(
                    key,
                    "must be at most 36500 (100 years); 0 keeps for ever".into(),
                );
            }
        }
        if !(1..=10_000).contains(&self.mongodb.telemetry_batch) {
            problem(
                "mongodb.telemetry_batch",
                "must be between 1 and 10000".into(),
            );
        }
        if self.mongodb.telemetry_flush_ms > 60_000 {
            problem(
                "mongodb.telemetry_flush_ms",
                "must be at most 60000 (ms)".into(),
            );
        }
        let mut rule_names = std::collections::HashSet::new();
        for (index, rule) in self.alerts.iter().enumerate() {
            if let Err((field, message)) = crate::alerts::AlertRule::parse(rule) {
                problem(&format!("alerts[{index}].{field}"), message);
            } else if !rule_names.insert(rule.name.as_str()) {
                problem(
                    &format!("alerts[{index}].name"),
                    format!("`{}` is used by another rule", rule.name),
                );
            }
        }
        if self.outbox.max_bytes < 1024 * 1024 {
            problem(
                "outbox.max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if self.outbox.replay_rate == 0 {
            problem(
                "outbox.replay_rate",
                "must be at least 1 (items per second)".into(),
            );
        }
        if !(1..=1000).contains(&self.outbox.max_attempts) {
            problem("outbox.max_attempts", "must be between 1 and 1000".into());
        }
        if let Err(e) = humantime::parse_duration(&self.outbox.max_age) {
            problem(
                "outbox.max_age",
                format!("not a duration such as \"7d\" or \"12h\": {e}"),
            );
        }
        if !self.bridge.url.is_empty() {
            self.bridge.validate(&mut problem);
        }
        if !self.http.listen.is_empty() {
            if let Err(message) = check_listen_address(&self.http.listen) {
                problem("http.listen", message);
            } else if !self.http.is_loopback() && self.http.token.is_empty() {
                problem(
                    "http.token",
                    format!(
                        "required when http.listen ({}) is not a loopback address: the status \
                         page shows every device; set a long random token",
                        self.http.listen
                    ),
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            problem(
                "log.level",
                format!("not a level or filter (error, warn, info, debug, trace): {e}"),
            );
        }
        problems
    }

    /// Dotted paths of every key the configuration knows, e.g. `mqtt.listen`.
    fn known_keys() -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(GatewayConfig::default()) {
            for (section, value) in sections {
                if let toml::Value::Table(fields) = value {
                    keys.extend(fields.keys().map(|field| format!("{section}.{field}")));
                }
            }
        }
        keys
    }
}

/// An MQTT topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
fn is_valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, level)| match *level {
            "#" => i == levels.len() - 1,
            "+" => true,
            other => !other.contains(['+', '#']),
        })
}

/// A listen address is `host:port`: host an IP or a name, port 1-65535.
pub fn check_listen_address(value: &str) -> Result<(), String> {
    let shape = "must be host:port (e.g. 0.0.0.0:1883), port 1-65535";
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(shape.into())
        } else {
            Ok(())
        };
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| shape.to_string())?;
    let host_is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    match port.parse::<u16>() {
        Ok(port) if port > 0 && host_is_name => Ok(()),
        _ => Err(shape.into()),
    }
}

/// `IOTSPHERE__SECTION__KEY=value` pairs, as `(VAR, section.key, value)`.
fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> EnvOverrides {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    vars.filter_map(|(name, value)| {
        let rest = name.strip_prefix(&prefix)?;
        let key = rest.split(ENV_SEPARATOR).collect::<Vec<_>>().join(".");
        Some((name, key.to_lowercase(), value))
    })
    .collect()
}

fn unknown_env_keys(overrides: &EnvOverrides) -> Vec<Problem> {
    let known = GatewayConfig::known_keys();
    overrides
        .iter()
        .filter(|(_, key, _)| !known.contains(key))
        .map(|(var, key, _)| Problem {
            location: format!("env {var}"),
            key: key.clone(),
            message: "unknown key".into(),
        })
        .collect()
}

/// Layers the file and the environment with the `config` crate and deserializes the result.
fn layer_with_config_crate(
    file: &str,
    text: &str,
    overrides: &EnvOverrides,
) -> Result<GatewayConfig, ConfigErrors> {
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(",")
        .source(Some(
            overrides
                .iter()
                .map(|(var, _, value)| (var.clone(), value.clone()))
                .collect(),
        ));
    for key in ENV_LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .and_then(|layered| layered.try_deserialize::<GatewayConfig>())
        .map_err(|e| {
            let key = match &e {
                config::ConfigError::Type { key: Some(key), .. } => key.clone(),
                _ => "-".into(),
            };
            let location = overrides
                .iter()
                .find(|(_, k, _)| *k == key)
                .map(|(var, _, _)| format!("env {var}"))
                .unwrap_or_else(|| file.to_string());
            ConfigErrors(vec![Problem {
                location,
                key,
                message: e.to_string(),
            }])
        })
}

/// The file's text parsed twice: with spans (to point at problems) and as plain values.
struct LocatedFile<'a> {
    file: &'a str,
    text: &'a str,
    spans: toml_edit::ImDocument<&'a str>,
    values: toml::Table,
}

impl<'a> LocatedFile<'a> {
    fn parse(file: &'a str, text: &'a str) -> Result<Self, ConfigErrors> {
        let syntax_error = |message: String, offset: Option<usize>| {
            let location = offset
                .map(|o| format!("{file}:{}", line_col(text, o)))
                .unwrap_or_else(|| file.to_string());
            ConfigErrors(vec![Problem {
                location,
                key: "-".into(),
                message: format!("TOML syntax: {}", message.trim()),
            }])
        };
        let spans = toml_edit::ImDocument::parse(text)
            .map_err(|e| syntax_error(e.message().to_string(), e.span().map(|s| s.start)))?;
        let values = text
            .parse::<toml::Table>()
            .map_err(|e| syntax_error(e.message().to_string(), e.span().map(|s| s.start)))?;
        Ok(Self {
            file,
            text,
            spans,
            values,
        })
    }

    /// Unknown keys and wrong types, all of them, and the configuration the file gives
    /// once the keys with wrong types are left out (they fall back to their defaults).
    fn shape_problems(&self) -> (Vec<Problem>, GatewayConfig) {
        let mut problems = Vec::new();
        let mut values = self.values.clone();
        let mut repaired = GatewayConfig::default();
        // Each round removes the key that failed, so the loop ends; the bound is a safeguard.
        for _ in 0..256 {
            let mut unknown = Vec::new();
            let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
            let deserializer = serde_ignored::Deserializer::new(
                toml::Value::Table(values.clone()),
                &mut record_unknown,
            );
            let result: Result<GatewayConfig, _> = serde_path_to_error::deserialize(deserializer);
            match result {
                Ok(config) => {
                    repaired = config;
                    problems.extend(unknown.into_iter().map(|key| Problem {
                        location: self.locate(&key, true),
                        message: "unknown key".into(),
                        key,
                    }));
                    break;
                }
                Err(e) => {
                    let key = e.path().to_string();
                    problems.push(Problem {
                        location: self.locate(&key, false),
                        message: e.into_inner().message().to_string(),
                        key: key.clone(),
                    });
                    if !remove_path(&mut values, &key) {
                        break;
                    }
                }
            }
        }
        (problems, repaired)
    }

    fn locate_override_aware(&self, key: &str, overrides: &EnvOverrides) -> String {
        match overrides.iter().find(|(_, k, _)| k == key) {
            Some((var, _, _)) => format!("env {var}"),
            None => self.locate(key, false),
        }
    }

    /// `FILE:LINE:COL` of a dotted key (its name when `at_key`, else its value); `FILE`
    /// alone when the key is not written in the file (a default was used).
    fn locate(&self, key: &str, at_key: bool) -> String {
        match self.offset_of(key, at_key) {
            Some(offset) => format!("{}:{}", self.file, line_col(self.text, offset)),
            None => self.file.to_string(),
        }
    }

    fn offset_of(&self, key: &str, at_key: bool) -> Option<usize> {
        let mut table: &dyn toml_edit::TableLike = self.spans.as_table();
        let mut segments = split_path(key).into_iter().peekable();
        let mut offset = None;
        while let Some(segment) = segments.next() {
            let (name, index) = segment;
            let (k, item) = table.get_key_value(name)?;
            offset = if at_key { k.span() } else { item.span() }
                .or_else(|| k.span())
                .map(|s| s.start);
            if let Some(i) = index {
                offset = item
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(|v| v.span())
                    .map(|s| s.start)
                    .or(offset);
            }
            if segments.peek().is_some() {
                table = item.as_table_like()?;
            }
        }
        offset
    }
}

/// `bridge.forward[2]` → `[("bridge", None), ("forward", Some(2))]`.
fn split_path(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .filter(|s| !s.is_empty() && *s != "?")
        .map(|segment| match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
            None => (segment, None),
        })
        .collect()
}

/// Removes the key a dotted path names (a whole array for an element path).
fn remove_path(table: &mut toml::Table, key: &str) -> bool {
    let segments = split_path(key);
    let Some(((last, _), parents)) = segments.split_last() else {
        return false;
    };
    let mut current = table;
    for (name, _) in parents {
        match current.get_mut(*name) {
            Some(toml::Value::Table(inner)) => current = inner,
            _ => return false,
        }
    }
    current.remove(*last).is_some()
}

/// 1-based `LINE:COL` of a byte offset.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    format!("{line}:{col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, text).expect("write config");
        let overrides = env_overrides(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        GatewayConfig::load_with_env(&path, &overrides).map_err(|e| {
            ConfigErrors(
                e.0.into_iter()
                    .map(|p| Problem {
                        location: p.location.replace(&path.display().to_string(), "F"),
                        ..p
                    })
                    .collect(),
            )
        })
    }

    fn problem_lines(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load_str(text, env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(Problem::to_string).collect(),
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../config/gateway.toml");
        let config = load_str(text, &[]).expect("config/gateway.toml must load");
        assert_eq!(config.topics.root, "iotsphere");
        assert_eq!(config.gateway.id, "gw-dev-01");
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let mut defaults = GatewayConfig::default();
        defaults.fill_derived_defaults();
        assert_eq!(load_str("", &[]).expect("defaults"), defaults);
        let config = load_str("[gateway]\nid = \"gw-b7\"\n", &[]).expect("config");
        assert_eq!(
            (
                config.bridge.client_id.as_str(),
                config.bridge.prefix.as_str()
            ),
            ("gw-b7", "gateways/gw-b7"),
            "the bridge names this gateway unless told otherwise"
        );
    }

    #[test]
    fn every_problem_is_reported_with_line_and_column() {
        let text = "[mqtt]\nlisten = \"nope\"\nmax_connections = \"many\"\nbogus = 1\n\n[shadow]\nmax_depth = 0\n";
        assert_eq!(
            problem_lines(text, &[]),
            vec![
                "F:2:10: mqtt.listen: must be host:port (e.g. 0.0.0.0:1883), port 1-65535",
                "F:3:19: mqtt.max_connections: invalid type: string \"many\", expected usize",
                "F:4:1: mqtt.bogus: unknown key",
                "F:7:13: shadow.max_depth: must be between 1 and 32",
            ]
        );
        // Once the shape is right, value rules are reported, all of them.
        let text = "[mqtt]\nlisten = \"nope\"\n\n[shadow]\nmax_depth = 0\n";
        assert_eq!(
            problem_lines(text, &[]),
            vec![
                "F:2:10: mqtt.listen: must be host:port (e.g. 0.0.0.0:1883), port 1-65535",
                "F:5:13: shadow.max_depth: must be between 1 and 32",
            ]
        );
    }

    #[test]
    fn local_wins_paths_must_name_non_empty_keys() {
        let text = "[shadow]\nlocal_wins = [\"targetTemp\", \"schedule.mode\"]\n";
        assert_eq!(problem_lines(text, &[]), Vec::<String>::new());
        let lines = problem_lines("[shadow]\nlocal_wins = [\"ok\", \"schedule.\"]\n", &[]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("shadow.local_wins: local_wins entry \"schedule.\""),
            "{lines:?}"
        );
    }

    #[test]
    fn a_status_page_reachable_from_the_network_needs_a_token() {
        let lines = problem_lines("[http]\nlisten = \"0.0.0.0:9090\"\n", &[]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("F: http.token: required when http.listen (0.0.0.0:9090)"),
            "{lines:?}"
        );
        for loopback in ["127.0.0.1:9090", "[::1]:9090", "localhost:9090"] {
            let text = format!("[http]\nlisten = \"{loopback}\"\n");
            assert_eq!(
                problem_lines(&text, &[]),
                Vec::<String>::new(),
                "{loopback}"
            );
        }
        let text = "[http]\nlisten = \"0.0.0.0:9090\"\ntoken = \"s3cret-s3cret\"\n";
        assert_eq!(problem_lines(text, &[]), Vec::<String>::new());
    }

    #[test]
    fn a_lease_ttl_too_short_to_renew_is_refused() {
        let lines = problem_lines("[mongodb]\nlease = \"site-1\"\nlease_ttl_ms = 100\n", &[]);
        assert_eq!(
            lines,
            vec!["F:3:16: mongodb.lease_ttl_ms: must be at least 400 (ms)"]
        );
    }

    #[test]
    fn unknown_sections_and_enum_values_are_named() {
        let lines = problem_lines(
            "[mqqt]\nlisten = \"1.2.3.4:1\"\n[log]\nformat = \"xml\"\n",
            &[],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "F:1:2: mqqt: unknown key");
        assert!(
            lines[1].starts_with("F:4:10: log.format: unknown variant `xml`"),
            "{lines:?}"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let lines = problem_lines("[mqtt]\nlisten = \n", &[]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("F:2:"), "{lines:?}");
        assert!(lines[0].contains("TOML syntax"), "{lines:?}");
    }

    #[test]
    fn environment_overrides_win_and_are_named_in_errors() {
        let config = load_str(
            "[mqtt]\nlisten = \"0.0.0.0:1883\"\n",
            &[
                ("IOTSPHERE__MQTT__LISTEN", "127.0.0.1:18830"),
                ("IOTSPHERE__MQTT__MAX_CONNECTIONS", "50"),
                ("IOTSPHERE__BRIDGE__FORWARD", "a/#,b/+"),
            ],
        )
        .expect("overrides apply");
        assert_eq!(config.mqtt.listen, "127.0.0.1:18830");
        assert_eq!(config.mqtt.max_connections, 50);
        assert_eq!(config.bridge.forward, vec!["a/#", "b/+"]);

        assert_eq!(
            problem_lines("", &[("IOTSPHERE__MQTT__LISTEN", "x")]),
            vec!["env IOTSPHERE__MQTT__LISTEN: mqtt.listen: must be host:port (e.g. 0.0.0.0:1883), port 1-65535"]
        );
        assert_eq!(
            problem_lines("", &[("IOTSPHERE__MQTT__LISTN", "x")]),
            vec!["env IOTSPHERE__MQTT__LISTN: mqtt.listn: unknown key"]
        );
        let lines = problem_lines("", &[("IOTSPHERE__MQTT__MAX_CONNECTIONS", "lots")]);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("env IOTSPHERE__MQTT__MAX_CONNECTIONS: mqtt.max_connections:"),
            "{lines:?}"
        );
    }

    #[test]
    fn inline_tables_and_arrays_are_located() {
        let lines = problem_lines(
            "mqtt = { listen = \"a:b\" }\n[bridge]\nforward = [\"ok\", 3]\n",
            &[],
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("F:1:19: mqtt.listen: must be host:port"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("F:3:18: bridge.forward[1]: invalid type"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_bridge_section_is_checked() {
        let config = load_str(
            "[bridge]\nurl = \"mqtts://cloud.example.com\"\nca_file = \"/etc/ssl/ca.pem\"\n",
            &[],
        )
        .expect("a valid bridge");
        let url = config.bridge.parsed_url().expect("url");
        assert_eq!(
            (url.tls, url.host.as_str(), url.port),
            (true, "cloud.example.com", 8883)
        );
        let url = BridgeSection {
            url: "mqtt://[::1]:1884".into(),
            ..BridgeSection::default()
        }
        .parsed_url()
        .expect("url");
        assert_eq!((url.tls, url.host.as_str(), url.port), (false, "::1", 1884));

        let text = "[bridge]\nurl = \"mqtt://cloud:1883\"\nca_file = \"ca.pem\"\n\
                    client_key = \"k.pem\"\npassword_file = \"pw\"\nreconnect_max_ms = 1\n";
        assert_eq!(
            problem_lines(text, &[]),
            vec![
                "F:3:11: bridge.ca_file: only used with an mqtts:// url",
                "F:4:14: bridge.client_key: client_cert and client_key go together",
                "F: bridge.username: password_file needs a username",
                "F:6:20: bridge.reconnect_max_ms: must be at least reconnect_min_ms",
            ]
        );
        for bad in [
            "cloud:1883",
            "mqtt://",
            "mqtt://cloud:0",
            "mqtt://cloud:x",
            "ws://cloud",
        ] {
            let section = BridgeSection {
                url: bad.into(),
                ..BridgeSection::default()
            };
            assert!(section.parsed_url().is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses() {
        for ok in [
            "0.0.0.0:1883",
            "[::1]:1883",
            "localhost:80",
            "gw-1.local:65535",
        ] {
            assert_eq!(check_listen_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1883",
            "host:0",
            "host:65536",
            ":1883",
            "a b:1",
            "1.2.3.4:x",
        ] {
            assert!(check_listen_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_is_one_clear_problem() {
        let err = GatewayConfig::load_with_env(Path::new("/nonexistent/gw.toml"), &Vec::new())
            .expect_err("missing file");
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0]
            .to_string()
            .starts_with("/nonexistent/gw.toml: -: cannot read the file"));
    }

    #[test]
    fn certificate_mode_needs_a_client_ca_and_no_plain_listener() {
        let lines = problem_lines("[auth]\nmode = \"certificate\"\n", &[]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("auth.mode: certificate mode needs mqtt.client_ca"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("mqtt.listen: certificate mode"),
            "{lines:?}"
        );
        let lines = problem_lines("[mqtt]\nclient_ca = \"ca.crt\"\n", &[]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("mqtt.client_ca: client certificates need the TLS listener"));
        let text = "[mqtt]\nlisten = \"\"\ntls_listen = \"0.0.0.0:8883\"\nclient_ca = \"ca.crt\"\n\n[auth]\nmode = \"certificate\"\n";
        assert_eq!(problem_lines(text, &[]), Vec::<String>::new());
    }
}
