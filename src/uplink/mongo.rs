//! MongoDB's side of the contract in one place (docs/DESIGN.md §6): the collections the
//! uplink reads and writes, the server error codes it acts on, and reading a code from
//! the driver's error.

use mongodb::error::ErrorKind;

/// Device shadows, one document per device (`_id` = device id).
pub const SHADOWS: &str = "shadows";
/// Commands from the cloud to devices, and their answers.
pub const COMMANDS: &str = "commands";
/// Device readings.
pub const TELEMETRY: &str = "telemetry";
/// Alerts fired and cleared.
pub const ALERTS: &str = "alerts";
/// Users, their devices and preferences.
pub const USERS: &str = "users";
/// The active/standby leases of gateway pairs.
pub const LEASES: &str = "leases";
/// Where each change stream resumes after a restart.
pub const RESUME_TOKENS: &str = "resume_tokens";

/// E11000: an insert met an existing `_id` (a replayed write MongoDB already has).
pub const DUPLICATE_KEY: i32 = 11000;
/// ChangeStreamHistoryLost: the resume token fell off the oplog.
pub const HISTORY_LOST: i32 = 286;
/// The server is not a replica set: no change streams.
pub const NOT_A_REPLICA_SET: i32 = 40573;
/// An index of that name exists with other options / other keys.
pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;

/// The server's error code of a command error (`None` for network and other errors).
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        _ => None,
    }
}
