use std::fmt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::{collections::HashMap, path::Path};

use serde::{Deserialize, Serialize};
use tracing_subscriber::{
    filter::EnvFilter,
    fmt::{
        format::{Format, Pretty},
        Layer,
    },
    layer::Layered,
    reload::Handle,
    Registry,
};

pub use link::alerts;
pub use link::local;
pub use link::meters;
pub use router::{Alert, Forward, IncomingMeter, Meter, Notification, OutgoingMeter, Router};
use segments::Storage;
pub use server::{Broker, LinkType, Server};

pub use self::router::shared_subs::Strategy;

mod link;
pub mod protocol;
mod router;
mod segments;
mod server;

pub type ConnectionId = usize;
pub type RouterId = usize;
pub type NodeId = usize;
pub type Topic = String;
pub type Filter = String;
pub type TopicId = usize;
pub type Offset = (u64, u64);
pub type Cursor = (u64, u64);

pub type ClientId = String;
pub type AuthUser = String;
pub type AuthPass = String;
pub type AuthHandler = Arc<
    dyn Fn(ClientId, AuthUser, AuthPass) -> Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

// iotsphere patch: authentication that needs more than the CONNECT's login (the peer's
// address for the audit log, the client certificate for mTLS identity). See PATCHES.md.
/// A client asking to connect, as the connect handler sees it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: ClientId,
    /// User name and password from CONNECT, if it carried them.
    pub login: Option<(AuthUser, AuthPass)>,
    pub peer: Peer,
    // iotsphere patch: the will is a publish the client asks for in advance; the handler
    // checks it against the client's publish rights before accepting the CONNECT.
    /// The CONNECT's last will, if it carried one.
    pub will: Option<WillRequest>,
}

/// A last will as the connect handler sees it.
#[derive(Debug, Clone)]
pub struct WillRequest {
    pub topic: bytes::Bytes,
    pub payload: bytes::Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// Where a connection comes from.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// DER of the client's leaf certificate; only on a TLS listener with `capath`, where
    /// the handshake has verified it against that CA.
    pub certificate: Option<Vec<u8>>,
}

/// What a connect handler decided about a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectVerdict {
    // iotsphere patch: the router keeps the identity with the connection, its will and its
    // persistent session: a session is resumed, and a connected client id taken over, only
    // by the same identity; the publish hook gets it with every message.
    /// Accepted as `identity` (an opaque label: who the client is, whatever its client id).
    Accept { identity: String },
    /// CONNACK "bad user name or password" (4).
    BadLogin,
    /// CONNACK "not authorized" (5): e.g. a will on a topic the client may not publish.
    NotAuthorized,
    /// CONNACK "server unavailable" (3): the client should try another server.
    Unavailable,
}

pub type ConnectHandler = Arc<
    dyn Fn(ConnectRequest) -> Pin<Box<dyn std::future::Future<Output = ConnectVerdict> + Send>>
        + Send
        + Sync,
>;

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct Config {
    pub id: usize,
    pub router: RouterConfig,
    pub v4: Option<HashMap<String, ServerSettings>>,
    pub v5: Option<HashMap<String, ServerSettings>>,
    pub ws: Option<HashMap<String, ServerSettings>>,
    pub cluster: Option<ClusterSettings>,
    pub console: Option<ConsoleSettings>,
    pub bridge: Option<BridgeConfig>,
    pub prometheus: Option<PrometheusSetting>,
    pub metrics: Option<HashMap<MetricType, MetricSettings>>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct PrometheusSetting {
    #[deprecated(note = "Use listen instead")]
    port: Option<u16>,
    listen: Option<SocketAddr>,
    // How frequently to update metrics
    interval: u64,
}

// TODO: Change names without _ until config-rs issue is resolved
// https://github.com/mehcode/config-rs/issues/369
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(untagged)]
pub enum TlsConfig {
    Rustls {
        capath: Option<String>,
        certpath: String,
        keypath: String,
    },
    NativeTls {
        pkcs12path: String,
        pkcs12pass: String,
    },
}

