//! The status page at `/` for field technicians: plain server-rendered HTML, sized for a
//! phone, read-only, no script (it works with JavaScript off), reloading itself every
//! [`REFRESH_SECS`]. At the top what the whole gateway depends on (store, uplink, outbox
//! with the age of its oldest item, bridge); then one card per heater (online or not, last
//! seen, temperature against setpoint, pending delta, open alerts, shadow version, and a
//! chart of its last hours from [`history`]); a search by id (`?q=`, filtered here, so it
//! needs no script). Everything that comes from devices (ids, state, alert values,
//! rejection messages) is HTML-escaped.

pub mod history;

use std::fmt::Write;
use std::time::SystemTime;

use serde_json::Value;

pub use history::{HeaterHistory, StatusBoard};

use crate::lease::LeaseRole;
use crate::metrics::{Metrics, RecentRejection};
use crate::reports::BridgeReport;
use crate::shadow::{Document, Object};
use crate::store::ShadowStore;

/// Heaters listed at most; a site with thousands gets the first matches and a count (the
/// page must stay light on a phone and on the Pi), and the search finds the others.
pub const MAX_SHADOWS_SHOWN: usize = 200;
/// Seconds between two reloads of the page (long enough to type an id in the search).
pub const REFRESH_SECS: u32 = 15;
/// The desired field shown as the heater's setpoint (the reported one when nothing is
/// desired: the setpoint the heater runs with).
pub const SETPOINT: &str = "targetTemp";
/// Characters of a search kept.
const MAX_QUERY_CHARS: usize = 64;

/// The outbox towards MongoDB.
pub struct OutboxView {
    pub items: usize,
    pub oldest_age_secs: Option<u64>,
}

/// One heater's card.
pub struct HeaterView {
    pub device_id: String,
    pub online: bool,
    /// Epoch ms of the last message from it (this run), or of its last reported change.
    pub last_seen_ms: Option<i64>,
    pub version: u64,
    /// `reported.temperature`.
    pub temperature: Option<Value>,
    /// `desired.targetTemp`, else `reported.targetTemp`.
    pub setpoint: Option<Value>,
    pub delta: Object,
    pub history: HeaterHistory,
}

impl HeaterView {
    /// Open alerts first, then offline heaters, then the rest (each by id): what a
    /// technician came for is at the top.
    fn attention(&self) -> u8 {
        match (self.history.alerts.is_empty(), self.online) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }
}

/// What the page shows.
pub struct StatusView {
    pub gateway_id: String,
    pub version: &'static str,
    pub uptime_secs: u64,
    /// `None` when the store is writable, else why not.
    pub store_problem: Option<String>,
    pub uplink_mode: &'static str,
    /// `None` when no uplink is configured.
    pub outbox: Option<OutboxView>,
    /// `None` when no bridge is configured.
    pub bridge: Option<BridgeReport>,
    /// The role in an active/standby pair, if in one.
    pub lease: Option<LeaseRole>,
    pub connected_clients: usize,
    /// The search as given (`?q=`), empty for none.
    pub query: String,
    /// The token given in the URL, carried by the search form (a Bearer header is not).
    pub token: Option<String>,
    /// At most [`MAX_SHADOWS_SHOWN`], in attention order.
    pub heaters: Vec<HeaterView>,
    /// Shadows matching the search (all of them without one).
    pub matching: usize,
    /// Shadows in the store.
    pub shadows_total: usize,
    /// Oldest first.
    pub rejections: Vec<RecentRejection>,
    pub now_ms: i64,
}

/// The search as kept: trimmed and cut.
pub fn clean_query(query: Option<&str>) -> String {
    query
        .unwrap_or_default()
        .trim()
        .chars()
        .take(MAX_QUERY_CHARS)
        .collect()
}

/// Whether `device_id` matches the search: a part of the id, any case.
pub fn matches(query: &str, device_id: &str) -> bool {
    query.is_empty() || device_id.to_lowercase().contains(&query.to_lowercase())
}

