//! Store and forward: with MongoDB unreachable, everything bound for it waits in the sled
//! outbox — through kill -9 — and arrives exactly once, in order, when it comes back.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, http_get, json, shadow_topic, Client, Gateway, RawClient, BIN};
use mongodb::bson::{doc, Document as BsonDocument};
use serde_json::json;

const DEVICES: usize = 10;
const READINGS: usize = 1000;
const WINDOW: usize = 50;

/// MongoDB that is not there yet: a loopback port nobody listens on (the double starts on
/// it later). With `MONGODB_URI` the server cannot be taken down: those tests skip.
fn unreachable_mongo() -> Option<(u16, String, String)> {
    if std::env::var("MONGODB_URI").is_ok() {
        eprintln!("skipped: needs a MongoDB it can stop and start (tests/mongo-double)");
        return None;
    }
    let port = free_port();
    let database = format!("iotsphere_test_{}", uuid::Uuid::now_v7().simple());
    let config = format!(
        "[mongodb]\nuri = \"mongodb://127.0.0.1:{port}/?directConnection=true\"\ndatabase = \"{database}\"\n"
    );
    Some((port, database, config))
}

async fn start_double_on(port: u16) -> (mongo_double::Server, mongodb::Client) {
    let server = mongo_double::Server::start(mongo_double::Options {
        port,
        ..Default::default()
    })
    .await
    .expect("start the double on the reserved port");
    let client = mongodb::Client::with_uri_str(server.uri())
        .await
        .expect("client");
    (server, client)
}

fn pseudo_random(bound: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    u64::from(nanos) % bound
}

