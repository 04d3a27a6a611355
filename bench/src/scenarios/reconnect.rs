//! Devices coming back (storm, failover): each waits for its cue, reconnects — trying its
//! brokers in order, again every [`RETRY_AFTER`] — subscribes to its delta once and
//! listens; and the tally of the pending deltas they get: each device must get its own
//! setpoint exactly once.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{interval, sleep};

use super::{listen_deltas, Ctx, DeltaSeen};
use crate::mqtt::{ConnectOptions, Connection, Refused};
use crate::report::Errors;
use crate::stats::{now_ns, Latency, LatencySummary};

/// A device whose connection attempts all failed tries again after this long.
pub const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How many of the devices that missed their setpoint, or got it twice, are named.
const SHOWN: usize = 10;

/// Why connection attempts failed, counted over all devices.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Failures {
    /// CONNACK with a non-zero return code, by code (3: server unavailable).
    pub connack: BTreeMap<u8, u64>,
    /// TCP connection refused (nothing listens: a dead broker).
    pub tcp_refused: u64,
    /// Anything else (closed before CONNACK, no CONNACK in time, …), with the first few.
    pub other: Errors,
}

impl Failures {
    fn count(&mut self, broker: std::net::SocketAddr, e: &anyhow::Error) {
        if let Some(Refused(code)) = e.downcast_ref::<Refused>() {
            *self.connack.entry(*code).or_default() += 1;
        } else if e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        }) {
            self.tcp_refused += 1;
        } else {
            self.other.push(format!("{broker}: {e:#}"));
        }
    }

    fn add(&mut self, other: &Failures) {
        for (code, n) in &other.connack {
            *self.connack.entry(*code).or_default() += n;
        }
        self.tcp_refused += other.tcp_refused;
        self.other.merge(other.other.clone());
    }
}

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (code, n) in &self.connack {
            write!(f, "CONNACK {code}: {n}, ")?;
        }
        write!(
            f,
            "TCP refused: {}, other: {} {:?}",
            self.tcp_refused, self.other.count, self.other.first
        )
    }
}

/// A device on its way back.
pub struct Returning {
    index: usize,
    id: String,
    /// Its delta topic, subscribed once (QoS 1) on the broker that accepts it.
    topic: String,
    /// Tried in this order at every attempt.
    brokers: Vec<ConnectOptions>,
    deadline: Instant,
}

impl Returning {
    /// Device `i` of `ids`, trying `brokers` in this order, until the run's deadline.
    pub fn all(ctx: &Ctx, ids: &[String], brokers: &[ConnectOptions]) -> Vec<Returning> {
        ids.iter()
            .enumerate()
            .map(|(index, id)| Returning {
                index,
                id: id.clone(),
                topic: ctx.shadow_topic(id, "delta"),
                brokers: brokers.to_vec(),
                deadline: ctx.deadline,
            })
            .collect()
    }
}

/// A device is back: when its CONNACK came, from which broker, after how many attempts,
/// and why attempts failed before.
struct Reconnected {
    at_ns: u64,
    /// Index in [`Returning::brokers`].
    broker: usize,
    attempts: u32,
    first_failure: Option<String>,
    failures: Failures,
}

impl Returning {
    /// Waits for `cue`, connects (retrying until the deadline), subscribes, and listens.
    async fn run(
        self,
        cue: impl Future<Output = ()>,
        seen: mpsc::UnboundedSender<DeltaSeen>,
        connected: mpsc::UnboundedSender<Reconnected>,
        stop: watch::Receiver<bool>,
    ) -> Errors {
        let mut errors = Errors::default();
        cue.await;
        let mut attempts = 0u32;
        let mut first_failure = None;
        let mut failures = Failures::default();
        // The time bound also bounds the count: one round of attempts per RETRY_AFTER.
        let rounds = self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            / RETRY_AFTER.as_millis()
            + 1;
        for _ in 0..rounds {
            for (broker, options) in self.brokers.iter().enumerate() {
                attempts += 1;
                let attempt = async {
                    let mut conn = Connection::open(&self.id, options).await?;
                    let at_ns = now_ns();
                    conn.queue_subscribe(&self.topic, 1);
                    conn.flush().await?;
                    anyhow::Ok((conn, at_ns))
                };
                match attempt.await {
                    Ok((conn, at_ns)) => {
                        let _ = connected.send(Reconnected {
                            at_ns,
                            broker,
                            attempts,
                            first_failure,
                            failures,
                        });
                        errors.merge(listen_deltas(self.index, conn, seen, stop).await);
                        return errors;
                    }
                    Err(e) => {
                        failures.count(options.broker, &e);
                        first_failure
                            .get_or_insert_with(|| format!("device {}: {e:#}", self.index));
                    }
                }
            }
            if Instant::now() + RETRY_AFTER >= self.deadline {
                break;
            }
            sleep(RETRY_AFTER).await;
        }
        errors.push(format!(
            "device {}: gave up after {attempts} attempts ({failures})",
            self.index
        ));
        errors
    }
}

