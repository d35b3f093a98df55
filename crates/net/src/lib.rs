//! Networking shared by every protocol: TLS (rustls), the plain/TLS stream, connection caps, and the
//! accept loop with graceful shutdown (stop accepting on cancel; tasks are tracked so the binary can
//! wait for sessions in flight to drain).
#![forbid(unsafe_code)]

pub mod conn;
pub mod limits;
pub mod proxy;
pub mod revoke;
pub mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::{Line, LineConn, ReadError};
pub use limits::{ConnLimiter, ConnPermit, Refusal};
pub use revoke::Revocations;
pub use stream::{ChannelBindings, MailStream, TlsInfo};

/// The TLS acceptor of the mail listeners: rustls's, plus the certificate store it serves from,
/// so that a session knows the `tls-server-end-point` channel binding of its connection.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    certs: Option<Arc<tls::CertStore>>,
}

impl TlsAcceptor {
    /// The rustls acceptor (for listeners that speak HTTP rather than mail).
    pub fn rustls(&self) -> &tokio_rustls::TlsAcceptor {
        &self.inner
    }
}

impl From<tokio_rustls::TlsAcceptor> for TlsAcceptor {
    fn from(inner: tokio_rustls::TlsAcceptor) -> Self {
        TlsAcceptor { inner, certs: None }
    }
}

/// Accepts connections until `shutdown` is cancelled, admitting each through `limiter` and running
/// `handler` for it on a tracked task. The handler also gets refused connections (with the reason)
/// so that it can say goodbye in its own protocol.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, Result<ConnPermit, Refusal>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let admission = limiter.admit(peer.ip());
                tracker.spawn(handler(tcp, peer, admission));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The start every protocol session shares: a connection over the caps gets `busy_line` (on
/// plain listeners; implicit-TLS clients would not understand it) and is closed; on implicit-TLS
/// listeners the handshake runs under `handshake` deadline. None if no session is to run.
pub async fn open_session(
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Result<ConnPermit, Refusal>,
    protocol: &'static str,
    implicit_tls: Option<(&TlsAcceptor, std::time::Duration)>,
    busy_line: &str,
) -> Option<(ConnPermit, MailStream)> {
    use tokio::io::AsyncWriteExt;
    let mut permit = match admission {
        Ok(p) => p,
        Err(r) => {
            tracing::warn!(event = "connection", protocol, ip = %peer.ip(), refused = ?r, "connection refused by connection caps");
            if implicit_tls.is_none() {
                let mut tcp = tcp;
                let bye = async {
                    let _ = tcp.write_all(format!("{busy_line}\r\n").as_bytes()).await;
                    let _ = tcp.shutdown().await;
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), bye).await;
            }
            return None;
        }
    };
    let stream = match implicit_tls {
        None => MailStream::Plain(tcp),
        Some((acceptor, deadline)) => {
            match tokio::time::timeout(deadline, MailStream::accept_tls(tcp, acceptor)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(event = "connection", protocol, ip = %peer.ip(), error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::info!(event = "connection", protocol, ip = %peer.ip(), "TLS handshake timed out");
                    return None;
                }
            }
        }
    };
    permit.count_as(protocol);
    Some((permit, stream))
}
