//! Wires the running gateway: store, broker, shadow service, link loop, uplink, HTTP,
//! shutdown.
//!
//! Threads: rumqttd runs its router and listeners on threads of its own; the shadow
//! service runs on the `shadow-service` thread (its fsyncs never stall anything else); the
//! uplink, HTTP, the system task (status, metrics, watchdog) and SIGHUP reloads run on
//! the main tokio runtime.
//!
//! Shutdown (SIGTERM or Ctrl-C): the link loop finishes and answers its current batch, the
//! store is flushed, and `run` returns; the process exits 0 well within 5 s. The broker's
//! listeners die with the process (rumqttd has no stop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::PublishHook;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::alerts::{self, AlertFeed, AlertInbox, AlertRule, AlertTask, Engine, OpenAlerts};
use crate::auth::{Access, AuthError};
use crate::bridge::{Bridge, BridgeError, BRIDGE_CLIENT_ID};
use crate::broker::hook::{GatewayHook, LimitLog, StepDown};
use crate::broker::tap::Tap;
use crate::broker::{BrokerError, EmbeddedBroker, GatewayLink};
use crate::config::{AuthMode, GatewayConfig};
use crate::health::{HealthState, StoreProbe};
use crate::http;
use crate::ingest::Ingest;
use crate::logging::LogLevel;
use crate::messages::Replies;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxLimits};
use crate::reload::Reloader;
use crate::service::{link_loop, ServiceSettings, ShadowService};
use crate::status_page::StatusBoard;
use crate::store::{ShadowStore, StoreError};
use crate::system::SystemTask;
use crate::systemd::Notifier;
use crate::topics::Topics;
use crate::uplink::{
    self, CommandRequest, CommandSink, FromCloud, LeaseState, Uplink, UplinkError,
};
use crate::users::Directory;

