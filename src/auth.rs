//! Who may connect, and to which topics (docs/DESIGN.md §10).
//!
//! - **Credentials file**: one `name:argon2-hash` per line (device ids and service names),
//!   never a plain password; managed with `iotsphere-gateway credentials add|remove|list`
//!   and reloaded on SIGHUP without dropping connections.
//! - **Identity**: with `auth.mode = "password"` the MQTT username (its password checked by
//!   the bounded [`Verifier`], after the [`LoginBackoff`] of its address), with
//!   `auth.mode = "certificate"` the CN of the client certificate (verified against
//!   `mqtt.client_ca` by the TLS handshake), is the name of an `[[auth.services]]` entry,
//!   of a user in MongoDB `users`, or a device id (in that order). A device's client id is
//!   its id; a service's or user's is its name or `{name}:{suffix}` (suffix 1-64 of
//!   `A-Z a-z 0-9 _ -`), so a client id names one identity only and nobody takes over a
//!   device's (or its session). The broker keeps the identity with the connection, its will
//!   and its persistent session ([`Role::identity`]). Failures are refused at CONNECT and
//!   logged to the `audit` target with the peer's address (once per episode per address).
//! - **Will**: checked at CONNECT like a publish of the connecting identity; a will it
//!   may not publish is refused with CONNACK 5 "not authorized".
//! - **ACL**, enforced inside the broker before a message is routed (rumqttd publish hook):
//!   a device publishes only to its own request topics (`shadow/reported`, `shadow/get`,
//!   `shadow/refused`, `telemetry/…`, `commands/response`) and subscribes only under its own
//!   `ROOT/devices/{id}/`; a service publishes and subscribes within its configured
//!   filters; a user's app publishes only `users/{own id}/preferences` and subscribes only
//!   under `users/{own id}/` and to the `document`, `delta` and `telemetry` topics of the
//!   devices the user owns. Nobody but the gateway publishes `delta`, `document` or
//!   `rejected`.
//!   A refused publish is acknowledged and dropped (as mosquitto does under MQTT 3.1.1), a
//!   refused subscription gets SUBACK failure; both are audited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::audit::{Cut, Episodes};
use crate::config::ServiceRole;
use crate::login_backoff::LoginBackoff;
use crate::topics::{self, Route, ShadowTopic, Topics};
use crate::users::Directory;
use crate::verifier::{Verified, Verifier, MAX_MEMORY_BLOCKS};

/// Prefix of the gateway's own broker links; refused for external clients.
pub const INTERNAL_CLIENT_PREFIX: &str = "iotsphere:";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("credentials file {path}:{line}: expected `name:argon2-hash`")]
    Malformed { path: String, line: usize },
    #[error("`{0}` is not a valid name (1-64 of A-Z a-z 0-9 _ -)")]
    BadName(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("could not start the password check threads: {0}")]
    Verifier(std::io::Error),
}

/// Argon2id sized for a Raspberry Pi: 8 MiB, 2 passes — about 20 ms per check on a Pi 4
/// (a reconnect storm of 1,000 heaters costs seconds, not minutes), still far beyond what
/// offline guessing of a leaked file can afford at scale.
fn hasher() -> Argon2<'static> {
    let params = Params::new(8 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// The credentials file: name → argon2 hash (PHC string), in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    entries: Vec<(String, String)>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(AuthError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || AuthError::Malformed {
                path: path.display().to_string(),
                line: index + 1,
            };
            let (name, hash) = line.split_once(':').ok_or_else(malformed)?;
            if !topics::is_valid_id(name) || !is_checkable(hash) {
                return Err(malformed());
            }
            entries.push((name.to_string(), hash.to_string()));
        }
        Ok(Credentials { entries })
    }

    /// Writes atomically (temp file + rename), readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::from("# iotsphere-gateway credentials: name:argon2id-hash (manage with `iotsphere-gateway credentials`)\n");
        for (name, hash) in &self.entries {
            text.push_str(&format!("{name}:{hash}\n"));
        }
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, text).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&temp, path).map_err(io)
    }

    /// Adds or replaces `name`'s password.
    pub fn set(&mut self, name: &str, password: &str) -> Result<(), AuthError> {
        if !topics::is_valid_id(name) {
            return Err(AuthError::BadName(name.to_string()));
        }
        let hash = hash_password(password)?;
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = hash,
            None => self.entries.push((name.to_string(), hash)),
        }
        Ok(())
    }

    /// Removes `name`; false when it was not there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name);
        self.entries.len() != before
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(name, _)| name.as_str())
    }

    /// The stored hash of `name`.
    pub fn hash_of(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.as_str())
    }
}

