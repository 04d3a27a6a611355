//! The run's output: one JSON line with every number on stdout, a summary on stderr.

use serde::Serialize;
use serde_json::Value;

/// What a scenario measured.
pub struct Outcome {
    /// The scenario's parameters, as run.
    pub params: Value,
    pub results: Value,
    /// Human-readable lines for stderr.
    pub summary: String,
    /// The hard deadline cut the run short: `results` are partial.
    pub deadline_hit: bool,
    pub errors: Errors,
}

/// Counts errors and keeps the first few messages.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    const KEPT: usize = 5;

    pub fn push(&mut self, error: impl std::fmt::Display) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            self.first.push(error.to_string());
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for e in other.first {
            if self.first.len() < Self::KEPT {
                self.first.push(e);
            }
        }
    }
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub scenario: &'a str,
    pub broker: &'a str,
    pub tag: &'a str,
    pub round: u32,
    /// The command line of this run.
    pub command: String,
    pub address: String,
    pub unix_time: u64,
    pub elapsed_s: f64,
    pub deadline_hit: bool,
    pub loadgen_threads: usize,
    /// CPU seconds used during the run by the load generator and (with --pid) the broker.
    pub cpu_loadgen_s: f64,
    pub cpu_broker_s: Option<f64>,
    /// Bytes the broker wrote to storage during the run (with --pid).
    pub disk_written_broker_bytes: Option<u64>,
    pub params: &'a Value,
    pub results: &'a Value,
    pub errors: &'a Errors,
}

impl Report<'_> {
    /// Prints the JSON line (stdout) and the summary (stderr).
    pub fn emit(&self, summary: &str) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(self)?);
        eprintln!(
            "[{} vs {}] {:.1} s{}, CPU loadgen {:.2} s{}",
            self.scenario,
            self.broker,
            self.elapsed_s,
            if self.deadline_hit {
                " (DEADLINE HIT: partial)"
            } else {
                ""
            },
            self.cpu_loadgen_s,
            self.cpu_broker_s
                .map(|s| format!(", broker {s:.2} s"))
                .unwrap_or_default()
        );
        for line in summary.lines() {
            eprintln!("  {line}");
        }
        if self.errors.count > 0 {
            eprintln!(
                "  errors: {} (first: {:?})",
                self.errors.count, self.errors.first
            );
        }
        Ok(())
    }
}
