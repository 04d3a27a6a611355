//! `loadgen`: the load generator of iotsphere-gateway's benchmarks (README.md here).
//!
//! Layout: `cli` parses flags; `mqtt` is a small MQTT 3.1.1 client (codec + connection);
//! `pool` opens many connections at once; `scenarios/*` are the measurements; `mongo`
//! is the cloud side (MongoDB);
//! `stats` holds latency histograms and pacing; `procfs` reads the broker's memory and
//! CPU; `report` prints the JSON line and the summary; `summarize` turns JSON lines into
//! RESULTS.md's tables.

mod cli;
mod mongo;
mod mqtt;
mod pool;
mod procfs;
mod report;
mod scenarios;
mod stats;
mod summarize;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use cli::{Cli, Scenario};
use report::Report;
use scenarios::Ctx;

/// Time the run gets past its deadline to close connections and report.
const DEADLINE_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Summarize(args) = &cli.scenario {
        return match summarize::file(&args.file) {
            Ok(markdown) => {
                print!("{markdown}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !cli.common.broker.ip().is_loopback() {
        eprintln!(
            "loadgen: --broker must be a loopback address (got {})",
            cli.common.broker
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = &cli.common;
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(common.deadline);
    let ctx = Ctx {
        connect: mqtt::ConnectOptions::new(common.broker),
        root: common.root.clone(),
        prefix: common
            .id_prefix
            .clone()
            .unwrap_or_else(|| format!("b{unix_time}x{}-", std::process::id())),
        deadline,
        connect_concurrency: common.connect_concurrency,
        pid: common.pid,
    };
    let cpu = |pid: Option<u32>| -> Option<f64> {
        let pid = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
        procfs::cpu_seconds(&pid).ok()
    };
    let (loadgen_cpu0, broker_cpu0) = (cpu(None), common.pid.and_then(|p| cpu(Some(p))));
    let written = || {
        common
            .pid
            .and_then(|p| procfs::disk_written_bytes(&p.to_string()).ok())
    };
    let broker_written0 = written();

    let name = cli.scenario.name();
    let scenario = async {
        match &cli.scenario {
            Scenario::Fanin(args) => scenarios::fanin::run(&ctx, args).await,
            Scenario::Roundtrip(args) => scenarios::roundtrip::run(&ctx, args).await,
            Scenario::Mongochange(args) => scenarios::mongochange::run(&ctx, args).await,
            Scenario::Fleetwatch(args) => scenarios::fleetwatch::run(&ctx, args).await,
            Scenario::Landed(args) => scenarios::landed::run(&ctx, args).await,
            Scenario::Idle(args) => scenarios::idle::run(&ctx, args).await,
            Scenario::Storm(args) => scenarios::storm::run(&ctx, args).await,
            Scenario::Failover(args) => scenarios::failover::run(&ctx, args).await,
            Scenario::Summarize(_) => anyhow::bail!("summarize is not a scenario"),
        }
    };
    let outcome = tokio::time::timeout_at((deadline + DEADLINE_GRACE).into(), scenario)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{name} did not finish within --deadline {} s plus {DEADLINE_GRACE:?}",
                common.deadline
            )
        })??;

    let diff = |after: Option<f64>, before: Option<f64>| after.zip(before).map(|(a, b)| a - b);
    let report = Report {
        scenario: name,
        broker: &common.label,
        tag: &common.tag,
        round: common.round,
        command: std::iter::once("loadgen".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        address: common.broker.to_string(),
        unix_time,
        elapsed_s: started.elapsed().as_secs_f64(),
        deadline_hit: outcome.deadline_hit,
        loadgen_threads: common.threads.max(1),
        cpu_loadgen_s: diff(cpu(None), loadgen_cpu0).unwrap_or(0.0),
        cpu_broker_s: diff(common.pid.and_then(|p| cpu(Some(p))), broker_cpu0),
        disk_written_broker_bytes: written()
            .zip(broker_written0)
            .map(|(after, before)| after.saturating_sub(before)),
        params: &outcome.params,
        results: &outcome.results,
        errors: &outcome.errors,
    };
    report.emit(&outcome.summary)
}
