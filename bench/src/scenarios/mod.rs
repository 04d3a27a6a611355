//! The scenarios, one per file, and what they share: the run context, device ids and
//! topics, reading a delta's setpoint, devices listening to their deltas and the tally of
//! what they got, and closing connections cleanly.

pub mod failover;
pub mod fanin;
pub mod fleetwatch;
pub mod idle;
pub mod landed;
pub mod mongochange;
pub mod reading;
mod reconnect;
pub mod roundtrip;
pub mod storm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::interval;

use crate::mqtt::{ConnectOptions, Connection, Incoming};
use crate::pool;
use crate::report::Errors;
use crate::stats::{now_ns, Latency};

/// How long a closing client waits for the broker to close after DISCONNECT.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// What every scenario gets from the command line.
pub struct Ctx {
    pub connect: ConnectOptions,
    pub root: String,
    /// Prefix of every client and device id of this run.
    pub prefix: String,
    /// The hard deadline of the run.
    pub deadline: Instant,
    pub connect_concurrency: usize,
    pub pid: Option<u32>,
}

impl Ctx {
    pub fn device_id(&self, kind: &str, i: usize) -> String {
        format!("{}{kind}{i}", self.prefix)
    }

    /// `ROOT/devices/ID/shadow/KIND`.
    pub fn shadow_topic(&self, device_id: &str, kind: &str) -> String {
        format!("{}/devices/{device_id}/shadow/{kind}", self.root)
    }

