//! Rendering, one rule per test; the history's bounds are tested in `history`.

use super::history::{OpenAlert, Point, BUCKET_MS};
use super::*;
use crate::alert_event::Severity;
use crate::lease::LeaseRole;
use crate::store::StoredShadow;
use serde_json::json;

const NOW: i64 = 1_764_000_000_000;

fn object(value: Value) -> Object {
    match value {
        Value::Object(object) => object,
        _ => Object::new(),
    }
}

fn heater(id: &str) -> HeaterView {
    HeaterView {
        device_id: id.into(),
        online: true,
        last_seen_ms: Some(NOW - 12_000),
        version: 4,
        temperature: Some(json!(48.5)),
        setpoint: Some(json!(60)),
        delta: Object::new(),
        history: HeaterHistory::default(),
    }
}

fn view() -> StatusView {
    let mut hot = heater("heater-1");
    hot.delta = object(json!({"targetTemp": "<b>60</b>"}));
    hot.history.alerts = vec![OpenAlert {
        alert_id: "too-hot:heater-1:1".into(),
        rule: "too-hot".into(),
        severity: Severity::Critical,
        value: "<img src=x onerror=alert(1)>".into(),
        since_ms: NOW - 300_000,
    }];
    hot.history.points = (0..30)
        .map(|i| Point {
            minute: (NOW / BUCKET_MS) as u32 - 29 + i,
            value: 45.0 + i as f32 * 0.2,
        })
        .collect();
    let mut cold = heater("heater-<2>");
    cold.online = false;
    cold.last_seen_ms = Some(NOW - 7_200_000);
    cold.temperature = None;
    StatusView {
        gateway_id: "gw-1".into(),
        version: "0.1.0",
        uptime_secs: 65,
        store_problem: None,
        uplink_mode: "change_stream",
        outbox: Some(OutboxView {
            items: 3,
            oldest_age_secs: Some(125),
        }),
        bridge: None,
        lease: None,
        connected_clients: 1,
        query: String::new(),
        token: None,
        heaters: vec![hot, cold],
        matching: 2,
        shadows_total: 2,
        rejections: vec![RecentRejection {
            device_id: "heater-1".into(),
            code: 400,
            message: "bad JSON near \"<script>alert(1)</script>\"".into(),
            at: SystemTime::UNIX_EPOCH,
        }],
        now_ms: NOW,
    }
}

#[test]
fn device_text_is_escaped() {
    let html = render(&StatusView {
        query: "\"><script>q</script>".into(),
        token: Some("t\"><script>".into()),
        ..view()
    });
    for markup in ["<script>", "<b>60", "<img", "heater-<2>"] {
        assert!(!html.contains(markup), "{markup} in {html}");
    }
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "heater-&lt;2&gt;",
        "&quot;targetTemp&quot;",
        "&lt;img src=x onerror=alert(1)&gt;",
        "value=\"&quot;&gt;&lt;script&gt;q&lt;/script&gt;\"",
        "value=\"t&quot;&gt;&lt;script&gt;\"",
    ] {
        assert!(html.contains(escaped), "{escaped} missing in {html}");
    }
}

#[test]
fn a_standby_says_so() {
    assert!(!render(&view()).contains("Pair"));
    let standby = StatusView {
        lease: Some(LeaseRole::Standby),
        ..view()
    };
    assert!(render(&standby).contains("standby: the other gateway of the pair serves the devices"));
}

#[test]
fn the_page_refreshes_itself_and_says_so() {
    let html = render(&view());
    assert!(html.contains("name=\"viewport\""));
    assert!(html.contains(&format!(
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"
    )));
    assert!(html.contains(&format!("Refreshes every {REFRESH_SECS} s")));
    assert!(!html.contains("<script"), "the page needs no script");
}

