//! The TLS listener and mutual TLS (certificate mode), with mosquitto's clients (OpenSSL)
//! as the independent TLS peer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{dev_certs, free_port, mosquitto_tls, ClientCert, Gateway, BIN};

#[test]
fn tls_works_and_plain_mqtt_on_the_tls_port_does_not() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-1"]);
    let tls_port = free_port();
    let mut gateway = Gateway::configure("");
    // The [mqtt] section is the fixture's; TLS settings come as environment overrides.
    let tls = format!("127.0.0.1:{tls_port}");
    let cert = certs.path().join("server.crt").display().to_string();
    let key = certs.path().join("server.key").display().to_string();
    gateway.spawn(&[
        ("IOTSPHERE__MQTT__TLS_LISTEN", tls.as_str()),
        ("IOTSPHERE__MQTT__CERT", cert.as_str()),
        ("IOTSPHERE__MQTT__KEY", key.as_str()),
    ]);
    common::wait_for_port(tls_port, None);

    // A client that opens TCP and never starts its TLS handshake must not hold up others.
    let _stalled = TcpStream::connect(("127.0.0.1", tls_port)).expect("stalled client");

    let ca = certs.path().join("ca.crt");
    let document = "iotsphere/devices/heater-1/shadow/document";
    let sub = tls_subscribe_once(tls_port, &ca, "technician", None, document);
    let reported = "iotsphere/devices/heater-1/shadow/reported";
    let status = tls_publish(tls_port, &ca, "heater-1", None, reported).status;
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

/// mosquitto_pub of one reported state over TLS.
fn tls_publish(
    port: u16,
    ca: &std::path::Path,
    client_id: &str,
    cert: ClientCert,
    topic: &str,
) -> std::process::Output {
    mosquitto_tls("mosquitto_pub", port, ca, client_id, cert)
        .args(["-q", "1", "-t", topic, "-m", r#"{"state":{"t":1}}"#])
        .output()
        .expect("mosquitto_pub over TLS")
}

/// mosquitto_sub over TLS that prints the first message on `filter` (10 s at most); give
/// it half a second to subscribe.
fn tls_subscribe_once(
    port: u16,
    ca: &std::path::Path,
    client_id: &str,
    cert: ClientCert,
    filter: &str,
) -> std::process::Child {
    let sub = mosquitto_tls("mosquitto_sub", port, ca, client_id, cert)
        .args(["-t", filter, "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub over TLS");
    std::thread::sleep(Duration::from_millis(500));
    sub
}

#[test]
fn mutual_tls_names_each_device_by_its_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-1", "heater-2", "cloud-app"]);
    let foreign = tempfile::tempdir().expect("tempdir");
    dev_certs(foreign.path(), &["heater-1"]);
    let ours = |name: &str| certs.path().join(name);

    let gateway = common::certificate_gateway(
        certs.path(),
        "[[auth.services]]\nname = \"cloud-app\"\nsubscribe = [\"iotsphere/devices/+/shadow/document\"]\n",
    );

    let ca = ours("ca.crt");
    let (app_crt, app_key) = (ours("cloud-app.crt"), ours("cloud-app.key"));
    let app = Some((app_crt.as_path(), app_key.as_path()));
    let documents = "iotsphere/devices/+/shadow/document";
    let sub = tls_subscribe_once(gateway.port, &ca, "cloud-app:dashboard", app, documents);

    let (heater_crt, heater_key) = (ours("heater-1.crt"), ours("heater-1.key"));
    let heater_1 = Some((heater_crt.as_path(), heater_key.as_path()));
    let reported = |id: &str| format!("iotsphere/devices/{id}/shadow/reported");
    // heater-1 may not write heater-2's shadow (denied and dropped), then writes its own.
    let denied = tls_publish(
        gateway.port,
        &ca,
        "heater-1",
        heater_1,
        &reported("heater-2"),
    );
    assert!(
        denied.status.success(),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let ok = tls_publish(
        gateway.port,
        &ca,
        "heater-1",
        heater_1,
        &reported("heater-1"),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = sub.wait_with_output().expect("sub output");
    let document = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the service saw no document");
    assert!(
        document.contains("devices/heater-1/shadow/document") && document.contains("\"version\":1"),
        "the first document is heater-1's own: {document}"
    );

    let no_cert = tls_publish(gateway.port, &ca, "heater-1", None, &reported("heater-1"));
    assert!(
        !no_cert.status.success(),
        "connected without a client certificate"
    );
    let (foreign_crt, foreign_key) = (
        foreign.path().join("heater-1.crt"),
        foreign.path().join("heater-1.key"),
    );
    let foreign_cert = Some((foreign_crt.as_path(), foreign_key.as_path()));
    let wrong_ca = tls_publish(
        gateway.port,
        &ca,
        "heater-1",
        foreign_cert,
        &reported("heater-1"),
    );
    assert!(
        !wrong_ca.status.success(),
        "a certificate of another CA was accepted"
    );
    let borrowed = tls_publish(
        gateway.port,
        &ca,
        "heater-2",
        heater_1,
        &reported("heater-2"),
    );
    assert!(
        !borrowed.status.success(),
        "heater-1's certificate connected as heater-2"
    );

    let log = gateway.log();
    let audited_lines = [
        "publish denied",
        "connection refused",
        "TLS handshake failed",
        "peer=127.0.0.1:",
    ];
    for audited in audited_lines {
        assert!(log.contains(audited), "audit log lacks `{audited}`:\n{log}");
    }
}
