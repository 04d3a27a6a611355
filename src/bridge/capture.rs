//! The bridge's tap of the broker hook: every local publication on a `forward` topic goes
//! into the bridge's outbox from inside rumqttd's router, before it is acknowledged — the
//! same durability as telemetry (`ingest`, the hook's one flush per router iteration): a PUBACK to a device means "on disk", and the
//! upstream broker gets it once it is reachable, in the order the router saw it.
//!
//! What came from upstream (published locally by the bridge's own link) is never captured:
//! no loop, even for a topic that matches both `forward` and `subscribe`.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::filter_matches;
use crate::broker::tap::{Seen, Tap};
use crate::outbox::{Forwarded, Outbox, ToBridge};

/// The client id of the bridge's internal link (the `iotsphere:` prefix marks internal links).
pub const BRIDGE_CLIENT_ID: &str = "iotsphere:bridge";

pub struct Capture {
    forward: Vec<String>,
    outbox: Outbox<ToBridge>,
    /// Something was added since the drain was last woken.
    added: AtomicBool,
}

impl Capture {
    pub fn new(forward: Vec<String>, outbox: Outbox<ToBridge>) -> Self {
        Self {
            forward,
            outbox,
            added: AtomicBool::new(false),
        }
    }
}

impl Tap for Capture {
    fn on_publish(&self, seen: &Seen<'_>) -> bool {
        let topic = seen.topic;
        if seen.client_id == BRIDGE_CLIENT_ID
            || !self.forward.iter().any(|f| filter_matches(f, topic))
        {
            return false;
        }
        let write = ToBridge::Forward(Forwarded {
            topic: topic.to_string(),
            payload: seen.payload.to_vec(),
        });
        match self.outbox.push(write) {
            Ok(true) => {
                self.added.store(true, Ordering::Relaxed);
                seen.qos > 0
            }
            // Refused (full, `reject_new`): counted and logged by the outbox.
            Ok(false) => false,
            Err(e) => {
                tracing::error!(topic, error = %e, "could not queue a message for the upstream broker");
                false
            }
        }
    }

    /// Once per router iteration, after the hook's flush, before PUBACKs go out.
    fn before_acks(&self) {
        if self.added.swap(false, Ordering::Relaxed) {
            self.outbox.wake();
        }
    }
}