/// The heaters matching `query` (at most [`MAX_SHADOWS_SHOWN`], in attention order) and
/// how many match in all.
pub fn heaters(
    store: &ShadowStore,
    metrics: &Metrics,
    board: &StatusBoard,
    query: &str,
    now_ms: i64,
) -> (Vec<HeaterView>, usize) {
    let ids: Vec<String> = store
        .device_ids()
        .into_iter()
        .filter(|id| matches(query, id))
        .collect();
    let mut heaters = Vec::new();
    for device_id in ids.iter().take(MAX_SHADOWS_SHOWN) {
        match store.get(device_id) {
            Ok(Some(stored)) => heaters.push(heater_view(
                device_id,
                &stored.document,
                metrics.is_connected(device_id),
                board.heater(device_id, now_ms),
            )),
            // Removed since the ids were read.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "a shadow the status page cannot show"),
        }
    }
    heaters.sort_by(|a, b| (a.attention(), &a.device_id).cmp(&(b.attention(), &b.device_id)));
    (heaters, ids.len())
}

/// One heater's card from its shadow, its presence and what the board remembers.
pub fn heater_view(
    device_id: &str,
    document: &Document,
    online: bool,
    history: HeaterHistory,
) -> HeaterView {
    let reported = &document.state.reported;
    let last_report_ms = latest_timestamp(&document.metadata.reported)
        .and_then(|secs| i64::try_from(secs).ok())
        .map(|secs| secs.saturating_mul(1000));
    HeaterView {
        device_id: device_id.to_string(),
        online,
        last_seen_ms: history.last_seen_ms.max(last_report_ms),
        version: document.version,
        temperature: reported.get(history::TEMPERATURE).cloned(),
        setpoint: document
            .state
            .desired
            .get(SETPOINT)
            .or_else(|| reported.get(SETPOINT))
            .cloned(),
        delta: crate::shadow::delta_state(Some(document)),
        history,
    }
}

/// The newest `{"timestamp": secs}` leaf of a metadata tree.
fn latest_timestamp(metadata: &Object) -> Option<u64> {
    metadata
        .iter()
        .filter_map(|(key, value)| match value {
            Value::Number(n) if key == "timestamp" => n.as_u64(),
            Value::Object(inner) => latest_timestamp(inner),
            _ => None,
        })
        .max()
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One column of cards rather than tables: a phone's width holds a 64-character device id
/// and a nested delta without sideways scrolling. Colours keep a 4.5:1 contrast on white.
const STYLE: &str = "body{font-family:system-ui,sans-serif;font-size:16px;margin:0 auto;padding:10px;max-width:40em;line-height:1.35;overflow-wrap:anywhere;color:#222;background:#f3f4f6}\
h1{font-size:1.2em;margin:.2em 0}h2{font-size:1.05em;margin:1.2em 0 .4em}\
.refresh{color:#555;font-size:.8em;margin:0 0 .5em}\
.board{display:grid;grid-template-columns:1fr 1fr;gap:6px;margin:0;padding:0;list-style:none}\
.board li{background:#fff;border-radius:6px;padding:6px 8px;border-left:5px solid #2b8a3e}\
.board li.warn{border-left-color:#e67700}.board li.bad{border-left-color:#c92a2a}\
.board b{display:block;font-size:.75em;color:#555;text-transform:uppercase;font-weight:600}\
form{display:flex;gap:6px;margin:10px 0}input[type=search]{flex:1;font-size:16px;padding:8px;border:1px solid #999;border-radius:6px;min-width:0}\
button{font-size:16px;padding:8px 14px;border:0;border-radius:6px;background:#1c4f8a;color:#fff}\
ol{list-style:none;padding:0;margin:0}\
.heater{background:#fff;border-radius:8px;padding:8px 10px;margin:0 0 8px;border-left:6px solid #2b8a3e}\
.heater.offline{border-left-color:#868e96}.heater.alerting{border-left-color:#c92a2a}\
.head{display:flex;justify-content:space-between;gap:8px;align-items:baseline}\
.id{font-weight:bold}.meta{color:#555;font-size:.85em}\
.online{color:#2b8a3e;font-weight:bold}.offline-text{color:#5c636a;font-weight:bold}\
.temps{font-size:1.5em;font-weight:bold;margin:2px 0}.temps .set{font-size:.6em;color:#1c4f8a;font-weight:600}\
.alert{background:#fff0f0;color:#a51111;border-radius:4px;padding:2px 6px;margin:3px 0;font-weight:600;font-size:.9em}\
.alert.warning,.alert.info{background:#fff4e0;color:#7a4100}\
.delta{font-size:.85em;color:#8a4b00}.ok{color:#2b8a3e}.bad{color:#c92a2a;font-weight:bold}\
code{font-size:.9em;overflow-wrap:anywhere}\
svg.chart{display:block;width:100%;height:64px;background:#f8f9fa;border-radius:4px;margin-top:4px}\
.axis{display:flex;justify-content:space-between;color:#555;font-size:.75em}\
.rejections li{background:#fff;border-radius:6px;padding:6px 8px;margin:0 0 6px}";

/// The chart's coordinate space (the SVG scales it to the card's width).
const CHART_W: f32 = 300.0;
const CHART_H: f32 = 64.0;
/// Radius of the newest point's dot.
const CHART_DOT: f32 = 4.0;
/// A silence longer than this many buckets breaks the line (the heater was not heard).
const CHART_GAP: u32 = 5;
/// The line's colour, also looked for in the browser test's screenshot.
pub const CHART_COLOUR: &str = "#d9480f";

/// Renders the whole page.
pub fn render(view: &StatusView) -> String {
    let mut html = String::with_capacity(8192);
    let id = escape(&view.gateway_id);
    // Writing into a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>{id} — iotsphere-gateway</title><style>{STYLE}</style></head><body>\
         <h1>Gateway {id}</h1><p class=\"refresh\">Refreshes every {REFRESH_SECS} s · \
         {} UTC · version {} · up {}</p>",
        clock_time(view.now_ms),
        view.version,
        humantime::format_duration(std::time::Duration::from_secs(view.uptime_secs)),
    );
    render_board(&mut html, view);
    render_search(&mut html, view);
    render_heaters(&mut html, view);
    render_rejections(&mut html, view);
    html.push_str("</body></html>");
    html
}

