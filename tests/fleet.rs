//! Many gateways on one MongoDB (issue 12): two gateway processes (`gw-a`, `gw-b`) share
//! one tests/mongo-double (or the replica set of `MONGODB_URI`); devices spread over
//! them; cloud changes reach the right device once; a device that moves is claimed by
//! its new gateway and released by the old one.

mod common;

use std::time::Duration;

use common::{json, shadow_topic, Client, Gateway, Mongo};
use mongodb::bson::{doc, DateTime, Document as BsonDocument};
use serde_json::json;

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(1500);

fn gateway(mongo: &Mongo, id: &str) -> Gateway {
    let mut gateway = Gateway::configure(&mongo.config(""));
    gateway.spawn(&[("IOTSPHERE__GATEWAY__ID", id)]);
    gateway
}

/// [`common::reported_device`] on `gateway`, whose shadow MongoDB holds for `gateway_id`.
async fn reported_device(gateway: &Gateway, mongo: &Mongo, id: &str, gateway_id: &str) -> Client {
    let device = common::reported_device(gateway, mongo, id).await;
    let stored = mongo.wait_for("shadows", doc! {"_id": id}, |_| true).await;
    assert_eq!(stored.get_str("gatewayId"), Ok(gateway_id));
    device
}

/// A client of `gateway` that sees every delta it publishes.
async fn delta_observer(gateway: &Gateway, name: &str) -> Client {
    let mut observer = Client::connect(gateway.port, name).await;
    observer.subscribe(&shadow_topic("+", "delta")).await;
    observer
}

/// What a cloud service does: sets `state.desired.targetTemp` (and `updatedAt`).
async fn set_desired(mongo: &Mongo, id: &str, target: i64) {
    mongo
        .db()
        .collection::<BsonDocument>("shadows")
        .update_one(
            doc! {"_id": id},
            doc! {"$set": {"state.desired.targetTemp": target, "updatedAt": DateTime::now()}},
        )
        .await
        .expect("cloud update");
}

async fn expect_delta(device: &mut Client, target: i64) {
    let delta = device.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"]["targetTemp"], target);
}

/// Waits until the gateway's watcher delivers cloud changes: a probe device gets one.
async fn wait_until_watching(gateway: &Gateway, mongo: &Mongo, probe: &str, gateway_id: &str) {
    let mut device = reported_device(gateway, mongo, probe, gateway_id).await;
    let started = std::time::Instant::now();
    let mut target = 51;
    loop {
        set_desired(mongo, probe, target).await;
        if let Some(delta) = device.next_within(Duration::from_millis(500)).await {
            if delta.topic.ends_with("/shadow/delta") {
                break;
            }
        }
        assert!(
            started.elapsed() < common::WAIT,
            "{gateway_id} never watched"
        );
        target += 1;
    }
    device.disconnect().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_changes_reach_the_right_gateway_once() {
    let mongo = Mongo::start().await;
    let gw_a = gateway(&mongo, "gw-a");
    let gw_b = gateway(&mongo, "gw-b");
    wait_until_watching(&gw_a, &mongo, "probe-a", "gw-a").await;
    wait_until_watching(&gw_b, &mongo, "probe-b", "gw-b").await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_a.push(reported_device(&gw_a, &mongo, &format!("fa-{i}"), "gw-a").await);
        on_b.push(reported_device(&gw_b, &mongo, &format!("fb-{i}"), "gw-b").await);
    }
    let mut observer_a = delta_observer(&gw_a, "observer-a").await;
    let mut observer_b = delta_observer(&gw_b, "observer-b").await;

    for i in 0..3_i64 {
        set_desired(&mongo, &format!("fa-{i}"), 60 + i).await;
        set_desired(&mongo, &format!("fb-{i}"), 70 + i).await;
    }
    for (i, device) in on_a.iter_mut().enumerate() {
        expect_delta(device, 60 + i as i64).await;
    }
    for (i, device) in on_b.iter_mut().enumerate() {
        expect_delta(device, 70 + i as i64).await;
    }
    for device in on_a.iter_mut().chain(on_b.iter_mut()) {
        device.expect_none("/shadow/delta", QUIET).await;
    }
    // Each broker published the deltas of its own devices, once each.
    for (observer, prefix) in [(&mut observer_a, "fa-"), (&mut observer_b, "fb-")] {
        let mut seen = Vec::new();
        // (Retained deltas of the probes come first; they are not under test.)
        while let Some(message) = observer.next_within(QUIET).await {
            if message.topic.contains("/devices/f") {
                seen.push(message.topic);
            }
        }
        seen.sort();
        let expected: Vec<String> = (0..3)
            .map(|i| shadow_topic(&format!("{prefix}{i}"), "delta"))
            .collect();
        assert_eq!(seen, expected);
    }
}

