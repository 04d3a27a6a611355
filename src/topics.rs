//! The iotsphere topic hierarchy (docs/DESIGN.md §5): parse incoming topics into routes and
//! format the topics the gateway publishes, under a configurable root.

use std::fmt;

/// What a device-topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowTopic {
    /// Device → gateway: partial reported state.
    Reported,
    /// App/cloud → gateway: partial desired state.
    Desired,
    /// Ask for the whole document.
    Get,
    /// Remove the shadow (AWS `delete`).
    Delete,
    /// Device → gateway: desired leaves the device will not apply, with a reason.
    Refused,
    /// Gateway → device: desired fields that differ from reported.
    Delta,
    /// Gateway → everyone: whole document after a change, and the answer to `get`.
    Document,
    /// Gateway → requester: a refused request.
    Rejected,
}

impl ShadowTopic {
    /// Every kind, in the order of docs/DESIGN.md §5.
    pub const ALL: [ShadowTopic; 8] = [
        ShadowTopic::Reported,
        ShadowTopic::Desired,
        ShadowTopic::Get,
        ShadowTopic::Delete,
        ShadowTopic::Refused,
        ShadowTopic::Delta,
        ShadowTopic::Document,
        ShadowTopic::Rejected,
    ];

    /// The requests the gateway answers (the others are its own publications).
    pub const REQUESTS: [ShadowTopic; 5] = [
        ShadowTopic::Reported,
        ShadowTopic::Desired,
        ShadowTopic::Get,
        ShadowTopic::Delete,
        ShadowTopic::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowTopic::Reported => "reported",
            ShadowTopic::Desired => "desired",
            ShadowTopic::Get => "get",
            ShadowTopic::Delete => "delete",
            ShadowTopic::Refused => "refused",
            ShadowTopic::Delta => "delta",
            ShadowTopic::Document => "document",
            ShadowTopic::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<ShadowTopic> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A topic of the hierarchy the gateway understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Shadow {
        device_id: &'a str,
        kind: ShadowTopic,
    },
    Telemetry {
        device_id: &'a str,
        kind: &'a str,
    },
    CommandRequest {
        device_id: &'a str,
    },
    CommandResponse {
        device_id: &'a str,
    },
    /// `users/{userId}/preferences`, published by a user's app.
    UserPreferences {
        user_id: &'a str,
    },
}

/// Why a topic under the root is not a valid route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not under the root `{0}`")]
    OutsideRoot(String),
    #[error("device id `{0}` is not 1-64 characters of A-Z a-z 0-9 _ -")]
    BadDeviceId(String),
    #[error("unknown topic shape `{0}`")]
    UnknownShape(String),
}

/// Formats and parses topics under one root, e.g. `iotsphere`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    root: String,
}

/// A device id is 1-64 of `[A-Za-z0-9_-]` (docs/DESIGN.md §5); the same rule names gateways.
/// The `devices/batch/...` level: reserved, so no device can own those topics.
pub const BATCH: &str = "batch";

pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Topics {
    pub fn new(root: &str) -> Result<Topics, String> {
        Self::check_root(root)?;
        Ok(Topics {
            root: root.to_string(),
        })
    }

    /// A root is one or more topic levels without wildcards, e.g. `iotsphere` or `site/7`.
    pub fn check_root(root: &str) -> Result<(), String> {
        if root.is_empty() || root.starts_with('/') || root.ends_with('/') {
            return Err("must be non-empty and not start or end with /".into());
        }
        if root.contains(['+', '#', '\0']) || root.split('/').any(str::is_empty) {
            return Err("must not contain + # NUL or empty levels".into());
        }
        Ok(())
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// `ROOT/devices/{id}/shadow/{kind}`.
    pub fn shadow(&self, device_id: &str, kind: ShadowTopic) -> String {
        format!("{}/devices/{device_id}/shadow/{}", self.root, kind.as_str())
    }

    /// The filter matching one shadow request kind of every device.
    pub fn shadow_filter(&self, kind: ShadowTopic) -> String {
        format!("{}/devices/+/shadow/{}", self.root, kind.as_str())
    }

    /// `ROOT/system/{kind}`: the gateway's own status, metrics, alerts.
    pub fn system(&self, kind: &str) -> String {
        format!("{}/system/{kind}", self.root)
    }

    /// `ROOT/devices/batch/{kind}`: fleet-wide summaries (`batch` is no device id).
    pub fn batch(&self, kind: &str) -> String {
        format!("{}/devices/{BATCH}/{kind}", self.root)
    }

    /// `ROOT/users/{userId}/{kind}`: a user's notifications and preferences.
    pub fn user(&self, user_id: &str, kind: &str) -> String {
        format!("{}/users/{user_id}/{kind}", self.root)
    }

    /// `ROOT/devices/{id}/commands/request`.
    pub fn command_request(&self, device_id: &str) -> String {
        format!("{}/devices/{device_id}/commands/request", self.root)
    }

    /// Parses a topic the gateway received.
    pub fn parse<'t>(&self, topic: &'t str) -> Result<Route<'t>, TopicError> {
        let rest = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::OutsideRoot(self.root.clone()))?;
        let levels: Vec<&str> = rest.split('/').collect();
        let unknown = || TopicError::UnknownShape(topic.to_string());
        let device_id = match levels.as_slice() {
            ["devices", id, ..] => *id,
            ["users", user_id, "preferences"] if is_valid_id(user_id) => {
                return Ok(Route::UserPreferences { user_id })
            }
            _ => return Err(unknown()),
        };
        if !is_valid_id(device_id) {
            return Err(TopicError::BadDeviceId(device_id.to_string()));
        }
        match &levels[2..] {
            ["shadow", kind] => ShadowTopic::parse(kind)
                .map(|kind| Route::Shadow { device_id, kind })
                .ok_or_else(unknown),
            ["telemetry", kind] if is_valid_id(kind) => Ok(Route::Telemetry { device_id, kind }),
            ["commands", "request"] => Ok(Route::CommandRequest { device_id }),
            ["commands", "response"] => Ok(Route::CommandResponse { device_id }),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for ShadowTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("iotsphere").expect("valid root")
    }

    #[test]
    fn parses_every_device_topic_of_the_table() {
        let t = topics();
        for kind in ShadowTopic::ALL {
            let topic = t.shadow("heater-1", kind);
            assert_eq!(
                t.parse(&topic),
                Ok(Route::Shadow {
                    device_id: "heater-1",
                    kind
                })
            );
        }
        assert_eq!(
            t.parse("iotsphere/devices/h_2/telemetry/temperature"),
            Ok(Route::Telemetry {
                device_id: "h_2",
                kind: "temperature"
            })
        );
        assert_eq!(
            t.parse("iotsphere/devices/h/commands/request"),
            Ok(Route::CommandRequest { device_id: "h" })
        );
        assert_eq!(
            t.parse("iotsphere/devices/h/commands/response"),
            Ok(Route::CommandResponse { device_id: "h" })
        );
        assert_eq!(
            t.parse("iotsphere/users/alice/preferences"),
            Ok(Route::UserPreferences { user_id: "alice" })
        );
        assert!(t.parse("iotsphere/users/alice/notifications").is_err());
        assert!(t.parse("iotsphere/users/a+b/preferences").is_err());
    }

    #[test]
    fn refuses_wrong_shapes_and_ids() {
        let t = topics();
        let long = "a".repeat(65);
        let cases = [
            (
                "other/devices/h/shadow/get",
                TopicError::OutsideRoot("iotsphere".into()),
            ),
            ("iotsphere", TopicError::OutsideRoot("iotsphere".into())),
            (
                "iotspherex/devices/h/shadow/get",
                TopicError::OutsideRoot("iotsphere".into()),
            ),
            (
                "iotsphere/devices/h/shadow",
                TopicError::UnknownShape("iotsphere/devices/h/shadow".into()),
            ),
            (
                "iotsphere/devices/h/shadow/get/x",
                TopicError::UnknownShape("iotsphere/devices/h/shadow/get/x".into()),
            ),
            (
                "iotsphere/devices/h/shadow/update",
                TopicError::UnknownShape("iotsphere/devices/h/shadow/update".into()),
            ),
            (
                "iotsphere/devices//shadow/get",
                TopicError::BadDeviceId(String::new()),
            ),
            (
                "iotsphere/devices/a.b/shadow/get",
                TopicError::BadDeviceId("a.b".into()),
            ),
            (
                "iotsphere/devices/é/shadow/get",
                TopicError::BadDeviceId("é".into()),
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(t.parse(topic), Err(expected), "{topic}");
        }
        let topic = format!("iotsphere/devices/{long}/shadow/get");
        assert_eq!(t.parse(&topic), Err(TopicError::BadDeviceId(long.clone())));
        let max = "a".repeat(64);
        assert!(t
            .parse(&format!("iotsphere/devices/{max}/shadow/get"))
            .is_ok());
    }

    #[test]
    fn a_root_can_have_several_levels() {
        let t = Topics::new("site/7").expect("valid root");
        assert_eq!(
            t.shadow("h", ShadowTopic::Delta),
            "site/7/devices/h/shadow/delta"
        );
        assert_eq!(
            t.shadow_filter(ShadowTopic::Get),
            "site/7/devices/+/shadow/get"
        );
        assert!(t.parse("site/7/devices/h/shadow/get").is_ok());
    }

    #[test]
    fn invalid_roots() {
        for bad in ["", "/a", "a/", "a//b", "a/+", "#", "a\0"] {
            assert!(Topics::new(bad).is_err(), "{bad:?}");
        }
    }
}
