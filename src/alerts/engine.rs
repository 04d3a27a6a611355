//! The alert state machine: pure (time is an argument), so every rule is tested with
//! explicit clocks.
//!
//! Per rule and device: `Normal` → bad value → `Rising` → bad for `for` → **fired**
//! (`Firing`) → good value → `Falling` → good for `for` → **cleared** (`Normal`, cooldown
//! starts). A value that flips back within `for` returns to the previous state, so a noisy
//! signal fires once and clears once. After clearing, the rule does not fire again for that
//! device before `cooldown` has passed: at most one open alert per rule and device, and no
//! storms. `changed` rules fire an event on each change (cooldown permitting) and never stay
//! open. `offline` rules treat "disconnected" as the bad value and clear on reconnect.

use std::collections::HashMap;

use serde_json::Value;

pub use crate::alert_event::{AlertEvent, AlertState};
use crate::alert_rule::{AlertRule, Condition, Source};

/// Something a device did that rules may judge.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Telemetry {
        device_id: String,
        kind: String,
        value: Value,
    },
    /// The `state` of a reported update (partial).
    Reported {
        device_id: String,
        state: Value,
    },
    Connection {
        device_id: String,
        connected: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Normal,
    Rising {
        since_ms: i64,
        value: Value,
    },
    Firing {
        alert_id: String,
    },
    Falling {
        alert_id: String,
        since_ms: i64,
        value: Value,
    },
}

#[derive(Debug)]
struct Track {
    phase: Phase,
    /// Last value seen, for `changed`.
    last: Option<Value>,
    /// No firing before this time.
    quiet_until_ms: i64,
}

impl Default for Track {
    fn default() -> Self {
        Track {
            phase: Phase::Normal,
            last: None,
            quiet_until_ms: i64::MIN,
        }
    }
}

/// The value of an alert cleared because the device moved to another gateway.
pub const MOVED: &str = "served by another gateway";

/// All rules over all devices. Memory: one small entry per rule and device that ever
/// matched.
pub struct Engine {
    rules: Vec<AlertRule>,
    tracks: HashMap<(usize, String), Track>,
}

impl Engine {
    pub fn new(rules: Vec<AlertRule>) -> Engine {
        Engine {
            rules,
            tracks: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules it judges.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// Alerts open now (fired, not yet cleared).
    pub fn open_alerts(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| matches!(t.phase, Phase::Firing { .. } | Phase::Falling { .. }))
            .count()
    }

    /// Judges one observation at `now_ms`.
    pub fn observe(&mut self, now_ms: i64, observation: &Observation) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for index in 0..self.rules.len() {
            let rule = &self.rules[index];
            let Some((device_id, value)) = watched_value(rule, observation) else {
                continue;
            };
            let track = self
                .tracks
                .entry((index, device_id.to_string()))
                .or_default();
            if rule.condition == Condition::Changed {
                let changed = track.last.as_ref().is_some_and(|last| *last != value);
                if changed && now_ms >= track.quiet_until_ms {
                    let fired = event(rule, device_id, AlertState::Firing, value.clone(), now_ms);
                    let cleared = AlertEvent {
                        state: AlertState::Cleared,
                        ..fired.clone()
                    };
                    events.extend([fired, cleared]);
                    track.quiet_until_ms = now_ms + millis(rule.cooldown);
                }
                track.last = Some(value);
                continue;
            }
            let bad = match rule.condition {
                Condition::Disconnected => value == Value::Bool(false),
                _ => match rule.is_bad(&value) {
                    Some(bad) => bad,
                    None => continue,
                },
            };
            let value = if rule.condition == Condition::Disconnected {
                Value::Null
            } else {
                value
            };
            step(
                rule,
                device_id,
                track,
                now_ms,
                Some((bad, value)),
                &mut events,
            );
        }
        events
    }