/// Longest time shutdown waits for the link loop's last batch.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway.data_dir `{path}`: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("auth.credentials_file: {0}")]
    Auth(#[from] AuthError),
    #[error("http.listen `{0}`: {1}")]
    Http(String, std::io::Error),
    #[error("topics.root: {0}")]
    Topics(String),
    #[error("could not start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("the shadow service stopped: {0}")]
    Service(String),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// Publishes commands from MongoDB to devices through the uplink's broker link, in each
/// device's encoding.
struct BrokerCommands {
    link: GatewayLink,
    replies: Replies,
    store: ShadowStore,
    metrics: Metrics,
    listeners: Arc<Notify>,
}

impl CommandSink for BrokerCommands {
    fn send(&mut self, device_id: &str, request: &CommandRequest) {
        let encoding = self
            .store
            .get(device_id)
            .ok()
            .flatten()
            .map(|s| s.encoding)
            .unwrap_or_default();
        let message = self.replies.command_request(device_id, encoding, request);
        if let Err(e) = self.link.publish_all([message]) {
            tracing::error!(device_id, error = %e, "could not publish a command");
        }
    }

    fn is_connected(&self, device_id: &str) -> bool {
        self.metrics.is_connected(device_id)
    }

    fn listeners(&self) -> Arc<Notify> {
        self.listeners.clone()
    }
}

/// Runs the gateway until SIGTERM / Ctrl-C, or until the shadow service fails.
/// `config_path` is re-read on SIGHUP; `log` changes the log level then.
///
/// build (store, outbox, service, ACL, taps, broker router) → start (uplink, alert task,
/// bridge, HTTP, listeners, shadow-service thread, reloads, READY) → wait (a signal or
/// the service's end) → stop (the last batch, then the store's flush).
pub async fn run(
    config: GatewayConfig,
    config_path: PathBuf,
    log: Option<LogLevel>,
) -> Result<(), GatewayError> {
    let started = Instant::now();
    let hangup = signal(SignalKind::hangup()).map_err(GatewayError::Signal)?;
    // Installed before the listeners open: a SIGTERM right after start-up is a shutdown,
    // not the default action (killed, exit status 143).
    let term = signal(SignalKind::terminate()).map_err(GatewayError::Signal)?;
    warn_if_insecure(&config);
    let parts = build(&config)?;
    let Running {
        store,
        config,
        access,
        notifier,
        system_task,
        stop: stop_tx,
        mut done,
    } = start(parts, &config, started).await?;
    tokio::spawn(
        Reloader {
            path: config_path,
            running: config,
            log,
            access,
        }
        .run(hangup),
    );
    announce_ready(notifier.as_ref(), system_task);
    let outcome = wait(term, &mut done).await;
    stop(stop_tx, done, &store, outcome).await
}

/// What [`build`] makes: the broker's router runs, nothing else does yet.
struct Parts {
    store: ShadowStore,
    topics: Topics,
    metrics: Metrics,
    replies: Replies,
    outbox: Option<Outbox>,
    /// The running configuration: SIGHUP replaces its live parts (see `reload`).
    config: watch::Sender<GatewayConfig>,
    config_rx: watch::Receiver<GatewayConfig>,
    service: ShadowService,
    users: Directory,
    access: Option<Access>,
    alerts: Alerts,
    command_listeners: Arc<Notify>,
    bridge: Option<Bridge>,
    lease: watch::Sender<LeaseState>,
    lease_role: Option<watch::Receiver<LeaseState>>,
    step_down: StepDown,
    /// What the status page remembers of each heater (a tap of the broker).
    board: StatusBoard,
    broker: EmbeddedBroker,
    link: GatewayLink,
}

/// The alert rules and, when there are rules or an uplink, the feed the hook fills.
struct Alerts {
    engine: Engine,
    feed: Option<AlertFeed>,
    inbox: Option<AlertInbox>,
}

/// What [`start`] leaves running, for `run` to wait on and stop.
struct Running {
    store: ShadowStore,
    config: watch::Sender<GatewayConfig>,
    access: Option<Access>,
    notifier: Option<Notifier>,
    system_task: SystemTask,
    stop: watch::Sender<bool>,
    done: Done,
}

/// The shadow-service thread's result.
type Done = tokio::sync::oneshot::Receiver<Result<(), BrokerError>>;

fn warn_if_insecure(config: &GatewayConfig) {
    if config.auth.mode == AuthMode::Anonymous {
        tracing::warn!(
            "auth.mode = \"anonymous\": any client may publish and subscribe to any topic; \
             for the lab only, never in the field"
        );
    } else if let Some(listen) = &config.mqtt.listen {
        tracing::warn!(
            listen = %listen,
            "passwords cross the plain MQTT listener in clear text; use TLS in the field"
        );
    }
}

/// Opens the store and the outbox, makes the shadow service, the ACL and the hook's taps,
/// and starts the broker's router with the gateway subscribed to the service's requests.
fn build(config: &GatewayConfig) -> Result<Parts, GatewayError> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| GatewayError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let store = ShadowStore::open(&data_dir.join("shadows"), config.gateway.store_cache_bytes)?;
    let topics = Topics::new(&config.topics.root).map_err(GatewayError::Topics)?;
    let metrics = Metrics::default();
    let replies = Replies::new(topics.clone(), &config.gateway.id);
    let uplink_enabled = config.mongodb.uri.is_some();
    let outbox = if uplink_enabled {
        Some(Outbox::open(
            store.db(),
            OutboxLimits::from(&config.outbox),
        )?)
    } else {
        None
    };
    let (config_tx, config_rx) = watch::channel(config.clone());
    let service = ShadowService::new(
        replies.clone(),
        metrics.clone(),
        store.clone(),
        ServiceSettings::from_config(config),
        outbox.clone(),
    )
    .follow(config_rx.clone());
    // Users and their devices (MongoDB `users`, filled by the uplink): ACL and notifications.
    let users = Directory::default();
    let access = access(config, &topics, &users)?;
    let alerts = alerts(config, outbox.is_some());
    // Woken when a device subscribes to its command topic: pending commands wait for that.
    let command_listeners = Arc::new(Notify::new());
    let (bridge, capture) = if config.bridge.url.is_none() {
        (None, None)
    } else {
        let (bridge, capture) = Bridge::new(config, store.db())?;
        (Some(bridge), Some(capture))
    };
    // This gateway's role in its active/standby pair: the lease task (uplink) decides it,
    // the broker refuses clients as a standby, the system task lets them go on a step-down.
    let (lease, lease_role) = watch::channel(LeaseState::default());
    let lease_role = (uplink_enabled && config.mongodb.lease.is_some()).then_some(lease_role);
    let step_down = StepDown::default();
    let board = StatusBoard::new(&topics);
    let mut taps: Vec<Box<dyn Tap>> = vec![Box::new(board.clone())];
    if let Some(outbox) = outbox.clone() {
        taps.push(Box::new(Ingest::new(outbox)));
    }
    if let Some(feed) = alerts.feed.clone() {
        taps.push(Box::new(feed));
    }
    if let Some(capture) = capture {
        taps.push(Box::new(capture));
    }
    let hook: Arc<dyn PublishHook> = Arc::new(GatewayHook {
        topics: topics.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
        store: store.clone(),
        taps,
        unflushed: Default::default(),
        command_listeners: command_listeners.clone(),
        step_down: step_down.clone(),
        limits: LimitLog::default(),
        device_subscriptions: config.mqtt.max_device_subscriptions,
    });
    let (broker, mut link) = EmbeddedBroker::new(
        &config.mqtt,
        Some(hook),
        access.clone(),
        lease_role.clone(),
        metrics.clone(),
    )?;
    for filter in service.request_filters() {
        link.subscribe(&filter)?;
    }
    Ok(Parts {
        store,
        topics,
        metrics,
        replies,
        outbox,
        config: config_tx,
        config_rx,
        service,
        users,
        access,
        alerts,
        command_listeners,
        bridge,
        lease,
        lease_role,
        step_down,
        board,
        broker,
        link,
    })
}