/// An argon2id hash the [`Verifier`] can check (at most its 8 MiB per check).
fn is_checkable(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        parsed.algorithm == argon2::ARGON2ID_IDENT
            && Params::try_from(&parsed).is_ok_and(|p| p.block_count() <= MAX_MEMORY_BLOCKS)
    })
}

/// What an authenticated client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Device(String),
    Service(String),
    User(String),
}

impl Role {
    /// The label the broker keeps for this identity (`device:heater-1`, `service:app`,
    /// `user:alice`): a persistent session is resumed, and a connected client id taken
    /// over, only by the same label.
    pub fn identity(&self) -> String {
        match self {
            Role::Device(name) => format!("device:{name}"),
            Role::Service(name) => format!("service:{name}"),
            Role::User(name) => format!("user:{name}"),
        }
    }

    /// The role an [`identity`](Self::identity) label names.
    pub fn from_identity(identity: &str) -> Option<Role> {
        let (kind, name) = identity.split_once(':')?;
        let name = name.to_string();
        match kind {
            "device" => Some(Role::Device(name)),
            "service" => Some(Role::Service(name)),
            "user" => Some(Role::User(name)),
            _ => None,
        }
    }

    /// May this identity connect with `client_id`? A device with its id only; a service
    /// or user with its name or `{name}:{suffix}`.
    fn fits(&self, client_id: &str) -> bool {
        match self {
            Role::Device(name) => client_id == name,
            Role::Service(name) | Role::User(name) => {
                client_id == name
                    || client_id
                        .strip_prefix(name.as_str())
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(topics::is_valid_id)
            }
        }
    }
}

/// A client asking to connect.
#[derive(Debug, Clone)]
pub struct ConnectAttempt {
    pub client_id: String,
    /// User name and password from CONNECT, if any.
    pub login: Option<(String, String)>,
    pub peer: SocketAddr,
    /// DER of the client certificate the TLS handshake verified against `mqtt.client_ca`.
    pub certificate: Option<Vec<u8>>,
    /// The topic of the CONNECT's last will, if it has one.
    pub will_topic: Option<Vec<u8>>,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CONNACK 4 "bad user name or password": credentials, identity or client id.
    BadLogin,
    /// CONNACK 5 "not authorized": a will the identity may not publish.
    NotAuthorized,
    /// CONNACK 3 "server unavailable": every password check busy; the client retries.
    Busy,
}

/// The lab mode's CONNECT check: anyone, except the gateway's own client ids (a device
/// using one would take over an internal link). Audited like the secure modes.
pub fn admit_anonymous(attempt: &ConnectAttempt) -> bool {
    let (client_id, peer) = (Cut(&attempt.client_id), attempt.peer);
    if attempt.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
        tracing::warn!(target: "audit", %client_id, %peer, reason = "reserved client id", "connection refused");
        return false;
    }
    tracing::info!(target: "audit", %client_id, %peer, "connected (anonymous)");
    true
}

/// Quiet time after which a repeated refusal from one address is logged again.
const REFUSAL_EPISODE: Duration = Duration::from_secs(60);
/// Addresses (with a reason) whose refusals are being counted instead of logged.
const REFUSAL_EPISODES: usize = 10_000;

/// How clients prove who they are.
enum Proof {
    Password {
        file: PathBuf,
        credentials: RwLock<Credentials>,
        verifier: Verifier,
    },
    /// The TLS handshake verified the chain; the CN names the client.
    Certificate,
}

/// Authentication and topic ACL, shared by the broker's connect handler and publish hook.
#[derive(Clone)]
pub struct Access {
    inner: Arc<AccessInner>,
}

