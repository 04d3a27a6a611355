//! Logs through `tracing`: pretty for a terminal, JSON lines for journald. The level
//! filter can be swapped while running (SIGHUP reload of `log.level`).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSection};

/// rumqttd logs every ordinary disconnect at `error` level; on a site with a thousand
/// heaters that is noise (and SD-card writes). Its logs are off unless the filter names it.
const QUIET_BROKER: &str = "rumqttd=off";

/// Changes the running filter.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    /// Applies `log.level` from a reloaded configuration. `RUST_LOG`, when set, still wins:
    /// then nothing changes and false is returned.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        if std::env::var_os("RUST_LOG").is_some() {
            return Ok(false);
        }
        let filter = filter(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

fn filter(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives = if directives.contains("rumqttd") {
        directives.to_string()
    } else {
        format!("{directives},{QUIET_BROKER}")
    };
    EnvFilter::builder().parse(directives)
}

/// Installs the process-wide subscriber. `RUST_LOG`, when set, overrides `log.level`.
/// `None` when a subscriber was already installed (tests): that one stays.
pub fn init(log: &LogSection) -> Option<LogLevel> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| log.level.clone());
    let filter = filter(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a log file or journald.
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match log.format {
        LogFormat::Pretty => registry.with(output).try_init(),
        LogFormat::Json => registry.with(output.json()).try_init(),
    };
    installed.ok().map(|()| LogLevel { handle })
}
