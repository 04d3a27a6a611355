//! The upstream bridge (docs/DESIGN.md §8): the gateway as a client (rumqttc) of a cloud MQTT
//! broker.
//!
//! - Local publications on `forward` topics are captured in the broker hook into the
//!   bridge's own outbox ([`capture`]), durable before the device's PUBACK, and sent
//!   upstream as `prefix/<topic>` at QoS 1 by the [`session`], in order, removed only on
//!   the upstream PUBACK. While the upstream broker is unreachable they wait there.
//! - Upstream messages on `prefix/<filter>` for each `subscribe` filter are published
//!   locally without the prefix, through the bridge's internal link: a desired update goes
//!   through the shadow engine like any other, a command request reaches the device.
//! - [`options`] builds the rumqttc options (TLS with rustls/ring), [`crate::backoff`]
//!   paces reconnects, [`echo`] drops our own messages coming back; the [`BridgeStatus`]
//!   it fills is read by `/health`.

pub mod capture;
pub mod echo;
pub mod options;
pub mod session;

use rumqttc::MqttOptions;

pub use crate::status::{BridgeReport, BridgeStatus};
pub use capture::{Capture, BRIDGE_CLIENT_ID};

use crate::broker::GatewayLink;
use crate::config::GatewayConfig;
use crate::outbox::{Outbox, OutboxLimits, ToBridge};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A `[bridge]` setting that cannot be used: the key, then what is wrong.
    #[error("{0}: {1}")]
    Config(&'static str, String),
    #[error("bridge TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bridge, ready before the broker starts (the hook needs its [`Capture`]).
pub struct Bridge {
    options: MqttOptions,
    config: crate::config::BridgeSection,
    outbox: Outbox<ToBridge>,
}

impl Bridge {
    /// Reads the TLS files and the password, opens the bridge's outbox in the store's
    /// database; returns the bridge and the capture for the broker hook.
    pub fn new(config: &GatewayConfig, db: &sled::Db) -> Result<(Bridge, Capture), BridgeError> {
        let options = options::mqtt_options(&config.bridge, config.mqtt.max_payload_bytes)?;
        let outbox = Outbox::open(db, OutboxLimits::from(&config.outbox))?;
        let capture = Capture::new(config.bridge.forward.clone(), outbox.clone());
        let stats = outbox.stats();
        if stats.items > 0 {
            tracing::info!(
                items = stats.items,
                "the bridge's outbox has messages waiting for the upstream broker"
            );
        }
        Ok((
            Bridge {
                options,
                config: config.bridge.clone(),
                outbox,
            },
            capture,
        ))
    }

    /// Starts the session on the current tokio runtime; `link` is the bridge's internal
    /// link (client id [`BRIDGE_CLIENT_ID`]).
    pub fn start(self, link: GatewayLink) -> BridgeStatus {
        let status = BridgeStatus::new(self.outbox.clone());
        let session = session::Session::new(
            self.options,
            &self.config,
            self.outbox,
            link,
            status.clone(),
        );
        tokio::spawn(session.run());
        status
    }
}
