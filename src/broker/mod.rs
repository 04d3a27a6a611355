//! The embedded MQTT broker (rumqttd): built from our configuration with bounded memory,
//! started on its own threads, and joined by the gateway through an internal link.
//!
//! Memory bounds (a Pi has 1 GiB): rumqttd keeps published messages in per-filter
//! in-memory commit logs; each filter keeps at most `mqtt.segments` segments of
//! `mqtt.segment_bytes` (defaults: 4 × 256 KiB), instead of rumqttd's example 10 × 100 MiB.
//! Payloads above `mqtt.max_payload_bytes` make rumqttd close the connection.

pub mod hook;
pub mod tap;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use bytes::Bytes;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{
    Broker, ClientLimits, ConnectRequest, ConnectVerdict, ConnectionSettings, PublishHook,
    PublishHookHandle, RouterConfig, ServerSettings, TlsConfig,
};
use tokio::sync::watch;

use crate::auth::{admit_anonymous, Access, ConnectAttempt, Refusal};
use crate::config::MqttSection;
use crate::lease::{LeaseRole, LeaseState};
use crate::messages::Outgoing;
use crate::metrics::Metrics;

/// Messages the router hands a connection per scheduling round before it must ask for more.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;
/// Connections the gateway may open into its own router (`iotsphere:gateway`, `:uplink`,
/// `:system`, `:alerts`, …), on top of `mqtt.max_connections`.
const INTERNAL_LINKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mqtt.listen `{address}`: {reason}")]
    Listen { address: String, reason: String },
    #[error("embedded broker: {0}")]
    Start(String),
    #[error("TLS listener: {0}")]
    Tls(String),
    /// The router went away or refused the link (kept as text: rumqttd's error is ~800 bytes).
    #[error("embedded broker link: {0}")]
    Link(String),
}

impl From<rumqttd::local::LinkError> for BrokerError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        BrokerError::Link(e.to_string())
    }
}

/// The gateway's own connection into the broker's router.
pub struct GatewayLink {
    pub tx: rumqttd::local::LinkTx,
    pub rx: rumqttd::local::LinkRx,
    /// Counts what the link publishes, when it publishes it (not when it is built).
    metrics: Metrics,
}

/// The embedded broker: its router runs from [`EmbeddedBroker::new`], its listeners from
/// [`EmbeddedBroker::listen`], so the gateway can subscribe and republish retained state
/// through its link before any device can connect.
pub struct EmbeddedBroker {
    broker: Broker,
    listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
    metrics: Metrics,
}

impl EmbeddedBroker {
    /// Starts the router and returns the gateway's link. Listen addresses are checked here,
    /// so a port already in use is a clear startup error, not a listener thread that died.
    /// `hook` sees every PUBLISH in the router before it is routed or acknowledged; with
    /// `access`, CONNECT requires credentials (a password checked by the bounded verifier,
    /// off the I/O threads, or a client certificate); with `lease`, a standby answers
    /// every CONNECT "server unavailable". Refusals are counted in `metrics`.
    pub fn new(
        mqtt: &MqttSection,
        hook: Option<Arc<dyn PublishHook>>,
        access: Option<Access>,
        lease: Option<watch::Receiver<LeaseState>>,
        metrics: Metrics,
    ) -> Result<(EmbeddedBroker, GatewayLink), BrokerError> {
        let listen = mqtt.listen.as_deref().map(check_bindable).transpose()?;
        let tls_listen = match mqtt.tls_listen.as_deref() {
            Some(address) => {
                crate::certs::check_tls_files(mqtt).map_err(|e| BrokerError::Tls(e.to_string()))?;
                Some(check_bindable(address)?)
            }
            None => None,
        };
        let mut config = rumqttd_config(mqtt, listen, tls_listen);
        config.router.publish_hook = hook.map(PublishHookHandle);
        for server in config
            .v4
            .iter_mut()
            .flat_map(|servers| servers.values_mut())
        {
            let access = access.clone();
            let lease = lease.clone();
            let metrics = metrics.clone();
            server.set_connect_handler(move |request: ConnectRequest| {
                let access = access.clone();
                let lease = lease.clone();
                let metrics = metrics.clone();
                async move {
                    if lease.is_some_and(|l| l.borrow().role == LeaseRole::Standby) {
                        // Devices retry (or try the other address) every few seconds.
                        tracing::debug!(peer = %request.peer.addr, "CONNECT refused: this gateway is the standby of its pair");
                        metrics.connect_refused("standby");
                        return ConnectVerdict::Unavailable;
                    }
                    let attempt = attempt(request);
                    let verdict = match access {
                        None if admit_anonymous(&attempt) => Ok(attempt.client_id.clone()),
                        None => Err(Refusal::BadLogin),
                        Some(access) => access
                            .authenticate(&attempt)
                            .await
                            .map(|role| role.identity()),
                    };
                    match verdict {
                        Ok(identity) => ConnectVerdict::Accept { identity },
                        Err(Refusal::BadLogin) => {
                            metrics.connect_refused("bad_login");
                            ConnectVerdict::BadLogin
                        }
                        Err(Refusal::NotAuthorized) => {
                            metrics.connect_refused("not_authorized");
                            ConnectVerdict::NotAuthorized
                        }
                        Err(Refusal::Busy) => {
                            metrics.connect_refused("busy");
                            ConnectVerdict::Unavailable
                        }
                    }
                }
            });
        }
        let broker = Broker::new(config);
        // Not a valid device id (':'), so presence and ACLs never mistake it for a device.
        let (tx, rx) = broker.link("iotsphere:gateway")?;
        Ok((
            EmbeddedBroker {
                broker,
                listen,
                tls_listen,
                metrics: metrics.clone(),
            },
            GatewayLink { tx, rx, metrics },
        ))
    }

