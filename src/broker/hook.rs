//! The gateway's hook inside rumqttd's router (vendor/rumqttd `PublishHook`): for every
//! PUBLISH and every will that fires, the topic is parsed once, then the ACL
//! (`auth::Access`, when a secure auth mode is on, with the identity the broker keeps for
//! the client), then every [`Tap`] sees it (the ingest of what the cloud needs, the status
//! page's board, the alert feed, the bridge's capture) — all before the router routes or acknowledges the message.
//! Once per router iteration, before the acknowledgements, the sled database is flushed
//! once if a tap stored something that must be durable first. Subscriptions, and those of a persistent session
//! being resumed, pass the ACL; a session is resumed only by the identity that made it.
//! Presence is for devices only. The router's per-client limits are counted here
//! (`iotsphere_broker_dropped_total{reason}`) and logged once per episode per client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use rumqttd::{Client, Limit, Message, PublishHook, PublishVerdict};

use super::tap::{Seen, Tap};
use crate::audit::{Cut, Episodes};
use crate::auth::{filter_matches, Access, Role, INTERNAL_CLIENT_PREFIX};
use crate::metrics::Metrics;
use crate::store::ShadowStore;
use crate::topics::{Route, Topics};

/// Quiet time after which a client running into a limit again is logged again.
const LIMIT_EPISODE: Duration = Duration::from_secs(60);
/// Clients (with a reason) whose limit episodes are remembered at most.
const LIMIT_EPISODES: usize = 10_000;

pub struct GatewayHook {
    pub topics: Topics,
    pub metrics: Metrics,
    pub access: Option<Access>,
    /// Anonymous mode: a client is a device when its id holds a shadow here. Its sled
    /// database is the one the taps write their outboxes to.
    pub store: ShadowStore,
    /// What sees every accepted publish: ingest, alert feed, bridge capture (when on).
    pub taps: Vec<Box<dyn Tap>>,
    /// A tap stored something since the last flush that must be durable before acks.
    pub unflushed: AtomicBool,
    /// Told when a device subscribes to its own command topic (commands waiting for it).
    pub command_listeners: Arc<Notify>,
    pub step_down: StepDown,
    pub limits: LimitLog,
    /// `mqtt.max_device_subscriptions`: a device needs a few, and each filter's commit
    /// log can hold `segments × segment_bytes` of what the device itself publishes.
    pub device_subscriptions: usize,
}

/// Asked for when this gateway became the standby of its pair: at its next iteration the
/// router disconnects every client, so devices go to the active gateway.
#[derive(Debug, Clone, Default)]
pub struct StepDown(Arc<AtomicBool>);

