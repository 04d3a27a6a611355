//! RESULTS.md's tables from the JSON lines of a benchmark run: every run as a row (in
//! the order they ran, so the A B A B alternation is visible), gateway/mosquitto ratios
//! per round, and the issue's targets marked met or missed.
//!
//! Ratios pair the run labelled `gateway` with the run labelled `mosquitto` of the same
//! scenario, tag and round (run.sh's labels).

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

const GATEWAY: &str = "gateway";
const MOSQUITTO: &str = "mosquitto";
/// The gateway with its uplink to a mongo-double (ingest, section 6).
const GATEWAY_MONGODB: &str = "gateway-mongodb";
/// What a user would build instead of the gateway: mosquitto + bench's `refconsumer`.
const REFERENCE: &str = "mosquitto-refconsumer";

pub fn file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    markdown(&text)
}

/// The Markdown of every run found in `lines` (lines that are not JSON are skipped).
pub fn markdown(lines: &str) -> anyhow::Result<String> {
    let runs: Vec<Value> = lines
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a JSON line of the results does not parse")?;
    // Fan-in runs without a subscriber feed MongoDB or the outbox (sections 6 and 7), not
    // the broker comparison of section 1.
    let (uplink, broker): (Vec<Value>, Vec<Value>) = runs.iter().cloned().partition(|r| {
        text(r, "/scenario") == "fanin"
            && r.pointer("/params/subscriber").and_then(Value::as_bool) == Some(false)
    });
    let mut out = String::new();
    targets(&mut out, &runs)?;
    fanin(&mut out, &broker)?;
    idle(&mut out, &runs)?;
    roundtrip(&mut out, &runs)?;
    mongochange(&mut out, &runs)?;
    storm(&mut out, &runs)?;
    ingest(&mut out, &uplink)?;
    outbox(&mut out, &uplink, &runs)?;
    commands(&mut out, &runs)?;
    fleet(&mut out, &runs)?;
    failover(&mut out, &runs)?;
    Ok(out)
}

fn num(run: &Value, pointer: &str) -> Option<f64> {
    run.pointer(pointer).and_then(Value::as_f64)
}

fn text<'a>(run: &'a Value, pointer: &str) -> &'a str {
    run.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn of<'a>(runs: &'a [Value], scenario: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    runs.iter()
        .filter(move |r| text(r, "/scenario") == scenario)
}

fn ms(us: Option<f64>) -> String {
    us.map_or_else(|| "–".into(), |us| format!("{:.2}", us / 1000.0))
}

fn mb(kb: Option<f64>) -> String {
    kb.map_or_else(|| "–".into(), |kb| format!("{:.1}", kb / 1024.0))
}

/// Seconds (or any value) with two decimals.
fn two_decimals(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.2}"))
}

fn int(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Broker CPU microseconds per message sent.
fn cpu_per_message(run: &Value, field: &str) -> Option<f64> {
    let sent = num(run, "/results/sent").filter(|&s| s > 0.0)?;
    Some(num(run, field)? * 1e6 / sent)
}

/// Per round, `metric(gateway) / metric(mosquitto)` for runs of `scenario` and `tag`.
fn ratios(
    runs: &[Value],
    scenario: &str,
    tag: &str,
    metric: impl Fn(&Value) -> Option<f64>,
) -> Vec<f64> {
    ratios_of(runs, GATEWAY, scenario, tag, &metric)
}

/// Per round, `metric(broker) / metric(mosquitto)` for runs of `scenario` and `tag`.
fn ratios_of(
    runs: &[Value],
    broker: &str,
    scenario: &str,
    tag: &str,
    metric: &dyn Fn(&Value) -> Option<f64>,
) -> Vec<f64> {
    ratios_against(runs, broker, MOSQUITTO, scenario, tag, metric)
}

/// Per round, `metric(broker) / metric(reference)` for runs of `scenario` and `tag`.
fn ratios_against(
    runs: &[Value],
    broker: &str,
    reference: &str,
    scenario: &str,
    tag: &str,
    metric: &dyn Fn(&Value) -> Option<f64>,
) -> Vec<f64> {
    let find = |broker: &str, round: f64| {
        of(runs, scenario).find(|r| {
            text(r, "/broker") == broker
                && text(r, "/tag") == tag
                && num(r, "/round") == Some(round)
        })
    };
    let mut rounds: Vec<f64> = of(runs, scenario)
        .filter(|r| text(r, "/tag") == tag)
        .filter_map(|r| num(r, "/round"))
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|round| {
            let measured = metric(find(broker, round)?)?;
            let reference = metric(find(reference, round)?)?;
            (reference > 0.0).then(|| measured / reference)
        })
        .collect()
}

