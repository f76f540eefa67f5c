//! `idlink run`: the linking service on Kafka.

pub mod config;
mod http;
mod kafka;
mod outbox;
mod ownership;
mod partitioned;
mod pipeline;
mod purge;
mod snapshots;
pub mod telemetry;

use crate::settings::Settings;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub use config::ServiceConfig;

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(settings: Settings, cfg: ServiceConfig) -> Result<()> {
    let telemetry = Arc::new(telemetry::Telemetry::new());
    let (shutdown_tx, _) = broadcast::channel::<()>(4);
    let (addr, http_task) =
        http::serve(&cfg.http.addr, telemetry.clone(), shutdown_tx.subscribe()).await?;
    tracing::info!(%addr, "metrics and health listening");
    let deadline = Duration::from_secs(cfg.service.shutdown_deadline_seconds);
    let signals = {
        let tx = shutdown_tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            let _ = tx.send(());
        })
    };
    let stop = shutdown_tx.subscribe();
    let service = async move {
        // Each loop ends however it ends (stopped or failed) with a bounded
        // leave of the group: dropping it unbounded could hold the process.
        if cfg.service.partitioned {
            let mut p = partitioned::Partitioned::start(&settings, cfg, telemetry).await?;
            let result = p.run(stop).await;
            kafka::leave_group(p, kafka::LEAVE_LIMIT).await;
            result
        } else {
            let mut p = pipeline::Pipeline::start(&settings, cfg, telemetry).await?;
            let result = p.run(stop).await;
            kafka::leave_group(p, kafka::LEAVE_LIMIT).await;
            result
        }
    };
    // A task of its own, so that the deadline fires even while the loop is
    // inside a blocking Kafka call. It counts from the signal; the loop
    // itself is unbounded.
    let mut service = tokio::spawn(service);
    let mut rx = shutdown_tx.subscribe();
    let result = tokio::select! {
        r = &mut service => r.unwrap_or_else(|e| Err(anyhow::anyhow!("the service task failed: {e}"))),
        _ = async { let _ = rx.recv().await; tokio::time::sleep(deadline).await } => {
            service.abort();
            Err(anyhow::anyhow!("shutdown did not finish within {} s", deadline.as_secs()))
        }
    };
    let _ = shutdown_tx.send(());
    signals.abort();
    let _ = http_task.await;
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