/// The ACL of the configured auth mode; `None` in anonymous mode.
fn access(
    config: &GatewayConfig,
    topics: &Topics,
    users: &Directory,
) -> Result<Option<Access>, GatewayError> {
    Ok(match config.auth.mode {
        AuthMode::Anonymous => None,
        AuthMode::Password => Some(Access::load(
            topics.clone(),
            Path::new(config.auth.credentials_file.as_deref().unwrap_or_default()),
            &config.auth.services,
            users.clone(),
            config.mqtt.max_connections,
        )?),
        AuthMode::Certificate => Some(Access::certificates(
            topics.clone(),
            &config.auth.services,
            users.clone(),
        )),
    })
}

/// The configured rules; the alert task also serves users' preferences, which live in
/// MongoDB, so it runs with an uplink even without rules.
fn alerts(config: &GatewayConfig, uplink: bool) -> Alerts {
    let engine = Engine::new(
        config
            .alerts
            .iter()
            .filter_map(|rule| AlertRule::parse(rule).ok())
            .collect(),
    );
    let (feed, inbox) = if engine.is_empty() && !uplink {
        (None, None)
    } else {
        let (feed, inbox) = alerts::feed(&engine);
        (Some(feed), Some(inbox))
    };
    Alerts {
        engine,
        feed,
        inbox,
    }
}

