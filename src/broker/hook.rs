//! The gateway's hook inside rumqttd's router (vendor/rumqttd `PublishHook`): for every
//! PUBLISH, first the ACL (`auth::Access`, when a secure auth mode is on), then ingest of
//! what the cloud needs (`ingest::Ingest`, when an uplink is on), then what the alert
//! rules and the upstream broker get (`alerts::AlertFeed`, `bridge::Capture`) — all before
//! the router routes or acknowledges the message. Subscriptions pass the ACL and a
//! per-client limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use bytes::Bytes;
use rumqttd::PublishHook;

use crate::alerts::AlertFeed;
use crate::auth::{filter_matches, Access, INTERNAL_CLIENT_PREFIX};
use crate::bridge::Capture;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::topics::{Route, Topics};

pub struct GatewayHook {
    pub topics: Topics,
    pub metrics: Metrics,
    pub access: Option<Access>,
    pub ingest: Option<Ingest>,
    pub subscriptions: SubscriptionLimit,
    /// Set when alert rules are configured.
    pub alerts: Option<AlertFeed>,
    /// Set when the upstream bridge is on.
    pub bridge: Option<Capture>,
    /// Told when a device subscribes to its own command topic (commands waiting for it).
    pub command_listeners: Arc<Notify>,
    pub step_down: StepDown,
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

/// `mqtt.max_subscriptions`: distinct filters per connection. rumqttd keeps a commit log
/// per filter, so without it one client could make the router allocate without bound.
pub struct SubscriptionLimit {
    max_per_client: usize,
    filters_by_client: Mutex<HashMap<String, HashSet<String>>>,
}

impl SubscriptionLimit {
    pub fn new(max_per_client: usize) -> Self {
        Self {
            max_per_client,
            filters_by_client: Mutex::default(),
        }
    }

    /// Counts `filter` for `client_id`; false when it would be one too many.
    fn admit(&self, client_id: &str, filter: &str) -> bool {
        let mut by_client = self
            .filters_by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let filters = by_client.entry(client_id.to_string()).or_default();
        if filters.contains(filter) {
            return true;
        }
        if filters.len() >= self.max_per_client {
            tracing::warn!(target: "audit", client_id, filter, limit = self.max_per_client, "subscribe refused: too many subscriptions");
            return false;
        }
        filters.insert(filter.to_string());
        true
    }

    fn forget(&self, client_id: &str) {
        self.filters_by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
    }
}

impl PublishHook for GatewayHook {
    fn on_publish(&self, client_id: &str, topic: &[u8], payload: &Bytes, qos: u8) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            // rumqttd refuses non-UTF-8 topics itself when routing.
            return self.access.is_none();
        };
        if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            self.metrics.message_in(match self.topics.parse(topic) {
                Ok(Route::Shadow { .. }) => "shadow",
                Ok(Route::Telemetry { .. }) => "telemetry",
                Ok(Route::CommandRequest { .. }) => "command_request",
                Ok(Route::CommandResponse { .. }) => "command_response",
                Ok(Route::UserPreferences { .. }) => "user_preferences",
                Err(_) => "other",
            });
        }
        if let Some(access) = &self.access {
            if !access.may_publish(client_id, topic) {
                return false;
            }
        }
        if let Some(ingest) = &self.ingest {
            ingest.on_publish(topic, payload, qos);
        }
        if let Some(alerts) = &self.alerts {
            if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
                alerts.publish(&self.topics, topic, payload);
            }
        }
        if let Some(bridge) = &self.bridge {
            bridge.on_publish(client_id, topic, payload, qos);
        }
        true
    }

    fn before_acks(&self) {
        if let Some(ingest) = &self.ingest {
            ingest.before_acks();
        }
        if let Some(bridge) = &self.bridge {
            bridge.before_acks();
        }
    }

    fn on_connection(&self, client_id: &str, connected: bool) {
        if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            self.metrics.client_connected(client_id, connected);
            if !connected {
                self.subscriptions.forget(client_id);
            }
            if let Some(alerts) = &self.alerts {
                alerts.connection(client_id, connected);
            }
        }
        if let Some(ingest) = &self.ingest {
            ingest.on_connection(client_id, connected);
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

    fn on_subscribe(&self, client_id: &str, filter: &str) -> bool {
        if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return true;
        }
        let admitted = self
            .access
            .as_ref()
            .is_none_or(|access| access.may_subscribe(client_id, filter))
            && self.subscriptions.admit(client_id, filter);
        if admitted && filter_matches(filter, &self.topics.command_request(client_id)) {
            self.command_listeners.notify_one();
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_distinct_filters_per_connection() {
        let limit = SubscriptionLimit::new(2);
        assert!(limit.admit("heater-1", "a/delta"));
        assert!(
            limit.admit("heater-1", "a/delta"),
            "a repeated filter is not new"
        );
        assert!(limit.admit("heater-1", "a/document"));
        assert!(!limit.admit("heater-1", "a/rejected"));
        assert!(
            limit.admit("heater-2", "b/delta"),
            "other clients have their own count"
        );
        limit.forget("heater-1");
        assert!(
            limit.admit("heater-1", "a/rejected"),
            "a new connection starts at 0"
        );
    }
}
