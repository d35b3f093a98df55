//! [`LineConn`]: the one connection type of the line protocols (SMTP, IMAP, POP3). Buffered,
//! capped I/O: command lines with a length cap and a deadline, replies buffered and flushed only
//! when the client waits for them (pipelining), reads into the buffer's spare capacity, the
//! STARTTLS upgrade that discards clear text buffered before it, IMAP's COMPRESS=DEFLATE (input
//! inflated a chunk at a time into the same caps), lingering close and shutdown.
//!
//! Written once so that the defences in it exist once: an endless line is cut off instead of
//! being read until the deadline, and input pipelined behind STARTTLS (the CVE-2011-0411 class)
//! is never executed after the upgrade. IMAP frames literals on top of it (`imap-server/conn`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::{MailStream, TlsAcceptor};

#[derive(Debug)]
pub enum ReadError {
    Eof,
    Timeout,
    Io(io::Error),
}

pub enum Line {
    Ok(Vec<u8>),
    /// The line exceeded the cap; its bytes were discarded up to the next LF.
    TooLong,
    /// The line exceeded the cap and no LF came within [`SKIP_BUDGET`] more bytes: an endless
    /// line. The session closes rather than reading (and discarding) it until the deadline.
    Endless,
}

/// How much of an over-long line is read and dropped while looking for its end, so that a
/// slightly long command gets a 500 and the session goes on, but a client streaming bytes
/// without a line end is cut off at once instead of being read until the command deadline.
pub const SKIP_BUDGET: usize = 1024 * 1024;

fn stream_taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream taken")
}

/// COMPRESS=DEFLATE (RFC 4978): once on, every byte each way is raw DEFLATE (RFC 1951).
struct Deflate {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    /// Compressed input read and not inflated yet.
    pending: Vec<u8>,
    /// The last inflate filled its output: the inflater may hold more output without needing
    /// more input.
    full: bool,
}

pub struct LineConn {
    stream: Option<MailStream>,
    /// COMPRESS=DEFLATE, when the session turned it on.
    deflate: Option<Box<Deflate>>,
    /// Input read from the socket and not consumed yet.
    pub buf: Vec<u8>,
    out: Vec<u8>,
    /// How much room a read makes in `buf` (small for protocols whose sessions mostly wait:
    /// 10,000 idle sessions must stay cheap).
    chunk: usize,
}

impl LineConn {
    /// A connection that reads up to `chunk` bytes at a time.
    pub fn new(stream: MailStream, chunk: usize) -> Self {
        LineConn {
            stream: Some(stream),
            deflate: None,
            buf: Vec::new(),
            out: Vec::new(),
            chunk: chunk.max(512),
        }
    }

    /// Reads of `chunk` bytes from now on (IMAP grows it while a literal streams in).
    pub fn set_chunk(&mut self, chunk: usize) {
        self.chunk = chunk.max(512);
    }

    pub fn tls_info(&self) -> Option<crate::TlsInfo> {
        self.stream.as_ref().and_then(MailStream::tls_info)
    }

    pub fn channel_bindings(&self) -> Option<crate::ChannelBindings> {
        self.stream.as_ref().and_then(MailStream::channel_bindings)
    }

    pub fn client_cert(&self) -> Option<postern_types::ClientCertificate> {
        self.stream.as_ref().and_then(MailStream::client_cert)
    }

    /// Output queued and not flushed yet, to append raw bytes (literals, multi-line replies).
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    fn stream(&mut self) -> io::Result<&mut MailStream> {
        self.stream.as_mut().ok_or_else(stream_taken)
    }

    pub fn stream_ref(&self) -> Option<&MailStream> {
        self.stream.as_ref()
    }

    /// Queues a reply line (CRLF is added).
    pub fn line(&mut self, line: &str) {
        self.reply(line)
    }

