//! The MongoDB uplink (docs/DESIGN.md §6): shadows mirrored to `shadows`, telemetry to
//! `telemetry`, commands from `commands`, and cloud changes to `desired` pushed back to the
//! devices through a change stream (or polling where the server cannot stream).
//!
//! - [`writer`] — everything bound for MongoDB, in order, retried while it is unreachable.
//! - [`watcher`] — cloud changes of `state.desired` → [`CloudDesired`] for the service.
//! - [`handover`] — claiming a device this gateway does not hold yet; devices claimed by
//!   other gateways leave this one (many gateways on one MongoDB).
//! - [`lease`] — the active/standby pair: a lease in `leases`; its new holder takes the
//!   old one's devices.
//! - [`commands`] — pending commands → `devices/{id}/commands/request`.
//! - [`users`] — the `users` collection mirrored into [`crate::users::Directory`].
//! - [`UplinkStatus`] — mode / connected / last event, filled here for `/health/uplink`.
//!
//! The uplink talks to MongoDB only through the official `mongodb` driver.

pub mod commands;
pub mod handover;
pub mod lease;
pub mod mongo;
pub mod users;
pub mod watcher;
pub mod writer;

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};
use tokio::sync::watch;

pub use crate::cloud::{CloudDesired, FromCloud};
pub use crate::messages::CommandRequest;
pub use crate::status::{UplinkMode, UplinkReport, UplinkStatus};
pub use commands::CommandSink;
pub use lease::{Fence, LeaseRole, LeaseState};
pub use writer::OwnWrites;

use crate::backoff::Backoff;
use crate::config::{ChangeStreams, GatewayConfig, MongoSection};
use crate::outbox::{Outbox, OutboxStats};
use crate::store::ShadowStore;
use mongo::{
    error_code, ALERTS, COMMANDS, INDEX_KEY_SPECS_CONFLICT, INDEX_OPTIONS_CONFLICT,
    NOT_A_REPLICA_SET, SHADOWS, TELEMETRY,
};

/// How long the driver looks for a usable server before an operation fails (its default
/// of 30 s would leave writes hanging long after the uplink is gone).
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// Device ids per `$in` query about the devices this gateway serves.
const DEVICE_IDS_PER_QUERY: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("mongodb.uri: {0}")]
    Uri(mongodb::error::Error),
}

/// The running uplink, as the rest of the gateway sees it.
pub struct Uplink {
    /// Cloud changes, claims and releases, for the shadow service.
    pub from_cloud: flume::Receiver<FromCloud>,
    /// Device ids to claim ([`handover`]); every one is answered on `from_cloud`.
    pub claims: flume::Sender<String>,
    pub status: UplinkStatus,
}

/// Starts the uplink tasks on the current tokio runtime. Fails only on an unusable URI;
/// an unreachable server is retried for ever (and shown in `/health/uplink`).
/// `lease` is told this gateway's role in its active/standby pair (with `[mongodb]
/// lease` set; otherwise it stays undecided).
pub async fn start(
    config: &GatewayConfig,
    store: ShadowStore,
    outbox: Outbox,
    commands: Box<dyn CommandSink>,
    directory: crate::users::Directory,
    lease: watch::Sender<LeaseState>,
) -> Result<Uplink, UplinkError> {
    let (mongo, gateway_id) = (&config.mongodb, config.gateway.id.as_str());
    let db = connect(mongo, gateway_id).await?;
    let status = UplinkStatus::default();
    let own_writes = OwnWrites::default();
    let (to_service, from_cloud) = flume::unbounded();
    let (claims, to_claim) = flume::unbounded();
    let fence = if let Some(lease_name) = &mongo.lease {
        let fence = Fence::new(lease_name, lease.subscribe());
        tokio::spawn(
            lease::Lease {
                db: db.clone(),
                gateway_id: gateway_id.to_string(),
                name: lease_name.clone(),
                ttl: Duration::from_millis(mongo.lease_ttl_ms),
                to_service: to_service.clone(),
                state: lease,
                status: status.clone(),
            }
            .run(),
        );
        fence
    } else {
        Fence::default()
    };
    tokio::spawn(
        handover::Claims {
            db: db.clone(),
            gateway_id: gateway_id.to_string(),
            fence: fence.clone(),
            status: status.clone(),
            to_service: to_service.clone(),
        }
        .run(to_claim),
    );
    tokio::spawn(
        writer::Writer {
            db: db.clone(),
            gateway_id: gateway_id.to_string(),
            store: store.clone(),
            to_service: to_service.clone(),
            outbox,
            own_writes: own_writes.clone(),
            status: status.clone(),
            fence,
            replay_rate: config.outbox.replay_rate,
            batch: mongo.telemetry_batch,
            flush: Duration::from_millis(mongo.telemetry_flush_ms),
        }
        .run(),
    );

    let poll_interval = Duration::from_millis(mongo.poll_interval_ms);
    let watcher = watcher::Watcher {
        db: db.clone(),
        gateway_id: gateway_id.to_string(),
        store: store.clone(),
        own_writes,
        status: status.clone(),
        poll_interval,
        to_service,
    };
    tokio::spawn(
        Supervisor {
            db,
            watcher,
            store,
            commands,
            directory,
            preference: mongo.change_streams,
            retention: [
                (TELEMETRY, "ts", mongo.telemetry_retention_days),
                (ALERTS, "firedAt", mongo.alerts_retention_days),
            ],
            poll_interval,
            status: status.clone(),
        }
        .run(),
    );
    Ok(Uplink {
        from_cloud,
        claims,
        status,
    })
}

