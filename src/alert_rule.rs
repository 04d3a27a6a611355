//! An alert rule as a field technician writes it (`[[alerts]]`), parsed once at startup.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::alert_event::Severity;

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `telemetry.<kind>[.<path in an object value>]`
    Telemetry { kind: String, path: Vec<String> },
    /// `reported.<path>`: a field of the device's reported state.
    Reported { path: Vec<String> },
    /// `offline`: the device has been disconnected for the rule's `for`.
    Offline,
}

/// When a value is "bad".
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Above(f64),
    AtLeast(f64),
    Below(f64),
    AtMost(f64),
    Equals(Value),
    Differs(Value),
    /// Any change of the value: an event, never "open".
    Changed,
    /// The `offline` source: disconnected.
    Disconnected,
}

/// An alert rule as written in the config (checked by [`AlertRule::parse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub name: String,
    /// `telemetry.<kind>[.<field>]`, `reported.<field>` or `offline`.
    pub source: String,
    /// `> N`, `>= N`, `< N`, `<= N`, `== V`, `!= V` or `changed`; empty for `offline`.
    pub condition: String,
    /// How long the condition must hold before the alert fires (and stop before it clears).
    #[serde(rename = "for")]
    pub hold: String,
    pub severity: Severity,
    pub cooldown: String,
}

impl Default for AlertRuleConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            source: String::new(),
            condition: String::new(),
            hold: "0s".into(),
            severity: Severity::Warning,
            cooldown: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub source: Source,
    pub condition: Condition,
    /// The condition must hold (or stop holding) this long before the alert fires (clears).
    pub hold: Duration,
    pub severity: Severity,
    /// After clearing, the rule does not fire again for the same device within this time.
    pub cooldown: Duration,
}

impl AlertRule {
    /// Parses a configured rule; `Err((field, message))` names what is wrong.
    pub fn parse(config: &AlertRuleConfig) -> Result<AlertRule, (&'static str, String)> {
        if !crate::topics::is_valid_id(&config.name) {
            return Err(("name", "must be 1-64 characters of A-Z a-z 0-9 _ -".into()));
        }
        let source = parse_source(&config.source).map_err(|m| ("source", m))?;
        let condition = if source == Source::Offline {
            if !config.condition.is_empty() {
                return Err((
                    "condition",
                    "an offline rule has no condition (only `for`)".into(),
                ));
            }
            Condition::Disconnected
        } else {
            parse_condition(&config.condition).map_err(|m| ("condition", m))?
        };
        let duration = |text: &str, field| {
            humantime::parse_duration(text)
                .map_err(|e| (field, format!("{e} (e.g. \"30s\", \"5m\", \"1h\")")))
        };
        let hold = duration(&config.hold, "for")?;
        if source == Source::Offline && hold.is_zero() {
            return Err(("for", "an offline rule needs how long, e.g. \"10m\"".into()));
        }
        Ok(AlertRule {
            name: config.name.clone(),
            source,
            condition,
            hold,
            severity: config.severity,
            cooldown: duration(&config.cooldown, "cooldown")?,
        })
    }

    /// Is `value` bad? `None` when the value cannot be judged (e.g. a string for `> 85`).
    pub fn is_bad(&self, value: &Value) -> Option<bool> {
        let number = || value.as_f64();
        Some(match &self.condition {
            Condition::Above(limit) => number()? > *limit,
            Condition::AtLeast(limit) => number()? >= *limit,
            Condition::Below(limit) => number()? < *limit,
            Condition::AtMost(limit) => number()? <= *limit,
            Condition::Equals(expected) => same(value, expected),
            Condition::Differs(expected) => !same(value, expected),
            Condition::Changed | Condition::Disconnected => return None,
        })
    }
}

