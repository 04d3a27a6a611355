//! What the status page remembers in memory about each heater: its recent temperature,
//! when it was last heard from, and its open alerts. Lost on restart (the shadow store
//! keeps the state itself; this is only for the page).
//!
//! Bounded twice:
//! - per heater, one point per [`BUCKET_MS`] (the first temperature heard in that minute)
//!   for [`BUCKETS`] buckets (3 h): a heater reporting every second costs one decode a
//!   minute for the chart, and at most [`BUCKETS`] points of 8 bytes;
//! - in heaters: at most [`MAX_HEATERS`]; a new one beyond that first forgets the tenth
//!   heard from longest ago, so a flood of made-up ids cannot grow it.
//!
//! [`History`] is pure (time is an argument); [`StatusBoard`] is the shared handle, a
//! broker [`Tap`] fed in the router before routing with the hook's one parse of the topic:
//! so it decodes a payload only when a chart point is due, and otherwise takes one lock
//! and writes one timestamp.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::alert_event::{AlertEvent, AlertState, Severity};
use crate::broker::tap::{Seen, Tap};
use crate::topics::{Route, ShadowTopic, Topics};

/// The reported field (and telemetry kind) charted as the heater's temperature.
pub const TEMPERATURE: &str = "temperature";
/// Width of one chart point.
pub const BUCKET_MS: i64 = 60_000;
/// Chart points kept per heater: 3 h at one a minute.
pub const BUCKETS: usize = 180;
/// Heaters remembered at most.
pub const MAX_HEATERS: usize = 2_000;
/// Open alerts kept per heater (one per rule; more rules than this are cut).
pub const MAX_OPEN_ALERTS: usize = 16;
/// Characters of an alert's value kept for the page.
const ALERT_VALUE_CHARS: usize = 64;

/// One chart point: the bucket (minutes since the epoch) and its temperature. `f32` and
/// `u32` keep it at 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub minute: u32,
    pub value: f32,
}

/// An alert fired and not cleared yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    pub alert_id: String,
    pub rule: String,
    pub severity: Severity,
    /// The value that fired it, as text (cut to a few dozen characters); empty for none.
    pub value: String,
    pub since_ms: i64,
}

/// What is remembered of one heater.
#[derive(Debug, Default)]
struct Heater {
    /// Oldest first, minutes strictly increasing.
    points: VecDeque<Point>,
    /// Epoch ms of the last message from the heater; 0 when only alerts were heard of.
    last_seen_ms: i64,
    alerts: Vec<OpenAlert>,
}

/// A heater as the page shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaterHistory {
    /// Epoch ms of the last message since the gateway started, if any.
    pub last_seen_ms: Option<i64>,
    /// Within the last [`BUCKETS`] buckets of `now`, oldest first.
    pub points: Vec<Point>,
    pub alerts: Vec<OpenAlert>,
}

/// The heaters' recent past; see the module doc for the bounds.
#[derive(Debug, Default)]
pub struct History {
    heaters: HashMap<String, Heater>,
}

fn minute_of(at_ms: i64) -> u32 {
    u32::try_from(at_ms.max(0) / BUCKET_MS).unwrap_or(u32::MAX)
}

impl History {
    /// Heaters remembered now.
    pub fn len(&self) -> usize {
        self.heaters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heaters.is_empty()
    }

    /// The heater's entry, made room for when it is new.
    fn heater(&mut self, device_id: &str) -> &mut Heater {
        if !self.heaters.contains_key(device_id) && self.heaters.len() >= MAX_HEATERS {
            self.forget_quietest();
        }
        self.heaters.entry(device_id.to_string()).or_default()
    }