struct AccessInner {
    topics: Topics,
    proof: Proof,
    /// Replaced as a whole by a SIGHUP reload of `[[auth.services]]`.
    services: RwLock<HashMap<String, ServiceRole>>,
    users: Directory,
    backoff: LoginBackoff,
    /// Refusals per address and reason: one audit line per episode.
    refusals: Episodes<(IpAddr, &'static str)>,
    /// "Every password check busy": one audit line per episode.
    busy: Episodes<()>,
}

impl Access {
    /// Password mode: identities from the credentials file.
    /// `remembered`: how many verified logins the [`Verifier`] keeps (one per client the
    /// broker can hold is enough for a reconnect storm of all of them).
    pub fn load(
        topics: Topics,
        credentials_file: &Path,
        services: &[ServiceRole],
        users: Directory,
        remembered: usize,
    ) -> Result<Access, AuthError> {
        let credentials = Credentials::load(credentials_file)?;
        let proof = Proof::Password {
            file: credentials_file.to_path_buf(),
            credentials: RwLock::new(credentials),
            verifier: Verifier::start(remembered).map_err(AuthError::Verifier)?,
        };
        Ok(Access::new(topics, proof, services, users))
    }

    /// Certificate mode: identities from verified client certificates.
    pub fn certificates(topics: Topics, services: &[ServiceRole], users: Directory) -> Access {
        Access::new(topics, Proof::Certificate, services, users)
    }

    fn new(topics: Topics, proof: Proof, services: &[ServiceRole], users: Directory) -> Access {
        Access {
            inner: Arc::new(AccessInner {
                topics,
                proof,
                users,
                services: RwLock::new(by_name(services)),
                backoff: LoginBackoff::default(),
                refusals: Episodes::new(REFUSAL_EPISODE, REFUSAL_EPISODES),
                busy: Episodes::new(REFUSAL_EPISODE, 1),
            }),
        }
    }

    /// Re-reads the credentials file (SIGHUP); connected clients stay connected. Returns
    /// how many entries it holds (0 in certificate mode, which has no file: certificate
    /// files are read at every TLS handshake).
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Proof::Password {
            file,
            credentials,
            verifier,
        } = &self.inner.proof
        else {
            return Ok(0);
        };
        let fresh = Credentials::load(file)?;
        let count = fresh.entries.len();
        *credentials.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        // A changed or removed password must not stay good in the cache.
        verifier.forget_all();
        Ok(count)
    }

