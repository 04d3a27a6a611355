//! Alert rules (`[[alerts]]` in the config): over-temperature, pressure, heater faults,
//! devices offline. Each firing and clearing is published on `ROOT/devices/batch/alerts`
//! and `ROOT/system/alerts`, to `ROOT/users/{userId}/notifications` of every user owning
//! the device who wants that severity ([`crate::users`]), and, with an uplink, stored in
//! MongoDB `alerts` through the outbox (so an outage loses none). The same task applies
//! what users' apps publish on `users/{userId}/preferences`.
//!
//! - [`rule`] — a rule as configured, parsed and checked at startup.
//! - [`engine`] — the pure state machine: debounce (`for`), one open alert per rule and
//!   device, cooldown.
//! - [`AlertFeed`] / [`AlertTask`] — the broker hook hands what devices publish and their
//!   connects/disconnects to the alert task (never blocking the router); the task judges,
//!   ticks once a second and publishes.

pub mod engine;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use crate::alert_event::OpenAlerts;
pub use crate::alert_rule::{AlertRule, Severity};
pub use engine::{AlertEvent, AlertState, Engine, Observation};

use crate::alert_event::ReleaseListener;
use crate::broker::tap::{Seen, Tap};
use crate::broker::GatewayLink;
use crate::messages::Replies;
use crate::outbox::{Outbox, ToCloud};
use crate::store::ShadowStore;
use crate::topics::{Route, ShadowTopic};
use crate::users::{Directory, Preferences};

/// Observations waiting for the alert task; beyond this they are dropped (counted), so a
/// stalled task can never hold up the router or grow memory without bound.
const FEED_CAPACITY: usize = 10_000;
const TICK: Duration = Duration::from_secs(1);

/// What the broker hook passes on: raw, decoded by the alert task, not the router.
enum Raw {
    Telemetry {
        device_id: String,
        kind: String,
        payload: Bytes,
    },
    Reported {
        device_id: String,
        payload: Bytes,
    },
    Connection {
        device_id: String,
        connected: bool,
    },
    Preferences {
        user_id: String,
        payload: Bytes,
    },
    /// Another gateway serves the device now.
    Released {
        device_id: String,
    },
}

/// The hook's handle: cheap, non-blocking.
#[derive(Clone)]
pub struct AlertFeed {
    tx: flume::Sender<Raw>,
    dropped: Arc<AtomicUsize>,
    /// There are rules: readings and reports are worth passing on.
    judges: bool,
}

/// The task's end of the feed.
pub struct AlertInbox {
    rx: flume::Receiver<Raw>,
}

/// A feed for `engine`'s rules (and for users' preferences).
pub fn feed(engine: &Engine) -> (AlertFeed, AlertInbox) {
    let (tx, rx) = flume::bounded(FEED_CAPACITY);
    (
        AlertFeed {
            tx,
            dropped: Arc::default(),
            judges: !engine.is_empty(),
        },
        AlertInbox { rx },
    )
}

impl Tap for AlertFeed {
    /// A publication a device made (already past the ACL); stores nothing.
    fn on_publish(&self, seen: &Seen<'_>) -> bool {
        if seen.internal {
            return false;
        }
        let payload = seen.payload;
        let raw = match seen.route {
            Some(Route::UserPreferences { user_id }) => Raw::Preferences {
                user_id: user_id.to_string(),
                payload: payload.clone(),
            },
            _ if !self.judges => return false,
            Some(Route::Telemetry { device_id, kind }) => Raw::Telemetry {
                device_id: device_id.to_string(),
                kind: kind.to_string(),
                payload: payload.clone(),
            },
            Some(Route::Shadow {
                device_id,
                kind: ShadowTopic::Reported,
            }) => Raw::Reported {
                device_id: device_id.to_string(),
                payload: payload.clone(),
            },
            _ => return false,
        };
        self.send(raw);
        false
    }

    fn on_connection(&self, device_id: &str, connected: bool) {
        if !self.judges {
            return;
        }
        self.send(Raw::Connection {
            device_id: device_id.to_string(),
            connected,
        });
    }
}

impl ReleaseListener for AlertFeed {
    /// Another gateway claimed the device (the shadow service released it): a heater
    /// that moved would otherwise leave an `offline` alert here that nothing clears.
    fn released(&self, device_id: &str) {
        if self.judges {
            self.send(Raw::Released {
                device_id: device_id.to_string(),
            });
        }
    }
}

impl AlertFeed {
    fn send(&self, raw: Raw) {
        if self.tx.try_send(raw).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped % 1000 == 0 {
                tracing::warn!(dropped, "alert task behind: observations dropped");
            }
        }
    }
}

