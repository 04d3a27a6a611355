//! # iotsphere-gateway
//!
//! The edge gateway for a building full of connected water heaters: devices speak MQTT to
//! a broker embedded in the gateway; the gateway keeps a **shadow** per device (reported
//! state, desired state, and the delta between them) and answers on the device's topics.
//!
//! ## Layout
//!
//! Layers, lowest first. A module imports only from its own layer or a lower one, and the
//! features do not import each other: they meet through the shared types, channels and
//! traits below them (`tests/layering.rs` checks every `crate::` path against this list).
//! The design and its contracts: `docs/DESIGN.md`.
//!
//! **Shared data** (serde, no I/O):
//! - [`messages`] — every publication of the gateway and its envelope; what each one adds
//!   to the counters once it is published ([`messages::Count`]).
//! - [`cloud`] — what goes to the cloud ([`cloud::ToCloud`]) and comes from it.
//! - [`alert_event`], [`alert_rule`] — severities, alert events, `[[alerts]]` rules, and
//!   [`alert_event::ReleaseListener`] (what the shadow service tells the alerts).
//! - [`lease`] — this gateway's role in its pair; [`reports`] — what the uplink, the bridge
//!   and the outbox report about themselves.
//! - [`topics`] — the `ROOT/devices/{id}/…` tree; [`codec`] — JSON / CBOR, detected per
//!   message; [`shadow`] — the pure shadow engine (with the desired lifecycle: refusal,
//!   expiry, local change wins); [`telemetry`] — device readings;
//!   [`users`] — users and the devices they own; [`backoff`] — retry delays.
//!
//! **Configuration**: [`config`] (the TOML file and `IOTSPHERE__…` overrides, checked with
//! line numbers), [`certs`] (TLS checks, `certs dev`), [`logging`].
//!
//! **Infrastructure**: [`store`] (sled, the source of truth without an uplink),
//! [`outbox`] (everything bound for the cloud, durable until it is delivered), [`metrics`]
//! (Prometheus counters), [`auth`] (credentials, identities, the per-device ACL; passwords
//! checked by the bounded [`verifier`] after the [`login_backoff`] of the address;
//! [`audit`] keeps the audit log small), [`batch`] (`devices/batch/status`), [`systemd`],
//! [`health`] (the store probe and the summary of `/health` and `system/status`),
//! [`status`] (the live status handles the uplink and the bridge fill).
//!
//! **Broker**: [`broker`] — the embedded rumqttd broker with bounded memory, the only module
//! that names rumqttd; its hook parses each PUBLISH once for the ACL and the
//! [`broker::tap::Tap`]s, and flushes sled once per router iteration.
//!
//! **Features**:
//! - [`service`] — one request → engine → store → the replies to publish;
//!   [`service::link_loop`] drains the broker link in batches (one fsync per batch) and
//!   wakes for the next desired expiry.
//! - [`ingest`] — telemetry and command answers into the outbox, inside the broker,
//!   before they are acknowledged (a tap).
//! - [`uplink`] — MongoDB: shadows mirrored, telemetry stored, commands dispatched, cloud
//!   changes of `desired` watched (change stream or polling), the active/standby lease.
//! - [`bridge`] — the optional upstream MQTT broker (rumqttc).
//! - [`alerts`] — alert rules judged on readings, reported state and presence.
//! - [`http`] — `/health`, `/health/uplink`, `/metrics` and the [`status_page`] at `/`.
//! - [`system`] — `system/status`, `system/metrics`, `devices/batch/status`, the watchdog.
//! - [`reload`] — SIGHUP: what can change live is applied, the rest reported.
//!
//! **Wiring**: [`gateway`] — `run` as build → start → wait → stop; [`admin`] — offline
//! commands on the data directory (`outbox stats|list|replay|purge`).
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
pub mod gateway;
pub mod health;
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
pub mod status;
pub mod status_page;
pub mod store;
pub mod system;
pub mod systemd;
pub mod telemetry;
pub mod topics;
pub mod uplink;
pub mod users;
pub mod verifier;
