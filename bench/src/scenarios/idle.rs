//! Idle connections: N devices connect, each subscribes to its own `shadow/delta`, and
//! they stay connected for `--hold` seconds doing nothing. The broker's memory (VmRSS,
//! VmHWM of `--pid`) is read before, once all are connected, at the end of the hold, and
//! after they disconnected.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::time::sleep;

use super::{close_all, Ctx};
use crate::cli::IdleArgs;
use crate::procfs::{self, Memory};
use crate::report::{Errors, Outcome};

/// File descriptors the load generator keeps for itself (stdio, runtime, epoll…).
const RESERVED_FDS: u64 = 64;
/// Pause before reading memory, so the broker finishes what the last step started.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Results {
    connections: usize,
    /// `--connections` was more than the open-files limit allowed.
    capped_by_fd_limit: bool,
    open_files_limit: Option<u64>,
    connect_s: f64,
    before: Memory,
    connected: Memory,
    held: Memory,
    after_close: Memory,
    /// (RSS connected − RSS before) / connections.
    kib_per_connection: f64,
}

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> anyhow::Result<Outcome> {
    let pid = ctx
        .pid
        .context("idle needs the broker's --pid to read its memory")?;
    let limit = procfs::open_files_limit();
    let allowed = limit.map_or(usize::MAX, |l| l.saturating_sub(RESERVED_FDS) as usize);
    let wanted = args.connections.max(1);
    let count = wanted.min(allowed);
    let mut errors = Errors::default();

    let before = procfs::memory(pid)?;
    let started = Instant::now();
    let opened = super::open_devices(ctx, "idle", count, 1, None).await;
    let connect_s = started.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(count);
    for (i, conn) in opened.into_iter().enumerate() {
        match conn {
            Ok(conn) => conns.push(conn),
            Err(e) => errors.push(format!("connection {i}: {e:#}")),
        }
    }
    sleep(SETTLE).await;
    let connected = procfs::memory(pid)?;
    let hold_until = (Instant::now() + Duration::from_secs(args.hold)).min(ctx.deadline);
    let deadline_hit = hold_until == ctx.deadline;
    tokio::time::sleep_until(hold_until.into()).await;
    let held = procfs::memory(pid)?;
    let open = conns.len();
    errors.merge(close_all(conns).await);
    sleep(SETTLE).await;
    let after_close = procfs::memory(pid)?;

    let per_connection = match open {
        0 => 0.0,
        n => (connected.rss_kb as f64 - before.rss_kb as f64) / n as f64,
    };
    let results = Results {
        connections: open,
        capped_by_fd_limit: count < wanted,
        open_files_limit: limit,
        connect_s,
        before,
        connected,
        held,
        after_close,
        kib_per_connection: (per_connection * 10.0).round() / 10.0,
    };
    let mb = |kb: u64| kb as f64 / 1024.0;
    let summary = format!(
        "{} connections{} opened in {:.1} s, held {} s\n\
         RSS before {:.1} MB, connected {:.1} MB, end of hold {:.1} MB (HWM {:.1} MB), after close {:.1} MB; {:.1} KiB per connection",
        open,
        if count < wanted {
            format!(" (capped from {wanted} by the open-files limit {limit:?})")
        } else {
            String::new()
        },
        connect_s,
        args.hold,
        mb(before.rss_kb),
        mb(connected.rss_kb),
        mb(held.rss_kb),
        mb(held.hwm_kb),
        mb(after_close.rss_kb),
        results.kib_per_connection,
    );
    Ok(Outcome {
        params: json!({ "connections": wanted, "hold_s": args.hold, "pid": pid }),
        results: serde_json::to_value(&results)?,
        summary,
        deadline_hit,
        errors,
    })
}
