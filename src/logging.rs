//! Logs through `tracing`: pretty for a terminal, JSON lines for journald.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// rumqttd logs every ordinary disconnect at `error` level; on a site with a thousand
/// heaters that is noise (and SD-card writes). Its logs are off unless the filter names it.
const QUIET_BROKER: &str = "rumqttd=off";

/// Installs the process-wide subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(log: &LogSection) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| log.level.clone());
    let directives = if directives.contains("rumqttd") {
        directives
    } else {
        format!("{directives},{QUIET_BROKER}")
    };
    let filter = EnvFilter::builder()
        .parse(&directives)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a log file or journald.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
