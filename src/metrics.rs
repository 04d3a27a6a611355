//! Prometheus metrics (`/metrics`, text format): what an operator graphs and alerts on.
//!
//! Counters are updated where things happen (broker hook, shadow service); gauges that
//! mirror state owned elsewhere (outbox, uplink, store, memory) are read at scrape time.
//! deploy/grafana-dashboard.json graphs these families and deploy/prometheus-rules.yml
//! alerts on them; tests/monitoring_kit.rs checks both against a live gateway.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::alert_event::OpenAlerts;
use crate::lease::LeaseRole;
use crate::messages::Count;
use crate::reports::{BridgeReport, OutboxStats, UplinkMode, UplinkReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

/// A client id that connects this many times within [`FLAP_WINDOW`] is flapping (a heater
/// whose power or Wi-Fi keeps dropping, or two clients fighting over one id).
const FLAP_CONNECTS: usize = 5;
const FLAP_WINDOW: Duration = Duration::from_secs(600);
/// Client ids followed for flapping at most: a flood of new ids (a scanner) cannot grow
/// the table without bound; ids quiet for a whole window are forgotten first.
const FLAP_TRACKED: usize = 4096;

/// Rejections the status page lists, newest last; older ones are forgotten.
pub const RECENT_REJECTIONS: usize = 20;

/// One refused request, as a field technician sees it on the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentRejection {
    pub device_id: String,
    pub code: u16,
    pub message: String,
    pub at: SystemTime,
}

/// The gateway's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    messages_in: Family<KindLabel, Counter>,
    messages_out: Family<KindLabel, Counter>,
    /// The two families summed, for `system/metrics` (a family has no total of its own).
    messages_in_total: AtomicU64,
    messages_out_total: AtomicU64,
    shadow_updates: Counter,
    rejections: Family<CodeLabel, Counter>,
    deltas_published: Counter,
    /// From the moment the gateway picked up a desired change to its delta handed to the
    /// broker, in seconds.
    delta_latency: Histogram,
    /// Alerts open now, read from the alert task's count at scrape time.
    alerts_open: Gauge,
    open_alerts: Mutex<Option<OpenAlerts>>,
    /// Bytes the process caused to be written to storage (`/proc/self/io` write_bytes).
    store_bytes_written: Counter,
    /// What the broker's per-client limits refused or did not keep, by limit.
    broker_dropped: Family<ReasonLabel, Counter>,
    /// CONNECTs refused, by reason.
    connects_refused: Family<ReasonLabel, Counter>,
    connected_clients: Gauge,
    /// Client id → connections with that id (briefly 2 while a client replaces its
    /// session), for the status page's list of connected devices.
    connected: Mutex<BTreeMap<String, u32>>,
    recent_rejections: Mutex<VecDeque<RecentRejection>>,
    /// Client id → its last [`FLAP_CONNECTS`] connect times, oldest first.
    recent_connects: Mutex<HashMap<String, VecDeque<Instant>>>,
    flapping_clients: Gauge,
    store_writable: Gauge,
    lease_role: Family<RoleLabel, Gauge>,
    uplink_connected: Gauge,
    uplink_mode: Family<ModeLabel, Gauge>,
    outbox_items: Gauge,
    outbox_bytes: Gauge,
    outbox_oldest_age: Gauge,
    outbox_dropped: Family<ReasonLabel, Gauge>,
    resident_memory: Gauge,
    bridge_connected: Gauge,
    bridge_reconnects: Counter,
    bridge_forwarded: Counter,
    bridge_received: Counter,
    bridge_queued: Gauge,
    bridge_dropped: Gauge,
    /// Serializes the catch-up of counters whose totals are kept elsewhere (the bridge's,
    /// bytes written), so two scrapes at once cannot both add the same difference.
    catch_up: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotsphere");
        let inner = Inner {
            messages_in: Family::default(),
            messages_out: Family::default(),
            messages_in_total: AtomicU64::default(),
            messages_out_total: AtomicU64::default(),
            shadow_updates: Counter::default(),
            rejections: Family::default(),
            deltas_published: Counter::default(),
            // 0.5 ms to ~4 s: a group commit on a fast card to a slow SD card's stall.
            delta_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            alerts_open: Gauge::default(),
            open_alerts: Mutex::default(),
            store_bytes_written: Counter::default(),
            broker_dropped: Family::default(),
            connects_refused: Family::default(),
            connected_clients: Gauge::default(),
            connected: Mutex::default(),
            recent_rejections: Mutex::default(),
            recent_connects: Mutex::default(),
            flapping_clients: Gauge::default(),
            store_writable: Gauge::default(),
            lease_role: Family::default(),
            uplink_connected: Gauge::default(),
            uplink_mode: Family::default(),
            outbox_items: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            outbox_dropped: Family::default(),
            resident_memory: Gauge::default(),
            bridge_connected: Gauge::default(),
            bridge_reconnects: Counter::default(),
            bridge_forwarded: Counter::default(),
            bridge_received: Counter::default(),
            bridge_queued: Gauge::default(),
            bridge_dropped: Gauge::default(),
            catch_up: Mutex::new(()),
            registry: Registry::default(),
        };
        register_traffic(&mut registry, &inner);
        register_health(&mut registry, &inner);
        Metrics(Arc::new(Inner { registry, ..inner }))
    }
}