    /// Stops judging a device another gateway serves now: its pending alerts are dropped
    /// and its open ones cleared (the value says why), since nothing here would clear them.
    pub fn forget(&mut self, device_id: &str, now_ms: i64) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let rules = &self.rules;
        self.tracks.retain(|(index, tracked), track| {
            if tracked != device_id {
                return true;
            }
            if let Phase::Firing { alert_id } | Phase::Falling { alert_id, .. } = &track.phase {
                events.push(clearing(
                    &rules[*index],
                    device_id,
                    alert_id,
                    Value::String(MOVED.into()),
                    now_ms,
                ));
            }
            false
        });
        events
    }

    /// Lets time pass: fires and clears what has held for its rule's `for`.
    pub fn tick(&mut self, now_ms: i64) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for ((index, device_id), track) in &mut self.tracks {
            step(
                &self.rules[*index],
                device_id,
                track,
                now_ms,
                None,
                &mut events,
            );
        }
        events
    }
}

/// The device and value `rule` watches in `observation`, if any. For `offline` rules the
/// value is the connection state (`true` = connected).
fn watched_value<'o>(rule: &AlertRule, observation: &'o Observation) -> Option<(&'o str, Value)> {
    match (&rule.source, observation) {
        (
            Source::Telemetry { kind, path },
            Observation::Telemetry {
                device_id,
                kind: seen,
                value,
            },
        ) if kind == seen => Some((device_id, field(value, path)?.clone())),
        (Source::Reported { path }, Observation::Reported { device_id, state }) => {
            Some((device_id, field(state, path)?.clone()))
        }
        (
            Source::Offline,
            Observation::Connection {
                device_id,
                connected,
            },
        ) => Some((device_id, Value::Bool(*connected))),
        _ => None,
    }
}

fn field<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// One transition of a track: with a fresh judgement `seen`, or with time only (`None`).
fn step(
    rule: &AlertRule,
    device_id: &str,
    track: &mut Track,
    now_ms: i64,
    seen: Option<(bool, Value)>,
    events: &mut Vec<AlertEvent>,
) {
    let hold = millis(rule.hold);
    // A device that is back is back: an offline alert clears at once.
    let clear_hold = if rule.condition == Condition::Disconnected {
        0
    } else {
        hold
    };
    let phase = std::mem::replace(&mut track.phase, Phase::Normal);
    track.phase = match (phase, seen) {
        (Phase::Normal, Some((true, value))) => Phase::Rising {
            since_ms: now_ms,
            value,
        },
        (Phase::Rising { .. }, Some((false, _))) => Phase::Normal,
        (Phase::Rising { since_ms, .. }, Some((true, value))) => Phase::Rising { since_ms, value },
        (Phase::Firing { alert_id }, Some((false, value))) => Phase::Falling {
            alert_id,
            since_ms: now_ms,
            value,
        },
        (Phase::Falling { alert_id, .. }, Some((true, _))) => Phase::Firing { alert_id },
        (
            Phase::Falling {
                alert_id, since_ms, ..
            },
            Some((false, value)),
        ) => Phase::Falling {
            alert_id,
            since_ms,
            value,
        },
        (phase, _) => phase,
    };
    // Promote what has held long enough (also right away when `for` is 0).
    match &track.phase {
        Phase::Rising { since_ms, value }
            if now_ms - since_ms >= hold && now_ms >= track.quiet_until_ms =>
        {
            let fired = event(rule, device_id, AlertState::Firing, value.clone(), now_ms);
            track.phase = Phase::Firing {
                alert_id: fired.alert_id.clone(),
            };
            events.push(fired);
        }
        Phase::Falling {
            alert_id,
            since_ms,
            value,
        } if now_ms - since_ms >= clear_hold => {
            events.push(clearing(rule, device_id, alert_id, value.clone(), now_ms));
            track.phase = Phase::Normal;
            track.quiet_until_ms = now_ms + millis(rule.cooldown);
        }
        _ => {}
    }
}

fn event(
    rule: &AlertRule,
    device_id: &str,
    state: AlertState,
    value: Value,
    now_ms: i64,
) -> AlertEvent {
    AlertEvent {
        alert_id: format!("{}:{device_id}:{now_ms}", rule.name),
        rule: rule.name.clone(),
        device_id: device_id.to_string(),
        severity: rule.severity,
        state,
        value,
        at_ms: now_ms,
    }
}

