//! Reconnect storm: N devices connect and subscribe once, go away (DISCONNECT, or a
//! power cut with `--abrupt`), an app sets a desired setpoint for each while they are
//! away (and waits until every pending delta was published), then all N reconnect at the
//! same instant and subscribe to their delta. Measured: time until every device got its
//! pending delta; checked: each got it exactly once, with the right value.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::time::sleep_until;

use super::reconnect::{self, Returning};
use super::{close_all, delta_target_temp, desired_payload, setpoint, Ctx, CLOSE_DRAIN};
use crate::cli::StormArgs;
use crate::mqtt::{Connection, Incoming};
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, LatencySummary, Pacer};

/// Devices start reconnecting together this long after their tasks were spawned.
const START_DELAY: Duration = Duration::from_millis(200);

#[derive(Serialize)]
struct Results {
    devices: usize,
    /// Time to prepare the pending deltas (desired published, delta seen by the app).
    prepare_s: f64,
    pending_confirmed: usize,
    delivered: usize,
    missing: usize,
    /// Devices that got their delta more than once.
    duplicated: usize,
    /// Deltas with another setpoint, or empty.
    wrong: u64,
    /// Reconnection attempts beyond the first, over all devices.
    connect_retries: u64,
    /// Why first attempts failed (the first few), if some did.
    retry_reasons: Errors,
    /// From the storm's start until the last device got its delta.
    all_delivered_ms: Option<f64>,
    /// Per device: storm start → CONNACK.
    connect: LatencySummary,
    /// Per device: storm start → its pending delta.
    delta: LatencySummary,
}

pub async fn run(ctx: &Ctx, args: &StormArgs) -> anyhow::Result<Outcome> {
    let devices = args.devices.max(1);
    let ids: Vec<String> = (0..devices).map(|i| ctx.device_id("storm", i)).collect();
    let mut errors = Errors::default();

    // Phase 0: every device connects and subscribes once, then goes away.
    let opened = super::open_devices(ctx, "storm", devices, 1, None).await;
    let mut conns = Vec::new();
    for (i, conn) in opened.into_iter().enumerate() {
        match conn {
            Ok(conn) => conns.push(conn),
            Err(e) => errors.push(format!("device {i} (first connection): {e:#}")),
        }
    }
    if args.abrupt {
        drop(conns);
    } else {
        errors.merge(close_all(conns).await);
    }

    // Phase 1: the app sets a setpoint for every device and waits for each delta.
    let prepare_started = Instant::now();
    let confirmed = prepare(ctx, &ids, args.rate, &mut errors).await?;
    let prepare_s = prepare_started.elapsed().as_secs_f64();

    // Phase 2: the storm.
    let go = Instant::now() + START_DELAY;
    let go_ns = now_ns() + u64::try_from(START_DELAY.as_nanos()).unwrap_or(0);
    let (back, device_errors) = reconnect::tally(
        ctx,
        Returning::all(ctx, &ids, std::slice::from_ref(&ctx.connect)),
        |_| sleep_until(go.into()),
        setpoint,
        go_ns,
        Duration::from_millis(args.settle_ms),
    )
    .await;
    errors.merge(device_errors);

    let results = Results {
        devices,
        prepare_s,
        pending_confirmed: confirmed,
        delivered: back.delivered,
        missing: devices - back.delivered,
        duplicated: back.duplicated,
        wrong: back.wrong,
        connect_retries: back.retries,
        retry_reasons: back.retry_reasons,
        all_delivered_ms: back.all_delivered_ms,
        connect: back.connect,
        delta: back.delta,
    };
    let summary = format!(
        "{} devices ({} pending deltas confirmed in {:.1} s){}: delivered {}, missing {}, duplicated {}, wrong {}\n\
         all delivered after {}; per device delta {}\nconnect {} ({} retries)",
        devices,
        confirmed,
        prepare_s,
        if args.abrupt { ", abrupt drop" } else { "" },
        results.delivered,
        results.missing,
        results.duplicated,
        results.wrong,
        results
            .all_delivered_ms
            .map_or_else(|| "never".to_string(), |ms| format!("{ms:.1} ms")),
        results.delta,
        results.connect,
        results.connect_retries,
    );
    Ok(Outcome {
        params: json!({
            "devices": devices,
            "rate": args.rate,
            "abrupt": args.abrupt,
            "settle_ms": args.settle_ms,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: back.deadline_hit,
        errors,
    })
}

/// The app's part: subscribes to every device's delta, publishes each device's desired
/// setpoint (paced), and waits until the broker published every pending delta. Returns
/// how many were seen.
async fn prepare(
    ctx: &Ctx,
    ids: &[String],
    rate: f64,
    errors: &mut Errors,
) -> anyhow::Result<usize> {
    let mut app = Connection::open(&format!("{}app", ctx.prefix), &ctx.connect).await?;
    let delta_topics: Vec<String> = ids.iter().map(|id| ctx.shadow_topic(id, "delta")).collect();
    let mut subacks: HashSet<u16> = delta_topics
        .iter()
        .map(|t| app.queue_subscribe(t, 0))
        .collect();
    app.flush().await?;
    while !subacks.is_empty() {
        match app.read().await? {
            Some(Incoming::SubAck { pkid, .. }) => {
                subacks.remove(&pkid);
            }
            Some(_) => {}
            None => anyhow::bail!("the broker closed the app's connection while subscribing"),
        }
    }

    let pacer = Pacer::new(Instant::now(), (rate > 0.0).then_some(rate));
    let mut confirmed = vec![false; ids.len()];
    let mut confirmed_count = 0;
    let mut sent = 0usize;
    let topic_index = |topic: &[u8]| delta_topics.iter().position(|t| t.as_bytes() == topic);
    while confirmed_count < ids.len() && Instant::now() < ctx.deadline {
        if sent < ids.len() && pacer.due(Instant::now()) > sent as u64 {
            let topic = ctx.shadow_topic(&ids[sent], "desired");
            app.queue_publish(&topic, &desired_payload(setpoint(sent)), 1, false);
            app.flush().await?;
            sent += 1;
            continue;
        }
        let wake = if sent < ids.len() {
            pacer.at(sent as u64)
        } else {
            ctx.deadline
        };
        let packet = tokio::select! {
            packet = app.read() => packet?,
            _ = sleep_until(wake.into()) => continue,
        };
        match packet {
            Some(Incoming::Publish(p)) => {
                let Some(i) = topic_index(&p.topic) else {
                    continue;
                };
                if !confirmed[i] && delta_target_temp(&p.payload) == Some(f64::from(setpoint(i))) {
                    confirmed[i] = true;
                    confirmed_count += 1;
                }
            }
            Some(_) => {}
            None => anyhow::bail!("the broker closed the app's connection"),
        }
    }
    if confirmed_count < ids.len() {
        errors.push(format!(
            "only {confirmed_count} of {} pending deltas were published before the deadline",
            ids.len()
        ));
    }
    if let Err(e) = app.close(CLOSE_DRAIN).await {
        errors.push(format!("app close: {e:#}"));
    }
    Ok(confirmed_count)
}
