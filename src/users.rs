//! Users and the devices they own, from MongoDB `users`
//! (`{_id: userId, devices: [deviceId, …], preferences: {severities: [...]}}`), kept in
//! memory for the ACL (a user's app sees only its own topics and devices) and for
//! notifications (the alerts of a user's devices go to `users/{userId}/notifications`).
//! The uplink fills it and keeps it current ([`crate::uplink::users`]); without an uplink
//! it stays empty and nobody is a user.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::alert_event::Severity;

/// What a user chose: which alert severities reach `users/{id}/notifications`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// `None`: every severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severities: Option<BTreeSet<Severity>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub devices: BTreeSet<String>,
    pub preferences: Preferences,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, User>,
    /// device id → user ids owning it.
    owners: HashMap<String, BTreeSet<String>>,
}

/// Shared, cheap to clone; reads are lock-and-lookup (the ACL calls it from the router).
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<Inner>>);

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything (a full load).
    pub fn replace_all(&self, users: impl IntoIterator<Item = (String, User)>) {
        let mut inner = self.write();
        inner.users.clear();
        inner.owners.clear();
        for (id, user) in users {
            insert(&mut inner, id, user);
        }
    }

    /// Adds or replaces one user.
    pub fn upsert(&self, id: String, user: User) {
        let mut inner = self.write();
        remove(&mut inner, &id);
        insert(&mut inner, id, user);
    }

    pub fn remove(&self, id: &str) {
        remove(&mut self.write(), id);
    }

    pub fn is_user(&self, id: &str) -> bool {
        self.read().users.contains_key(id)
    }

    pub fn owns(&self, user_id: &str, device_id: &str) -> bool {
        self.read()
            .users
            .get(user_id)
            .is_some_and(|user| user.devices.contains(device_id))
    }

    /// The users owning `device_id` who want alerts of `severity`.
    pub fn recipients(&self, device_id: &str, severity: Severity) -> Vec<String> {
        let inner = self.read();
        let Some(owners) = inner.owners.get(device_id) else {
            return Vec::new();
        };
        owners
            .iter()
            .filter(|id| {
                inner.users.get(*id).is_some_and(|user| {
                    user.preferences
                        .severities
                        .as_ref()
                        .is_none_or(|wanted| wanted.contains(&severity))
                })
            })
            .cloned()
            .collect()
    }

    /// Applies preferences the user's app published (the uplink stores them too).
    pub fn set_preferences(&self, user_id: &str, preferences: Preferences) -> bool {
        match self.write().users.get_mut(user_id) {
            Some(user) => {
                user.preferences = preferences;
                true
            }
            None => false,
        }
    }
}

fn insert(inner: &mut Inner, id: String, user: User) {
    for device in &user.devices {
        inner
            .owners
            .entry(device.clone())
            .or_default()
            .insert(id.clone());
    }
    inner.users.insert(id, user);
}

fn remove(inner: &mut Inner, id: &str) {
    if let Some(old) = inner.users.remove(id) {
        for device in &old.devices {
            if let Some(owners) = inner.owners.get_mut(device) {
                owners.remove(id);
                if owners.is_empty() {
                    inner.owners.remove(device);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(devices: &[&str]) -> User {
        User {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            preferences: Preferences::default(),
        }
    }

    #[test]
    fn owners_follow_upserts_and_removals() {
        let directory = Directory::default();
        directory.replace_all([
            ("alice".to_string(), user(&["h1", "h2"])),
            ("bob".to_string(), user(&["h2"])),
        ]);
        assert_eq!(directory.recipients("h2", Severity::Info), ["alice", "bob"]);
        assert!(directory.owns("alice", "h1") && !directory.owns("bob", "h1"));
        directory.upsert("alice".into(), user(&["h3"]));
        assert_eq!(directory.recipients("h2", Severity::Info), ["bob"]);
        assert!(
            !directory.owns("alice", "h1"),
            "ownership moved with the new document"
        );
        directory.remove("bob");
        assert!(directory.recipients("h2", Severity::Info).is_empty());
        assert!(!directory.is_user("bob"));
    }

    #[test]
    fn preferences_filter_severities() {
        let directory = Directory::default();
        directory.replace_all([("alice".to_string(), user(&["h1"]))]);
        let critical_only = Preferences {
            severities: Some([Severity::Critical].into()),
        };
        assert!(directory.set_preferences("alice", critical_only));
        assert!(directory.recipients("h1", Severity::Warning).is_empty());
        assert_eq!(directory.recipients("h1", Severity::Critical), ["alice"]);
        assert!(!directory.set_preferences("nobody", Preferences::default()));
    }
}
