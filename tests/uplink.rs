//! End to end with MongoDB: the gateway binary, real MQTT clients, and tests/mongo-double
//! (or the replica set of `MONGODB_URI`) through the official `mongodb` driver.

mod common;

use std::time::Duration;

use common::{http_get, json, reported_device, shadow_topic, Client, Gateway, Mongo};
use mongodb::bson::{doc, Document as BsonDocument};
use serde_json::json;

fn shadows(mongo: &Mongo) -> mongodb::Collection<BsonDocument> {
    mongo.db().collection("shadows")
}

/// A mongo-double keeping only 20 change events; `None` (the test is skipped, saying
/// `why`) when the tests run against a real MongoDB (`MONGODB_URI`).
async fn small_oplog_double(why: &str) -> Option<Mongo> {
    if std::env::var("MONGODB_URI").is_ok() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(
        Mongo::start_double(mongo_double::Options {
            oplog_size: 20,
            ..Default::default()
        })
        .await,
    )
}

/// The first delta (retained or live) whose targetTemp is `target`, skipping older ones
/// and empty ones (a cleared delta).
async fn delta_with_target(heater: &mut Client, target: i64) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let message = heater.expect("/shadow/delta").await;
        if message.payload.is_empty() {
            continue;
        }
        let delta = message.payload_json();
        if delta["state"]["targetTemp"] == target {
            return delta;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "no delta with targetTemp {target}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_reports_reach_mongodb_with_version_and_gateway() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let heater = Client::connect(gateway.port, "h-up").await;
    heater
        .publish(
            &shadow_topic("h-up", "reported"),
            json(&json!({"state": {"temperature": 48.5, "heater": {"on": true}}})),
        )
        .await;
    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-up"}, |d| {
            d.get_i64("version") == Ok(1)
        })
        .await;
    assert_eq!(stored.get_str("gatewayId"), Ok("gw-test"));
    let reported = stored
        .get_document("state")
        .and_then(|s| s.get_document("reported"))
        .expect("reported");
    assert_eq!(reported.get_f64("temperature"), Ok(48.5));
    assert_eq!(
        reported
            .get_document("heater")
            .and_then(|h| h.get_bool("on")),
        Ok(true)
    );
    assert!(stored.get_datetime("updatedAt").is_ok());
    assert!(stored.get_document("metadata").is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_desired_change_reaches_the_device_once() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = reported_device(&gateway, &mongo, "h-cloud").await;

    shadows(&mongo)
        .update_one(doc! {"_id": "h-cloud"}, doc! {"$set": {"state.desired.targetTemp": 61, "updatedAt": mongodb::bson::DateTime::now()}})
        .await
        .expect("cloud update");
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 61}));
    // The gateway writes the new version back; that echo must not come back as a delta.
    mongo
        .wait_for("shadows", doc! {"_id": "h-cloud"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    heater
        .expect_none("/shadow/delta", Duration::from_millis(700))
        .await;
    let (status, body) = http_get(gateway.http_port, "/health/uplink");
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["mode"], "change_stream");
    assert_eq!(report["connected"], true);
    assert!(report["lastEventAt"].is_string(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desired_change_made_while_the_gateway_was_down_is_delivered_after_restart() {
    let mongo = Mongo::start().await;
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let heater = reported_device(&gateway, &mongo, "h-away").await;
    // Let the watcher process one cloud event so a resume token is stored.
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-away"},
            doc! {"$set": {"state.desired.mode": "eco"}},
        )
        .await
        .expect("cloud update");
    mongo
        .wait_for("resume_tokens", doc! {"_id": "shadows:gw-test"}, |_| true)
        .await;
    mongo
        .wait_for("shadows", doc! {"_id": "h-away"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    heater.disconnect().await;
    let status = gateway.terminate();
    assert!(status.success());

    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-away"},
            doc! {"$set": {"state.desired.targetTemp": 64}},
        )
        .await
        .expect("cloud update while down");
    gateway.spawn(&[]);
    let mut heater = Client::connect(gateway.port, "h-away").await;
    heater.subscribe(&shadow_topic("h-away", "delta")).await;
    let delta = delta_with_target(&mut heater, 64).await;
    assert_eq!(delta["state"]["mode"], "eco");
}

/// A getMore error the driver does not resume from ends the shadow stream: `failCommand`
/// fails the getMore before its cursor is checked out, so MongoDB gives the error no
/// `ResumableChangeStreamError` label. The uplink reconnects, resumes from its stored token,
/// and cloud changes made before and after still reach the device.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_stream_error_the_driver_does_not_resume_loses_no_cloud_change() {
    let mongo = Mongo::start().await;
    // Its own gateway id: the fail point below catches this gateway's getMores only.
    let gateway = Gateway::start_with_env(
        &mongo.config(""),
        &[("IOTSPHERE__GATEWAY__ID", "gw-getmore")],
    );
    let mut heater = reported_device(&gateway, &mongo, "h-getmore").await;
    mongo
        .wait_for("resume_tokens", doc! {"_id": "shadows:gw-getmore"}, |_| {
            true
        })
        .await;
    mongo
        .client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["getMore"], "errorCode": 6, "appName": "iotsphere-gateway/gw-getmore"},
        })
        .await
        .expect("fail point");
    let shadows = shadows(&mongo);
    let cloud_sets = |target: i64| {
        shadows.update_one(
            doc! {"_id": "h-getmore"},
            doc! {"$set": {"state.desired.targetTemp": target}},
        )
    };
    cloud_sets(61).await.expect("cloud update");
    let started = std::time::Instant::now();
    while !gateway
        .log()
        .contains("MongoDB uplink interrupted; reconnecting")
    {
        assert!(
            started.elapsed() < common::WAIT,
            "the getMore error never reached the gateway: {}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cloud_sets(62).await.expect("cloud update");
    delta_with_target(&mut heater, 61).await;
    delta_with_target(&mut heater, 62).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_lost_triggers_a_resync() {
    let Some(mongo) =
        small_oplog_double("needs a small oplog, only the double can provide it on demand").await
    else {
        return;
    };
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let heater = reported_device(&gateway, &mongo, "h-lost").await;
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-lost"},
            doc! {"$set": {"state.desired.mode": "eco"}},
        )
        .await
        .expect("cloud update");
    // The gateway applied it and wrote its version 2 back: nothing of ours is pending.
    mongo
        .wait_for("shadows", doc! {"_id": "h-lost"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    heater.disconnect().await;
    assert!(gateway.terminate().success());

    // More changes than the history keeps: the stored token is now too old (286).
    for i in 0..50 {
        mongo
            .db()
            .collection::<BsonDocument>("noise")
            .insert_one(doc! {"i": i})
            .await
            .expect("noise");
    }
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-lost"},
            doc! {"$set": {"state.desired.targetTemp": 66}},
        )
        .await
        .expect("cloud update while down");
    gateway.spawn(&[]);
    let mut heater = Client::connect(gateway.port, "h-lost").await;
    heater.subscribe(&shadow_topic("h-lost", "delta")).await;
    delta_with_target(&mut heater, 66).await;
    // And the watcher is live again after the resync.
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-lost"},
            doc! {"$set": {"state.desired.targetTemp": 67}},
        )
        .await
        .expect("cloud update after resync");
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"]["targetTemp"], 67);
}

/// A stored resume token of another deployment (the database was restored from a backup or
/// replaced): MongoDB answers 280 "resume token was not found". The gateway resyncs as for
/// 286 instead of reconnecting for ever, so a change made while it was down still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_resume_token_of_another_deployment_triggers_a_resync() {
    if std::env::var("MONGODB_URI").is_ok() {
        eprintln!("skipped: needs a second deployment, only the double starts one on demand");
        return;
    }
    let mongo = Mongo::start().await;
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let heater = reported_device(&gateway, &mongo, "h-foreign").await;
    mongo
        .wait_for("resume_tokens", doc! {"_id": "shadows:gw-test"}, |_| true)
        .await;
    heater.disconnect().await;
    assert!(gateway.terminate().success());

    // A token from another deployment's change stream, stored as the gateway's own.
    let other = Mongo::start().await;
    let noise = other.db().collection::<BsonDocument>("noise");
    let mut stream = noise.watch().await.expect("watch the other deployment");
    noise.insert_one(doc! {"i": 1}).await.expect("insert");
    let event = futures_util::StreamExt::next(&mut stream)
        .await
        .expect("an event")
        .expect("event");
    let foreign = mongodb::bson::to_bson(&event.id).expect("token as BSON");
    mongo
        .db()
        .collection::<BsonDocument>("resume_tokens")
        .update_one(
            doc! {"_id": "shadows:gw-test"},
            doc! {"$set": {"token": foreign}},
        )
        .await
        .expect("replace the token");
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-foreign"},
            doc! {"$set": {"state.desired.targetTemp": 64}},
        )
        .await
        .expect("cloud update while down");

    gateway.spawn(&[]);
    let mut heater = Client::connect(gateway.port, "h-foreign").await;
    heater.subscribe(&shadow_topic("h-foreign", "delta")).await;
    delta_with_target(&mut heater, 64).await;
    assert!(
        gateway.log().contains("resyncing this gateway's shadows"),
        "{}",
        gateway.log()
    );
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-foreign"},
            doc! {"$set": {"state.desired.targetTemp": 65}},
        )
        .await
        .expect("cloud update after resync");
    delta_with_target(&mut heater, 65).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standalone_server_is_polled_and_health_says_so() {
    if std::env::var("MONGODB_URI").is_ok() {
        eprintln!("skipped: the real server is a replica set");
        return;
    }
    let mongo = Mongo::start_with(true).await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = reported_device(&gateway, &mongo, "h-poll").await;
    let started = std::time::Instant::now();
    loop {
        let (_, body) = http_get(gateway.http_port, "/health/uplink");
        if body.contains("\"mode\":\"polling\"") {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "/health/uplink never said polling: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-poll"},
            doc! {"$set": {"state.desired.targetTemp": 58, "updatedAt": mongodb::bson::DateTime::now()}},
        )
        .await
        .expect("cloud update");
    let delta = heater.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 58}));
    heater
        .expect_none("/shadow/delta", Duration::from_millis(500))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_misses_no_change_stamped_in_the_same_millisecond() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config("change_streams = \"off\""));
    let mut first = reported_device(&gateway, &mongo, "h-same-1").await;
    let mut second = reported_device(&gateway, &mongo, "h-same-2").await;
    // A cloud job stamps its whole batch with one time; the gateway polls in between.
    let stamp = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() + 60_000,
    );
    let collection = shadows(&mongo);
    let set = |id: &'static str| {
        collection.update_one(
            doc! {"_id": id},
            doc! {"$set": {"state.desired.targetTemp": 61, "updatedAt": stamp}},
        )
    };
    set("h-same-1").await.expect("cloud update");
    first.expect("/shadow/delta").await;
    set("h-same-2").await.expect("cloud update");
    let delta = second.expect("/shadow/delta").await;
    assert_eq!(delta.payload_json()["state"], json!({"targetTemp": 61}));
    for heater in [&mut first, &mut second] {
        heater
            .expect_none("/shadow/delta", Duration::from_millis(500))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_connections_and_a_slow_server_lose_nothing() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let admin = mongo.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 3},
            "data": {"failCommands": ["update", "insert"], "closeConnection": true},
        })
        .await
        .expect("fail point");
    let heater = Client::connect(gateway.port, "h-fault").await;
    for i in 1..=5 {
        heater
            .publish(
                &shadow_topic("h-fault", "reported"),
                json(&json!({"state": {"n": i}})),
            )
            .await;
        heater
            .publish(
                "iotsphere/devices/h-fault/telemetry/temperature",
                json(&json!({"value": i, "seq": i})),
            )
            .await;
    }
    mongo
        .wait_for("shadows", doc! {"_id": "h-fault"}, |d| {
            d.get_document("state")
                .and_then(|s| s.get_document("reported"))
                .and_then(|r| r.get_i64("n").or(r.get_i32("n").map(i64::from)))
                == Ok(5)
        })
        .await;
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 2},
            "data": {"failCommands": ["insert"], "blockConnection": true, "blockTimeMS": 1500},
        })
        .await
        .expect("fail point");
    publish_temperatures(&heater, "h-fault", 6..=8).await;
    wait_for_readings(&mongo, "h-fault", 8, common::WAIT * 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_stored_with_its_fields() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let heater = Client::connect(gateway.port, "h-tel").await;
    heater
        .publish(
            "iotsphere/devices/h-tel/telemetry/temperature",
            json(&json!({"value": 54.5, "ts": 1764000000123_i64, "seq": 7, "unit": "C"})),
        )
        .await;
    heater
        .publish(
            "iotsphere/devices/h-tel/telemetry/pressure",
            b"2.5".to_vec(),
        )
        .await;
    heater
        .publish(
            "iotsphere/devices/h-tel/telemetry/pressure",
            b"not a reading".to_vec(),
        )
        .await;
    let reading = mongo
        .wait_for(
            "telemetry",
            doc! {"deviceId": "h-tel", "kind": "temperature"},
            |_| true,
        )
        .await;
    assert_eq!(reading.get_f64("value"), Ok(54.5));
    assert_eq!(reading.get_i64("seq"), Ok(7));
    assert_eq!(reading.get_str("unit"), Ok("C"));
    assert_eq!(reading.get_str("gatewayId"), Ok("gw-test"));
    assert_eq!(
        reading.get_datetime("ts").map(|t| t.timestamp_millis()),
        Ok(1764000000123)
    );
    let pressure = mongo
        .wait_for(
            "telemetry",
            doc! {"deviceId": "h-tel", "kind": "pressure"},
            |_| true,
        )
        .await;
    assert_eq!(pressure.get_f64("value"), Ok(2.5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = mongo
        .db()
        .collection::<BsonDocument>("telemetry")
        .count_documents(doc! {"deviceId": "h-tel"})
        .await
        .expect("count");
    assert_eq!(
        count, 2,
        "the malformed reading is dropped, the others kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_sent_answered_and_expired() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = reported_device(&gateway, &mongo, "h-cmd").await;
    heater
        .subscribe("iotsphere/devices/h-cmd/commands/request")
        .await;
    let commands = mongo.db().collection::<BsonDocument>("commands");
    let past = mongodb::bson::DateTime::from_millis(1_000);
    commands
        .insert_one(doc! {"_id": "old", "deviceId": "h-cmd", "name": "reboot", "status": "pending", "expiresAt": past, "createdAt": past})
        .await
        .expect("insert expired");
    commands
        .insert_one(doc! {"_id": "c1", "deviceId": "h-cmd", "name": "boost", "args": {"minutes": 30}, "status": "pending", "createdAt": mongodb::bson::DateTime::now()})
        .await
        .expect("insert command");
    let request = heater.expect("/commands/request").await.payload_json();
    assert_eq!(
        request,
        json!({"commandId": "c1", "name": "boost", "args": {"minutes": 30}})
    );
    mongo
        .wait_for("commands", doc! {"_id": "c1"}, |d| {
            d.get_str("status") == Ok("sent")
        })
        .await;
    mongo
        .wait_for("commands", doc! {"_id": "old"}, |d| {
            d.get_str("status") == Ok("expired")
        })
        .await;

    heater
        .publish(
            "iotsphere/devices/h-cmd/commands/response",
            json(&json!({"commandId": "c1", "ok": true, "result": {"boosted": true}})),
        )
        .await;
    let done = mongo
        .wait_for("commands", doc! {"_id": "c1"}, |d| {
            d.get_str("status") == Ok("succeeded")
        })
        .await;
    assert_eq!(
        done.get_document("response")
            .and_then(|r| r.get_bool("boosted")),
        Ok(true)
    );
    heater
        .expect_none("/commands/request", Duration::from_millis(500))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_commands_wait_for_their_time_also_across_a_restart() {
    use mongodb::bson::DateTime;
    let later = |millis: i64| DateTime::from_millis(DateTime::now().timestamp_millis() + millis);
    let mongo = Mongo::start().await;
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let request_topic = "iotsphere/devices/h-sched/commands/request";
    let mut heater = reported_device(&gateway, &mongo, "h-sched").await;
    heater.subscribe(request_topic).await;
    let commands = mongo.db().collection::<BsonDocument>("commands");
    let due = later(2_000);
    commands
        .insert_many([
            doc! {"_id": "descale", "deviceId": "h-sched", "name": "descale", "status": "pending", "notBefore": due, "createdAt": DateTime::now()},
            // Expires before it is due: never sent.
            doc! {"_id": "stale", "deviceId": "h-sched", "name": "boost", "status": "pending", "notBefore": due, "expiresAt": later(1_000), "createdAt": DateTime::now()},
        ])
        .await
        .expect("insert scheduled commands");
    heater
        .expect_none("/commands/request", Duration::from_millis(1_500))
        .await;
    let request = heater.expect("/commands/request").await.payload_json();
    assert!(DateTime::now() >= due, "sent before notBefore");
    assert_eq!(request["commandId"], "descale");
    mongo
        .wait_for("commands", doc! {"_id": "stale"}, |d| {
            d.get_str("status") == Ok("expired")
        })
        .await;
    heater
        .expect_none("/commands/request", Duration::from_millis(500))
        .await;

    // Scheduled (as an RFC 3339 string, the seeds' style), then the gateway restarts.
    let due = later(3_000);
    let due_text = due.try_to_rfc3339_string().expect("rfc3339");
    commands
        .insert_one(doc! {"_id": "night", "deviceId": "h-sched", "name": "eco", "status": "pending", "notBefore": due_text, "createdAt": DateTime::now()})
        .await
        .expect("insert");
    heater.disconnect().await;
    gateway.restart();
    let mut heater = Client::connect(gateway.port, "h-sched").await;
    heater.subscribe(request_topic).await;
    let request = heater.expect("/commands/request").await.payload_json();
    assert!(
        DateTime::now() >= due,
        "sent before notBefore after a restart"
    );
    assert_eq!(request["commandId"], "night");
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_is_kept_in_the_shadow() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    // Anonymous mode: a client id is a device once it holds a shadow here.
    let first = Client::connect(gateway.port, "h-presence").await;
    first
        .publish(
            &shadow_topic("h-presence", "reported"),
            json(&json!({"state": {"t": 1}})),
        )
        .await;
    mongo
        .wait_for("shadows", doc! {"_id": "h-presence"}, |d| {
            d.get_i64("version") == Ok(1)
        })
        .await;
    first.disconnect().await;
    let heater = Client::connect(gateway.port, "h-presence").await;
    let online = mongo
        .wait_for("shadows", doc! {"_id": "h-presence"}, |d| {
            d.get_bool("connected") == Ok(true)
        })
        .await;
    let first_seen = online
        .get_datetime("lastSeen")
        .expect("lastSeen")
        .timestamp_millis();
    heater.disconnect().await;
    let offline = mongo
        .wait_for("shadows", doc! {"_id": "h-presence"}, |d| {
            d.get_bool("connected") == Ok(false)
        })
        .await;
    assert!(
        offline
            .get_datetime("lastSeen")
            .expect("lastSeen")
            .timestamp_millis()
            >= first_seen
    );
    assert_eq!(
        offline.get_i64("version"),
        Ok(1),
        "presence does not touch the shadow state"
    );
    assert_eq!(offline.get_str("gatewayId"), Ok("gw-test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn desired_changed_on_both_sides_while_apart_is_merged() {
    let Some(mongo) =
        small_oplog_double("needs the double's small oplog and per-client fail points").await
    else {
        return;
    };
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = reported_device(&gateway, &mongo, "h-both").await;
    // From now on the gateway's writes fail (its appName); the cloud's do not.
    let admin = mongo.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {"failCommands": ["update"], "closeConnection": true, "appName": "iotsphere-gateway/gw-test"},
        })
        .await
        .expect("fail point");
    // Locally an app sets the mode: version 2 waits in the outbox.
    let app = Client::connect(gateway.port, "app-both").await;
    app.publish(
        &shadow_topic("h-both", "desired"),
        json(&json!({"state": {"mode": "eco"}})),
    )
    .await;
    heater.expect("/shadow/delta").await;
    heater.disconnect().await;
    assert!(gateway.terminate().success());
    // Meanwhile the cloud sets the temperature, and the history that would tell is lost.
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-both"},
            doc! {"$set": {"state.desired.targetTemp": 66}},
        )
        .await
        .expect("cloud update");
    for i in 0..50 {
        mongo
            .db()
            .collection::<BsonDocument>("noise")
            .insert_one(doc! {"i": i})
            .await
            .expect("noise");
    }
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off");

    gateway.spawn(&[]);
    // Both changes survive: the cloud's temperature and the local mode.
    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-both"}, |d| {
            d.get_document("state")
                .and_then(|s| s.get_document("desired"))
                .is_ok_and(|desired| {
                    desired.get_str("mode") == Ok("eco")
                        && desired
                            .get_i32("targetTemp")
                            .map(i64::from)
                            .or(desired.get_i64("targetTemp"))
                            == Ok(66)
                })
        })
        .await;
    assert_eq!(stored.get_i64("version"), Ok(3));
    let mut heater = Client::connect(gateway.port, "h-both").await;
    heater.subscribe(&shadow_topic("h-both", "delta")).await;
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"mode": "eco", "targetTemp": 66}));
}

