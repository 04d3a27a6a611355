//! # iotsphere-gateway
//!
//! The edge gateway for a building full of connected water heaters: devices speak MQTT to
//! a broker embedded in the gateway; the gateway keeps a **shadow** per device (reported
//! state, desired state, and the delta between them) and answers on the device's topics.
//!
//! ## Layout
//!
//! The path of a message, in the order it travels:
//!
//! - [`config`] — the TOML file and `IOTSPHERE__…` overrides, checked with line numbers.
//! - [`auth`] — credentials (argon2), identities and the per-device topic ACL; passwords
//!   are checked by the bounded [`verifier`], after the [`login_backoff`] of the address;
//!   [`audit`] keeps the audit log small whatever clients send.
//! - [`certs`] — TLS certificate checks and the lab's `certs dev`.
//! - [`broker`] — the embedded rumqttd broker with bounded memory, and the gateway's
//!   internal link into it ([`broker::link`] drains that link in batches).
//! - [`topics`] — parses and formats the `ROOT/devices/{id}/…` topic tree.
//! - [`codec`] — JSON / CBOR payloads, detected per message, and the reply envelope.
//! - [`shadow`] — the pure shadow engine: merge, versions, metadata, delta, and the
//!   desired lifecycle (refusal, expiry, local change wins). No I/O.
//! - [`ingest`] — telemetry and command answers into the outbox, inside the broker,
//!   before they are acknowledged.
//! - [`service`] — one request → engine → store → the replies to publish; [`expiries`]
//!   is its one timer for desired leaves that expire.
//! - [`store`] — the local sled store, the source of truth without an uplink.
//! - [`telemetry`] — decoding device readings for the cloud.
//! - [`outbox`] — everything bound for the cloud, durable in sled until MongoDB has it.
//! - [`uplink`] — MongoDB: shadows mirrored, telemetry stored, commands dispatched, and
//!   cloud changes of `desired` watched (change stream or polling).
//! - [`alerts`] — alert rules judged on readings, reported state and presence; published
//!   and stored, and sent to the owners of the device ([`users`]).
//! - [`bridge`] — the optional upstream MQTT broker (rumqttc): `forward` topics sent up
//!   through their own outbox, `subscribe` topics applied locally.
//! - [`http`] — `/health`, `/health/uplink`, `/metrics` and the [`status_page`] at `/`;
//!   [`metrics`] the Prometheus counters.
//! - [`system`] — `system/status`, `system/metrics`, `devices/batch/status` ([`batch`]) and
//!   systemd's watchdog ([`systemd`]).
//! - [`reload`] — SIGHUP: what can change live is applied, the rest reported.
//! - [`gateway`] — wires the above and handles shutdown; [`logging`] sets up `tracing`.
//!
//! - [`admin`] — offline commands on the data directory (`outbox stats|list|replay|purge`).
//!
//! `main.rs` only parses the command line and calls into these modules.

pub mod admin;
pub mod alert_event;
pub mod alert_rule;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod batch;
pub mod bridge;
pub mod broker;
pub mod certs;
pub mod cloud;
pub mod codec;
pub mod config;
pub mod expiries;
pub mod gateway;
pub mod http;
pub mod ingest;
pub mod lease;
pub mod logging;
pub mod login_backoff;
pub mod messages;
pub mod metrics;
pub mod outbox;
pub mod reload;
pub mod reports;
pub mod service;
pub mod shadow;
pub mod status_page;
pub mod store;
pub mod system;
pub mod systemd;
pub mod telemetry;
pub mod topics;
pub mod uplink;
pub mod users;
pub mod verifier;
