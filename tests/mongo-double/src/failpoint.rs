//! `configureFailPoint` with the two fail points servers started with `enableTestCommands`
//! offer drivers (see the drivers' "Server Fail Point" test documentation):
//!
//! - `failCommand` fires when a command arrives, before it runs (for a getMore: before its
//!   cursor is checked out, so the server cannot tell it belongs to a change stream);
//! - `failGetMoreAfterCursorCheckout` fires inside a getMore once its cursor is checked out
//!   (mongod's `getmore_cmd.cpp`, SERVER-46091), which kills that cursor.
//!
//! Each has its own mode and counter, as on a server.

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

impl Mode {
    fn parse(v: Option<&Bson>) -> CmdResult<Option<Mode>> {
        match v {
            Some(Bson::String(s)) if s == "alwaysOn" => Ok(Some(Mode::AlwaysOn)),
            Some(Bson::String(s)) if s == "off" => Ok(None),
            Some(Bson::Document(m)) => {
                let n = |k: &str| m.get(k).and_then(as_i64);
                if let Some(t) = n("times") {
                    Ok((t > 0).then_some(Mode::Times(t as u64)))
                } else if let Some(s) = n("skip") {
                    Ok(Some(Mode::Skip(s.max(0) as u64)))
                } else if let Some(p) = m
                    .get("activationProbability")
                    .and_then(crate::query::compare::as_f64)
                {
                    Ok(Some(Mode::Probability(p)))
                } else {
                    Err(CmdError::bad_value("mode must be 'alwaysOn', 'off', {times: n}, {skip: n} or {activationProbability: p}"))
                }
            }
            _ => Err(CmdError::bad_value("missing or invalid 'mode'")),
        }
    }

    /// Whether this activation fires (consuming a `times` / `skip` count).
    fn fire(&mut self) -> bool {
        match self {
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
        }
    }
}

#[derive(Debug, Clone)]
struct Armed {
    mode: Mode,
    commands: Vec<String>,
    action: Action,
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

impl Action {
    fn from_data(data: &Document) -> Action {
        Action {
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
        }
    }
}

/// One named fail point: off, or armed with a mode; `entered` counts activations.
#[derive(Debug, Default)]
struct FailPoint {
    armed: Option<Armed>,
    entered: i64,
}

impl FailPoint {
    /// Decides whether command `name` from a client named `app` is caught.
    fn check(&mut self, name: &str, app: Option<&str>) -> Option<Action> {
        let armed = self.armed.as_mut()?;
        if !armed.commands.iter().any(|c| c == name)
            || armed.app_name.as_deref().is_some_and(|a| Some(a) != app)
            || !armed.mode.fire()
        {
            return None;
        }
        let action = armed.action.clone();
        if matches!(armed.mode, Mode::Times(0)) {
            self.armed = None;
        }
        self.entered += 1;
        Some(action)
    }
}

/// The fail points of one server.
#[derive(Debug, Default)]
pub struct FailPoints {
    fail_command: FailPoint,
    get_more_after_checkout: FailPoint,
}

/// The error code `failGetMoreAfterCursorCheckout` throws without `errorCode` (InternalError).
const AFTER_CHECKOUT_DEFAULT_CODE: i32 = 1;

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
        let after_checkout = match name {
            "failCommand" => false,
            "failGetMoreAfterCursorCheckout" => true,
            other => return Err(CmdError::bad_value(format!("Cannot find failpoint: {other} (mongo-double offers failCommand and failGetMoreAfterCursorCheckout)"))),
        };
        let mode = Mode::parse(cmd.get("mode"))?;
        let data = cmd.get_document("data").cloned().unwrap_or_default();
        let armed = match mode {
            None => None,
            Some(mode) => Some(Armed {
                mode,
                // The getMore fail point reads only `errorCode` (and `appName`, through the
                // same matching as failCommand's).
                commands: if after_checkout {
                    vec!["getMore".to_string()]
                } else {
                    data.get_array("failCommands")
                        .map_err(|_| {
                            CmdError::bad_value(
                                "failCommand requires a 'failCommands' array in 'data'",
                            )
                        })?
                        .iter()
                        .filter_map(|b| b.as_str().map(str::to_string))
                        .collect()
                },
                action: if after_checkout {
                    Action {
                        error_code: Some(
                            data.get("errorCode")
                                .and_then(as_i64)
                                .map_or(AFTER_CHECKOUT_DEFAULT_CODE, |c| c as i32),
                        ),
                        ..Action::default()
                    }
                } else {
                    Action::from_data(&data)
                },
                app_name: data.get_str("appName").ok().map(str::to_string),
            }),
        };
        let point = if after_checkout {
            &mut self.get_more_after_checkout
        } else {
            &mut self.fail_command
        };
        let previous = std::mem::replace(&mut point.entered, 0);
        point.armed = armed;
        Ok(doc! {"count": previous, "ok": 1.0})
    }

    /// `failCommand`: decides whether command `name` from a client named `app` is caught
    /// as it arrives (`configureFailPoint` itself never is).
    pub fn check(&mut self, name: &str, app: Option<&str>) -> Option<Action> {
        if name == "configureFailPoint" {
            return None;
        }
        self.fail_command.check(name, app)
    }

    /// `failGetMoreAfterCursorCheckout`: the error code a getMore from a client named `app`
    /// fails with once its cursor is checked out, if the fail point fires.
    pub fn check_after_checkout(&mut self, app: Option<&str>) -> Option<i32> {
        self.get_more_after_checkout
            .check("getMore", app)
            .and_then(|a| a.error_code)
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

    #[test]
    fn the_two_fail_points_are_independent() {
        let mut fp = FailPoints::default();
        fp.configure(&doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"failCommands": ["getMore"], "errorCode": 91}})
            .expect("configure");
        fp.configure(&doc! {"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": {"times": 1}, "data": {}})
            .expect("configure");
        assert_eq!(fp.check_after_checkout(None), Some(1));
        assert_eq!(fp.check_after_checkout(None), None);
        assert_eq!(
            fp.check("getMore", None).and_then(|a| a.error_code),
            Some(91)
        );
        let off = fp
            .configure(
                &doc! {"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": "off"},
            )
            .expect("configure");
        assert_eq!(off.get_i64("count"), Ok(1));
        assert!(fp.check("getMore", None).is_some());
    }
}
