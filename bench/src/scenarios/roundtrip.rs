//! Shadow round trip: an app publishes `{"state":{"targetTemp":X}}` to each device's
//! `shadow/desired` in turn, at a bounded rate; each device is subscribed to its own
//! `shadow/delta`. Measured: desired published → delta received, per device and round
//! (HDR histogram). Round `r` sets `X = 30 + r`, so every update changes the delta and
//! every delta says which update it answers. Gateway only: a plain broker has no shadows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, sleep_until};

use super::{desired_payload, listen_deltas, Ctx, DeltaSeen, CLOSE_DRAIN};
use crate::cli::RoundtripArgs;
use crate::mqtt::{Connection, Incoming};
use crate::pool;
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
    let devices = args.devices.max(1);
    let rounds = args.rounds.max(1);
    let updates = devices * rounds as usize;
    let mut errors = Errors::default();

    let opened = pool::open_all(devices, ctx.connect_concurrency, |i| {
        let id = ctx.device_id("rt", i);
        let topic = ctx.shadow_topic(&id, "delta");
        let (options, qos) = (ctx.connect.clone(), args.qos);
        async move {
            let mut conn = Connection::open(&id, &options).await?;
            conn.subscribe(&topic, qos).await?;
            Ok(conn)
        }
    })
    .await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut listening = tokio::task::JoinSet::new();
    let mut targets = Vec::new();
    for (i, conn) in opened.into_iter().enumerate() {
        match conn {
            Ok(conn) => {
                listening.spawn(listen_deltas(i, conn, seen_tx.clone(), stop_rx.clone()));
                targets.push(i);
            }
            Err(e) => errors.push(format!("device {i}: {e:#}")),
        }
    }
    drop(seen_tx);
    let connected = targets.len();

    // Send time of update (round, device) at index round * devices + device; 0 = not sent.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..updates).map(|_| AtomicU64::new(0)).collect());
    let app_done_ns = Arc::new(AtomicU64::new(0));
    let app_conn = Connection::open(&format!("{}app", ctx.prefix), &ctx.connect).await?;
    let app = tokio::spawn(drive_app(
        app_conn,
        AppPlan {
            topics: (0..devices)
                .map(|i| ctx.shadow_topic(&ctx.device_id("rt", i), "desired"))
                .collect(),
            targets,
            rounds,
            qos: args.qos,
            pacer: Pacer::new(Instant::now(), (args.rate > 0.0).then_some(args.rate)),
            deadline: ctx.deadline,
        },
        sent_at.clone(),
        app_done_ns.clone(),
    ));

    let mut deliveries = vec![0u8; updates];
    let mut latency = Latency::default();
    let (mut received, mut unexpected, mut duplicates, mut unique) = (0u64, 0u64, 0u64, 0u64);
    let mut last_ns = 0u64;
    let settle_ns = args.settle_ms.saturating_mul(1_000_000);
    let mut check = interval(Duration::from_millis(20));
    let mut deadline_hit = false;
    loop {
        tokio::select! {
            seen = seen_rx.recv() => {
                let Some(DeltaSeen { device, target_temp, at_ns }) = seen else { break };
                received += 1;
                last_ns = at_ns;
                let round = target_temp
                    .map(|t| t - f64::from(BASE_TEMP))
                    .filter(|r| r.fract() == 0.0 && (0.0..f64::from(rounds)).contains(r));
                let index = round.map(|r| r as usize * devices + device);
                let sent = index.map(|index| (index, sent_at[index].load(Ordering::Acquire)));
                match sent {
                    Some((index, sent)) if sent > 0 => {
                        deliveries[index] = deliveries[index].saturating_add(1);
                        if deliveries[index] == 1 {
                            unique += 1;
                            latency.record_ns(at_ns.saturating_sub(sent));
                        } else {
                            duplicates += 1;
                        }
                    }
                    _ => unexpected += 1,
                }
            }
            _ = check.tick() => {
                if ctx.past_deadline() {
                    deadline_hit = true;
                    break;
                }
                let done_at = app_done_ns.load(Ordering::Acquire);
                let sent = sent_at.iter().filter(|t| t.load(Ordering::Relaxed) > 0).count() as u64;
                if done_at > 0
                    && (unique >= sent || now_ns().saturating_sub(done_at.max(last_ns)) >= settle_ns)
                {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let app = app.await?;
    while let Some(joined) = listening.join_next().await {
        match joined {
            Ok(device_errors) => errors.merge(device_errors),
            Err(e) => errors.push(format!("device task: {e}")),
        }
    }
    errors.merge(app.errors);

    let results = Results {
        devices_connected: connected,
        desired_sent: app.sent,
        desired_acked: app.acked,
        deltas_received: received,
        missing: app.sent.saturating_sub(unique),
        duplicates,
        unexpected,
        desired_to_delta: latency.summary(),
        desired_puback: (args.qos > 0).then(|| app.puback.summary()),
    };
    let summary = format!(
        "{} devices x {} rounds at {}/s: {} desired sent, {} deltas ({} missing, {} duplicates, {} unexpected)\n\
         desired -> delta {}",
        connected,
        rounds,
        args.rate,
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
            "rate": args.rate,
            "qos": args.qos,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: deadline_hit || app.deadline_hit,
        errors,
    })
}

struct AppPlan {
    /// Desired topic of every device, by index.
    topics: Vec<String>,
    /// The devices that connected.
    targets: Vec<usize>,
    rounds: u32,
    qos: u8,
    pacer: Pacer,
    deadline: Instant,
}

/// The app: one desired update per target device per round, paced; reads its PUBACKs.
async fn drive_app(
    mut conn: Connection,
    plan: AppPlan,
    sent_at: Arc<Vec<AtomicU64>>,
    done_ns: Arc<AtomicU64>,
) -> App {
    let mut app = App {
        sent: 0,
        acked: 0,
        puback: Latency::default(),
        deadline_hit: false,
        errors: Errors::default(),
    };
    let devices = plan.topics.len();
    let mut unacked: std::collections::HashMap<u16, u64> = Default::default();
    // Update k goes to target k % targets in round k / targets.
    let total = plan.rounds as usize * plan.targets.len();
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
                    &desired_payload(BASE_TEMP + round),
                    plan.qos,
                    false,
                );
                sent_at[round as usize * devices + device].store(ts, Ordering::Release);
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
    done_ns.store(now_ns().max(1), Ordering::Release);
    if let Err(e) = conn.close(CLOSE_DRAIN).await {
        app.errors.push(format!("app close: {e:#}"));
    }
    app
}