fn ratio_cell(values: &[f64]) -> String {
    match median(values.to_vec()) {
        None => "–".into(),
        Some(m) => format!(
            "**{m:.2}×** ({})",
            values
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The tags of a scenario's runs, in the order they first ran.
fn tags<'a>(runs: &'a [Value], scenario: &'a str) -> Vec<&'a str> {
    let mut tags: Vec<&str> = Vec::new();
    for run in of(runs, scenario) {
        let tag = text(run, "/tag");
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// The brokers compared with mosquitto, in the order they first ran.
fn brokers<'a>(runs: &'a [Value], scenario: &'a str) -> Vec<&'a str> {
    let mut brokers: Vec<&str> = Vec::new();
    for run in of(runs, scenario) {
        let broker = text(run, "/broker");
        if broker != MOSQUITTO && !brokers.contains(&broker) {
            brokers.push(broker);
        }
    }
    brokers
}

fn fanin(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "fanin").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 1. Fan-in: N publishers → one QoS 0 subscriber on `iotsphere/devices/+/telemetry/#`\n"
    )?;
    writeln!(out, "Ratios are broker / mosquitto of the same mode and round; the bold figure is the median, the rounds follow in brackets. Throughput above 1 and latency or CPU below 1 favour the gateway. \"lost\" is the share of sent messages the subscriber never got, per round.\n")?;
    writeln!(out, "| mode | broker / mosquitto | throughput (delivered msg/s) | e2e p50 | e2e p99 | broker CPU per message | lost: broker; mosquitto |")?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for tag in tags(runs, "fanin") {
        for broker in brokers(runs, "fanin") {
            let lost = |b: &str| {
                of(runs, "fanin")
                    .filter(|r| text(r, "/tag") == tag && text(r, "/broker") == b)
                    .filter_map(|r| num(r, "/results/loss_pct"))
                    .map(|pct| format!("{pct:.1}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ratio = |metric: &dyn Fn(&Value) -> Option<f64>| {
                ratio_cell(&ratios_of(runs, broker, "fanin", tag, metric))
            };
            writeln!(
                out,
                "| {tag} | {broker} | {} | {} | {} | {} | {}; {} |",
                ratio(&|r| num(r, "/results/delivered_per_s")),
                ratio(&|r| num(r, "/results/e2e/p50_us")),
                ratio(&|r| num(r, "/results/e2e/p99_us")),
                ratio(&|r| cpu_per_message(r, "/cpu_broker_s")),
                lost(broker),
                lost(MOSQUITTO),
            )?;
        }
    }
    writeln!(out, "\nEvery run, in the order they ran:\n")?;
    writeln!(out, "| mode | round | broker | QoS | rate | sent | lost | delivered msg/s | e2e p50 ms | e2e p99 ms | PUBACK p50 / p99 ms | broker CPU µs/msg | loadgen CPU µs/msg |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for run in of(runs, "fanin") {
        let rate = num(run, "/params/rate").filter(|&r| r > 0.0);
        let window = num(run, "/params/window").filter(|&w| w > 0.0);
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            text(run, "/tag"),
            int(num(run, "/round")),
            text(run, "/broker"),
            int(num(run, "/params/qos")),
            match (rate, window) {
                (Some(r), _) => format!("{r:.0}/s"),
                (None, Some(w)) => format!("max, window {w:.0}"),
                (None, None) => "max, open loop".into(),
            },
            int(num(run, "/results/sent")),
            int(num(run, "/results/lost")),
            int(num(run, "/results/delivered_per_s")),
            ms(num(run, "/results/e2e/p50_us")),
            ms(num(run, "/results/e2e/p99_us")),
            match run.pointer("/results/puback").filter(|v| !v.is_null()) {
                Some(_) => format!(
                    "{} / {}",
                    ms(num(run, "/results/puback/p50_us")),
                    ms(num(run, "/results/puback/p99_us"))
                ),
                None => "–".into(),
            },
            int(cpu_per_message(run, "/cpu_broker_s").map(|v| v.round())),
            int(cpu_per_message(run, "/cpu_loadgen_s").map(|v| v.round())),
        )?;
    }
    writeln!(out)
}

fn idle(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "idle").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 4. Idle connections: broker memory (each device subscribed to its own delta topic)\n"
    )?;
    writeln!(out, "Connect storm: all N connect at once, `--connect-concurrency` (50) handshakes in flight, each CONNECT → CONNACK, SUBSCRIBE → SUBACK; the time until all are subscribed.\n")?;
    writeln!(out, "| connections | gateway / mosquitto RSS connected | gateway / mosquitto RSS growth per connection | gateway / mosquitto connect storm time |")?;
    writeln!(out, "|---|---|---|---|")?;
    for tag in tags(runs, "idle") {
        let n = of(runs, "idle")
            .find(|r| text(r, "/tag") == tag)
            .and_then(|r| num(r, "/results/connections"));
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            int(n),
            ratio_cell(&ratios(runs, "idle", tag, |r| num(
                r,
                "/results/connected/rss_kb"
            ))),
            ratio_cell(&ratios(runs, "idle", tag, |r| num(
                r,
                "/results/kib_per_connection"
            ))),
            ratio_cell(&ratios(runs, "idle", tag, |r| num(r, "/results/connect_s"))),
        )?;
    }
    writeln!(out, "\n| connections | round | broker | RSS before MB | RSS connected MB | RSS end of hold MB | VmHWM MB | KiB per connection | connect s | RSS after close MB | errors |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for run in of(runs, "idle") {
        let capped = run
            .pointer("/results/capped_by_fd_limit")
            .and_then(Value::as_bool)
            == Some(true);
        writeln!(
            out,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            int(num(run, "/results/connections")),
            if capped {
                " (capped by the fd limit)"
            } else {
                ""
            },
            int(num(run, "/round")),
            text(run, "/broker"),
            mb(num(run, "/results/before/rss_kb")),
            mb(num(run, "/results/connected/rss_kb")),
            mb(num(run, "/results/held/rss_kb")),
            mb(num(run, "/results/held/hwm_kb")),
            num(run, "/results/kib_per_connection")
                .map_or_else(|| "–".into(), |v| format!("{v:.1}")),
            num(run, "/results/connect_s").unwrap_or(f64::NAN),
            mb(num(run, "/results/after_close/rss_kb")),
            int(num(run, "/errors/count")),
        )?;
    }
    writeln!(out)
}

fn roundtrip(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "roundtrip").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 2. Shadow round trip: desired published → delta received (gateway only)\n"
    )?;
    writeln!(out, "| round | broker | devices × updates | rate /s | p50 ms | p90 ms | p99 ms | max ms | missing | duplicates | desired PUBACK p50 / p99 ms | broker CPU s |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for run in of(runs, "roundtrip") {
        writeln!(
            out,
            "| {} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            int(num(run, "/round")),
            text(run, "/broker"),
            int(num(run, "/results/devices_connected")),
            int(num(run, "/params/rounds")),
            int(num(run, "/params/rate")),
            ms(num(run, "/results/desired_to_delta/p50_us")),
            ms(num(run, "/results/desired_to_delta/p90_us")),
            ms(num(run, "/results/desired_to_delta/p99_us")),
            ms(num(run, "/results/desired_to_delta/max_us")),
            int(num(run, "/results/missing")),
            int(num(run, "/results/duplicates")),
            ms(num(run, "/results/desired_puback/p50_us")),
            ms(num(run, "/results/desired_puback/p99_us")),
            two_decimals(num(run, "/cpu_broker_s")),
        )?;
    }
    if of(runs, "roundtrip").any(|r| text(r, "/broker") == "gateway-outbox") {
        writeln!(
            out,
            "\n`gateway-outbox` has MongoDB configured but unreachable. A device the gateway \
             has never served is first claimed in MongoDB (README, \"Many gateways on one \
             MongoDB\"): until the uplink has found MongoDB unreachable (its first attempt \
             takes 5 s) such a claim waits up to 3 s; after that, as here (the broker ran \
             the fan-in first), new devices are served at once from fresh local shadows."
        )?;
    }
    writeln!(out)
}