/// The clearing of the open alert `alert_id` (same id as its firing).
fn clearing(
    rule: &AlertRule,
    device_id: &str,
    alert_id: &str,
    value: Value,
    now_ms: i64,
) -> AlertEvent {
    AlertEvent {
        alert_id: alert_id.to_string(),
        ..event(rule, device_id, AlertState::Cleared, value, now_ms)
    }
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertRuleConfig;
    use serde_json::json;

    fn rule(source: &str, condition: &str, hold: &str, cooldown: &str) -> AlertRule {
        AlertRule::parse(&AlertRuleConfig {
            name: "r".into(),
            source: source.into(),
            condition: condition.into(),
            hold: hold.into(),
            cooldown: cooldown.into(),
            ..AlertRuleConfig::default()
        })
        .expect("rule")
    }

    fn temperature(value: f64) -> Observation {
        Observation::Telemetry {
            device_id: "h1".into(),
            kind: "temperature".into(),
            value: json!(value),
        }
    }

    /// Feeds `(time ms, value)` samples and ticks every 100 ms; returns (time, state) of
    /// every event.
    fn run(engine: &mut Engine, samples: &[(i64, f64)], until_ms: i64) -> Vec<(i64, AlertState)> {
        let mut events = Vec::new();
        let mut samples = samples.iter().peekable();
        for now in (0..=until_ms).step_by(100) {
            while let Some((_, value)) = samples.next_if(|(at, _)| *at <= now) {
                events.extend(engine.observe(now, &temperature(*value)));
            }
            events.extend(engine.tick(now));
        }
        events.iter().map(|e| (e.at_ms, e.state)).collect()
    }

    use AlertState::{Cleared, Firing};

    #[test]
    fn table() {
        // (name, for, cooldown, samples, expected events)
        type Samples = &'static [(i64, f64)];
        type Events = &'static [(i64, AlertState)];
        let cases: &[(&str, &str, &str, Samples, Events)] = &[
            (
                "good values never fire",
                "1s",
                "0s",
                &[(0, 60.0), (500, 70.0)],
                &[],
            ),
            (
                "for 0: fires and clears at once",
                "0s",
                "0s",
                &[(0, 90.0), (300, 60.0)],
                &[(0, Firing), (300, Cleared)],
            ),
            (
                "fires after holding for `for`",
                "1s",
                "0s",
                &[(0, 90.0)],
                &[(1000, Firing)],
            ),
            (
                "a blip shorter than `for` never fires",
                "1s",
                "0s",
                &[(0, 90.0), (500, 60.0)],
                &[],
            ),
            (
                "clears after good for `for`",
                "1s",
                "0s",
                &[(0, 90.0), (2000, 60.0)],
                &[(1000, Firing), (3000, Cleared)],
            ),
            (
                "noise while firing does not clear",
                "1s",
                "0s",
                &[
                    (0, 90.0),
                    (1500, 60.0),
                    (1800, 90.0),
                    (2100, 60.0),
                    (2400, 91.0),
                ],
                &[(1000, Firing)],
            ),
            (
                "cooldown holds a re-fire back",
                "0s",
                "5s",
                &[(0, 90.0), (100, 60.0), (200, 90.0)],
                &[(0, Firing), (100, Cleared), (5100, Firing)],
            ),
        ];
        for (name, hold, cooldown, samples, expected) in cases {
            let mut engine =
                Engine::new(vec![rule("telemetry.temperature", "> 85", hold, cooldown)]);
            assert_eq!(&run(&mut engine, samples, 6000), expected, "{name}");
        }
    }

    #[test]
    fn a_device_that_moved_away_is_forgotten_and_its_open_alerts_cleared() {
        let mut engine = Engine::new(vec![
            rule("offline", "", "1s", "0s"),
            rule("telemetry.temperature", "> 85", "0s", "0s"),
        ]);
        let gone = Observation::Connection {
            device_id: "h1".into(),
            connected: false,
        };
        assert!(engine.observe(0, &gone).is_empty());
        let fired = engine.observe(0, &temperature(90.0));
        assert_eq!(fired.len(), 1);

        let cleared = engine.forget("h1", 500);
        assert_eq!(
            cleared.len(),
            1,
            "only the open alert is cleared: {cleared:?}"
        );
        assert_eq!(cleared[0].alert_id, fired[0].alert_id);
        assert_eq!(cleared[0].state, Cleared);
        assert_eq!(cleared[0].value, json!(MOVED));
        assert!(
            engine.tick(5000).is_empty(),
            "the pending offline alert never fires"
        );
        assert_eq!(engine.open_alerts(), 0);
    }

    #[test]
    fn a_noisy_signal_fires_once_and_clears_once() {
        let mut engine = Engine::new(vec![rule("telemetry.temperature", "> 85", "500ms", "1m")]);
        // Around 86 ± 3 for 5 s, mostly above; then cold.
        let mut samples: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 100, if i % 7 == 3 { 83.0 } else { 88.0 }))
            .collect();
        samples.extend((50..80).map(|i| (i * 100, if i % 9 == 4 { 87.0 } else { 60.0 })));
        let events = run(&mut engine, &samples, 9000);
        let states: Vec<AlertState> = events.iter().map(|(_, s)| *s).collect();
        assert_eq!(states, vec![Firing, Cleared], "{events:?}");
        assert_eq!(engine.open_alerts(), 0);
    }

    #[test]
    fn each_device_and_rule_has_its_own_alert() {
        let mut engine = Engine::new(vec![
            rule("telemetry.temperature", "> 85", "0s", "0s"),
            rule("telemetry.temperature", "> 95", "0s", "0s"),
        ]);
        let hot = |device: &str, value: f64| Observation::Telemetry {
            device_id: device.into(),
            kind: "temperature".into(),
            value: json!(value),
        };
        assert_eq!(engine.observe(0, &hot("h1", 99.0)).len(), 2);
        assert_eq!(engine.observe(0, &hot("h2", 90.0)).len(), 1);
        assert_eq!(engine.observe(0, &hot("h1", 99.0)).len(), 0, "already open");
        assert_eq!(engine.open_alerts(), 3);
        let pressure = Observation::Telemetry {
            device_id: "h1".into(),
            kind: "pressure".into(),
            value: json!(99.0),
        };
        assert!(
            engine.observe(0, &pressure).is_empty(),
            "other kinds are not watched"
        );
    }

    #[test]
    fn offline_fires_after_for_and_clears_on_reconnect() {
        let mut engine = Engine::new(vec![rule("offline", "", "2s", "0s")]);
        let connection = |connected| Observation::Connection {
            device_id: "h1".into(),
            connected,
        };
        assert!(engine.observe(0, &connection(true)).is_empty());
        assert!(engine.observe(1000, &connection(false)).is_empty());
        assert!(engine.tick(2500).is_empty());
        let fired = engine.tick(3000);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].state, fired[0].value.clone()),
            (Firing, Value::Null)
        );
        let cleared = engine.observe(4000, &connection(true));
        assert_eq!(cleared.len(), 1, "cleared on reconnect");
        assert_eq!(
            cleared[0].alert_id, fired[0].alert_id,
            "one alert, fired then cleared"
        );
    }

    #[test]
    fn reported_fields_and_changed_events() {
        let mut engine = Engine::new(vec![
            rule("reported.heater.fault", "!= \"none\"", "0s", "0s"),
            rule("reported.mode", "changed", "0s", "10s"),
        ]);
        let reported = |state: Value| Observation::Reported {
            device_id: "h1".into(),
            state,
        };
        let events = engine.observe(
            0,
            &reported(json!({"heater": {"fault": "E12"}, "mode": "eco"})),
        );
        assert_eq!(events.len(), 1, "fault fires; a first mode is no change");
        assert!(
            engine
                .observe(1, &reported(json!({"heater": {"on": true}})))
                .is_empty(),
            "fields absent: nothing judged"
        );
        let events = engine.observe(2, &reported(json!({"mode": "boost"})));
        assert_eq!(
            events.iter().map(|e| e.state).collect::<Vec<_>>(),
            vec![Firing, Cleared]
        );
        assert!(
            engine
                .observe(3, &reported(json!({"mode": "eco"})))
                .is_empty(),
            "cooldown"
        );
        assert_eq!(engine.open_alerts(), 1, "a changed event never stays open");
    }
}
