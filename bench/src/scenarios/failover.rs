//! Active/standby failover: two gateways share a lease (`[mongodb] lease`); N devices
//! connect to the active one (`--broker`), subscribe to their delta and report
//! `targetTemp` 20, so MongoDB holds a shadow of each owned by the active. Then, at t0,
//! loadgen kills the active (SIGKILL: no lease release, no DISCONNECT) and at once — a
//! cloud service — sets a distinct desired setpoint for every device in `shadows`, while
//! the pair fails over. Every device, seeing its connection drop, tries [active,
//! standby] every 100 ms (the dead active refuses the TCP connection, the standby answers
//! CONNACK 3 until it took the lease), subscribes once to its delta on the gateway that
//! accepts it, and waits for its setpoint. Measured from t0: the lease taken (`leases`
//! polled until the holder changes), every shadow owned by the new holder, every device
//! connected (CONNACK), every device's delta; checked: each setpoint delivered exactly
//! once with the right value; failed attempts counted by why.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};
use serde::Serialize;
use serde_json::json;

use super::reconnect::{self, Duplicate, Failures, Returning};
use super::{open_devices, setpoint, Ctx};
use crate::cli::FailoverArgs;
use crate::mongo;
use crate::mqtt::{ConnectOptions, Connection};
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, LatencySummary, Pacer};

/// What the devices report before the failover: below every setpoint (40..80), so each
/// setpoint differs from the reported state and makes a delta.
const REPORTED_TEMP: u32 = 20;
/// How often loadgen looks whether every shadow is in MongoDB before the kill.
const READY_CHECK: Duration = Duration::from_millis(100);
/// How often `leases` is read after the kill.
const LEASE_CHECK: Duration = Duration::from_millis(10);
/// How often the shadows the new holder owns are counted.
const OWNED_CHECK: Duration = Duration::from_millis(20);

#[derive(Serialize)]
struct Results {
    devices: usize,
    /// Devices connected to the active before the kill.
    connected_to_active: usize,
    /// Seconds until every device's shadow was in MongoDB, owned by the active.
    shadows_ready_s: Option<f64>,
    previous_holder: String,
    /// The lease's holder after the failover (the standby's `gateway.id`).
    holder: Option<String>,
    /// t0 (the kill) → `leases` names another holder.
    lease_taken_ms: Option<f64>,
    /// ¾ of `lease_ttl_ms`: the standby takes the lease at most this long after the
    /// active's last renewal, so at most this long after t0.
    lease_bound_ms: f64,
    /// t0 → every device's shadow has `gatewayId` = the new holder.
    all_owned_ms: Option<f64>,
    /// The cloud's changes of `state.desired.targetTemp` made after t0.
    cloud_changes: u64,
    cloud_failed: u64,
    /// t0 → the cloud made its last change.
    cloud_done_ms: Option<f64>,
    /// Devices connected again, to the active / the standby.
    reconnected_active: u64,
    reconnected_standby: u64,
    /// t0 → the last device's CONNACK.
    all_reconnected_ms: Option<f64>,
    /// Per device: t0 → CONNACK.
    connect: LatencySummary,
    delivered: usize,
    missing: usize,
    /// The first few devices (indexes) that never got their setpoint.
    missing_first: Vec<usize>,
    /// Devices that got their setpoint more than once.
    duplicated: usize,
    /// The first few, with each copy: when (from t0) and whether it came retained.
    duplicated_first: Vec<Duplicate>,
    /// Deltas with another setpoint, or empty.
    wrong: u64,
    /// t0 → the last device got its setpoint.
    all_delivered_ms: Option<f64>,
    /// Per device: t0 → its setpoint's delta.
    delta: LatencySummary,
    /// Connection attempts beyond the first, over all devices.
    connect_retries: u64,
    /// Failed attempts by why: CONNACK code (3 from the standby), TCP refused (the dead
    /// active), other.
    refusals: Failures,
    /// Why first attempts failed (the first few).
    retry_reasons: Errors,
}

/// The cloud service's part during the failover.
struct Cloud {
    changes: u64,
    failed: u64,
    done_ms: Option<f64>,
    errors: Errors,
}

/// What `leases` and `shadows` showed during the failover.
#[derive(Default)]
struct Takeover {
    holder: Option<String>,
    lease_taken_ms: Option<f64>,
    all_owned_ms: Option<f64>,
}

fn ms_since(t0_ns: u64) -> f64 {
    (now_ns().saturating_sub(t0_ns) as f64 / 1e3).round() / 1e3
}

