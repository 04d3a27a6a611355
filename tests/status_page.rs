//! The status page at `/`: fetched over HTTP, then rendered by headless Chromium at a
//! phone's width (screenshot and DOM), as a field technician's phone would show it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, http_get_with, json, shadow_topic, Client, Gateway, BIN};
use serde_json::json;

const TOKEN: &str = "field-tech-token-123";
/// A common phone viewport (CSS pixels).
const PHONE: (u32, u32) = (390, 844);
/// Longest a Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway with two shadows (one with a pending delta holding markup) and a rejection.
async fn gateway_with_shadows() -> (Gateway, Client) {
    let gateway = Gateway::start_with_env("", &[("IOTSPHERE__HTTP__TOKEN", TOKEN)]);
    let mut heater = Client::connect(gateway.port, "heater-1").await;
    heater.subscribe(&shadow_topic("heater-1", "+")).await;
    for (kind, state) in [
        ("reported", json!({"temperature": 48.5, "targetTemp": 55})),
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
        .publish(
            &shadow_topic("heater-2", "reported"),
            json(&json!({"state": {"t": 1}})),
        )
        .await;
    heater
        .publish(&shadow_topic("heater-1", "reported"), b"{not json".to_vec())
        .await;
    heater.expect("/shadow/rejected").await;
    (gateway, heater)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_lists_devices_shadows_deltas_and_rejections() {
    let (gateway, _heater) = gateway_with_shadows().await;
    let (status, _) = http_get(gateway.http_port, "/");
    assert_eq!(status, 401, "a configured token is required");
    let (status, _) = http_get(gateway.http_port, "/?token=wrong");
    assert_eq!(status, 401);

    let (status, html) = http_get(gateway.http_port, &format!("/?token={TOKEN}"));
    assert_eq!(status, 200);
    for text in [
        "name=\"viewport\"",
        "Gateway gw-test",
        "data-id=\"heater-1\"",
        "heater-2",
        "&quot;targetTemp&quot;:60",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "<span class=\"bad\">400</span>",
        "offline",
    ] {
        assert!(html.contains(text), "{text} missing in\n{html}");
    }
    assert!(
        !html.contains("<script>"),
        "device text must be escaped:\n{html}"
    );

    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, _) = http_get_with(gateway.http_port, "/", &bearer);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_the_page_on_a_phone() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (gateway, _heater) = gateway_with_shadows().await;
    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", gateway.http_port);
    let profile = tempfile::tempdir().expect("tempdir");
    let screenshot = profile.path().join("status.png");

    let dom = run_chromium(&chromium, profile.path(), &["--dump-dom", &url]);
    assert!(
        dom.contains("heater-1") && dom.contains("heater-2"),
        "{dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(
        !dom.contains("<script>"),
        "a device's text became markup:\n{dom}"
    );

    run_chromium(
        &chromium,
        profile.path(),
        &[
            &format!("--screenshot={}", screenshot.display()),
            &format!("--window-size={},{}", PHONE.0, PHONE.1),
            &url,
        ],
    );
    let (width, height, distinct) = decode_png(&screenshot);
    assert_eq!((width, height), PHONE);
    // Text, table rules and colours: far more than a blank or single-colour page.
    assert!(
        distinct > 8,
        "the screenshot looks blank ({distinct} colours)"
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

/// Runs headless Chromium with `args`; its stdout. Killed after `CHROMIUM_TIMEOUT`.
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
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
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

/// Width, height and the number of distinct colours (capped) of a PNG.
fn decode_png(path: &Path) -> (u32, u32, usize) {
    let file = std::fs::File::open(path).expect("the screenshot exists");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
    let frame = reader.next_frame(&mut pixels).expect("decode");
    let channels = frame.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for pixel in pixels[..frame.buffer_size()].chunks(channels) {
        colours.insert(pixel.to_vec());
        if colours.len() > 1000 {
            break;
        }
    }
    (frame.width, frame.height, colours.len())
}
