//! The HTTP endpoints on `[http] listen`: the status page `/` (HTML, see [`status_page`]),
//! `/health` and `/health/uplink` (JSON), and `/metrics` (Prometheus text format).
//!
//! `/health` answers 503 when the store cannot be written (the probe of [`crate::health`]).
//!
//! Bounded against clients that open connections and never finish (slowloris): at most
//! [`MAX_CONNECTIONS`] at once and [`MAX_PER_PEER`] from one address (more are closed at
//! once, so a slow client holds no place in a queue before a monitoring scrape), a
//! request's headers within [`HEADER_TIMEOUT`] (which also closes an idle keep-alive
//! connection), and [`CONNECTION_LIFETIME`] at most per connection; accept errors (out of
//! file descriptors) back off instead of spinning.
//!
//! [`status_page`]: crate::status_page

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::health::{Health, HealthState};
use crate::reports::UplinkReport;
use crate::status::{BridgeStatus, UplinkStatus};
use crate::status_page::{self, OutboxView, StatusBoard, StatusView};

/// HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// HTTP connections from one address at once.
pub const MAX_PER_PEER: usize = 8;
/// Time a client has to send a request's headers, and to start the next one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one HTTP connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The router's state: what the handlers read, and the status page's token.
#[derive(Clone)]
struct AppState {
    health: HealthState,
    /// What the status page remembers of each heater (fed by the broker hook).
    board: StatusBoard,
    /// Required for `/` when set (`[http] token`).
    token: Option<Arc<str>>,
}

impl AppState {
    /// What the status page shows for the search `query`; `token` as given in the URL.
    async fn status_view(&self, query: String, token: Option<String>) -> StatusView {
        let health = self.health.summary().await;
        let now_ms = status_page::history::now_ms();
        let (heaters, matching) = status_page::heaters(
            &self.health.store,
            &self.health.metrics,
            &self.board,
            &query,
            now_ms,
        );
        let outbox = self.health.uplink.as_ref().map(|(_, outbox)| {
            let stats = outbox.stats();
            OutboxView {
                items: stats.items + stats.shadows,
                oldest_age_secs: stats.oldest_age_secs,
            }
        });
        StatusView {
            gateway_id: self.health.gateway_id.clone(),
            version: health.version,
            uptime_secs: health.uptime_secs,
            store_problem: health.reason,
            uplink_mode: health.uplink.as_str(),
            outbox,
            bridge: health.bridge,
            lease: health.lease,
            connected_clients: usize::try_from(health.connected_clients).unwrap_or(0),
            query,
            token,
            heaters,
            matching,
            shadows_total: health.shadows,
            rejections: self.health.metrics.recent_rejections(),
            now_ms,
        }
    }
}

/// Binds the listener now (a port in use is a startup error) and serves in the background.
/// `board` feeds the status page; `token`: when set, the status page needs it (`?token=`
/// or `Authorization: Bearer`).
pub async fn serve(
    listen: &str,
    state: HealthState,
    board: StatusBoard,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(status))
        .route("/health", get(health))
        .route("/health/uplink", get(uplink))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            health: state,
            board,
            token: token.map(Arc::from),
        });
    tokio::spawn(serve_connections(listener, app));
    Ok(addr)
}

/// Open connections, in all and per address.
#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A place among the open connections, given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, peer: IpAddr) -> Option<Slot> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        let from_peer = counts.by_peer.get(&peer).copied().unwrap_or(0);
        if counts.total >= MAX_CONNECTIONS || from_peer >= MAX_PER_PEER {
            return None;
        }
        counts.total += 1;
        counts.by_peer.insert(peer, from_peer + 1);
        Some(Slot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.by_peer.remove(&self.peer);
            }
        }
    }
}

/// The accept loop, with the bounds of the module doc.
async fn serve_connections(listener: tokio::net::TcpListener, app: Router) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut accept_errors: u32 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                accept_errors = 0;
                accepted
            }
            Err(e) => {
                if accept_errors == 0 {
                    tracing::warn!(error = %e, "HTTP: cannot accept connections (backing off)");
                }
                accept_errors = accept_errors.saturating_add(1);
                let backoff = Duration::from_millis(10 << accept_errors.min(7));
                tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        // Over a bound: closed at once (dropped).
        let Some(slot) = Slot::take(&open, peer.ip()) else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Errors are the client's (reset, timeout, garbage): nothing to log.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    token: Option<String>,
    /// The status page's search by device id.
    q: Option<String>,
}

async fn status(
    State(app): State<AppState>,
    Query(query): Query<StatusQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(expected) = &app.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = query.token.as_deref().or(bearer);
        if !given.is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a token is required: /?token=… or Authorization: Bearer …\n",
            )
                .into_response();
        }
    }
    let token = app.token.is_some().then_some(query.token).flatten();
    let view = app
        .status_view(status_page::clean_query(query.q.as_deref()), token)
        .await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(status_page::render(&view)),
    )
        .into_response()
}

/// Compares without an early exit, so the token cannot be guessed byte by byte by timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(app): State<AppState>) -> (StatusCode, Json<Health>) {
    let health = app.health.summary().await;
    let code = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let state = app.health;
    // The probe of /health, system/status and the watchdog: a scrape adds no SD card write.
    if let Some(writable) = state.probe.last_writable().await {
        state.metrics.store_probed(writable);
    }
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

async fn uplink(State(app): State<AppState>) -> Json<UplinkReport> {
    Json(match &app.health.uplink {
        Some((status, outbox)) => UplinkReport {
            outbox: outbox.stats(),
            ..status.report()
        },
        None => UplinkStatus::default().report(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
