//! SIGHUP: re-read the configuration file and apply what can change while running.
//!
//! Applied live: `log.level`, `shadow.*` (limits, rate, local_wins), `auth.services` (ACL roles),
//! `gateway.metrics_interval_secs`, and the credentials file's contents. Everything else
//! (listen addresses, `data_dir`, the uplink, …) is compared with the running
//! configuration and each changed key is logged as needing a restart; the running value
//! stays. A file with problems changes nothing: its problems are logged and the running
//! configuration stays in force.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::auth::Access;
use crate::config::GatewayConfig;
use crate::logging::LogLevel;

/// Whether a changed key takes effect without a restart.
fn is_live(key: &str) -> bool {
    key == "log.level"
        || key == "auth.services"
        || key == "gateway.metrics_interval_secs"
        || key.starts_with("shadow.")
}

/// The keys that differ between two configurations, split by whether they apply live.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub live: Vec<String>,
    pub needs_restart: Vec<String>,
}

impl Changes {
    pub fn between(running: &GatewayConfig, fresh: &GatewayConfig) -> Changes {
        let (running, fresh) = (leaves(running), leaves(fresh));
        let mut changes = Changes::default();
        for key in running.keys().chain(fresh.keys()) {
            if running.get(key) == fresh.get(key)
                || changes.live.contains(key)
                || changes.needs_restart.contains(key)
            {
                continue;
            }
            if is_live(key) {
                changes.live.push(key.clone());
            } else {
                changes.needs_restart.push(key.clone());
            }
        }
        changes
    }
}

/// Dotted key → value; arrays (e.g. `auth.services`) are one value.
fn leaves(config: &GatewayConfig) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(Value::Object(sections)) = serde_json::to_value(config) {
        for (section, value) in sections {
            match value {
                Value::Object(fields) => {
                    for (field, value) in fields {
                        out.insert(format!("{section}.{field}"), value);
                    }
                }
                other => {
                    out.insert(section, other);
                }
            }
        }
    }
    out
}

/// The running configuration with the live parts of `fresh` applied; restart-only keys keep
/// their running values (so the next reload reports them again until a restart).
fn with_live_parts(running: &GatewayConfig, fresh: &GatewayConfig) -> GatewayConfig {
    let mut next = running.clone();
    next.log.level = fresh.log.level.clone();
    next.shadow = fresh.shadow.clone();
    next.auth.services = fresh.auth.services.clone();
    next.gateway.metrics_interval_secs = fresh.gateway.metrics_interval_secs;
    next
}

/// What a reload acts on.
pub struct Reloader {
    pub path: PathBuf,
    pub running: watch::Sender<GatewayConfig>,
    /// `None` when logging was set up elsewhere (the level then cannot change).
    pub log: Option<LogLevel>,
    /// `None` in anonymous mode (no credentials, no ACL).
    pub access: Option<Access>,
}

impl Reloader {
    /// Reloads on every SIGHUP until the process ends. `hangup` is made at startup, before
    /// the listeners open: until a handler exists, SIGHUP's default action ends the process.
    pub async fn run(self, mut hangup: Signal) {
        while hangup.recv().await.is_some() {
            self.reload();
        }
    }

    /// One reload: credentials, then the configuration file.
    pub fn reload(&self) {
        if let Some(access) = &self.access {
            match access.reload() {
                Ok(count) => {
                    tracing::info!(target: "audit", credentials = count, "credentials reloaded (SIGHUP)")
                }
                Err(e) => {
                    tracing::error!(error = %e, "credentials not reloaded; the previous ones stay in force")
                }
            }
        }
        let fresh = match GatewayConfig::load(&self.path) {
            Ok(fresh) => fresh,
            Err(problems) => {
                tracing::error!(
                    file = %self.path.display(),
                    problems = %problems,
                    "configuration not reloaded: the file has problems; the running configuration stays in force"
                );
                return;
            }
        };
        let running = self.running.borrow().clone();
        let changes = Changes::between(&running, &fresh);
        for key in &changes.needs_restart {
            tracing::warn!(key = %key, "changed in the configuration file; needs a restart to take effect");
        }
        if fresh.log.level != running.log.level {
            match self.log.as_ref().map(|log| log.set(&fresh.log.level)) {
                Some(Ok(true)) => {}
                Some(Ok(false)) => {
                    tracing::warn!("log.level not applied: RUST_LOG is set and wins")
                }
                Some(Err(e)) => tracing::error!(error = %e, "log.level not applied"),
                None => tracing::warn!("log.level not applied: logging was set up elsewhere"),
            }
        }
        if fresh.auth.services != running.auth.services {
            if let Some(access) = &self.access {
                access.set_services(&fresh.auth.services);
            }
        }
        self.running.send_replace(with_live_parts(&running, &fresh));
        tracing::info!(
            applied = ?changes.live,
            needs_restart = ?changes.needs_restart,
            "configuration reloaded (SIGHUP)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceRole;

    #[test]
    fn changed_keys_are_split_into_live_and_restart() {
        let running = GatewayConfig::default();
        let mut fresh = running.clone();
        fresh.log.level = "debug".into();
        fresh.shadow.rate_per_sec = 1;
        fresh.auth.services.push(ServiceRole {
            name: "app".into(),
            ..ServiceRole::default()
        });
        fresh.mqtt.listen = Some("0.0.0.0:1884".into());
        fresh.gateway.data_dir = "/var/lib/x".into();
        assert_eq!(
            Changes::between(&running, &fresh),
            Changes {
                live: vec![
                    "auth.services".into(),
                    "log.level".into(),
                    "shadow.rate_per_sec".into()
                ],
                needs_restart: vec!["gateway.data_dir".into(), "mqtt.listen".into()],
            }
        );
        assert_eq!(Changes::between(&running, &running), Changes::default());
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let running = GatewayConfig::default();
        let mut fresh = running.clone();
        fresh.shadow.max_depth = 3;
        fresh.gateway.metrics_interval_secs = 5;
        fresh.http.listen = Some("127.0.0.1:1".into());
        let next = with_live_parts(&running, &fresh);
        assert_eq!(next.shadow.max_depth, 3);
        assert_eq!(next.gateway.metrics_interval_secs, 5);
        assert_eq!(next.http.listen, running.http.listen);
        assert_eq!(
            Changes::between(&next, &fresh).needs_restart,
            ["http.listen"]
        );
    }
}
