//! Framing of client input: command lines and literals, with caps and deadlines.
//!
//! `imap-codec`'s `Fragmentizer` splits the byte stream into lines and literals and keeps at most
//! `max_message` bytes of one command; on top of it this module enforces a cap on the line part
//! (`max_line`), decides per literal whether to send the `+` continuation (synchronizing literal
//! within its cap) or to refuse it, and applies the read deadline.

use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::core::LiteralMode;
use postern_net::MailStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What reading the next client message produced.
pub enum Input {
    /// A complete message (command line with its literals), bytes owned.
    Message(Vec<u8>),
    /// A synchronizing literal above its cap was announced: the client has been told NO and the
    /// command is dropped (the tag is given for the reply).
    LiteralRefused {
        tag: Option<String>,
        append: bool,
    },
    /// A line longer than the cap, or a non-synchronizing literal above the cap: the stream can no
    /// longer be trusted to be in step; the session must say BYE.
    TooLong,
    Timeout,
    Closed,
}

pub struct Conn {
    stream: Option<MailStream>,
    frag: Fragmentizer,
    out: Vec<u8>,
    max_line: usize,
    max_literal: usize,
    max_append: usize,
    line_start: usize,
    in_literal: bool,
    /// Read buffer: small while waiting for a command (10,000 idle sessions must stay cheap),
    /// larger while a literal streams in.
    rbuf: Vec<u8>,
}

fn is_append(line: &[u8]) -> bool {
    // "<tag> APPEND ..." (also "UID" never precedes APPEND)
    let mut words = line.split(|&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

impl Conn {
    pub fn new(stream: MailStream, max_line: usize, max_append: usize) -> Conn {
        Conn {
            stream: Some(stream),
            frag: Fragmentizer::new((max_append + max_line) as u32),
            out: Vec::new(),
            max_line,
            max_literal: max_line,
            max_append,
            line_start: 0,
            in_literal: false,
            rbuf: Vec::new(),
        }
    }

    /// Forgets everything buffered (after STARTTLS: plaintext sent before the handshake must not
    /// be read as if it came over TLS).
    pub fn reset_input(&mut self) {
        self.frag = Fragmentizer::new((self.max_append + self.max_line) as u32);
        self.line_start = 0;
        self.in_literal = false;
    }

    fn stream(&mut self) -> std::io::Result<&mut MailStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "stream taken"))
    }

    pub fn tls_info(&self) -> Option<postern_net::TlsInfo> {
        self.stream.as_ref().and_then(|s| s.tls_info())
    }

    /// STARTTLS: flushes pending output, drops buffered plaintext input (anything a client
    /// pipelined after STARTTLS: the command-injection class of bugs, CVE-2011-0411 and kin), and
    /// runs the TLS handshake on the same TCP connection.
    pub async fn start_tls(
        &mut self,
        acceptor: &postern_net::TlsAcceptor,
        timeout: Duration,
    ) -> std::io::Result<()> {
        self.flush().await?;
        self.reset_input();
        let stream = self
            .stream
            .take()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "stream taken"))?;
        let tcp = stream
            .into_plain()
            .map_err(|_| std::io::Error::other("TLS is already active"))?;
        let tls = tokio::time::timeout(timeout, MailStream::accept_tls(tcp, acceptor))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        self.stream = Some(tls);
        Ok(())
    }

    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "stream taken",
            ));
        };
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 1 << 16 {
                self.out = Vec::new();
            }
        }
        stream.flush().await
    }

    /// After [`Conn::shutdown`]: see `MailStream::linger`.
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

    /// True if bytes of a further message are already buffered (used to refuse pipelining after
    /// STARTTLS).
    pub fn has_buffered_input(&self) -> bool {
        !self.frag.message_bytes().is_empty()
    }

    /// Reads the next complete message, sending continuation requests for accepted synchronizing
    /// literals. `idle` bounds the wait for each chunk of input.
    pub async fn read_message(&mut self, idle: Duration) -> Input {
        loop {
            match self.frag.progress() {
                Some(FragmentInfo::Line {
                    end, announcement, ..
                }) => {
                    self.in_literal = false;
                    if let Some(LiteralAnnouncement { mode, length }) = announcement {
                        let line = self.frag.message_bytes();
                        let append = is_append(line);
                        let cap = if append {
                            self.max_append
                        } else {
                            self.max_literal
                        };
                        if length as usize > cap {
                            if mode == LiteralMode::Sync {
                                let tag = self.frag.decode_tag().map(|t| t.inner().to_owned());
                                self.frag.skip_message();
                                self.line_start = 0;
                                return Input::LiteralRefused { tag, append };
                            }
                            return Input::TooLong;
                        }
                        if mode == LiteralMode::Sync {
                            self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                            if self.flush().await.is_err() {
                                return Input::Closed;
                            }
                        }
                        self.in_literal = true;
                        self.line_start = end;
                        continue;
                    }
                    if self.frag.is_message_complete() {
                        self.line_start = 0;
                        if self.frag.is_max_message_size_exceeded() {
                            return Input::TooLong;
                        }
                        return Input::Message(self.frag.message_bytes().to_vec());
                    }
                }
                Some(FragmentInfo::Literal { end, .. }) => {
                    self.in_literal = false;
                    self.line_start = end;
                }
                None => {
                    if !self.in_literal
                        && self
                            .frag
                            .message_bytes()
                            .len()
                            .saturating_sub(self.line_start)
                            > self.max_line
                    {
                        return Input::TooLong;
                    }
                    let want = if self.in_literal { 16384 } else { 1024 };
                    if self.rbuf.len() != want {
                        self.rbuf = vec![0; want];
                    }
                    let Some(stream) = self.stream.as_mut() else {
                        return Input::Closed;
                    };
                    let n = match tokio::time::timeout(idle, stream.read(&mut self.rbuf)).await {
                        Err(_) => return Input::Timeout,
                        Ok(Err(_)) | Ok(Ok(0)) => return Input::Closed,
                        Ok(Ok(n)) => n,
                    };
                    self.frag.enqueue_bytes(&self.rbuf[..n]);
                }
            }
        }
    }

    /// Reads one raw line (AUTHENTICATE responses, IDLE's DONE) without literal processing;
    /// at most `max` bytes.
    pub async fn read_line(&mut self, idle: Duration, max: usize) -> Input {
        match self.read_message(idle).await {
            Input::Message(m) if m.len() > max => Input::TooLong,
            other => other,
        }
    }
}