fn storm(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "storm").next().is_none() {
        return Ok(());
    }
    writeln!(out, "## 5. Reconnect storm: every device with a pending delta reconnects at once (gateway only)\n")?;
    writeln!(out, "| round | how they left | devices | delivered | missing | got it twice | wrong | all delivered after s | connect p50 / p99 / max s | delta p50 / p99 s | connect retries |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let s = |v: Option<f64>| v.map_or_else(|| "–".into(), |us| format!("{:.2}", us / 1e6));
    for run in of(runs, "storm") {
        let abrupt = run.pointer("/params/abrupt").and_then(Value::as_bool) == Some(true);
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} | {} |",
            int(num(run, "/round")),
            if abrupt {
                "power cut (no DISCONNECT)"
            } else {
                "DISCONNECT"
            },
            int(num(run, "/results/devices")),
            int(num(run, "/results/delivered")),
            int(num(run, "/results/missing")),
            int(num(run, "/results/duplicated")),
            int(num(run, "/results/wrong")),
            num(run, "/results/all_delivered_ms")
                .map_or_else(|| "never".into(), |v| format!("{:.2}", v / 1000.0)),
            s(num(run, "/results/connect/p50_us")),
            s(num(run, "/results/connect/p99_us")),
            s(num(run, "/results/connect/max_us")),
            s(num(run, "/results/delta/p50_us")),
            s(num(run, "/results/delta/p99_us")),
            int(num(run, "/results/connect_retries")),
        )?;
    }
    writeln!(out)
}