pub async fn run(ctx: &Ctx, args: &FailoverArgs) -> anyhow::Result<Outcome> {
    let uri = args.mongo.required_uri("failover")?;
    anyhow::ensure!(
        args.standby.ip().is_loopback(),
        "--standby must be a loopback address (got {})",
        args.standby
    );
    let db = mongo::connect(uri, &args.mongo.database).await?;
    let shadows = db.collection::<Document>("shadows");
    let previous_holder = holder(&db, &args.lease)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no lease {:?} in `leases`: is the pair up?", args.lease))?;
    let devices = args.devices.max(1);
    let ids: Vec<String> = (0..devices).map(|i| ctx.device_id("fo", i)).collect();
    let mut errors = Errors::default();

    // 1. Every device on the active, its shadow in MongoDB owned by the active.
    let reported = format!(r#"{{"state":{{"targetTemp":{REPORTED_TEMP}}}}}"#);
    let opened = open_devices(ctx, "fo", devices, 1, Some(reported.as_bytes())).await;
    let mut held: Vec<Option<Connection>> = Vec::with_capacity(devices);
    for (i, conn) in opened.into_iter().enumerate() {
        match conn {
            Ok(conn) => held.push(Some(conn)),
            Err(e) => {
                errors.push(format!("device {i} (on the active): {e:#}"));
                held.push(None);
            }
        }
    }
    let connected_to_active = held.iter().flatten().count();
    let ready = doc! {
        "_id": {"$in": &ids},
        "gatewayId": &previous_holder,
        "state.reported.targetTemp": REPORTED_TEMP,
    };
    let shadows_ready_s = mongo::wait_count(
        &shadows,
        ready,
        connected_to_active as u64,
        READY_CHECK,
        ctx.deadline,
    )
    .await?
    .map(|t| t.as_secs_f64());

    // 2. t0: the active dies.
    let t0 = now_ns();
    let killed = std::process::Command::new("kill")
        .args(["-9", &args.active_pid.to_string()])
        .status()?;
    anyhow::ensure!(killed.success(), "kill -9 {} failed", args.active_pid);

    // 3. The cloud changes every setpoint; loadgen watches the lease and the shadows.
    let pacer = Pacer::new(
        Instant::now(),
        (args.cloud_rate > 0.0).then_some(args.cloud_rate),
    );
    let cloud = tokio::spawn(change_setpoints(
        shadows.clone(),
        ids.clone(),
        pacer,
        t0,
        ctx.deadline,
    ));
    let takeover = tokio::spawn(watch_takeover(
        db,
        args.lease.clone(),
        previous_holder.clone(),
        ids.clone(),
        t0,
        ctx.deadline,
    ));

    // 4. Every device returns once its connection to the active dropped.
    let standby = ConnectOptions {
        broker: args.standby,
        ..ctx.connect.clone()
    };
    let deadline = ctx.deadline;
    let (back, device_errors) = reconnect::tally(
        ctx,
        Returning::all(ctx, &ids, &[ctx.connect.clone(), standby]),
        |i| {
            let conn = held.get_mut(i).and_then(Option::take);
            async move {
                if let Some(mut conn) = conn {
                    let dropped = async { while let Ok(Some(_)) = conn.read().await {} };
                    let _ = tokio::time::timeout_at(deadline.into(), dropped).await;
                }
            }
        },
        setpoint,
        t0,
        Duration::from_millis(args.settle_ms),
    )
    .await;
    errors.merge(device_errors);
    let cloud = cloud.await?;
    errors.merge(cloud.errors);
    let takeover = match takeover.await? {
        Ok(takeover) => takeover,
        Err(e) => {
            errors.push(format!("watching the takeover: {e:#}"));
            Takeover::default()
        }
    };

    let lease_bound_ms = args.lease_ttl_ms as f64 * 0.75;
    let results = Results {
        devices,
        connected_to_active,
        shadows_ready_s,
        previous_holder,
        holder: takeover.holder,
        lease_taken_ms: takeover.lease_taken_ms,
        lease_bound_ms,
        all_owned_ms: takeover.all_owned_ms,
        cloud_changes: cloud.changes,
        cloud_failed: cloud.failed,
        cloud_done_ms: cloud.done_ms,
        reconnected_active: back.via.first().copied().unwrap_or(0),
        reconnected_standby: back.via.get(1).copied().unwrap_or(0),
        all_reconnected_ms: back.all_connected_ms,
        connect: back.connect,
        delivered: back.delivered,
        missing: devices - back.delivered,
        missing_first: back.missing_first,
        duplicated: back.duplicated,
        duplicated_first: back.duplicated_first,
        wrong: back.wrong,
        all_delivered_ms: back.all_delivered_ms,
        delta: back.delta,
        connect_retries: back.retries,
        refusals: back.failures,
        retry_reasons: back.retry_reasons,
    };
    let after =
        |ms: Option<f64>| ms.map_or_else(|| "never".to_string(), |ms| format!("{ms:.0} ms"));
    let summary = format!(
        "{} devices ({} on the active, shadows in MongoDB after {}), lease TTL {} ms: lease {} -> {} after {} (bound {:.0} ms), all shadows owned after {}\n\
         cloud: {} changes ({} failed), the last after {}\n\
         reconnected: {} to the standby, {} to the active, all after {}; connect {}\n\
         delivered {}, missing {}, duplicated {}, wrong {}; all after {}; delta {}\n\
         failed attempts: {}",
        devices,
        connected_to_active,
        shadows_ready_s.map_or_else(|| "never".to_string(), |s| format!("{s:.1} s")),
        args.lease_ttl_ms,
        results.previous_holder,
        results.holder.as_deref().unwrap_or("?"),
        after(results.lease_taken_ms),
        lease_bound_ms,
        after(results.all_owned_ms),
        results.cloud_changes,
        results.cloud_failed,
        after(results.cloud_done_ms),
        results.reconnected_standby,
        results.reconnected_active,
        after(results.all_reconnected_ms),
        results.connect,
        results.delivered,
        results.missing,
        results.duplicated,
        results.wrong,
        after(results.all_delivered_ms),
        results.delta,
        results.refusals,
    );
    Ok(Outcome {
        params: json!({
            "devices": devices,
            "lease": args.lease,
            "lease_ttl_ms": args.lease_ttl_ms,
            "standby": args.standby.to_string(),
            "settle_ms": args.settle_ms,
            "cloud_rate": args.cloud_rate,
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: shadows_ready_s.is_none()
            || results.lease_taken_ms.is_none()
            || results.all_owned_ms.is_none()
            || back.deadline_hit,
        errors,
    })
}

/// The holder of lease `name`, if the lease exists.
async fn holder(db: &Database, name: &str) -> anyhow::Result<Option<String>> {
    let lease = db
        .collection::<Document>("leases")
        .find_one(doc! {"_id": name})
        .await?;
    Ok(lease.and_then(|l| l.get_str("holder").ok().map(str::to_string)))
}

/// The cloud service: `setpoint(i)` for device `i`, one `updateOne` after the other, paced.
async fn change_setpoints(
    shadows: Collection<Document>,
    ids: Vec<String>,
    pacer: Pacer,
    t0: u64,
    deadline: Instant,
) -> Cloud {
    let mut cloud = Cloud {
        changes: 0,
        failed: 0,
        done_ms: None,
        errors: Errors::default(),
    };
    for (i, id) in ids.iter().enumerate() {
        let at = pacer.at(i as u64);
        if at >= deadline || Instant::now() >= deadline {
            cloud.errors.push("the cloud's changes hit the deadline");
            return cloud;
        }
        tokio::time::sleep_until(at.into()).await;
        match mongo::set_desired_temp(&shadows, id, setpoint(i)).await {
            Ok(true) => cloud.changes += 1,
            Ok(false) => {
                cloud.failed += 1;
                cloud.errors.push(format!("no shadow {id}"));
            }
            Err(e) => {
                cloud.failed += 1;
                cloud.errors.push(format!("updateOne {id}: {e}"));
            }
        }
    }
    cloud.done_ms = Some(ms_since(t0));
    cloud
}

/// Reads `leases` until another gateway than `previous` holds `lease`, then counts the
/// devices' shadows until the new holder owns them all (or the deadline).
async fn watch_takeover(
    db: Database,
    lease: String,
    previous: String,
    ids: Vec<String>,
    t0: u64,
    deadline: Instant,
) -> anyhow::Result<Takeover> {
    let mut takeover = Takeover::default();
    // Time-bounded, and so count-bounded: one read per LEASE_CHECK at least.
    while Instant::now() < deadline {
        match holder(&db, &lease).await? {
            Some(h) if h != previous => {
                takeover.lease_taken_ms = Some(ms_since(t0));
                takeover.holder = Some(h);
                break;
            }
            _ => tokio::time::sleep(LEASE_CHECK).await,
        }
    }
    let Some(holder) = takeover.holder.clone() else {
        return Ok(takeover);
    };
    let owned = doc! {"_id": {"$in": &ids}, "gatewayId": &holder};
    let shadows = db.collection::<Document>("shadows");
    if mongo::wait_count(&shadows, owned, ids.len() as u64, OWNED_CHECK, deadline)
        .await?
        .is_some()
    {
        takeover.all_owned_ms = Some(ms_since(t0));
    }
    Ok(takeover)
}
