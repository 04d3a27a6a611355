//! Who may connect, and to which topics (DESIGN.md §10).
//!
//! - **Credentials file**: one `name:argon2-hash` per line (device ids and service names),
//!   never a plain password; managed with `iotsphere-gateway credentials add|remove|list`
//!   and reloaded on SIGHUP without dropping connections.
//! - **Identity**: with `auth.mode = "password"` the MQTT username, with
//!   `auth.mode = "certificate"` the CN of the client certificate (verified against
//!   `mqtt.client_ca` by the TLS handshake), is a device id or the name of an
//!   `[[auth.services]]` entry, or of a user in MongoDB `users` (a user's app, any client
//!   id). A device's client id must equal that name. Failures are
//!   refused at CONNECT and logged to the `audit` target with the peer's address.
//! - **ACL**, enforced inside the broker before a message is routed (rumqttd publish hook):
//!   a device publishes only to its own request topics (`shadow/reported`, `shadow/get`,
//!   `telemetry/…`, `commands/response`) and subscribes only under its own
//!   `ROOT/devices/{id}/`; a service publishes and subscribes within its configured
//!   filters; a user's app publishes only `users/{own id}/preferences` and subscribes only
//!   under `users/{own id}/` and to the `document`, `delta` and `telemetry` topics of the
//!   devices the user owns. Nobody but the gateway publishes `delta`, `document` or
//!   `rejected`.
//!   A refused publish is acknowledged and dropped (as mosquitto does under MQTT 3.1.1), a
//!   refused subscription gets SUBACK failure; both are audited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::ServiceRole;
use crate::topics::{self, Route, ShadowTopic, Topics};
use crate::users::Directory;

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
            if !topics::is_valid_id(name) || PasswordHash::new(hash).is_err() {
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

    /// Constant-time by construction (argon2 verification); unknown names cost the same
    /// as wrong passwords, so names cannot be probed by timing.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let stored = self
            .entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.as_str());
        let hash = stored.unwrap_or(DUMMY_HASH);
        let matches = PasswordHash::new(hash)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        stored.is_some() && matches
    }
}

/// A valid hash of a random password, checked against when the name is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=8192,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2Vmq9B3M8uSNwSCJ8+8LJ7dXKTQ2a2P+ahEBnq5w3q8";

/// What an authenticated client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Device(String),
    Service(String),
    User(String),
}

/// A client asking to connect.
#[derive(Debug, Clone, Copy)]
pub struct ConnectAttempt<'a> {
    pub client_id: &'a str,
    /// User name and password from CONNECT, if any.
    pub login: Option<(&'a str, &'a str)>,
    pub peer: SocketAddr,
    /// DER of the client certificate the TLS handshake verified against `mqtt.client_ca`.
    pub certificate: Option<&'a [u8]>,
}

/// The lab mode's CONNECT check: anyone, except the gateway's own client ids (a device
/// using one would take over an internal link). Audited like the secure modes.
pub fn admit_anonymous(attempt: &ConnectAttempt<'_>) -> bool {
    let ConnectAttempt {
        client_id, peer, ..
    } = *attempt;
    if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
        tracing::warn!(target: "audit", client_id, %peer, reason = "reserved client id", "connection refused");
        return false;
    }
    tracing::info!(target: "audit", client_id, %peer, "connected (anonymous)");
    true
}

