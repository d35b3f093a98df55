//! The TLS listener of the admin API (and the MTA-STS policy host): handshakes run concurrently,
//! each with a deadline; sources outside the allow list or banned are dropped before TLS.

use std::net::SocketAddr;
use std::time::Duration;

use postern_types::Cidr;

/// TLS connections handed to axum by a background accept task: handshakes run concurrently
/// (each with a 10 s limit), so a client that never finishes one delays nobody.
pub struct TlsListener {
    pub(super) rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    pub(super) local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` in a background task (aborted through the returned handle). An empty
    /// `allow` admits every source that is not banned.
    pub fn start(
        tcp: tokio::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        allow: Vec<Cidr>,
        guard: std::sync::Arc<postern_auth::guard::Guard>,
    ) -> (TlsListener, tokio::task::JoinHandle<()>) {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let ip = peer.ip();
                if (!allow.is_empty() && !allow.iter().any(|c| c.contains(ip)))
                    || guard.is_banned(ip)
                {
                    continue; // dropped before TLS
                }
                let Ok(permit) = inflight.clone().try_acquire_owned() else {
                    continue;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(sock)).await
                    {
                        let _ = tx.send((s, peer)).await;
                    }
                });
            }
        });
        (TlsListener { rx, local }, accept)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): wait for axum's own shutdown.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