/// Republishes pending deltas, starts the uplink, the alert task and the bridge, serves
/// HTTP, publishes the retained status, opens the listeners and starts the shadow-service
/// thread.
async fn start(
    parts: Parts,
    config: &GatewayConfig,
    started: Instant,
) -> Result<Running, GatewayError> {
    let Parts {
        store,
        topics,
        metrics,
        replies,
        outbox,
        config: config_tx,
        config_rx,
        mut service,
        users,
        access,
        alerts,
        command_listeners,
        bridge,
        lease,
        lease_role,
        step_down,
        board,
        broker,
        mut link,
    } = parts;
    republish_pending(&mut service, &store, &mut link)?;
    let uplink = match outbox.clone() {
        Some(outbox) => {
            let commands = BrokerCommands {
                link: broker.link("iotsphere:uplink")?,
                replies: replies.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                listeners: command_listeners,
            };
            Some(start_uplink(config, &store, outbox, commands, &users, lease).await?)
        }
        None => None,
    };
    let (open_alerts, alert_feed) =
        start_alerts(alerts, &broker, &replies, outbox.as_ref(), users, &store)?;
    metrics.follow_open_alerts(open_alerts.clone());
    let service = match &uplink {
        Some(uplink) => service
            .claim_through(uplink.claims.clone())
            .tell_alerts(alert_feed),
        None => service,
    };
    let bridge_status = match bridge {
        Some(bridge) => Some(bridge.start(broker.link(BRIDGE_CLIENT_ID)?)),
        None => None,
    };
    let health = HealthState {
        gateway_id: config.gateway.id.clone(),
        store: store.clone(),
        probe: StoreProbe::new(store.clone()),
        uplink: uplink.as_ref().map(|u| u.status.clone()).zip(outbox),
        bridge: bridge_status,
        metrics,
        started,
    };
    let notifier = Notifier::from_env();
    // Started after READY=1 (see `announce_ready`): systemd must hear READY before the
    // first WATCHDOG.
    let mut system_task = SystemTask {
        link: broker.link("iotsphere:system")?,
        replies: replies.clone(),
        topics,
        health: health.clone(),
        config: config_rx,
        notifier: notifier.clone(),
        open_alerts,
        lease: lease_role,
        step_down,
    };
    // Before the listeners open, so the very first client to subscribe finds it retained.
    system_task.publish_status().await;
    let http_addr = serve_http(config, health, board).await?;
    let listening = broker.listen()?;
    log_ready(config, listening, http_addr);
    let from_cloud = uplink.map(|u| u.from_cloud);
    let (stop, done) = spawn_shadow_service(link, service, replies, from_cloud)?;
    Ok(Running {
        store,
        config: config_tx,
        access,
        notifier,
        system_task,
        stop,
        done,
    })
}

/// Every delta still pending, retained again (the broker keeps nothing across restarts),
/// once what expired meanwhile has expired.
fn republish_pending(
    service: &mut ShadowService,
    store: &ShadowStore,
    link: &mut GatewayLink,
) -> Result<(), GatewayError> {
    let pending = service.pending_deltas()?;
    tracing::info!(
        shadows = store.len(),
        pending_deltas = pending.len(),
        "shadow store opened"
    );
    link.publish_all(pending)?;
    Ok(())
}

/// The alert task, when the hook feeds one; returns the count of open alerts and the feed
/// (the shadow service tells it about devices released to another gateway).
fn start_alerts(
    alerts: Alerts,
    broker: &EmbeddedBroker,
    replies: &Replies,
    outbox: Option<&Outbox>,
    users: Directory,
    store: &ShadowStore,
) -> Result<(OpenAlerts, Option<AlertFeed>), GatewayError> {
    let open = OpenAlerts::default();
    if let Some(inbox) = alerts.inbox {
        tracing::info!(rules = alerts.engine.rules(), "alert task started");
        tokio::spawn(
            AlertTask {
                engine: alerts.engine,
                inbox,
                link: broker.link("iotsphere:alerts")?,
                replies: replies.clone(),
                outbox: outbox.cloned(),
                users,
                open: open.clone(),
                store: store.clone(),
            }
            .run(),
        );
    }
    Ok((open, alerts.feed))
}

