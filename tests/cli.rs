//! The command line as an operator uses it: check-config, --version, refusing bad config,
//! clean shutdown on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, BIN};

fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "F");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let (code, _, stderr) = check_config(
        "[mqtt]\nlisten = \"0.0.0.0:99999\"\nmax_payload_bytes = \"big\"\n\n[shadw]\nx = 1\n\n[log]\nformat = \"xml\"\n",
    );
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].starts_with("F:2:10: mqtt.listen: "), "{stderr}");
    assert!(
        lines[1].starts_with("F:3:21: mqtt.max_payload_bytes: invalid type"),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("F:5:2: shadw: unknown key"),
        "{stderr}"
    );
    assert!(
        lines[3].starts_with("F:9:10: log.format: unknown variant `xml`"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_a_syntax_error_with_its_line() {
    let (code, _, stderr) = check_config("[mqtt\nlisten = 1\n");
    assert_eq!(code, 2);
    assert!(stderr.starts_with("F:1:"), "{stderr}");
    assert!(stderr.contains("TOML syntax"), "{stderr}");
}

#[test]
fn run_refuses_a_broken_config_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[gateway]\nid = \"has space\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2:6: gateway.id: must be 1-64 characters"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/gateway.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/gateway.toml: -: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("iotsphere-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn sigterm_exits_0_within_5_seconds() {
    let mut gateway = Gateway::start();
    let started = Instant::now();
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
        ])
        .env("IOTSPHERE__MQTT__LISTEN", format!("127.0.0.1:{port}"))
        .env("IOTSPHERE__GATEWAY__DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("mqtt.listen `127.0.0.1:{port}`")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}
