//! Issue 17 items 5 and 6: a client id names one identity. A device's id is for that
//! device only; services and users connect as `{name}` or `{name}:{suffix}`. A connected
//! client id is taken over, and a persistent session resumed, only by the identity that
//! holds it, and a resumed session keeps only the subscriptions its ACL still allows.
//! Presence (`connected`/`lastSeen` in MongoDB) is written for devices only.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Connect, Raw};
use common::{
    add_credentials, dev_certs, json, mosquitto_tls, shadow_topic, Client, Gateway, Mongo,
};
use mongodb::bson::{doc, Document};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(700);
const BAD_LOGIN: u8 = 4;

const READER: &str = "[[auth.services]]\nname = \"reader\"\nsubscribe = [\"iotsphere/devices/+/shadow/document\"]\n\n[[auth.services]]\nname = \"cloud-app\"\npublish = [\"iotsphere/devices/+/shadow/desired\"]\n";

fn password_gateway(extra: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    for name in ["heater-d", "reader", "cloud-app", "ops"] {
        add_credentials(&file, name, &format!("pw-{name}"));
    }
    let gateway = Gateway::start_with(&format!(
        "[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n{READER}\n{extra}",
        file.display()
    ));
    (gateway, dir)
}

fn as_heater_d() -> Connect<'static> {
    Connect::new("heater-d").login("heater-d", "pw-heater-d")
}