/// What the returning devices got.
pub struct Returns {
    pub delivered: usize,
    /// The first few devices that never got their setpoint.
    pub missing_first: Vec<usize>,
    /// Devices that got their setpoint more than once.
    pub duplicated: usize,
    /// The first few of them, with every copy they got.
    pub duplicated_first: Vec<Duplicate>,
    /// Deltas with another setpoint, or empty.
    pub wrong: u64,
    /// Connection attempts beyond the first, over all devices.
    pub retries: u64,
    /// Why first attempts failed (the first few), if some did.
    pub retry_reasons: Errors,
    /// Every failed attempt, by why.
    pub failures: Failures,
    /// Devices back, per broker (index in [`Returning::brokers`]).
    pub via: Vec<u64>,
    /// From `from_ns` until the last device was back / got its delta.
    pub all_connected_ms: Option<f64>,
    pub all_delivered_ms: Option<f64>,
    /// Per device: `from_ns` → CONNACK.
    pub connect: LatencySummary,
    /// Per device: `from_ns` → its setpoint's delta.
    pub delta: LatencySummary,
    pub deadline_hit: bool,
}

/// One copy of a device's setpoint as it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Arrival {
    /// From `from_ns`.
    pub after_ms: f64,
    /// The broker sent it as a retained message (on the device's SUBSCRIBE), not live.
    pub retain: bool,
}

/// A device that got its setpoint more than once.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    pub device: usize,
    pub copies: Vec<Arrival>,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// Spawns every device (each waits for its own cue from `cue(i)`), then counts what they
/// get: device `i` must get `setpoint(i)` once. Listens until every device got it plus
/// `settle` (for duplicates), or the run's deadline; then stops the devices. Latencies are
/// from `from_ns` ([`now_ns`]). Returns the tally and the devices' errors.
pub async fn tally<C, F>(
    ctx: &Ctx,
    devices: Vec<Returning>,
    mut cue: C,
    setpoint: impl Fn(usize) -> u32,
    from_ns: u64,
    settle: Duration,
) -> (Returns, Errors)
where
    C: FnMut(usize) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let count = devices.len();
    let brokers = devices.first().map_or(0, |d| d.brokers.len());
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for device in devices {
        let cue = cue(device.index);
        tasks.spawn(device.run(cue, seen_tx.clone(), connected_tx.clone(), stop_rx.clone()));
    }
    drop((seen_tx, connected_tx));

    // Per device: every copy of its setpoint it got.
    let mut deliveries: Vec<Vec<Arrival>> = vec![Vec::new(); count];
    let (mut delivered, mut wrong, mut retries, mut back) = (0usize, 0u64, 0u64, 0usize);
    let (mut delta, mut connect) = (Latency::default(), Latency::default());
    let (mut all_delivered_ns, mut all_connected_ns) = (None, None);
    let mut failures = Failures::default();
    let mut via = vec![0u64; brokers];
    let mut check = interval(Duration::from_millis(20));
    let mut deadline_hit = false;
    let mut settle_until = None;
    let mut retry_reasons = Errors::default();
    let expected =
        |device: usize, target_temp: Option<f64>| target_temp == Some(f64::from(setpoint(device)));
    loop {
        tokio::select! {
            seen = seen_rx.recv() => {
                let Some(DeltaSeen { device, target_temp, at_ns, retain }) = seen else { break };
                if !expected(device, target_temp) {
                    wrong += 1;
                    continue;
                }
                deliveries[device].push(Arrival { after_ms: ms(at_ns.saturating_sub(from_ns)), retain });
                if deliveries[device].len() == 1 {
                    delivered += 1;
                    delta.record_ns(at_ns.saturating_sub(from_ns));
                    if delivered == count {
                        all_delivered_ns = Some(at_ns.saturating_sub(from_ns));
                        settle_until = Some(Instant::now() + settle);
                    }
                }
            }
            Some(reconnected) = connected_rx.recv() => {
                let after = reconnected.at_ns.saturating_sub(from_ns);
                connect.record_ns(after);
                back += 1;
                if back == count {
                    all_connected_ns = Some(after);
                }
                retries += u64::from(reconnected.attempts - 1);
                if let Some(slot) = via.get_mut(reconnected.broker) {
                    *slot += 1;
                }
                failures.add(&reconnected.failures);
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
    let mut errors = Errors::default();
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
        at_ns,
        retain,
    }) = seen_rx.try_recv()
    {
        if expected(device, target_temp) {
            deliveries[device].push(Arrival {
                after_ms: ms(at_ns.saturating_sub(from_ns)),
                retain,
            });
        } else {
            wrong += 1;
        }
    }
    let returns = Returns {
        delivered,
        missing_first: (0..count)
            .filter(|&d| deliveries[d].is_empty())
            .take(SHOWN)
            .collect(),
        duplicated: deliveries.iter().filter(|c| c.len() > 1).count(),
        duplicated_first: deliveries
            .into_iter()
            .enumerate()
            .filter(|(_, copies)| copies.len() > 1)
            .take(SHOWN)
            .map(|(device, copies)| Duplicate { device, copies })
            .collect(),
        wrong,
        retries,
        retry_reasons,
        failures,
        via,
        all_connected_ms: all_connected_ns.map(ms),
        all_delivered_ms: all_delivered_ns.map(ms),
        connect: connect.summary(),
        delta: delta.summary(),
        deadline_hit,
    };
    (returns, errors)
}
