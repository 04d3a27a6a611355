//! The status page at `/` for field technicians: plain server-rendered HTML, readable on a
//! phone, read-only, no script. Everything that comes from devices (ids, state, rejection
//! messages) is HTML-escaped.

use std::fmt::Write;
use std::time::SystemTime;

use crate::metrics::RecentRejection;
use crate::shadow::Object;

/// Shadows listed at most; a site with thousands of heaters gets the first ones and a
/// count (the page must stay light on a phone and on the Pi).
pub const MAX_SHADOWS_SHOWN: usize = 200;

/// What the page shows.
pub struct StatusView {
    pub gateway_id: String,
    pub version: &'static str,
    pub uptime_secs: u64,
    /// `None` when the store is writable, else why not.
    pub store_problem: Option<String>,
    pub uplink_mode: &'static str,
    /// The role in an active/standby pair, if in one.
    pub lease: Option<&'static str>,
    pub outbox_items: usize,
    pub connected: Vec<String>,
    /// (device id, version, pending delta), at most [`MAX_SHADOWS_SHOWN`].
    pub shadows: Vec<(String, u64, Object)>,
    pub shadows_total: usize,
    /// Oldest first.
    pub rejections: Vec<RecentRejection>,
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
/// and a nested delta without sideways scrolling.
const STYLE: &str = "body{font-family:system-ui,sans-serif;font-size:16px;margin:0 auto;padding:12px;max-width:50em;line-height:1.4;overflow-wrap:anywhere}\
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em}\
ol{list-style:none;padding:0;margin:0}ol>li{border-bottom:1px solid #ccc;padding:8px 0}\
.id{font-weight:bold}.meta{color:#555;font-size:.9em}\
code{font-size:.9em;overflow-wrap:anywhere}.ok{color:#176b1d}.bad{color:#b00020;font-weight:bold}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px}dt{font-weight:bold}dd{margin:0}";

/// Renders the whole page.
pub fn render(view: &StatusView) -> String {
    let mut html = String::with_capacity(4096);
    let id = escape(&view.gateway_id);
    // Writing into a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{id} — iotsphere-gateway</title><style>{STYLE}</style></head><body>\
         <h1>Gateway {id}</h1><dl>"
    );
    let store = match &view.store_problem {
        None => "<span class=\"ok\">writable</span>".to_string(),
        Some(reason) => format!(
            "<span class=\"bad\">NOT WRITABLE: {}</span>",
            escape(reason)
        ),
    };
    let pair = match view.lease {
        None => String::new(),
        Some("standby") => "<dt>Pair</dt><dd id=\"lease\">standby: the other gateway of the pair serves the devices</dd>".into(),
        Some(role) => format!("<dt>Pair</dt><dd id=\"lease\">{role}</dd>"),
    };
    let _ = write!(
        html,
        "<dt>Store</dt><dd id=\"store\">{store}</dd>{pair}\
         <dt>Uplink</dt><dd id=\"uplink\">{}</dd>\
         <dt>Outbox</dt><dd id=\"outbox\">{} waiting</dd>\
         <dt>Connected</dt><dd>{}</dd>\
         <dt>Version</dt><dd>{}</dd><dt>Up</dt><dd>{}</dd></dl>",
        view.uplink_mode,
        view.outbox_items,
        count(view.connected.len(), "client", "clients"),
        view.version,
        humantime::format_duration(std::time::Duration::from_secs(view.uptime_secs)),
    );

    html.push_str("<h2>Connected devices</h2>");
    if view.connected.is_empty() {
        html.push_str("<p>None.</p>");
    } else {
        html.push_str("<ul id=\"connected\">");
        for client in &view.connected {
            let _ = write!(html, "<li>{}</li>", escape(client));
        }
        html.push_str("</ul>");
    }

    let _ = write!(html, "<h2>Shadows ({})</h2>", view.shadows_total);
    if view.shadows.is_empty() {
        html.push_str("<p>None yet.</p>");
    } else {
        html.push_str("<ol id=\"shadows\">");
        for (device_id, version, delta) in &view.shadows {
            let delta = if delta.is_empty() {
                "<span class=\"ok\">none pending</span>".to_string()
            } else {
                let json = serde_json::to_string(delta).unwrap_or_default();
                format!("pending delta: <code>{}</code>", escape(&json))
            };
            let _ = write!(
                html,
                "<li><div><span class=\"id\">{}</span> <span class=\"meta\">version {version}</span></div><div>{delta}</div></li>",
                escape(device_id)
            );
        }
        html.push_str("</ol>");
        if view.shadows_total > view.shadows.len() {
            let _ = write!(
                html,
                "<p>… and {} more (first {} shown).</p>",
                view.shadows_total - view.shadows.len(),
                view.shadows.len()
            );
        }
    }

    html.push_str("<h2>Recent rejections</h2>");
    if view.rejections.is_empty() {
        html.push_str("<p>None.</p>");
    } else {
        html.push_str("<ol id=\"rejections\">");
        for rejection in view.rejections.iter().rev() {
            let _ = write!(
                html,
                "<li><div><span class=\"id\">{}</span> <span class=\"bad\">{}</span> \
                 <span class=\"meta\">{} UTC</span></div><div>{}</div></li>",
                escape(&rejection.device_id),
                rejection.code,
                clock_time(rejection.at),
                escape(&rejection.message)
            );
        }
        html.push_str("</ol>");
    }
    html.push_str("</body></html>");
    html
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `2026-11-25 20:35:07`: enough for a technician comparing with a device's display.
fn clock_time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> StatusView {
        let mut delta = Object::new();
        delta.insert("targetTemp".into(), serde_json::json!("<b>60</b>"));
        StatusView {
            gateway_id: "gw-1".into(),
            version: "0.1.0",
            uptime_secs: 65,
            store_problem: None,
            uplink_mode: "offline",
            lease: None,
            outbox_items: 3,
            connected: vec!["heater-<1>".into()],
            shadows: vec![
                ("heater-1".into(), 4, delta),
                ("heater-2".into(), 1, Object::new()),
            ],
            shadows_total: 2,
            rejections: vec![RecentRejection {
                device_id: "heater-1".into(),
                code: 400,
                message: "bad JSON near \"<script>alert(1)</script>\"".into(),
                at: SystemTime::UNIX_EPOCH,
            }],
        }
    }

    #[test]
    fn device_text_is_escaped() {
        let html = render(&view());
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>60"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("heater-&lt;1&gt;"));
        assert!(html.contains("&quot;targetTemp&quot;"));
    }

    #[test]
    fn a_standby_says_so() {
        assert!(!render(&view()).contains("Pair"));
        let standby = StatusView {
            lease: Some("standby"),
            ..view()
        };
        assert!(
            render(&standby).contains("standby: the other gateway of the pair serves the devices")
        );
    }

    #[test]
    fn the_page_says_what_a_technician_needs() {
        let html = render(&view());
        assert!(html.contains("name=\"viewport\""));
        for text in [
            "Gateway gw-1",
            "writable",
            "offline",
            "3 waiting",
            "1970-01-01 00:00:00",
            "1m 5s",
        ] {
            assert!(html.contains(text), "{text} missing in {html}");
        }
        let broken = render(&StatusView {
            store_problem: Some("No space left on device".into()),
            ..view()
        });
        assert!(broken.contains("NOT WRITABLE: No space left on device"));
    }

    #[test]
    fn escape_covers_the_five_characters() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
