//! Fan-in: N publisher devices → one QoS 0 subscriber on `ROOT/devices/+/telemetry/#`.
//!
//! Each payload is a valid telemetry reading stamped with the send time (ns on this
//! process's clock), the publisher index and a sequence number (`reading`), so the
//! subscriber measures end-to-end latency and finds lost and duplicated messages exactly.
//! Publishers finish with DISCONNECT and read until the broker closes, so no message is
//! lost to a RST at the end.
//!
//! With `--mongo`, the run then waits until every reading is in the gateway's `telemetry`
//! collection (the uplink's ingest rate) and checks each is there exactly once. With
//! `--no-subscriber`, only the publishers run: QoS 1 PUBACKs per second is then the rate at
//! which the gateway stores readings in its outbox (it acknowledges after the fsync).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::{interval, sleep_until};

use super::{reading, Ctx, CLOSE_DRAIN};
use crate::cli::FaninArgs;
use crate::mongo::{self, Landed};
use crate::mqtt::{Connection, Incoming};
use crate::pool;
use crate::report::{Errors, Outcome};
use crate::stats::{now_ns, Latency, LatencySummary, Pacer};

/// Read buffer growth for the subscriber, which takes every message of the run.
const SUBSCRIBER_READ_CHUNK: usize = 256 * 1024;
/// Publishers start together this long after the last one connected.
const START_DELAY: Duration = Duration::from_millis(100);

/// What publishers and the subscriber tell each other while running.
struct Progress {
    sent: AtomicU64,
    /// `now_ns()` when the last publisher finished; 0 while some still run.
    done_at_ns: AtomicU64,
    /// With an end-to-end window: per publisher, messages the subscriber got so far, and
    /// the wakeup of a publisher whose window is full. Empty without a window.
    delivered: Vec<AtomicU64>,
    wake: Vec<Notify>,
}

impl Progress {
    fn new(publishers: usize, windowed: bool) -> Self {
        let n = if windowed { publishers } else { 0 };
        Progress {
            sent: AtomicU64::new(0),
            done_at_ns: AtomicU64::new(0),
            delivered: (0..n).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..n).map(|_| Notify::new()).collect(),
        }
    }
}

#[derive(Default)]
struct PublisherStats {
    sent: u64,
    acked: u64,
    puback: Latency,
    first_send_ns: Option<u64>,
    last_send_ns: u64,
    last_ack_ns: u64,
    deadline_hit: bool,
    errors: Errors,
}

struct Plan {
    index: u32,
    /// Messages published but not yet received by the subscriber, at most (0: no limit).
    window: u64,
    topic: String,
    count: u64,
    qos: u8,
    payload: usize,
    pacer: Pacer,
    inflight: usize,
    batch: usize,
    deadline: Instant,
}

#[derive(Serialize)]
struct Results {
    publishers_connected: usize,
    sent: u64,
    acked: u64,
    received: u64,
    unique: u64,
    lost: u64,
    loss_pct: f64,
    duplicates: u64,
    foreign: u64,
    /// Messages delivered per second: unique received / (last receive − first send).
    delivered_per_s: f64,
    /// Messages published per second: sent / (last send − first send).
    offered_per_s: f64,
    /// QoS 1 publishes acknowledged per second: acked / (last PUBACK − first send).
    acked_per_s: f64,
    e2e: LatencySummary,
    puback: Option<LatencySummary>,
    /// With `--mongo`: how the readings reached MongoDB.
    landed: Option<Landed>,
}

/// Messages per publisher: `messages` split evenly.
pub fn split(messages: u64, publishers: usize) -> Vec<u64> {
    let n = publishers.max(1) as u64;
    (0..n)
        .map(|i| messages / n + u64::from(i < messages % n))
        .collect()
}

