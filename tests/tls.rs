//! The TLS listener, with mosquitto's clients (OpenSSL) as the independent TLS peer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{dev_certs, free_port, Gateway, BIN};

#[test]
fn tls_works_and_plain_mqtt_on_the_tls_port_does_not() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-1"]);
    let tls_port = free_port();
    let mut gateway = Gateway::start_with("");
    // The [mqtt] section is the fixture's; TLS settings come as environment overrides.
    let tls = format!("127.0.0.1:{tls_port}");
    let cert = certs.path().join("server.crt").display().to_string();
    let key = certs.path().join("server.key").display().to_string();
    assert!(gateway.terminate().success());
    gateway.spawn(&[
        ("IOTSPHERE__MQTT__TLS_LISTEN", tls.as_str()),
        ("IOTSPHERE__MQTT__CERT", cert.as_str()),
        ("IOTSPHERE__MQTT__KEY", key.as_str()),
    ]);
    common::wait_for_port(tls_port, None);

    // A client that opens TCP and never starts its TLS handshake must not hold up others.
    let _stalled = TcpStream::connect(("127.0.0.1", tls_port)).expect("stalled client");

    let ca = certs.path().join("ca.crt");
    let port = tls_port.to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "--cafile"])
        .arg(&ca)
        .args([
            "-t",
            "iotsphere/devices/heater-1/shadow/document",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub over TLS");
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile"])
        .arg(&ca)
        .args([
            "-q",
            "1",
            "-t",
            "iotsphere/devices/heater-1/shadow/reported",
            "-m",
            r#"{"state":{"t":1}}"#,
        ])
        .status()
        .expect("mosquitto_pub over TLS");
    assert!(status.success());
    let out = sub.wait_with_output().expect("sub output");
    assert!(out.status.success(), "no document over TLS");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"version\":1"));

    // A plain MQTT CONNECT on the TLS port gets no CONNACK.
    let mut plain = TcpStream::connect(("127.0.0.1", tls_port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    plain
        .write_all(&[
            0x10, 0x0f, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 3, b'a', b'b', b'c',
        ])
        .expect("send");
    let mut reply = [0u8; 4];
    let read = plain.read(&mut reply).unwrap_or(0);
    assert!(
        read == 0 || reply[0] != 0x20,
        "a CONNACK came back over plain TCP: {reply:?}"
    );
    // And the plain listener is unaffected.
    assert!(TcpStream::connect(("127.0.0.1", gateway.port)).is_ok());
}

#[test]
fn a_missing_or_mismatched_certificate_stops_the_start_with_a_clear_error() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-1"]);
    let run = |cert: &str, key: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        Command::new(BIN)
            .args([
                "run",
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
            ])
            .env(
                "IOTSPHERE__MQTT__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "IOTSPHERE__MQTT__TLS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("IOTSPHERE__HTTP__LISTEN", "")
            .env("IOTSPHERE__MQTT__CERT", cert)
            .env("IOTSPHERE__MQTT__KEY", key)
            .env("IOTSPHERE__GATEWAY__DATA_DIR", dir.path())
            .output()
            .expect("run")
    };
    let path = |name: &str| certs.path().join(name).display().to_string();
    let missing = run(&path("nope.crt"), &path("server.key"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.crt"));
    let mismatched = run(&path("server.crt"), &path("heater-1.key"));
    assert_eq!(mismatched.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&mismatched.stderr).contains("do not belong together"));
}