fn mongochange(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "mongochange").next().is_none() {
        return Ok(());
    }
    writeln!(out, "## 3. MongoDB change → delta: a cloud service sets `state.desired` in `shadows` (gateway + mongo-double)\n")?;
    writeln!(out, "| mode | round | devices × changes | rate /s | p50 ms | p90 ms | p99 ms | max ms | missing | duplicates | updateOne p50 / p99 ms | broker CPU s | all shadows in MongoDB s |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for run in of(runs, "mongochange") {
        writeln!(
            out,
            "| {} | {} | {} × {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            text(run, "/tag"),
            int(num(run, "/round")),
            int(num(run, "/results/devices_connected")),
            int(num(run, "/params/rounds")),
            int(num(run, "/params/rate")),
            ms(num(run, "/results/change_to_delta/p50_us")),
            ms(num(run, "/results/change_to_delta/p90_us")),
            ms(num(run, "/results/change_to_delta/p99_us")),
            ms(num(run, "/results/change_to_delta/max_us")),
            int(num(run, "/results/missing")),
            int(num(run, "/results/duplicates")),
            ms(num(run, "/results/update_call/p50_us")),
            ms(num(run, "/results/update_call/p99_us")),
            two_decimals(num(run, "/cpu_broker_s")),
            two_decimals(num(run, "/results/shadows_ready_s")),
        )?;
    }
    writeln!(out)
}

/// Runs of `fanin` with the given tag (no subscriber: sections 6 and 7).
fn tagged<'a>(runs: &'a [Value], tag: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    of(runs, "fanin").filter(move |r| text(r, "/tag") == tag)
}

fn puback(run: &Value) -> String {
    format!(
        "{} / {}",
        ms(num(run, "/results/puback/p50_us")),
        ms(num(run, "/results/puback/p99_us"))
    )
}

fn fleet(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "fleetwatch").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 8. Many gateways on one MongoDB: change-stream events per gateway
"
    )?;
    writeln!(out, "1,000 devices spread evenly over G gateways, 2,000 cloud changes of `state.desired` (round robin); G change streams with the gateway's pipeline, each on its own client. With the ownership `$match` a gateway receives only its devices' changes; without it, the whole fleet's.
")?;
    writeln!(out, "| gateways | ownership $match | events per gateway (mean, max) | shipped in all | all delivered after s | MongoDB CPU s |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for run in of(runs, "fleetwatch") {
        writeln!(
            out,
            "| {} | {} | {}, {} | {} | {} | {} |",
            int(num(run, "/params/gateways")),
            text(run, "/tag"),
            int(num(run, "/results/events_per_gateway_mean").map(f64::round)),
            int(num(run, "/results/events_per_gateway_max")),
            int(num(run, "/results/events_total")),
            two_decimals(num(run, "/results/seconds")),
            two_decimals(num(run, "/cpu_broker_s")),
        )?;
    }
    writeln!(out)
}

