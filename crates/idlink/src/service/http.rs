//! The HTTP listener: `/metrics`, `/health/live`, `/health/ready`.

use super::telemetry::Telemetry;
use anyhow::{Context, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Binds the listener (so a busy port fails the start) and serves until
/// shutdown. Returns the bound address and the server task.
pub async fn serve(
    addr: &str,
    telemetry: Arc<Telemetry>,
    mut shutdown: broadcast::Receiver<()>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .with_state(telemetry);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.recv().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    Ok((bound, task))
}

async fn metrics(
    axum::extract::State(t): axum::extract::State<Arc<Telemetry>>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        t.render(),
    )
}

async fn ready(axum::extract::State(t): axum::extract::State<Arc<Telemetry>>) -> impl IntoResponse {
    if t.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
