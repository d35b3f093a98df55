//! [`MailStream`]: a TCP connection that is plain or TLS, upgradable in place by STARTTLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum MailStream {
    Plain(TcpStream),
    /// With the `tls-server-end-point` binding of the certificate served, when known.
    Tls(Box<TlsStream<TcpStream>>, Option<Arc<[u8]>>),
    /// An in-process pipe, for tests and fuzz targets that drive a whole session without a
    /// socket. `secure` says whether the session should treat it as encrypted (as after TLS);
    /// no listener ever makes one.
    Mem {
        io: Box<tokio::io::DuplexStream>,
        secure: bool,
    },
}

/// The channel bindings of a TLS connection, for SCRAM-SHA-256-PLUS: `tls-exporter` (RFC 9266,
/// TLS 1.3 only: on TLS 1.2 it is safe only with extended master secret, so it is not offered
/// there) and `tls-server-end-point` (RFC 5929).
#[derive(Clone, Default)]
pub struct ChannelBindings {
    pub exporter: Option<[u8; 32]>,
    pub end_point: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBindings")
            .field("exporter", &self.exporter.map(|_| "[REDACTED]"))
            .field("end_point", &self.end_point.is_some())
            .finish()
    }
}

/// What a session knows about its TLS layer.
#[derive(Debug, Clone, Copy)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
}

impl MailStream {
    /// After the final reply and a shutdown of our side, reads and discards what the client is
    /// still sending, for at most 2 s and 16 MiB. Closing a socket with unread input makes the
    /// kernel send a reset, which can destroy the final reply (421, BYE, -ERR) before the client
    /// reads it: a client pushing an endless line would never learn why it was cut off
    /// ("lingering close", as web servers do). The byte cap is what a client on a fast link
    /// sends while a loaded peer gets round to reading (1 MiB was gone in milliseconds on
    /// loopback and the reply lost under load); it costs no memory, the chunk is reused.
    pub async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        // On the heap, and only here: an array would sit in every session's future for its
        // whole life, lingering or not (16 KiB × 10,000 idle connections).
        let mut chunk = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while total < 16 * 1024 * 1024 {
            match tokio::time::timeout_at(deadline, self.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => return,
            }
        }
    }

    /// Waits until a read can make progress: input on the socket, or plaintext that rustls
    /// already holds (`wants_read` is false then). Lets a waiting session hold no read buffer
    /// until input comes (10,000 idle sessions × 1 KiB). May return early (a spurious
    /// readiness): the read that follows then simply waits.
    pub async fn input_ready(&self) -> io::Result<()> {
        match self {
            MailStream::Plain(tcp) => tcp.readable().await,
            MailStream::Tls(tls, _) => {
                let (tcp, conn) = tls.get_ref();
                if conn.wants_read() {
                    tcp.readable().await
                } else {
                    Ok(())
                }
            }
            MailStream::Mem { .. } => Ok(()),
        }
    }

    /// Runs a TLS handshake over a plain stream (implicit TLS, or after STARTTLS).
    pub async fn accept_tls(tcp: TcpStream, acceptor: &TlsAcceptor) -> io::Result<MailStream> {
        let tls = acceptor.inner.accept(tcp).await?;
        let end_point = acceptor.certs.as_ref().map(|c| c.end_point_binding());
        Ok(MailStream::Tls(Box::new(tls), end_point))
    }

    /// An in-process session stream (see [`MailStream::Mem`]).
    pub fn memory(io: tokio::io::DuplexStream, secure: bool) -> MailStream {
        MailStream::Mem {
            io: Box::new(io),
            secure,
        }
    }

    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            MailStream::Plain(_) => None,
            MailStream::Mem { secure: true, .. } => Some(TlsInfo {
                version: "memory",
                cipher: "none",
            }),
            MailStream::Mem { .. } => None,
            MailStream::Tls(s, _) => {
                let conn = s.get_ref().1;
                Some(TlsInfo {
                    version: crate::tls::version_name(conn.protocol_version()),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .and_then(|c| c.suite().as_str())
                        .unwrap_or("unknown"),
                })
            }
        }
    }

    /// The channel bindings of this connection (None without TLS).
    pub fn channel_bindings(&self) -> Option<ChannelBindings> {
        let MailStream::Tls(s, end_point) = self else {
            return None;
        };
        let conn = s.get_ref().1;
        let exporter = (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
            .then(|| {
                conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
            })
            .flatten();
        Some(ChannelBindings {
            exporter,
            end_point: end_point.clone(),
        })
    }

    /// The certificate the client presented in the handshake, if any (see
    /// [`crate::tls::ClientCert`]).
    pub fn client_cert(&self) -> Option<postern_types::ClientCertificate> {
        let MailStream::Tls(s, _) = self else {
            return None;
        };
        let der = s.get_ref().1.peer_certificates()?.first()?;
        crate::tls::ClientCert::read(der.as_ref())
    }

    /// The TCP stream under a plain connection (to upgrade it); None if already TLS.
    pub fn into_plain(self) -> Result<TcpStream, MailStream> {
        match self {
            MailStream::Plain(t) => Ok(t),
            other => Err(other),
        }
    }

    /// True if the peer sends anything within `wait` before it was greeted (RFC 5321 4.3.1,
    /// RFC 3501 7.1, RFC 1939 4: the server speaks first). The check is a deadline, not a single
    /// look: a zero-time peek races with a client that sends a millisecond after connecting, and
    /// greets it. Returns as soon as data arrives; a well-behaved client waits `wait` for its
    /// greeting. Only meaningful on a plain stream.
    pub async fn talks_before(&self, wait: std::time::Duration) -> bool {
        match self {
            MailStream::Plain(t) => {
                let mut b = [0u8; 1];
                let peek = t.peek(&mut b);
                if wait.is_zero() {
                    // Still one look: data already queued counts.
                    return matches!(
                        tokio::time::timeout(std::time::Duration::ZERO, peek).await,
                        Ok(Ok(n)) if n > 0
                    );
                }
                matches!(tokio::time::timeout(wait, peek).await, Ok(Ok(n)) if n > 0)
            }
            MailStream::Tls(..) | MailStream::Mem { .. } => false,
        }
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