pub async fn run(ctx: &Ctx, args: &FaninArgs) -> anyhow::Result<Outcome> {
    let publishers = args.publishers.max(1);
    let counts = split(args.messages, publishers);
    let mut errors = Errors::default();
    let db = match &args.mongo.mongo {
        Some(uri) => Some(mongo::connect(uri, &args.mongo.database).await?),
        None => None,
    };

    let subscriber = if args.no_subscriber {
        None
    } else {
        let mut sub_options = ctx.connect.clone();
        sub_options.read_chunk = SUBSCRIBER_READ_CHUNK;
        let mut subscriber = Connection::open(&format!("{}sub", ctx.prefix), &sub_options).await?;
        subscriber
            .subscribe(&format!("{}/devices/+/telemetry/#", ctx.root), 0)
            .await?;
        Some(subscriber)
    };

    let opened = pool::open_all(publishers, ctx.connect_concurrency, |i| {
        let id = ctx.device_id("pub", i);
        let options = ctx.connect.clone();
        async move { Connection::open(&id, &options).await }
    })
    .await;

    let go = Instant::now() + START_DELAY;
    let progress = Arc::new(Progress::new(publishers, args.window > 0));
    let settle = Duration::from_millis(args.settle_ms);
    let receiving = subscriber.map(|subscriber| {
        tokio::spawn(receive(
            subscriber,
            counts.clone(),
            progress.clone(),
            settle,
            ctx.deadline,
        ))
    });
    let mut publishing = tokio::task::JoinSet::new();
    let mut connected = 0;
    let per_publisher_rate = (args.rate > 0.0).then(|| args.rate / publishers as f64);
    for (i, conn) in opened.into_iter().enumerate() {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                errors.push(format!("publisher {i}: {e:#}"));
                continue;
            }
        };
        connected += 1;
        // Publishers are staggered over one message interval so they do not tick together.
        let start = if args.rate > 0.0 {
            go + Duration::from_secs_f64(i as f64 / args.rate)
        } else {
            go
        };
        let plan = Plan {
            index: i as u32,
            window: args.window,
            topic: format!(
                "{}/devices/{}/telemetry/temperature",
                ctx.root,
                ctx.device_id("pub", i)
            ),
            count: counts[i],
            qos: args.qos,
            payload: args.payload as usize,
            pacer: Pacer::new(start, per_publisher_rate),
            inflight: args.inflight.max(1),
            batch: args.batch.max(1),
            deadline: ctx.deadline,
        };
        publishing.spawn(publish(conn, plan, progress.clone()));
    }

    let mut totals = PublisherStats::default();
    while let Some(joined) = publishing.join_next().await {
        match joined {
            Ok(stats) => {
                totals.sent += stats.sent;
                totals.acked += stats.acked;
                totals.puback.add(&stats.puback);
                totals.first_send_ns = match (totals.first_send_ns, stats.first_send_ns) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                totals.last_send_ns = totals.last_send_ns.max(stats.last_send_ns);
                totals.last_ack_ns = totals.last_ack_ns.max(stats.last_ack_ns);
                totals.deadline_hit |= stats.deadline_hit;
                errors.merge(stats.errors);
            }
            Err(e) => errors.push(format!("publisher task: {e}")),
        }
    }
    progress
        .done_at_ns
        .store(now_ns().max(1), Ordering::Release);
    let received = match receiving {
        Some(receiving) => receiving.await?,
        None => Received::default(),
    };
    errors.merge(received.errors);
    let landed = match &db {
        Some(db) => {
            let devices: Vec<String> = (0..publishers).map(|i| ctx.device_id("pub", i)).collect();
            let landed = mongo::wait_landed(db, &devices, &counts, Some(go), ctx.deadline).await?;
            Some(landed)
        }
        None => None,
    };

    let first_send = totals.first_send_ns.unwrap_or(0);
    let per_s = |n: u64, from: u64, to: u64| match to.saturating_sub(from) {
        0 => 0.0,
        ns => (n as f64 / (ns as f64 / 1e9)).round(),
    };
    // Without a subscriber nothing is received, and nothing counts as lost.
    let lost = match args.no_subscriber {
        true => 0,
        false => totals.sent.saturating_sub(received.unique),
    };
    let results = Results {
        publishers_connected: connected,
        sent: totals.sent,
        acked: totals.acked,
        received: received.received,
        unique: received.unique,
        lost,
        loss_pct: if totals.sent == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / totals.sent as f64
        },
        duplicates: received.duplicates,
        foreign: received.foreign,
        delivered_per_s: per_s(received.unique, first_send, received.last_receive_ns),
        offered_per_s: per_s(totals.sent, first_send, totals.last_send_ns),
        acked_per_s: per_s(totals.acked, first_send, totals.last_ack_ns),
        e2e: received.latency.summary(),
        puback: (args.qos > 0).then(|| totals.puback.summary()),
        landed,
    };
    let mut summary = format!(
        "{} publishers, QoS {}, {} B, rate {}: sent {}, received {} ({} lost, {} duplicates)\n\
         delivered {:.0} msg/s (offered {:.0} msg/s)\nend-to-end {}",
        connected,
        args.qos,
        args.payload,
        if args.rate > 0.0 {
            format!("{}/s", args.rate)
        } else {
            "max".into()
        },
        results.sent,
        results.received,
        results.lost,
        results.duplicates,
        results.delivered_per_s,
        results.offered_per_s,
        results.e2e,
    );
    if let Some(puback) = &results.puback {
        summary.push_str(&format!(
            "\nPUBACK {puback}; {:.0} acked/s",
            results.acked_per_s
        ));
    }
    if let Some(landed) = &results.landed {
        summary.push_str(&format!("\nMongoDB: {}", landed));
    }
    Ok(Outcome {
        params: json!({
            "publishers": publishers,
            "messages": args.messages,
            "qos": args.qos,
            "subscriber_qos": 0,
            "payload_bytes": args.payload,
            "rate": args.rate,
            "inflight": args.inflight,
            "batch": args.batch,
            "window": args.window,
            "subscriber": !args.no_subscriber,
            "mongo": args.mongo.mongo.is_some(),
        }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit: totals.deadline_hit
            || received.deadline_hit
            || results.landed.as_ref().is_some_and(|l| l.deadline_hit),
        errors,
    })
}