    /// Queues a reply line (CRLF is added).
    pub fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Compression on from the next byte each way (IMAP COMPRESS DEFLATE, after its OK was
    /// flushed): what the client pipelined after the command is already compressed. The
    /// deflater's window and tables are about 300 KiB per session; the caller bounds how many
    /// sessions may have one.
    pub async fn start_compression(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.deflate = Some(Box::new(Deflate {
            inflate: flate2::Decompress::new(false),
            deflate: flate2::Compress::new(flate2::Compression::new(6), false),
            pending: std::mem::take(&mut self.buf),
            full: false,
        }));
        Ok(())
    }

    pub fn compressed(&self) -> bool {
        self.deflate.is_some()
    }

    /// `out` deflated with a sync flush, so the client can inflate all of it now.
    fn deflated(d: &mut Deflate, out: &[u8]) -> io::Result<Vec<u8>> {
        let mut z = Vec::with_capacity(out.len() / 2 + 64);
        let mut input = out;
        loop {
            if z.capacity() - z.len() < 1024 {
                z.reserve(z.capacity().max(4096));
            }
            let before = d.deflate.total_in();
            d.deflate
                .compress_vec(input, &mut z, flate2::FlushCompress::Sync)
                .map_err(io::Error::other)?;
            input = &input[(d.deflate.total_in() - before) as usize..];
            // done when all input is in and the flush left spare room (nothing more to emit)
            if input.is_empty() && z.capacity() > z.len() {
                return Ok(z);
            }
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.out);
        if let Some(d) = self.deflate.as_mut() {
            let z = Self::deflated(d, &out)?;
            out.clear();
            out = z;
        }
        let s = self.stream()?;
        s.write_all(&out).await?;
        s.flush().await?;
        // Keep a small buffer for the next replies; a large one (a FETCH of a big message) goes.
        if out.capacity() <= 1 << 16 {
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more input (flushing pending replies first, since the client may be waiting for
    /// them). Returns the number of bytes read.
    pub async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        self.flush().await.map_err(ReadError::Io)?;
        if self.deflate.is_some() {
            // boxed: its state would otherwise be part of every waiting session's future,
            // compressed or not
            return Box::pin(self.fill_inflated(deadline)).await;
        }
        // Straight into the buffer's spare capacity: a chunk array here would be part of every
        // session's future, and zeroed, while it waits (16 KiB resident per idle connection).
        // The room is taken only once input is there: a waiting session holds no buffer.
        let chunk = self.chunk;
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        let s = stream
            .as_mut()
            .ok_or_else(|| ReadError::Io(stream_taken()))?;
        let r = tokio::time::timeout_at(deadline, async {
            if buf.is_empty() {
                s.input_ready().await?;
            }
            buf.reserve(chunk);
            s.read_buf(buf).await
        })
        .await;
        // An idle session keeps no empty buffer (it was reserved for one read).
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        match r {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(0)) => Err(ReadError::Eof),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// [`LineConn::fill`] under COMPRESS: inflates at most one chunk of output at a time, so
    /// a small compressed input that inflates to gigabytes (a decompression bomb) meets the
    /// same line and literal caps as plain input, a chunk at a time, and is cut off by them.
    async fn fill_inflated(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        loop {
            let chunk = self.chunk;
            let Some(d) = self.deflate.as_mut() else {
                return Err(ReadError::Io(stream_taken()));
            };
            if !d.pending.is_empty() || d.full {
                // exactly `chunk` bytes of room: decompress_vec writes no further than capacity
                let mut out = Vec::with_capacity(chunk);
                let (in0, out0) = (d.inflate.total_in(), d.inflate.total_out());
                let status = d
                    .inflate
                    .decompress_vec(&d.pending, &mut out, flate2::FlushDecompress::None)
                    .map_err(|e| {
                        ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                    })?;
                let used = (d.inflate.total_in() - in0) as usize;
                let made = (d.inflate.total_out() - out0) as usize;
                d.pending.drain(..used);
                d.full = made == chunk;
                self.buf.extend_from_slice(&out);
                if made > 0 {
                    return Ok(made);
                }
                if status == flate2::Status::StreamEnd {
                    // the client ended its compressed stream: nothing more can come
                    return Err(ReadError::Eof);
                }
                if used > 0 {
                    continue;
                }
            }
            let mut raw = Vec::with_capacity(chunk);
            let s = self
                .stream
                .as_mut()
                .ok_or_else(|| ReadError::Io(stream_taken()))?;
            match tokio::time::timeout_at(deadline, s.read_buf(&mut raw)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(0)) => return Err(ReadError::Eof),
                Ok(Ok(_)) => {}
            }
            if let Some(d) = self.deflate.as_mut() {
                d.pending.extend_from_slice(&raw);
            }
        }
    }

    /// Reads one line (up to and including LF) of at most `max` bytes, all of it before `timeout`
    /// elapses (so a client trickling one byte at a time is cut off too).
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut skipped: Option<usize> = None;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if skipped.is_some() || line.len() > max {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Ok(line));
            }
            if self.buf.len() > max || skipped.is_some() {
                let n = skipped.unwrap_or(0) + self.buf.len();
                self.buf.clear();
                if n > SKIP_BUDGET.max(max) {
                    return Ok(Line::Endless);
                }
                skipped = Some(n);
            }
            self.fill(deadline).await?;
        }
    }

    /// Discards input that was pipelined behind STARTTLS (it arrived in clear text and must not be
    /// executed after the upgrade: the CVE-2011-0411 class), then runs the TLS handshake.
    pub async fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        timeout: Duration,
    ) -> io::Result<usize> {
        self.flush().await?;
        let discarded = self.buf.len();
        self.buf.clear();
        let stream = self
            .stream
            .take()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream taken"))?;
        let tcp = stream
            .into_plain()
            .map_err(|_| io::Error::other("TLS is already active"))?;
        let tls = tokio::time::timeout(timeout, MailStream::accept_tls(tcp, acceptor))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.stream = Some(tls);
        Ok(discarded)
    }

    /// After [`LineConn::shutdown`] of a session cut off while the client was still sending: reads
    /// and drops what keeps coming for a short while (at most 2 s and 16 MiB) before the socket is
    /// closed. Closing with unread input makes the kernel send a reset, which can destroy the
    /// final replies before the client reads them ("lingering close", as web servers do).
    pub async fn linger(&mut self) {
        if let Ok(s) = self.stream() {
            s.linger().await;
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        if let Ok(s) = self.stream() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
        }
    }
}