/// On `gw-a`: "mover" reports, and a cloud change leaves a delta pending that the device
/// does not act on before it disconnects (MongoDB then holds version 2 for gw-a).
async fn mover_with_pending_delta(gw_a: &Gateway, mongo: &Mongo) {
    let mut device = reported_device(gw_a, mongo, "mover", "gw-a").await;
    set_desired(mongo, "mover", 65).await;
    expect_delta(&mut device, 65).await;
    let at_a = mongo
        .wait_for("shadows", doc! {"_id": "mover"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    assert_eq!(at_a.get_str("gatewayId"), Ok("gw-a"));
    device.disconnect().await;
}

/// "mover" connects to `gw_b` and reports: its first report is served after the claim,
/// with the version continued and the pending delta delivered once.
async fn mover_claimed_by(gw_b: &Gateway, mongo: &Mongo) -> Client {
    let mut device = Client::connect(gw_b.port, "mover").await;
    device.subscribe(&shadow_topic("mover", "+")).await;
    device
        .publish(
            &shadow_topic("mover", "reported"),
            json(&json!({"state": {"temperature": 20}})),
        )
        .await;
    expect_delta(&mut device, 65).await;
    let document = device.expect("/shadow/document").await.payload_json();
    assert_eq!(document["version"], 3);
    assert_eq!(document["state"]["desired"]["targetTemp"], 65);
    let claimed = mongo
        .wait_for("shadows", doc! {"_id": "mover"}, |d| {
            d.get_i64("version") == Ok(3)
        })
        .await;
    assert_eq!(claimed.get_str("gatewayId"), Ok("gw-b"));
    assert_eq!(claimed.get_bool("connected"), Ok(true));
    device
}

/// A later cloud change reaches "mover" through its new gateway only, once; MongoDB still
/// names `gw-b`.
async fn only_gw_b_serves_the_mover(device: &mut Client, observer_a: &mut Client, mongo: &Mongo) {
    set_desired(mongo, "mover", 75).await;
    expect_delta(device, 75).await;
    device.expect_none("/shadow/delta", QUIET).await;
    observer_a.expect_none("/shadow/delta", QUIET).await;
    let after = mongo
        .wait_for("shadows", doc! {"_id": "mover"}, |_| true)
        .await;
    assert_eq!(after.get_str("gatewayId"), Ok("gw-b"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_device_is_claimed_and_served_by_its_new_gateway_only() {
    a_device_moves_away_from_gw_a(&Mongo::start().await, "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_polling_gateway_lets_a_moved_device_go_too() {
    a_device_moves_away_from_gw_a(&Mongo::start().await, "change_streams = \"off\"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_that_moved_leaves_no_offline_alert_behind() {
    let mongo = Mongo::start().await;
    let offline_rule = "\n[[alerts]]\nname = \"offline\"\nsource = \"offline\"\nfor = \"1s\"\n";
    a_device_moves_away_from_gw_a(&mongo, offline_rule).await;
    // gw-a saw the mover disconnect and never come back; the move took 3 s and more
    // (the quiet periods): without forgetting the mover on its release, gw-a would have
    // fired an offline alert after 1 s and kept it open.
    let open = mongo
        .db()
        .collection::<BsonDocument>("alerts")
        .count_documents(doc! {"deviceId": "mover", "status": "open"})
        .await
        .expect("count");
    assert_eq!(open, 0);
}

/// "mover" moves from `gw-a` (with this extra config after `[mongodb]`) to `gw-b`: claimed
/// there, released by gw-a (its retained delta cleared), served by gw-b only.
async fn a_device_moves_away_from_gw_a(mongo: &Mongo, gw_a_extra: &str) {
    let mut gw_a = Gateway::configure(&mongo.config(gw_a_extra));
    gw_a.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    let gw_b = gateway(mongo, "gw-b");
    wait_until_watching(&gw_a, mongo, "probe-a", "gw-a").await;
    wait_until_watching(&gw_b, mongo, "probe-b", "gw-b").await;
    mover_with_pending_delta(&gw_a, mongo).await;
    let mut observer_a = Client::connect(gw_a.port, "observer-a").await;
    observer_a.subscribe(&shadow_topic("mover", "delta")).await;
    let retained = observer_a.expect("/shadow/delta").await;
    assert!(!retained.payload.is_empty());

    let mut device = mover_claimed_by(&gw_b, mongo).await;
    // gw-a let go: its retained delta is cleared.
    let cleared = observer_a.expect("/shadow/delta").await;
    assert!(cleared.payload.is_empty(), "gw-a did not clear the delta");
    only_gw_b_serves_the_mover(&mut device, &mut observer_a, mongo).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_down_during_the_handover_lets_go_when_it_is_back() {
    let mongo = Mongo::start().await;
    let mut gw_a = gateway(&mongo, "gw-a");
    let gw_b = gateway(&mongo, "gw-b");
    wait_until_watching(&gw_a, &mongo, "probe-a", "gw-a").await;
    wait_until_watching(&gw_b, &mongo, "probe-b", "gw-b").await;
    mover_with_pending_delta(&gw_a, &mongo).await;
    assert!(gw_a.terminate().success());

    let mut device = mover_claimed_by(&gw_b, &mongo).await;
    gw_a.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    // Back, gw-a republishes the retained deltas of its store, then lets the mover go.
    let started = std::time::Instant::now();
    let mut observer_a = loop {
        let mut observer = Client::connect(gw_a.port, "observer-a").await;
        observer.subscribe(&shadow_topic("mover", "delta")).await;
        match observer.next_within(Duration::from_millis(500)).await {
            Some(retained) if !retained.payload.is_empty() => observer.disconnect().await,
            _ => break observer,
        }
        assert!(started.elapsed() < common::WAIT, "gw-a kept the mover");
    };
    only_gw_b_serves_the_mover(&mut device, &mut observer_a, &mongo).await;
}

/// Lease time of the pair tests.
const TTL: Duration = Duration::from_millis(2000);

/// Until `/health/uplink` shows this role in the pair.
async fn wait_for_lease_role(gateway: &Gateway, role: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = common::http_get(gateway.http_port, "/health/uplink");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && report["lease"] == role && report["connected"] == true {
            return;
        }
        assert!(started.elapsed() < common::WAIT, "never {role}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_unavailable(gateway: &Gateway, client_id: &str) {
    let refused = Client::try_connect(gateway.port, client_id, true, None).await;
    let error = refused.err().expect("the standby refuses clients");
    assert!(error.contains("ServiceUnavailable"), "{error}");
}

/// `gw-a` active (it created the lease), `gw-b` its standby.
async fn pair(mongo: &Mongo) -> (Gateway, Gateway) {
    let config = mongo.config(&format!(
        "lease = \"site-1\"\nlease_ttl_ms = {}",
        TTL.as_millis()
    ));
    let mut active = Gateway::configure(&config);
    active.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    mongo
        .wait_for("leases", doc! {"_id": "site-1"}, |d| {
            d.get_str("holder") == Ok("gw-a")
        })
        .await;
    let mut standby = Gateway::configure(&config);
    standby.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-b")]);
    (active, standby)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_the_devices_when_the_active_gateway_dies() {
    let mongo = Mongo::start().await;
    let (mut active, standby) = pair(&mongo).await;
    wait_until_watching(&active, &mongo, "probe-a", "gw-a").await;
    wait_for_lease_role(&standby, "standby").await;
    let (_, page) = common::http_get(standby.http_port, "/");
    assert!(page.contains("standby: the other gateway"), "{page}");
    // A device that tries the standby first is sent on: "server unavailable".
    assert_unavailable(&standby, "mover").await;
    mover_with_pending_delta(&active, &mongo).await;

    active.kill9();
    let killed = std::time::Instant::now();
    mongo
        .wait_for("shadows", doc! {"_id": "mover"}, |d| {
            d.get_str("gatewayId") == Ok("gw-b")
        })
        .await;
    let took = killed.elapsed();
    assert!(took < TTL, "the standby took {took:?}, more than {TTL:?}");
    wait_for_lease_role(&standby, "active").await;
    let lease = mongo
        .wait_for("leases", doc! {"_id": "site-1"}, |_| true)
        .await;
    assert_eq!(lease.get_str("holder"), Ok("gw-b"));
    assert_eq!(lease.get_i64("epoch"), Ok(2));

    // The device reconnects to the standby: the pending delta is there before it asks.
    let mut device = Client::connect(standby.port, "mover").await;
    device.subscribe(&shadow_topic("mover", "delta")).await;
    expect_delta(&mut device, 65).await;
    device.expect_none("/shadow/delta", QUIET).await;
    set_desired(&mongo, "mover", 75).await;
    expect_delta(&mut device, 75).await;
    device.expect_none("/shadow/delta", QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_active_writes_before_its_first_lease_round_are_not_lost() {
    let mongo = Mongo::start().await;
    let config = mongo.config(&format!(
        "lease = \"site-1\"\nlease_ttl_ms = {}",
        TTL.as_millis()
    ));
    let mut active = Gateway::configure(&config);
    active.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    wait_for_lease_role(&active, "active").await;
    let device = reported_device(&active, &mongo, "early", "gw-a").await;
    device.disconnect().await;
    assert!(active.terminate().success());

    // Back, the gateway's first lease round is slow (2 s in MongoDB); meanwhile the
    // heater reports and its shadow write is ready to go.
    mongo
        .client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["findAndModify"], "blockConnection": true,
                     "blockTimeMS": 2000, "appName": "iotsphere-gateway/gw-a"},
        })
        .await
        .expect("fail point");
    active.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    let mut device = Client::connect(active.port, "early").await;
    device.subscribe(&shadow_topic("early", "+")).await;
    device
        .publish(
            &shadow_topic("early", "reported"),
            json(&json!({"state": {"targetTemp": 70}})),
        )
        .await;
    // The answer to this report (a document of the shadow as it was may come first: the
    // gateway's start-up catch-up with MongoDB publishes what it applied).
    let answer = loop {
        let document = device.expect("/shadow/document").await.payload_json();
        if document["state"]["reported"]["targetTemp"] == 70 {
            break document;
        }
    };
    assert_eq!(answer["version"], 2);
    // Written once the gateway knows its epoch (2), not refused as epoch 0 and dropped.
    let written = mongo
        .wait_for("shadows", doc! {"_id": "early"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    assert_eq!(
        written.get_document("lease").ok(),
        Some(&doc! {"name": "site-1", "epoch": 2_i64})
    );
}

/// A device configured with both gateways' addresses: it takes the first that accepts it.
async fn connect_to_either(gateways: [&Gateway; 2], client_id: &str) -> (Client, u16) {
    let started = std::time::Instant::now();
    loop {
        for gateway in gateways {
            if let Ok(client) = Client::try_connect(gateway.port, client_id, true, None).await {
                return (client, gateway.port);
            }
        }
        assert!(
            started.elapsed() < common::WAIT,
            "no gateway took {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_active_steps_down_and_its_late_writes_are_fenced() {
    let mongo = Mongo::start().await;
    let (active, standby) = pair(&mongo).await;
    wait_for_lease_role(&active, "active").await;
    wait_for_lease_role(&standby, "standby").await;
    let mut device = reported_device(&active, &mongo, "stalled", "gw-a").await;

    // The active freezes (SIGSTOP: a hung SD card, a paused VM) for longer than the TTL.
    active.signal("STOP");
    let taken = mongo
        .wait_for("shadows", doc! {"_id": "stalled"}, |d| {
            d.get_str("gatewayId") == Ok("gw-b")
        })
        .await;
    assert_eq!(
        taken.get_document("lease").ok(),
        Some(&doc! {"name": "site-1", "epoch": 2_i64}),
        "the takeover stamps the new epoch"
    );
    // A report sent meanwhile waits in the frozen gateway's socket.
    device
        .publish(
            &shadow_topic("stalled", "reported"),
            json(&json!({"state": {"targetTemp": 99}})),
        )
        .await;
    active.signal("CONT");

    // It steps down: lets its clients go and refuses them from then on.
    device.expect_disconnected().await;
    wait_for_lease_role(&active, "standby").await;
    assert_unavailable(&active, "stalled").await;
    // Its late write never reached MongoDB, nor did it take the device back.
    tokio::time::sleep(QUIET).await;
    let after = mongo
        .wait_for("shadows", doc! {"_id": "stalled"}, |_| true)
        .await;
    assert_eq!(after.get_str("gatewayId"), Ok("gw-b"));
    assert_eq!(after.get_i64("version"), Ok(1), "{after}");
    assert_eq!(
        after.get_document("lease").ok(),
        Some(&doc! {"name": "site-1", "epoch": 2_i64})
    );

    // The device, which knows both addresses, lands on the new active and is served.
    let (mut device, port) = connect_to_either([&active, &standby], "stalled").await;
    assert_eq!(port, standby.port);
    device.subscribe(&shadow_topic("stalled", "+")).await;
    device
        .publish(
            &shadow_topic("stalled", "reported"),
            json(&json!({"state": {"targetTemp": 60}})),
        )
        .await;
    let document = device.expect("/shadow/document").await.payload_json();
    assert_eq!(document["version"], 2);
    mongo
        .wait_for("shadows", doc! {"_id": "stalled"}, |d| {
            d.get_i64("version") == Ok(2) && d.get_str("gatewayId") == Ok("gw-b")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_mongodb_holds_for_a_gateway_but_its_store_lost_is_imported() {
    let mongo = Mongo::start().await;
    let gw_b = gateway(&mongo, "gw-b");
    wait_until_watching(&gw_b, &mongo, "probe-b", "gw-b").await;
    // As after a new SD card: MongoDB has version 7 for gw-b, its store has nothing.
    mongo
        .db()
        .collection::<BsonDocument>("shadows")
        .insert_one(doc! {
            "_id": "lost",
            "gatewayId": "gw-b",
            "state": {"reported": {"targetTemp": 50}, "desired": {"targetTemp": 55}},
            "version": 7_i64,
            "updatedAt": DateTime::now(),
        })
        .await
        .expect("insert");
    // The cloud change of a device gw-b does not hold makes it claim the shadow: the
    // pending delta is retained before the device connected.
    let started = std::time::Instant::now();
    let mut device = loop {
        let mut device = Client::connect(gw_b.port, "lost").await;
        device.subscribe(&shadow_topic("lost", "+")).await;
        if let Some(delta) = device.next_within(Duration::from_millis(500)).await {
            assert_eq!(delta.payload_json()["state"]["targetTemp"], 55);
            break device;
        }
        device.disconnect().await;
        assert!(started.elapsed() < common::WAIT, "no retained delta");
    };
    device
        .publish(
            &shadow_topic("lost", "reported"),
            json(&json!({"state": {"targetTemp": 55}})),
        )
        .await;
    // The version continues (a document of the imported shadow may come first).
    let document = loop {
        let document = device.expect("/shadow/document").await.payload_json();
        if document["version"] != 7 {
            break document;
        }
    };
    assert_eq!(document["version"], 8);
    let cleared = device.expect("/shadow/delta").await;
    assert!(cleared.payload.is_empty(), "the delta was not cleared");
    mongo
        .wait_for("shadows", doc! {"_id": "lost"}, |d| {
            d.get_i64("version") == Ok(8)
        })
        .await;
}

/// Names of the indexes on `collection` (empty while it does not exist).
async fn index_names(mongo: &Mongo, collection: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    match mongo
        .db()
        .collection::<BsonDocument>(collection)
        .list_indexes()
        .await
    {
        Ok(cursor) => cursor
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|index| index.options.and_then(|o| o.name))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Until the gateway's query indexes exist.
async fn wait_for_query_indexes(mongo: &Mongo) {
    let wanted = [
        ("shadows", "gatewayId_updatedAt"),
        ("commands", "status_deviceId_createdAt"),
        ("telemetry", "deviceId_ts"),
    ];
    let started = std::time::Instant::now();
    for (collection, name) in wanted {
        while !index_names(mongo, collection)
            .await
            .iter()
            .any(|n| n == name)
        {
            assert!(
                started.elapsed() < common::WAIT,
                "no {name} on {collection}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_creates_the_indexes_its_queries_need_at_every_start() {
    let mongo = Mongo::start().await;
    let mut gw_a = gateway(&mongo, "gw-a");
    wait_for_query_indexes(&mongo).await;
    assert!(gw_a.terminate().success());
    // Again, as every gateway of a fleet does at its start: nothing fails, nothing doubles.
    let before: Vec<_> = index_names(&mongo, "commands").await;
    gw_a.spawn(&[("IOTSPHERE__GATEWAY__ID", "gw-a")]);
    let gw_b = gateway(&mongo, "gw-b");
    wait_until_watching(&gw_b, &mongo, "probe-b", "gw-b").await;
    wait_until_watching(&gw_a, &mongo, "probe-a", "gw-a").await;
    assert_eq!(index_names(&mongo, "commands").await, before);
    for gateway in [&gw_a, &gw_b] {
        assert!(
            !gateway.log().contains("could not create an index"),
            "{}",
            gateway.log()
        );
    }
}
