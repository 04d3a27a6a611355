//! MongoDB-style command errors (`{ok: 0, errmsg, code, codeName, errorLabels}`).

use bson::{doc, Document};

/// Error codes used by the double, named as in MongoDB's `error_codes.yml`.
pub mod code {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const BAD_VALUE: i32 = 2;
    pub const FAILED_TO_PARSE: i32 = 9;
    pub const UNAUTHORIZED: i32 = 13;
    pub const TYPE_MISMATCH: i32 = 14;
    pub const AUTHENTICATION_FAILED: i32 = 18;
    pub const ILLEGAL_OPERATION: i32 = 20;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const PATH_NOT_VIABLE: i32 = 28;
    pub const CONFLICTING_UPDATE_OPERATORS: i32 = 40;
    pub const CURSOR_NOT_FOUND: i32 = 43;
    pub const NO_MATCHING_DOCUMENT: i32 = 47;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const DOLLAR_PREFIXED_FIELD_NAME: i32 = 52;
    pub const INVALID_ID_FIELD: i32 = 53;
    pub const COMMAND_NOT_FOUND: i32 = 59;
    pub const IMMUTABLE_FIELD: i32 = 66;
    pub const CANNOT_CREATE_INDEX_KEY: i32 = 67;
    pub const INVALID_OPTIONS: i32 = 72;
    pub const INVALID_NAMESPACE: i32 = 73;
    pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
    pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
    pub const INVALID_PIPELINE_OPERATOR: i32 = 168;
    pub const INVALID_RESUME_TOKEN: i32 = 260;
    pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    pub const UNSUPPORTED_OP_QUERY_COMMAND: i32 = 352;
    pub const BSON_OBJECT_TOO_LARGE: i32 = 10334;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const UNRECOGNIZED_PIPELINE_STAGE: i32 = 40324;
    pub const UNKNOWN_IDL_FIELD: i32 = 40415;
    pub const OP_MSG_MISSING_DB: i32 = 40571;
    pub const CHANGE_STREAM_NOT_ON_STANDALONE: i32 = 40573;
}

/// Codes the server tags with `RetryableWriteError` when a retryable write fails with them
/// (retryable-writes spec, "Determining Retryable Errors").
pub const RETRYABLE_WRITE_CODES: [i32; 12] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Codes the server tags with `ResumableChangeStreamError` on a change-stream aggregate or
/// getMore (change-streams spec, "Resumable Error").
pub const RESUMABLE_CHANGE_STREAM_CODES: [i32; 17] = [
    6, 7, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436,
];

/// Codes of error_codes.yml's `NonResumableChangeStreamError` category (ChangeStreamFatalError,
/// ChangeStreamHistoryLost): any command failing with them carries that label.
pub const NON_RESUMABLE_CHANGE_STREAM_CODES: [i32; 2] = [280, 286];

/// `RetryableWriteError` for a retryable write failing (or with a write concern error) with a
/// retryable code.
pub fn retryable_write_labels(code: i32, retryable_write: bool) -> Vec<String> {
    if retryable_write && RETRYABLE_WRITE_CODES.contains(&code) {
        vec!["RetryableWriteError".into()]
    } else {
        Vec::new()
    }
}

/// The labels mongod's `ErrorLabelBuilder` gives a command failing with `code`, when no fail
/// point set them. `change_stream`: the command is an aggregate opening a change stream, or
/// a getMore whose checked-out cursor is one — a getMore failed by `failCommand` never is,
/// since that fail point fires before the cursor is checked out.
pub fn error_labels(code: i32, retryable_write: bool, change_stream: bool) -> Vec<String> {
    let labels = retryable_write_labels(code, retryable_write);
    if !labels.is_empty() {
        labels
    } else if change_stream && RESUMABLE_CHANGE_STREAM_CODES.contains(&code) {
        vec!["ResumableChangeStreamError".into()]
    } else if NON_RESUMABLE_CHANGE_STREAM_CODES.contains(&code) {
        vec!["NonResumableChangeStreamError".into()]
    } else {
        Vec::new()
    }
}