impl TlsConfig {
    // Returns true only if all of the file paths inside `TlsConfig` actually exists on file system.
    // NOTE: This doesn't verify if certificate files are in required format or not.
    pub fn validate_paths(&self) -> bool {
        match self {
            TlsConfig::Rustls {
                capath,
                certpath,
                keypath,
            } => {
                let ca = capath.is_none() || capath.as_ref().is_some_and(|v| Path::new(v).exists());

                ca && [certpath, keypath].iter().all(|v| Path::new(v).exists())
            }
            TlsConfig::NativeTls { pkcs12path, .. } => Path::new(pkcs12path).exists(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct ServerSettings {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub next_connection_delay_ms: u64,
    pub connections: ConnectionSettings,
}

impl ServerSettings {
    pub fn set_auth_handler<F, O>(&mut self, auth_fn: F)
    where
        F: Fn(ClientId, AuthUser, AuthPass) -> O + Send + Sync + 'static,
        O: IntoFuture<Output = bool> + 'static,
        O::IntoFuture: Send,
    {
        self.connections.set_auth_handler(auth_fn)
    }

    // iotsphere patch: see `ConnectRequest`.
    /// Decides every CONNECT on this server (replaces `auth`/`external_auth`).
    pub fn set_connect_handler<F, O>(&mut self, connect_fn: F)
    where
        F: Fn(ConnectRequest) -> O + Send + Sync + 'static,
        O: IntoFuture<Output = ConnectVerdict> + 'static,
        O::IntoFuture: Send,
    {
        self.connections.connect_handler = Some(Arc::new(move |request| {
            Box::pin(connect_fn(request).into_future())
        }));
    }
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct BridgeConfig {
    pub name: String,
    pub addr: String,
    pub qos: u8,
    pub sub_path: Filter,
    pub reconnection_delay: u64,
    pub ping_delay: u64,
    pub connections: ConnectionSettings,
    #[serde(default)]
    pub transport: Transport,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ConnectionSettings {
    pub connection_timeout_ms: u16,
    pub max_payload_size: usize,
    pub max_inflight_count: usize,
    pub auth: Option<HashMap<String, String>>,
    #[serde(skip)]
    pub external_auth: Option<AuthHandler>,
    // iotsphere patch: see `ConnectRequest`.
    #[serde(skip)]
    pub connect_handler: Option<ConnectHandler>,
    #[serde(default)]
    pub dynamic_filters: bool,
}

impl ConnectionSettings {
    pub fn set_auth_handler<F, O>(&mut self, auth_fn: F)
    where
        F: Fn(ClientId, AuthUser, AuthPass) -> O + Send + Sync + 'static,
        O: IntoFuture<Output = bool> + 'static,
        O::IntoFuture: Send,
    {
        self.external_auth = Some(Arc::new(move |client_id, username, password| {
            let auth = auth_fn(client_id, username, password).into_future();
            Box::pin(auth)
        }));
    }
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("connection_timeout_ms", &self.connection_timeout_ms)
            .field("max_payload_size", &self.max_payload_size)
            .field("max_inflight_count", &self.max_inflight_count)
            .field("auth", &self.auth)
            .field("external_auth", &self.external_auth.is_some())
            .field("connect_handler", &self.connect_handler.is_some())
            .field("dynamic_filters", &self.dynamic_filters)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Id with which this node connects to other nodes of the mesh
    pub node_id: NodeId,
    /// Address on which this broker is listening for mesh connections
    pub listen: String,
    /// Address of clusters that this node has to initiate connection
    pub seniors: Vec<(ConnectionId, String)>,
}

// iotsphere patch: a hook the router calls for every PUBLISH before routing and before
// acknowledging it (authorize, persist, then ack), for every SUBSCRIBE, at each connect and
// disconnect, before a persistent session is resumed, and when a client hits a limit.
// See PATCHES.md.
/// A client as the hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    /// What the connect handler accepted it as (`ConnectVerdict::Accept`); for the
    /// embedding application's own links (`Broker::link`), their client id.
    pub identity: &'a str,
    /// `None` for the embedding application's own links.
    pub peer: Option<SocketAddr>,
}

/// A message about to be routed: a PUBLISH, or a last will that fires.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a [u8],
    pub payload: &'a bytes::Bytes,
    pub qos: u8,
    pub retain: bool,
    /// A last will published for a client that went away (no acknowledgement follows).
    pub will: bool,
}

/// What the router does with a message the hook has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVerdict {
    Route,
    /// Routed as if its RETAIN flag were 0: delivered, not kept for later subscribers.
    RouteUnretained,
    /// Acknowledged as usual (QoS 1 PUBACK, QoS 2 PUBREC/PUBCOMP), never routed.
    Drop,
}

/// A bound of `ClientLimits` a client ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Incoming QoS 2 publishes awaiting PUBREL: the client was disconnected.
    AwaitingRelease,
    /// Retained messages per identity (count): routed, not retained.
    RetainedCount,
    /// Retained bytes per identity: routed, not retained.
    RetainedBytes,
    /// Retained bytes of every client together: routed, not retained.
    RetainedTotal,
    /// Subscriptions per identity, live and saved sessions together: SUBACK failure.
    Subscriptions,
    /// A connected client id may only be taken over by its own identity: CONNACK 5.
    TakeOver,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::AwaitingRelease => "qos2_awaiting_release",
            Limit::RetainedCount => "retained_count",
            Limit::RetainedBytes => "retained_bytes",
            Limit::RetainedTotal => "retained_total_bytes",
            Limit::Subscriptions => "subscriptions",
            Limit::TakeOver => "take_over",
        }
    }
}

