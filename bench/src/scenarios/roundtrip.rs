//! Shadow round trip: an app publishes `{"state":{"targetTemp":X}}` to each device's
//! `shadow/desired` in turn, at a bounded rate; each device is subscribed to its own
//! `shadow/delta`. Measured: desired published → delta received, per device and round
//! (HDR histogram). Round `r` sets `X = 30 + r`, so every update changes the delta and
//! every delta says which update it answers. Gateway only: a plain broker has no shadows.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use tokio::time::sleep_until;

use super::{desired_payload, Ctx, Listeners, Updates, CLOSE_DRAIN};
use crate::cli::RoundtripArgs;
use crate::mqtt::{Connection, Incoming};
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, Latency, LatencySummary, Pacer};

/// `targetTemp` of round 0.
const BASE_TEMP: u32 = 30;

#[derive(Serialize)]
struct Results {
    devices_connected: usize,
    desired_sent: u64,
    desired_acked: u64,
    deltas_received: u64,
    /// Updates whose delta never came.
    missing: u64,
    duplicates: u64,
    /// Deltas that answer no update of this run (e.g. an empty "nothing pending").
    unexpected: u64,
    desired_to_delta: LatencySummary,
    desired_puback: Option<LatencySummary>,
}

struct App {
    sent: u64,
    acked: u64,
    puback: Latency,
    deadline_hit: bool,
    errors: Errors,
}

pub async fn run(ctx: &Ctx, args: &RoundtripArgs) -> anyhow::Result<Outcome> {
    let devices = args.plan.devices.max(1);
    let rounds = args.plan.rounds.max(1);
    let mut errors = Errors::default();

    let listeners = Listeners::open(ctx, "rt", devices, args.qos, None, &mut errors).await;
    let connected = listeners.connected.len();
    let updates = Arc::new(Updates::new(devices, rounds, BASE_TEMP));
    let app_conn = Connection::open(&format!("{}app", ctx.prefix), &ctx.connect).await?;
    let app = tokio::spawn(drive_app(
        app_conn,
        AppPlan {
            topics: (0..devices)
                .map(|i| ctx.shadow_topic(&ctx.device_id("rt", i), "desired"))
                .collect(),
            targets: listeners.connected.clone(),
            qos: args.qos,
            pacer: Pacer::new(
                Instant::now(),
                (args.plan.rate > 0.0).then_some(args.plan.rate),
            ),
            deadline: ctx.deadline,
        },
        updates.clone(),
    ));

    let (tally, device_errors) = listeners
        .tally_and_close(&updates, args.settle_ms, ctx.deadline)
        .await;
    let app = app.await?;
    errors.merge(device_errors);
    errors.merge(app.errors);

    let results = Results {
        devices_connected: connected,
        desired_sent: app.sent,
        desired_acked: app.acked,
        deltas_received: tally.received,
        missing: app.sent.saturating_sub(tally.unique),
        duplicates: tally.duplicates,
        unexpected: tally.unexpected,
        desired_to_delta: tally.latency.summary(),
        desired_puback: (args.qos > 0).then(|| app.puback.summary()),
    };
    let summary = format!(
        "{} devices x {} rounds at {}/s: {} desired sent, {} deltas ({} missing, {} duplicates, {} unexpected)\n\
         desired -> delta {}",
        connected,
        rounds,
        args.plan.rate,
        results.desired_sent,
        results.deltas_received,
        results.missing,
        results.duplicates,
        results.unexpected,
        results.desired_to_delta,
    );
    Ok(Outcome {
        params: json!({
            "devices": devices,
            "rounds": rounds,
            "rate": args.plan.rate,
            "qos": args.qos,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: tally.deadline_hit || app.deadline_hit,
        errors,
    })
}

struct AppPlan {
    /// Desired topic of every device, by index.
    topics: Vec<String>,
    /// The devices that connected.
    targets: Vec<usize>,
    qos: u8,
    pacer: Pacer,
    deadline: Instant,
}

/// The app: one desired update per target device per round, paced; reads its PUBACKs.
async fn drive_app(mut conn: Connection, plan: AppPlan, updates: Arc<Updates>) -> App {
    let mut app = App {
        sent: 0,
        acked: 0,
        puback: Latency::default(),
        deadline_hit: false,
        errors: Errors::default(),
    };
    let mut unacked: std::collections::HashMap<u16, u64> = Default::default();
    // Update k goes to target k % targets in round k / targets.
    let total = updates.rounds as usize * plan.targets.len();
    let update = |k: usize| {
        (k < total).then(|| {
            (
                (k / plan.targets.len()) as u32,
                plan.targets[k % plan.targets.len()],
            )
        })
    };
    let mut next = update(0);
    while next.is_some() || !unacked.is_empty() {
        if Instant::now() >= plan.deadline {
            app.deadline_hit = true;
            break;
        }
        if let Some((round, device)) = next {
            if plan.pacer.due(Instant::now()) > app.sent {
                let ts = now_ns();
                let pkid = conn.queue_publish(
                    &plan.topics[device],
                    &desired_payload(updates.target_temp(round)),
                    plan.qos,
                    false,
                );
                updates.mark_sent(round, device, ts);
                if let Err(e) = conn.flush().await {
                    app.errors.push(format!("app publish: {e}"));
                    break;
                }
                if plan.qos > 0 {
                    unacked.insert(pkid, ts);
                }
                app.sent += 1;
                next = update(app.sent as usize);
                continue;
            }
        }
        let wake = match next {
            Some(_) => plan.pacer.at(app.sent),
            None => plan.deadline,
        };
        let packet = tokio::select! {
            packet = conn.read() => packet,
            _ = sleep_until(wake.into()) => continue,
        };
        match packet {
            Ok(Some(Incoming::PubAck(pkid))) => {
                if let Some(ts) = unacked.remove(&pkid) {
                    app.puback.record_ns(now_ns().saturating_sub(ts));
                    app.acked += 1;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                app.errors.push("the broker closed the app's connection");
                break;
            }
            Err(e) => {
                app.errors.push(format!("app read: {e:#}"));
                break;
            }
        }
    }
    updates
        .done_ns
        .store(now_ns().max(1), std::sync::atomic::Ordering::Release);
    if let Err(e) = conn.close(CLOSE_DRAIN).await {
        app.errors.push(format!("app close: {e:#}"));
    }
    app
}
