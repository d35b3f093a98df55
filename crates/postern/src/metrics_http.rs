//! `[metrics] listen`: plain HTTP for a Prometheus or a load balancer on the same host or a
//! private network: `GET /metrics` (Prometheus text) and `GET /health`, the node's health for a
//! load balancer's checks (HAProxy's `option httpchk GET /health`, see `contrib/haproxy/`).
//! Nothing else is served there; the admin listener serves the same metrics over HTTPS to an
//! authenticated caller.
//!
//! `/health` answers 200 when the database answers a read and a write transaction and the
//! message store's directory is there, within 2 seconds; else 503, so the balancer sends new
//! connections to the other nodes. It tells which part failed, never a path or an error text.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use postern_store::Store;

async fn health(store: Store, node: String) -> impl IntoResponse {
    let database = matches!(
        tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
        Ok(Ok(()))
    );
    let dir = store.blobs().dir().to_owned();
    let blobs = tokio::task::spawn_blocking(move || dir.is_dir())
        .await
        .unwrap_or(false);
    let ok = database && blobs;
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "failing" },
        "node": node,
        "database": if database { "ok" } else { "failing" },
        "message_store": if blobs { "ok" } else { "failing" },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
}

pub async fn serve(
    addr: SocketAddr,
    store: Store,
    node: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, postern_metrics::CONTENT_TYPE)],
                    postern_metrics::encode_text(),
                )
            }),
        )
        .route("/health", get(move || health(store.clone(), node.clone())));
    tracing::info!(address = %addr, "metrics and health listening (plain HTTP)");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(tcp, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    }))
}
