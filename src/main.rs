//! Command line of `iotsphere-gateway` (docs/DESIGN.md §3): parses arguments and wires modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;

use iotsphere_gateway::admin::{self, Queue};
use iotsphere_gateway::auth::Credentials;
use iotsphere_gateway::config::GatewayConfig;
use iotsphere_gateway::logging::LogLevel;
use iotsphere_gateway::{gateway, logging};

#[derive(Parser)]
#[command(
    name = "iotsphere-gateway",
    version,
    about = "Edge gateway for connected water heaters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0 when valid, 2 with one line per problem.
    CheckConfig {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Lab certificates (never for production: see certs/README.md).
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Manage the credentials file (argon2 hashes; the password is read from stdin).
    Credentials {
        #[command(subcommand)]
        action: CredentialsAction,
    },
    /// Inspect or act on the outbox (with the gateway stopped).
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
        #[arg(long, global = true, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The upstream bridge's queue instead of MongoDB's.
        #[arg(long, global = true)]
        bridge: bool,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// A throwaway CA, a server certificate (localhost, 127.0.0.1, ::1) and device certificates.
    Dev {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// A device certificate (CN = id) per --device.
        #[arg(long = "device")]
        devices: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CredentialsAction {
    /// Add a device id or service name, or change its password (one line from stdin).
    Add {
        #[arg(long)]
        file: PathBuf,
        name: String,
    },
    /// Remove a device id or service name.
    Remove {
        #[arg(long)]
        file: PathBuf,
        name: String,
    },
    /// List the names (never the hashes).
    List {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Counts, bytes, age of the oldest item (JSON).
    Stats,
    /// The waiting entries as JSON lines (shadows, items, dead letters).
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Write everything to MongoDB now, then exit.
    Replay,
    /// Delete what is waiting (all of it, or only the dead letters).
    Purge {
        #[arg(long)]
        dead_only: bool,
        /// Required: purging loses data.
        #[arg(long)]
        yes: bool,
    },
}

/// Exit code for a refused configuration (docs/DESIGN.md §3).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => match GatewayConfig::load(&config) {
            Ok(loaded) => match iotsphere_gateway::certs::check_tls_files(&loaded.mqtt) {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: TLS files: {e}", config.display());
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Certs {
            action: CertsAction::Dev { out, devices },
        } => match iotsphere_gateway::certs::generate_dev(&out, &devices) {
            Ok(files) => {
                for file in files {
                    println!("{}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Credentials { action } => match credentials(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Outbox {
            action,
            config,
            bridge,
        } => {
            let config = match GatewayConfig::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let queue = if bridge { Queue::Bridge } else { Queue::Uplink };
            match outbox(action, &config, queue) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config: path } => {
            let config = match GatewayConfig::load(&path) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("the gateway did not start: fix the configuration above");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let log = logging::init(&config.log);
            match run(config, path, log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn credentials(action: CredentialsAction) -> anyhow::Result<()> {
    match action {
        CredentialsAction::Add { file, name } => {
            if std::io::stdin().is_terminal() {
                eprint!("password for {name}: ");
            }
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let mut credentials = Credentials::load(&file)?;
            credentials.set(&name, password)?;
            credentials.save(&file)?;
            println!("{name}: stored (send SIGHUP to a running gateway to apply)");
        }
        CredentialsAction::Remove { file, name } => {
            let mut credentials = Credentials::load(&file)?;
            anyhow::ensure!(
                credentials.remove(&name),
                "{name} is not in {}",
                file.display()
            );
            credentials.save(&file)?;
            println!("{name}: removed (send SIGHUP to a running gateway to apply)");
        }
        CredentialsAction::List { file } => {
            for name in Credentials::load(&file)?.names() {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn outbox(action: OutboxAction, config: &GatewayConfig, queue: Queue) -> anyhow::Result<()> {
    match action {
        OutboxAction::Stats => {
            let stats = admin::open_outbox(config, queue)?.stats();
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        OutboxAction::List { limit } => {
            for entry in admin::open_outbox(config, queue)?.list(limit)? {
                println!("{entry}");
            }
        }
        OutboxAction::Replay => {
            anyhow::ensure!(queue == Queue::Uplink, admin::AdminError::NoBridgeReplay);
            logging::init(&config.log);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let left = runtime.block_on(admin::replay(config))?;
            println!("{}", serde_json::to_string_pretty(&left)?);
        }
        OutboxAction::Purge { dead_only, yes } => {
            anyhow::ensure!(
                yes,
                "purge deletes data bound for the cloud: add --yes to confirm"
            );
            let count = admin::open_outbox(config, queue)?.purge(dead_only)?;
            println!("purged {count} entries");
        }
    }
    Ok(())
}

fn run(config: GatewayConfig, path: PathBuf, log: Option<LogLevel>) -> anyhow::Result<()> {
    // Two workers: the uplink and HTTP; the broker and the shadow service have threads of
    // their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(gateway::run(config, path, log))?;
    Ok(())
}
