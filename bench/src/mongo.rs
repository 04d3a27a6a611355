//! The cloud side of the uplink scenarios, through the same `mongodb` driver the gateway
//! uses: connecting (loopback only), a cloud service's change of a desired setpoint,
//! waiting until documents are there, and waiting for telemetry readings to land in the
//! `telemetry` collection, then checking them exactly once per (device, seq).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::{Client, Collection, Database};
use serde::Serialize;

/// How long the driver looks for the server before an operation fails.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the count of landed readings is read.
const COUNT_EVERY: Duration = Duration::from_millis(20);

/// A client for `database` at `uri`, which must name loopback hosts only.
pub async fn connect(uri: &str, database: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .with_context(|| format!("--mongo {uri}"))?;
    for host in &options.hosts {
        let loopback = match host {
            ServerAddress::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            _ => false,
        };
        anyhow::ensure!(
            loopback,
            "--mongo must name loopback hosts only (got {host})"
        );
    }
    options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.app_name = Some("iotsphere-loadgen".to_string());
    Ok(Client::with_options(options)?.database(database))
}

/// What a cloud service does to change a device's setpoint: `$set` its
/// `state.desired.targetTemp` and `updatedAt` in `shadows` (never `version`: README.md
/// here, scenario 3). `Ok(false)`: no shadow has that id.
pub async fn set_desired_temp(
    shadows: &Collection<Document>,
    device_id: &str,
    target_temp: u32,
) -> mongodb::error::Result<bool> {
    let change = doc! {"$set": {
        "state.desired.targetTemp": target_temp,
        "updatedAt": DateTime::now(),
    }};
    let outcome = shadows.update_one(doc! {"_id": device_id}, change).await?;
    Ok(outcome.matched_count == 1)
}

/// Counts the documents matching `filter` every `every` until there are `n`; how long
/// that took, or `None` at the deadline.
pub async fn wait_count(
    collection: &Collection<Document>,
    filter: Document,
    n: u64,
    every: Duration,
    deadline: Instant,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    while Instant::now() < deadline {
        if collection.count_documents(filter.clone()).await? >= n {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(every).await;
    }
    Ok(None)
}

/// How the readings of a run reached MongoDB.
#[derive(Debug, Clone, Serialize)]
pub struct Landed {
    pub expected: u64,
    /// Distinct (device, seq) pairs of this run in `telemetry`.
    pub stored: u64,
    pub missing: u64,
    /// Documents beyond the first for the same (device, seq).
    pub duplicates: u64,
    /// Documents of this run's devices without a seq of this run.
    pub foreign: u64,
    /// Seconds from the start of the wait until the first / the last reading was there.
    pub first_after_s: Option<f64>,
    pub all_after_s: Option<f64>,
    /// Readings stored per second: stored / (last seen − `rate_from`).
    pub stored_per_s: f64,
    pub deadline_hit: bool,
}

/// Waits until `expected` readings of `devices` are in `telemetry` (or the deadline),
/// counting every [`COUNT_EVERY`]; then reads them all back and checks each (device, seq)
/// is there exactly once, for seq in `0..counts[device]`. The rate is measured from
/// `rate_from` (the first publish), or from the first reading seen when `None` (a replay).
pub async fn wait_landed(
    db: &Database,
    devices: &[String],
    counts: &[u64],
    rate_from: Option<Instant>,
    deadline: Instant,
) -> anyhow::Result<Landed> {
    let telemetry = db.collection::<Document>("telemetry");
    let expected: u64 = counts.iter().sum();
    // Other runs' readings, counted once; from then on the cheap estimated count serves.
    let others = telemetry
        .count_documents(doc! {"deviceId": {"$nin": devices}})
        .await?;
    let started = Instant::now();
    let (mut first, mut last, mut seen) = (None, None, 0);
    let mut deadline_hit = false;
    while seen < expected {
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        let now = Instant::now();
        let n = telemetry
            .estimated_document_count()
            .await?
            .saturating_sub(others);
        if n > 0 && first.is_none() {
            first = Some(now);
        }
        if n > seen {
            last = Some(now);
            seen = n;
        }
        tokio::time::sleep(COUNT_EVERY).await;
    }

    let index: HashMap<&str, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let mut copies: Vec<Vec<u8>> = counts.iter().map(|&n| vec![0; n as usize]).collect();
    let mut cursor = telemetry
        .find(doc! {"deviceId": {"$in": devices}})
        .projection(doc! {"deviceId": 1, "seq": 1})
        .await?;
    let mut foreign = 0u64;
    while let Some(reading) = cursor.try_next().await? {
        let slot = reading
            .get_str("deviceId")
            .ok()
            .and_then(|d| index.get(d))
            .zip(reading.get("seq").and_then(bson_index))
            .and_then(|(&device, seq)| copies[device].get_mut(seq));
        match slot {
            Some(n) => *n = n.saturating_add(1),
            None => foreign += 1,
        }
    }
    let stored = copies.iter().flatten().filter(|&&n| n > 0).count() as u64;
    let documents: u64 = copies.iter().flatten().map(|&n| u64::from(n)).sum();
    let secs = |t: Option<Instant>| t.map(|t| t.duration_since(started).as_secs_f64());
    let rate_start = rate_from.or(first);
    let stored_per_s = match (rate_start, last) {
        (Some(from), Some(to)) if to > from => (stored as f64 / (to - from).as_secs_f64()).round(),
        _ => 0.0,
    };
    Ok(Landed {
        expected,
        stored,
        missing: expected.saturating_sub(stored),
        duplicates: documents - stored,
        foreign,
        first_after_s: secs(first),
        all_after_s: secs(last),
        stored_per_s,
        deadline_hit,
    })
}

fn bson_index(value: &Bson) -> Option<usize> {
    match value {
        Bson::Int32(v) => usize::try_from(*v).ok(),
        Bson::Int64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

impl std::fmt::Display for Landed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.2} s"));
        write!(
            f,
            "{} of {} readings stored ({} missing, {} duplicates, {} foreign), {:.0}/s; first after {}, all after {}",
            self.stored,
            self.expected,
            self.missing,
            self.duplicates,
            self.foreign,
            self.stored_per_s,
            secs(self.first_after_s),
            secs(self.all_after_s),
        )
    }
}
