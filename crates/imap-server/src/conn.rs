//! Framing of client input: command lines and literals, with caps and deadlines, on top of the
//! shared line-protocol connection ([`postern_net::LineConn`]: buffering, flushing, the STARTTLS
//! upgrade that drops clear text, lingering close).
//!
//! `imap-codec`'s `Fragmentizer` splits the byte stream into lines and literals and keeps at most
//! `max_message` bytes of one command; on top of it this module enforces a cap on the line part
//! (`max_line`), decides per literal whether to send the `+` continuation (synchronizing literal
//! within its cap) or to refuse it, and applies the read deadline.

use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::core::LiteralMode;
use postern_net::{LineConn, MailStream};

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
    io: LineConn,
    frag: Fragmentizer,
    max_line: usize,
    max_literal: usize,
    max_append: usize,
    line_start: usize,
    in_literal: bool,
}

/// Reads while waiting for a command are small (10,000 idle sessions must stay cheap); a literal
/// streams in larger ones.
const WAIT_CHUNK: usize = 1024;
const LITERAL_CHUNK: usize = 16384;

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
            io: LineConn::new(stream, WAIT_CHUNK),
            frag: Fragmentizer::new((max_append + max_line) as u32),
            max_line,
            max_literal: max_line,
            max_append,
            line_start: 0,
            in_literal: false,
        }
    }

    /// Forgets everything buffered (after STARTTLS: plaintext sent before the handshake must not
    /// be read as if it came over TLS).
    pub fn reset_input(&mut self) {
        self.frag = Fragmentizer::new((self.max_append + self.max_line) as u32);
        self.line_start = 0;
        self.in_literal = false;
    }

    pub fn tls_info(&self) -> Option<postern_net::TlsInfo> {
        self.io.tls_info()
    }

    pub fn channel_bindings(&self) -> Option<postern_net::ChannelBindings> {
        self.io.channel_bindings()
    }

    pub fn client_cert(&self) -> Option<postern_auth::ClientCertificate> {
        self.io.client_cert()
    }

    /// STARTTLS: flushes pending output, drops buffered plaintext input (anything a client
    /// pipelined after STARTTLS: the command-injection class of bugs, CVE-2011-0411 and kin), and
    /// runs the TLS handshake on the same TCP connection.
    pub async fn start_tls(
        &mut self,
        acceptor: &postern_net::TlsAcceptor,
        timeout: Duration,
    ) -> std::io::Result<()> {
        self.reset_input();
        self.io.start_tls(acceptor, timeout).await.map(|_| ())
    }

    pub fn out(&mut self) -> &mut Vec<u8> {
        self.io.out()
    }

    /// COMPRESS=DEFLATE from the next byte each way (see [`LineConn::start_compression`]).
    /// A client sends nothing after COMPRESS until its answer (RFC 4978 3: it cannot know
    /// whether to compress before); anything pipelined anyway is dropped, as after STARTTLS.
    pub async fn start_compression(&mut self) -> std::io::Result<()> {
        self.reset_input();
        self.io.start_compression().await
    }

    pub fn compressed(&self) -> bool {
        self.io.compressed()
    }

    pub fn line(&mut self, s: &str) {
        self.io.line(s);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush().await
    }

    /// After [`Conn::shutdown`]: see `MailStream::linger`.
    pub async fn linger(&mut self) {
        self.io.linger().await;
    }

    pub async fn shutdown(&mut self) {
        self.io.shutdown().await;
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
                            self.io
                                .out()
                                .extend_from_slice(b"+ Ready for literal data\r\n");
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
                    let chunk = if self.in_literal {
                        LITERAL_CHUNK
                    } else {
                        WAIT_CHUNK
                    };
                    self.io.set_chunk(chunk);
                    let deadline = tokio::time::Instant::now() + idle;
                    match self.io.fill(deadline).await {
                        Ok(_) => {}
                        Err(postern_net::ReadError::Timeout) => return Input::Timeout,
                        Err(_) => return Input::Closed,
                    }
                    self.frag.enqueue_bytes(&self.io.buf);
                    // all of it is in the Fragmentizer now: the session waits without a buffer
                    self.io.buf = Vec::new();
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
