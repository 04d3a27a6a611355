//! State shared by all connections of one server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bson::{oid::ObjectId, Document};

use crate::cursor::Cursors;
use crate::failpoint::FailPoints;
use crate::storage::Store;

/// How many retryable-write results are remembered.
const RETRY_CACHE_SIZE: usize = 10_000;

/// Data guarded by the server's lock (commands run under it, never across an `.await`).
#[derive(Debug)]
pub struct State {
    pub store: Store,
    pub cursors: Cursors,
    pub retries: RetryCache,
}

/// Results of retryable writes by `(lsid, txnNumber)`, so a retried write is not re-applied.
#[derive(Debug, Default)]
pub struct RetryCache {
    map: HashMap<(Vec<u8>, i64), Document>,
    order: VecDeque<(Vec<u8>, i64)>,
}

impl RetryCache {
    pub fn get(&self, key: &(Vec<u8>, i64)) -> Option<&Document> {
        self.map.get(key)
    }

    pub fn put(&mut self, key: (Vec<u8>, i64), reply: Document) {
        if self.map.insert(key.clone(), reply).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RETRY_CACHE_SIZE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Everything a command handler may need besides its connection.
#[derive(Debug)]
pub struct Shared {
    pub standalone: bool,
    /// `host:port` reported in `hello` (`me`, `hosts`, `primary`).
    pub host: String,
    pub verbose: bool,
    pub process_id: ObjectId,
    pub started: Instant,
    state: Mutex<State>,
    failpoints: Mutex<FailPoints>,
    next_conn_id: AtomicI32,
    pub open_connections: AtomicI32,
}

impl Shared {
    pub fn new(standalone: bool, host: String, verbose: bool, store: Store) -> Shared {
        Shared {
            standalone,
            host,
            verbose,
            process_id: ObjectId::new(),
            started: Instant::now(),
            state: Mutex::new(State {
                store,
                cursors: Cursors::default(),
                retries: RetryCache::default(),
            }),
            failpoints: Mutex::new(FailPoints::default()),
            next_conn_id: AtomicI32::new(1),
            open_connections: AtomicI32::new(0),
        }
    }

    /// Locks the state (a poisoned lock is recovered: handlers never leave it half-updated
    /// across a panic point that matters for a test double).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn failpoints(&self) -> MutexGuard<'_, FailPoints> {
        self.failpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_connection_id(&self) -> i32 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connections(&self) -> i32 {
        self.open_connections.load(Ordering::Relaxed)
    }
}

/// Per-connection facts.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: i32,
    pub peer: String,
    /// `client.application.name` from the handshake (for `failCommand`'s `appName`).
    pub app_name: Option<String>,
}