    /// Another internal connection (e.g. the uplink's, to publish commands). Must be made
    /// before [`listen`](Self::listen).
    pub fn link(&self, client_id: &str) -> Result<GatewayLink, BrokerError> {
        let (tx, rx) = self.broker.link(client_id)?;
        Ok(GatewayLink {
            tx,
            rx,
            metrics: self.metrics.clone(),
        })
    }

    /// Starts accepting devices; returns the plain and the TLS listeners' addresses.
    pub fn listen(self) -> Result<(Option<SocketAddr>, Option<SocketAddr>), BrokerError> {
        let EmbeddedBroker {
            mut broker,
            listen,
            tls_listen,
            ..
        } = self;
        std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || {
                // Runs for the life of the process; it returns only if every listener died.
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the embedded broker stopped");
                }
            })
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        Ok((listen, tls_listen))
    }
}

impl GatewayLink {
    /// Subscribes the gateway to a filter (QoS 0: the link is in-process, nothing is lost
    /// on the way, see `link`).
    pub fn subscribe(&mut self, filter: &str) -> Result<(), BrokerError> {
        self.tx.subscribe(filter)?;
        Ok(())
    }

    /// Publishes messages from the gateway.
    pub fn publish_all(
        &mut self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Result<(), BrokerError> {
        for message in messages {
            // Counted as it is handed to the router, not after: a subscriber may have it
            // (and read `/metrics`) before `send` returns.
            self.metrics.published(&message.count);
            let publish = Publish::new(
                Bytes::from(message.topic),
                Bytes::from(message.payload),
                message.retain,
            );
            // `LinkTx::send` is async only in name: it queues and signals without awaiting.
            pollster::block_on(self.tx.send(Packet::Publish(publish, None)))?;
        }
        Ok(())
    }
}

fn attempt(request: ConnectRequest) -> ConnectAttempt {
    ConnectAttempt {
        client_id: request.client_id,
        login: request.login,
        peer: request.peer.addr,
        certificate: request.peer.certificate,
        will_topic: request.will.map(|will| will.topic.to_vec()),
    }
}

fn rumqttd_config(
    mqtt: &MqttSection,
    listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
) -> rumqttd::Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: mqtt.connect_timeout_ms,
        max_payload_size: mqtt.max_payload_bytes,
        max_inflight_count: mqtt.max_inflight,
        auth: None,
        external_auth: None,
        connect_handler: None,
        // A publish no subscription matches goes nowhere (as in mosquitto); a commit log is
        // made per subscribed filter only.
        dynamic_filters: false,
    };
    let server = |name: &str, listen: SocketAddr, tls: Option<TlsConfig>| ServerSettings {
        name: name.into(),
        listen,
        tls,
        // No pause between accepts: rumqttd's 1 ms made a reconnect storm of 1,000
        // heaters take 2 s just to accept (bench/RESULTS.md); CONNECT has its own timeout.
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    let mut servers = HashMap::new();
    if let Some(listen) = listen {
        servers.insert("plain".to_string(), server("mqtt-plain", listen, None));
    }
    if let Some(listen) = tls_listen {
        let tls = TlsConfig::Rustls {
            // Set: the handshake requires a client certificate signed by this CA.
            capath: mqtt.client_ca.clone(),
            certpath: mqtt.cert.clone(),
            keypath: mqtt.key.clone(),
        };
        servers.insert("tls".to_string(), server("mqtt-tls", listen, Some(tls)));
    }
    let v4 = (!servers.is_empty()).then_some(servers);
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: mqtt.max_connections + INTERNAL_LINKS,
            max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
            max_segment_size: mqtt.segment_bytes,
            max_segment_count: mqtt.segments,
            client_limits: ClientLimits {
                max_awaiting_release: mqtt.max_awaiting_release,
                max_inflight: mqtt.max_inflight,
                max_subscriptions: mqtt.max_subscriptions,
                max_retained: mqtt.max_retained,
                max_retained_bytes: mqtt.max_retained_bytes,
                max_retained_total_bytes: mqtt.max_retained_total_bytes,
            },
            ..RouterConfig::default()
        },
        v4,
        ..rumqttd::Config::default()
    }
}

/// Resolves `host:port` and checks it can be bound now.
fn check_bindable(address: &str) -> Result<SocketAddr, BrokerError> {
    let error = |reason: String| BrokerError::Listen {
        address: address.to_string(),
        reason,
    };
    let addr = address
        .to_socket_addrs()
        .map_err(|e| error(e.to_string()))?
        .next()
        .ok_or_else(|| error("the name resolves to no address".into()))?;
    TcpListener::bind(addr).map_err(|e| error(e.to_string()))?;
    Ok(addr)
}
