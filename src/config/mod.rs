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
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::alert_rule::AlertRuleConfig;

mod load;
#[cfg(test)]
mod tests;
mod validate;

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
    #[serde(with = "off_if_empty")]
    pub listen: Option<String>,
    #[serde(with = "off_if_empty")]
    pub tls_listen: Option<String>,
    pub cert: String,
    pub key: String,
    #[serde(with = "off_if_empty")]
    pub client_ca: Option<String>,
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
            listen: Some("0.0.0.0:1883".into()),
            tls_listen: None,
            cert: "certs/dev/server.crt".into(),
            key: "certs/dev/server.key".into(),
            client_ca: None,
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
    #[serde(with = "off_if_empty")]
    pub credentials_file: Option<String>,
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
    #[serde(with = "off_if_empty")]
    pub uri: Option<String>,
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
    #[serde(with = "off_if_empty")]
    pub lease: Option<String>,
    /// The standby takes the active's devices at most this long after the active stopped
    /// renewing the lease.
    pub lease_ttl_ms: u64,
}

impl Default for MongoSection {
    fn default() -> Self {
        Self {
            uri: None,
            database: "iotsphere".into(),
            change_streams: ChangeStreams::Auto,
            poll_interval_ms: 1000,
            telemetry_retention_days: 90,
            alerts_retention_days: 365,
            telemetry_batch: 500,
            telemetry_flush_ms: 0,
            lease: None,
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
    #[serde(with = "off_if_empty")]
    pub url: Option<String>,
    /// Empty: `gateway.id` (filled in at load).
    pub client_id: String,
    /// Empty: `gateways/<gateway.id>` (filled in at load).
    pub prefix: String,
    pub forward: Vec<String>,
    pub subscribe: Vec<String>,
    /// PEM CA bundle that signs the upstream broker's certificate (mqtts).
    #[serde(with = "off_if_empty")]
    pub ca_file: Option<String>,
    /// PEM client certificate and key, when the upstream broker wants mTLS.
    #[serde(with = "off_if_empty")]
    pub client_cert: Option<String>,
    #[serde(with = "off_if_empty")]
    pub client_key: Option<String>,
    #[serde(with = "off_if_empty")]
    pub username: Option<String>,
    /// A file holding the password (first line), so it is not in this file in clear.
    #[serde(with = "off_if_empty")]
    pub password_file: Option<String>,
    pub keepalive_secs: u16,
    /// Reconnect delays: doubling from min to max, with jitter.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            url: None,
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
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
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
        let url = self.url.as_deref().unwrap_or_default();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
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
        if tls && self.ca_file.is_none() {
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
            if !tls && value.is_some() {
                problem(key, "only used with an mqtts:// url".into());
            }
        }
        if self.client_cert.is_none() != self.client_key.is_none() {
            problem(
                "bridge.client_key",
                "client_cert and client_key go together".into(),
            );
        }
        if self.password_file.is_some() && self.username.is_none() {
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
    /// `None`: no HTTP endpoints (`listen = ""` in the file).
    #[serde(with = "off_if_empty")]
    pub listen: Option<String>,
    /// Required for the status page when `listen` is not a loopback address; `None`
    /// (`token = ""`): no token.
    #[serde(with = "off_if_empty")]
    pub token: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:9090".into()),
            token: None,
        }
    }
}

impl HttpSection {
    /// True when only this machine can reach `listen` (an IP loopback or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let Some(listen) = &self.listen else {
            return true;
        };
        match listen.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => listen
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
        }
    }
}

/// A key whose empty string means "off" for the field techs (`listen = ""`): read as
/// `None`, so the code asks `is_some()` rather than comparing with `""`, and written back
/// as `""`, so the key stays known (env overrides, `known_keys`) and reads the same.
mod off_if_empty {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        let value = Option::<String>::deserialize(deserializer)?;
        Ok(value.filter(|v| !v.is_empty()))
    }

    pub fn serialize<S: Serializer>(
        value: &Option<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.as_deref().unwrap_or_default())
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

impl GatewayConfig {
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
