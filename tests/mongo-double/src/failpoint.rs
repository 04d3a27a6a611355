//! `configureFailPoint` with the `failCommand` fail point, as servers started with
//! `enableTestCommands` offer it (see the drivers' "Server Fail Point" test documentation).

use bson::{doc, Bson, Document};

use crate::error::{CmdError, CmdResult};
use crate::query::compare::{as_i64, truthy};

#[derive(Debug, Clone)]
enum Mode {
    AlwaysOn,
    Times(u64),
    Skip(u64),
    Probability(f64),
}

#[derive(Debug, Clone)]
struct FailCommand {
    mode: Mode,
    commands: Vec<String>,
    error_code: Option<i32>,
    close_connection: bool,
    block_ms: u64,
    error_labels: Option<Vec<String>>,
    write_concern_error: Option<Document>,
    app_name: Option<String>,
}

/// What to do to a command the fail point caught.
#[derive(Debug, Clone, Default)]
pub struct Action {
    pub block_ms: u64,
    pub close_connection: bool,
    pub error_code: Option<i32>,
    /// Labels given in the fail point (`None`: the server computes them).
    pub error_labels: Option<Vec<String>>,
    pub write_concern_error: Option<Document>,
}

/// The fail points of one server.
#[derive(Debug, Default)]
pub struct FailPoints {
    fail_command: Option<FailCommand>,
    entered: i64,
}

fn random_unit() -> f64 {
    let b = bson::Uuid::new().bytes();
    f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) / f64::from(u32::MAX)
}

impl FailPoints {
    /// Runs `configureFailPoint`.
    pub fn configure(&mut self, cmd: &Document) -> CmdResult<Document> {
        let name = cmd
            .get_str("configureFailPoint")
            .map_err(|_| CmdError::wrong_type("configureFailPoint", "string"))?;
        let forced_commands = match name {
            "failCommand" => None,
            "failGetMoreAfterCursorCheckout" => Some(vec!["getMore".to_string()]),
            other => return Err(CmdError::bad_value(format!("Cannot find failpoint: {other} (mongo-double offers failCommand and failGetMoreAfterCursorCheckout)"))),
        };
        let mode = match cmd.get("mode") {
            Some(Bson::String(s)) if s == "alwaysOn" => Some(Mode::AlwaysOn),
            Some(Bson::String(s)) if s == "off" => None,
            Some(Bson::Document(m)) => {
                let n = |k: &str| m.get(k).and_then(as_i64);
                if let Some(t) = n("times") {
                    (t > 0).then_some(Mode::Times(t as u64))
                } else if let Some(s) = n("skip") {
                    Some(Mode::Skip(s.max(0) as u64))
                } else if let Some(p) = m
                    .get("activationProbability")
                    .and_then(crate::query::compare::as_f64)
                {
                    Some(Mode::Probability(p))
                } else {
                    return Err(CmdError::bad_value("mode must be 'alwaysOn', 'off', {times: n}, {skip: n} or {activationProbability: p}"));
                }
            }
            _ => return Err(CmdError::bad_value("missing or invalid 'mode'")),
        };
        let data = cmd.get_document("data").cloned().unwrap_or_default();
        let previous = self.entered;
        self.entered = 0;
        self.fail_command = match mode {
            None => None,
            Some(mode) => {
                let commands = match forced_commands {
                    Some(c) => c,
                    None => data
                        .get_array("failCommands")
                        .map_err(|_| {
                            CmdError::bad_value(
                                "failCommand requires a 'failCommands' array in 'data'",
                            )
                        })?
                        .iter()
                        .filter_map(|b| b.as_str().map(str::to_string))
                        .collect(),
                };
                Some(FailCommand {
                    mode,
                    commands,
                    error_code: data.get("errorCode").and_then(as_i64).map(|c| c as i32),
                    close_connection: data.get("closeConnection").is_some_and(truthy),
                    block_ms: if data.get("blockConnection").is_some_and(truthy) {
                        data.get("blockTimeMS").and_then(as_i64).unwrap_or(0).max(0) as u64
                    } else {
                        0
                    },
                    error_labels: data.get_array("errorLabels").ok().map(|a| {
                        a.iter()
                            .filter_map(|b| b.as_str().map(str::to_string))
                            .collect()
                    }),
                    write_concern_error: data.get_document("writeConcernError").ok().cloned(),
                    app_name: data.get_str("appName").ok().map(str::to_string),
                })
            }
        };
        Ok(doc! {"count": previous, "ok": 1.0})
    }

    /// Decides whether command `name` from a client named `app` is caught.
    pub fn check(&mut self, name: &str, app: Option<&str>) -> Option<Action> {
        let fc = self.fail_command.as_mut()?;
        if name == "configureFailPoint" || !fc.commands.iter().any(|c| c == name) {
            return None;
        }
        if fc.app_name.as_deref().is_some_and(|a| Some(a) != app) {
            return None;
        }
        let fire = match &mut fc.mode {
            Mode::AlwaysOn => true,
            Mode::Times(n) => {
                *n -= 1;
                true
            }
            Mode::Skip(n) if *n > 0 => {
                *n -= 1;
                false
            }
            Mode::Skip(_) => true,
            Mode::Probability(p) => random_unit() < *p,
        };
        if !fire {
            return None;
        }
        let action = Action {
            block_ms: fc.block_ms,
            close_connection: fc.close_connection,
            error_code: fc.error_code,
            error_labels: fc.error_labels.clone(),
            write_concern_error: fc.write_concern_error.clone(),
        };
        if matches!(fc.mode, Mode::Times(0)) {
            self.fail_command = None;
        }
        self.entered += 1;
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_skip() {
        let mut fp = FailPoints::default();
        fp.configure(&doc! {"configureFailPoint": "failCommand", "mode": {"times": 2}, "data": {"failCommands": ["insert"], "errorCode": 91}})
            .expect("configure");
        assert!(fp.check("find", None).is_none());
        assert_eq!(
            fp.check("insert", None).and_then(|a| a.error_code),
            Some(91)
        );
        assert!(fp.check("insert", None).is_some());
        assert!(fp.check("insert", None).is_none());
        fp.configure(&doc! {"configureFailPoint": "failCommand", "mode": {"skip": 1}, "data": {"failCommands": ["find"], "appName": "a"}})
            .expect("configure");
        assert!(fp.check("find", Some("a")).is_none());
        assert!(fp.check("find", Some("b")).is_none());
        assert!(fp.check("find", Some("a")).is_some());
    }
}