fn failover(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if of(runs, "failover").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 9. Active/standby failover: the active gateway is killed, the standby takes its devices\n"
    )?;
    writeln!(out, "Two gateways with the same `mongodb.lease` on one mongo-double; N devices on the active report a state, then loadgen kills the active (SIGKILL) and at once changes every device's `state.desired.targetTemp` in MongoDB (a distinct value per device). Each device retries [active, standby] every 100 ms and subscribes once to its delta on the gateway that accepts it. Times are seconds from the kill; the standby must take the lease within ¾ of the TTL. Exactly once: every device gets its new setpoint, none twice, none wrong.\n")?;
    let s = |v: Option<f64>| v.map_or_else(|| "never".into(), |ms| format!("{:.2}", ms / 1000.0));
    let us = |run: &Value, p: &str| {
        num(run, p).map_or_else(|| "–".into(), |us| format!("{:.2}", us / 1e6))
    };
    let mut ttls: Vec<f64> = of(runs, "failover")
        .filter_map(|r| num(r, "/params/lease_ttl_ms"))
        .collect();
    ttls.sort_by(f64::total_cmp);
    ttls.dedup();
    for ttl in ttls {
        writeln!(
            out,
            "### lease_ttl_ms = {ttl:.0} (bound ¾ × TTL = {:.2} s)\n",
            ttl * 0.75 / 1000.0
        )?;
        writeln!(out, "| round | devices | lease taken s | bound s | all shadows owned s | all reconnected s | CONNACK p50 / p99 / max s | all deltas delivered s | delta p50 / p99 / max s | delivered | missing | got it twice | wrong | failed attempts: CONNACK 3 / TCP refused / other | standby CPU s |")?;
        writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        let these: Vec<&Value> = of(runs, "failover")
            .filter(|r| num(r, "/params/lease_ttl_ms") == Some(ttl))
            .collect();
        for run in &these {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} / {} / {} | {} | {} | {} | {} | {} / {} / {} | {} |",
                int(num(run, "/round")),
                int(num(run, "/results/devices")),
                s(num(run, "/results/lease_taken_ms")),
                s(num(run, "/results/lease_bound_ms")),
                s(num(run, "/results/all_owned_ms")),
                s(num(run, "/results/all_reconnected_ms")),
                us(run, "/results/connect/p50_us"),
                us(run, "/results/connect/p99_us"),
                us(run, "/results/connect/max_us"),
                s(num(run, "/results/all_delivered_ms")),
                us(run, "/results/delta/p50_us"),
                us(run, "/results/delta/p99_us"),
                us(run, "/results/delta/max_us"),
                int(num(run, "/results/delivered")),
                int(num(run, "/results/missing")),
                int(num(run, "/results/duplicated")),
                int(num(run, "/results/wrong")),
                int(num(run, "/results/refusals/connack/3").or(Some(0.0))),
                int(num(run, "/results/refusals/tcp_refused")),
                int(num(run, "/results/refusals/other/count")),
                two_decimals(num(run, "/cpu_broker_s")),
            )?;
        }
        writeln!(out)?;
        for run in these {
            writeln!(out, "`{}`\n", text(run, "/command"))?;
        }
    }
    Ok(())
}

fn ingest(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    if tagged(runs, "ingest").next().is_none() {
        return Ok(());
    }
    writeln!(out, "## 6. Telemetry ingest: readings published → stored in MongoDB `telemetry` (gateway + mongo-double)\n")?;
    writeln!(out, "Publishers only (no subscriber), QoS 1, as fast as PUBACKs allow; `{GATEWAY_MONGODB}` stores each reading in its outbox (fsync before PUBACK) and the uplink writes them with `insertMany`; `{REFERENCE}` is what a user would build instead: mosquitto (PUBACK at once, nothing on disk) and bench's `refconsumer` (rumqttc, QoS 1 subscription, the same driver's `insertMany` in batches of up to 1,000). Stored/s = readings stored / (last one stored − first publish); exactly once = every (device, seq) once.\n")?;
    writeln!(
        out,
        "Gateway / reference, stored/s: {}\n",
        ratio_cell(&ingest_ratios(runs))
    )?;
    writeln!(out, "| round | broker | readings | PUBACKs/s | stored/s | all stored after publishing s | missing | duplicates | PUBACK p50 / p99 ms | broker CPU µs/reading |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    for run in tagged(runs, "ingest") {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            int(num(run, "/round")),
            text(run, "/broker"),
            int(num(run, "/results/sent")),
            int(num(run, "/results/acked_per_s")),
            int(num(run, "/results/landed/stored_per_s")),
            num(run, "/results/landed/all_after_s")
                .map_or_else(|| "never".into(), |s| format!("{s:.2}")),
            int(num(run, "/results/landed/missing")),
            int(num(run, "/results/landed/duplicates")),
            puback(run),
            int(cpu_per_message(run, "/cpu_broker_s").map(|v| v.round())),
        )?;
    }
    writeln!(out)
}

