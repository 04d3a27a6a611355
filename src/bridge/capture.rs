//! The bridge's side of the broker hook: every local publication on a `forward` topic goes
//! into the bridge's outbox from inside rumqttd's router, before it is acknowledged — the
//! same durability as telemetry (`ingest`): a PUBACK to a device means "on disk", and the
//! upstream broker gets it once it is reachable, in the order the router saw it.
//!
//! What came from upstream (published locally by the bridge's own link) is never captured:
//! no loop, even for a topic that matches both `forward` and `subscribe`.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::filter_matches;
use crate::outbox::{Forwarded, Outbox, ToCloud};

/// The client id of the bridge's internal link (the `iotsphere:` prefix marks internal links).
pub const BRIDGE_CLIENT_ID: &str = "iotsphere:bridge";

pub struct Capture {
    forward: Vec<String>,
    outbox: Outbox,
    db: sled::Db,
    /// A QoS 1 message was added since the last flush.
    unflushed: AtomicBool,
    /// Something was added since the drain was last woken.
    added: AtomicBool,
}

impl Capture {
    pub fn new(forward: Vec<String>, outbox: Outbox, db: sled::Db) -> Self {
        Self {
            forward,
            outbox,
            db,
            unflushed: AtomicBool::new(false),
            added: AtomicBool::new(false),
        }
    }

    /// A publication the broker accepted.
    pub fn on_publish(&self, client_id: &str, topic: &str, payload: &[u8], qos: u8) {
        if client_id == BRIDGE_CLIENT_ID || !self.forward.iter().any(|f| filter_matches(f, topic)) {
            return;
        }
        let write = ToCloud::Forward(Forwarded {
            topic: topic.to_string(),
            payload: payload.to_vec(),
        });
        match self.outbox.push(write) {
            Ok(true) => {
                self.added.store(true, Ordering::Relaxed);
                if qos > 0 {
                    self.unflushed.store(true, Ordering::Relaxed);
                }
            }
            // Refused (full, `reject_new`): counted and logged by the outbox.
            Ok(false) => {}
            Err(e) => {
                tracing::error!(topic, error = %e, "could not queue a message for the upstream broker")
            }
        }
    }

    /// Once per router iteration, before PUBACKs go out.
    pub fn before_acks(&self) {
        if self.unflushed.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.db.flush() {
                tracing::error!(error = %e, "could not flush the bridge's outbox before acknowledging");
            }
        }
        if self.added.swap(false, Ordering::Relaxed) {
            self.outbox.wake();
        }
    }
}
