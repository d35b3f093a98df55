//! `[metrics] listen`: `GET /metrics` over plain HTTP for a Prometheus on the same host or a
//! private network. Nothing else is served there; the admin listener serves the same metrics
//! over HTTPS to an authenticated caller.

use std::net::SocketAddr;

use axum::http::header;
use axum::routing::get;

pub async fn serve(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(header::CONTENT_TYPE, postern_metrics::CONTENT_TYPE)],
                postern_metrics::encode_text(),
            )
        }),
    );
    tracing::info!(address = %addr, "metrics listening (plain HTTP)");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(tcp, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}
