//! The HTTP endpoints on `[http] listen`: `/health` and `/health/uplink` (JSON), and
//! `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::bridge::{BridgeReport, BridgeStatus};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::store::ShadowStore;
use crate::uplink::{UplinkMode, UplinkReport, UplinkStatus};

/// What the handlers read.
#[derive(Clone)]
pub struct HealthState {
    pub store: ShadowStore,
    /// `None` when no uplink is configured.
    pub uplink: Option<(UplinkStatus, Outbox)>,
    /// `None` when no bridge is configured.
    pub bridge: Option<BridgeStatus>,
    pub metrics: Metrics,
    pub started: Instant,
}

/// The gateway's summary: `/health`, and the retained `system/status` message.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    status: &'static str,
    broker: &'static str,
    uplink: UplinkMode,
    shadows: usize,
    connected_clients: i64,
    outbox_items: usize,
    /// The upstream MQTT bridge; absent when none is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<BridgeReport>,
    version: &'static str,
    uptime_secs: u64,
}

impl HealthState {
    pub fn summary(&self) -> Health {
        let (uplink, outbox_items) = match &self.uplink {
            Some((status, outbox)) => {
                let stats = outbox.stats();
                (status.report().mode, stats.items + stats.shadows)
            }
            None => (UplinkMode::Offline, 0),
        };
        Health {
            status: "ok",
            broker: "up",
            uplink,
            shadows: self.store.len(),
            connected_clients: self.metrics.connected_clients(),
            outbox_items,
            bridge: self.bridge.as_ref().map(BridgeStatus::report),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

/// Binds the listener now (a port in use is a startup error) and serves in the background.
pub async fn serve(listen: &str, state: HealthState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/health/uplink", get(uplink))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(addr)
}

async fn health(State(state): State<HealthState>) -> (StatusCode, Json<Health>) {
    (StatusCode::OK, Json(state.summary()))
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    let (report, outbox) = match &state.uplink {
        Some((status, outbox)) => (Some(status.report()), Some(outbox.stats())),
        None => (None, None),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(
            report.as_ref(),
            outbox.as_ref(),
            state.bridge.as_ref().map(BridgeStatus::report).as_ref(),
        ),
    )
}

async fn uplink(State(state): State<HealthState>) -> Json<UplinkReport> {
    Json(match &state.uplink {
        Some((status, outbox)) => UplinkReport {
            outbox: outbox.stats(),
            ..status.report()
        },
        None => UplinkStatus::default().report(),
    })
}
