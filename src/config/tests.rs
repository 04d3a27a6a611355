use std::path::Path;

use super::load::env_overrides;
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
    let text = include_str!("../../config/gateway.toml");
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
    assert_eq!(config.mqtt.listen.as_deref(), Some("127.0.0.1:18830"));
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
        url: Some("mqtt://[::1]:1884".into()),
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
            url: Some(bad.into()),
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

#[test]
fn an_empty_string_reads_as_off() {
    let config = load_str("[http]\nlisten = \"\"\ntoken = \"\"\n", &[]).expect("loads");
    assert_eq!((config.http.listen, config.http.token), (None, None));
    let config = load_str(
        "[http]\nlisten = \"127.0.0.1:9091\"\n",
        &[("IOTSPHERE__HTTP__LISTEN", "")],
    )
    .expect("loads");
    assert_eq!(
        config.http.listen, None,
        "an empty override turns it off too"
    );
    let config = load_str("", &[("IOTSPHERE__HTTP__TOKEN", "long-random")]).expect("loads");
    assert_eq!(config.http.listen.as_deref(), Some("127.0.0.1:9090"));
    assert_eq!(config.http.token.as_deref(), Some("long-random"));
}
