//! [`MailStream`]: a TCP connection that is plain or TLS, upgradable in place by STARTTLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-process pipe, for tests and fuzz targets that drive a whole session without a
    /// socket. `secure` says whether the session should treat it as encrypted (as after TLS);
    /// no listener ever makes one.
    Mem {
        io: Box<tokio::io::DuplexStream>,
        secure: bool,
    },
}

/// What a session knows about its TLS layer.
#[derive(Debug, Clone, Copy)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
}

impl MailStream {
    /// After the final reply and a shutdown of our side, reads and discards what the client is
    /// still sending, for at most 2 s and 1 MiB. Closing a socket with unread input makes the
    /// kernel send a reset, which can destroy the final reply (421, BYE, -ERR) before the client
    /// reads it: a client pushing an endless line would never learn why it was cut off
    /// ("lingering close", as web servers do).
    pub async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        // On the heap, and only here: an array would sit in every session's future for its
        // whole life, lingering or not (16 KiB × 10,000 idle connections).
        let mut chunk = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while total < 1024 * 1024 {
            match tokio::time::timeout_at(deadline, self.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => return,
            }
        }
    }

    /// Runs a TLS handshake over a plain stream (implicit TLS, or after STARTTLS).
    pub async fn accept_tls(tcp: TcpStream, acceptor: &TlsAcceptor) -> io::Result<MailStream> {
        let tls = acceptor.accept(tcp).await?;
        Ok(MailStream::Tls(Box::new(tls)))
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
            MailStream::Tls(s) => {
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
            MailStream::Tls(_) | MailStream::Mem { .. } => false,
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
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MailStream::Mem { io, .. } => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