    /// Forgets the tenth of the heaters heard from longest ago: one sort per
    /// `MAX_HEATERS / 10` new heaters, not one scan per new heater.
    fn forget_quietest(&mut self) {
        let mut seen: Vec<(i64, String)> = self
            .heaters
            .iter()
            .map(|(id, heater)| (heater.last_seen_ms, id.clone()))
            .collect();
        let cut = (MAX_HEATERS / 10).max(1).min(seen.len());
        seen.select_nth_unstable(cut - 1);
        for (_, id) in &seen[..cut] {
            self.heaters.remove(id);
        }
    }

    /// The heater sent something at `now_ms`.
    pub fn seen(&mut self, device_id: &str, now_ms: i64) {
        let heater = self.heater(device_id);
        heater.last_seen_ms = heater.last_seen_ms.max(now_ms);
    }

    /// Whether a temperature heard at `now_ms` would make a new point (the bucket is empty).
    pub fn wants_point(&self, device_id: &str, now_ms: i64) -> bool {
        self.heaters
            .get(device_id)
            .and_then(|heater| heater.points.back())
            .is_none_or(|last| last.minute < minute_of(now_ms))
    }

    /// A temperature heard at `now_ms`: the bucket's point unless it has one already.
    pub fn record(&mut self, device_id: &str, now_ms: i64, value: f64) {
        if !value.is_finite() || !self.wants_point(device_id, now_ms) {
            return;
        }
        let minute = minute_of(now_ms);
        let heater = self.heater(device_id);
        // Room for all the points at once: growing by doubling would end at 256.
        if heater.points.capacity() < BUCKETS {
            heater.points.reserve_exact(BUCKETS - heater.points.len());
        }
        let oldest_kept = minute.saturating_sub(BUCKETS as u32 - 1);
        while heater
            .points
            .front()
            .is_some_and(|p| p.minute < oldest_kept)
        {
            heater.points.pop_front();
        }
        heater.points.push_back(Point {
            minute,
            // A temperature needs no more than f32's 7 digits.
            value: value as f32,
        });
    }

    /// An alert fired (opened) or cleared (closed) for its device.
    pub fn alert(&mut self, event: &AlertEvent) {
        match event.state {
            AlertState::Firing => {
                let heater = self.heater(&event.device_id);
                heater.alerts.retain(|a| a.rule != event.rule);
                if heater.alerts.len() < MAX_OPEN_ALERTS {
                    heater.alerts.push(OpenAlert {
                        alert_id: event.alert_id.clone(),
                        rule: event.rule.clone(),
                        severity: event.severity,
                        value: short_value(&event.value),
                        since_ms: event.at_ms,
                    });
                }
            }
            AlertState::Cleared => {
                if let Some(heater) = self.heaters.get_mut(&event.device_id) {
                    heater.alerts.retain(|a| a.alert_id != event.alert_id);
                }
            }
        }
    }

    /// The heater's last message, its points of the last 3 h and its open alerts.
    pub fn get(&self, device_id: &str, now_ms: i64) -> HeaterHistory {
        let Some(heater) = self.heaters.get(device_id) else {
            return HeaterHistory::default();
        };
        let oldest_kept = minute_of(now_ms).saturating_sub(BUCKETS as u32 - 1);
        HeaterHistory {
            last_seen_ms: (heater.last_seen_ms > 0).then_some(heater.last_seen_ms),
            points: heater
                .points
                .iter()
                .filter(|p| p.minute >= oldest_kept)
                .copied()
                .collect(),
            alerts: heater.alerts.clone(),
        }
    }
}

fn short_value(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(ALERT_VALUE_CHARS).collect()
}

/// Reads a temperature out of a payload.
type Decoder = fn(&[u8]) -> Option<f64>;

/// The temperature in a reported update's `state`, if it has one.
fn reported_temperature(payload: &[u8]) -> Option<f64> {
    let (_, request) = crate::codec::decode_request(payload).ok()?;
    request.state?.get(TEMPERATURE)?.as_f64()
}

/// A reading of `telemetry/temperature`: a number, or `{"value": n}` (see DESIGN.md §10).
fn telemetry_temperature(payload: &[u8]) -> Option<f64> {
    crate::telemetry::decode(payload).ok()?.value.as_f64()
}

