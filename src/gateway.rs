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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::PublishHook;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use crate::alerts::{self, AlertRule, AlertTask, Engine, OpenAlerts};
use crate::auth::{Access, AuthError};
use crate::bridge::{Bridge, BridgeError, BRIDGE_CLIENT_ID};
use crate::broker::hook::{GatewayHook, LimitLog, StepDown};
use crate::broker::{self, BrokerError, EmbeddedBroker, GatewayLink};
use crate::config::{AuthMode, GatewayConfig};
use crate::http::{self, HealthState, StoreProbe};
use crate::ingest::Ingest;
use crate::logging::LogLevel;
use crate::messages::Replies;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxLimits};
use crate::reload::Reloader;
use crate::service::{ServiceSettings, ShadowService};
use crate::store::{ShadowStore, StoreError};
use crate::system::SystemTask;
use crate::systemd::Notifier;
use crate::topics::Topics;
use crate::uplink::{self, CommandRequest, CommandSink, LeaseState, UplinkError};
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
pub async fn run(
    config: GatewayConfig,
    config_path: PathBuf,
    log: Option<LogLevel>,
) -> Result<(), GatewayError> {
    let started = Instant::now();
    let hangup = signal(SignalKind::hangup()).map_err(GatewayError::Signal)?;
    if config.auth.mode == AuthMode::Anonymous {
        tracing::warn!(
            "auth.mode = \"anonymous\": any client may publish and subscribe to any topic; \
             for the lab only, never in the field"
        );
    } else if !config.mqtt.listen.is_empty() {
        tracing::warn!(
            listen = %config.mqtt.listen,
            "passwords cross the plain MQTT listener in clear text; use TLS in the field"
        );
    }
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| GatewayError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let store = ShadowStore::open(&data_dir.join("shadows"), config.gateway.store_cache_bytes)?;
    let topics = Topics::new(&config.topics.root).map_err(GatewayError::Topics)?;
    let metrics = Metrics::default();
    let replies = Replies::new(topics.clone(), &config.gateway.id);
    let uplink_enabled = !config.mongodb.uri.is_empty();
    let outbox = if uplink_enabled {
        Some(Outbox::open(
            store.db(),
            OutboxLimits::from(&config.outbox),
        )?)
    } else {
        None
    };
    // The running configuration: SIGHUP replaces its live parts (see `reload`).
    let (running, running_rx) = watch::channel(config.clone());
    let mut service = ShadowService::new(
        replies.clone(),
        metrics.clone(),
        store.clone(),
        ServiceSettings::from_config(&config),
        outbox.clone(),
    )
    .follow(running_rx.clone());

    // Users and their devices (MongoDB `users`, filled by the uplink): ACL and notifications.
    let users = Directory::default();
    let access = match config.auth.mode {
        AuthMode::Anonymous => None,
        AuthMode::Password => Some(Access::load(
            topics.clone(),
            Path::new(&config.auth.credentials_file),
            &config.auth.services,
            users.clone(),
            config.mqtt.max_connections,
        )?),
        AuthMode::Certificate => Some(Access::certificates(
            topics.clone(),
            &config.auth.services,
            users.clone(),
        )),
    };
    let ingest = outbox
        .clone()
        .map(|outbox| Ingest::new(topics.clone(), outbox, store.db().clone()));
    let alert_engine = Engine::new(
        config
            .alerts
            .iter()
            .filter_map(|rule| AlertRule::parse(rule).ok())
            .collect(),
    );
    // The alert task also serves users' preferences, which live in MongoDB.
    let (alert_feed, alert_inbox) = if alert_engine.is_empty() && outbox.is_none() {
        (None, None)
    } else {
        let (feed, inbox) = alerts::feed(&alert_engine);
        (Some(feed), Some(inbox))
    };
    // Woken when a device subscribes to its command topic: pending commands wait for that.
    let command_listeners = Arc::new(Notify::new());
    let (bridge, capture) = if config.bridge.url.is_empty() {
        (None, None)
    } else {
        let (bridge, capture) = Bridge::new(&config, store.db())?;
        (Some(bridge), Some(capture))
    };
    // This gateway's role in its active/standby pair: the lease task (uplink) decides it,
    // the broker refuses clients as a standby, the system task lets them go on a step-down.
    let (lease, lease_role) = watch::channel(LeaseState::default());
    let lease_role = (uplink_enabled && !config.mongodb.lease.is_empty()).then_some(lease_role);
    let step_down = StepDown::default();
    let hook: Arc<dyn PublishHook> = Arc::new(GatewayHook {
        topics: topics.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
        ingest,
        store: store.clone(),
        alerts: alert_feed.clone(),
        bridge: capture,
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
    let pending = service.pending_deltas()?;
    tracing::info!(
        shadows = store.len(),
        pending_deltas = pending.len(),
        "shadow store opened"
    );
    link.publish_all(pending)?;

    let uplink = match outbox.clone() {
        Some(outbox) => {
            let commands = BrokerCommands {
                link: broker.link("iotsphere:uplink")?,
                replies: replies.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                listeners: command_listeners.clone(),
            };
            let stats = outbox.stats();
            if stats.items + stats.shadows > 0 {
                tracing::info!(
                    items = stats.items,
                    shadows = stats.shadows,
                    "the outbox has writes waiting; replaying them"
                );
            }
            Some(
                uplink::start(
                    &config,
                    store.clone(),
                    outbox,
                    Box::new(commands),
                    users.clone(),
                    lease,
                )
                .await?,
            )
        }
        None => None,
    };
    let open_alerts = OpenAlerts::default();
    if let Some(inbox) = alert_inbox {
        tracing::info!(rules = alert_engine.rules(), "alert task started");
        tokio::spawn(
            AlertTask {
                engine: alert_engine,
                inbox,
                link: broker.link("iotsphere:alerts")?,
                replies: replies.clone(),
                outbox: outbox.clone(),
                users,
                open: open_alerts.clone(),
                store: store.clone(),
            }
            .run(),
        );
    }
    let service = match &uplink {
        Some(uplink) => service
            .claim_through(uplink.claims.clone())
            .tell_alerts(alert_feed),
        None => service,
    };
    let uplink_status = uplink.as_ref().map(|u| u.status.clone()).zip(outbox);
    let from_cloud = uplink.map(|u| u.from_cloud);

    let bridge_status = match bridge {
        Some(bridge) => Some(bridge.start(broker.link(BRIDGE_CLIENT_ID)?)),
        None => None,
    };

    let health = HealthState {
        gateway_id: config.gateway.id.clone(),
        store: store.clone(),
        probe: StoreProbe::new(store.clone()),
        uplink: uplink_status,
        bridge: bridge_status,
        metrics: metrics.clone(),
        started,
    };
    let notifier = Notifier::from_env();
    // Started after READY=1 (below): systemd must hear READY before the first WATCHDOG.
    let mut system_task = SystemTask {
        link: broker.link("iotsphere:system")?,
        replies: replies.clone(),
        topics: topics.clone(),
        health: health.clone(),
        config: running_rx,
        notifier: notifier.clone(),
        open_alerts,
        lease: lease_role,
        step_down,
    };
    // Before the listeners open, so the very first client to subscribe finds it retained.
    system_task.publish_status().await;
    let http_addr = if config.http.listen.is_empty() {
        None
    } else {
        let token = (!config.http.token.is_empty()).then(|| config.http.token.clone());
        Some(
            http::serve(&config.http.listen, health, token)
                .await
                .map_err(|e| GatewayError::Http(config.http.listen.clone(), e))?,
        )
    };
    let (listen, tls_listen) = broker.listen()?;
    let shown =
        |addr: Option<std::net::SocketAddr>| addr.map_or_else(|| "off".into(), |a| a.to_string());
    tracing::info!(
        gateway = %config.gateway.id,
        mqtt = %shown(listen),
        mqtts = %shown(tls_listen),
        http = %http_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        uplink = uplink_enabled,
        bridge = %if config.bridge.url.is_empty() { "off" } else { config.bridge.url.as_str() },
        root = %config.topics.root,
        data_dir = %config.gateway.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "gateway ready"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shadow-service".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BrokerError::Start(e.to_string()))
                .and_then(|runtime| {
                    runtime.block_on(broker::link::run(
                        link, service, replies, stop_rx, from_cloud,
                    ))
                });
            let _ = done_tx.send(result);
        })
        .map_err(|e| GatewayError::Thread("shadow-service", e))?;

    tokio::spawn(
        Reloader {
            path: config_path,
            running,
            log,
            access,
        }
        .run(hangup),
    );
    if let Some(notifier) = &notifier {
        if let Err(e) = notifier.notify("READY=1") {
            tracing::warn!(error = %e, "could not tell systemd the gateway is ready");
        }
    }
    tokio::spawn(system_task.run());
    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            Ok(())
        }
        result = &mut done_rx => match result {
            Ok(Err(e)) => Err(GatewayError::Service(e.to_string())),
            Ok(Ok(())) | Err(_) => Err(GatewayError::Service("the link loop ended".into())),
        },
    };
    if outcome.is_ok()
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut done_rx)
            .await
            .is_err()
    {
        tracing::error!("the shadow service did not stop in time");
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "the shadow store could not be flushed at shutdown");
    }
    outcome
}

async fn shutdown_signal() -> Result<(), GatewayError> {
    let mut term = signal(SignalKind::terminate()).map_err(GatewayError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.map_err(GatewayError::Signal)?,
    }
    Ok(())
}
