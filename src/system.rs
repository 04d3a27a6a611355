//! The gateway's own messages and systemd's watchdog, from one task on one broker link:
//!
//! - `ROOT/system/status`, retained, at start and every [`STATUS_INTERVAL`];
//! - `ROOT/system/metrics`, not retained, every `gateway.metrics_interval_secs` (0 = off;
//!   follows SIGHUP reloads);
//! - `ROOT/devices/batch/status`, retained, when it changes ([`crate::batch`]);
//! - `WATCHDOG=1` to systemd every half `WATCHDOG_USEC`, only while the broker's router
//!   answers a round trip and the store takes a write; otherwise systemd restarts the
//!   gateway when `WatchdogSec` runs out.

use std::time::{Duration, Instant};

use rumqttd::Notification;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{interval, interval_at, Interval, MissedTickBehavior};

use crate::alert_event::OpenAlerts;
use crate::batch::{self, BatchStatus};
use crate::broker::hook::StepDown;
use crate::broker::GatewayLink;
use crate::config::GatewayConfig;
use crate::health::HealthState;
use crate::lease::{LeaseRole, LeaseState};
use crate::messages::Replies;
use crate::systemd::{self, Notifier};
use crate::topics::Topics;

/// How often the retained `system/status` summary is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// Longest wait for the router to acknowledge the watchdog's probe subscription.
const ROUTER_ROUND_TRIP: Duration = Duration::from_secs(2);

/// The body of `system/metrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricsSummary {
    messages_in: u64,
    messages_out: u64,
    connected_clients: i64,
    outbox_items: usize,
    resident_memory_bytes: u64,
    uptime_secs: u64,
}

pub struct SystemTask {
    /// The internal link `iotsphere:system`: publishes, and the watchdog's round trip.
    pub link: GatewayLink,
    pub replies: Replies,
    pub topics: Topics,
    pub health: HealthState,
    pub config: watch::Receiver<GatewayConfig>,
    /// `Some` under systemd with `Type=notify`.
    pub notifier: Option<Notifier>,
    pub open_alerts: OpenAlerts,
    /// This gateway's role in its active/standby pair, when in one.
    pub lease: Option<watch::Receiver<LeaseState>>,
    pub step_down: StepDown,
}

impl SystemTask {
    pub async fn run(mut self) {
        // The first status went out before the listeners opened (`publish_status`).
        let mut status = interval_at(
            tokio::time::Instant::now() + STATUS_INTERVAL,
            STATUS_INTERVAL,
        );
        let mut batch = interval(batch::CHECK_INTERVAL);
        let mut last_batch: Option<(BatchStatus, Instant)> = None;
        let mut metrics = metrics_interval(&self.config.borrow_and_update());
        let mut watchdog = self
            .notifier
            .as_ref()
            .and(systemd::watchdog_interval())
            .map(ticker);
        loop {
            tokio::select! {
                _ = status.tick() => self.publish_status().await,
                _ = tick(&mut metrics) => {
                    let summary = self.metrics_summary().await;
                    self.publish(self.replies.system_metrics(&summary), "system/metrics");
                }
                _ = tick(&mut watchdog) => self.feed_watchdog().await,
                _ = batch.tick() => {
                    let now = self.batch_status();
                    let due = last_batch.as_ref().is_none_or(|(last, at)| {
                        *last != now || at.elapsed() >= batch::REFRESH_INTERVAL
                    });
                    if due {
                        self.publish(self.replies.batch_status(&now), "devices/batch/status");
                        last_batch = Some((now, Instant::now()));
                    }
                }
                changed = lease_changed(&mut self.lease) => {
                    match changed {
                        Some(LeaseRole::Standby) => self.step_down.request(),
                        Some(_) => {}
                        None => self.lease = None,
                    }
                    // Also wakes the router, which then lets the clients go.
                    self.publish_status().await;
                }
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    metrics = metrics_interval(&self.config.borrow_and_update());
                }
            }
        }
    }

    fn batch_status(&self) -> BatchStatus {
        batch::count(
            &self.health.store,
            &self.health.metrics.connected_client_ids(),
            self.open_alerts.get(),
        )
    }

    /// The retained `system/status` now. The gateway calls it once before its listeners
    /// open, so the very first client to subscribe finds it retained.
    pub async fn publish_status(&mut self) {
        let summary = self.health.summary().await;
        self.publish(self.replies.system_status(&summary), "system/status");
    }

    fn publish(&mut self, message: crate::messages::Outgoing, what: &str) {
        if let Err(e) = self.link.publish_all([message]) {
            tracing::warn!(error = %e, "could not publish {what}");
        }
    }

    async fn metrics_summary(&self) -> MetricsSummary {
        let health = self.health.summary().await;
        let (messages_in, messages_out) = self.health.metrics.message_totals();
        MetricsSummary {
            messages_in,
            messages_out,
            connected_clients: health.connected_clients(),
            outbox_items: health.outbox_items(),
            resident_memory_bytes: crate::metrics::resident_memory_bytes(),
            uptime_secs: health.uptime_secs(),
        }
    }

    /// `WATCHDOG=1` if the router and the store are alive; otherwise a log line and no
    /// ping, so systemd restarts a wedged gateway.
    async fn feed_watchdog(&mut self) {
        let Some(notifier) = self.notifier.clone() else {
            return;
        };
        let alive = match self.health.probe.check().await {
            Err(reason) => Err(format!("store: {reason}")),
            Ok(()) => self.router_round_trip().await,
        };
        match alive {
            Ok(()) => {
                if let Err(e) = notifier.notify("WATCHDOG=1") {
                    tracing::warn!(error = %e, "could not notify systemd's watchdog");
                }
            }
            Err(reason) => tracing::error!(%reason, "not feeding systemd's watchdog"),
        }
    }

    /// Subscribes to a filter nobody publishes to and waits for the router's SUBACK: proof
    /// that the router thread still serves links, with nothing visible to any client.
    async fn router_round_trip(&mut self) -> Result<(), String> {
        let filter = self.topics.system("internal/watchdog-probe");
        self.link
            .subscribe(&filter)
            .map_err(|e| format!("broker: {e}"))?;
        let answered = tokio::time::timeout(ROUTER_ROUND_TRIP, async {
            loop {
                match self.link.rx.next().await {
                    Ok(Some(Notification::DeviceAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("broker: {e}")),
                }
            }
        })
        .await;
        answered.unwrap_or_else(|_| Err(format!("broker: no answer within {ROUTER_ROUND_TRIP:?}")))
    }
}

fn ticker(period: Duration) -> Interval {
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

fn metrics_interval(config: &GatewayConfig) -> Option<Interval> {
    let secs = config.gateway.metrics_interval_secs;
    (secs > 0).then(|| ticker(Duration::from_secs(secs)))
}

/// The role after the next change of the lease; never without a pair; None once the
/// lease task is gone.
async fn lease_changed(lease: &mut Option<watch::Receiver<LeaseState>>) -> Option<LeaseRole> {
    match lease {
        Some(lease) => {
            lease.changed().await.ok()?;
            Some(lease.borrow_and_update().role)
        }
        None => std::future::pending().await,
    }
}

/// The next tick, or never when off.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