/// The gateway's own `system/alerts` message: the event inside the reply envelope.
#[derive(Deserialize)]
struct AlertMessage {
    payload: AlertEvent,
}

/// The shared [`History`], fed by the broker hook with what devices publish and the alerts
/// the gateway announces; cheap to clone.
#[derive(Clone)]
pub struct StatusBoard {
    alerts_topic: Arc<str>,
    history: Arc<Mutex<History>>,
}

impl Tap for StatusBoard {
    fn on_publish(&self, seen: &Seen<'_>) -> bool {
        self.observe(seen.internal, seen.topic, seen.route.as_ref(), seen.payload);
        false
    }
}

impl StatusBoard {
    pub fn new(topics: &Topics) -> Self {
        Self {
            alerts_topic: topics.system("alerts").into(),
            history: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A publish that passed the ACL, `route` its topic parsed. `internal`: from one of the
    /// gateway's own links (only its alerts count then; a device's `system/alerts` is not
    /// believed).
    fn observe(&self, internal: bool, topic: &str, route: Option<&Route<'_>>, payload: &Bytes) {
        let now = now_ms();
        if internal {
            if topic == &*self.alerts_topic {
                match serde_json::from_slice::<AlertMessage>(payload) {
                    Ok(message) => self.lock().alert(&message.payload),
                    Err(e) => tracing::debug!(error = %e, "an alert the status page cannot read"),
                }
            }
            return;
        }
        let (device_id, decode): (&str, Decoder) = match route {
            Some(Route::Shadow {
                device_id,
                kind: ShadowTopic::Reported,
            }) => (*device_id, reported_temperature as Decoder),
            Some(Route::Telemetry { device_id, kind }) if *kind == TEMPERATURE => {
                (*device_id, telemetry_temperature as Decoder)
            }
            Some(
                Route::Telemetry { device_id, .. }
                | Route::CommandResponse { device_id }
                | Route::Shadow {
                    device_id,
                    kind: ShadowTopic::Get,
                },
            ) => {
                self.lock().seen(device_id, now);
                return;
            }
            _ => return,
        };
        let due = {
            let mut history = self.lock();
            history.seen(device_id, now);
            history.wants_point(device_id, now)
        };
        // Decoded outside the lock, and only once a minute per heater.
        if due {
            if let Some(value) = decode(payload) {
                self.lock().record(device_id, now, value);
            }
        }
    }

    /// Feeds `payload` as the hook would, for the tests.
    #[cfg(test)]
    pub(crate) fn tap(&self, topics: &Topics, internal: bool, topic: &str, payload: &Value) {
        let payload = Bytes::from(payload.to_string());
        self.on_publish(&Seen {
            client_id: if internal { "iotsphere:test" } else { "h1" },
            internal,
            topic,
            route: topics.parse(topic).ok(),
            payload: &payload,
            qos: 1,
        });
    }

    /// What is known of `device_id` at `now_ms`.
    pub fn heater(&self, device_id: &str, now_ms: i64) -> HeaterHistory {
        self.lock().get(device_id, now_ms)
    }
}

/// Milliseconds since the epoch (0 before 1970: a broken clock shows as "long ago").
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000;

    fn event(rule: &str, state: AlertState, at_ms: i64) -> AlertEvent {
        AlertEvent {
            alert_id: format!("{rule}:h1:{T0}"),
            rule: rule.into(),
            device_id: "h1".into(),
            severity: Severity::Critical,
            state,
            value: serde_json::json!(91.5),
            at_ms,
        }
    }

    #[test]
    fn one_point_per_minute_the_first_heard() {
        let mut history = History::default();
        for second in 0..180 {
            history.record("h1", T0 + second * 1000, 40.0 + second as f64);
        }
        let points = history.get("h1", T0 + 180_000).points;
        assert!(points.len() <= 4, "{points:?}");
        assert!(points.windows(2).all(|w| w[0].minute < w[1].minute));
        assert_eq!(points[0].value, 40.0);
    }

    #[test]
    fn three_hours_at_most_per_heater() {
        let mut history = History::default();
        // Five hours, one reading a minute.
        for minute in 0..300 {
            history.record("h1", T0 + minute * BUCKET_MS, minute as f64);
        }
        let now = T0 + 299 * BUCKET_MS;
        let points = history.get("h1", now).points;
        assert_eq!(points.len(), BUCKETS);
        assert_eq!(
            points[0].value,
            (300 - BUCKETS) as f32,
            "the oldest went first"
        );
        assert_eq!(
            history.heaters["h1"].points.len(),
            BUCKETS,
            "and from memory"
        );
        // An hour of silence: what is older than 3 h is not shown.
        assert_eq!(history.get("h1", now + 60 * BUCKET_MS).points.len(), 120);
    }

    #[test]
    fn heaters_are_bounded_and_the_quietest_forgotten() {
        let mut history = History::default();
        for n in 0..MAX_HEATERS as i64 * 3 {
            history.seen(&format!("heater-{n}"), T0 + n);
        }
        assert!(history.len() <= MAX_HEATERS);
        let newest = format!("heater-{}", MAX_HEATERS * 3 - 1);
        assert!(history.get(&newest, T0).last_seen_ms.is_some());
        assert_eq!(history.get("heater-0", T0), HeaterHistory::default());
    }

    #[test]
    fn a_point_costs_eight_bytes() {
        // The README's memory figure for 1,000 heaters rests on this.
        assert_eq!(std::mem::size_of::<Point>(), 8);
    }

    #[test]
    fn non_numbers_make_no_point() {
        let mut history = History::default();
        history.record("h1", T0, f64::NAN);
        history.record("h1", T0, f64::INFINITY);
        assert!(history.get("h1", T0).points.is_empty());
    }

    #[test]
    fn alerts_open_and_close() {
        let mut history = History::default();
        history.alert(&event("too-hot", AlertState::Firing, T0));
        history.alert(&event("offline", AlertState::Firing, T0));
        let open = history.get("h1", T0).alerts;
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].value, "91.5");
        history.alert(&event("too-hot", AlertState::Cleared, T0 + 1));
        let open = history.get("h1", T0).alerts;
        assert_eq!(
            open.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(),
            ["offline"]
        );
        assert_eq!(
            history.get("h1", T0).last_seen_ms,
            None,
            "an alert is not a message from the heater"
        );
    }

    #[test]
    fn the_board_reads_reports_readings_and_the_gateways_alerts() {
        let topics = Topics::new("iotsphere").expect("topics");
        let board = StatusBoard::new(&topics);
        let publish = |internal: bool, topic: &str, payload: serde_json::Value| {
            board.tap(&topics, internal, topic, &payload);
        };
        publish(
            false,
            "iotsphere/devices/h1/shadow/reported",
            serde_json::json!({"state": {"temperature": 48.5}}),
        );
        publish(
            false,
            "iotsphere/devices/h2/telemetry/temperature",
            serde_json::json!({"value": 61}),
        );
        let alert = serde_json::json!({"metadata": {}, "payload": event("too-hot", AlertState::Firing, T0)});
        publish(false, "iotsphere/system/alerts", alert.clone());
        let now = now_ms();
        let h1 = board.heater("h1", now);
        assert_eq!(h1.points.len(), 1);
        assert_eq!(h1.points[0].value, 48.5);
        assert!(h1.last_seen_ms.is_some());
        assert!(
            h1.alerts.is_empty(),
            "a client's system/alerts is not believed"
        );
        assert_eq!(board.heater("h2", now).points[0].value, 61.0);

        publish(true, "iotsphere/system/alerts", alert);
        assert_eq!(board.heater("h1", now).alerts.len(), 1);
    }
}
