//! Offline administration: `iotsphere-gateway outbox stats|list|replay|purge [--bridge]`,
//! run with the gateway stopped (sled allows one process per database; a running gateway
//! holds it). `--bridge` selects the upstream bridge's queue instead of MongoDB's.

use crate::config::GatewayConfig;
use crate::outbox::{Outbox, OutboxLimits, OutboxStats};
use crate::store::{ShadowStore, StoreError};
use crate::uplink::{self, ReplayError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the data directory is in use by a running gateway (sled holds an exclusive lock): stop the gateway first")]
    InUse,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("mongodb.uri is empty: there is no uplink to replay to")]
    NoUplink,
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("the bridge's queue is sent by the running gateway when the cloud broker is reachable; there is no offline replay for it")]
    NoBridgeReplay,
}

/// Which queue an outbox command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Bound for MongoDB.
    Uplink,
    /// Bound for the upstream MQTT broker.
    Bridge,
}

/// Opens one outbox of the configured data directory.
pub fn open_outbox(config: &GatewayConfig, queue: Queue) -> Result<Outbox, AdminError> {
    let store = open_store(config)?;
    let limits = OutboxLimits::from(&config.outbox);
    Ok(match queue {
        Queue::Uplink => Outbox::open(store.db(), limits)?,
        Queue::Bridge => Outbox::open_bridge(store.db(), limits)?,
    })
}

fn open_store(config: &GatewayConfig) -> Result<ShadowStore, AdminError> {
    let dir = config.gateway.data_dir.join("shadows");
    ShadowStore::open(&dir, config.gateway.store_cache_bytes).map_err(|e| match &e {
        StoreError::Open {
            source: sled::Error::Io(io),
            ..
        } if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
            AdminError::InUse
        }
        _ => AdminError::Store(e),
    })
}

/// Replays the outbox into MongoDB once; returns what is left.
pub async fn replay(config: &GatewayConfig) -> Result<OutboxStats, AdminError> {
    if config.mongodb.uri.is_empty() {
        return Err(AdminError::NoUplink);
    }
    let store = open_store(config)?;
    let outbox = Outbox::open(store.db(), OutboxLimits::from(&config.outbox))?;
    Ok(uplink::replay(
        &config.mongodb,
        &config.gateway.id,
        store,
        outbox,
        config.outbox.replay_rate,
    )
    .await?)
}