impl StepDown {
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Clients that ran into a limit: one warning per client and reason per episode.
pub struct LimitLog(Episodes<(String, &'static str)>);

impl Default for LimitLog {
    fn default() -> Self {
        Self(Episodes::new(LIMIT_EPISODE, LIMIT_EPISODES))
    }
}

impl GatewayHook {
    /// The client's role, in a secure auth mode.
    fn role(&self, client: &Client<'_>) -> Option<Role> {
        self.access
            .as_ref()
            .and_then(|_| Role::from_identity(client.identity))
    }

    /// Devices get presence and offline alerts; apps and services do not.
    fn is_device(&self, client: &Client<'_>) -> bool {
        match &self.access {
            Some(_) => matches!(self.role(client), Some(Role::Device(_))),
            None => self.store.contains(client.client_id),
        }
    }

    /// Counts a limit and logs it once per episode.
    fn limited(&self, client: &Client<'_>, reason: &'static str, what: &str) {
        self.metrics.broker_dropped(reason);
        if let Some(before) = self.limits.0.starts((client.client_id.to_string(), reason)) {
            let peer = client
                .peer
                .map_or_else(|| "internal".into(), |p| p.to_string());
            tracing::warn!(target: "audit", client_id = %Cut(client.client_id), identity = client.identity, %peer, reason, times_before = before, "{what} (logged once per episode)");
        }
    }
}

impl PublishHook for GatewayHook {
    fn on_publish(&self, client: &Client<'_>, message: &Message<'_>) -> PublishVerdict {
        let internal = client.client_id.starts_with(INTERNAL_CLIENT_PREFIX);
        let Ok(topic) = std::str::from_utf8(message.topic) else {
            // rumqttd refuses non-UTF-8 topics itself when routing.
            return if self.access.is_none() {
                PublishVerdict::Route
            } else {
                PublishVerdict::Drop
            };
        };
        // Parsed once, for the counters, the ACL and every tap.
        let route = self.topics.parse(topic);
        if !internal {
            self.metrics.message_in(match route {
                Ok(Route::Shadow { .. }) => "shadow",
                Ok(Route::Telemetry { .. }) => "telemetry",
                Ok(Route::CommandRequest { .. }) => "command_request",
                Ok(Route::CommandResponse { .. }) => "command_response",
                Ok(Route::UserPreferences { .. }) => "user_preferences",
                Err(_) => "other",
            });
        }
        let mut verdict = PublishVerdict::Route;
        if let (Some(access), false) = (&self.access, internal) {
            let Some(role) = Role::from_identity(client.identity) else {
                return PublishVerdict::Drop;
            };
            if !access.may_publish_parsed(&role, client.client_id, client.peer, topic, &route) {
                if message.will {
                    tracing::warn!(target: "audit", client_id = %Cut(client.client_id), topic = %Cut(topic), "will dropped");
                }
                return PublishVerdict::Drop;
            }
            // Devices retain nothing (the contract retains only what the gateway
            // publishes): the message is delivered, not kept.
            if message.retain && matches!(role, Role::Device(_)) {
                self.limited(
                    client,
                    "retain_not_allowed",
                    "retained publish of a device delivered without retaining it",
                );
                verdict = PublishVerdict::RouteUnretained;
            }
        }
        let seen = Seen {
            client_id: client.client_id,
            internal,
            topic,
            route: route.ok(),
            payload: message.payload,
            qos: message.qos,
        };
        for tap in &self.taps {
            if tap.on_publish(&seen) {
                self.unflushed.store(true, Ordering::Relaxed);
            }
        }
        verdict
    }

    fn before_acks(&self) {
        if self.unflushed.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.store.flush() {
                tracing::error!(error = %e, "could not flush the outboxes before acknowledging");
            }
        }
        for tap in &self.taps {
            tap.before_acks();
        }
    }

    fn on_connection(&self, client: &Client<'_>, connected: bool) {
        if client.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return;
        }
        self.metrics.client_connected(client.client_id, connected);
        if !self.is_device(client) {
            return;
        }
        for tap in &self.taps {
            tap.on_connection(client.client_id, connected);
        }
    }

    fn disconnections(&self) -> Vec<String> {
        if !self.step_down.take() {
            return Vec::new();
        }
        let clients = self.metrics.connected_client_ids();
        tracing::warn!(
            clients = clients.len(),
            "standby: disconnecting every client (they reconnect to the active gateway)"
        );
        clients
    }

    fn on_subscribe(&self, client: &Client<'_>, filter: &str) -> bool {
        if client.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return true;
        }
        let admitted = match &self.access {
            None => true,
            Some(access) => Role::from_identity(client.identity).is_some_and(|role| {
                access.may_subscribe(&role, client.client_id, client.peer, filter)
            }),
        };
        if admitted && filter_matches(filter, &self.topics.command_request(client.client_id)) {
            self.command_listeners.notify_one();
        }
        admitted
    }

    fn max_subscriptions(&self, client: &Client<'_>) -> Option<usize> {
        matches!(self.role(client), Some(Role::Device(_))).then_some(self.device_subscriptions)
    }

    fn may_resume(&self, client: &Client<'_>, made_by: &str) -> bool {
        let same = client.identity == made_by;
        if !same {
            tracing::warn!(target: "audit", client_id = %Cut(client.client_id), identity = client.identity, made_by, "persistent session discarded: another identity made it");
        }
        same
    }

    fn on_limit(&self, client: &Client<'_>, limit: Limit) {
        let what = match limit {
            Limit::AwaitingRelease => "too many QoS 2 publishes awaiting PUBREL: disconnected",
            Limit::RetainedCount | Limit::RetainedBytes | Limit::RetainedTotal => {
                "retained publish over the retained limit delivered without retaining it"
            }
            Limit::Subscriptions => "subscription refused: too many subscriptions",
            Limit::TakeOver => "connection refused: its client id is connected as another identity",
        };
        self.limited(client, limit.as_str(), what);
    }
}
