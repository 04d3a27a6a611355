//! deploy/: the compose file and the systemd unit say what the gateway relies on.
//! `docker compose config` checks the compose file where Docker's compose plugin exists;
//! elsewhere the YAML is parsed and checked here (and the skip is printed).

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = include_str!("../deploy/docker-compose.yml");
const UNIT: &str = include_str!("../deploy/iotsphere-gateway.service");

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(COMPOSE).expect("docker-compose.yml is YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        other => panic!("expected text, found {other:?}"),
    }
}

#[test]
fn compose_starts_a_replica_set_and_a_healthy_gateway() {
    let doc = compose();
    let mongo = &doc["services"]["mongo"];
    let gateway = &doc["services"]["gateway"];
    assert!(!mongo.is_badvalue(), "a mongo service");
    assert!(!gateway.is_badvalue(), "a gateway service");

    assert!(text(&mongo["command"]).contains("--replSet rs0"));
    let init = text(&mongo["healthcheck"]["test"]);
    assert!(
        init.contains("rs.initiate") && init.contains("rs0"),
        "{init}"
    );

    assert_eq!(
        gateway["depends_on"]["mongo"]["condition"].as_str(),
        Some("service_healthy"),
        "the gateway waits for the primary"
    );
    let environment = &gateway["environment"];
    assert!(text(&environment["IOTSPHERE__MONGODB__URI"]).contains("replicaSet=rs0"));
    assert!(
        !environment["IOTSPHERE__HTTP__TOKEN"].is_badvalue(),
        "the gateway listens on all interfaces in its container: it needs a token"
    );
    assert!(text(&gateway["healthcheck"]["test"]).contains("/health"));
    assert!(!doc["volumes"]["gateway-data"].is_badvalue());
}

#[test]
fn docker_compose_accepts_the_file() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        // Straight to stderr: the harness hides `eprintln!` of a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED docker_compose_accepts_the_file: `docker compose` is not available here; \
             the YAML checks of compose_starts_a_replica_set_and_a_healthy_gateway ran"
        );
        return;
    }
    let out = Command::new("docker")
        .args([
            "compose",
            "-f",
            "deploy/docker-compose.yml",
            "config",
            "--quiet",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("IOTSPHERE_HTTP_TOKEN", "test-token")
        .output()
        .expect("docker compose config");
    assert!(
        out.status.success(),
        "docker compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_is_notify_with_a_watchdog_and_hardened() {
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=iotsphere-gateway",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        // The Debian package's paths (scripts/package-deb.sh).
        "ExecStart=/usr/bin/iotsphere-gateway run --config /etc/iotsphere-gateway/gateway.toml",
        // Not started while the configuration is the packaged default; scripts/test-deb.sh
        // runs this condition in a chroot.
        "ExecCondition=/bin/sh -c 'if cmp -s /usr/share/iotsphere-gateway/gateway.toml /etc/iotsphere-gateway/gateway.toml; then",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "{line} missing in deploy/iotsphere-gateway.service"
        );
    }
    // The notify socket is a unix datagram socket.
    let families = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .expect("RestrictAddressFamilies");
    assert!(families.contains("AF_UNIX"));
}