#[test]
fn the_top_says_what_the_gateway_depends_on() {
    let html = render(&view());
    for text in [
        "Gateway gw-1",
        "writable",
        "change stream",
        "3 waiting, oldest 2 min ago",
        "1 client",
        "1m 5s",
    ] {
        assert!(html.contains(text), "{text} missing in {html}");
    }
    let broken = render(&StatusView {
        store_problem: Some("No space left on device".into()),
        uplink_mode: "offline",
        bridge: Some(BridgeReport {
            connected: false,
            reconnects: 2,
            forwarded: 0,
            received: 0,
            queued: 7,
            dropped: 0,
        }),
        ..view()
    });
    assert!(broken.contains("NOT WRITABLE: No space left on device"));
    assert!(broken.contains("<li id=\"uplink\" class=\"bad\"><b>Uplink</b>offline</li>"));
    assert!(
        broken.contains("<li id=\"bridge\" class=\"bad\"><b>Bridge</b>disconnected, 7 queued</li>")
    );
    let alone = render(&StatusView {
        outbox: None,
        ..view()
    });
    assert!(alone.contains("none configured") && !alone.contains("id=\"outbox\""));
}

#[test]
fn a_card_shows_presence_temperatures_alerts_delta_and_version() {
    let html = render(&view());
    for text in [
        "<span class=\"temp\">48.5°</span>",
        "<span class=\"setpoint\">60°</span>",
        "<span class=\"presence online\">online</span>",
        "last seen 12 s ago",
        "<span class=\"presence offline-text\">offline</span>",
        "last seen 2 h ago",
        "⚠ critical: too-hot",
        "fired 5 min ago",
        "pending delta: <code>",
        "no delta pending",
        "<span class=\"meta version\">v4</span>",
        "<span class=\"temp\">–</span>",
        "Heaters (2) · 1 online · 1 with alerts",
    ] {
        assert!(html.contains(text), "{text} missing in {html}");
    }
    assert!(html.contains("class=\"heater alerting\" data-id=\"heater-1\""));
    assert!(html.contains("class=\"heater offline\" data-id=\"heater-&lt;2&gt;\""));
}

#[test]
fn the_chart_draws_the_last_hours_and_the_setpoint() {
    let html = render(&view());
    assert_eq!(
        html.matches("<svg class=\"chart\"").count(),
        1,
        "one heater has points"
    );
    assert!(html.contains("no temperature heard in the last 3 h"));
    let svg = chart(&view().heaters[0].history.points, Some(&json!(60)), NOW);
    assert!(svg.contains("<polyline"), "{svg}");
    assert!(svg.contains("stroke-dasharray"), "the setpoint line: {svg}");
    assert!(svg.contains("min 45.0° · max 50.8°"), "{svg}");
    // The newest point is at the right edge.
    assert!(svg.contains("points=\"") && svg.contains("296.0,"), "{svg}");
    assert!(svg.contains("dashed: setpoint"));
}

#[test]
fn a_silence_breaks_the_line() {
    let minute = (NOW / BUCKET_MS) as u32;
    let points: Vec<Point> = [minute - 100, minute - 99, minute - 2, minute - 1, minute]
        .into_iter()
        .map(|minute| Point {
            minute,
            value: 50.0,
        })
        .collect();
    let svg = chart(&points, None, NOW);
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert!(!svg.contains("stroke-dasharray"), "no setpoint, no line");
    let lone = chart(&points[..1], None, NOW);
    assert!(
        !lone.contains("<polyline") && lone.contains("<circle"),
        "{lone}"
    );
}

#[test]
fn the_search_keeps_its_text_and_the_token() {
    let html = render(&StatusView {
        query: "heater-1".into(),
        matching: 1,
        token: Some("secret".into()),
        ..view()
    });
    assert!(html.contains("<form method=\"get\" action=\"/\""));
    assert!(html.contains("name=\"q\" value=\"heater-1\""));
    assert!(html.contains("<input type=\"hidden\" name=\"token\" value=\"secret\">"));
    assert!(html.contains("1 matching “heater-1” of 2"));
    let none = render(&StatusView {
        query: "nothing".into(),
        matching: 0,
        heaters: Vec::new(),
        ..view()
    });
    assert!(none.contains("No heater id contains that."));
    assert!(!render(&view()).contains("name=\"token\""));
}