/// The tiles at the top: store, uplink, outbox, bridge, pair, clients.
fn render_board(html: &mut String, view: &StatusView) {
    html.push_str("<ul class=\"board\">");
    let mut tile = |id: &str, class: &str, title: &str, body: String| {
        let _ = write!(
            html,
            "<li id=\"{id}\" class=\"{class}\"><b>{title}</b>{body}</li>"
        );
    };
    match &view.store_problem {
        None => tile("store", "", "Store", "writable".into()),
        Some(reason) => tile(
            "store",
            "bad",
            "Store",
            format!("NOT WRITABLE: {}", escape(reason)),
        ),
    }
    match &view.outbox {
        None => tile("uplink", "warn", "Uplink", "none configured".into()),
        Some(outbox) => {
            let class = if view.uplink_mode == "offline" {
                "bad"
            } else {
                ""
            };
            tile(
                "uplink",
                class,
                "Uplink",
                view.uplink_mode.replace('_', " "),
            );
            let oldest = outbox
                .oldest_age_secs
                .map(|secs| {
                    format!(
                        ", oldest {}",
                        age(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
                    )
                })
                .unwrap_or_default();
            let class = match outbox.oldest_age_secs {
                Some(secs) if secs >= 3600 => "bad",
                Some(_) => "warn",
                None => "",
            };
            tile(
                "outbox",
                class,
                "Outbox",
                format!("{} waiting{oldest}", outbox.items),
            );
        }
    }
    if let Some(bridge) = &view.bridge {
        let (class, state) = if bridge.connected {
            ("", "connected")
        } else {
            ("bad", "disconnected")
        };
        tile(
            "bridge",
            class,
            "Bridge",
            format!("{state}, {} queued", bridge.queued),
        );
    }
    match view.lease {
        None => {}
        Some(LeaseRole::Standby) => tile(
            "lease",
            "warn",
            "Pair",
            "standby: the other gateway of the pair serves the devices".into(),
        ),
        Some(role) => tile("lease", "", "Pair", role.as_str().into()),
    }
    tile(
        "clients",
        "",
        "Connected",
        count(view.connected_clients, "client", "clients"),
    );
    html.push_str("</ul>");
}

fn render_search(html: &mut String, view: &StatusView) {
    html.push_str("<form method=\"get\" action=\"/\" role=\"search\">");
    if let Some(token) = &view.token {
        let _ = write!(
            html,
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            escape(token)
        );
    }
    let _ = write!(
        html,
        "<input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Heater id\" \
         aria-label=\"Heater id\" autocapitalize=\"off\" autocorrect=\"off\">\
         <button type=\"submit\">Search</button></form>",
        escape(&view.query)
    );
}

fn render_heaters(html: &mut String, view: &StatusView) {
    let shown = view.heaters.len();
    let online = view.heaters.iter().filter(|h| h.online).count();
    let alerting = view
        .heaters
        .iter()
        .filter(|h| !h.history.alerts.is_empty())
        .count();
    if view.query.is_empty() {
        let _ = write!(
            html,
            "<h2>Heaters ({}) · {online} online · {alerting} with alerts</h2>",
            view.shadows_total
        );
    } else {
        let _ = write!(
            html,
            "<h2 id=\"results\">{} matching “{}” of {}</h2>",
            view.matching,
            escape(&view.query),
            view.shadows_total
        );
    }
    if view.heaters.is_empty() {
        html.push_str(if view.query.is_empty() {
            "<p>None yet.</p>"
        } else {
            "<p>No heater id contains that.</p>"
        });
        return;
    }
    html.push_str("<ol id=\"shadows\">");
    for heater in &view.heaters {
        render_heater(html, heater, view.now_ms);
    }
    html.push_str("</ol>");
    if view.matching > shown {
        let _ = write!(
            html,
            "<p>… and {} more (first {shown} shown; search by id to find one).</p>",
            view.matching - shown,
        );
    }
}

fn render_heater(html: &mut String, heater: &HeaterView, now_ms: i64) {
    let id = escape(&heater.device_id);
    let class = if !heater.history.alerts.is_empty() {
        " alerting"
    } else if !heater.online {
        " offline"
    } else {
        ""
    };
    let presence = if heater.online {
        "<span class=\"presence online\">online</span>"
    } else {
        "<span class=\"presence offline-text\">offline</span>"
    };
    let seen = match heater.last_seen_ms {
        Some(at) => format!("last seen {}", age(now_ms - at)),
        None => "never seen".into(),
    };
    let _ = write!(
        html,
        "<li class=\"heater{class}\" data-id=\"{id}\"><div class=\"head\"><span class=\"id\">{id}</span>\
         <span class=\"meta version\">v{}</span></div>\
         <div class=\"meta\">{presence} · <span class=\"seen\">{seen}</span></div>",
        heater.version
    );
    let temperature = heater
        .temperature
        .as_ref()
        .map_or_else(|| "–".to_string(), degrees);
    let setpoint = heater
        .setpoint
        .as_ref()
        .map_or_else(|| "none".to_string(), degrees);
    let _ = write!(
        html,
        "<div class=\"temps\"><span class=\"temp\">{temperature}</span> \
         <span class=\"set\">setpoint <span class=\"setpoint\">{setpoint}</span></span></div>"
    );
    for alert in &heater.history.alerts {
        let severity = match alert.severity {
            crate::alert_event::Severity::Critical => "critical",
            crate::alert_event::Severity::Warning => "warning",
            crate::alert_event::Severity::Info => "info",
        };
        // An offline alert has no value.
        let value = if alert.value.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape(&alert.value))
        };
        let _ = write!(
            html,
            "<div class=\"alert {severity}\">⚠ {severity}: {}{value}, fired {}</div>",
            escape(&alert.rule),
            age(now_ms - alert.since_ms)
        );
    }
    if heater.delta.is_empty() {
        html.push_str("<div class=\"delta ok\">no delta pending</div>");
    } else {
        let json = serde_json::to_string(&heater.delta).unwrap_or_default();
        let _ = write!(
            html,
            "<div class=\"delta\">pending delta: <code>{}</code></div>",
            escape(&json)
        );
    }
    html.push_str(&chart(
        &heater.history.points,
        heater.setpoint.as_ref(),
        now_ms,
    ));
    html.push_str("</li>");
}

