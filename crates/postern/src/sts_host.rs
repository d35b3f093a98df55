//! The MTA-STS policy host (RFC 8461 3.3): `GET /.well-known/mta-sts.txt` over HTTPS answers the
//! policy of `[mta_sts]` as `text/plain` when the Host is `mta-sts.` one of our domains, 404
//! otherwise. Banned sources are dropped before TLS, like on the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use postern_store::Store;

use crate::api::TlsListener;

struct Host {
    store: Store,
    policy: String,
}

/// The `id` of the `_mta-sts` TXT record: it changes whenever the policy text does (RFC 8461 3.1).
pub fn policy_id(policy: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(policy.as_bytes())[..10])
}

pub async fn serve(
    cfg: &postern_config::Config,
    store: Store,
    guard: Arc<postern_auth::guard::Guard>,
    addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for MTA-STS: {e}"))?;
    let state = Arc::new(Host {
        store,
        policy: cfg.mta_sts.policy(&cfg.server.hostname),
    });
    let (listener, accept) = TlsListener::start(tcp, tls, Vec::new(), guard);
    let app = axum::Router::new()
        .route("/.well-known/mta-sts.txt", axum::routing::get(policy))
        .with_state(state);
    tracing::info!(address = %addr, "MTA-STS policy host listening (HTTPS)");
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        accept.abort();
        if let Err(e) = r {
            tracing::error!(error = %e, "MTA-STS policy host stopped");
        }
    }))
}

async fn policy(State(h): State<Arc<Host>>, headers: HeaderMap) -> axum::response::Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let ours = match host.strip_prefix("mta-sts.") {
        Some(d) => h.store.is_local_domain(d).await.unwrap_or(false),
        None => false,
    };
    if !ours {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        h.policy.clone(),
    )
        .into_response()
}