/// Called by the router thread: keep it fast (no blocking network I/O).
pub trait PublishHook: Send + Sync {
    /// Every PUBLISH from a client, and every will that fires, before it is routed.
    fn on_publish(&self, client: &Client<'_>, message: &Message<'_>) -> PublishVerdict;
    /// Called once per router iteration, after incoming packets were handled and before
    /// any acknowledgement (PUBACK) of them is sent: the place to make them durable.
    fn before_acks(&self);
    /// A client connected (`true`) or its connection ended (`false`), in router order.
    fn on_connection(&self, _client: &Client<'_>, _connected: bool) {}
    /// A SUBSCRIBE filter, and each filter of a persistent session being resumed; `false`
    /// refuses it (SUBACK failure 0x80; a resumed one is dropped from the session).
    fn on_subscribe(&self, _client: &Client<'_>, _filter: &str) -> bool {
        true
    }
    /// Before `client` resumes the persistent session `made_by` left: `false` discards
    /// that session (the client starts a fresh one).
    fn may_resume(&self, client: &Client<'_>, made_by: &str) -> bool {
        client.identity == made_by
    }
    /// A lower bound on `client`'s subscriptions than `ClientLimits::max_subscriptions`
    /// (e.g. for clients that need only a few), if any.
    fn max_subscriptions(&self, _client: &Client<'_>) -> Option<usize> {
        None
    }
    /// `client` ran into `limit` (the router has already answered it).
    fn on_limit(&self, _client: &Client<'_>, _limit: Limit) {}
    /// Called once per router iteration, after `before_acks`: client ids the router
    /// should disconnect now (e.g. a gateway that became a standby lets its clients go).
    fn disconnections(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The hook, shareable inside `RouterConfig`.
#[derive(Clone)]
pub struct PublishHookHandle(pub Arc<dyn PublishHook>);

impl fmt::Debug for PublishHookHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublishHook")
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RouterConfig {
    pub max_connections: usize,
    pub max_outgoing_packet_count: u64,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub custom_segment: Option<HashMap<String, SegmentConfig>>,
    pub initialized_filters: Option<Vec<Filter>>,
    // defaults to Round Robin
    #[serde(default)]
    pub shared_subscriptions_strategy: Strategy,
    // iotsphere patch: see PublishHook.
    #[serde(skip)]
    pub publish_hook: Option<PublishHookHandle>,
    // iotsphere patch: what one client may make the router hold (see ClientLimits).
    #[serde(default)]
    pub client_limits: ClientLimits,
}

// iotsphere patch: upstream bounds none of these per client. See PATCHES.md.
/// Bounds on what one client (one identity, across its connections and saved persistent
/// sessions) can make the router hold. The embedding application's own links are exempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Incoming QoS 2 publishes a connection may leave awaiting PUBREL; one more
    /// disconnects it.
    pub max_awaiting_release: usize,
    /// Outgoing QoS 1/2 messages in flight per connection, QoS 2 ones awaiting PUBCOMP
    /// included (at most 65535).
    pub max_inflight: usize,
    /// Distinct subscriptions per identity, its live and saved sessions together.
    pub max_subscriptions: usize,
    /// Retained messages per identity.
    pub max_retained: usize,
    /// Bytes (topic + payload) of the retained messages of one identity.
    pub max_retained_bytes: usize,
    /// Bytes of the retained messages of all clients together.
    pub max_retained_total_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_awaiting_release: usize::MAX,
            max_inflight: 100,
            max_subscriptions: usize::MAX,
            max_retained: usize::MAX,
            max_retained_bytes: usize::MAX,
            max_retained_total_bytes: usize::MAX,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SegmentConfig {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
}

type ReloadHandle = Handle<EnvFilter, Layered<Layer<Registry, Pretty, Format<Pretty>>, Registry>>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConsoleSettings {
    pub listen: String,
    #[serde(skip)]
    filter_handle: Option<ReloadHandle>,
}

impl ConsoleSettings {
    pub fn set_filter_reload_handle(&mut self, handle: ReloadHandle) {
        self.filter_handle.replace(handle);
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, Default)]
pub enum Transport {
    #[serde(rename = "tcp")]
    #[default]
    Tcp,
    #[serde(rename = "tls")]
    Tls {
        ca: PathBuf,
        client_auth: Option<ClientAuth>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientAuth {
    certs: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, Clone, Hash, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Meters,
    Alerts,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct MetricSettings {
    push_interval: u64,
}
