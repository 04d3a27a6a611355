//! What /proc says about a process: memory (VmRSS, VmHWM), CPU time, bytes written to
//! storage, open-files limit.

use anyhow::Context;
use serde::Serialize;

/// Linux's USER_HZ, the unit of utime/stime in /proc/PID/stat (100 on every mainstream
/// architecture; std has no sysconf).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// VmRSS and VmHWM of a process.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .with_context(|| format!("{name} not in {path}"))
    };
    Ok(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// User + system CPU seconds of a process (`self` for this one).
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, i.e. 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / CLOCK_TICKS_PER_SEC),
        _ => anyhow::bail!("unexpected format of {path}"),
    }
}

/// Bytes a process caused to be written to storage (`write_bytes` of /proc/PID/io: what
/// reaches the disk, the SD card's wear, not what it passed to write()).
pub fn disk_written_bytes(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("write_bytes not in {path}"))
}

/// This process's soft limit on open files, if /proc says.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = memory(std::process::id()).expect("own status");
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
        assert!(cpu_seconds("self").expect("own stat") >= 0.0);
        assert!(disk_written_bytes("self").is_ok());
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
