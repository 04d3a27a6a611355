//! Issue 17 item 4: what one authenticated client can make the broker hold is bounded —
//! QoS 2 publishes awaiting PUBREL (beyond `mqtt.max_awaiting_release`: disconnected),
//! outgoing QoS 2 awaiting PUBCOMP (inside `mqtt.max_inflight`), retained messages
//! (devices retain nothing; others within `mqtt.max_retained*`), subscriptions per
//! identity across persistent sessions (`mqtt.max_subscriptions`), router filters freed
//! when no session uses them. RSS is the gateway's VmRSS (debug build). Also the broker
//! paths around them: `$share` groups per filter, UNSUBACK always, an empty publish that
//! is not retained deletes nothing, and a lone persistent `$share` subscriber with
//! messages in flight no longer panics the router.

mod common;

use std::time::Duration;

use common::raw::{frame, publish, Connect, Raw};
use common::{add_credentials, http_get, Gateway};

const MIB: u64 = 1024;
const QUIET: Duration = Duration::from_millis(700);

fn password_gateway(env: &[(&str, &str)]) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("credentials");
    for name in ["heater-a", "heater-b", "svc"] {
        add_credentials(&file, name, &format!("pw-{name}"));
    }
    let gateway = Gateway::start_with_env(
        &format!(
            "[auth]\nmode = \"password\"\ncredentials_file = \"{}\"\n\n[[auth.services]]\nname = \"svc\"\npublish = [\"iotsphere/lab/#\"]\nsubscribe = [\"iotsphere/lab/#\"]\n",
            file.display()
        ),
        env,
    );
    (gateway, dir)
}

fn login(id: &str) -> Connect<'_> {
    let password: &'static str = match id {
        "heater-a" => "pw-heater-a",
        "heater-b" => "pw-heater-b",
        _ => "pw-svc",
    };
    let name: &'static str = match id {
        "heater-a" => "heater-a",
        "heater-b" => "heater-b",
        _ => "svc",
    };
    Connect::new(id).login(name, password)
}