/// Equality where 85 and 85.0 are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn parse_source(text: &str) -> Result<Source, String> {
    let shape = "must be telemetry.<kind>[.<field>], reported.<field> or offline";
    let mut parts = text.split('.');
    let source = match parts.next() {
        Some("offline") => Source::Offline,
        Some("telemetry") => Source::Telemetry {
            kind: parts.next().ok_or(shape)?.to_string(),
            path: parts.by_ref().map(str::to_string).collect(),
        },
        Some("reported") => Source::Reported {
            path: parts.by_ref().map(str::to_string).collect(),
        },
        _ => return Err(shape.into()),
    };
    let fields: Vec<&str> = text.split('.').skip(1).collect();
    if fields.iter().any(|f| f.is_empty())
        || matches!(&source, Source::Offline if !fields.is_empty())
        || matches!(&source, Source::Reported { path } if path.is_empty())
    {
        return Err(shape.into());
    }
    if let Source::Telemetry { kind, .. } = &source {
        if !matches!(kind.as_str(), "temperature" | "pressure" | "status") {
            return Err("telemetry kind must be temperature, pressure or status".into());
        }
    }
    Ok(source)
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    let text = text.trim();
    if text == "changed" {
        return Ok(Condition::Changed);
    }
    let shape = "must be `> N`, `>= N`, `< N`, `<= N`, `== VALUE`, `!= VALUE` or `changed`";
    let (operator, operand) = [">=", "<=", "==", "!=", ">", "<"]
        .iter()
        .find_map(|op| text.strip_prefix(op).map(|rest| (*op, rest.trim())))
        .ok_or(shape)?;
    if operand.is_empty() {
        return Err(shape.into());
    }
    // A JSON literal (85, true, "E12"); a bare word is taken as a string.
    let value: Value =
        serde_json::from_str(operand).unwrap_or_else(|_| Value::String(operand.to_string()));
    let number = || {
        value
            .as_f64()
            .ok_or_else(|| format!("`{operator}` needs a number, got `{operand}`"))
    };
    Ok(match operator {
        ">" => Condition::Above(number()?),
        ">=" => Condition::AtLeast(number()?),
        "<" => Condition::Below(number()?),
        "<=" => Condition::AtMost(number()?),
        "==" => Condition::Equals(value),
        _ => Condition::Differs(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(source: &str, condition: &str, hold: &str) -> AlertRuleConfig {
        AlertRuleConfig {
            name: "r".into(),
            source: source.into(),
            condition: condition.into(),
            hold: hold.into(),
            ..AlertRuleConfig::default()
        }
    }

    #[test]
    fn sources_and_conditions() {
        let rule = AlertRule::parse(&config("telemetry.temperature", "> 85", "30s")).expect("ok");
        assert_eq!(
            rule.source,
            Source::Telemetry {
                kind: "temperature".into(),
                path: vec![]
            }
        );
        assert_eq!(rule.condition, Condition::Above(85.0));
        assert_eq!(rule.hold, Duration::from_secs(30));
        let rule = AlertRule::parse(&config("reported.heater.fault", "!= none", "0s")).expect("ok");
        assert_eq!(
            rule.source,
            Source::Reported {
                path: vec!["heater".into(), "fault".into()]
            }
        );
        assert_eq!(rule.condition, Condition::Differs(json!("none")));
        let rule = AlertRule::parse(&config("telemetry.status.code", "== \"E12\"", "0s"));
        assert_eq!(rule.expect("ok").condition, Condition::Equals(json!("E12")));
        let rule = AlertRule::parse(&config("offline", "", "10m")).expect("ok");
        assert_eq!(rule.condition, Condition::Disconnected);
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (config("telemetry.humidity", "> 1", "0s"), "source"),
            (config("reported", "> 1", "0s"), "source"),
            (config("offline.x", "", "1m"), "source"),
            (config("telemetry.pressure", "above 3", "0s"), "condition"),
            (config("telemetry.pressure", "> hot", "0s"), "condition"),
            (config("telemetry.pressure", ">", "0s"), "condition"),
            (config("telemetry.pressure", "> 3", "soon"), "for"),
            (config("offline", "", "0s"), "for"),
            (config("offline", "> 1", "1m"), "condition"),
        ];
        for (config, field) in cases {
            let err = AlertRule::parse(&config).expect_err(&format!("{config:?}"));
            assert_eq!(err.0, field, "{config:?}: {}", err.1);
        }
    }

    #[test]
    fn judging_values() {
        let rule = AlertRule::parse(&config("telemetry.temperature", ">= 85", "0s")).expect("ok");
        assert_eq!(rule.is_bad(&json!(85)), Some(true));
        assert_eq!(rule.is_bad(&json!(84.9)), Some(false));
        assert_eq!(rule.is_bad(&json!("hot")), None);
        let rule = AlertRule::parse(&config("reported.mode", "== 3", "0s")).expect("ok");
        assert_eq!(
            rule.is_bad(&json!(3.0)),
            Some(true),
            "85 and 85.0 are equal"
        );
    }
}