    pub fn past_deadline(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// The setpoint pending for device `i` (storm, failover): a distinct value per device
/// modulo 40, so a delta meant for another device shows.
pub fn setpoint(i: usize) -> u32 {
    40 + (i % 40) as u32
}

/// The desired request every scenario sends: one setpoint.
pub fn desired_payload(target_temp: u32) -> Vec<u8> {
    format!(r#"{{"state":{{"targetTemp":{target_temp}}}}}"#).into_bytes()
}

#[derive(Deserialize)]
struct Envelope {
    payload: DeltaPayload,
}

#[derive(Deserialize)]
struct DeltaPayload {
    state: DeltaState,
}

#[derive(Deserialize)]
struct DeltaState {
    #[serde(rename = "targetTemp")]
    target_temp: Option<f64>,
}

/// The `targetTemp` of a delta publication (the gateway's JSON envelope); `None` for an
/// empty payload ("nothing pending") or anything else.
pub fn delta_target_temp(payload: &[u8]) -> Option<f64> {
    serde_json::from_slice::<Envelope>(payload)
        .ok()?
        .payload
        .state
        .target_temp
}

/// A delta publication as a device received it.
#[derive(Debug, Clone, Copy)]
pub struct DeltaSeen {
    pub device: usize,
    /// The setpoint in it; `None` for an empty ("nothing pending") or foreign payload.
    pub target_temp: Option<f64>,
    pub at_ns: u64,
    /// Sent as a retained message (on SUBSCRIBE), not live.
    pub retain: bool,
}

/// A device's life after it subscribed to its delta: acknowledge and report every delta
/// until `stop`, then DISCONNECT and drain.
pub async fn listen_deltas(
    device: usize,
    mut conn: Connection,
    seen: mpsc::UnboundedSender<DeltaSeen>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    loop {
        let packet = tokio::select! {
            packet = conn.read() => packet,
            _ = stop.changed() => break,
        };
        match packet {
            Ok(Some(Incoming::Publish(p))) => {
                let at_ns = now_ns();
                if p.qos > 0 {
                    conn.queue_puback(p.pkid);
                    if let Err(e) = conn.flush().await {
                        errors.push(format!("device {device}: puback: {e}"));
                        return errors;
                    }
                }
                let target_temp = delta_target_temp(&p.payload);
                // The receiver lives until every device stopped.
                let _ = seen.send(DeltaSeen {
                    device,
                    target_temp,
                    at_ns,
                    retain: p.retain,
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                errors.push(format!("device {device}: the broker closed the connection"));
                return errors;
            }
            Err(e) => {
                errors.push(format!("device {device}: {e:#}"));
                return errors;
            }
        }
    }
    if let Err(e) = conn.close(CLOSE_DRAIN).await {
        errors.push(format!("device {device}: close: {e:#}"));
    }
    errors
}

/// Devices subscribed to their own delta topic, each listening in its own task.
pub struct Listeners {
    tasks: JoinSet<Errors>,
    /// Indexes of the devices that connected.
    pub connected: Vec<usize>,
    seen: mpsc::UnboundedReceiver<DeltaSeen>,
    stop: watch::Sender<bool>,
}

/// Connects `devices` devices (ids `ctx.device_id(kind, i)`), `connect_concurrency` at a
/// time; each subscribes to its own delta with `qos` and, with `reported`, publishes that
/// reported state (QoS 0). One result per device, in order.
pub async fn open_devices(
    ctx: &Ctx,
    kind: &str,
    devices: usize,
    qos: u8,
    reported: Option<&[u8]>,
) -> Vec<anyhow::Result<Connection>> {
    pool::open_all(devices, ctx.connect_concurrency, |i| {
        let id = ctx.device_id(kind, i);
        let delta = ctx.shadow_topic(&id, "delta");
        let report = reported.map(|state| (ctx.shadow_topic(&id, "reported"), state.to_vec()));
        let options = ctx.connect.clone();
        async move {
            let mut conn = Connection::open(&id, &options).await?;
            conn.subscribe(&delta, qos).await?;
            if let Some((topic, state)) = report {
                conn.queue_publish(&topic, &state, 0, false);
                conn.flush().await?;
            }
            Ok(conn)
        }
    })
    .await
}

impl Listeners {
    /// Connects `devices` devices (ids `ctx.device_id(kind, i)`), subscribes each to its
    /// delta with `qos` and, with `reported`, publishes that reported state (QoS 0); then
    /// each one listens. Devices that could not connect are in `errors`.
    pub async fn open(
        ctx: &Ctx,
        kind: &str,
        devices: usize,
        qos: u8,
        reported: Option<&[u8]>,
        errors: &mut Errors,
    ) -> Listeners {
        let opened = open_devices(ctx, kind, devices, qos, reported).await;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut connected = Vec::new();
        for (i, conn) in opened.into_iter().enumerate() {
            match conn {
                Ok(conn) => {
                    tasks.spawn(listen_deltas(i, conn, seen_tx.clone(), stop_rx.clone()));
                    connected.push(i);
                }
                Err(e) => errors.push(format!("device {i}: {e:#}")),
            }
        }
        Listeners {
            tasks,
            connected,
            seen,
            stop,
        }
    }

    /// Counts the deltas of `updates` (see [`Updates::tally`]), then stops every device;
    /// returns the tally and the devices' errors.
    pub async fn tally_and_close(
        mut self,
        updates: &Updates,
        settle_ms: u64,
        deadline: Instant,
    ) -> (Tally, Errors) {
        let settle = Duration::from_millis(settle_ms);
        let tally = updates.tally(&mut self.seen, settle, deadline).await;
        (tally, self.close().await)
    }

    /// Stops every device (DISCONNECT and drain); returns their errors.
    async fn close(mut self) -> Errors {
        let _ = self.stop.send(true);
        let mut errors = Errors::default();
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(device_errors) => errors.merge(device_errors),
                Err(e) => errors.push(format!("device task: {e}")),
            }
        }
        errors
    }
}

/// Updates sent to devices and the deltas that answered them: update `(round, device)`
/// sets `targetTemp = base + round`, so a delta tells which update it answers.
pub struct Updates {
    pub devices: usize,
    pub rounds: u32,
    pub base: u32,
    /// `now_ns()` when update `round * devices + device` was sent; 0 = not sent.
    pub sent_at: Vec<AtomicU64>,
    /// `now_ns()` when the sender finished; 0 while it runs.
    pub done_ns: AtomicU64,
}

/// What the devices got, counted by [`Updates::tally`].
#[derive(Default)]
pub struct Tally {
    pub received: u64,
    /// Updates answered at least once.
    pub unique: u64,
    pub duplicates: u64,
    /// Deltas that answer no update of this run (e.g. an empty "nothing pending").
    pub unexpected: u64,
    /// Update sent → its first delta.
    pub latency: Latency,
    pub deadline_hit: bool,
}

impl Updates {
    pub fn new(devices: usize, rounds: u32, base: u32) -> Self {
        Updates {
            devices,
            rounds,
            base,
            sent_at: (0..devices * rounds as usize)
                .map(|_| AtomicU64::new(0))
                .collect(),
            done_ns: AtomicU64::new(0),
        }
    }

    pub fn mark_sent(&self, round: u32, device: usize, at_ns: u64) {
        self.sent_at[round as usize * self.devices + device].store(at_ns, Ordering::Release);
    }

    pub fn target_temp(&self, round: u32) -> u32 {
        self.base + round
    }

    /// Counts the deltas until every sent update was answered once the sender is done,
    /// or nothing came for `settle` after it, or the deadline.
    async fn tally(
        &self,
        seen: &mut mpsc::UnboundedReceiver<DeltaSeen>,
        settle: Duration,
        deadline: Instant,
    ) -> Tally {
        let mut tally = Tally::default();
        let mut deliveries = vec![0u8; self.sent_at.len()];
        let mut last_ns = 0u64;
        let settle_ns = u64::try_from(settle.as_nanos()).unwrap_or(u64::MAX);
        let mut check = interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                delta = seen.recv() => {
                    let Some(DeltaSeen { device, target_temp, at_ns, .. }) = delta else { break };
                    tally.received += 1;
                    last_ns = at_ns;
                    let round = target_temp
                        .map(|t| t - f64::from(self.base))
                        .filter(|r| r.fract() == 0.0 && (0.0..f64::from(self.rounds)).contains(r));
                    let index = round.map(|r| r as usize * self.devices + device);
                    let sent = index.map(|index| (index, self.sent_at[index].load(Ordering::Acquire)));
                    match sent {
                        Some((index, sent)) if sent > 0 => {
                            deliveries[index] = deliveries[index].saturating_add(1);
                            if deliveries[index] == 1 {
                                tally.unique += 1;
                                tally.latency.record_ns(at_ns.saturating_sub(sent));
                            } else {
                                tally.duplicates += 1;
                            }
                        }
                        _ => tally.unexpected += 1,
                    }
                }
                _ = check.tick() => {
                    if Instant::now() >= deadline {
                        tally.deadline_hit = true;
                        break;
                    }
                    let done_at = self.done_ns.load(Ordering::Acquire);
                    let sent = self.sent_at.iter().filter(|t| t.load(Ordering::Relaxed) > 0).count() as u64;
                    if done_at > 0
                        && (tally.unique >= sent || now_ns().saturating_sub(done_at.max(last_ns)) >= settle_ns)
                    {
                        break;
                    }
                }
            }
        }
        tally
    }
}

/// Closes connections (DISCONNECT, then read until the broker closes), all at once.
pub async fn close_all(conns: Vec<Connection>) -> Errors {
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(conn.close(CLOSE_DRAIN));
    }
    let mut errors = Errors::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(format!("close: {e:#}")),
            Err(e) => errors.push(format!("close task: {e}")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_setpoint_of_a_gateway_delta() {
        let delta = br#"{"metadata":{"messageId":"x","topic":"t","messageType":"shadow.delta"},
            "payload":{"state":{"targetTemp":60},"metadata":{"targetTemp":{"timestamp":1}},"version":2}}"#;
        assert_eq!(delta_target_temp(delta), Some(60.0));
        assert_eq!(delta_target_temp(b""), None);
        assert_eq!(delta_target_temp(b"{\"payload\":{\"state\":{}}}"), None);
        assert_eq!(
            desired_payload(42),
            br#"{"state":{"targetTemp":42}}"#.to_vec()
        );
    }
}