/// One device's messages from `seq` on: readings with their own message id (so a
/// retransmission is stored once), and a shadow report after every hundredth.
fn window(device: usize, from: usize) -> Vec<(String, Vec<u8>)> {
    (from..(from + WINDOW).min(READINGS))
        .flat_map(|seq| {
            let id = format!("h-{device}");
            let reading = (
                format!("iotsphere/devices/{id}/telemetry/temperature"),
                json(&json!({"metadata": {"messageId": format!("{id}-{seq}")}, "payload": {"value": 40 + seq % 30, "seq": seq}})),
            );
            let report = (seq % 100 == 99).then(|| {
                (shadow_topic(&id, "reported"), json(&json!({"state": {"n": seq}})))
            });
            std::iter::once(reading).chain(report)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_offline_loses_nothing_acknowledged() {
    let Some((mongo_port, database, config)) = unreachable_mongo() else {
        return;
    };
    let gateway = Gateway::start_with(&config);
    let port = gateway.port;

    // A killer kills -9 and restarts the gateway three times at random points of the
    // publication (after a random number of acknowledged readings in each quarter).
    let acked_total = Arc::new(AtomicUsize::new(0));
    let progress = acked_total.clone();
    let killer = std::thread::spawn(move || {
        let mut gateway = gateway;
        let mut kills_at = Vec::new();
        for quarter in 1..=3 {
            let point = quarter * DEVICES * READINGS / 4 + pseudo_random(2000) as usize - 1000;
            while progress.load(Ordering::Relaxed) < point {
                std::thread::sleep(Duration::from_millis(2));
            }
            kills_at.push(progress.load(Ordering::Relaxed));
            gateway.kill9();
            gateway.spawn(&[]);
        }
        (gateway, kills_at)
    });

    // Each device publishes until every reading is acknowledged, reconnecting after kills.
    let publisher = std::thread::spawn(move || {
        let mut next = vec![0usize; DEVICES];
        let started = Instant::now();
        while next.iter().any(|n| *n < READINGS) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "publishing took too long: {next:?}"
            );
            for (device, next_seq) in next.iter_mut().enumerate() {
                if *next_seq >= READINGS {
                    continue;
                }
                let Ok(mut client) = RawClient::connect(port, &format!("h-{device}")) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let messages = window(device, *next_seq);
                let acked = match client.publish_all(&messages) {
                    Ok(n) => {
                        client.disconnect();
                        n
                    }
                    Err(n) => n,
                };
                // Readings acknowledged in order (reports in between count as messages).
                let readings_acked = messages[..acked]
                    .iter()
                    .filter(|(topic, _)| topic.contains("/telemetry/"))
                    .count();
                *next_seq += readings_acked;
                acked_total.fetch_add(readings_acked, Ordering::Relaxed);
            }
        }
    });
    publisher.join().expect("publisher");
    let (gateway, kills_at) = killer.join().expect("killer");
    assert_eq!(kills_at.len(), 3);
    assert!(
        kills_at.iter().all(|k| *k < DEVICES * READINGS),
        "killed while publishing: {kills_at:?}"
    );

    // The last report again, answered: the shadow to compare with.
    let mut device = Client::connect(gateway.port, "h-final").await;
    device
        .subscribe("iotsphere/devices/+/shadow/document")
        .await;
    for i in 0..DEVICES {
        device
            .publish(
                &shadow_topic(&format!("h-{i}"), "reported"),
                json(&json!({"state": {"n": READINGS - 1}})),
            )
            .await;
        device.expect("/shadow/document").await;
    }

    // MongoDB comes back: everything arrives, once.
    let (_server, client) = start_double_on(mongo_port).await;
    let telemetry = client
        .database(&database)
        .collection::<BsonDocument>("telemetry");
    let started = Instant::now();
    loop {
        let count = telemetry.count_documents(doc! {}).await.unwrap_or(0);
        if count == (DEVICES * READINGS) as u64 {
            break;
        }
        assert!(count <= (DEVICES * READINGS) as u64, "{count}: duplicates");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {count} readings arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..DEVICES {
        let id = format!("h-{i}");
        let mut cursor = telemetry
            .find(doc! {"deviceId": &id})
            .sort(doc! {"seq": 1})
            .await
            .expect("find");
        let mut seqs = Vec::new();
        let mut times = Vec::new();
        while cursor.advance().await.expect("advance") {
            let reading = cursor.deserialize_current().expect("doc");
            seqs.push(reading.get_i64("seq").expect("seq"));
            times.push(reading.get_datetime("ts").expect("ts").timestamp_millis());
        }
        assert_eq!(
            seqs,
            (0..READINGS as i64).collect::<Vec<_>>(),
            "{id}: every reading once"
        );
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{id}: received in order"
        );
        let shadow = client
            .database(&database)
            .collection::<BsonDocument>("shadows")
            .find_one(doc! {"_id": &id})
            .await
            .expect("find")
            .expect("shadow in MongoDB");
        let n = shadow
            .get_document("state")
            .and_then(|s| s.get_document("reported"))
            .map(|r| r.get_i64("n").or(r.get_i32("n").map(i64::from)));
        assert_eq!(
            n,
            Ok(Ok((READINGS - 1) as i64)),
            "{id}: the last reported state"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_outbox_drops_the_oldest_and_counts_it() {
    let Some((_, _, config)) = unreachable_mongo() else {
        return;
    };
    let gateway = Gateway::start_with(&format!("{config}\n[outbox]\nmax_bytes = 1048576\n"));
    let mut client = RawClient::connect(gateway.port, "h-full").expect("connect");
    let readings: Vec<(String, Vec<u8>)> = (0..8000)
        .map(|seq| {
            (
                "iotsphere/devices/h-full/telemetry/temperature".to_string(),
                json(&json!({"value": seq, "seq": seq})),
            )
        })
        .collect();
    for chunk in readings.chunks(500) {
        assert_eq!(client.publish_all(chunk), Ok(chunk.len()));
    }
    client.disconnect();
    let (status, body) = http_get(gateway.http_port, "/health/uplink");
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    let outbox = &report["outbox"];
    assert!(outbox["droppedFull"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        outbox["bytes"].as_u64().unwrap_or(u64::MAX) <= 1_048_576,
        "{report}"
    );
    assert_eq!(report["connected"], false, "{report}");
    assert!(gateway
        .log()
        .contains("the outbox is full (max_bytes); oldest item dropped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_item_becomes_a_dead_letter_and_the_rest_flows() {
    let Some((mongo_port, database, config)) = unreachable_mongo() else {
        return;
    };
    let (server, client) = start_double_on(mongo_port).await;
    let telemetry = client
        .database(&database)
        .collection::<BsonDocument>("telemetry");
    // The cloud team's unique index makes the second reading with seq 2 unstorable.
    telemetry
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"deviceId": 1, "seq": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .expect("index");
    let mut gateway = Gateway::start_with(&format!("{config}\n[outbox]\nmax_attempts = 2\n"));
    let mut device = RawClient::connect(gateway.port, "h-poison").expect("connect");
    let topic = "iotsphere/devices/h-poison/telemetry/temperature".to_string();
    let messages: Vec<(String, Vec<u8>)> = [(1, "a"), (2, "b"), (2, "c"), (3, "d")]
        .iter()
        .map(|(seq, id)| {
            (
                topic.clone(),
                json(&json!({"metadata": {"messageId": id}, "payload": {"value": 1, "seq": seq}})),
            )
        })
        .collect();
    assert_eq!(device.publish_all(&messages), Ok(4));
    device.disconnect();
    let started = Instant::now();
    loop {
        let ids: Vec<String> = {
            let mut cursor = telemetry
                .find(doc! {})
                .sort(doc! {"seq": 1})
                .await
                .expect("find");
            let mut ids = Vec::new();
            while cursor.advance().await.expect("advance") {
                ids.push(
                    cursor
                        .deserialize_current()
                        .expect("doc")
                        .get_str("_id")
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            ids
        };
        let (_, body) = http_get(gateway.http_port, "/health/uplink");
        if ids == ["h-poison:a", "h-poison:b", "h-poison:d"] && body.contains("\"deadLettered\":1")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{ids:?} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
    assert!(gateway.terminate().success());
    // The dead letter is listed, with MongoDB's error, by the CLI.
    let out = Command::new(BIN)
        .args(["outbox", "list", "--config"])
        .arg(gateway.config_path())
        .output()
        .expect("outbox list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("\"tree\":\"dead\"") && listing.contains("E11000"),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_cli_refuses_while_the_gateway_runs_and_reports_when_stopped() {
    let Some((_, _, config)) = unreachable_mongo() else {
        return;
    };
    let mut gateway = Gateway::start_with(&config);
    let mut device = RawClient::connect(gateway.port, "h-cli").expect("connect");
    let readings: Vec<(String, Vec<u8>)> = (0..10)
        .map(|seq| {
            (
                "iotsphere/devices/h-cli/telemetry/pressure".to_string(),
                json(&json!({"value": seq})),
            )
        })
        .collect();
    assert_eq!(device.publish_all(&readings), Ok(10));
    device.disconnect();
    let stats = |gateway: &Gateway| {
        Command::new(BIN)
            .args(["outbox", "stats", "--config"])
            .arg(gateway.config_path())
            .output()
            .expect("outbox stats")
    };
    let running = stats(&gateway);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("in use by a running gateway"));
    assert!(gateway.terminate().success());
    let stopped = stats(&gateway);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&stopped.stdout).expect("json");
    // Ten readings; no presence: h-cli holds no shadow here, so in anonymous mode it is
    // not taken for a device (README "Security": presence).
    assert_eq!(report["items"], 10, "{report}");
    let mut counts = HashMap::new();
    counts.insert(
        "purge",
        Command::new(BIN)
            .args(["outbox", "purge", "--yes", "--config"])
            .arg(gateway.config_path())
            .output()
            .expect("purge"),
    );
    assert!(counts["purge"].status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&stats(&gateway).stdout).expect("json")
            ["items"],
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_queued_while_offline_ends_in_each_devices_last_state() {
    let Some((mongo_port, database, config)) = unreachable_mongo() else {
        return;
    };
    let gateway = Gateway::start_with(&config);
    // Heaters (each holds a shadow: anonymous presence is for those) that come and go
    // while MongoDB is away: h-flap-0 ends connected, the others disconnected; their
    // presence changes wait in the outbox.
    for device in 0..5 {
        let id = format!("h-flap-{device}");
        let mut heater = Client::connect(gateway.port, &id).await;
        heater.subscribe(&shadow_topic(&id, "document")).await;
        heater
            .publish(
                &shadow_topic(&id, "reported"),
                json(&json!({"state": {"on": true}})),
            )
            .await;
        heater.expect("/shadow/document").await;
        heater.disconnect().await;
    }
    let mut staying = None;
    for round in 0..4 {
        for device in 0..5 {
            let client = Client::connect(gateway.port, &format!("h-flap-{device}")).await;
            if round == 3 && device == 0 {
                staying = Some(client);
            } else {
                client.disconnect().await;
            }
        }
    }
    let (_server, client) = start_double_on(mongo_port).await;
    let shadows = client
        .database(&database)
        .collection::<BsonDocument>("shadows");
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for device in 0..5 {
            let found = shadows
                .find_one(doc! {"_id": format!("h-flap-{device}")})
                .await
                .expect("find");
            states.push(found.and_then(|d| d.get_bool("connected").ok()));
        }
        let (_, body) = http_get(gateway.http_port, "/health/uplink");
        let drained = body.contains("\"items\":0,");
        if drained
            && states
                == [
                    Some(true),
                    Some(false),
                    Some(false),
                    Some(false),
                    Some(false),
                ]
        {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "presence never settled: {states:?} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(staying);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_device_is_not_kept_waiting_for_a_claim_while_mongodb_is_known_unreachable() {
    let Some((_, _, config)) = unreachable_mongo() else {
        return;
    };
    let gateway = Gateway::start_with(&config);
    // The uplink's first attempt fails after its server selection timeout (5 s).
    let started = Instant::now();
    while !gateway.log().contains("MongoDB unreachable") {
        assert!(started.elapsed() < common::WAIT, "{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut heater = Client::connect(gateway.port, "h-new-offline").await;
    heater.subscribe(&shadow_topic("h-new-offline", "+")).await;
    heater
        .publish(
            &shadow_topic("h-new-offline", "reported"),
            json(&json!({"state": {"targetTemp": 50}})),
        )
        .await;
    let document = heater.expect("/shadow/document").await.payload_json();
    assert_eq!(document["version"], 1);
    // Served from a fresh local shadow without a claim that could only time out (3 s).
    assert!(
        !gateway.log().contains("did not answer the claim"),
        "{}",
        gateway.log()
    );
}