/// Per round, the gateway's stored readings per second over the reference's.
fn ingest_ratios(runs: &[Value]) -> Vec<f64> {
    ratios_against(runs, GATEWAY_MONGODB, REFERENCE, "fanin", "ingest", &|r| {
        num(r, "/results/landed/stored_per_s")
    })
}

fn outbox(out: &mut String, uplink: &[Value], runs: &[Value]) -> std::fmt::Result {
    if tagged(uplink, "outbox-append").next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "## 7. Outbox: MongoDB down, then back (gateway + mongo-double)\n"
    )?;
    writeln!(out, "Append: `mongodb.uri` names a closed port; publishers only, QoS 1, as fast as PUBACKs allow (the gateway acknowledges after the outbox fsync). Disk: bytes the gateway wrote to storage during the append (/proc/PID/io `write_bytes`: SD-card wear) and the size of `data_dir` afterwards, per reading buffered.\n")?;
    writeln!(out, "| round | readings | PUBACKs/s | PUBACK p50 / p99 ms | broker CPU µs/reading | written to disk B/reading | data_dir B/reading | outbox B/item |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for run in tagged(uplink, "outbox-append") {
        let round = num(run, "/round");
        let disk = of(runs, "outbox-disk").find(|d| num(d, "/round") == round);
        let sent = num(run, "/results/sent").filter(|&n| n > 0.0);
        let per = |v: Option<f64>| int(v.zip(sent).map(|(v, n)| v / n));
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            int(round),
            int(sent),
            int(num(run, "/results/acked_per_s")),
            puback(run),
            int(cpu_per_message(run, "/cpu_broker_s").map(|v| v.round())),
            per(num(run, "/disk_written_broker_bytes")),
            per(disk.and_then(|d| num(d, "/results/data_dir_bytes"))),
            int(disk.and_then(|d| {
                Some(num(d, "/results/outbox_bytes")? / num(d, "/results/outbox_items")?)
            })),
        )?;
    }
    writeln!(out, "\nReplay: then mongo-double starts on that port; the uplink reconnects (backoff) and drains the outbox at `outbox.replay_rate`. Replay/s = readings stored / (last − first seen stored).\n")?;
    writeln!(out, "| round | readings | stored | missing | duplicates | first stored after s | all stored after s | replay readings/s |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let secs = |v: Option<f64>| v.map_or_else(|| "never".into(), |s| format!("{s:.2}"));
    for run in of(runs, "landed") {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            int(num(run, "/round")),
            int(num(run, "/results/expected")),
            int(num(run, "/results/stored")),
            int(num(run, "/results/missing")),
            int(num(run, "/results/duplicates")),
            secs(num(run, "/results/first_after_s")),
            secs(num(run, "/results/all_after_s")),
            int(num(run, "/results/stored_per_s")),
        )?;
    }
    writeln!(out)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn targets(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    writeln!(out, "## Targets\n")?;
    writeln!(out, "| target | measured | verdict |")?;
    writeln!(out, "|---|---|---|")?;

    let throughput = ratios(runs, "fanin", "max", |r| num(r, "/results/delivered_per_s"));
    let m = median(throughput.clone());
    writeln!(
        out,
        "| fan-in throughput through the gateway ≥ 1.0× mosquitto (same run, 256 B, lossless) | {} | {} |",
        ratio_cell(&throughput),
        verdict(m.map(|m| m >= 1.0))
    )?;

    let rt: Vec<&Value> = of(runs, "roundtrip")
        .filter(|r| {
            text(r, "/broker") == GATEWAY && num(r, "/results/devices_connected") == Some(1000.0)
        })
        .collect();
    let worst = |p: &str| {
        rt.iter()
            .filter_map(|r| num(r, p))
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
    };
    let (p50, p99) = (
        worst("/results/desired_to_delta/p50_us"),
        worst("/results/desired_to_delta/p99_us"),
    );
    let complete = rt.iter().all(|r| num(r, "/results/missing") == Some(0.0));
    writeln!(
        out,
        "| round trip desired → delta at 1,000 devices: p50 < 2 ms, p99 < 10 ms | worst run: p50 {} ms, p99 {} ms{} | {} |",
        ms(p50),
        ms(p99),
        if complete { "" } else { ", some deltas missing" },
        verdict(p50.zip(p99).map(|(a, b)| a < 2000.0 && b < 10_000.0 && complete))
    )?;

    // RSS once connected (the larger of "connected" and "end of hold"), per round.
    let rss =
        |r: &Value| Some(num(r, "/results/connected/rss_kb")?.max(num(r, "/results/held/rss_kb")?));
    let excess = ratios(runs, "idle", "1000", |r| rss(r));
    let over_bound: Vec<f64> = {
        // gateway RSS − (1.5 × mosquitto's + 8 MB), per round, in MB.
        let sub = |broker: &str| -> Vec<(f64, f64)> {
            of(runs, "idle")
                .filter(|r| text(r, "/broker") == broker && text(r, "/tag") == "1000")
                .filter_map(|r| Some((num(r, "/round")?, rss(r)?)))
                .collect()
        };
        let mosquitto = sub(MOSQUITTO);
        sub(GATEWAY)
            .into_iter()
            .filter_map(|(round, gw)| {
                let (_, m) = mosquitto.iter().find(|(r, _)| *r == round)?;
                Some((gw - (1.5 * m + 8.0 * 1024.0)) / 1024.0)
            })
            .collect()
    };
    let worst = over_bound
        .iter()
        .copied()
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    writeln!(
        out,
        "| gateway RSS with 1,000 connected heaters ≤ 1.5× mosquitto's + 8 MB (same round) | gateway / mosquitto {}; worst round {} MB {} the bound | {} |",
        ratio_cell(&excess),
        worst.map_or_else(|| "–".into(), |w| format!("{:.1}", w.abs())),
        if worst.is_some_and(|w| w > 0.0) { "over" } else { "under" },
        verdict(worst.map(|w| w <= 0.0))
    )?;
    let peak = of(runs, "idle")
        .filter(|r| text(r, "/broker") == GATEWAY && text(r, "/tag") == "10000")
        .filter_map(rss)
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    writeln!(
        out,
        "| gateway RSS with 10,000 connected heaters ≤ 64 MB | highest VmRSS: {} MB | {} |",
        mb(peak),
        verdict(peak.map(|kb| kb / 1024.0 <= 64.0))
    )?;
    for (tag, bound) in [("1000", Some(2.0)), ("10000", None)] {
        let storm = ratios(runs, "idle", tag, |r| num(r, "/results/connect_s"));
        let m = median(storm.clone());
        writeln!(
            out,
            "| connect storm, {tag} heaters at once (idle's connect time): {} | gateway / mosquitto {} | {} |",
            bound.map_or_else(|| "measured, no target".into(), |b| format!("≤ {b:.0}× mosquitto")),
            ratio_cell(&storm),
            match bound {
                Some(b) => verdict(m.map(|m| m <= b)),
                None => "–",
            }
        )?;
    }

    let storms: Vec<&Value> = of(runs, "storm")
        .filter(|r| text(r, "/broker") == GATEWAY)
        .collect();
    let slowest = storms
        .iter()
        .map(|r| num(r, "/results/all_delivered_ms").unwrap_or(f64::INFINITY))
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    let exact = storms.iter().all(|r| {
        num(r, "/results/missing") == Some(0.0)
            && num(r, "/results/duplicated") == Some(0.0)
            && num(r, "/results/wrong") == Some(0.0)
    });
    writeln!(
        out,
        "| reconnect storm, 1,000 devices: every pending delta, none twice, < 5 s | slowest run: {}{} | {} |",
        slowest.map_or_else(|| "–".into(), |ms| if ms.is_finite() { format!("{:.2} s", ms / 1000.0) } else { "not all delivered".into() }),
        if exact { ", all exactly once" } else { ", some missing, duplicated or wrong" },
        verdict(slowest.map(|ms| ms < 5000.0 && exact))
    )?;
    for (mode, target) in [
        ("change-stream", "p50 < 5 ms, p99 < 20 ms"),
        ("polling", "for comparison, no target"),
    ] {
        let changes: Vec<&Value> = of(runs, "mongochange")
            .filter(|r| {
                text(r, "/tag") == mode && num(r, "/results/devices_connected") == Some(1000.0)
            })
            .collect();
        let worst = |p: &str| {
            changes
                .iter()
                .filter_map(|r| num(r, p))
                .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
        };
        let (p50, p99) = (
            worst("/results/change_to_delta/p50_us"),
            worst("/results/change_to_delta/p99_us"),
        );
        let exact = changes.iter().all(|r| {
            num(r, "/results/missing") == Some(0.0) && num(r, "/results/duplicates") == Some(0.0)
        });
        let met = p50
            .zip(p99)
            .map(|(a, b)| a < 5000.0 && b < 20_000.0 && exact);
        writeln!(
            out,
            "| MongoDB change → delta at 1,000 devices, {mode}: {target} | worst run: p50 {} ms, p99 {} ms{} | {} |",
            ms(p50),
            ms(p99),
            if exact { ", every delta once" } else { ", some missing or duplicated" },
            if mode == "polling" { "–" } else { verdict(met) },
        )?;
    }
    let stored: Vec<f64> = tagged(runs, "ingest")
        .filter(|r| text(r, "/broker") == GATEWAY_MONGODB)
        .filter(|r| {
            num(r, "/results/landed/missing") == Some(0.0)
                && num(r, "/results/landed/duplicates") == Some(0.0)
        })
        .filter_map(|r| num(r, "/results/landed/stored_per_s"))
        .collect();
    let complete = stored.len()
        == tagged(runs, "ingest")
            .filter(|r| text(r, "/broker") == GATEWAY_MONGODB)
            .count();
    let slowest = stored
        .iter()
        .copied()
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))));
    writeln!(
        out,
        "| telemetry ingest into MongoDB ≥ 50,000 readings/s, none lost or duplicated | slowest run: {} readings/s{} | {} |",
        int(slowest),
        if complete { ", all exactly once" } else { ", some runs lost or duplicated readings" },
        verdict(slowest.map(|v| v >= 50_000.0 && complete))
    )?;
    let versus = ingest_ratios(runs);
    writeln!(
        out,
        "| telemetry ingest ≥ 1.5× mosquitto + a reference consumer (stored/s, same round) | {} | {} |",
        ratio_cell(&versus),
        verdict(median(versus.clone()).map(|m| m >= 1.5))
    )?;
    writeln!(out)
}