/// How clients prove who they are.
enum Proof {
    Password {
        file: PathBuf,
        credentials: RwLock<Credentials>,
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
    /// client id → role and peer address, set at each successful CONNECT.
    sessions: RwLock<HashMap<String, (Role, SocketAddr)>>,
}

impl Access {
    /// Password mode: identities from the credentials file.
    pub fn load(
        topics: Topics,
        credentials_file: &Path,
        services: &[ServiceRole],
        users: Directory,
    ) -> Result<Access, AuthError> {
        let credentials = Credentials::load(credentials_file)?;
        let proof = Proof::Password {
            file: credentials_file.to_path_buf(),
            credentials: RwLock::new(credentials),
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
                sessions: RwLock::default(),
            }),
        }
    }

    /// Re-reads the credentials file (SIGHUP); connected clients stay connected. Returns
    /// how many entries it holds (0 in certificate mode, which has no file: certificate
    /// files are read at every TLS handshake).
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Proof::Password { file, credentials } = &self.inner.proof else {
            return Ok(0);
        };
        let fresh = Credentials::load(file)?;
        let count = fresh.entries.len();
        *credentials.write().unwrap_or_else(|p| p.into_inner()) = fresh;
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

    /// The CONNECT check (runs argon2 in password mode: call it off the I/O thread).
    pub fn authenticate(&self, attempt: &ConnectAttempt<'_>) -> bool {
        let ConnectAttempt {
            client_id, peer, ..
        } = *attempt;
        let refuse = |why: &str| {
            let username = attempt.login.map(|(username, _)| username);
            tracing::warn!(target: "audit", client_id, username, %peer, reason = why, "connection refused");
            false
        };
        if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return refuse("reserved client id");
        }
        let name = match &self.inner.proof {
            Proof::Password { credentials, .. } => {
                let Some((username, password)) = attempt.login else {
                    return refuse("no username and password");
                };
                let verified = credentials
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .verify(username, password);
                if !verified {
                    return refuse("bad username or password");
                }
                username.to_string()
            }
            Proof::Certificate => {
                let Some(certificate) = attempt.certificate else {
                    return refuse("no client certificate");
                };
                match crate::certs::common_name(certificate) {
                    Some(cn) => cn,
                    None => return refuse("the client certificate has no readable CN"),
                }
            }
        };
        let role = if self.service_is(&name, |_| true) {
            Role::Service(name)
        } else if self.inner.users.is_user(&name) {
            Role::User(name)
        } else if client_id == name && topics::is_valid_id(&name) && name != topics::BATCH {
            Role::Device(name)
        } else {
            return refuse(
                "a device's client id must equal its identity (username or certificate CN)",
            );
        };
        tracing::info!(target: "audit", client_id, ?role, %peer, "connected");
        self.inner
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_string(), (role, peer));
        true
    }

    fn session(&self, client_id: &str) -> Option<(Role, SocketAddr)> {
        self.inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_id)
            .cloned()
    }

    /// May `client_id` publish to `topic`? The gateway's own links always may.
    pub fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return true;
        }
        let route = self.inner.topics.parse(topic);
        let gateway_only = matches!(
            route,
            Ok(Route::Shadow {
                kind: ShadowTopic::Delta | ShadowTopic::Document | ShadowTopic::Rejected,
                ..
            })
        );
        let session = self.session(client_id);
        let allowed = !gateway_only
            && match session.as_ref().map(|(role, _)| role) {
                Some(Role::Device(id)) => match route {
                    Ok(Route::Shadow { device_id, kind }) => {
                        device_id == id && matches!(kind, ShadowTopic::Reported | ShadowTopic::Get)
                    }
                    Ok(Route::Telemetry { device_id, .. })
                    | Ok(Route::CommandResponse { device_id }) => device_id == id,
                    _ => false,
                },
                Some(Role::Service(name)) => self.service_is(name, |s| {
                    s.publish.iter().any(|filter| filter_matches(filter, topic))
                }),
                Some(Role::User(id)) => route == Ok(Route::UserPreferences { user_id: id }),
                None => false,
            };
        if !allowed {
            let peer = session.map_or_else(|| "unknown".into(), |(_, peer)| peer.to_string());
            tracing::warn!(target: "audit", client_id, %peer, topic, "publish denied");
        }
        allowed
    }

    /// May `client_id` subscribe to `filter`?
    pub fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        if client_id.starts_with(INTERNAL_CLIENT_PREFIX) {
            return true;
        }
        let session = self.session(client_id);
        let allowed = match session.as_ref().map(|(role, _)| role) {
            Some(Role::Device(id)) => under_without_wildcard(
                filter,
                &format!("{}/devices/{id}/", self.inner.topics.root()),
            ),
            Some(Role::Service(name)) => self.service_is(name, |s| {
                s.subscribe
                    .iter()
                    .any(|allowed| filter_covers(allowed, filter))
            }),
            Some(Role::User(id)) => self.user_may_subscribe(id, filter),
            None => false,
        };
        if !allowed {
            let peer = session.map_or_else(|| "unknown".into(), |(_, peer)| peer.to_string());
            tracing::warn!(target: "audit", client_id, %peer, filter, "subscribe denied");
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
        )
        .expect("load")
    }

    #[test]
    fn a_users_app_sees_its_own_topics_and_devices_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        assert!(access.authenticate(&login("alice-phone", "alice", "pw-alice")));
        let app = "alice-phone";
        for (filter, allowed) in [
            ("iotsphere/users/alice/notifications", true),
            ("iotsphere/users/alice/#", true),
            ("iotsphere/users/bob/notifications", false),
            ("iotsphere/users/+/notifications", false),
            ("iotsphere/devices/heater-1/shadow/document", true),
            ("iotsphere/devices/heater-1/telemetry/#", true),
            ("iotsphere/devices/heater-1/shadow/reported", false),
            ("iotsphere/devices/heater-2/shadow/document", false),
            ("iotsphere/devices/+/shadow/document", false),
        ] {
            assert_eq!(access.may_subscribe(app, filter), allowed, "{filter}");
        }
        assert!(access.may_publish(app, "iotsphere/users/alice/preferences"));
        assert!(!access.may_publish(app, "iotsphere/users/bob/preferences"));
        assert!(!access.may_publish(app, "iotsphere/devices/heater-1/shadow/desired"));
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
        assert!(loaded.verify("heater-1", "s3cret"));
        assert!(!loaded.verify("heater-1", "S3cret"));
        assert!(!loaded.verify("heater-9", "s3cret"));
        std::fs::write(&file, "heater-1 s3cret\n").expect("write");
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

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

    fn login<'a>(client_id: &'a str, username: &'a str, password: &'a str) -> ConnectAttempt<'a> {
        ConnectAttempt {
            client_id,
            login: Some((username, password)),
            peer: PEER,
            certificate: None,
        }
    }

    #[test]
    fn certificate_identities() {
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
        let attempt = |client_id, certificate| ConnectAttempt {
            client_id,
            login: None,
            peer: PEER,
            certificate,
        };
        assert!(access.authenticate(&attempt("heater-1", Some(&heater))));
        assert!(
            !access.authenticate(&attempt("heater-2", Some(&heater))),
            "client id must equal the CN"
        );
        assert!(
            !access.authenticate(&attempt("heater-1", None)),
            "no certificate"
        );
        assert!(access.authenticate(&attempt("dashboard", Some(&app))));
        assert!(access.may_publish("heater-1", "iotsphere/devices/heater-1/shadow/reported"));
        assert!(!access.may_publish("heater-1", "iotsphere/devices/heater-2/shadow/reported"));
        assert_eq!(access.reload().expect("nothing to reload"), 0);
    }

    #[test]
    fn identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        assert!(access.authenticate(&login("heater-1", "heater-1", "pw-heater-1")));
        assert!(!access.authenticate(&login("heater-1", "heater-1", "wrong")));
        assert!(
            !access.authenticate(&login("heater-2", "heater-1", "pw-heater-1")),
            "client id must equal username"
        );
        assert!(access.authenticate(&login("any-client", "cloud-app", "pw-cloud-app")));
        assert!(!access.authenticate(&login("iotsphere:gateway", "cloud-app", "pw-cloud-app")));
    }

    #[test]
    fn reloaded_roles_apply_to_connected_services() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        assert!(access.authenticate(&login("app", "cloud-app", "pw-cloud-app")));
        let telemetry = "iotsphere/devices/h1/telemetry/temperature";
        assert!(!access.may_publish("app", telemetry));
        access.set_services(&[ServiceRole {
            name: "cloud-app".into(),
            publish: vec!["iotsphere/devices/+/telemetry/#".into()],
            subscribe: vec![],
        }]);
        assert!(access.may_publish("app", telemetry));
        assert!(!access.may_publish("app", "iotsphere/devices/h1/shadow/desired"));
        access.set_services(&[]);
        assert!(
            !access.may_publish("app", telemetry),
            "a removed role allows nothing"
        );
    }

    #[test]
    fn device_and_service_acl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = access(dir.path());
        assert!(access.authenticate(&login("heater-1", "heater-1", "pw-heater-1")));
        assert!(access.authenticate(&login("app", "cloud-app", "pw-cloud-app")));
        let cases = [
            (
                "heater-1",
                "iotsphere/devices/heater-1/shadow/reported",
                true,
            ),
            ("heater-1", "iotsphere/devices/heater-1/shadow/get", true),
            (
                "heater-1",
                "iotsphere/devices/heater-1/telemetry/temperature",
                true,
            ),
            (
                "heater-1",
                "iotsphere/devices/heater-1/commands/response",
                true,
            ),
            (
                "heater-1",
                "iotsphere/devices/heater-1/shadow/desired",
                false,
            ),
            ("heater-1", "iotsphere/devices/heater-1/shadow/delta", false),
            (
                "heater-1",
                "iotsphere/devices/heater-2/shadow/reported",
                false,
            ),
            ("heater-1", "iotsphere/system/status", false),
            ("app", "iotsphere/devices/heater-2/shadow/desired", true),
            ("app", "iotsphere/devices/heater-2/shadow/delta", false),
            ("app", "iotsphere/devices/heater-2/shadow/reported", false),
            (
                "stranger",
                "iotsphere/devices/heater-2/shadow/reported",
                false,
            ),
            (
                "iotsphere:gateway",
                "iotsphere/devices/heater-2/shadow/delta",
                true,
            ),
        ];
        for (client, topic, expected) in cases {
            assert_eq!(
                access.may_publish(client, topic),
                expected,
                "{client} → {topic}"
            );
        }
        let cases = [
            ("heater-1", "iotsphere/devices/heater-1/shadow/delta", true),
            ("heater-1", "iotsphere/devices/heater-1/#", true),
            ("heater-1", "iotsphere/devices/heater-2/shadow/delta", false),
            ("heater-1", "iotsphere/devices/+/shadow/delta", false),
            ("heater-1", "#", false),
            ("app", "iotsphere/devices/+/shadow/document", true),
            (
                "app",
                "iotsphere/devices/heater-1/telemetry/temperature",
                true,
            ),
            ("app", "iotsphere/devices/#", false),
            ("app", "iotsphere/devices/+/shadow/+", false),
        ];
        for (client, filter, expected) in cases {
            assert_eq!(
                access.may_subscribe(client, filter),
                expected,
                "{client} ⊇ {filter}"
            );
        }
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
