//! Reconnect storm: N devices connect and subscribe once, go away (DISCONNECT, or a
//! power cut with `--abrupt`), an app sets a desired setpoint for each while they are
//! away (and waits until every pending delta was published), then all N reconnect at the
//! same instant and subscribe to their delta. Measured: time until every device got its
//! pending delta; checked: each got it exactly once, with the right value.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, sleep, sleep_until};

use super::{
    close_all, delta_target_temp, desired_payload, listen_deltas, Ctx, DeltaSeen, CLOSE_DRAIN,
};
use crate::cli::StormArgs;
use crate::mqtt::{Connection, Incoming};
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, Latency, LatencySummary, Pacer};

/// Devices start reconnecting together this long after their tasks were spawned.
const START_DELAY: Duration = Duration::from_millis(200);
/// A device whose connection attempt failed tries again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The setpoint pending for device `i`.
fn setpoint(i: usize) -> u32 {
    40 + (i % 40) as u32
}

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
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let device = Device {
            index: i,
            id: id.clone(),
            topic: ctx.shadow_topic(id, "delta"),
            options: ctx.connect.clone(),
            deadline: ctx.deadline,
        };
        tasks.spawn(device.reconnect(go, seen_tx.clone(), connected_tx.clone(), stop_rx.clone()));
    }
    drop((seen_tx, connected_tx));

    let mut deliveries = vec![0u32; devices];
    let (mut delivered, mut wrong, mut retries) = (0usize, 0u64, 0u64);
    let (mut delta, mut connect) = (Latency::default(), Latency::default());
    let mut all_delivered_ns = None;
    let mut check = interval(Duration::from_millis(20));
    let mut deadline_hit = false;
    let mut settle_until = None;
    let mut retry_reasons = Errors::default();
    loop {
        tokio::select! {
            seen = seen_rx.recv() => {
                let Some(DeltaSeen { device, target_temp, at_ns }) = seen else { break };
                if target_temp != Some(f64::from(setpoint(device))) {
                    wrong += 1;
                    continue;
                }
                deliveries[device] += 1;
                if deliveries[device] == 1 {
                    delivered += 1;
                    delta.record_ns(at_ns.saturating_sub(go_ns));
                    if delivered == devices {
                        all_delivered_ns = Some(at_ns.saturating_sub(go_ns));
                        settle_until = Some(Instant::now() + Duration::from_millis(args.settle_ms));
                    }
                }
            }
            Some(reconnected) = connected_rx.recv() => {
                connect.record_ns(reconnected.at_ns.saturating_sub(go_ns));
                retries += u64::from(reconnected.attempts - 1);
                if let Some(reason) = reconnected.first_failure {
                    retry_reasons.push(reason);
                }
            }
            _ = check.tick() => {
                if ctx.past_deadline() {
                    deadline_hit = true;
                    break;
                }
                if settle_until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(device_errors) => errors.merge(device_errors),
            Err(e) => errors.push(format!("device task: {e}")),
        }
    }
    // Deltas read after the stop are still deliveries (possibly duplicates).
    while let Ok(DeltaSeen {
        device,
        target_temp,
        ..
    }) = seen_rx.try_recv()
    {
        if target_temp == Some(f64::from(setpoint(device))) {
            deliveries[device] += 1;
        } else {
            wrong += 1;
        }
    }

    let results = Results {
        devices,
        prepare_s,
        pending_confirmed: confirmed,
        delivered,
        missing: devices - delivered,
        duplicated: deliveries.iter().filter(|&&n| n > 1).count(),
        wrong,
        connect_retries: retries,
        retry_reasons,
        all_delivered_ms: all_delivered_ns.map(|ns| (ns as f64 / 1e3).round() / 1e3),
        connect: connect.summary(),
        delta: delta.summary(),
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
        retries,
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
        deadline_hit,
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

struct Device {
    index: usize,
    id: String,
    topic: String,
    options: crate::mqtt::ConnectOptions,
    deadline: Instant,
}

/// A device is back: when its CONNACK came, after how many attempts, and why the first
/// one failed if it did.
struct Reconnected {
    at_ns: u64,
    attempts: u32,
    first_failure: Option<String>,
}

impl Device {
    /// Waits for `go`, connects (retrying until the deadline), subscribes, and listens.
    async fn reconnect(
        self,
        go: Instant,
        seen: mpsc::UnboundedSender<DeltaSeen>,
        connected: mpsc::UnboundedSender<Reconnected>,
        stop: watch::Receiver<bool>,
    ) -> Errors {
        let mut errors = Errors::default();
        sleep_until(go.into()).await;
        let mut attempts = 0u32;
        let mut first_failure = None;
        let conn = loop {
            attempts += 1;
            let attempt = async {
                let mut conn = Connection::open(&self.id, &self.options).await?;
                let at_ns = now_ns();
                conn.queue_subscribe(&self.topic, 1);
                conn.flush().await?;
                anyhow::Ok((conn, at_ns))
            };
            match attempt.await {
                Ok((conn, at_ns)) => {
                    let _ = connected.send(Reconnected {
                        at_ns,
                        attempts,
                        first_failure,
                    });
                    break conn;
                }
                Err(e) if Instant::now() + RETRY_AFTER < self.deadline => {
                    first_failure.get_or_insert_with(|| format!("device {}: {e:#}", self.index));
                    sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    errors.push(format!("device {}: gave up: {e:#}", self.index));
                    return errors;
                }
            }
        };
        errors.merge(listen_deltas(self.index, conn, seen, stop).await);
        errors
    }
}
