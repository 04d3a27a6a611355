//! The status page at `/`: fetched over HTTP, then rendered by headless Chromium at a
//! phone's size (screenshot and DOM, JavaScript on and off), as a field technician's phone
//! would show it. `STATUS_PAGE_SCREENSHOT=/path.png` keeps the screenshot to look at.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, http_get_with, json, shadow_topic, Client, Gateway, Mongo, BIN, WAIT};
use iotsphere_gateway::status_page::history::{History, BUCKETS, BUCKET_MS};
use serde_json::json;

/// Counts the heap each thread holds (allocated minus freed by it), for the history's
/// memory bound: per thread, so the other tests of this binary running alongside do not
/// count.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // During a thread's teardown the counter may be gone: nothing to count then.
    let _ = HELD.try_with(|held| held.set(held.get() + bytes));
}

fn held() -> isize {
    HELD.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKEN: &str = "field-tech-token-123";
/// A common phone viewport (CSS pixels).
const PHONE: (u32, u32) = (390, 844);
/// Longest a Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// The chart's line colour (`status_page::CHART_COLOUR`, #d9480f).
const CHART_RGB: [u8; 3] = [0xd9, 0x48, 0x0f];
/// What a heater reports as its fault: markup that must stay text on the page.
const FAULT: &str = "<img src=x onerror=alert(1)>";

/// A fault rule and an offline rule, both quick, so the page has open alerts to show.
const ALERTS: &str = r#"
[[alerts]]
name = "heater-fault"
source = "reported.fault"
condition = "!= none"
for = "0s"
severity = "critical"

[[alerts]]
name = "offline"
source = "offline"
for = "1s"
severity = "warning"
"#;

/// A gateway with two heaters: heater-1 online, 48.5° against a desired 60 (a pending
/// delta holding markup) and a fault; heater-2 reported 39° and went away (offline alert).
/// Also a rejection. Returns once the page shows both alerts.
async fn gateway_with_heaters(extra_config: &str) -> (Gateway, Client) {
    let gateway = Gateway::start_with_env(
        &format!("{ALERTS}{extra_config}"),
        &[("IOTSPHERE__HTTP__TOKEN", TOKEN)],
    );
    let mut heater = Client::connect(gateway.port, "heater-1").await;
    heater.subscribe(&shadow_topic("heater-1", "+")).await;
    for (kind, state) in [
        (
            "reported",
            json!({"temperature": 48.5, "targetTemp": 55, "fault": FAULT}),
        ),
        (
            "desired",
            json!({"targetTemp": 60, "label": "<script>alert(1)</script>"}),
        ),
    ] {
        heater
            .publish(
                &shadow_topic("heater-1", kind),
                json(&json!({"state": state})),
            )
            .await;
        heater.expect("/shadow/document").await;
    }
    heater
        .publish(&shadow_topic("heater-1", "reported"), b"{not json".to_vec())
        .await;
    heater.expect("/shadow/rejected").await;

    let mut other = Client::connect(gateway.port, "heater-2").await;
    other.subscribe(&shadow_topic("heater-2", "+")).await;
    other
        .publish(
            &shadow_topic("heater-2", "reported"),
            json(&json!({"state": {"temperature": 39, "fault": "none"}})),
        )
        .await;
    other.expect("/shadow/document").await;
    other.disconnect().await;

    page_until(&gateway, "", |html| {
        html.contains("⚠ critical: heater-fault") && html.contains("⚠ warning: offline")
    });
    (gateway, heater)
}

/// The page (with the token and `query`) once `ready` accepts it; panics after `WAIT`.
fn page_until(gateway: &Gateway, query: &str, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let (status, html) = http_get(gateway.http_port, &format!("/?token={TOKEN}{query}"));
        assert_eq!(status, 200, "{html}");
        if ready(&html) {
            return html;
        }
        assert!(
            started.elapsed() < WAIT,
            "the page never got there:\n{html}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `<li>` card of `device_id` in `html`.
fn card<'h>(html: &'h str, device_id: &str) -> &'h str {
    let start = html
        .find(&format!("data-id=\"{device_id}\""))
        .unwrap_or_else(|| panic!("no card for {device_id} in\n{html}"));
    let end = html[start..]
        .find("</li>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_heater_shows_presence_temperatures_alerts_delta_and_version() {
    let (gateway, _heater) = gateway_with_heaters("").await;
    let (status, _) = http_get(gateway.http_port, "/");
    assert_eq!(status, 401, "a configured token is required");
    let (status, _) = http_get(gateway.http_port, "/?token=wrong&q=heater");
    assert_eq!(status, 401, "a search needs the token too");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, by_header) = http_get_with(gateway.http_port, "/?q=heater-2", &bearer);
    assert_eq!(status, 200);
    assert!(
        !by_header.contains("name=\"token\""),
        "a header's token is not written into the page"
    );

    let html = page_until(&gateway, "", |_| true);
    for text in [
        "name=\"viewport\"",
        "<meta http-equiv=\"refresh\" content=\"15\">",
        "Refreshes every 15 s",
        "Gateway gw-test",
        "<li id=\"uplink\" class=\"warn\"><b>Uplink</b>none configured</li>",
        "Heaters (2) · 1 online · 2 with alerts",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "<span class=\"bad\">400</span>",
    ] {
        assert!(html.contains(text), "{text} missing in\n{html}");
    }
    let hot = card(&html, "heater-1");
    for text in [
        "<span class=\"presence online\">online</span>",
        "<span class=\"temp\">48.5°</span>",
        "<span class=\"setpoint\">60°</span>",
        "⚠ critical: heater-fault (&lt;img src=x onerror=alert(1)&gt;)",
        "pending delta: <code>",
        "&quot;targetTemp&quot;:60",
        "<span class=\"meta version\">v2</span>",
        "<svg class=\"chart\"",
    ] {
        assert!(hot.contains(text), "{text} missing in\n{hot}");
    }
    assert!(
        hot.contains("last seen just now") || hot.contains(" s ago</span>"),
        "{hot}"
    );
    let gone = card(&html, "heater-2");
    for text in [
        "<span class=\"presence offline-text\">offline</span>",
        "<span class=\"temp\">39°</span>",
        "<span class=\"setpoint\">none</span>",
        "⚠ warning: offline, fired",
        "no delta pending",
        "<span class=\"meta version\">v1</span>",
    ] {
        assert!(gone.contains(text), "{text} missing in\n{gone}");
    }
    for markup in ["<script>", "<img"] {
        assert!(!html.contains(markup), "device text became markup:\n{html}");
    }

    let found = page_until(&gateway, "&q=HEATER-2", |_| true);
    assert!(found.contains("1 matching “HEATER-2” of 2"), "{found}");
    assert!(found.contains("data-id=\"heater-2\"") && !found.contains("data-id=\"heater-1\""));
    assert!(found.contains(&format!("name=\"token\" value=\"{TOKEN}\"")));
    let xss = page_until(&gateway, "&q=%22%3E%3Cscript%3Ex%3C/script%3E", |_| true);
    assert!(
        xss.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""),
        "{xss}"
    );
    assert!(!xss.contains("<script>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_top_shows_the_uplink_and_its_outbox() {
    let mongo = Mongo::start().await;
    let (gateway, _heater) = gateway_with_heaters(&mongo.config("")).await;
    let html = page_until(&gateway, "", |html| {
        html.contains("<b>Uplink</b>change stream") || html.contains("<b>Uplink</b>polling")
    });
    let tile = &html[html.find("<li id=\"outbox\"").expect("an outbox tile")..];
    assert!(
        tile.contains("<b>Outbox</b>") && tile.contains(" waiting"),
        "{html}"
    );
    assert!(html.contains("⚠ critical: heater-fault"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_tile_shows_the_age_of_the_oldest_item() {
    if std::env::var("MONGODB_URI").is_ok() {
        eprintln!("skipped: needs a MongoDB that is not there (an unused loopback port)");
        return;
    }
    let config = format!(
        "[mongodb]\nuri = \"mongodb://127.0.0.1:{}/?directConnection=true\"\ndatabase = \"t\"\n",
        common::free_port()
    );
    let (gateway, heater) = gateway_with_heaters(&config).await;
    heater
        .publish("iotsphere/devices/heater-1/telemetry/temperature", "49.5")
        .await;
    let html = page_until(&gateway, "", |html| html.contains("s ago</li>"));
    let tile = &html[html.find("<li id=\"outbox\"").expect("an outbox tile")..];
    let tile = &tile[..tile.find("</li>").expect("end of the tile")];
    assert!(tile.contains("class=\"warn\""), "{tile}");
    assert!(tile.contains("waiting, oldest "), "{tile}");
    assert!(html.contains("<li id=\"uplink\" class=\"bad\"><b>Uplink</b>offline</li>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_the_page_on_a_phone() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (gateway, _heater) = gateway_with_heaters("").await;
    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", gateway.http_port);
    let profile = tempfile::tempdir().expect("tempdir");

    let phone = format!("--window-size={},{}", PHONE.0, PHONE.1);
    let dom = run_chromium(
        &chromium,
        &profile.path().join("profile"),
        &["--dump-dom", &phone, &url],
    );
    for text in [
        "data-id=\"heater-1\"",
        "<span class=\"temp\">48.5°</span>",
        "<span class=\"setpoint\">60°</span>",
        "<span class=\"presence online\">online</span>",
        "<span class=\"presence offline-text\">offline</span>",
        "⚠ critical: heater-fault (&lt;img src=x onerror=alert(1)&gt;)",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "<svg class=\"chart\"",
    ] {
        assert!(
            dom.contains(text),
            "{text} missing in the browser's DOM:\n{dom}"
        );
    }
    for markup in ["<script>", "<img"] {
        assert!(
            !dom.contains(markup),
            "a device's text became markup:\n{dom}"
        );
    }

    // JavaScript off (blocked for every site in the profile, checked on a scripted page):
    // the same page, and the search still filters.
    let no_script = profile_without_javascript(profile.path());
    let probe = profile.path().join("scripted.html");
    std::fs::write(
        &probe,
        "<p id=\"p\">static</p><script>p.textContent = 'scripted'</script>",
    )
    .expect("write the probe page");
    let probed = run_chromium(
        &chromium,
        &no_script,
        &["--dump-dom", &format!("file://{}", probe.display())],
    );
    assert!(
        probed.contains("<p id=\"p\">static</p>"),
        "scripts still run: {probed}"
    );
    let searched = run_chromium(
        &chromium,
        &no_script,
        &["--dump-dom", &format!("{url}&q=heater-2")],
    );
    assert!(searched.contains("data-id=\"heater-2\""), "{searched}");
    assert!(!searched.contains("data-id=\"heater-1\""), "{searched}");
    assert!(searched.contains("⚠ warning: offline"), "{searched}");

    let screenshot = std::env::var_os("STATUS_PAGE_SCREENSHOT")
        .map_or_else(|| profile.path().join("status.png"), Into::into);
    run_chromium(
        &chromium,
        &no_script,
        &[
            &format!("--screenshot={}", screenshot.display()),
            &phone,
            "--force-device-scale-factor=1",
            &url,
        ],
    );
    let shot = decode_png(&screenshot);
    assert_eq!((shot.width, shot.height), PHONE);
    // Text, tiles, cards and colours: far more than a blank or single-colour page.
    assert!(
        shot.colours > 50,
        "the screenshot looks blank ({} colours)",
        shot.colours
    );
    // The chart is drawn: its line colour covers at least heater-1's newest point (a
    // dot of radius 4) above the fold, within the phone's width.
    assert!(
        shot.chart_pixels >= 20,
        "no chart in the screenshot ({} pixels of its colour)",
        shot.chart_pixels
    );
    assert!(shot.chart_right_edge < PHONE.0);
}

/// The README's figure: 1,000 heaters with a full 3 h chart each, and 3 h more of readings
/// (the old points go as new ones come), held under 2 MiB.
#[test]
fn the_history_of_1000_heaters_holds_under_2_mib() {
    const T0: i64 = 1_764_000_000_000;
    let ids: Vec<String> = (0..1000).map(|n| format!("heater-{n:04}")).collect();
    let mut held_at = Vec::with_capacity(2);
    let before = held();
    let mut history = History::default();
    for minute in 0..2 * BUCKETS as i64 {
        for (n, id) in ids.iter().enumerate() {
            let at = T0 + minute * BUCKET_MS + n as i64;
            history.seen(id, at);
            history.record(id, at, 40.0 + (minute % 20) as f64);
        }
        if minute + 1 == BUCKETS as i64 || minute + 1 == 2 * BUCKETS as i64 {
            held_at.push(held() - before);
        }
    }
    assert_eq!(history.len(), 1000);
    let (full, later) = (held_at[0], held_at[1]);
    println!("history of 1000 heaters × {BUCKETS} points: {full} bytes, 3 h later {later} bytes");
    assert!(full < 2 << 20, "{full} bytes for 1,000 heaters");
    assert!(
        later <= full + (64 << 10),
        "it grew from {full} to {later} bytes"
    );
}

#[test]
fn a_public_listen_without_a_token_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"0.0.0.0:{}\"\n",
            dir.path().join("data").display(),
            common::free_port(),
            common::free_port()
        ),
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.token: required"), "{stderr}");
}

/// The Chromium binary, or `None` (printed) where it is not installed.
fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(name.to_string());
        }
    }
    common::skip(
        "Chromium is not installed and could not be (scripts/install-test-deps.sh installs \
         Debian's chromium)",
    );
    None
}

/// A Chromium profile (under `dir`) that blocks JavaScript on every site: the content
/// setting a user sets in Chromium's settings. (`--blink-settings=scriptEnabled=false`
/// stops headless Chromium from dumping or capturing anything at all.)
fn profile_without_javascript(dir: &Path) -> std::path::PathBuf {
    let profile = dir.join("no-script");
    std::fs::create_dir_all(profile.join("Default")).expect("profile dir");
    std::fs::write(
        profile.join("Default/Preferences"),
        r#"{"profile": {"default_content_setting_values": {"javascript": 2}}}"#,
    )
    .expect("write the profile's preferences");
    profile
}

/// Runs headless Chromium with `args` and the profile at `profile`; its stdout. Killed after `CHROMIUM_TIMEOUT`.
fn run_chromium(chromium: &str, profile: &Path, args: &[&str]) -> String {
    use std::io::Read;
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            // Root in a container: Chromium's sandbox needs user namespaces it lacks.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took more than {CHROMIUM_TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium {args:?}: {status:?}");
    reader.join().expect("stdout reader")
}

/// What a screenshot shows, as the test checks it.
struct Screenshot {
    width: u32,
    height: u32,
    /// Distinct colours, counted up to 1,000.
    colours: usize,
    /// Pixels within a small distance of the chart's line colour.
    chart_pixels: usize,
    /// The rightmost column holding one of them.
    chart_right_edge: u32,
}

fn decode_png(path: &Path) -> Screenshot {
    let file = std::fs::File::open(path).expect("the screenshot exists");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let frame = reader.next_frame(&mut pixels).expect("decode");
    let channels = frame.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    let (mut chart_pixels, mut chart_right_edge) = (0, 0);
    for (n, pixel) in pixels[..frame.buffer_size()].chunks(channels).enumerate() {
        if colours.len() <= 1000 {
            colours.insert(pixel.to_vec());
        }
        let near = pixel
            .iter()
            .zip(CHART_RGB)
            .all(|(have, want)| have.abs_diff(want) <= 24);
        if channels >= 3 && near {
            chart_pixels += 1;
            chart_right_edge = chart_right_edge.max(n as u32 % frame.width);
        }
    }
    Screenshot {
        width: frame.width,
        height: frame.height,
        colours: colours.len(),
        chart_pixels,
        chart_right_edge,
    }
}
