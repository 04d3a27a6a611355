//! The TCP server: listener, per-connection loop, start / stop / restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commands::{self, is_hello, Outcome};
use crate::error::{code, CmdError};
use crate::state::{ConnInfo, Shared};
use crate::storage::Store;
use crate::wire::{self, Request};

/// How to run a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on (default `127.0.0.1`).
    pub bind: IpAddr,
    /// Port; 0 picks a free one. After [`Server::start`], [`Server::options`] holds the real one.
    pub port: u16,
    /// Behave as a standalone `mongod` (no replica set, no change streams).
    pub standalone: bool,
    /// Persist data and change history here; in memory when `None`.
    pub dbpath: Option<PathBuf>,
    /// How many change events the history keeps (the "oplog" size).
    pub oplog_size: usize,
    /// Log every command to stderr.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            standalone: false,
            dbpath: None,
            oplog_size: 100_000,
            verbose: false,
        }
    }
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open dbpath: {0}")]
    Storage(#[source] std::io::Error),
}

struct Running {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// A running (or stopped) MongoDB double.
pub struct Server {
    opts: Options,
    addr: SocketAddr,
    running: Option<Running>,
}

impl Server {
    /// Opens the store and starts listening.
    pub async fn start(opts: Options) -> Result<Server, Error> {
        let mut server = Server {
            addr: SocketAddr::new(opts.bind, opts.port),
            opts,
            running: None,
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> Result<(), Error> {
        let addr = SocketAddr::new(self.opts.bind, self.opts.port);
        let bind_err = |source| Error::Bind { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(addr).map_err(bind_err)?;
        let listener = socket.listen(1024).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        self.addr = local;
        self.opts.port = local.port();
        let opts = self.opts.clone();
        let store = tokio::task::spawn_blocking(move || {
            Store::open(opts.dbpath.as_deref(), opts.oplog_size)
        })
        .await
        .map_err(|e| Error::Storage(std::io::Error::other(e)))?
        .map_err(Error::Storage)?;
        let host_ip = if local.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local.ip()
        };
        let shared = Arc::new(Shared::new(
            self.opts.standalone,
            SocketAddr::new(host_ip, local.port()).to_string(),
            self.opts.verbose,
            store,
        ));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        self.running = Some(Running {
            shutdown: tx,
            task,
            shared,
        });
        Ok(())
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `mongodb://HOST:PORT/?directConnection=true`.
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.host())
    }

    /// `mongodb://HOST:PORT/?replicaSet=rs0` (replica-set discovery; the plain address in
    /// standalone mode).
    pub fn replica_set_uri(&self) -> String {
        if self.opts.standalone {
            format!("mongodb://{}/", self.host())
        } else {
            format!(
                "mongodb://{}/?replicaSet={}",
                self.host(),
                commands::SET_NAME
            )
        }
    }

    fn host(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.addr.ip()
        };
        SocketAddr::new(ip, self.addr.port()).to_string()
    }

    /// The options in effect (with the real port).
    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops listening, closes every connection and syncs the data files. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            let _ = r.task.await;
            let mut st = r.shared.state();
            let _ = st.store.close();
        }
    }

    /// Stops (if running) and starts again on the same port with the same options and dbpath.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await;
        self.launch().await
    }

    /// Stops the server for good.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            r.task.abort();
            let mut st = r.shared.state();
            let _ = st.store.close();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    conns.spawn(serve(stream, peer, shared.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Serves one connection until the peer closes it, sends something malformed, or a fail
/// point closes it.
async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    shared.open_connections.fetch_add(1, Ordering::Relaxed);
    let mut conn = ConnInfo {
        id: shared.next_connection_id(),
        peer: peer.to_string(),
        app_name: None,
    };
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let req = match wire::read_request(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                if shared.verbose {
                    eprintln!("mongo-double conn{}: closing: {e}", conn.id);
                }
                break;
            }
        };
        let (request_id, reply_legacy, more_to_come, outcome) = match req {
            Request::Msg {
                request_id,
                more_to_come,
                body,
            } => {
                let outcome = match body.get_str("$db") {
                    Ok(db) => {
                        let db = db.to_string();
                        commands::dispatch(&shared, &mut conn, &db, body).await
                    }
                    Err(_) => Outcome::Reply(
                        CmdError::new(
                            code::OP_MSG_MISSING_DB,
                            "OP_MSG requests require a $db argument",
                        )
                        .to_doc(),
                    ),
                };
                (request_id, false, more_to_come, outcome)
            }
            Request::Query {
                request_id,
                collection,
                query,
            } => {
                let db = match collection.strip_suffix(".$cmd") {
                    Some(db) => db.to_string(),
                    None => break,
                };
                let query = match query.get_document("$query") {
                    Ok(inner) => inner.clone(),
                    Err(_) => query,
                };
                let name = query.keys().next().cloned().unwrap_or_default();
                let outcome = if is_hello(&name) {
                    commands::dispatch(&shared, &mut conn, &db, query).await
                } else {
                    Outcome::Reply(CmdError::new(
                        code::UNSUPPORTED_OP_QUERY_COMMAND,
                        format!("Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"),
                    ).to_doc())
                };
                (request_id, true, false, outcome)
            }
        };
        let reply = match outcome {
            Outcome::Close => break,
            Outcome::Reply(_) if more_to_come => continue,
            Outcome::Reply(d) => d,
        };
        let id = wire::next_request_id();
        let bytes = if reply_legacy {
            wire::encode_op_reply(id, request_id, &reply)
        } else {
            wire::encode_op_msg(id, request_id, &reply)
        };
        let ok = match bytes {
            Ok(b) => wr.write_all(&b).await.is_ok(),
            Err(_) => false,
        };
        if !ok {
            break;
        }
    }
    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
}
