//! The monitoring kit of deploy/: the Grafana dashboard and the Prometheus alerting rules
//! query only metrics that a running gateway (uplink on MongoDB, in an active/standby
//! lease) has in /metrics, cover what an operator watches, and `promtool` accepts the rules
//! and passes their unit tests (tests/prometheus-rules.test.yml).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{http_get, json, reported_device, shadow_topic, Gateway, Mongo, WAIT};
use serde_json::Value;
use yaml_rust2::YamlLoader;

const DASHBOARD: &str = include_str!("../deploy/grafana-dashboard.json");
const RULES: &str = include_str!("../deploy/prometheus-rules.yml");

/// Series that Prometheus makes itself: the dashboard shows the rules' firing alerts.
const PROMETHEUS_OWN: &[&str] = &["ALERTS"];

/// What the dashboard must show (issue 23), by the metric that shows it.
const DASHBOARD_COVERS: &[&str] = &[
    "iotsphere_connected_clients",
    "iotsphere_messages_in_total",
    "iotsphere_messages_out_total",
    "iotsphere_deltas_published_total",
    "iotsphere_delta_latency_seconds_bucket",
    "iotsphere_alerts_open",
    "iotsphere_store_bytes_written_total",
    "iotsphere_shadow_updates_total",
    "iotsphere_outbox_items",
    "iotsphere_outbox_oldest_age_seconds",
    "iotsphere_uplink_mode",
    "iotsphere_lease_role",
    "iotsphere_bridge_connected",
    "iotsphere_rejections_total",
    "iotsphere_resident_memory_bytes",
    "iotsphere_store_writable",
    "iotsphere_flapping_clients",
];

/// Every PromQL query of the dashboard: the panels' targets and the variables' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", Value::String(query)) => {
                            out.push(query.clone());
                        }
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        // The datasource variable's "query" names a plugin, not PromQL.
        if variable["type"] == "query" {
            walk(variable, &mut queries);
        }
    }
    queries
}

/// (alert name, expression) of every rule.
fn rules() -> Vec<(String, String)> {
    let docs = YamlLoader::load_from_str(RULES).expect("prometheus-rules.yml is YAML");
    let mut rules = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .expect("an alerting rule")
                .to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            rules.push((name, expr));
        }
    }
    rules
}