    /// Replaces the service roles (SIGHUP). Connected services keep their session and get
    /// the new filters at their next publish or subscribe.
    pub fn set_services(&self, services: &[ServiceRole]) {
        *self
            .inner
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner()) = by_name(services);
    }

    /// Whether `name` is a service whose role passes `check` (false for unknown names).
    fn service_is(&self, name: &str, check: impl FnOnce(&ServiceRole) -> bool) -> bool {
        self.inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(check)
    }

    /// The CONNECT check: who the client is, whether its client id and will fit that
    /// identity. In password mode the password is checked by the bounded verifier (async:
    /// the caller's thread is never blocked by argon2).
    pub async fn authenticate(&self, attempt: &ConnectAttempt) -> Result<Role, Refusal> {
        let peer = attempt.peer;
        if attempt.client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return Err(self.refused(attempt, "reserved client id", Refusal::BadLogin));
        }
        if self.inner.backoff.blocked(peer.ip()).is_some() {
            // No password check at all while the address is in backoff.
            return Err(self.refused(
                attempt,
                "failed logins: address in backoff",
                Refusal::BadLogin,
            ));
        }
        let name = match &self.inner.proof {
            Proof::Password {
                credentials,
                verifier,
                ..
            } => {
                let Some((username, password)) = &attempt.login else {
                    return Err(self.failed(attempt, "no username and password"));
                };
                let stored = credentials
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .hash_of(username)
                    .map(str::to_string);
                match verifier.verify(username, stored.as_deref(), password).await {
                    Verified::Yes => username.clone(),
                    Verified::No => return Err(self.failed(attempt, "bad username or password")),
                    Verified::Busy => {
                        if let Some(before) = self.inner.busy.starts(()) {
                            tracing::warn!(target: "audit", client_id = %Cut(&attempt.client_id), %peer, refused_before = before, workers = verifier.workers(), queue = verifier.queue(), "connection refused: every password check busy (server unavailable); logged once per episode");
                        }
                        return Err(Refusal::Busy);
                    }
                }
            }
            Proof::Certificate => {
                let Some(certificate) = &attempt.certificate else {
                    return Err(self.failed(attempt, "no client certificate"));
                };
                match crate::certs::common_name(certificate) {
                    Some(cn) => cn,
                    None => {
                        return Err(
                            self.failed(attempt, "the client certificate has no readable CN")
                        )
                    }
                }
            }
        };
        let role = if self.service_is(&name, |_| true) {
            Role::Service(name)
        } else if self.inner.users.is_user(&name) {
            Role::User(name)
        } else if topics::is_valid_id(&name) && name != topics::BATCH {
            Role::Device(name)
        } else {
            return Err(self.failed(attempt, "not a device, service or user name"));
        };
        if !role.fits(&attempt.client_id) {
            return Err(self.failed(
                attempt,
                "client id not this identity's (a device: its id; a service or user: NAME or NAME:SUFFIX)",
            ));
        }
        if let Some(topic) = &attempt.will_topic {
            let allowed = std::str::from_utf8(topic)
                .is_ok_and(|topic| self.may_publish(&role, &attempt.client_id, Some(peer), topic));
            if !allowed {
                return Err(self.refused(
                    attempt,
                    "a will on a topic this identity may not publish",
                    Refusal::NotAuthorized,
                ));
            }
        }
        self.inner.backoff.succeeded(peer.ip());
        tracing::info!(target: "audit", client_id = %Cut(&attempt.client_id), ?role, %peer, "connected");
        Ok(role)
    }

    /// A failed login: counted for the address's backoff, audited, refused.
    fn failed(&self, attempt: &ConnectAttempt, why: &'static str) -> Refusal {
        let backoff = self.inner.backoff.failed(attempt.peer.ip());
        if !backoff.is_zero() {
            tracing::debug!(target: "audit", peer = %attempt.peer, ?backoff, "address in backoff after failed logins");
        }
        self.refused(attempt, why, Refusal::BadLogin)
    }

    /// Audits a refusal, once per episode per address and reason.
    fn refused(&self, attempt: &ConnectAttempt, why: &'static str, refusal: Refusal) -> Refusal {
        if let Some(before) = self.inner.refusals.starts((attempt.peer.ip(), why)) {
            let username = attempt.login.as_ref().map(|(username, _)| Cut(username));
            tracing::warn!(target: "audit", client_id = %Cut(&attempt.client_id), username = username.map(tracing::field::display), peer = %attempt.peer, reason = why, refused_before = before, "connection refused");
        }
        refusal
    }

    /// May `role` publish to `topic`? Refusals are audited.
    pub fn may_publish(
        &self,
        role: &Role,
        client_id: &str,
        peer: Option<SocketAddr>,
        topic: &str,
    ) -> bool {
        let route = self.inner.topics.parse(topic);
        self.may_publish_parsed(role, client_id, peer, topic, &route)
    }

    /// [`may_publish`](Self::may_publish) with the topic already parsed (the broker hook
    /// parses each PUBLISH once, for the ACL and its taps).
    pub fn may_publish_parsed(
        &self,
        role: &Role,
        client_id: &str,
        peer: Option<SocketAddr>,
        topic: &str,
        route: &Result<Route<'_>, topics::TopicError>,
    ) -> bool {
        let allowed = !self.is_gateway_only(topic, route)
            && match role {
                Role::Device(id) => match *route {
                    Ok(Route::Shadow { device_id, kind }) => {
                        device_id == id
                            && matches!(
                                kind,
                                ShadowTopic::Reported | ShadowTopic::Get | ShadowTopic::Refused
                            )
                    }
                    Ok(Route::Telemetry { device_id, .. })
                    | Ok(Route::CommandResponse { device_id }) => device_id == id,
                    _ => false,
                },
                Role::Service(name) => self.service_is(name, |s| {
                    s.publish.iter().any(|filter| filter_matches(filter, topic))
                }),
                Role::User(id) => *route == Ok(Route::UserPreferences { user_id: id }),
            };
        if !allowed {
            let peer = peer.map_or_else(|| "unknown".into(), |peer| peer.to_string());
            tracing::warn!(target: "audit", client_id = %Cut(client_id), ?role, %peer, topic = %Cut(topic), "publish denied");
        }
        allowed
    }

    /// What only the gateway publishes: shadow `delta`, `document` and `rejected`, and
    /// everything under `system/`, `devices/batch/` and `users/+/notifications`.
    fn is_gateway_only(&self, topic: &str, route: &Result<Route<'_>, topics::TopicError>) -> bool {
        let gateway_shadow = matches!(
            route,
            Ok(Route::Shadow {
                kind: ShadowTopic::Delta | ShadowTopic::Document | ShadowTopic::Rejected,
                ..
            })
        );
        let Some(rest) = topic
            .strip_prefix(self.inner.topics.root())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return gateway_shadow;
        };
        gateway_shadow
            || rest.starts_with("system/")
            || rest.starts_with(&format!("devices/{}/", topics::BATCH))
            || rest
                .strip_prefix("users/")
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(_, kind)| kind == "notifications")
    }

    /// May `role` subscribe to `filter`? A shared subscription (`$share/{group}/{filter}`)
    /// is judged by its filter. Refusals are audited.
    pub fn may_subscribe(
        &self,
        role: &Role,
        client_id: &str,
        peer: Option<SocketAddr>,
        filter: &str,
    ) -> bool {
        let inner = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, inner)) if !group.is_empty() && !group.contains(['+', '#']) => {
                    Some(inner)
                }
                _ => None,
            },
            None => Some(filter),
        };
        let allowed = inner.is_some_and(|filter| match role {
            Role::Device(id) => under_without_wildcard(
                filter,
                &format!("{}/devices/{id}/", self.inner.topics.root()),
            ),
            Role::Service(name) => self.service_is(name, |s| {
                s.subscribe
                    .iter()
                    .any(|allowed| filter_covers(allowed, filter))
            }),
            Role::User(id) => self.user_may_subscribe(id, filter),
        });
        if !allowed {
            let peer = peer.map_or_else(|| "unknown".into(), |peer| peer.to_string());
            tracing::warn!(target: "audit", client_id = %Cut(client_id), ?role, %peer, filter = %Cut(filter), "subscribe denied");
        }
        allowed
    }
}

