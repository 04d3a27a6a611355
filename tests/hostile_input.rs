//! What a broken or hostile client can throw at the broker: garbage bytes, a CONNECT that
//! claims 256 MiB, a topic that is not UTF-8, JSON nested 10,000 deep, a payload over the
//! limit, more subscriptions than allowed, 500 connect/drop cycles. Each gets refused or
//! disconnected; the gateway keeps serving everyone else with bounded memory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{shadow_topic, Client, Gateway};
use rumqttc::SubscribeReasonCode;

/// Sends `bytes` on a fresh connection; true when the broker then closed it within 5 s.
fn broker_closes_after(port: u16, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    if stream.write_all(bytes).is_err() {
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {} // a CONNACK before the offending packet
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_leaves_the_gateway_serving_with_bounded_memory() {
    let gateway = Gateway::start_with_env("", &[("IOTSPHERE__MQTT__MAX_SUBSCRIPTIONS", "32")]);
    let mut heater = Client::connect(gateway.port, "heater-ok").await;
    heater.subscribe(&shadow_topic("heater-ok", "#")).await;
    let rss_before = gateway.rss_kib();

    let mut garbage = vec![0u8; 4096];
    let mut seed = 0x2545_f491_u32;
    for byte in garbage.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *byte = seed as u8;
    }
    garbage[0] = 0xf0; // reserved packet type
    for _ in 0..50 {
        assert!(
            broker_closes_after(gateway.port, &garbage),
            "garbage kept open"
        );
    }

    // Remaining length 268,435,455 (the MQTT maximum): refused before anything is allocated.
    let huge_connect = [0x10, 0xff, 0xff, 0xff, 0x7f, 0, 4, b'M', b'Q', b'T', b'T'];
    for _ in 0..50 {
        assert!(
            broker_closes_after(gateway.port, &huge_connect),
            "huge CONNECT kept open"
        );
    }

    // A QoS 0 PUBLISH whose topic is not UTF-8 (0xC3 0x28).
    let mut bad_topic = common::connect_packet("heater-bad-topic", 30);
    bad_topic.extend_from_slice(&[0x30, 6, 0, 2, 0xc3, 0x28, b'h', b'i']);
    assert!(
        broker_closes_after(gateway.port, &bad_topic),
        "non-UTF-8 topic kept open"
    );

    // JSON nested 10,000 deep: refused with 400, the sender stays connected.
    let mut deep = Client::connect(gateway.port, "heater-deep").await;
    deep.subscribe(&shadow_topic("heater-deep", "rejected"))
        .await;
    let depth = 10_000;
    let nested = format!(
        "{{\"state\":{}1{}}}",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    deep.publish(&shadow_topic("heater-deep", "reported"), nested)
        .await;
    let rejected = deep.expect("/shadow/rejected").await.payload_json();
    assert_eq!(rejected["code"], 400, "{rejected}");

    // Over mqtt.max_payload_bytes (64 KiB): that connection is closed.
    let mut big = Client::connect(gateway.port, "heater-big").await;
    big.publish(&shadow_topic("heater-big", "reported"), vec![b'x'; 70_000])
        .await;
    big.expect_disconnected().await;

    // mqtt.max_subscriptions (32 here): the 33rd distinct filter gets SUBACK failure.
    let mut greedy = Client::connect(gateway.port, "heater-greedy").await;
    for n in 0..32 {
        greedy.subscribe(&format!("lab/filter-{n}")).await;
    }
    assert_eq!(
        greedy.subscribe_result("lab/filter-32").await,
        vec![SubscribeReasonCode::Failure]
    );
    greedy.subscribe("lab/filter-0").await; // one it has already: fine

    // 500 connect/drop cycles without DISCONNECT, as heaters losing power would.
    for cycle in 0..500 {
        let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).expect("connect");
        stream
            .write_all(&common::connect_packet(&format!("flap-{}", cycle % 50), 30))
            .expect("CONNECT");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).expect("CONNACK");
    }

    // Everyone else is still served.
    heater
        .publish(
            &shadow_topic("heater-ok", "reported"),
            r#"{"state":{"temperature":50}}"#,
        )
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["state"]["reported"]["temperature"], 50);

    let rss_after = gateway.rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    println!("RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        growth_mib < 32,
        "memory grew by {growth_mib} MiB ({rss_before} -> {rss_after} KiB)"
    );
}