/// PromQL keywords whose `( … )` is a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// The other keywords, and aggregations written before their `by (…)`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names a PromQL expression (or Grafana's `label_values(metric, label)`) reads:
/// identifiers that are not functions, keywords, label names, strings or durations.
fn metric_names(query: &str) -> BTreeSet<String> {
    let query = match query.strip_prefix("label_values(") {
        Some(arguments) => arguments.rsplit_once(',').map_or(arguments, |(m, _)| m),
        None => query,
    };
    let chars: Vec<char> = query.chars().collect();
    // From i, past the next `close` outside quotes (from an opening quote: past the string).
    let skip_past = |mut i: usize, close: char| {
        let mut quote = None;
        while i < chars.len() {
            match (quote, chars[i]) {
                (Some(_), '\\') => i += 1,
                (Some(q), c) if c == q && c == close => return i + 1,
                (Some(q), c) if c == q => quote = None,
                (None, c @ ('"' | '\'' | '`')) => quote = Some(c),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    let mut names = BTreeSet::new();
    let mut previous = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_past(i + 1, '}');
        } else if c == '[' {
            i = skip_past(i + 1, ']');
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_past(i, c);
        } else if c == '(' && LABEL_LISTS.contains(&previous.as_str()) {
            i = skip_past(i + 1, ')');
            previous.clear();
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, a number or a duration.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let keyword = KEYWORDS.contains(&word.as_str()) || LABEL_LISTS.contains(&word.as_str());
            if next != Some(&'(') && !keyword {
                names.insert(word.clone());
            }
            previous = word;
        } else {
            if !c.is_whitespace() {
                previous.clear();
            }
            i += 1;
        }
    }
    names
}

/// The sample names of a Prometheus text exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |q: &str| metric_names(q).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (code) (rate(iotsphere_rejections_total{instance=~"$instance", x="a}b"}[$__rate_interval]))"#
        ),
        ["iotsphere_rejections_total"]
    );
    assert_eq!(
        names("iotsphere_uplink_connected == 0 and on (job, instance) iotsphere_uplink_mode"),
        ["iotsphere_uplink_connected", "iotsphere_uplink_mode"]
    );
    assert_eq!(
        names("count by (pair) (a == 1) unless on (pair) count by (pair) (b offset 5m > 0.5)"),
        ["a", "b"]
    );
    assert_eq!(
        names(r#"count by (alertname) (ALERTS{alertstate="firing"})"#),
        ["ALERTS"]
    );
    assert_eq!(
        names("label_values(iotsphere_connected_clients, instance)"),
        ["iotsphere_connected_clients"]
    );
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("grafana-dashboard.json is JSON");
    assert_eq!(dashboard["uid"], "iotsphere-gateway");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "{title}: id used twice"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: says what it shows"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: queries something");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL target");
            assert!(
                expr.contains("iotsphere_") || expr.contains("ALERTS"),
                "{title}: {expr}"
            );
        }
    }
    let queried: BTreeSet<String> = dashboard_queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    for name in DASHBOARD_COVERS {
        assert!(
            queried.contains(*name),
            "the dashboard shows nothing of {name}"
        );
    }
    // The "Alerts firing" panel selects the rules by their common prefix.
    assert!(DASHBOARD.contains(r#"alertname=~\"Iotsphere.*\""#));
    for (name, _) in rules() {
        assert!(name.starts_with("Iotsphere"), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_the_kit_is_in_metrics_of_a_running_gateway() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config("lease = \"monitoring-kit\""));
    // Labelled families appear with their first sample: a message in and out, a delta, a
    // rejection; the uplink's mode, the outbox and the lease role with the uplink.
    let device = reported_device(&gateway, &mongo, "heater-1").await;
    device
        .publish(
            &shadow_topic("heater-1", "desired"),
            json(&serde_json::json!({"state": {"targetTemp": 60}})),
        )
        .await;
    device
        .publish(&shadow_topic("heater-1", "reported"), b"not json".to_vec())
        .await;

    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("grafana-dashboard.json");
    let mut wanted: BTreeSet<String> = dashboard_queries(&dashboard)
        .iter()
        .chain(rules().iter().map(|(_, expr)| expr))
        .flat_map(|q| metric_names(q))
        .filter(|name| !PROMETHEUS_OWN.contains(&name.as_str()))
        .collect();
    let started = Instant::now();
    let mut text;
    loop {
        let (status, body) = http_get(gateway.http_port, "/metrics");
        assert_eq!(status, 200);
        text = body;
        wanted = wanted.difference(&exposed_names(&text)).cloned().collect();
        if wanted.is_empty() || started.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        wanted.is_empty(),
        "queried by deploy/ but not in /metrics: {wanted:?}\n{text}"
    );
}

/// promtool from PATH, or where scripts/install-test-deps.sh unpacks Debian's
/// `prometheus` package (only its promtool: no server is installed or started).
fn promtool() -> Option<PathBuf> {
    let unpacked = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/iotsphere-gateway/promtool/usr/bin/promtool"));
    let on_path = Command::new("promtool").arg("--version").output().is_ok();
    if on_path {
        return Some(PathBuf::from("promtool"));
    }
    unpacked.filter(|path| path.is_file())
}

#[test]
fn promtool_checks_the_rules_and_passes_their_tests() {
    let Some(promtool) = promtool() else {
        common::skip("promtool is not installed (scripts/install-test-deps.sh unpacks it)");
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        ["check", "rules", "deploy/prometheus-rules.yml"],
        ["test", "rules", "tests/prometheus-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(root)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
