//! The TLS listener of the admin API: handshakes run concurrently, each with a deadline.

use std::net::SocketAddr;

/// TLS connections handed to axum by a background accept task: handshakes run concurrently
/// (each with a 10 s limit), so a client that never finishes one delays nobody.
pub struct TlsListener {
    pub(super) rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    pub(super) local: SocketAddr,
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
