//! Prometheus metrics (`/metrics`, text format): what an operator graphs and alerts on.
//!
//! Counters are updated where things happen (broker hook, shadow service); gauges that
//! mirror state owned elsewhere (outbox, uplink, memory) are read at scrape time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bridge::BridgeReport;
use crate::outbox::OutboxStats;
use crate::uplink::{UplinkMode, UplinkReport};

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

/// The gateway's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    messages_in: Family<KindLabel, Counter>,
    messages_out: Family<KindLabel, Counter>,
    shadow_updates: Counter,
    rejections: Family<CodeLabel, Counter>,
    deltas_published: Counter,
    connected_clients: Gauge,
    connected: AtomicI64,
    uplink_connected: Gauge,
    uplink_mode: Family<ModeLabel, Gauge>,
    outbox_items: Gauge,
    outbox_bytes: Gauge,
    outbox_dropped: Family<ReasonLabel, Gauge>,
    resident_memory: Gauge,
    bridge_connected: Gauge,
    bridge_reconnects: Counter,
    bridge_forwarded: Counter,
    bridge_received: Counter,
    bridge_queued: Gauge,
    bridge_dropped: Gauge,
    /// Serializes the bridge counters' catch-up, so two scrapes at once cannot both add
    /// the same difference.
    bridge_catch_up: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotsphere");
        let inner = Inner {
            messages_in: Family::default(),
            messages_out: Family::default(),
            shadow_updates: Counter::default(),
            rejections: Family::default(),
            deltas_published: Counter::default(),
            connected_clients: Gauge::default(),
            connected: AtomicI64::new(0),
            uplink_connected: Gauge::default(),
            uplink_mode: Family::default(),
            outbox_items: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_dropped: Family::default(),
            resident_memory: Gauge::default(),
            bridge_connected: Gauge::default(),
            bridge_reconnects: Counter::default(),
            bridge_forwarded: Counter::default(),
            bridge_received: Counter::default(),
            bridge_queued: Gauge::default(),
            bridge_dropped: Gauge::default(),
            bridge_catch_up: Mutex::new(()),
            registry: Registry::default(),
        };
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
            "connected_clients",
            "MQTT clients connected now",
            inner.connected_clients.clone(),
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
        Metrics(Arc::new(Inner { registry, ..inner }))
    }
}

impl Metrics {
    pub fn message_in(&self, kind: &'static str) {
        self.0.messages_in.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn message_out(&self, kind: &'static str) {
        self.0.messages_out.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn shadow_update(&self) {
        self.0.shadow_updates.inc();
    }

    pub fn rejection(&self, code: u16) {
        self.0.rejections.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn delta_published(&self) {
        self.0.deltas_published.inc();
    }

    pub fn client_connected(&self, connected: bool) {
        let now = self
            .0
            .connected
            .fetch_add(if connected { 1 } else { -1 }, Ordering::Relaxed)
            + if connected { 1 } else { -1 };
        self.0.connected_clients.set(now.max(0));
    }

    pub fn connected_clients(&self) -> i64 {
        self.0.connected.load(Ordering::Relaxed).max(0)
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
            let _catching_up = inner
                .bridge_catch_up
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (counter, total) in [
                (&inner.bridge_reconnects, bridge.reconnects),
                (&inner.bridge_forwarded, bridge.forwarded),
                (&inner.bridge_received, bridge.received),
            ] {
                // The bridge keeps the totals; the counters catch up at scrape time.
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            inner.bridge_queued.set(to_i64(bridge.queued));
            inner.bridge_dropped.set(to_i64(bridge.dropped));
        }
        if let Some(report) = uplink {
            inner.uplink_connected.set(i64::from(report.connected));
            for (mode, name) in [
                (UplinkMode::ChangeStream, "change_stream"),
                (UplinkMode::Polling, "polling"),
                (UplinkMode::Offline, "offline"),
            ] {
                inner
                    .uplink_mode
                    .get_or_create(&ModeLabel { mode: name })
                    .set(i64::from(report.mode == mode));
            }
        }
        if let Some(stats) = outbox {
            inner.outbox_items.set(to_i64(stats.items + stats.shadows));
            inner.outbox_bytes.set(to_i64(stats.bytes));
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
        inner.resident_memory.set(to_i64(resident_memory_bytes()));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &inner.registry);
        text
    }
}

fn to_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
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
        metrics.rejection(409);
        metrics.rejection(409);
        metrics.client_connected(true);
        metrics.client_connected(true);
        metrics.client_connected(false);
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
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(text.contains("iotsphere_resident_memory_bytes "));
    }
}