fn commands(out: &mut String, runs: &[Value]) -> std::fmt::Result {
    writeln!(out, "## Load generator commands, in the order they ran\n")?;
    writeln!(out, "```")?;
    for run in runs {
        writeln!(out, "{}", text(run, "/command"))?;
    }
    writeln!(out, "```")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(broker: &str, round: u32, delivered: f64) -> String {
        serde_json::json!({
            "scenario": "fanin", "broker": broker, "tag": "max", "round": round,
            "command": "loadgen fanin", "cpu_broker_s": 1.0,
            "params": {"qos": 0, "rate": 0.0, "window": 20},
            "results": {"sent": 1000, "lost": 0, "delivered_per_s": delivered,
                        "e2e": {"p50_us": 100, "p99_us": 1000}, "puback": null}
        })
        .to_string()
    }

    #[test]
    fn pairs_rounds_and_takes_the_median_ratio() {
        let lines = [
            run(MOSQUITTO, 1, 100.0),
            run(GATEWAY, 1, 150.0),
            run(MOSQUITTO, 2, 100.0),
            run(GATEWAY, 2, 250.0),
        ]
        .join("\n");
        let md = markdown(&lines).expect("valid lines");
        assert!(md.contains("**2.00×** (1.50, 2.50)"), "{md}");
        assert!(md.contains("| met |"), "{md}");
    }

    #[test]
    fn failover_gets_a_table_per_lease_ttl() {
        let line = |ttl: u64| {
            serde_json::json!({
                "scenario": "failover", "broker": "gateway-pair", "tag": format!("ttl-{ttl}"),
                "round": 1, "command": format!("loadgen failover --lease-ttl-ms {ttl}"),
                "params": {"lease_ttl_ms": ttl, "devices": 1000},
                "results": {"devices": 1000, "lease_taken_ms": 900.0, "lease_bound_ms": ttl as f64 * 0.75,
                            "delivered": 1000, "missing": 0, "duplicated": 0, "wrong": 0,
                            "refusals": {"connack": {"3": 7000}, "tcp_refused": 8000, "other": {"count": 0}}}
            })
            .to_string()
        };
        let md = markdown(&[line(2000), line(10000)].join("\n")).expect("valid lines");
        assert!(
            md.contains("### lease_ttl_ms = 2000 (bound ¾ × TTL = 1.50 s)"),
            "{md}"
        );
        assert!(
            md.contains("### lease_ttl_ms = 10000 (bound ¾ × TTL = 7.50 s)"),
            "{md}"
        );
        assert!(md.contains("| 0.90 | 1.50 |"), "{md}");
        assert!(md.contains("| 7000 / 8000 / 0 |"), "{md}");
        assert!(
            md.contains("`loadgen failover --lease-ttl-ms 2000`"),
            "{md}"
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![1.0, 2.0]), Some(1.5));
        assert_eq!(median(vec![]), None);
    }
}
