//! A MongoDB wire-protocol double for tests: a single-node replica set (`rs0`) or a standalone
//! server that the official drivers (the `mongodb` crate, pymongo) talk to as to a real
//! `mongod` 7.0 — CRUD, indexes, change streams with resume tokens, fail points, persistence.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mongo_double::Error> {
//! let mut srv = mongo_double::Server::start(mongo_double::Options::default()).await?;
//! let uri = srv.uri(); // mongodb://127.0.0.1:PORT/?directConnection=true
//! # let _ = uri;
//! srv.restart().await?; // same port, same dbpath
//! srv.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! See `FIDELITY.md` for what is implemented and how it was checked against MongoDB.

mod changestream;
mod commands;
mod cursor;
mod error;
mod failpoint;
mod query;
mod server;
mod state;
mod storage;
mod update;
mod wire;

pub use server::{Error, Options, Server};