/// A number as `48.5°`; anything else (a device may report text) escaped as it is.
fn degrees(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{f:.0}°"),
            Some(f) => format!("{f:.1}°"),
            None => format!("{n}°"),
        },
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// The heater's last 3 h as an inline SVG line, the setpoint dashed; text when no
/// temperature was heard since the gateway started.
pub fn chart(points: &[history::Point], setpoint: Option<&Value>, now_ms: i64) -> String {
    if points.is_empty() {
        return "<div class=\"meta nochart\">no temperature heard in the last 3 h</div>".into();
    }
    let setpoint = setpoint.and_then(Value::as_f64).map(|s| s as f32);
    let (mut low, mut high) = points.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
        (lo.min(p.value), hi.max(p.value))
    });
    let (data_low, data_high) = (low, high);
    if let Some(s) = setpoint {
        low = low.min(s);
        high = high.max(s);
    }
    // A flat line sits in the middle; a little room above and below the extremes.
    let pad = ((high - low) * 0.1).max(1.0);
    let (low, high) = (low - pad, high + pad);
    let last_minute = (now_ms.max(0) / history::BUCKET_MS) as f32;
    let span = (history::BUCKETS - 1) as f32;
    // The newest point's dot stays whole inside the right edge.
    let width = CHART_W - 2.0 * CHART_DOT;
    let x = |minute: u32| {
        CHART_DOT + width - (last_minute - minute as f32).clamp(0.0, span) / span * width
    };
    let y = |value: f32| CHART_H - (value - low) / (high - low) * CHART_H;

    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_W} {CHART_H}\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"temperature, last 3 hours\">"
    );
    if let Some(s) = setpoint {
        let _ = write!(
            svg,
            "<line x1=\"0\" x2=\"{CHART_W}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#1c4f8a\" \
             stroke-width=\"1.5\" stroke-dasharray=\"6 4\" vector-effect=\"non-scaling-stroke\"/>",
            y(s)
        );
    }
    let mut segment: Vec<(f32, f32)> = Vec::new();
    let mut previous: Option<u32> = None;
    for point in points {
        if previous.is_some_and(|m| point.minute.saturating_sub(m) > CHART_GAP) {
            polyline(&mut segment, &mut svg);
        }
        segment.push((x(point.minute), y(point.value)));
        previous = Some(point.minute);
    }
    polyline(&mut segment, &mut svg);
    if let Some(last) = points.last() {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{CHART_DOT}\" fill=\"{CHART_COLOUR}\"/>",
            x(last.minute),
            y(last.value)
        );
    }
    let _ = write!(
        svg,
        "</svg><div class=\"axis\"><span>3 h ago</span><span>min {} · max {}{}</span>\
         <span>now</span></div>",
        degrees_f32(data_low),
        degrees_f32(data_high),
        if setpoint.is_some() {
            " · dashed: setpoint"
        } else {
            ""
        }
    );
    svg
}

