//! Networking shared by every protocol: TLS (rustls), the plain/TLS stream, connection caps, and the
//! accept loop with graceful shutdown (stop accepting on cancel; tasks are tracked so the binary can
//! wait for sessions in flight to drain).
#![forbid(unsafe_code)]

pub mod limits;
pub mod proxy;
pub mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use limits::{ConnLimiter, ConnPermit, Refusal};
pub use stream::{MailStream, TlsInfo};
pub use tokio_rustls::TlsAcceptor;

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