/// Sets heater-d's desired temperature as the cloud app.
async fn set_desired(gateway: &Gateway, temp: u32) {
    let app = Client::connect_as(gateway.port, "cloud-app", "cloud-app", "pw-cloud-app")
        .await
        .expect("cloud-app");
    app.publish(
        &shadow_topic("heater-d", "desired"),
        json(&json!({"state": {"targetTemp": temp}})),
    )
    .await;
    app.disconnect().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_but_the_device_takes_its_client_id_or_its_session() {
    let (gateway, _dir) = password_gateway("");
    // heater-d leaves a persistent session subscribed to its delta.
    let mut heater = Raw::connected(gateway.port, &as_heater_d().persistent()).expect("heater-d");
    assert_eq!(
        heater
            .subscribe(1, "iotsphere/devices/heater-d/shadow/delta")
            .expect("SUBACK"),
        1
    );
    heater.disconnect();

    // A read-only service asks for heater-d's client id, clean session off: refused.
    let mut thief = Raw::open(gateway.port).expect("tcp");
    let refused = thief
        .connect(
            &Connect::new("heater-d")
                .login("reader", "pw-reader")
                .persistent(),
        )
        .expect("CONNACK");
    assert_eq!(
        refused,
        (false, BAD_LOGIN),
        "the service got heater-d's session"
    );

    // The session is still heater-d's: a delta set meanwhile reaches it on resume.
    set_desired(&gateway, 61).await;
    let mut heater = Raw::open(gateway.port).expect("tcp");
    let (present, code) = heater
        .connect(&as_heater_d().persistent())
        .expect("CONNACK");
    assert_eq!((present, code), (true, 0));
    let got = heater.publishes_within(Duration::from_secs(3));
    assert!(
        got.iter().any(|p| p
            .topic_payload()
            .is_some_and(|(t, _)| t.ends_with("/shadow/delta"))),
        "{got:?}"
    );

    // While it is connected, the service cannot kick it off either.
    let mut thief = Raw::open(gateway.port).expect("tcp");
    assert_eq!(
        thief
            .connect(&Connect::new("heater-d").login("reader", "pw-reader"))
            .expect("CONNACK")
            .1,
        BAD_LOGIN
    );
    set_desired(&gateway, 62).await;
    let got = heater.publishes_within(Duration::from_secs(3));
    assert!(!got.is_empty(), "heater-d lost its connection to the thief");
    // A service's own ids: its name, or name:suffix.
    for client_id in ["reader", "reader:dashboard-2"] {
        Raw::connected(
            gateway.port,
            &Connect::new(client_id).login("reader", "pw-reader"),
        )
        .unwrap_or_else(|e| panic!("{client_id}: {e}"))
        .disconnect();
    }
    assert!(gateway.log().contains("client id not this identity's"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_session_keeps_only_what_its_acl_still_allows() {
    let (gateway, _dir) = password_gateway("");
    let mut reader = Raw::connected(
        gateway.port,
        &Connect::new("reader:1")
            .login("reader", "pw-reader")
            .persistent(),
    )
    .expect("reader");
    assert_eq!(
        reader
            .subscribe(1, "iotsphere/devices/+/shadow/document")
            .expect("SUBACK"),
        1
    );
    reader.disconnect();
    // The operator takes the reader's right to documents away.
    let config = std::fs::read_to_string(gateway.config_path()).expect("config");
    std::fs::write(
        gateway.config_path(),
        config.replace(
            "subscribe = [\"iotsphere/devices/+/shadow/document\"]",
            "subscribe = []",
        ),
    )
    .expect("write");
    gateway.signal("HUP");
    wait_until_refused(&gateway, "iotsphere/devices/+/shadow/document").await;

    let mut reader = Raw::open(gateway.port).expect("tcp");
    let (present, code) = reader
        .connect(
            &Connect::new("reader:1")
                .login("reader", "pw-reader")
                .persistent(),
        )
        .expect("CONNACK");
    assert_eq!((present, code), (true, 0), "the session itself is resumed");
    let heater = Client::connect_as(gateway.port, "heater-d", "heater-d", "pw-heater-d")
        .await
        .expect("heater-d");
    heater
        .publish(
            &shadow_topic("heater-d", "reported"),
            json(&json!({"state": {"t": 1}})),
        )
        .await;
    let got = reader.publishes_within(QUIET);
    assert!(
        got.is_empty(),
        "a refused subscription was resumed: {got:?}"
    );
    assert!(gateway.log().contains("subscribe denied"));
}

/// Waits until a fresh reader connection is refused `filter` (the reload applied).
async fn wait_until_refused(gateway: &Gateway, filter: &str) {
    let started = Instant::now();
    loop {
        let mut probe = Raw::connected(
            gateway.port,
            &Connect::new("reader:probe").login("reader", "pw-reader"),
        )
        .expect("probe");
        let code = probe.subscribe(1, filter).expect("SUBACK");
        probe.disconnect();
        if code == 0x80 {
            return;
        }
        assert!(started.elapsed() < common::WAIT, "the reload never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_made_by_another_identity_is_discarded() {
    let (gateway, _dir) = password_gateway("");
    // `ops` is a device now, and leaves a persistent session under its own topics.
    let ops = Connect::new("ops").login("ops", "pw-ops").persistent();
    let mut device = Raw::connected(gateway.port, &ops).expect("ops as a device");
    assert_eq!(
        device
            .subscribe(1, "iotsphere/devices/ops/#")
            .expect("SUBACK"),
        1
    );
    device.disconnect();
    // Then the operator makes `ops` a service.
    let config = std::fs::read_to_string(gateway.config_path()).expect("config");
    std::fs::write(
        gateway.config_path(),
        format!("{config}\n[[auth.services]]\nname = \"ops\"\nsubscribe = [\"iotsphere/devices/+/shadow/document\"]\n"),
    )
    .expect("write");
    gateway.signal("HUP");
    let started = Instant::now();
    loop {
        let mut service = Raw::open(gateway.port).expect("tcp");
        let (present, code) = service.connect(&ops).expect("CONNACK");
        if code == 0 && !present {
            break; // a fresh session: the device's was discarded
        }
        assert!(
            !present || started.elapsed() < common::WAIT,
            "the service resumed the device's session"
        );
        service.disconnect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gateway.log().contains("persistent session discarded"));
}

/// The `shadows` document of `id`, if MongoDB has one.
async fn shadow_doc(mongo: &Mongo, id: &str) -> Option<Document> {
    mongo
        .db()
        .collection::<Document>("shadows")
        .find_one(doc! {"_id": id})
        .await
        .expect("find")
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_is_written_for_devices_only() {
    let mongo = Mongo::start().await;
    let (gateway, _dir) = password_gateway(&mongo.config(""));
    let reader = Client::connect_as(gateway.port, "reader", "reader", "pw-reader")
        .await
        .expect("reader");
    let heater = Client::connect_as(gateway.port, "heater-d", "heater-d", "pw-heater-d")
        .await
        .expect("heater-d");
    mongo
        .wait_for("shadows", doc! {"_id": "heater-d"}, |d| {
            d.get_bool("connected") == Ok(true)
        })
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        shadow_doc(&mongo, "reader").await,
        None,
        "a service became a device"
    );
    reader.disconnect().await;
    heater.disconnect().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_presence_is_for_ids_that_hold_a_shadow() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let device = common::reported_device(&gateway, &mongo, "h-real").await;
    device.disconnect().await;
    mongo
        .wait_for("shadows", doc! {"_id": "h-real"}, |d| {
            d.get_bool("connected") == Ok(false)
        })
        .await;
    let ghost = Client::connect(gateway.port, "ghost-1").await;
    let again = Client::connect(gateway.port, "h-real").await;
    mongo
        .wait_for("shadows", doc! {"_id": "h-real"}, |d| {
            d.get_bool("connected") == Ok(true)
        })
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        shadow_doc(&mongo, "ghost-1").await,
        None,
        "a made-up id became a device"
    );
    ghost.disconnect().await;
    again.disconnect().await;
}

#[test]
fn certificate_mode_a_services_certificate_takes_no_device_id() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path(), &["heater-d", "reader"]);
    let gateway = common::certificate_gateway(certs.path(), READER);
    let ca = certs.path().join("ca.crt");
    let (crt, key) = (
        certs.path().join("reader.crt"),
        certs.path().join("reader.key"),
    );
    let reader = Some((crt.as_path(), key.as_path()));
    let take = |client_id: &str| {
        mosquitto_tls("mosquitto_pub", gateway.port, &ca, client_id, reader)
            .args([
                "-t",
                "iotsphere/devices/heater-d/shadow/get",
                "-n",
                "-c",
                "-q",
                "1",
            ])
            .output()
            .expect("mosquitto_pub")
    };
    let stolen = take("heater-d");
    assert!(
        !stolen.status.success(),
        "the reader's certificate took heater-d's id"
    );
    assert!(take("reader:tablet").status.success());
}