/// Draws a stretch of the line (a lone point as a dot) and empties it.
fn polyline(segment: &mut Vec<(f32, f32)>, svg: &mut String) {
    match segment.as_slice() {
        [] => {}
        [(x, y)] => {
            let _ = write!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{CHART_COLOUR}\"/>"
            );
        }
        points => {
            let points: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{CHART_COLOUR}\" stroke-width=\"2.5\" \
                 stroke-linejoin=\"round\" vector-effect=\"non-scaling-stroke\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    segment.clear();
}

fn degrees_f32(value: f32) -> String {
    format!("{value:.1}°")
}

fn render_rejections(html: &mut String, view: &StatusView) {
    html.push_str("<h2>Recent rejections</h2>");
    if view.rejections.is_empty() {
        html.push_str("<p>None.</p>");
        return;
    }
    html.push_str("<ol id=\"rejections\" class=\"rejections\">");
    for rejection in view.rejections.iter().rev() {
        let at = rejection
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let _ = write!(
            html,
            "<li><div><span class=\"id\">{}</span> <span class=\"bad\">{}</span> \
             <span class=\"meta\">{} UTC</span></div><div>{}</div></li>",
            escape(&rejection.device_id),
            rejection.code,
            clock_time(at),
            escape(&rejection.message)
        );
    }
    html.push_str("</ol>");
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How long ago, in the largest unit that fits: `just now`, `12 s ago`, `4 min ago`, `3 h ago`,
/// `2 d ago`.
pub fn age(elapsed_ms: i64) -> String {
    let secs = elapsed_ms.max(0) / 1000;
    match secs {
        0 => "just now".into(),
        1..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// `2026-11-25 20:35:07`: enough for a technician comparing with a device's display.
fn clock_time(at_ms: i64) -> String {
    let at = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or_default());
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

#[cfg(test)]
mod tests;