/// Messages, rejections, the broker's limits and its clients.
fn register_traffic(registry: &mut Registry, inner: &Inner) {
    registry.register(
        "messages_in",
        "MQTT publishes received, by topic kind",
        inner.messages_in.clone(),
    );
    registry.register(
        "messages_out",
        "Messages the gateway published, by kind",
        inner.messages_out.clone(),
    );
    registry.register(
        "shadow_updates",
        "Accepted shadow changes",
        inner.shadow_updates.clone(),
    );
    registry.register(
        "rejections",
        "Refused shadow requests, by code",
        inner.rejections.clone(),
    );
    registry.register(
        "deltas_published",
        "Deltas published to devices",
        inner.deltas_published.clone(),
    );
    registry.register(
        "delta_latency_seconds",
        "From the gateway picking up a desired change (a device's or app's request, a change-stream event) to its delta handed to the broker; includes the batch's fsync",
        inner.delta_latency.clone(),
    );
    registry.register(
        "alerts_open",
        "Alerts fired and not yet cleared",
        inner.alerts_open.clone(),
    );
    registry.register(
        "broker_dropped",
        "What the broker's per-client limits refused or did not keep (subscriptions, retained messages, QoS 2 publishes awaiting release, take-overs), by limit",
        inner.broker_dropped.clone(),
    );
    registry.register(
        "connects_refused",
        "CONNECTs refused, by reason (bad_login, not_authorized, busy, standby)",
        inner.connects_refused.clone(),
    );
    registry.register(
        "connected_clients",
        "MQTT clients connected now",
        inner.connected_clients.clone(),
    );
    registry.register(
        "flapping_clients",
        format!(
            "Client ids that connected {FLAP_CONNECTS} times or more in the last {} minutes",
            FLAP_WINDOW.as_secs() / 60
        ),
        inner.flapping_clients.clone(),
    );
}

/// The store, the lease, the uplink, the outbox, memory and the bridge.
fn register_health(registry: &mut Registry, inner: &Inner) {
    registry.register(
        "store_writable",
        "1 when the last store probe could write and fsync (see /health)",
        inner.store_writable.clone(),
    );
    registry.register(
        "lease_role",
        "1 for this gateway's role in its active/standby pair",
        inner.lease_role.clone(),
    );
    registry.register(
        "uplink_connected",
        "1 when MongoDB answers",
        inner.uplink_connected.clone(),
    );
    registry.register(
        "uplink_mode",
        "1 for the uplink's current mode",
        inner.uplink_mode.clone(),
    );
    registry.register(
        "outbox_items",
        "Writes waiting for MongoDB",
        inner.outbox_items.clone(),
    );
    registry.register(
        "outbox_bytes",
        "Bytes waiting in the outbox",
        inner.outbox_bytes.clone(),
    );
    registry.register(
        "outbox_oldest_age_seconds",
        "Age of the oldest item waiting for MongoDB (0 when none waits)",
        inner.outbox_oldest_age.clone(),
    );
    registry.register(
        "outbox_dropped",
        "Outbox items dropped since start, by reason",
        inner.outbox_dropped.clone(),
    );
    registry.register(
        "resident_memory_bytes",
        "Resident memory of the gateway (VmRSS)",
        inner.resident_memory.clone(),
    );
    registry.register(
        "store_bytes_written",
        "Bytes the gateway caused to be written to storage (Linux /proc/self/io write_bytes: the store, the outbox, log files): SD-card wear",
        inner.store_bytes_written.clone(),
    );
    registry.register(
        "bridge_connected",
        "1 when the upstream MQTT broker is connected",
        inner.bridge_connected.clone(),
    );
    registry.register(
        "bridge_reconnects",
        "Connections to the upstream MQTT broker lost",
        inner.bridge_reconnects.clone(),
    );
    registry.register(
        "bridge_forwarded",
        "Messages the upstream MQTT broker acknowledged",
        inner.bridge_forwarded.clone(),
    );
    registry.register(
        "bridge_received",
        "Messages from the upstream MQTT broker published locally",
        inner.bridge_received.clone(),
    );
    registry.register(
        "bridge_queued",
        "Messages waiting for the upstream MQTT broker",
        inner.bridge_queued.clone(),
    );
    registry.register(
        "bridge_dropped",
        "Messages dropped from the bridge's outbox since start (full or expired)",
        inner.bridge_dropped.clone(),
    );
}