/// One publisher: paced (or flat out), at most `inflight` unacknowledged QoS 1 publishes,
/// up to `batch` publishes per write; then DISCONNECT and drain.
async fn publish(mut conn: Connection, plan: Plan, progress: Arc<Progress>) -> PublisherStats {
    let mut stats = PublisherStats::default();
    let mut payload = reading::template(plan.payload);
    // QoS 1 packet id → send time; brokers ack in order, so this stays at `inflight`.
    let mut unacked: std::collections::HashMap<u16, u64> = Default::default();
    sleep_until(plan.pacer.at(0).into()).await;
    loop {
        let now = Instant::now();
        if stats.sent == plan.count && unacked.is_empty() {
            break;
        }
        if now >= plan.deadline {
            stats.deadline_hit = true;
            break;
        }
        let mut room = match plan.qos {
            0 => plan.batch,
            _ => plan.inflight - unacked.len(),
        };
        if plan.window > 0 {
            let delivered = progress.delivered[plan.index as usize].load(Ordering::Acquire);
            let in_flight = stats.sent.saturating_sub(delivered);
            room = room.min(plan.window.saturating_sub(in_flight) as usize);
        }
        let due = plan.pacer.due(now).min(plan.count);
        let n = due
            .saturating_sub(stats.sent)
            .min(plan.batch.min(room) as u64);
        if n > 0 {
            let ts = now_ns();
            stats.first_send_ns.get_or_insert(ts);
            stats.last_send_ns = ts;
            reading::set_sent(&mut payload, ts);
            for _ in 0..n {
                reading::set_origin(&mut payload, plan.index, stats.sent as u32);
                let pkid = conn.queue_publish(&plan.topic, &payload, plan.qos, false);
                if plan.qos > 0 {
                    unacked.insert(pkid, ts);
                }
                stats.sent += 1;
            }
            if let Err(e) = conn.flush().await {
                stats.errors.push(format!("publish: {e}"));
                return stats;
            }
            progress.sent.fetch_add(n, Ordering::Relaxed);
            // Let the subscriber and the other publishers run (one runtime thread).
            tokio::task::yield_now().await;
            continue;
        }
        // Nothing to send now: wait for an ack, the subscriber, the pace, or the deadline.
        let wake = if stats.sent < plan.count && room > 0 {
            plan.pacer.at(stats.sent)
        } else {
            plan.deadline
        };
        let delivered = async {
            match progress.wake.get(plan.index as usize) {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        let packet = tokio::select! {
            packet = conn.read() => packet,
            _ = delivered => continue,
            _ = sleep_until(wake.into()) => continue,
        };
        let mut packet = packet;
        loop {
            match packet {
                Ok(Some(Incoming::PubAck(pkid))) => {
                    if let Some(sent_at) = unacked.remove(&pkid) {
                        let now = now_ns();
                        stats.puback.record_ns(now.saturating_sub(sent_at));
                        stats.acked += 1;
                        stats.last_ack_ns = now;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    stats
                        .errors
                        .push("the broker closed a publisher's connection");
                    return stats;
                }
                Err(e) => {
                    stats.errors.push(format!("publisher read: {e:#}"));
                    return stats;
                }
            }
            // Take every ack already read before sending again: sends go out in batches.
            packet = match conn.buffered() {
                Ok(None) => break,
                other => other,
            };
        }
    }
    match conn.close(CLOSE_DRAIN).await {
        Ok(late) => {
            for packet in late {
                if let Incoming::PubAck(pkid) = packet {
                    if unacked.remove(&pkid).is_some() {
                        stats.acked += 1;
                        stats.last_ack_ns = now_ns();
                    }
                }
            }
        }
        Err(e) => stats.errors.push(format!("publisher close: {e:#}")),
    }
    stats
}

#[derive(Default)]
struct Received {
    received: u64,
    unique: u64,
    duplicates: u64,
    /// Messages that are not this run's (short payload, unknown publisher or sequence).
    foreign: u64,
    latency: Latency,
    last_receive_ns: u64,
    /// With an end-to-end window: messages received per publisher, the counts last given
    /// to the publishers, and the publishers heard from since then.
    per_publisher: Vec<u64>,
    per_publisher_reported: Vec<u64>,
    heard_from: Vec<usize>,
    deadline_hit: bool,
    errors: Errors,
}

impl Received {
    fn account(&mut self, payload: &[u8], seen: &mut [Vec<u64>], now: u64) {
        self.received += 1;
        let Some(reading::Stamp {
            sent_ns: ts,
            publisher: index,
            seq,
        }) = reading::stamp(payload)
        else {
            self.foreign += 1;
            return;
        };
        let Some(word) = seen
            .get_mut(index as usize)
            .and_then(|bits| bits.get_mut(seq as usize / 64))
        else {
            self.foreign += 1;
            return;
        };
        let bit = 1u64 << (seq % 64);
        if *word & bit != 0 {
            self.duplicates += 1;
            return;
        }
        *word |= bit;
        self.unique += 1;
        if let Some(count) = self.per_publisher.get_mut(index as usize) {
            // A publisher's count goes 0 → 1 → … within a read; it is listed once, when
            // its first message of the read arrives.
            if self.per_publisher_reported.get(index as usize) == Some(count) {
                self.heard_from.push(index as usize);
            }
            *count += 1;
        }
        self.latency.record_ns(now.saturating_sub(ts));
        self.last_receive_ns = now;
    }
}

/// The subscriber: counts and times every message until all sent ones arrived, or none
/// came for `settle` after the publishers finished, or the deadline.
async fn receive(
    mut conn: Connection,
    counts: Vec<u64>,
    progress: Arc<Progress>,
    settle: Duration,
    deadline: Instant,
) -> Received {
    let mut seen: Vec<Vec<u64>> = counts
        .iter()
        .map(|&n| vec![0; n.div_ceil(64) as usize])
        .collect();
    let mut got = Received {
        per_publisher: vec![0; progress.delivered.len()],
        per_publisher_reported: vec![0; progress.delivered.len()],
        ..Received::default()
    };
    let mut check = interval(Duration::from_millis(20));
    let settle_ns = u64::try_from(settle.as_nanos()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            packet = conn.read() => {
                let mut packet = packet;
                loop {
                    match packet {
                        Ok(Some(Incoming::Publish(p))) => got.account(&p.payload, &mut seen, now_ns()),
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            got.errors.push("the broker closed the subscriber's connection");
                            return got;
                        }
                        Err(e) => {
                            got.errors.push(format!("subscriber read: {e:#}"));
                            return got;
                        }
                    }
                    packet = match conn.buffered() {
                        Ok(None) => break,
                        other => other,
                    };
                }
                // Open the windows of the publishers heard from in this read.
                for index in got.heard_from.drain(..) {
                    let count = got.per_publisher[index];
                    got.per_publisher_reported[index] = count;
                    progress.delivered[index].store(count, Ordering::Release);
                    progress.wake[index].notify_one();
                }
            }
            _ = check.tick() => {
                if Instant::now() >= deadline {
                    got.deadline_hit = true;
                    break;
                }
                let done_at = progress.done_at_ns.load(Ordering::Acquire);
                if done_at > 0 {
                    let quiet_since = done_at.max(got.last_receive_ns);
                    if got.unique >= progress.sent.load(Ordering::Relaxed)
                        || now_ns().saturating_sub(quiet_since) >= settle_ns
                    {
                        break;
                    }
                }
            }
        }
    }
    if let Err(e) = conn.close(CLOSE_DRAIN).await {
        got.errors.push(format!("subscriber close: {e:#}"));
    }
    got
}
