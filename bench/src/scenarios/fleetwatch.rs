//! Many gateways on one MongoDB: what each gateway's change stream receives. G watchers
//! open the *gateway's own* change-stream pipeline
//! (`iotsphere_gateway::uplink::watcher::change_stream_pipeline`), one per simulated
//! gateway, on one database where D shadows are spread evenly over G owners; a cloud
//! service then makes K changes of `state.desired` (round robin over the devices). Counted:
//! the events each watcher receives, until every watcher has what it must get or the
//! settle time after the last change ran out. With `--no-filter` the watchers use only
//! the operation-type match, as a gateway without the ownership `$match` would: every
//! gateway then receives the whole fleet's changes. The database's CPU time is the
//! broker's (`--pid` of the MongoDB server). Each watcher has its own client (connection
//! pool), as each gateway does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::FullDocumentType;
use serde::Serialize;
use serde_json::json;

use super::Ctx;
use crate::cli::FleetwatchArgs;
use crate::mongo;
use crate::report::{Errors, Outcome};

#[derive(Serialize)]
struct Results {
    /// Events each gateway must receive: its own devices' changes (with the filter) or all.
    expected_per_gateway_max: u64,
    events_per_gateway_mean: f64,
    events_per_gateway_max: u64,
    events_per_gateway_min: u64,
    /// Events shipped by MongoDB to all gateways together.
    events_total: u64,
    changes_made: u64,
    /// Seconds from the first change until every watcher had its events.
    seconds: f64,
}

pub async fn run(ctx: &Ctx, args: &FleetwatchArgs) -> anyhow::Result<Outcome> {
    let uri = args.mongo.required_uri("fleetwatch")?;
    let db = mongo::connect(uri, &args.mongo.database).await?;
    let shadows = db.collection::<Document>("shadows");
    let gateways = args.gateways.max(1);
    let devices = args.devices.max(gateways);
    let owner = |device: usize| format!("{}gw{}", ctx.prefix, device % gateways);
    let device_id = |device: usize| ctx.device_id("fw", device);
    let documents: Vec<Document> = (0..devices)
        .map(|d| {
            doc! {"_id": device_id(d), "gatewayId": owner(d), "version": 1_i64,
            "state": {"reported": {"targetTemp": 20}, "desired": {}}}
        })
        .collect();
    shadows.insert_many(documents).await?;

    let mut errors = Errors::default();
    let counters: Vec<Arc<AtomicU64>> = (0..gateways).map(|_| Arc::default()).collect();
    let mut watchers = Vec::new();
    for (g, counter) in counters.iter().enumerate() {
        let gateway_id = owner(g);
        let pipeline = if args.no_filter {
            vec![doc! {"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]
        } else {
            iotsphere_gateway::uplink::watcher::change_stream_pipeline(&gateway_id).to_vec()
        };
        // Its own client, as every gateway has: a shared pool would be held by the
        // watchers' waiting getMores and stall the cloud's updates.
        let mut stream = mongo::connect(uri, &args.mongo.database)
            .await?
            .collection::<Document>("shadows")
            .watch()
            .pipeline(pipeline)
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        let counter = counter.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if event.is_err() {
                    return;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let changes = args.changes;
    let expected: Vec<u64> = (0..gateways)
        .map(|g| {
            if args.no_filter {
                changes
            } else {
                (0..changes)
                    .filter(|k| (*k as usize % devices) % gateways == g)
                    .count() as u64
            }
        })
        .collect();
    let started = Instant::now();
    let mut made = 0;
    for k in 0..changes {
        if Instant::now() >= ctx.deadline {
            break;
        }
        let change =
            doc! {"$set": {"state.desired.targetTemp": k as i64, "updatedAt": DateTime::now()}};
        match shadows
            .update_one(doc! {"_id": device_id(k as usize % devices)}, change)
            .await
        {
            Ok(_) => made += 1,
            Err(e) => errors.push(format!("updateOne: {e}")),
        }
    }
    let settle_until = Instant::now() + Duration::from_millis(args.settle_ms);
    let all_in = || {
        counters
            .iter()
            .zip(&expected)
            .all(|(c, e)| c.load(Ordering::Relaxed) >= *e)
    };
    while !all_in() && Instant::now() < settle_until.min(ctx.deadline) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Anything more that arrives shortly after is counted too (nothing should).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for watcher in watchers {
        watcher.abort();
    }
    let events: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = events.iter().sum();
    let results = Results {
        expected_per_gateway_max: expected.iter().copied().max().unwrap_or(0),
        events_per_gateway_mean: total as f64 / gateways as f64,
        events_per_gateway_max: events.iter().copied().max().unwrap_or(0),
        events_per_gateway_min: events.iter().copied().min().unwrap_or(0),
        events_total: total,
        changes_made: made,
        seconds,
    };
    let summary = format!(
        "{gateways} gateways, {devices} devices, {made} changes, ownership $match {}: events per gateway mean {:.1} (min {}, max {}), {} shipped in all, {:.2} s",
        if args.no_filter { "off" } else { "on" },
        results.events_per_gateway_mean,
        results.events_per_gateway_min,
        results.events_per_gateway_max,
        total,
        seconds
    );
    Ok(Outcome {
        params: json!({
            "gateways": gateways,
            "devices": devices,
            "changes": changes,
            "filter": !args.no_filter,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: !all_in(),
        errors,
    })
}