impl Metrics {
    pub fn message_in(&self, kind: &'static str) {
        self.0.messages_in.get_or_create(&KindLabel { kind }).inc();
        self.0.messages_in_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message the gateway publishes, as it is published.
    pub fn published(&self, count: &Count) {
        match count {
            Count::Nothing => {}
            Count::ShadowUpdate => {
                self.0.shadow_updates.inc();
                self.message_out("shadow.document");
            }
            Count::Message(kind) => {
                if count.is_delta() {
                    self.delta_published();
                }
                self.message_out(kind);
            }
            Count::Rejection {
                device_id,
                code,
                message,
            } => {
                self.rejection(device_id, *code, message);
                self.message_out("shadow.rejected");
            }
        }
    }

    fn message_out(&self, kind: &'static str) {
        self.0.messages_out.get_or_create(&KindLabel { kind }).inc();
        self.0.messages_out_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Deltas published `elapsed` after the gateway picked up the change that caused them.
    pub fn deltas_after(&self, deltas: usize, elapsed: Duration) {
        for _ in 0..deltas {
            self.0.delta_latency.observe(elapsed.as_secs_f64());
        }
    }

    /// The alert task's count of open alerts, shown as `iotsphere_alerts_open`.
    pub fn follow_open_alerts(&self, open: OpenAlerts) {
        *lock(&self.0.open_alerts) = Some(open);
    }

    /// Counts a refused request and keeps it among the recent ones.
    fn rejection(&self, device_id: &str, code: u16, message: &str) {
        self.0.rejections.get_or_create(&CodeLabel { code }).inc();
        let mut recent = lock(&self.0.recent_rejections);
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_front();
        }
        recent.push_back(RecentRejection {
            device_id: device_id.to_string(),
            code,
            message: message.to_string(),
            at: SystemTime::now(),
        });
    }

    /// The last [`RECENT_REJECTIONS`] rejections, oldest first.
    pub fn recent_rejections(&self) -> Vec<RecentRejection> {
        lock(&self.0.recent_rejections).iter().cloned().collect()
    }

    fn delta_published(&self) {
        self.0.deltas_published.inc();
    }

    pub fn broker_dropped(&self, reason: &'static str) {
        self.0
            .broker_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn connect_refused(&self, reason: &'static str) {
        self.0
            .connects_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn client_connected(&self, client_id: &str, connected: bool) {
        if connected {
            self.remember_connect(client_id, Instant::now());
        }
        let mut clients = lock(&self.0.connected);
        if connected {
            *clients.entry(client_id.to_string()).or_default() += 1;
        } else if let Some(count) = clients.get_mut(client_id) {
            *count -= 1;
            if *count == 0 {
                clients.remove(client_id);
            }
        }
        let total: u32 = clients.values().sum();
        self.0.connected_clients.set(i64::from(total));
    }

    pub fn connected_clients(&self) -> i64 {
        self.0.connected_clients.get()
    }

    fn remember_connect(&self, client_id: &str, now: Instant) {
        let mut recent = lock(&self.0.recent_connects);
        if !recent.contains_key(client_id) && recent.len() >= FLAP_TRACKED {
            recent.retain(|_, connects| within_window(connects, now));
            if recent.len() >= FLAP_TRACKED {
                return;
            }
        }
        let connects = recent.entry(client_id.to_string()).or_default();
        if connects.len() == FLAP_CONNECTS {
            connects.pop_front();
        }
        connects.push_back(now);
    }

    /// Client ids with [`FLAP_CONNECTS`] connects within the last [`FLAP_WINDOW`]; ids
    /// quiet for a whole window are forgotten.
    fn flapping_clients(&self, now: Instant) -> usize {
        let mut recent = lock(&self.0.recent_connects);
        recent.retain(|_, connects| within_window(connects, now));
        recent
            .values()
            .filter(|connects| connects.len() == FLAP_CONNECTS)
            .filter(|connects| {
                connects
                    .front()
                    .is_some_and(|first| now.saturating_duration_since(*first) <= FLAP_WINDOW)
            })
            .count()
    }

    /// What the last store probe found (`/health`, `system/status` and the watchdog probe;
    /// a scrape does not write to the SD card itself).
    pub fn store_probed(&self, writable: bool) {
        self.0.store_writable.set(i64::from(writable));
    }

    pub fn is_connected(&self, client_id: &str) -> bool {
        lock(&self.0.connected).contains_key(client_id)
    }

    /// Ids of the clients connected now, sorted.
    pub fn connected_client_ids(&self) -> Vec<String> {
        lock(&self.0.connected).keys().cloned().collect()
    }

    /// Messages received and published so far, all kinds together.
    pub fn message_totals(&self) -> (u64, u64) {
        (
            self.0.messages_in_total.load(Ordering::Relaxed),
            self.0.messages_out_total.load(Ordering::Relaxed),
        )
    }

    /// The Prometheus text exposition, with the state-mirroring gauges refreshed.
    pub fn render(
        &self,
        uplink: Option<&UplinkReport>,
        outbox: Option<&OutboxStats>,
        bridge: Option<&BridgeReport>,
    ) -> String {
        let inner = &self.0;
        if let Some(bridge) = bridge {
            inner.bridge_connected.set(i64::from(bridge.connected));
            let _catching_up = lock(&inner.catch_up);
            // The bridge keeps the totals; the counters catch up at scrape time.
            catch_up(&inner.bridge_reconnects, bridge.reconnects);
            catch_up(&inner.bridge_forwarded, bridge.forwarded);
            catch_up(&inner.bridge_received, bridge.received);
            inner.bridge_queued.set(to_i64(bridge.queued));
            inner.bridge_dropped.set(to_i64(bridge.dropped));
        }
        if let Some(report) = uplink {
            inner.uplink_connected.set(i64::from(report.connected));
            if let Some(current) = report.lease {
                for role in [LeaseRole::Active, LeaseRole::Standby, LeaseRole::Undecided] {
                    inner
                        .lease_role
                        .get_or_create(&RoleLabel {
                            role: role.as_str(),
                        })
                        .set(i64::from(role == current));
                }
            }
            for mode in UplinkMode::ALL {
                inner
                    .uplink_mode
                    .get_or_create(&ModeLabel {
                        mode: mode.as_str(),
                    })
                    .set(i64::from(report.mode == mode));
            }
        }
        if let Some(stats) = outbox {
            inner.outbox_items.set(to_i64(stats.items + stats.shadows));
            inner.outbox_bytes.set(to_i64(stats.bytes));
            inner
                .outbox_oldest_age
                .set(to_i64(stats.oldest_age_secs.unwrap_or(0)));
            for (reason, count) in [
                ("full", stats.dropped_full),
                ("expired", stats.dropped_expired),
                ("dead_letter", stats.dead_lettered),
            ] {
                inner
                    .outbox_dropped
                    .get_or_create(&ReasonLabel { reason })
                    .set(to_i64(count));
            }
        }
        inner
            .flapping_clients
            .set(to_i64(self.flapping_clients(Instant::now())));
        inner.resident_memory.set(to_i64(resident_memory_bytes()));
        if let Some(written) = storage_bytes_written() {
            let _catching_up = lock(&inner.catch_up);
            catch_up(&inner.store_bytes_written, written);
        }
        if let Some(open) = lock(&inner.open_alerts).as_ref() {
            inner.alerts_open.set(to_i64(open.get()));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &inner.registry);
        text
    }
}

/// A poisoned lock only means a panic elsewhere mid-update of a list shown to operators;
/// the list is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the last connect of `connects` is within [`FLAP_WINDOW`] of `now`.
fn within_window(connects: &VecDeque<Instant>, now: Instant) -> bool {
    connects
        .back()
        .is_some_and(|last| now.saturating_duration_since(*last) <= FLAP_WINDOW)
}

fn to_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Raises `counter` to `total`, kept elsewhere (callers hold `Inner::catch_up`, so two
/// scrapes at once cannot both add the same difference).
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// `write_bytes` of `/proc/self/io`: what this process sent to the block layer (`None`
/// where /proc is not available).
fn storage_bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
}

/// VmRSS of this process in bytes (0 where /proc is not available).
pub fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let metrics = Metrics::default();
        metrics.message_in("telemetry");
        metrics.rejection("h1", 409, "version conflict");
        metrics.rejection("h1", 409, "version conflict");
        metrics.client_connected("h1", true);
        metrics.client_connected("h2", true);
        metrics.client_connected("h1", false);
        metrics.broker_dropped("retained_count");
        metrics.connect_refused("busy");
        let text = metrics.render(
            None,
            Some(&OutboxStats {
                items: 3,
                bytes: 100,
                dropped_full: 2,
                ..OutboxStats::default()
            }),
            Some(&BridgeReport {
                connected: true,
                forwarded: 7,
                queued: 2,
                ..BridgeReport::default()
            }),
        );
        for line in [
            "iotsphere_messages_in_total{kind=\"telemetry\"} 1",
            "iotsphere_rejections_total{code=\"409\"} 2",
            "iotsphere_connected_clients 1",
            "iotsphere_outbox_items 3",
            "iotsphere_outbox_dropped{reason=\"full\"} 2",
            "iotsphere_bridge_connected 1",
            "iotsphere_bridge_forwarded_total 7",
            "iotsphere_bridge_queued 2",
            "iotsphere_broker_dropped_total{reason=\"retained_count\"} 1",
            "iotsphere_connects_refused_total{reason=\"busy\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(text.contains("iotsphere_resident_memory_bytes "));
        assert_eq!(metrics.connected_client_ids(), ["h2"]);
        assert_eq!(metrics.message_totals(), (1, 0));
    }

    #[test]
    fn lease_role_store_and_oldest_item_are_rendered() {
        let metrics = Metrics::default();
        let text = metrics.render(None, None, None);
        assert!(!text.contains("iotsphere_lease_role{"), "no pair, no role");
        metrics.store_probed(false);
        let report = UplinkReport {
            lease: Some(LeaseRole::Standby),
            ..crate::uplink::UplinkStatus::default().report()
        };
        let stats = OutboxStats {
            oldest_age_secs: Some(4000),
            ..OutboxStats::default()
        };
        let text = metrics.render(Some(&report), Some(&stats), None);
        for line in [
            "iotsphere_lease_role{role=\"standby\"} 1",
            "iotsphere_lease_role{role=\"active\"} 0",
            "iotsphere_lease_role{role=\"undecided\"} 0",
            "iotsphere_store_writable 0",
            "iotsphere_outbox_oldest_age_seconds 4000",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let text = metrics.render(Some(&report), Some(&OutboxStats::default()), None);
        assert!(
            text.contains("iotsphere_outbox_oldest_age_seconds 0"),
            "{text}"
        );
    }

    #[test]
    fn a_client_connecting_again_and_again_is_flapping() {
        let metrics = Metrics::default();
        let start = Instant::now();
        let at = |minutes: u64| start + Duration::from_secs(60 * minutes);
        // flappy connects once a minute, steady once in all, slow once every 3 minutes.
        let mut connects = vec![(0, "steady")];
        connects.extend((0..5).map(|i| (i, "flappy")));
        connects.extend((0..5).map(|i| (3 * i, "slow")));
        connects.sort();
        for (minute, client) in connects {
            metrics.remember_connect(client, at(minute));
            if minute == 4 {
                assert_eq!(metrics.flapping_clients(at(4)), 1, "flappy: 5 in 4 minutes");
            }
        }
        assert_eq!(
            metrics.flapping_clients(at(12)),
            0,
            "slow's 5 took 12 minutes; flappy's first is 12 minutes old"
        );
        metrics.remember_connect("flappy", at(12));
        assert_eq!(
            metrics.flapping_clients(at(12)),
            0,
            "flappy's last 5 connects span 11 minutes"
        );
        assert_eq!(metrics.flapping_clients(at(23)), 0);
        assert!(
            lock(&metrics.0.recent_connects).is_empty(),
            "ids quiet for a window are forgotten"
        );
    }

    #[test]
    fn at_most_flap_tracked_client_ids_are_followed() {
        let metrics = Metrics::default();
        let start = Instant::now();
        for i in 0..FLAP_TRACKED {
            metrics.remember_connect(&format!("scanner-{i}"), start);
        }
        for _ in 0..FLAP_CONNECTS {
            metrics.remember_connect("late", start);
        }
        assert_eq!(lock(&metrics.0.recent_connects).len(), FLAP_TRACKED);
        assert_eq!(metrics.flapping_clients(start), 0, "the table was full");
        // Once the scanner's ids are a window old, new ids are followed again.
        let later = start + FLAP_WINDOW + Duration::from_secs(1);
        for _ in 0..FLAP_CONNECTS {
            metrics.remember_connect("late", later);
        }
        assert_eq!(metrics.flapping_clients(later), 1);
        assert_eq!(lock(&metrics.0.recent_connects).len(), 1);
    }

    #[test]
    fn a_client_replacing_its_session_stays_connected() {
        let metrics = Metrics::default();
        metrics.client_connected("h1", true);
        metrics.client_connected("h1", true);
        metrics.client_connected("h1", false);
        assert_eq!(metrics.connected_client_ids(), ["h1"]);
        assert_eq!(metrics.connected_clients(), 1);
        metrics.client_connected("h1", false);
        metrics.client_connected("h1", false);
        assert!(metrics.connected_client_ids().is_empty());
        assert_eq!(metrics.connected_clients(), 0);
    }

    #[test]
    fn only_the_latest_rejections_are_kept() {
        let metrics = Metrics::default();
        for i in 0..RECENT_REJECTIONS + 5 {
            metrics.rejection(&format!("h{i}"), 400, "bad JSON");
        }
        let recent = metrics.recent_rejections();
        assert_eq!(recent.len(), RECENT_REJECTIONS);
        assert_eq!(recent[0].device_id, "h5");
        assert_eq!(
            recent[RECENT_REJECTIONS - 1].device_id,
            format!("h{}", RECENT_REJECTIONS + 4)
        );
    }

    /// The line of `text` for the sample `name` (with its labels), e.g. `… 3`.
    fn sample<'t>(text: &'t str, name: &str) -> Option<&'t str> {
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
    }

    #[test]
    fn shadow_updates_are_counted_when_their_document_is_published() {
        let metrics = Metrics::default();
        metrics.published(&Count::ShadowUpdate);
        metrics.published(&Count::Message("shadow.document"));
        let text = metrics.render(None, None, None);
        assert_eq!(
            sample(&text, "iotsphere_shadow_updates_total"),
            Some("iotsphere_shadow_updates_total 1")
        );
        assert_eq!(metrics.message_totals(), (0, 2));
    }

    #[test]
    fn delta_latency_open_alerts_and_bytes_written_are_rendered() {
        let metrics = Metrics::default();
        metrics.deltas_after(2, Duration::from_millis(3));
        metrics.deltas_after(0, Duration::from_secs(9));
        let open = OpenAlerts::default();
        metrics.follow_open_alerts(open.clone());
        open.set(4);
        let text = metrics.render(None, None, None);
        assert_eq!(
            sample(&text, "iotsphere_delta_latency_seconds_count"),
            Some("iotsphere_delta_latency_seconds_count 2")
        );
        // 3 ms falls in the bucket up to 4 ms (0.5 ms doubling), not in the one up to 2 ms.
        assert!(text.contains("iotsphere_delta_latency_seconds_bucket{le=\"0.002\"} 0"));
        assert!(text.contains("iotsphere_delta_latency_seconds_bucket{le=\"0.004\"} 2"));
        assert_eq!(
            sample(&text, "iotsphere_alerts_open"),
            Some("iotsphere_alerts_open 4")
        );
        let written = sample(&text, "iotsphere_store_bytes_written_total")
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<u64>().ok())
            .expect("bytes written rendered");
        let again = metrics.render(None, None, None);
        let later = sample(&again, "iotsphere_store_bytes_written_total")
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<u64>().ok())
            .expect("bytes written rendered");
        assert!(later >= written, "a counter never goes back");
    }
}
