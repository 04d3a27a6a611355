//! This gateway's role in its active/standby pair, as the lease task (uplink) decides it
//! and the broker, the system task, the metrics and the status page read it. Plain data.

/// What this gateway is in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseRole {
    /// MongoDB has not answered (yet, or for a whole TTL): serve whoever comes.
    #[default]
    Undecided,
    /// This gateway holds the lease.
    Active,
    /// Another gateway holds the lease: serve no MQTT client.
    Standby,
}

impl LeaseRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecided => "undecided",
            Self::Active => "active",
            Self::Standby => "standby",
        }
    }
}

/// The lease as this gateway knows it, shared through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseState {
    pub role: LeaseRole,
    /// The newest epoch this gateway held (0: none); what its writes are fenced with.
    pub epoch: i64,
}
