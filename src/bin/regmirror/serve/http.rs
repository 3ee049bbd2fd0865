//! The endpoints of `serve --listen` (axum): what a Kubernetes probe, a
//! Prometheus scrape and a person with curl ask.
//!
//! - `/healthz`: 200 while the process runs its loop (a liveness probe).
//! - `/readyz`: 200 once a run has ended and no image × tag × target pair
//!   of the last run failed; else 503 with what is wrong, one line each
//!   (a readiness probe, and a check for a person).
//! - `/metrics`: [`super::metrics`], OpenMetrics text.
//! - `/runs/latest`: the last run's `--json` report; 404 before the first.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// What Prometheus asks for and prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `address` (an error names it) and serves until `stop`.
pub async fn start(
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("listen on {address}: {error}"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/runs/latest", get(latest))
        .with_state(shared);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!("the HTTP endpoints stopped: {error}");
        }
    }))
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, text).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn latest(State(shared): State<Arc<Shared>>) -> Response {
    match shared.latest_report() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (StatusCode::NOT_FOUND, "no run has ended yet\n").into_response(),
    }
}
