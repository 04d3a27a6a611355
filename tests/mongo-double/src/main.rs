//! `mongo-double --port P [--bind 127.0.0.1] [--standalone] [--dbpath DIR] [--oplog-size N]`
//!
//! Prints `mongo-double listening on HOST:PORT` once ready; stops cleanly on SIGINT/SIGTERM.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use mongo_double::{Options, Server};

#[derive(Parser, Debug)]
#[command(name = "mongo-double", about = "MongoDB wire-protocol test double")]
struct Args {
    /// Port to listen on (0 picks a free port).
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Run as a standalone mongod instead of a single-node replica set.
    #[arg(long)]
    standalone: bool,
    /// Directory for data and change history (in memory when omitted).
    #[arg(long)]
    dbpath: Option<PathBuf>,
    /// Number of change events kept for change streams.
    #[arg(long, default_value_t = 100_000)]
    oplog_size: usize,
    /// Log every command to stderr.
    #[arg(long)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let opts = Options {
        bind: args.bind,
        port: args.port,
        standalone: args.standalone,
        dbpath: args.dbpath,
        oplog_size: args.oplog_size,
        verbose: args.verbose,
    };
    let mut server = match Server::start(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mongo-double: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("mongo-double listening on {}", server.addr());
    wait_for_signal().await;
    server.stop().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
