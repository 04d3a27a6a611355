//! Value rules that types cannot express, one function per concern; each names the
//! dotted key of what it refuses.

use super::{check_listen_address, is_valid_filter, AuthMode, GatewayConfig};

impl GatewayConfig {
    /// Value rules that types cannot express, as `(dotted key, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_string(), message));
        check_gateway(self, &mut problem);
        check_listeners(self, &mut problem);
        check_mqtt_limits(self, &mut problem);
        check_auth(self, &mut problem);
        check_shadow(self, &mut problem);
        check_mongodb(self, &mut problem);
        check_alerts(self, &mut problem);
        check_outbox(self, &mut problem);
        check_http_and_log(self, &mut problem);
        problems
    }
}

/// The gateway section.
fn check_gateway(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if !crate::topics::is_valid_id(&config.gateway.id) {
        problem(
            "gateway.id",
            "must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
        );
    }
    if config.gateway.data_dir.as_os_str().is_empty() {
        problem("gateway.data_dir", "must not be empty".into());
    }
    if config.gateway.store_cache_bytes < 1024 * 1024 {
        problem(
            "gateway.store_cache_bytes",
            "must be at least 1048576 (1 MiB)".into(),
        );
    }
}

/// The MQTT listeners and their TLS files.
fn check_listeners(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    for (key, value) in [
        ("mqtt.listen", &config.mqtt.listen),
        ("mqtt.tls_listen", &config.mqtt.tls_listen),
    ] {
        if let Some(value) = value {
            if let Err(message) = check_listen_address(value) {
                problem(key, message);
            }
        }
    }
    if config.mqtt.listen.is_none() && config.mqtt.tls_listen.is_none() {
        problem(
            "mqtt.listen",
            "no listener: set listen or tls_listen (devices could not connect)".into(),
        );
    }
    if config.mqtt.tls_listen.is_some() {
        for (key, value) in [
            ("mqtt.cert", &config.mqtt.cert),
            ("mqtt.key", &config.mqtt.key),
        ] {
            if value.is_empty() {
                problem(key, "the TLS listener needs it".into());
            }
        }
    }
    if config.mqtt.client_ca.is_some() && config.mqtt.tls_listen.is_none() {
        problem(
            "mqtt.client_ca",
            "client certificates need the TLS listener: set tls_listen".into(),
        );
    }
}

/// The broker's per-client and memory limits.
fn check_mqtt_limits(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if !(1..=10_000).contains(&config.mqtt.max_subscriptions) {
        problem(
            "mqtt.max_subscriptions",
            "must be between 1 and 10000".into(),
        );
    }
    if !(128..=256 * 1024 * 1024).contains(&config.mqtt.max_payload_bytes) {
        problem(
            "mqtt.max_payload_bytes",
            "must be between 128 and 268435456".into(),
        );
    }
    if !(1..=1_000_000).contains(&config.mqtt.max_connections) {
        problem(
            "mqtt.max_connections",
            "must be between 1 and 1000000".into(),
        );
    }
    if !(1..=65535).contains(&config.mqtt.max_inflight) {
        problem("mqtt.max_inflight", "must be between 1 and 65535".into());
    }
    if !(1..=10_000).contains(&config.mqtt.max_device_subscriptions) {
        problem(
            "mqtt.max_device_subscriptions",
            "must be between 1 and 10000".into(),
        );
    }
    if !(1..=65535).contains(&config.mqtt.max_awaiting_release) {
        problem(
            "mqtt.max_awaiting_release",
            "must be between 1 and 65535".into(),
        );
    }
    if config.mqtt.max_retained_bytes > config.mqtt.max_retained_total_bytes {
        problem(
            "mqtt.max_retained_bytes",
            "must not exceed max_retained_total_bytes".into(),
        );
    }
    if config.mqtt.connect_timeout_ms < 100 {
        problem(
            "mqtt.connect_timeout_ms",
            "must be at least 100 (ms)".into(),
        );
    }
    if config.mqtt.segment_bytes < config.mqtt.max_payload_bytes + 1024 {
        problem(
            "mqtt.segment_bytes",
            "must exceed max_payload_bytes by at least 1024 (a segment holds whole messages)"
                .into(),
        );
    }
    if !(1..=1024).contains(&config.mqtt.segments) {
        problem("mqtt.segments", "must be between 1 and 1024".into());
    }
}