fn dropped(gateway: &Gateway, reason: &str) -> u64 {
    let (_, metrics) = http_get(gateway.http_port, "/metrics");
    let line = format!("iotsphere_broker_dropped_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn qos2_publishes_never_released_disconnect_the_client() {
    let (gateway, _dir) = password_gateway(&[]);
    let baseline = gateway.rss_kib();
    let payload = vec![b'7'; 60_000];
    let mut published = 0;
    for _round in 0..20 {
        let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
        let mut wire = Vec::new();
        for pkid in 1..=150u16 {
            wire.extend(publish(
                &format!("iotsphere/devices/heater-a/telemetry/t{pkid}"),
                &payload,
                2,
                false,
                pkid,
            ));
        }
        let _ = heater.send(&wire);
        published += 150;
        let mut pubrecs = 0;
        while let Ok(packet) = heater.read() {
            if packet.kind() == 5 {
                pubrecs += 1;
            }
        }
        assert!(pubrecs <= 16, "{pubrecs} QoS 2 publishes held (limit 16)");
    }
    let growth = gateway.rss_kib().saturating_sub(baseline);
    println!("{published} × 60 KB QoS 2 never released: RSS +{growth} KiB");
    assert!(growth < 32 * MIB, "RSS grew by {growth} KiB");
    assert!(dropped(&gateway, "qos2_awaiting_release") >= 20);
    // A QoS 2 publish the ACL drops is acknowledged all the way, without a disconnect.
    let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    heater
        .send(&publish(
            "iotsphere/devices/heater-b/shadow/reported",
            b"{}",
            2,
            false,
            9,
        ))
        .expect("publish");
    assert_eq!(heater.read().expect("PUBREC").kind(), 5);
    heater
        .send(&frame(0x62, &9u16.to_be_bytes()))
        .expect("PUBREL");
    assert_eq!(heater.read().expect("PUBCOMP").kind(), 7);
}

#[test]
fn a_subscriber_that_never_completes_qos2_gets_at_most_the_inflight_window() {
    let (gateway, _dir) = password_gateway(&[("IOTSPHERE__MQTT__MAX_INFLIGHT", "20")]);
    let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    let topic = "iotsphere/devices/heater-a/telemetry/loop";
    assert_eq!(heater.subscribe_qos(1, topic, 2).expect("SUBACK"), 2);
    let mut wire = Vec::new();
    for _ in 0..200 {
        wire.extend(publish(topic, b"1", 0, false, 0));
    }
    heater.send(&wire).expect("publish");
    // PUBREC every publish, never PUBCOMP the PUBRELs.
    let mut received = 0;
    for packet in heater.publishes_within(Duration::from_secs(2)) {
        received += 1;
        if let Some(pkid) = packet.pkid() {
            let _ = heater.send(&frame(0x50, &pkid.to_be_bytes()));
        }
    }
    received += heater.publishes_within(Duration::from_secs(1)).len();
    println!("{received} QoS 2 messages sent to a client that never sends PUBCOMP (window 20)");
    assert!(received <= 20, "{received} in flight");
}

#[test]
fn devices_retain_nothing_and_services_within_their_limits() {
    let (gateway, _dir) = password_gateway(&[("IOTSPHERE__MQTT__MAX_RETAINED", "100")]);
    let baseline = gateway.rss_kib();
    let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    let payload = vec![b'9'; 60_000];
    for round in 0..10 {
        let mut wire = Vec::new();
        for n in 0..300 {
            let topic = format!("iotsphere/devices/heater-a/telemetry/r{}", round * 300 + n);
            wire.extend(publish(&topic, &payload, 0, true, 0));
        }
        heater.send(&wire).expect("publish");
    }
    heater.disconnect();
    std::thread::sleep(Duration::from_millis(500));
    let growth = gateway.rss_kib().saturating_sub(baseline);
    println!("3000 × 60 KB retained publishes of a device: RSS +{growth} KiB");
    assert!(growth < 32 * MIB, "RSS grew by {growth} KiB");
    let mut late = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    late.subscribe(1, "iotsphere/devices/heater-a/#")
        .expect("SUBACK");
    assert!(
        late.publishes_within(QUIET).is_empty(),
        "a device's message was retained"
    );
    assert!(dropped(&gateway, "retain_not_allowed") >= 1);

    // A service retains, up to 100 messages.
    let mut svc = Raw::connected(gateway.port, &login("svc:writer")).expect("svc");
    let mut wire = Vec::new();
    for n in 0..150 {
        wire.extend(publish(&format!("iotsphere/lab/{n}"), b"kept", 0, true, 0));
    }
    svc.send(&wire).expect("publish");
    svc.disconnect();
    let mut reader = Raw::connected(gateway.port, &login("svc:reader")).expect("svc");
    reader.subscribe(1, "iotsphere/lab/#").expect("SUBACK");
    let retained = reader.publishes_within(Duration::from_secs(2));
    assert_eq!(retained.len(), 100, "retained messages of one identity");
    assert!(dropped(&gateway, "retained_count") >= 50);
}

#[test]
fn subscriptions_are_bounded_per_identity_across_persistent_sessions_and_freed() {
    // The numbers: 1,000 filters per device allowed here (32 by default).
    let (gateway, _dir) =
        password_gateway(&[("IOTSPHERE__MQTT__MAX_DEVICE_SUBSCRIPTIONS", "1000")]);
    let baseline = gateway.rss_kib();
    let mut refused = 0;
    for round in 0..20 {
        let mut heater =
            Raw::connected(gateway.port, &login("heater-a").persistent()).expect("heater-a");
        for n in 0..1000u16 {
            let filter = format!("iotsphere/devices/heater-a/f{round}/{n}");
            let pkid = n + 1;
            let mut body = pkid.to_be_bytes().to_vec();
            body.extend((filter.len() as u16).to_be_bytes());
            body.extend(filter.as_bytes());
            body.push(0);
            heater.send(&frame(0x82, &body)).expect("SUBSCRIBE");
        }
        let mut subacks = 0;
        while subacks < 1000 {
            let packet = heater.read().expect("SUBACK");
            if packet.kind() == 9 {
                subacks += 1;
                if packet.body.last() == Some(&0x80) {
                    refused += 1;
                }
            }
        }
        heater.drop_abruptly();
    }
    let held = gateway.rss_kib();
    // A clean session discards the saved one and frees its filters.
    Raw::connected(gateway.port, &login("heater-a"))
        .expect("heater-a")
        .disconnect();
    println!(
        "20 reconnects × 1000 new filters: {refused} refused; RSS +{} KiB",
        held.saturating_sub(baseline)
    );
    assert_eq!(
        refused, 19_000,
        "the persistent session held more than 1000"
    );
    assert!(held.saturating_sub(baseline) < 64 * MIB);
    assert!(dropped(&gateway, "subscriptions") >= 19);
    // Its count starts again from 0.
    let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    assert_eq!(
        heater
            .subscribe(1, "iotsphere/devices/heater-a/again")
            .expect("SUBACK"),
        1
    );
}

#[test]
fn broker_paths_around_the_bounds() {
    let gateway = Gateway::start();
    // Shared groups are per filter: a group name used for another filter takes nothing.
    let mut a = Raw::connected(gateway.port, &Connect::new("share-a")).expect("a");
    let mut b = Raw::connected(gateway.port, &Connect::new("share-b")).expect("b");
    assert_eq!(a.subscribe(1, "$share/g/lab/a").expect("SUBACK"), 1);
    assert_eq!(b.subscribe(1, "$share/g/lab/b").expect("SUBACK"), 1);
    let mut publisher = Raw::connected(gateway.port, &Connect::new("share-p")).expect("p");
    let mut wire = Vec::new();
    for _ in 0..10 {
        wire.extend(publish("lab/a", b"x", 0, false, 0));
    }
    publisher.send(&wire).expect("publish");
    assert_eq!(
        a.publishes_within(QUIET).len(),
        10,
        "a shared its filter with b's"
    );
    assert!(b.publishes_within(Duration::from_millis(100)).is_empty());

    // UNSUBSCRIBE of something never subscribed is answered.
    a.send(&frame(0xa2, &[0, 7, 0, 5, b'n', b'o', b'n', b'e', b'!']))
        .expect("UNSUBSCRIBE");
    assert_eq!(a.read().expect("UNSUBACK").kind(), 11);

    // An empty publish without RETAIN leaves the retained message alone.
    publisher
        .send(&publish("lab/kept", b"value", 0, true, 0))
        .expect("retain");
    publisher
        .send(&publish("lab/kept", b"", 0, false, 0))
        .expect("empty");
    std::thread::sleep(Duration::from_millis(200));
    let mut late = Raw::connected(gateway.port, &Connect::new("late")).expect("late");
    late.subscribe(1, "lab/kept").expect("SUBACK");
    let kept = late.publishes_within(QUIET);
    assert_eq!(kept.len(), 1, "the retained message was deleted");

    // A lone persistent `$share` subscriber leaves with QoS 1 messages in flight.
    let mut lone = Raw::connected(gateway.port, &Connect::new("lone").persistent()).expect("lone");
    assert_eq!(lone.subscribe(1, "$share/solo/lab/q").expect("SUBACK"), 1);
    let mut wire = Vec::new();
    for pkid in 1..=5 {
        wire.extend(publish("lab/q", b"q", 1, false, pkid));
    }
    publisher.send(&wire).expect("publish");
    assert!(!lone.publishes_within(QUIET).is_empty());
    lone.drop_abruptly();
    std::thread::sleep(Duration::from_millis(300));
    // The router is alive: a new client connects and is served.
    let mut after = Raw::connected(gateway.port, &Connect::new("after")).expect("the broker died");
    assert_eq!(after.subscribe(1, "lab/kept").expect("SUBACK"), 1);
}

#[test]
fn a_device_filling_the_logs_of_its_own_filters_stays_bounded() {
    let (gateway, _dir) = password_gateway(&[]);
    let baseline = gateway.rss_kib();
    let mut heater = Raw::connected(gateway.port, &login("heater-a")).expect("heater-a");
    // 32 filters (the default for a device), each matching a telemetry kind it publishes.
    for n in 0..32u16 {
        let filter = format!("iotsphere/devices/heater-a/telemetry/k{n}");
        assert_eq!(heater.subscribe_qos(n + 1, &filter, 0).expect("SUBACK"), 0);
    }
    assert_eq!(
        heater
            .subscribe(99, "iotsphere/devices/heater-a/telemetry/k99")
            .expect("SUBACK"),
        0x80,
        "the 33rd filter of a device"
    );
    // It publishes into them (and reads its own copies, so the link keeps going).
    let payload = vec![b'5'; 60_000];
    for _round in 0..30 {
        let mut wire = Vec::new();
        for n in 0..32 {
            let topic = format!("iotsphere/devices/heater-a/telemetry/k{n}");
            wire.extend(publish(&topic, &payload, 0, false, 0));
        }
        heater.send(&wire).expect("publish");
        heater.publishes_within(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let growth = gateway.rss_kib().saturating_sub(baseline);
    heater.disconnect();
    // Each filter's log is capped (4 × 256 KiB by default; 1.8 MB went into each), so
    // this is the most a device's own filters can hold; the bound is 128 MB.
    println!("32 filters × 30 × 60 KB published into them: RSS +{growth} KiB");
    assert!(growth < 128 * MIB, "RSS grew by {growth} KiB");
}