/// The `codeName` MongoDB reports for `code`.
pub fn code_name(code: i32) -> String {
    let name = match code {
        1 => "InternalError",
        2 => "BadValue",
        4 => "NoSuchKey",
        6 => "HostUnreachable",
        7 => "HostNotFound",
        8 => "UnknownError",
        9 => "FailedToParse",
        11 => "UserNotFound",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        18 => "AuthenticationFailed",
        20 => "IllegalOperation",
        24 => "LockTimeout",
        26 => "NamespaceNotFound",
        27 => "IndexNotFound",
        28 => "PathNotViable",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        46 => "LockBusy",
        47 => "NoMatchingDocument",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        52 => "DollarPrefixedFieldName",
        53 => "InvalidIdField",
        59 => "CommandNotFound",
        63 => "StaleShardVersion",
        64 => "WriteConcernFailed",
        66 => "ImmutableField",
        67 => "CannotCreateIndex",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        79 => "UnknownReplWriteConcern",
        85 => "IndexOptionsConflict",
        86 => "IndexKeySpecsConflict",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        100 => "UnsatisfiableWriteConcern",
        112 => "WriteConflict",
        115 => "CommandNotSupported",
        133 => "FailedToSatisfyReadPreference",
        136 => "CappedPositionLost",
        150 => "StaleEpoch",
        168 => "InvalidPipelineOperator",
        189 => "PrimarySteppedDown",
        234 => "RetryChangeStream",
        237 => "CursorKilled",
        251 => "NoSuchTransaction",
        260 => "InvalidResumeToken",
        262 => "ExceededTimeLimit",
        280 => "ChangeStreamFatalError",
        286 => "ChangeStreamHistoryLost",
        352 => "UnsupportedOpQueryCommand",
        9001 => "SocketException",
        10107 => "NotWritablePrimary",
        10334 => "BSONObjectTooLarge",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11601 => "Interrupted",
        11602 => "InterruptedDueToReplStateChange",
        13388 => "StaleConfig",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        _ => return format!("Location{code}"),
    };
    name.to_string()
}

/// A failed command, rendered as MongoDB's error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdError {
    pub code: i32,
    pub msg: String,
    pub labels: Vec<String>,
    /// Extra fields merged into the reply (e.g. `keyPattern`/`keyValue` for E11000).
    pub extra: Option<Box<Document>>,
}

impl CmdError {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        CmdError {
            code,
            msg: msg.into(),
            labels: Vec::new(),
            extra: None,
        }
    }

    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(code::BAD_VALUE, msg)
    }

    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(code::TYPE_MISMATCH, msg)
    }

    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(code::FAILED_TO_PARSE, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL_ERROR, msg)
    }

    /// `BSON field 'cmd.field' is the wrong type 'x', expected type 'y'`.
    pub fn wrong_type(field: &str, expected: &str) -> Self {
        Self::type_mismatch(format!(
            "BSON field '{field}' is the wrong type, expected type '{expected}'"
        ))
    }

    /// The command reply for this error.
    pub fn to_doc(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": self.msg.clone(),
            "code": self.code,
            "codeName": code_name(self.code),
        };
        for (k, v) in self.extra.iter().flat_map(|e| e.iter()) {
            d.insert(k.clone(), v.clone());
        }
        if !self.labels.is_empty() {
            d.insert("errorLabels", self.labels.clone());
        }
        d
    }

    /// The `writeErrors` entry for this error at batch position `index`.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut d = doc! {
            "index": index as i32,
            "code": self.code,
            "errmsg": self.msg.clone(),
        };
        for (k, v) in self.extra.iter().flat_map(|e| e.iter()) {
            d.insert(k.clone(), v.clone());
        }
        d
    }
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", code_name(self.code), self.code, self.msg)
    }
}

impl std::error::Error for CmdError {}

pub type CmdResult<T> = Result<T, CmdError>;
