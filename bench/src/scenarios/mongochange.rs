//! MongoDB change → delta: N devices report `targetTemp` 20 and subscribe to their own
//! `shadow/delta`; once every shadow is in MongoDB, the load generator — a cloud service —
//! sets `state.desired.targetTemp` of each device's document in `shadows` in turn, with the
//! `mongodb` driver, at a bounded rate, `--rounds` times (round r sets 30 + r, so each
//! delta tells which change it answers). Each change also sets `updatedAt`, as the gateway
//! asks of cloud services so that polling sees it; it never touches `version` (the
//! gateway's own writes set it, and its watcher skips those as echoes). Measured: from
//! issuing the update to the delta at the device (HDR); missing, duplicated, unexpected
//! deltas; the driver's update round trip. Works the same whether the gateway follows a
//! change stream or polls. `--slow-app` makes the gateway's own updates slow in the server
//! (a distant MongoDB): the cloud → device path must not wait for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};
use serde::Serialize;
use serde_json::json;
use tokio::time::sleep_until;

use super::{Ctx, Listeners, Updates};
use crate::cli::MongochangeArgs;
use crate::mongo;
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, Latency, LatencySummary, Pacer};

/// `targetTemp` of round 0 (devices report [`REPORTED_TEMP`], so every change is a delta).
const BASE_TEMP: u32 = 30;
const REPORTED_TEMP: u32 = 20;
/// How often the load generator looks whether every device's shadow is in MongoDB.
const READY_CHECK: Duration = Duration::from_millis(100);

#[derive(Serialize)]
struct Results {
    devices_connected: usize,
    /// Seconds until every connected device's reported state was in MongoDB.
    shadows_ready_s: Option<f64>,
    changes_sent: u64,
    changes_failed: u64,
    deltas_received: u64,
    /// Changes whose delta never came.
    missing: u64,
    duplicates: u64,
    /// Deltas that answer no change of this run (e.g. an empty "nothing pending").
    unexpected: u64,
    change_to_delta: LatencySummary,
    /// The driver's `updateOne` round trip.
    update_call: LatencySummary,
}

struct Cloud {
    sent: u64,
    failed: u64,
    call: Latency,
    deadline_hit: bool,
    errors: Errors,
}

pub async fn run(ctx: &Ctx, args: &MongochangeArgs) -> anyhow::Result<Outcome> {
    let uri = args.mongo.required_uri("mongochange")?;
    let db = mongo::connect(uri, &args.mongo.database).await?;
    if let Some(app) = &args.slow_app {
        let slow_ms = i64::try_from(args.slow_ms).unwrap_or(i64::MAX);
        db.client()
            .database("admin")
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": "alwaysOn",
                "data": {"failCommands": ["update"], "blockConnection": true,
                         "blockTimeMS": slow_ms, "appName": app},
            })
            .await?;
    }
    let devices = args.plan.devices.max(1);
    let rounds = args.plan.rounds.max(1);
    let ids: Vec<String> = (0..devices).map(|i| ctx.device_id("mc", i)).collect();
    let mut errors = Errors::default();

    let reported = format!(r#"{{"state":{{"targetTemp":{REPORTED_TEMP}}}}}"#);
    let listeners = Listeners::open(
        ctx,
        "mc",
        devices,
        1,
        Some(reported.as_bytes()),
        &mut errors,
    )
    .await;
    let connected = listeners.connected.len();
    let shadows = db.collection::<Document>("shadows");
    let targets: Vec<String> = listeners
        .connected
        .iter()
        .map(|&i| ids[i].clone())
        .collect();
    let shadows_ready_s = wait_for_shadows(&shadows, &targets, ctx.deadline).await?;

    let updates = Arc::new(Updates::new(devices, rounds, BASE_TEMP));
    let cloud = tokio::spawn(drive_cloud(
        db.clone(),
        ids,
        listeners.connected.clone(),
        updates.clone(),
        Pacer::new(
            Instant::now(),
            (args.plan.rate > 0.0).then_some(args.plan.rate),
        ),
        ctx.deadline,
    ));
    let (tally, device_errors) = listeners
        .tally_and_close(&updates, args.settle_ms, ctx.deadline)
        .await;
    let cloud = cloud.await?;
    errors.merge(device_errors);
    errors.merge(cloud.errors);

    let results = Results {
        devices_connected: connected,
        shadows_ready_s,
        changes_sent: cloud.sent,
        changes_failed: cloud.failed,
        deltas_received: tally.received,
        missing: cloud.sent.saturating_sub(tally.unique),
        duplicates: tally.duplicates,
        unexpected: tally.unexpected,
        change_to_delta: tally.latency.summary(),
        update_call: cloud.call.summary(),
    };
    let summary = format!(
        "{} devices x {} rounds at {}/s: {} changes in MongoDB ({} failed), {} deltas ({} missing, {} duplicates, {} unexpected)\n\
         change -> delta {}\nupdateOne {}",
        connected,
        rounds,
        args.plan.rate,
        results.changes_sent,
        results.changes_failed,
        results.deltas_received,
        results.missing,
        results.duplicates,
        results.unexpected,
        results.change_to_delta,
        results.update_call,
    );
    Ok(Outcome {
        params: json!({
            "devices": devices,
            "rounds": rounds,
            "rate": args.plan.rate,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: shadows_ready_s.is_none() || tally.deadline_hit || cloud.deadline_hit,
        errors,
    })
}

/// Waits until every device's reported state is in `shadows`; seconds it took, or `None`
/// at the deadline.
async fn wait_for_shadows(
    shadows: &Collection<Document>,
    ids: &[String],
    deadline: Instant,
) -> anyhow::Result<Option<f64>> {
    let filter = doc! {
        "_id": {"$in": ids},
        "state.reported.targetTemp": REPORTED_TEMP,
    };
    let took = mongo::wait_count(shadows, filter, ids.len() as u64, READY_CHECK, deadline).await?;
    Ok(took.map(|t| t.as_secs_f64()))
}

/// The cloud service: one change per connected device per round, paced, one `updateOne`
/// at a time.
async fn drive_cloud(
    db: Database,
    ids: Vec<String>,
    targets: Vec<usize>,
    updates: Arc<Updates>,
    pacer: Pacer,
    deadline: Instant,
) -> Cloud {
    let shadows = db.collection::<Document>("shadows");
    let mut cloud = Cloud {
        sent: 0,
        failed: 0,
        call: Latency::default(),
        deadline_hit: false,
        errors: Errors::default(),
    };
    let total = updates.rounds as u64 * targets.len() as u64;
    for k in 0..total {
        let at = pacer.at(k);
        if at >= deadline || Instant::now() >= deadline {
            cloud.deadline_hit = true;
            break;
        }
        sleep_until(at.into()).await;
        let round = (k / targets.len() as u64) as u32;
        let device = targets[(k % targets.len() as u64) as usize];
        let issued = now_ns();
        updates.mark_sent(round, device, issued);
        match mongo::set_desired_temp(&shadows, &ids[device], updates.target_temp(round)).await {
            Ok(true) => {
                cloud.call.record_ns(now_ns().saturating_sub(issued));
                cloud.sent += 1;
            }
            Ok(false) => {
                cloud.failed += 1;
                cloud.errors.push(format!("no shadow {}", ids[device]));
            }
            Err(e) => {
                cloud.failed += 1;
                cloud.errors.push(format!("updateOne {}: {e}", ids[device]));
            }
        }
    }
    updates
        .done_ns
        .store(now_ns().max(1), std::sync::atomic::Ordering::Release);
    cloud
}
