//! The gateway's hook inside rumqttd's router (vendor/rumqttd `PublishHook`): for every
//! PUBLISH, first the ACL (`auth::Access`, when a secure auth mode is on), then ingest of
//! what the cloud needs (`ingest::Ingest`, when an uplink is on) — all before the router
//! routes or acknowledges the message.

use bytes::Bytes;
use rumqttd::PublishHook;

use crate::auth::{Access, INTERNAL_CLIENT_PREFIX};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::topics::{Route, Topics};

pub struct GatewayHook {
    pub topics: Topics,
    pub metrics: Metrics,
    pub access: Option<Access>,
    pub ingest: Option<Ingest>,
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
        true
    }

    fn before_acks(&self) {
        if let Some(ingest) = &self.ingest {
            ingest.before_acks();
        }
    }

    fn on_connection(&self, client_id: &str, connected: bool) {
        if !client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            self.metrics.client_connected(client_id, connected);
        }
        if let Some(ingest) = &self.ingest {
            ingest.on_connection(client_id, connected);
        }
    }

    fn on_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|access| access.may_subscribe(client_id, filter))
    }
}