#[test]
fn search_matches_part_of_an_id_in_any_case() {
    assert!(matches("", "heater-1"));
    assert!(matches("TER-1", "heater-12"));
    assert!(!matches("heater-3", "heater-12"));
    assert_eq!(clean_query(Some("  heater-1 ")), "heater-1");
    assert_eq!(clean_query(Some(&"x".repeat(500))).len(), 64);
    assert_eq!(clean_query(None), "");
}

#[test]
fn a_card_takes_the_setpoint_and_last_report_from_the_shadow() {
    let document = Document {
        state: crate::shadow::Sections {
            reported: object(json!({"temperature": 51, "targetTemp": 55})),
            desired: object(json!({"targetTemp": 60})),
            ..Default::default()
        },
        metadata: crate::shadow::Sections {
            reported: object(json!({
                "temperature": {"timestamp": 1_764_000_000u64},
                "heater": {"on": {"timestamp": 1_764_000_100u64}}
            })),
            desired: object(json!({"targetTemp": {"timestamp": 1_764_000_200u64}})),
            ..Default::default()
        },
        version: 3,
        timestamp: 1_764_000_200,
    };
    let card = heater_view("h1", &document, false, HeaterHistory::default());
    assert_eq!(card.setpoint, Some(json!(60)), "desired first");
    assert_eq!(card.temperature, Some(json!(51)));
    assert_eq!(
        card.last_seen_ms,
        Some(1_764_000_100_000),
        "the newest reported leaf"
    );
    assert_eq!(card.delta, object(json!({"targetTemp": 60})));

    let mut settled = document.clone();
    settled.state.desired = Object::new();
    let seen = HeaterHistory {
        last_seen_ms: Some(1_764_000_500_000),
        ..HeaterHistory::default()
    };
    let card = heater_view("h1", &settled, true, seen);
    assert_eq!(
        card.setpoint,
        Some(json!(55)),
        "else the one the heater runs with"
    );
    assert_eq!(
        card.last_seen_ms,
        Some(1_764_000_500_000),
        "a later message"
    );
}

#[test]
fn the_heaters_needing_a_look_come_first_and_the_search_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ShadowStore::open(dir.path(), 1 << 20).expect("open");
    for id in ["a-fine", "b-offline", "c-alerting"] {
        let shadow = StoredShadow {
            document: Document {
                version: 1,
                ..Document::default()
            },
            encoding: Default::default(),
        };
        store.put(id, &shadow).expect("put");
    }
    let metrics = Metrics::default();
    metrics.client_connected("a-fine", true);
    metrics.client_connected("c-alerting", true);
    let topics = crate::topics::Topics::new("iotsphere").expect("topics");
    let board = StatusBoard::new(&topics);
    let fired = json!({"metadata": {}, "payload": {
        "alertId": "hot:c-alerting:1", "rule": "hot", "deviceId": "c-alerting",
        "severity": "warning", "state": "firing", "value": 90, "atMs": NOW}});
    board.tap(&topics, true, "iotsphere/system/alerts", &fired);

    let (all, matching) = heaters(&store, &metrics, &board, "", NOW);
    let order: Vec<&str> = all.iter().map(|h| h.device_id.as_str()).collect();
    assert_eq!(order, ["c-alerting", "b-offline", "a-fine"]);
    assert_eq!(matching, 3);
    let (found, matching) = heaters(&store, &metrics, &board, "OFF", NOW);
    assert_eq!(matching, 1);
    assert_eq!(found[0].device_id, "b-offline");
}

#[test]
fn ages_read_like_a_person_says_them() {
    for (ms, text) in [
        (-5, "just now"),
        (999, "just now"),
        (12_000, "12 s ago"),
        (125_000, "2 min ago"),
        (7_200_000, "2 h ago"),
        (3 * 86_400_000, "3 d ago"),
    ] {
        assert_eq!(age(ms), text);
    }
}

#[test]
fn escape_covers_the_five_characters() {
    assert_eq!(
        escape("<a href='x'>&\"</a>"),
        "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
    );
}