/// The gateway's TTL index on `telemetry`, as (field, expireAfterSeconds), once it settles.
async fn retention_index(mongo: &Mongo, want: Option<i64>) -> Option<(String, i64)> {
    use futures_util::TryStreamExt;
    let started = std::time::Instant::now();
    loop {
        // Until the gateway made the index the collection may not exist (NamespaceNotFound).
        let indexes: Vec<_> = match mongo
            .db()
            .collection::<BsonDocument>("telemetry")
            .list_indexes()
            .await
        {
            Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let ttl = indexes.iter().find_map(|index| {
            let seconds = index.options.as_ref()?.expire_after?.as_secs();
            let field = index.keys.keys().next()?.clone();
            Some((field, i64::try_from(seconds).ok()?))
        });
        if ttl.as_ref().map(|(_, seconds)| *seconds) == want || started.elapsed() > common::WAIT {
            return ttl;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_retention_is_a_ttl_index_that_follows_the_config() {
    let mongo = Mongo::start().await;
    let mut gateway = Gateway::start_with(&mongo.config("telemetry_retention_days = 7"));
    assert_eq!(
        retention_index(&mongo, Some(7 * 86_400)).await,
        Some(("ts".to_string(), 7 * 86_400))
    );
    assert!(gateway.terminate().success());
    gateway.spawn(&[("IOTSPHERE__MONGODB__TELEMETRY_RETENTION_DAYS", "30")]);
    assert_eq!(
        retention_index(&mongo, Some(30 * 86_400)).await,
        Some(("ts".to_string(), 30 * 86_400)),
        "a changed retention replaces the index"
    );
    assert!(gateway.terminate().success());
    gateway.spawn(&[("IOTSPHERE__MONGODB__TELEMETRY_RETENTION_DAYS", "0")]);
    assert_eq!(
        retention_index(&mongo, None).await,
        None,
        "0 keeps telemetry for ever"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_for_an_offline_heater_waits_until_it_listens() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let heater = reported_device(&gateway, &mongo, "h-away").await;
    heater.disconnect().await;
    let commands = mongo.db().collection::<BsonDocument>("commands");
    commands
        .insert_one(doc! {"_id": "wake", "deviceId": "h-away", "name": "boost", "status": "pending", "createdAt": mongodb::bson::DateTime::now()})
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let waiting = commands
        .find_one(doc! {"_id": "wake"})
        .await
        .expect("find")
        .expect("the command");
    assert_eq!(waiting.get_str("status"), Ok("pending"), "sent to nobody");

    // Back with a clean session: it subscribes, and then the command comes.
    let mut heater = Client::connect(gateway.port, "h-away").await;
    heater
        .subscribe("iotsphere/devices/h-away/commands/request")
        .await;
    let request = heater.expect("/commands/request").await.payload_json();
    assert_eq!(request["commandId"], "wake");
    mongo
        .wait_for("commands", doc! {"_id": "wake"}, |d| {
            d.get_str("status") == Ok("sent")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_in_small_delayed_batches_still_arrives_once() {
    let mongo = Mongo::start().await;
    let gateway =
        Gateway::start_with(&mongo.config("telemetry_batch = 3\ntelemetry_flush_ms = 200"));
    let heater = Client::connect(gateway.port, "h-batch").await;
    publish_temperatures(&heater, "h-batch", 0..=9).await;
    wait_for_readings(&mongo, "h-batch", 10, common::WAIT).await;
}

/// Temperature readings `{"value": seq, "seq": seq}` for each `seq`, in order.
async fn publish_temperatures(
    heater: &Client,
    device_id: &str,
    seqs: std::ops::RangeInclusive<i64>,
) {
    let topic = format!("iotsphere/devices/{device_id}/telemetry/temperature");
    for seq in seqs {
        heater
            .publish(&topic, json(&json!({"value": seq, "seq": seq})))
            .await;
    }
}

/// Waits until MongoDB holds exactly `expected` readings of the device (never more).
async fn wait_for_readings(mongo: &Mongo, device_id: &str, expected: u64, wait: Duration) {
    let telemetry = mongo.db().collection::<BsonDocument>("telemetry");
    let started = std::time::Instant::now();
    loop {
        let stored = telemetry
            .count_documents(doc! {"deviceId": device_id})
            .await
            .expect("count");
        if stored == expected {
            return;
        }
        assert!(stored < expected, "a reading was stored twice: {stored}");
        assert!(
            started.elapsed() < wait,
            "only {stored} of {expected} readings stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_ids_are_per_device() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let reading =
        |value: i64| json(&json!({"metadata": {"messageId": "1"}, "payload": {"value": value}}));
    let a = Client::connect(gateway.port, "h-id-a").await;
    let b = Client::connect(gateway.port, "h-id-b").await;
    a.publish(
        "iotsphere/devices/h-id-a/telemetry/temperature",
        reading(40),
    )
    .await;
    b.publish(
        "iotsphere/devices/h-id-b/telemetry/temperature",
        reading(50),
    )
    .await;
    // A retransmission of a's message 1 is still stored once.
    a.publish(
        "iotsphere/devices/h-id-a/telemetry/temperature",
        reading(40),
    )
    .await;
    for (id, value) in [("h-id-a:1", 40.0), ("h-id-b:1", 50.0)] {
        let stored = mongo
            .wait_for("telemetry", doc! {"_id": id}, |_| true)
            .await;
        let stored_value = stored.get("value").and_then(|v| {
            v.as_f64()
                .or(v.as_i64().map(|i| i as f64))
                .or(v.as_i32().map(f64::from))
        });
        assert_eq!(stored_value, Some(value), "{stored}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = mongo
        .db()
        .collection::<BsonDocument>("telemetry")
        .count_documents(doc! {"deviceId": "h-id-a"})
        .await
        .expect("count");
    assert_eq!(count, 1);
}

/// A document's `state.<section>` (empty when absent).
fn section(stored: &BsonDocument, name: &str) -> BsonDocument {
    stored
        .get_document("state")
        .and_then(|s| s.get_document(name))
        .cloned()
        .unwrap_or_default()
}

/// An integer field of a BSON document, whichever width the server stored.
fn int(document: &BsonDocument, key: &str) -> Option<i64> {
    document
        .get_i32(key)
        .map(i64::from)
        .or(document.get_i64(key))
        .ok()
}

fn now_plus_ms(ms: i64) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(mongodb::bson::DateTime::now().timestamp_millis() + ms)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_is_recorded_in_mongodb_where_the_cloud_service_wrote() {
    let mongo = Mongo::start().await;
    let gateway = Gateway::start_with(&mongo.config(""));
    let mut heater = reported_device(&gateway, &mongo, "h-refused").await;
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-refused"},
            doc! {"$set": {"state.desired.targetTemp": 80, "state.desired.mode": "eco", "updatedAt": mongodb::bson::DateTime::now()}},
        )
        .await
        .expect("cloud update");
    delta_with_target(&mut heater, 80).await;
    heater
        .publish(
            &shadow_topic("h-refused", "refused"),
            json(&json!({"state": {"targetTemp": 80}, "reason": "above 70 °C", "code": 1001})),
        )
        .await;
    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-refused"}, |d| {
            int(&section(d, "refused"), "targetTemp") == Some(80)
        })
        .await;
    assert_eq!(section(&stored, "desired"), doc! {"mode": "eco"});
    let why = stored
        .get_document("metadata")
        .and_then(|m| m.get_document("refused"))
        .and_then(|r| r.get_document("targetTemp"))
        .expect("metadata.refused.targetTemp");
    assert_eq!(why.get_str("reason"), Ok("above 70 °C"));
    assert_eq!(int(why, "code"), Some(1001));
    let delta = heater.expect("/shadow/delta").await.payload_json();
    assert_eq!(delta["state"], json!({"mode": "eco"}));
    // The gateway's own write is not a cloud change: the refused value does not return.
    heater
        .expect_none("/shadow/delta", Duration::from_millis(700))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_expiry_passes_while_the_heater_is_offline_across_a_restart() {
    let mongo = Mongo::start().await;
    let mut gateway = Gateway::start_with(&mongo.config(""));
    let heater = reported_device(&gateway, &mongo, "h-expires").await;
    heater.disconnect().await;
    let expires = now_plus_ms(2000);
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-expires"},
            doc! {"$set": {
                "state.desired.targetTemp": 70,
                "desiredExpiresAt": expires,
                "updatedAt": mongodb::bson::DateTime::now(),
            }},
        )
        .await
        .expect("cloud update");
    // The gateway took the change (and its expiry) and wrote it back without the field.
    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-expires"}, |d| {
            d.get_i64("version") == Ok(2)
        })
        .await;
    assert!(!stored.contains_key("desiredExpiresAt"), "{stored}");
    let leaf = stored
        .get_document("metadata")
        .and_then(|m| m.get_document("desired"))
        .and_then(|d| d.get_document("targetTemp"))
        .expect("metadata.desired.targetTemp");
    assert_eq!(
        int(leaf, "expiresAt"),
        Some(expires.timestamp_millis() / 1000)
    );

    // The gateway is down when the value expires.
    assert!(gateway.terminate().success());
    // Past the second it expires in (the engine counts whole seconds).
    while now_plus_ms(-1000) <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.spawn(&[]);
    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-expires"}, |d| {
            int(&section(d, "expired"), "targetTemp") == Some(70)
        })
        .await;
    assert_eq!(section(&stored, "desired"), doc! {});
    let mut heater = Client::connect(gateway.port, "h-expires").await;
    heater.subscribe(&shadow_topic("h-expires", "delta")).await;
    heater
        .expect_none("/shadow/delta", Duration::from_millis(700))
        .await;
}

/// After an outage of the uplink the cloud's change is replayed (change stream resumed,
/// or the writer's three-way merge); with `local_wins` it is judged by the cloud's
/// `updatedAt`: a change made at the heater's panel during the outage, after it, stands,
/// and the cloud's value is recorded superseded.
#[tokio::test(flavor = "multi_thread")]
async fn a_panel_change_during_an_uplink_outage_beats_an_older_cloud_setpoint() {
    let Some(mongo) = small_oplog_double("needs the double's per-client fail points").await else {
        return;
    };
    let config = mongo.config("\n[shadow]\nlocal_wins = [\"targetTemp\"]\n");
    let gateway = Gateway::start_with(&config);
    let mut heater = reported_device(&gateway, &mongo, "h-outage").await;
    let admin = mongo.client.database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {
                "failCommands": ["update", "find", "aggregate", "getMore"],
                "closeConnection": true,
                "appName": "iotsphere-gateway/gw-test",
            },
        })
        .await
        .expect("fail point");
    let started = std::time::Instant::now();
    while !gateway
        .log()
        .contains("MongoDB uplink interrupted; reconnecting")
    {
        assert!(started.elapsed() < common::WAIT, "{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cloud sets 66; the gateway cannot see it.
    shadows(&mongo)
        .update_one(
            doc! {"_id": "h-outage"},
            doc! {"$set": {"state.desired.targetTemp": 66, "updatedAt": mongodb::bson::DateTime::now()}},
        )
        .await
        .expect("cloud update");
    // A second later the tenant turns the panel to 55; the heater reports it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    heater
        .publish(
            &shadow_topic("h-outage", "reported"),
            json(&json!({"state": {"targetTemp": 55}})),
        )
        .await;
    heater.expect("/shadow/document").await;
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off");

    let stored = mongo
        .wait_for("shadows", doc! {"_id": "h-outage"}, |d| {
            int(&section(d, "superseded"), "targetTemp") == Some(66)
        })
        .await;
    assert_eq!(int(&section(&stored, "reported"), "targetTemp"), Some(55));
    assert_eq!(section(&stored, "desired"), doc! {});
    heater
        .expect_none("/shadow/delta", Duration::from_millis(700))
        .await;
}