/// Starts the uplink on the outbox, saying so when writes wait from an earlier run.
async fn start_uplink(
    config: &GatewayConfig,
    store: &ShadowStore,
    outbox: Outbox,
    commands: BrokerCommands,
    users: &Directory,
    lease: watch::Sender<LeaseState>,
) -> Result<Uplink, GatewayError> {
    let stats = outbox.stats();
    if stats.items + stats.shadows > 0 {
        tracing::info!(
            items = stats.items,
            shadows = stats.shadows,
            "the outbox has writes waiting; replaying them"
        );
    }
    Ok(uplink::start(
        config,
        store.clone(),
        outbox,
        Box::new(commands),
        users.clone(),
        lease,
    )
    .await?)
}

/// `/health`, `/metrics` and the status page, when `http.listen` is set.
async fn serve_http(
    config: &GatewayConfig,
    health: HealthState,
    board: StatusBoard,
) -> Result<Option<SocketAddr>, GatewayError> {
    let Some(listen) = &config.http.listen else {
        return Ok(None);
    };
    http::serve(listen, health, board, config.http.token.clone())
        .await
        .map(Some)
        .map_err(|e| GatewayError::Http(listen.clone(), e))
}

fn log_ready(
    config: &GatewayConfig,
    (listen, tls_listen): (Option<SocketAddr>, Option<SocketAddr>),
    http_addr: Option<SocketAddr>,
) {
    let shown = |addr: Option<SocketAddr>| addr.map_or_else(|| "off".into(), |a| a.to_string());
    tracing::info!(
        gateway = %config.gateway.id,
        mqtt = %shown(listen),
        mqtts = %shown(tls_listen),
        http = %shown(http_addr),
        uplink = config.mongodb.uri.is_some(),
        bridge = %config.bridge.url.as_deref().unwrap_or("off"),
        root = %config.topics.root,
        data_dir = %config.gateway.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "gateway ready"
    );
}

/// The link loop on its own thread and runtime (its fsyncs never stall anything else):
/// returns the sender that stops it and the receiver of its result.
fn spawn_shadow_service(
    link: GatewayLink,
    service: ShadowService,
    replies: Replies,
    from_cloud: Option<flume::Receiver<FromCloud>>,
) -> Result<(watch::Sender<bool>, Done), GatewayError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shadow-service".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BrokerError::Start(e.to_string()))
                .and_then(|runtime| {
                    runtime.block_on(link_loop::run(link, service, replies, stop_rx, from_cloud))
                });
            let _ = done_tx.send(result);
        })
        .map_err(|e| GatewayError::Thread("shadow-service", e))?;
    Ok((stop_tx, done_rx))
}

/// READY=1 to systemd, then the system task (status, metrics, watchdog).
fn announce_ready(notifier: Option<&Notifier>, system_task: SystemTask) {
    if let Some(notifier) = notifier {
        if let Err(e) = notifier.notify("READY=1") {
            tracing::warn!(error = %e, "could not tell systemd the gateway is ready");
        }
    }
    tokio::spawn(system_task.run());
}

/// Until SIGTERM / Ctrl-C (`Ok`) or the end of the shadow service (an error).
async fn wait(mut term: Signal, done: &mut Done) -> Result<(), GatewayError> {
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("shutting down");
            Ok(())
        }
        result = tokio::signal::ctrl_c() => {
            result.map_err(GatewayError::Signal)?;
            tracing::info!("shutting down");
            Ok(())
        }
        result = done => match result {
            Ok(Err(e)) => Err(GatewayError::Service(e.to_string())),
            Ok(Ok(())) | Err(_) => Err(GatewayError::Service("the link loop ended".into())),
        },
    }
}

/// After a signal: the link loop answers its last batch (within [`SHUTDOWN_GRACE`]); in
/// every case the store is flushed.
async fn stop(
    stop: watch::Sender<bool>,
    mut done: Done,
    store: &ShadowStore,
    outcome: Result<(), GatewayError>,
) -> Result<(), GatewayError> {
    if outcome.is_ok() {
        let _ = stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut done)
            .await
            .is_err()
        {
            tracing::error!("the shadow service did not stop in time");
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "the shadow store could not be flushed at shutdown");
    }
    outcome
}
