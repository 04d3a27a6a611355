//! Offline administration: `iotsphere-gateway outbox stats|list|replay|purge [--bridge]`,
//! run with the gateway stopped (sled allows one process per database; a running gateway
//! holds it). `--bridge` selects the upstream bridge's queue instead of MongoDB's.

use serde_json::Value;

use crate::config::GatewayConfig;
use crate::outbox::{Outbox, OutboxItem, OutboxLimits, OutboxStats, ToBridge, ToCloud};
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

/// What the offline commands do with a queue, whichever items it holds.
pub trait QueueAdmin {
    fn stats(&self) -> OutboxStats;
    fn list(&self, limit: usize) -> Result<Vec<Value>, StoreError>;
    fn purge(&self, dead_only: bool) -> Result<usize, StoreError>;
}

impl<T: OutboxItem> QueueAdmin for Outbox<T> {
    fn stats(&self) -> OutboxStats {
        Outbox::stats(self)
    }

    fn list(&self, limit: usize) -> Result<Vec<Value>, StoreError> {
        Outbox::list(self, limit)
    }

    fn purge(&self, dead_only: bool) -> Result<usize, StoreError> {
        Outbox::purge(self, dead_only)
    }
}

/// Opens one outbox of the configured data directory.
pub fn open_outbox(
    config: &GatewayConfig,
    queue: Queue,
) -> Result<Box<dyn QueueAdmin>, AdminError> {
    let store = open_store(config)?;
    let limits = OutboxLimits::from(&config.outbox);
    Ok(match queue {
        Queue::Uplink => Box::new(Outbox::<ToCloud>::open(store.db(), limits)?),
        Queue::Bridge => Box::new(Outbox::<ToBridge>::open(store.db(), limits)?),
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
    if config.mongodb.uri.is_none() {
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