/// The auth mode, its files and the services' filters.
fn check_auth(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if config.auth.mode == AuthMode::Certificate {
        if config.mqtt.client_ca.is_none() {
            problem(
                "auth.mode",
                "certificate mode needs mqtt.client_ca (the CA that signs device certificates) and mqtt.tls_listen"
                    .into(),
            );
        }
        if config.mqtt.listen.is_some() {
            problem(
                "mqtt.listen",
                "certificate mode: clients on the plain listener have no certificate and would all be refused; set listen = \"\""
                    .into(),
            );
        }
    }
    if config.auth.mode == AuthMode::Password && config.auth.credentials_file.is_none() {
        problem(
            "auth.credentials_file",
            "password mode needs a credentials file (iotsphere-gateway credentials add)".into(),
        );
    }
    for (index, service) in config.auth.services.iter().enumerate() {
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
}

/// The topic root and the shadow limits.
fn check_shadow(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if let Err(message) = crate::topics::Topics::check_root(&config.topics.root) {
        problem("topics.root", message);
    }
    if !(64..=16 * 1024 * 1024).contains(&config.shadow.max_document_bytes) {
        problem(
            "shadow.max_document_bytes",
            "must be between 64 and 16777216".into(),
        );
    }
    if !(1..=32).contains(&config.shadow.max_depth) {
        problem("shadow.max_depth", "must be between 1 and 32".into());
    }
    if config.shadow.rate_per_sec == 0 {
        problem("shadow.rate_per_sec", "must be at least 1".into());
    }
    if config.shadow.rate_burst < config.shadow.rate_per_sec {
        problem("shadow.rate_burst", "must be at least rate_per_sec".into());
    }
    if let Err(bad) = crate::shadow::LocalWins::new(&config.shadow.local_wins) {
        problem("shadow.local_wins", bad.to_string());
    }
}

/// The MongoDB uplink.
fn check_mongodb(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    let known_scheme =
        |uri: &str| uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://");
    if config
        .mongodb
        .uri
        .as_deref()
        .is_some_and(|uri| !known_scheme(uri))
    {
        problem(
            "mongodb.uri",
            "must start with mongodb:// or mongodb+srv://".into(),
        );
    }
    if config.mongodb.database.is_empty()
        || config
            .mongodb
            .database
            .contains(['/', '\\', '.', ' ', '"', '$'])
    {
        problem(
            "mongodb.database",
            "must be a MongoDB database name (no / \\ . space \" $)".into(),
        );
    }
    if config.mongodb.lease_ttl_ms < 400 {
        problem("mongodb.lease_ttl_ms", "must be at least 400 (ms)".into());
    }
    if config.mongodb.poll_interval_ms < 50 {
        problem(
            "mongodb.poll_interval_ms",
            "must be at least 50 (ms)".into(),
        );
    }
    for (key, days) in [
        (
            "mongodb.telemetry_retention_days",
            config.mongodb.telemetry_retention_days,
        ),
        (
            "mongodb.alerts_retention_days",
            config.mongodb.alerts_retention_days,
        ),
    ] {
        if days > 36_500 {
            problem(
                key,
                "must be at most 36500 (100 years); 0 keeps for ever".into(),
            );
        }
    }
    if !(1..=10_000).contains(&config.mongodb.telemetry_batch) {
        problem(
            "mongodb.telemetry_batch",
            "must be between 1 and 10000".into(),
        );
    }
    if config.mongodb.telemetry_flush_ms > 60_000 {
        problem(
            "mongodb.telemetry_flush_ms",
            "must be at most 60000 (ms)".into(),
        );
    }
}

/// The alert rules (parsed as the alert task will) and their names.
fn check_alerts(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    let mut rule_names = std::collections::HashSet::new();
    for (index, rule) in config.alerts.iter().enumerate() {
        if let Err((field, message)) = crate::alert_rule::AlertRule::parse(rule) {
            problem(&format!("alerts[{index}].{field}"), message);
        } else if !rule_names.insert(rule.name.as_str()) {
            problem(
                &format!("alerts[{index}].name"),
                format!("`{}` is used by another rule", rule.name),
            );
        }
    }
}

/// The outbox bounds (and the bridge, whose outbox is the same kind).
fn check_outbox(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if config.outbox.max_bytes < 1024 * 1024 {
        problem(
            "outbox.max_bytes",
            "must be at least 1048576 (1 MiB)".into(),
        );
    }
    if config.outbox.replay_rate == 0 {
        problem(
            "outbox.replay_rate",
            "must be at least 1 (items per second)".into(),
        );
    }
    if !(1..=1000).contains(&config.outbox.max_attempts) {
        problem("outbox.max_attempts", "must be between 1 and 1000".into());
    }
    if let Err(e) = humantime::parse_duration(&config.outbox.max_age) {
        problem(
            "outbox.max_age",
            format!("not a duration such as \"7d\" or \"12h\": {e}"),
        );
    }
    if config.bridge.url.is_some() {
        config.bridge.validate(problem);
    }
}

/// The HTTP listener and its token, and the log filter.
fn check_http_and_log(config: &GatewayConfig, problem: &mut impl FnMut(&str, String)) {
    if let Some(listen) = &config.http.listen {
        if let Err(message) = check_listen_address(listen) {
            problem("http.listen", message);
        } else if !config.http.is_loopback() && config.http.token.is_none() {
            problem(
                "http.token",
                format!(
                    "required when http.listen ({}) is not a loopback address: the status \
                     page shows every device; set a long random token",
                    listen
                ),
            );
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log.level) {
        problem(
            "log.level",
            format!("not a level or filter (error, warn, info, debug, trace): {e}"),
        );
    }
}