/// Connects to MongoDB (retrying with backoff), prepares indexes and retention, then runs
/// the watcher, the command dispatch and the users' sync until one fails; and again.
struct Supervisor {
    db: Database,
    watcher: watcher::Watcher,
    store: ShadowStore,
    commands: Box<dyn CommandSink>,
    directory: crate::users::Directory,
    preference: ChangeStreams,
    /// `(collection, timestamp field, days)` kept by a TTL index.
    retention: [(&'static str, &'static str, u32); 2],
    poll_interval: Duration,
    status: UplinkStatus,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut forced_polling = false;
        loop {
            let mode = match detect_mode(&self.db, self.preference, forced_polling).await {
                Ok(mode) => mode,
                Err(e) => {
                    let retry = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?retry, "MongoDB unreachable");
                    self.status.update(|r| {
                        r.mode = UplinkMode::Offline;
                        r.connected = false;
                        r.unreachable = true;
                    });
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            ensure_indexes(&self.db).await;
            for (collection, field, days) in self.retention {
                ensure_retention(&self.db, collection, field, days).await;
            }
            self.status.update(|r| {
                r.mode = mode;
                r.connected = true;
                r.unreachable = false;
            });
            tracing::info!(?mode, "MongoDB uplink connected");
            backoff.reset();
            let result = tokio::select! {
                r = self.watcher.run(mode) => r,
                r = commands::run(&self.db, &self.store, mode, self.poll_interval, self.commands.as_mut()) => r,
                r = users::run(&self.db, mode, &self.directory) => r,
            };
            match result {
                Err(e) if error_code(&e) == Some(NOT_A_REPLICA_SET) => {
                    tracing::warn!("the server cannot do change streams (40573): polling instead");
                    forced_polling = self.preference != ChangeStreams::On;
                }
                Err(e) => tracing::warn!(error = %e, "MongoDB uplink interrupted; reconnecting"),
                // A stream the server closed: reconnect too, but never in a tight loop.
                Ok(()) => tracing::warn!("a MongoDB stream ended; reconnecting"),
            }
            self.status.update(|r| r.connected = false);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

async fn connect(mongo: &MongoSection, gateway_id: &str) -> Result<Database, UplinkError> {
    let mut options = ClientOptions::parse(mongo.uri.as_deref().unwrap_or_default())
        .await
        .map_err(UplinkError::Uri)?;
    options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
    options.app_name = Some(format!("iotsphere-gateway/{gateway_id}"));
    let client = Client::with_options(options).map_err(UplinkError::Uri)?;
    Ok(client.database(&mongo.database))
}

/// Writes everything in the outbox to MongoDB once (the `outbox replay` command, with the
/// gateway stopped); returns what is left.
pub async fn replay(
    mongo: &MongoSection,
    gateway_id: &str,
    store: ShadowStore,
    outbox: Outbox,
    replay_rate: u32,
) -> Result<OutboxStats, ReplayError> {
    // Offline replay has no shadow service: cloud changes found are left to the gateway's
    // next start (the pending write stays in the outbox).
    let (to_service, _) = flume::unbounded();
    let writer = writer::Writer {
        db: connect(mongo, gateway_id).await?,
        gateway_id: gateway_id.to_string(),
        store,
        to_service,
        outbox: outbox.clone(),
        own_writes: OwnWrites::default(),
        status: UplinkStatus::default(),
        // Offline, the gateway holds no lease to fence with; ownership (`gatewayId`) still
        // refuses writes of devices another gateway took.
        fence: Fence::default(),
        replay_rate,
        batch: mongo.telemetry_batch,
        flush: Duration::ZERO,
    };
    writer.drain().await?;
    Ok(outbox.stats())
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Drain(#[from] writer::DrainError),
}

/// Change stream on a replica set or sharded cluster (`hello` has `setName` or is mongos),
/// polling otherwise or when configured off.
async fn detect_mode(
    db: &Database,
    preference: ChangeStreams,
    forced_polling: bool,
) -> Result<UplinkMode, mongodb::error::Error> {
    let hello = db.run_command(doc! {"hello": 1}).await?;
    let streams_possible =
        hello.contains_key("setName") || hello.get_str("msg").is_ok_and(|m| m == "isdbgrid");
    Ok(match preference {
        ChangeStreams::Off => UplinkMode::Polling,
        ChangeStreams::On => UplinkMode::ChangeStream,
        ChangeStreams::Auto if streams_possible && !forced_polling => UplinkMode::ChangeStream,
        ChangeStreams::Auto => UplinkMode::Polling,
    })
}

/// Name of the TTL index the gateway keeps on a collection it writes.
const RETENTION_INDEX: &str = "retention_ttl";

/// Keeps `collection` for `days` (by the date in `field`) with a TTL index; 0 = for ever
/// (the gateway's TTL index, if any, is dropped). A changed retention replaces the index
/// (drop + create works on every MongoDB; collMod would need 5.0+ semantics). Failures are
/// only logged: retention is housekeeping, never a reason to stop the uplink.
async fn ensure_retention(db: &Database, collection: &str, field: &str, days: u32) {
    let collection = db.collection::<mongodb::bson::Document>(collection);
    let drop = || collection.drop_index(RETENTION_INDEX);
    if days == 0 {
        if drop().await.is_ok() {
            tracing::info!(
                collection = collection.name(),
                "retention off: TTL index dropped"
            );
        }
        return;
    }
    let index = || {
        IndexModel::builder()
            .keys(doc! {field: 1})
            .options(
                IndexOptions::builder()
                    .name(RETENTION_INDEX.to_string())
                    .expire_after(Duration::from_secs(u64::from(days) * 86_400))
                    .build(),
            )
            .build()
    };
    let result = match collection.create_index(index()).await {
        Err(e)
            if matches!(
                error_code(&e),
                Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT)
            ) =>
        {
            tracing::info!(
                collection = collection.name(),
                days,
                "retention changed: replacing the TTL index"
            );
            match drop().await {
                Ok(()) => collection.create_index(index()).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        other => other.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(collection = collection.name(), error = %e, "could not set the retention (TTL) index");
    }
}

/// The indexes the uplink's queries need; idempotent, failures only logged.
async fn ensure_indexes(db: &Database) {
    let named = |keys, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
    let wanted = [
        (
            SHADOWS,
            named(doc! {"gatewayId": 1, "updatedAt": 1}, "gatewayId_updatedAt"),
        ),
        (
            COMMANDS,
            named(
                doc! {"status": 1, "deviceId": 1, "createdAt": 1},
                "status_deviceId_createdAt",
            ),
        ),
        (
            TELEMETRY,
            named(doc! {"deviceId": 1, "ts": 1}, "deviceId_ts"),
        ),
    ];
    for (collection, index) in wanted {
        if let Err(e) = db
            .collection::<mongodb::bson::Document>(collection)
            .create_index(index)
            .await
        {
            tracing::warn!(collection, error = %e, "could not create an index");
        }
    }
}