impl Access {
    /// Under `users/{id}/`, or what the devices the user owns publish for apps: their
    /// `document`, `delta` and telemetry (no wildcard in place of the device).
    fn user_may_subscribe(&self, user_id: &str, filter: &str) -> bool {
        let root = self.inner.topics.root();
        if under_without_wildcard(filter, &format!("{root}/users/{user_id}/")) {
            return true;
        }
        let Some(rest) = filter.strip_prefix(&format!("{root}/devices/")) else {
            return false;
        };
        let Some((device_id, tail)) = rest.split_once('/') else {
            return false;
        };
        let readable = matches!(tail, "shadow/document" | "shadow/delta" | "telemetry/#")
            || tail
                .strip_prefix("telemetry/")
                .is_some_and(topics::is_valid_id);
        readable && topics::is_valid_id(device_id) && self.inner.users.owns(user_id, device_id)
    }
}

fn by_name(services: &[ServiceRole]) -> HashMap<String, ServiceRole> {
    services
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect()
}

/// Is `filter` under `prefix`, with no wildcard standing in for any level of `prefix`?
fn under_without_wildcard(filter: &str, prefix: &str) -> bool {
    filter.starts_with(prefix) && !filter[..prefix.len()].contains(['+', '#'])
}

/// MQTT topic matching: does `filter` match `topic`?
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (literal, Some(t)) if literal == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Does the allowed filter cover every topic the requested filter can match?
pub fn filter_covers(allowed: &str, requested: &str) -> bool {
    let mut requested_levels = requested.split('/');
    for level in allowed.split('/') {
        match (level, requested_levels.next()) {
            ("#", _) => return true,
            ("+", Some(r)) if r != "#" => {}
            (literal, Some(r)) if literal == r && r != "+" && r != "#" => {}
            _ => return false,
        }
    }
    requested_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(dir: &Path) -> Access {
        let file = dir.join("credentials");
        let mut credentials = Credentials::default();
        for name in ["heater-1", "heater-2", "cloud-app", "alice"] {
            credentials.set(name, &format!("pw-{name}")).expect("hash");
        }
        credentials.save(&file).expect("save");
        let services = [ServiceRole {
            name: "cloud-app".into(),
            publish: vec![
                "iotsphere/devices/+/shadow/desired".into(),
                "iotsphere/devices/+/shadow/delta".into(),
                "iotsphere/#".into(),
            ],
            subscribe: vec![
                "iotsphere/devices/+/shadow/document".into(),
                "iotsphere/devices/+/telemetry/#".into(),
            ],
        }];
        let users = Directory::default();
        let alice = crate::users::User {
            devices: ["heater-1".to_string()].into(),
            ..Default::default()
        };
        users.replace_all([("alice".to_string(), alice)]);
        Access::load(
            Topics::new("iotsphere").expect("root"),
            &file,
            &services,
            users,
            100,
        )
        .expect("load")
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

    fn login(client_id: &str, username: &str, password: &str) -> ConnectAttempt {
        ConnectAttempt {
            client_id: client_id.into(),
            login: Some((username.into(), password.into())),
            peer: PEER,
            certificate: None,
            will_topic: None,
        }
    }

    fn device(id: &str) -> Role {
        Role::Device(id.into())
    }

    #[tokio::test]
    async fn a_users_app_sees_its_own_topics_and_devices_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        let app = access
            .authenticate(&login("alice:phone", "alice", "pw-alice"))
            .await
            .expect("alice");
        assert_eq!(app, Role::User("alice".into()));
        for (filter, allowed) in [
            ("iotsphere/users/alice/notifications", true),
            ("iotsphere/users/alice/#", true),
            ("iotsphere/users/bob/notifications", false),
            ("iotsphere/users/+/notifications", false),
            ("iotsphere/devices/heater-1/shadow/document", true),
            ("$share/g/iotsphere/devices/heater-1/shadow/document", true),
            ("iotsphere/devices/heater-1/telemetry/#", true),
            ("iotsphere/devices/heater-1/shadow/reported", false),
            ("iotsphere/devices/heater-2/shadow/document", false),
            ("$share/g/iotsphere/devices/heater-2/shadow/document", false),
            ("iotsphere/devices/+/shadow/document", false),
        ] {
            assert_eq!(
                access.may_subscribe(&app, "alice:phone", None, filter),
                allowed,
                "{filter}"
            );
        }
        let publish = |topic| access.may_publish(&app, "alice:phone", None, topic);
        assert!(publish("iotsphere/users/alice/preferences"));
        assert!(!publish("iotsphere/users/bob/preferences"));
        assert!(!publish("iotsphere/devices/heater-1/shadow/desired"));
    }

    #[test]
    fn the_file_holds_hashes_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("credentials");
        let mut credentials = Credentials::default();
        credentials.set("heater-1", "s3cret").expect("set");
        credentials.save(&file).expect("save");
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("s3cret") && text.contains("heater-1:$argon2id$"),
            "{text}"
        );
        let loaded = Credentials::load(&file).expect("load");
        let hash = loaded.hash_of("heater-1").expect("stored");
        let mut memory = vec![argon2::Block::new(); MAX_MEMORY_BLOCKS];
        assert!(crate::verifier::check(&mut memory, hash, "s3cret"));
        assert!(!crate::verifier::check(&mut memory, hash, "S3cret"));
        assert!(loaded.hash_of("heater-9").is_none());
        std::fs::write(&file, "heater-1 s3cret\n").expect("write");
        assert!(matches!(
            Credentials::load(&file),
            Err(AuthError::Malformed { line: 1, .. })
        ));
        // A hash the bounded verifier could not check (64 MiB) is refused at load.
        std::fs::write(
            &file,
            "heater-1:$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2Vmq9B3M8uSNwSCJ8+8LJ7dXKTQ2a2P+ahEBnq5w3q8\n",
        )
        .expect("write");
        assert!(matches!(
            Credentials::load(&file),
            Err(AuthError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Credentials::default().set("a b", "x"),
            Err(AuthError::BadName(_))
        ));
        assert!(matches!(
            Credentials::default().set("a", ""),
            Err(AuthError::EmptyPassword)
        ));
    }

    #[tokio::test]
    async fn certificate_identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::certs::generate_dev(dir.path(), &["heater-1".into(), "cloud-app".into()])
            .expect("certs");
        let der = |name: &str| {
            let pem = std::fs::read(dir.path().join(format!("{name}.crt"))).expect("read");
            let cert = rustls_pemfile::certs(&mut pem.as_slice()).next();
            cert.expect("one").expect("PEM").as_ref().to_vec()
        };
        let (heater, app) = (der("heater-1"), der("cloud-app"));
        let services = [ServiceRole {
            name: "cloud-app".into(),
            ..ServiceRole::default()
        }];
        let access = Access::certificates(
            Topics::new("iotsphere").expect("root"),
            &services,
            Directory::default(),
        );
        let attempt = |client_id: &str, certificate: Option<&Vec<u8>>| ConnectAttempt {
            client_id: client_id.into(),
            login: None,
            peer: PEER,
            certificate: certificate.cloned(),
            will_topic: None,
        };
        assert_eq!(
            access
                .authenticate(&attempt("heater-1", Some(&heater)))
                .await,
            Ok(device("heater-1"))
        );
        assert!(
            access
                .authenticate(&attempt("heater-2", Some(&heater)))
                .await
                .is_err(),
            "client id must equal the CN"
        );
        assert!(
            access
                .authenticate(&attempt("heater-1", None))
                .await
                .is_err(),
            "no certificate"
        );
        assert!(access
            .authenticate(&attempt("cloud-app:dashboard", Some(&app)))
            .await
            .is_ok());
        assert!(
            access
                .authenticate(&attempt("dashboard", Some(&app)))
                .await
                .is_err(),
            "a service's client id is under its name"
        );
        let heater = device("heater-1");
        assert!(access.may_publish(
            &heater,
            "heater-1",
            None,
            "iotsphere/devices/heater-1/shadow/reported"
        ));
        assert!(!access.may_publish(
            &heater,
            "heater-1",
            None,
            "iotsphere/devices/heater-2/shadow/reported"
        ));
        assert_eq!(access.reload().expect("nothing to reload"), 0);
    }

    #[tokio::test]
    async fn identities_and_client_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        let connect = |client_id: &'static str, username: &'static str, password: &'static str| {
            let access = access.clone();
            async move {
                access
                    .authenticate(&login(client_id, username, password))
                    .await
            }
        };
        assert_eq!(
            connect("heater-1", "heater-1", "pw-heater-1").await,
            Ok(device("heater-1"))
        );
        assert_eq!(
            connect("heater-1", "heater-1", "wrong").await,
            Err(Refusal::BadLogin)
        );
        assert!(
            connect("heater-2", "heater-1", "pw-heater-1")
                .await
                .is_err(),
            "a device's client id is its id"
        );
        for client_id in ["cloud-app", "cloud-app:replica-2"] {
            assert_eq!(
                connect(client_id, "cloud-app", "pw-cloud-app").await,
                Ok(Role::Service("cloud-app".into())),
                "{client_id}"
            );
        }
        for borrowed in [
            "heater-2",
            "any-client",
            "cloud-app:",
            "cloud-app:a/b",
            "cloud-appx",
            "iotsphere:gateway",
        ] {
            assert!(
                connect(borrowed, "cloud-app", "pw-cloud-app")
                    .await
                    .is_err(),
                "{borrowed}"
            );
        }
        assert!(
            connect("heater-2", "alice", "pw-alice").await.is_err(),
            "a user takes no device's id"
        );
    }

    #[tokio::test]
    async fn a_will_is_checked_like_a_publish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        let with_will = |topic: &str| ConnectAttempt {
            will_topic: Some(topic.as_bytes().to_vec()),
            ..login("heater-1", "heater-1", "pw-heater-1")
        };
        for (topic, verdict) in [
            (
                "iotsphere/devices/heater-1/telemetry/status",
                Ok(device("heater-1")),
            ),
            (
                "iotsphere/devices/heater-2/shadow/desired",
                Err(Refusal::NotAuthorized),
            ),
            (
                "iotsphere/devices/heater-2/commands/request",
                Err(Refusal::NotAuthorized),
            ),
            (
                "iotsphere/devices/heater-1/shadow/delta",
                Err(Refusal::NotAuthorized),
            ),
            ("iotsphere/system/status", Err(Refusal::NotAuthorized)),
        ] {
            assert_eq!(
                access.authenticate(&with_will(topic)).await,
                verdict,
                "{topic}"
            );
        }
    }

    #[tokio::test]
    async fn failed_logins_put_the_address_in_backoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        for _ in 0..=crate::login_backoff::FREE_FAILURES {
            assert!(access
                .authenticate(&login("heater-1", "heater-1", "guess"))
                .await
                .is_err());
        }
        // Now even the right password is refused from that address, without a check.
        let started = std::time::Instant::now();
        assert_eq!(
            access
                .authenticate(&login("heater-1", "heater-1", "pw-heater-1"))
                .await,
            Err(Refusal::BadLogin)
        );
        assert!(started.elapsed() < Duration::from_millis(5));
        let elsewhere = ConnectAttempt {
            peer: "192.0.2.1:5000".parse().expect("address"),
            ..login("heater-1", "heater-1", "pw-heater-1")
        };
        assert!(access.authenticate(&elsewhere).await.is_ok());
    }

    #[tokio::test]
    async fn reloaded_roles_apply_to_connected_services() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        let app = Role::Service("cloud-app".into());
        let telemetry = "iotsphere/devices/h1/telemetry/temperature";
        access.set_services(&[ServiceRole {
            name: "cloud-app".into(),
            publish: vec!["iotsphere/devices/+/telemetry/#".into()],
            subscribe: vec![],
        }]);
        assert!(access.may_publish(&app, "cloud-app", None, telemetry));
        assert!(!access.may_publish(
            &app,
            "cloud-app",
            None,
            "iotsphere/devices/h1/shadow/desired"
        ));
        access.set_services(&[]);
        assert!(
            !access.may_publish(&app, "cloud-app", None, telemetry),
            "a removed role allows nothing"
        );
    }

    #[test]
    fn device_and_service_acl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        let (heater, app) = (device("heater-1"), Role::Service("cloud-app".into()));
        let cases = [
            (&heater, "iotsphere/devices/heater-1/shadow/reported", true),
            (&heater, "iotsphere/devices/heater-1/shadow/get", true),
            (&heater, "iotsphere/devices/heater-1/shadow/refused", true),
            (&heater, "iotsphere/devices/heater-2/shadow/refused", false),
            (
                &heater,
                "iotsphere/devices/heater-1/telemetry/temperature",
                true,
            ),
            (
                &heater,
                "iotsphere/devices/heater-1/commands/response",
                true,
            ),
            (&heater, "iotsphere/devices/heater-1/shadow/desired", false),
            (&heater, "iotsphere/devices/heater-1/shadow/delta", false),
            (&heater, "iotsphere/devices/heater-2/shadow/reported", false),
            (&heater, "iotsphere/system/status", false),
            (&app, "iotsphere/devices/heater-2/shadow/desired", true),
            (&app, "iotsphere/devices/heater-2/shadow/delta", false),
            (&app, "iotsphere/devices/heater-2/shadow/reported", true),
            // Even `iotsphere/#` does not cover what only the gateway publishes.
            (&app, "iotsphere/system/status", false),
            (&app, "iotsphere/devices/batch/status", false),
            (&app, "iotsphere/users/alice/notifications", false),
        ];
        for (role, topic, expected) in cases {
            assert_eq!(
                access.may_publish(role, "c", None, topic),
                expected,
                "{role:?} → {topic}"
            );
        }
        let cases = [
            (&heater, "iotsphere/devices/heater-1/shadow/delta", true),
            (&heater, "iotsphere/devices/heater-1/#", true),
            (&heater, "$share/g/iotsphere/devices/heater-1/#", true),
            (&heater, "$share/+/iotsphere/devices/heater-1/#", false),
            (&heater, "$share/g/iotsphere/devices/heater-2/#", false),
            (&heater, "iotsphere/devices/heater-2/shadow/delta", false),
            (&heater, "iotsphere/devices/+/shadow/delta", false),
            (&heater, "#", false),
            (&app, "iotsphere/devices/+/shadow/document", true),
            (
                &app,
                "iotsphere/devices/heater-1/telemetry/temperature",
                true,
            ),
            (&app, "iotsphere/devices/#", false),
            (&app, "iotsphere/devices/+/shadow/+", false),
        ];
        for (role, filter, expected) in cases {
            assert_eq!(
                access.may_subscribe(role, "c", None, filter),
                expected,
                "{role:?} ⊇ {filter}"
            );
        }
    }

    #[test]
    fn identity_labels_round_trip() {
        for role in [
            device("heater-1"),
            Role::Service("app".into()),
            Role::User("alice".into()),
        ] {
            assert_eq!(Role::from_identity(&role.identity()), Some(role));
        }
        assert_eq!(Role::from_identity("heater-1"), None);
    }

    #[test]
    fn filters() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a"));
        assert!(filter_covers("a/+/c", "a/x/c"));
        assert!(filter_covers("a/#", "a/+/c"));
        assert!(!filter_covers("a/+/c", "a/+/+"));
        assert!(!filter_covers("a/+", "a/#"));
    }
}
