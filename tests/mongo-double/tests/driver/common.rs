//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::time::Duration;

use mongo_double::{Options, Server};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::Client;

/// A server on a free port with a small history.
pub async fn start() -> Server {
    start_with(Options {
        oplog_size: 10_000,
        ..Default::default()
    })
    .await
}

pub async fn start_with(opts: Options) -> Server {
    Server::start(opts).await.expect("start mongo-double")
}

/// A client with short timeouts.
pub async fn client_for(uri: &str) -> Client {
    let mut opts = ClientOptions::parse(uri).await.expect("parse uri");
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    opts.connect_timeout = Some(Duration::from_secs(2));
    // Awaitable hellos are answered after this long; state-change errors (e.g. code 91) make
    // the driver wait for the next one before reselecting the server, as with a real mongod.
    opts.heartbeat_freq = Some(Duration::from_millis(500));
    opts.app_name = Some("driver-tests".into());
    Client::with_options(opts).expect("client")
}

pub async fn client(srv: &Server) -> Client {
    client_for(&srv.uri()).await
}

/// The server error code inside a driver error.
pub fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|v| v.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// The server's error message inside a driver error.
pub fn message_of(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => w.message.clone(),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|v| v.first())
            .map(|w| w.message.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "mongo-double-{tag}-{}-{}",
            std::process::id(),
            bson::oid::ObjectId::new()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
