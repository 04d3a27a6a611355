//! A minimal MQTT 3.1.1 client: just what the scenarios need, with batched writes and
//! no per-message allocation on the publish path (see README.md, "Why not rumqttc").

pub mod codec;
pub mod conn;

pub use codec::Incoming;
pub use conn::{ConnectOptions, Connection, Refused};