/// Decodes what the hook passed on; malformed payloads were already answered or logged
/// by the shadow service and the ingest, so they are skipped quietly here.
fn observation(raw: Raw) -> Option<Observation> {
    Some(match raw {
        Raw::Preferences { .. } | Raw::Released { .. } => return None,
        Raw::Telemetry {
            device_id,
            kind,
            payload,
        } => Observation::Telemetry {
            device_id,
            kind,
            value: crate::telemetry::decode(&payload).ok()?.value,
        },
        Raw::Reported { device_id, payload } => {
            let (_, request) = crate::codec::decode_request(&payload).ok()?;
            Observation::Reported {
                device_id,
                state: serde_json::Value::Object(request.state?),
            }
        }
        Raw::Connection {
            device_id,
            connected,
        } => Observation::Connection {
            device_id,
            connected,
        },
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A user's app set the user's preferences: applied now, stored in MongoDB `users`.
fn apply_preferences(user_id: String, payload: &[u8], users: &Directory, outbox: Option<&Outbox>) {
    let preferences = crate::codec::decode_value(payload)
        .map_err(|e| e.to_string())
        .and_then(|(_, value)| {
            serde_json::from_value::<Preferences>(value).map_err(|e| e.to_string())
        });
    let preferences = match preferences {
        Ok(preferences) => preferences,
        Err(e) => {
            tracing::warn!(user_id, error = %e, "ignored malformed preferences (expected {{\"severities\": [\"critical\", …]}})");
            return;
        }
    };
    if !users.set_preferences(&user_id, preferences.clone()) {
        tracing::warn!(
            user_id,
            "preferences for a user not in MongoDB `users`; ignored"
        );
        return;
    }
    tracing::info!(user_id, ?preferences, "user preferences changed");
    if let Some(outbox) = outbox {
        match outbox.push(ToCloud::Preferences {
            user_id,
            preferences,
        }) {
            Ok(_) => outbox.wake(),
            Err(e) => tracing::error!(error = %e, "could not queue preferences for MongoDB"),
        }
    }
}

/// The alert task: judges observations, ticks, publishes and stores every event.
pub struct AlertTask {
    pub engine: Engine,
    pub inbox: AlertInbox,
    /// The internal link `iotsphere:alerts`.
    pub link: GatewayLink,
    pub replies: Replies,
    /// Set with an uplink: alerts and preferences go to MongoDB through it.
    pub outbox: Option<Outbox>,
    pub users: Directory,
    pub open: OpenAlerts,
    /// Which clients are devices (presence matters for them, not for apps and services).
    pub store: ShadowStore,
}

impl AlertTask {
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(TICK);
        loop {
            let events = tokio::select! {
                raw = self.inbox.rx.recv_async() => match raw {
                    Ok(Raw::Preferences { user_id, payload }) => {
                        apply_preferences(user_id, &payload, &self.users, self.outbox.as_ref());
                        continue;
                    }
                    Ok(Raw::Connection { device_id, .. }) if !self.store.contains(&device_id) => {
                        continue
                    }
                    Ok(Raw::Released { device_id }) => self.engine.forget(&device_id, now_ms()),
                    Ok(raw) => match observation(raw) {
                        Some(observation) => self.engine.observe(now_ms(), &observation),
                        None => continue,
                    },
                    Err(_) => return,
                },
                _ = ticker.tick() => self.engine.tick(now_ms()),
            };
            if events.is_empty() {
                continue;
            }
            self.open.set(self.engine.open_alerts());
            for event in events {
                self.announce(event);
            }
        }
    }

    /// Logs, publishes (batch, system, owners' notifications) and stores one event.
    fn announce(&mut self, event: AlertEvent) {
        tracing::info!(
            rule = %event.rule,
            device_id = %event.device_id,
            severity = ?event.severity,
            state = ?event.state,
            value = %event.value,
            "alert"
        );
        let notifications = self
            .users
            .recipients(&event.device_id, event.severity)
            .into_iter()
            .map(|user_id| self.replies.notification(&user_id, &event));
        let published: Vec<_> = self
            .replies
            .alert(&event)
            .into_iter()
            .chain(notifications)
            .collect();
        if let Err(e) = self.link.publish_all(published) {
            tracing::warn!(error = %e, "could not publish an alert");
        }
        if let Some(outbox) = &self.outbox {
            match outbox.push(ToCloud::Alert(event)) {
                Ok(_) => outbox.wake(),
                Err(e) => tracing::error!(error = %e, "could not queue an alert for MongoDB"),
            }
        }
    }
}
