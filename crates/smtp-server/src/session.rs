//! One SMTP session: the state machine from greeting to QUIT, with the policy of its listener.
//!
//! Policy, per RFC and per Postern's defaults:
//! - no AUTH before TLS on any listener (RFC 4954 4, RFC 8314); port 25 offers no AUTH at all;
//! - submission requires AUTH before MAIL, and the envelope sender and the From/Sender headers must
//!   be addresses the account owns (RFC 6409 8.1);
//! - port 25 accepts only existing local recipients of local domains (no open relay);
//! - every line has a length cap and every wait a deadline; errors and idle commands are counted and
//!   the session is closed past the limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_auth::sasl::{self, Credentials};
use postern_auth::{Answer, LoginAttempt, Principal, Wording};

/// SMTP's words for login outcomes (RFC 4954 6 reply codes; a refusal closes with 421).
const WORDING: Wording = Wording {
    failed: "535 5.7.8 Authentication credentials invalid",
    expired: "535 5.7.8 Password expired; change it, or use an app password",
    app_password_required: "535 5.7.8 Two-factor authentication is on: an app password is required",
    temporary: "454 4.7.0 Temporary authentication failure, try again later",
    refused: "Too many failed logins from your address; try again later",
};
use postern_config::Protocol;
use postern_net::{ConnPermit, MailStream, Refusal, TlsInfo};
use postern_types::EmailAddress;
use smtp_proto::{
    Request, AUTH_EXTERNAL, AUTH_LOGIN, AUTH_OAUTHBEARER, AUTH_PLAIN, AUTH_SCRAM_SHA_256,
    AUTH_SCRAM_SHA_256_PLUS, AUTH_XOAUTH2, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Line, ReadError};
use crate::data::{DataProblem, DataReader};
use crate::inbound::{Inbound, MailCheck, SenderChecks, Verdict};
use crate::{Delivery, GreyCheck, ListenerKind, SmtpServer};

/// RFC 4954 4: a SASL response line may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12_288;

/// Why a session ended, for its log line.
#[derive(Debug, Clone, Copy)]
enum Close {
    Quit,
    Eof,
    Timeout,
    TooManyErrors,
    TooManyCommands,
    TooManyAuthFailures,
    Shutdown,
    IoError,
    TlsFailed,
    EarlyTalker,
    EndlessInput,
    BlockListed,
}

enum Flow {
    Continue,
    Close(Close),
}

struct Recipient {
    address: String,
    local: Option<i64>,
}

struct Session {
    srv: Arc<SmtpServer>,
    kind: ListenerKind,
    peer: SocketAddr,
    id: String,
    conn: Conn,
    shutdown: CancellationToken,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    principal: Option<Principal>,
    mail_from: Option<String>,
    smtputf8: bool,
    /// MAIL FROM said BODY=BINARYMIME (RFC 3030 3): BDAT only, binary parts allowed.
    binarymime: bool,
    rcpts: Vec<Recipient>,
    /// RCPT commands in this transaction, repeats included: repeating one address must not
    /// buy unlimited look-ups.
    rcpt_commands: usize,
    errors: u32,
    idle_commands: u32,
    auth_failures: u32,
    accepted: u32,
    /// SPF and iprev of this transaction (port 25, checks on, untrusted client).
    sender_checks: Option<Box<SenderChecks>>,
    /// The BDAT chunks of this transaction so far (RFC 3030), or why it failed (the rest of
    /// its chunks are read and dropped until the last).
    bdat: Option<Result<Vec<u8>, &'static str>>,
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 8]>()).to_uppercase()
}

/// Runs one connection to completion. `admission` is the listener's verdict on the connection caps.
pub async fn handle_connection(
    srv: Arc<SmtpServer>,
    protocol: Protocol,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Result<ConnPermit, Refusal>,
    shutdown: CancellationToken,
) {
    let kind = ListenerKind { protocol };
    let tls_deadline = Duration::from_secs(srv.config.tls_handshake_timeout_secs);
    let busy = format!(
        "421 4.7.0 {} Too many connections, try again later",
        srv.hostname
    );
    let Some((_permit, stream)) = postern_net::open_session(
        tcp,
        peer,
        admission,
        protocol.name(),
        kind.implicit_tls().then_some((&srv.tls, tls_deadline)),
        &busy,
    )
    .await
    else {
        return;
    };
    serve_stream(srv, protocol, stream, peer, shutdown).await;
}

/// Runs one SMTP session on an admitted stream (TLS already up on implicit-TLS listeners). The
/// listener's accept path calls it; so do tests and fuzz targets, over an in-process stream.
pub async fn serve_stream(
    srv: Arc<SmtpServer>,
    protocol: Protocol,
    stream: MailStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let kind = ListenerKind { protocol };
    let started = Instant::now();
    let tls = stream.tls_info();
    let mut s = Session {
        srv,
        kind,
        peer,
        id: new_id(),
        conn: Conn::new(stream, crate::conn::READ_CHUNK),
        shutdown,
        helo: None,
        esmtp: false,
        tls,
        principal: None,
        mail_from: None,
        smtputf8: false,
        binarymime: false,
        rcpts: Vec::new(),
        rcpt_commands: 0,
        bdat: None,
        errors: 0,
        idle_commands: 0,
        auth_failures: 0,
        accepted: 0,
        sender_checks: None,
    };
    let close = s.run().await;
    s.conn.shutdown().await;
    if matches!(
        close,
        Close::EndlessInput | Close::TooManyErrors | Close::TooManyCommands | Close::EarlyTalker
    ) {
        s.conn.linger().await;
    }
    tracing::info!(
        event = "connection",
        session = %s.id,
        protocol = protocol.name(),
        ip = %peer.ip(),
        tls = s.tls.map_or("none", |t| t.version),
        user = s.principal.as_ref().map(|p| p.address.as_str()),
        messages = s.accepted,
        errors = s.errors,
        close = ?close,
        duration_ms = started.elapsed().as_millis() as u64,
        "session closed"
    );
}

impl Session {
    fn host(&self) -> &str {
        &self.srv.hostname
    }

    /// Endless input (a line without end, DATA far past the cap): the reply to what was sent,
    /// then 421 and the close, so the client is not read until a deadline.
    fn cut_off(&mut self, reply: &str, why: &str) -> Close {
        self.conn.reply(reply);
        let h = self.host().to_owned();
        self.conn
            .reply(&format!("421 4.7.0 {h} {why}, closing connection"));
        Close::EndlessInput
    }

    async fn run(&mut self) -> Close {
        // RFC 5321 4.3.1: the client waits for the greeting. One that talks first is a bot.
        let delay = Duration::from_millis(self.srv.config.greeting_delay_ms);
        let early = match self.conn.stream_ref() {
            Some(s) => s.talks_before(delay).await,
            None => {
                tokio::time::sleep(delay).await;
                false
            }
        };
        if early {
            let h = self.host().to_owned();
            self.conn.reply(&format!(
                "554 5.5.1 {h} Protocol error: client spoke before the greeting"
            ));
            return Close::EarlyTalker;
        }
        let h = self.host().to_owned();
        if let Some((zone, answer)) = self.block_listed().await {
            // RFC 5782 / RFC 5321 3.1: a 554 greeting; the client should QUIT.
            tracing::info!(event = "inbound_refused", session = %self.id, ip = %self.peer.ip(), zone, answer, "client listed by a DNS block list");
            self.conn.reply(&format!(
                "554 5.7.1 {h} Service refused: client [{}] is listed by {zone}",
                self.peer.ip()
            ));
            return Close::BlockListed;
        }
        self.conn.reply(&format!("220 {h} ESMTP Postern"));
        loop {
            if self.shutdown.is_cancelled() {
                self.conn
                    .reply(&format!("421 4.3.2 {h} Service shutting down"));
                return Close::Shutdown;
            }
            let timeout = if self.principal.is_some() || self.mail_from.is_some() {
                self.srv.config.command_timeout_secs
            } else {
                self.srv.config.idle_timeout_secs
            };
            let max = self.srv.config.max_line_length;
            let read = tokio::select! {
                r = self.conn.read_line(max, Duration::from_secs(timeout)) => r,
                _ = self.shutdown.cancelled(), if self.conn.buf.is_empty() => {
                    self.conn.reply(&format!("421 4.3.2 {h} Service shutting down"));
                    return Close::Shutdown;
                }
            };
            let line = match read {
                Ok(Line::Ok(l)) => l,
                Ok(Line::TooLong) => {
                    if let Flow::Close(c) = self.error("500 5.5.2 Line too long") {
                        return c;
                    }
                    continue;
                }
                Ok(Line::Endless) => {
                    return self.cut_off("500 5.5.2 Line too long", "Line without end");
                }
                Err(ReadError::Timeout) => {
                    self.conn
                        .reply(&format!("421 4.4.2 {h} Timeout, closing connection"));
                    return Close::Timeout;
                }
                Err(ReadError::Eof) => return Close::Eof,
                Err(ReadError::Io(_)) => return Close::IoError,
            };
            match self.command(&line).await {
                Flow::Continue => {}
                Flow::Close(c) => return c,
            }
        }
    }

    /// Queues an error reply and counts it; past the limit, closes the session.
    fn error(&mut self, reply: &str) -> Flow {
        self.conn.reply(reply);
        self.errors += 1;
        if self.errors >= self.srv.config.max_errors {
            let h = self.host().to_owned();
            self.conn.reply(&format!(
                "421 4.7.0 {h} Too many errors, closing connection"
            ));
            return Flow::Close(Close::TooManyErrors);
        }
        Flow::Continue
    }

    fn ok(&mut self, reply: &str) -> Flow {
        self.conn.reply(reply);
        Flow::Continue
    }

    /// Counts a command that is not part of a mail transaction.
    fn idle_command(&mut self) -> Option<Flow> {
        self.idle_commands += 1;
        if self.idle_commands > self.srv.config.max_commands_before_mail {
            let h = self.host().to_owned();
            self.conn.reply(&format!(
                "421 4.7.0 {h} Too many commands without mail, closing connection"
            ));
            return Some(Flow::Close(Close::TooManyCommands));
        }
        None
    }

    /// Port 25 checks apply: an unauthenticated MX session from a network that is not trusted.
    fn inbound(&self) -> Option<&Inbound> {
        if self.kind.is_submission() || self.principal.is_some() || self.trusted() {
            return None;
        }
        self.srv.inbound.as_ref()
    }

    fn trusted(&self) -> bool {
        let ip = self.peer.ip();
        self.srv.trusted_networks.iter().any(|c| c.contains(ip))
    }

    async fn block_listed(&self) -> Option<(String, String)> {
        match self.inbound() {
            Some(i) if !i.cfg.dnsbl.is_empty() => i.listed(self.peer.ip()).await,
            _ => None,
        }
    }

    fn reset_transaction(&mut self) {
        self.bdat = None;
        self.sender_checks = None;
        self.mail_from = None;
        self.smtputf8 = false;
        self.binarymime = false;
        self.rcpts.clear();
        self.rcpt_commands = 0;
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let mut it = line.iter();
        let req = match Request::parse(&mut it) {
            Ok(r) => r,
            Err(e) => {
                let is_idle = self.idle_command();
                if let Some(f) = is_idle {
                    return f;
                }
                return match e {
                    smtp_proto::Error::UnknownCommand => {
                        self.error("500 5.5.1 Command unrecognized")
                    }
                    smtp_proto::Error::InvalidSenderAddress => {
                        self.error("553 5.1.7 Invalid sender address")
                    }
                    smtp_proto::Error::InvalidRecipientAddress => {
                        self.error("553 5.1.3 Invalid recipient address")
                    }
                    smtp_proto::Error::SyntaxError { syntax } => {
                        self.error(&format!("501 5.5.4 Syntax: {syntax}"))
                    }
                    smtp_proto::Error::InvalidParameter { .. } => {
                        self.error("501 5.5.4 Invalid parameter")
                    }
                    smtp_proto::Error::UnsupportedParameter { .. } => {
                        self.error("555 5.5.4 Unsupported parameter")
                    }
                    _ => self.error("500 5.5.2 Syntax error"),
                };
            }
        };
        if !matches!(
            req,
            Request::Mail { .. }
                | Request::Rcpt { .. }
                | Request::Data
                | Request::Bdat { .. }
                | Request::Quit
        ) {
            if let Some(f) = self.idle_command() {
                return f;
            }
        }
        match req {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let ir = initial_response.to_string();
                self.auth(mechanism, ir).await
            }
            Request::Mail { from } => {
                let flags = from.flags;
                let size = from.size;
                let addr = from.address.to_string();
                self.mail(addr, flags, size).await
            }
            Request::Rcpt { to } => {
                let addr = to.address.to_string();
                self.rcpt(addr).await
            }
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.reset_transaction();
                self.ok("250 2.0.0 OK")
            }
            Request::Noop { .. } => self.ok("250 2.0.0 OK"),
            Request::Quit => {
                let h = self.host().to_owned();
                self.conn.reply(&format!("221 2.0.0 {h} Bye"));
                Flow::Close(Close::Quit)
            }
            Request::Help { .. } => self.ok("214 2.0.0 Postern: see RFC 5321"),
            // Address harvesting is not a service we offer (RFC 5321 7.3).
            Request::Vrfy { .. } => self.error("502 5.5.1 VRFY is disabled"),
            Request::Expn { .. } => self.error("502 5.5.1 EXPN is disabled"),
            _ => self.error("502 5.5.1 Command not implemented"),
        }
    }

    fn ehlo(&mut self, host: &str, esmtp: bool) -> Flow {
        // RFC 5321 4.1.4: EHLO resets the transaction.
        self.reset_transaction();
        let helo: String = host
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        if helo.is_empty() {
            return self.error("501 5.5.4 Syntax: EHLO domain");
        }
        self.helo = Some(helo.clone());
        self.esmtp = esmtp;
        let h = self.host().to_owned();
        if !esmtp {
            return self.ok(&format!("250 {h}"));
        }
        let mut lines = vec![
            format!("{h} Hello {helo}"),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.srv.config.max_message_size),
            "8BITMIME".to_owned(),
            "CHUNKING".to_owned(),
            "BINARYMIME".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "SMTPUTF8".to_owned(),
        ];
        if self.tls.is_none() {
            lines.push("STARTTLS".to_owned());
        } else if self.kind.is_submission() && self.principal.is_none() {
            // RFC 4954: AUTH is offered only over TLS, and only on submission listeners;
            // strongest first.
            let offer = sasl::Offer {
                can_bind: self.conn.channel_bindings().is_some(),
                client_cert: self.conn.client_cert().is_some(),
                oauth: self.srv.auth.accepts_tokens(),
            };
            let names: Vec<&str> = sasl::Mechanism::advertised(offer)
                .iter()
                .map(|m| m.name())
                .collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            self.conn.reply(&format!("250{sep}{l}"));
        }
        Flow::Continue
    }

    async fn starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            return self.error("503 5.5.1 TLS already active");
        }
        self.conn.reply("220 2.0.0 Ready to start TLS");
        let t = Duration::from_secs(self.srv.config.tls_handshake_timeout_secs);
        let acceptor = self.srv.tls.clone();
        match self.conn.start_tls(&acceptor, t).await {
            Ok(discarded) => {
                if discarded > 0 {
                    tracing::warn!(session = %self.id, ip = %self.peer.ip(), bytes = discarded, "discarded clear-text input pipelined after STARTTLS");
                }
                self.tls = self.conn.stream_ref().and_then(MailStream::tls_info);
                // RFC 3207 4.2: forget everything learned before TLS.
                self.helo = None;
                self.esmtp = false;
                self.reset_transaction();
                Flow::Continue
            }
            Err(e) => {
                tracing::info!(session = %self.id, ip = %self.peer.ip(), error = %e, "STARTTLS handshake failed");
                Flow::Close(Close::TlsFailed)
            }
        }
    }

    async fn read_auth_line(&mut self) -> Result<Vec<u8>, Flow> {
        let t = Duration::from_secs(self.srv.config.idle_timeout_secs);
        match self.conn.read_line(MAX_AUTH_LINE, t).await {
            Ok(Line::Ok(l)) => Ok(l),
            Ok(Line::TooLong) => {
                Err(self.error("500 5.5.6 Authentication exchange line is too long"))
            }
            Ok(Line::Endless) => Err(Flow::Close(self.cut_off(
                "500 5.5.6 Authentication exchange line is too long",
                "Line without end",
            ))),
            Err(ReadError::Timeout) => {
                let h = self.host().to_owned();
                self.conn
                    .reply(&format!("421 4.4.2 {h} Timeout, closing connection"));
                Err(Flow::Close(Close::Timeout))
            }
            Err(ReadError::Eof) => Err(Flow::Close(Close::Eof)),
            Err(ReadError::Io(_)) => Err(Flow::Close(Close::IoError)),
        }
    }

    /// The SASL exchange (the one shared with IMAP and POP3), framed as `334 challenge` lines.
    async fn sasl_credentials(&mut self, mechanism: u64, ir: String) -> Result<Credentials, Flow> {
        let decode_err = |s: &mut Self, e: sasl::SaslError| match e {
            sasl::SaslError::Cancelled => s.error("501 5.0.0 Authentication cancelled"),
            _ => s.error("501 5.5.2 Cannot decode the authentication response"),
        };
        let mech = if mechanism == AUTH_PLAIN {
            sasl::Mechanism::Plain
        } else {
            sasl::Mechanism::Login
        };
        let initial = (!ir.is_empty()).then(|| ir.into_bytes());
        let (mut ex, mut step) = match sasl::Exchange::start(mech, initial.as_deref()) {
            Ok(x) => x,
            Err(e) => return Err(decode_err(self, e)),
        };
        loop {
            match step {
                sasl::Step::Done(c) => return Ok(c),
                sasl::Step::Challenge(ch) => {
                    self.conn.reply(&format!("334 {ch}"));
                    let line = self.read_auth_line().await?;
                    step = ex.step(&line).map_err(|e| decode_err(self, e))?;
                }
            }
        }
    }

    async fn auth(&mut self, mechanism: u64, ir: String) -> Flow {
        if self.tls.is_none() {
            return self.error("530 5.7.0 Must issue a STARTTLS command first");
        }
        if !self.kind.is_submission() {
            return self
                .error("503 5.5.1 Authentication is not available on this port; use submission");
        }
        if self.helo.is_none() || !self.esmtp {
            return self.error("503 5.5.1 Send EHLO first");
        }
        if self.principal.is_some() {
            return self.error("503 5.5.1 Already authenticated");
        }
        if self.mail_from.is_some() {
            return self.error("503 5.5.1 AUTH is not allowed during a mail transaction");
        }
        if [
            AUTH_SCRAM_SHA_256,
            AUTH_SCRAM_SHA_256_PLUS,
            AUTH_EXTERNAL,
            AUTH_OAUTHBEARER,
            AUTH_XOAUTH2,
        ]
        .contains(&mechanism)
        {
            return self.auth_sasl(mechanism, ir).await;
        }
        if mechanism != AUTH_PLAIN && mechanism != AUTH_LOGIN {
            return self.error("504 5.5.4 Unrecognized authentication mechanism");
        }
        let creds = match self.sasl_credentials(mechanism, ir).await {
            Ok(c) => c,
            Err(f) => return f,
        };
        let outcome = self
            .srv
            .auth
            .authenticate(LoginAttempt {
                username: &creds.username,
                password: &creds.password,
                protocol: self.kind.protocol,
                mechanism: if mechanism == AUTH_PLAIN {
                    "PLAIN"
                } else {
                    "LOGIN"
                },
                remote_ip: self.peer.ip(),
                tls: self.tls.map(|t| t.version),
            })
            .await;
        drop(creds);
        self.answer_auth(outcome)
    }

    /// AUTH SCRAM-SHA-256(-PLUS), EXTERNAL, OAUTHBEARER and XOAUTH2: `334` challenges; SCRAM's server signature is
    /// a last `334` that the client answers with an empty line (RFC 4954 4).
    async fn auth_sasl(&mut self, mechanism: u64, ir: String) -> Flow {
        let mech = match mechanism {
            AUTH_SCRAM_SHA_256_PLUS => sasl::Mechanism::ScramSha256Plus,
            AUTH_EXTERNAL => sasl::Mechanism::External,
            AUTH_OAUTHBEARER => sasl::Mechanism::OauthBearer,
            AUTH_XOAUTH2 => sasl::Mechanism::Xoauth2,
            _ => sasl::Mechanism::ScramSha256,
        };
        let initial = match (!ir.is_empty()).then(|| sasl::decode_response(ir.as_bytes())) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(sasl::SaslError::Cancelled)) => {
                return self.error("501 5.0.0 Authentication cancelled")
            }
            Some(Err(_)) => {
                return self.error("501 5.5.2 Cannot decode the authentication response")
            }
        };
        let bindings = self.conn.channel_bindings().unwrap_or_default();
        let auth = self.srv.auth.clone();
        let (protocol, ip, tls) = (
            self.kind.protocol,
            self.peer.ip(),
            self.tls.map(|t| t.version),
        );
        let mut io = Challenger {
            session: self,
            flow: None,
        };
        let peer = postern_auth::Peer {
            protocol,
            remote_ip: ip,
            tls,
        };
        let initial = initial.as_deref().map(|v| &v[..]);
        let cert = io.session.conn.client_cert();
        let end = if mech == sasl::Mechanism::External {
            auth.external_exchange(&mut io, initial, cert.as_ref(), peer)
                .await
        } else if mech.is_oauth() {
            auth.oauth_exchange(&mut io, mech, initial, peer).await
        } else {
            let cb = postern_auth::scram::Bindings {
                exporter: bindings.exporter.as_ref().map(|e| &e[..]),
                end_point: bindings.end_point.as_deref(),
            };
            auth.scram_exchange(&mut io, mech, initial, cb, peer).await
        };
        if let Some(flow) = io.flow {
            return flow;
        }
        match end {
            postern_auth::SaslEnd::Decided(outcome) => self.answer_auth(outcome),
            postern_auth::SaslEnd::Aborted(sasl::SaslError::Cancelled) => {
                self.error("501 5.0.0 Authentication cancelled")
            }
            postern_auth::SaslEnd::Aborted(_) => {
                self.error("501 5.5.2 Cannot decode the authentication response")
            }
        }
    }

    /// The reply to a decided login, whatever the mechanism.
    fn answer_auth(&mut self, outcome: postern_auth::AuthOutcome) -> Flow {
        match outcome.answer(&WORDING) {
            Answer::LoggedIn(p) => {
                let reply = match p.expiry_warning() {
                    Some(w) => format!("235 2.7.0 Authentication successful; {w}"),
                    None => "235 2.7.0 Authentication successful".to_owned(),
                };
                if !p.is_application() {
                    // incident response can end this session from now on
                    self.shutdown = self.srv.revocations.token_for(p.account_id, &self.shutdown);
                }
                self.principal = Some(p);
                self.ok(&reply)
            }
            Answer::Retry(text) => self.error(text),
            Answer::Close(text) => {
                let h = self.host().to_owned();
                self.conn.reply(&format!("421 4.7.0 {h} {text}"));
                Flow::Close(Close::TooManyAuthFailures)
            }
            Answer::Failed(text) => {
                self.auth_failures += 1;
                if self.auth_failures >= self.srv.config.max_auth_failures {
                    self.conn.reply(text);
                    let h = self.host().to_owned();
                    self.conn.reply(&format!(
                        "421 4.7.0 {h} Too many failed authentications, closing connection"
                    ));
                    return Flow::Close(Close::TooManyAuthFailures);
                }
                self.error(text)
            }
        }
    }

    async fn mail(&mut self, address: String, flags: u64, size: usize) -> Flow {
        if self.helo.is_none() {
            return self.error("503 5.5.1 Send HELO/EHLO first");
        }
        if self.mail_from.is_some() {
            return self.error("503 5.5.1 Nested MAIL command");
        }
        if self.kind.is_submission() && self.principal.is_none() {
            return self.error("530 5.7.0 Authentication required");
        }
        if size > self.srv.config.max_message_size {
            return self.error("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        let smtputf8 = flags & MAIL_SMTPUTF8 != 0;
        if !address.is_ascii() && !smtputf8 {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        let sender = if address.is_empty() {
            if self.kind.is_submission() {
                return self.error("553 5.7.1 A null sender is not allowed on submission");
            }
            String::new()
        } else {
            match EmailAddress::parse(&address) {
                Ok(a) => a.as_str().to_owned(),
                Err(_) => return self.error("553 5.1.7 Invalid sender address"),
            }
        };
        if let Some(p) = &self.principal {
            match self.srv.backend.allowed_senders(p).await {
                Ok(allowed) if postern_types::sender_allowed(&allowed, &sender) => {}
                Ok(_) => {
                    return self
                        .error("553 5.7.1 Sender address not owned by the authenticated user")
                }
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, "sender check failed");
                    return self.error("451 4.3.0 Temporary failure, please try again later");
                }
            }
        }
        if let Some(inbound) = self.inbound() {
            let helo = self.helo.clone().unwrap_or_default();
            match inbound
                .check_sender(self.peer.ip(), &helo, &self.srv.hostname, &sender)
                .await
            {
                MailCheck::Checked(c) => self.sender_checks = Some(c),
                MailCheck::TempError(why) => {
                    tracing::info!(event = "inbound_deferred", session = %self.id, ip = %self.peer.ip(), from = %sender, reason = %why, "sender check undecided");
                    // RFC 7208 8.6: temperror may be answered 451 4.4.3.
                    return self.error(
                        "451 4.4.3 Temporary DNS failure while checking SPF; try again later",
                    );
                }
            }
        }
        self.mail_from = Some(sender);
        self.smtputf8 = smtputf8;
        self.binarymime = flags & MAIL_BODY_BINARYMIME != 0;
        self.idle_commands = 0;
        self.ok("250 2.1.0 Sender OK")
    }

    async fn send_limits(&self, principal: &Principal) -> crate::limits::SendLimits {
        let (m, r) = self
            .srv
            .backend
            .send_limits(principal)
            .await
            .unwrap_or((None, None));
        crate::limits::SendLimits {
            messages_per_hour: m.unwrap_or(self.srv.config.max_messages_per_hour),
            recipients_per_hour: r.unwrap_or(self.srv.config.max_recipients_per_hour),
        }
    }

    async fn rcpt(&mut self, address: String) -> Flow {
        if self.mail_from.is_none() {
            return self.error("503 5.5.1 Need MAIL command first");
        }
        self.rcpt_commands += 1;
        if self.rcpts.len() >= self.srv.config.max_recipients
            || self.rcpt_commands > self.srv.config.max_recipients.saturating_mul(2)
        {
            // RFC 5321 4.5.3.1.10
            return self.error("452 4.5.3 Too many recipients");
        }
        if let Some(p) = &self.principal {
            let limits = self.send_limits(p).await;
            if !self
                .srv
                .send_limiter
                .allows_recipient((p.kind, p.account_id), limits, self.rcpts.len() as u32)
                .await
            {
                let user = p.address.clone();
                self.srv.auth.note(
                    "send_limit",
                    Some(self.peer.ip()),
                    Some(&user),
                    &format!(
                        "hourly send limit reached ({} messages, {} recipients per hour)",
                        limits.messages_per_hour, limits.recipients_per_hour
                    ),
                );
                return self
                    .error("451 4.7.1 Sending limit reached for this account; try again later");
            }
        }
        if !address.is_ascii() && !self.smtputf8 {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        let Ok(addr) = EmailAddress::parse(&address) else {
            // Source routes were stripped by the parser; what remains must be a plain address.
            // Anything else (IP literals, trailing dots, quoted '@') is never relayed.
            return if self.principal.is_some() {
                self.error("553 5.1.3 Invalid recipient address")
            } else {
                self.error("550 5.7.1 Relay access denied")
            };
        };
        let local_domain = match self.srv.backend.is_local_domain(addr.domain()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "domain look-up failed");
                return self.error("451 4.3.0 Temporary failure, please try again later");
            }
        };
        let local = if local_domain {
            match self.srv.backend.resolve_recipient(&addr).await {
                Ok(Some(id)) => Some(id),
                Ok(None) => {
                    return self.error("550 5.1.1 Recipient address rejected: user unknown")
                }
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, "recipient look-up failed");
                    return self.error("451 4.3.0 Temporary failure, please try again later");
                }
            }
        } else if self.principal.is_some() {
            None
        } else {
            return self.error("550 5.7.1 Relay access denied");
        };
        if let Some(id) = local {
            // RFC 3463 4.2.2: the mailbox is full; a temporary failure, the sender retries
            match self.srv.backend.mailbox_full(id).await {
                Ok(false) => {}
                Ok(true) => return self.error("452 4.2.2 Mailbox full, try again later"),
                Err(e) => {
                    tracing::error!(session = %self.id, error = %e, "quota look-up failed");
                    return self.error("451 4.3.0 Temporary failure, please try again later");
                }
            }
        }
        if local.is_some() && self.srv.greylist && self.inbound_greylist() {
            if let Some(f) = self.greylist(addr.as_str()).await {
                return f;
            }
        }
        if !self.rcpts.iter().any(|r| r.address == addr.as_str()) {
            self.rcpts.push(Recipient {
                address: addr.as_str().to_owned(),
                local,
            });
        }
        self.ok("250 2.1.5 Recipient OK")
    }

    /// Greylisting applies to the unauthenticated port-25 sessions of untrusted clients (with or
    /// without the other checks).
    fn inbound_greylist(&self) -> bool {
        !self.kind.is_submission() && self.principal.is_none() && !self.trusted()
    }

    /// RFC 6647: the first attempt of an unknown (network, sender, recipient) is deferred.
    async fn greylist(&mut self, rcpt: &str) -> Option<Flow> {
        let network = postern_types::Cidr::network_of(self.peer.ip()).to_string();
        let sender = self
            .mail_from
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let spf_domain = self
            .sender_checks
            .as_ref()
            .filter(|c| c.spf_mail.result() == postern_dns::mail_auth::SpfResult::Pass)
            .and_then(|_| sender.rsplit_once('@').map(|(_, d)| d.to_owned()));
        match self
            .srv
            .backend
            .greylist(&network, &sender, rcpt, spf_domain.as_deref())
            .await
        {
            Ok(GreyCheck::Pass(_)) => {
                postern_metrics::inbound_check("greylist", "pass");
                None
            }
            Ok(GreyCheck::Defer(secs)) => {
                postern_metrics::inbound_check("greylist", "defer");
                tracing::info!(event = "greylisted", session = %self.id, ip = %self.peer.ip(), from = %sender, to = rcpt, retry_in = secs, "greylisted");
                Some(self.error(&format!(
                    "451 4.7.1 Greylisted: please try again in {secs} seconds"
                )))
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "greylist look-up failed");
                Some(self.error("451 4.3.0 Temporary failure, please try again later"))
            }
        }
    }

    /// BDAT (RFC 3030): exactly `size` octets follow the command, whatever the state of the
    /// transaction; they are read (and kept while within the size cap), then answered. The
    /// last chunk ends the message, which meets the same rules as DATA: the size cap, no bare
    /// CR or LF, no NUL, then the same checks and durable store before its 250.
    async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        let cap = self.srv.config.max_message_size;
        // The chunk is read in any case (it is on the wire); a client announcing more than
        // twice the cap is answered and cut off, as on DATA.
        let hard_stop = cap.saturating_mul(2).max(cap.saturating_add(1024 * 1024));
        let so_far = match &self.bdat {
            Some(Ok(b)) => b.len(),
            _ => 0,
        };
        if size > hard_stop || so_far.saturating_add(size) > hard_stop {
            return Flow::Close(self.cut_off(
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "BDAT chunk far too big",
            ));
        }
        let problem = if self.mail_from.is_none() {
            Some("503 5.5.1 Need MAIL command first")
        } else if self.rcpts.is_empty() {
            Some("554 5.5.1 No valid recipients")
        } else {
            None
        };
        let keep = problem.is_none()
            && !matches!(self.bdat, Some(Err(_)))
            && so_far.saturating_add(size) <= cap;
        let timeout = Duration::from_secs(self.srv.config.data_timeout_secs);
        let mut chunk = Vec::with_capacity(if keep { size.min(1 << 20) } else { 0 });
        let mut left = size;
        while left > 0 {
            if self.conn.buf.is_empty() {
                if let Err(e) = self.conn.fill(tokio::time::Instant::now() + timeout).await {
                    return self.body_read_failed(e);
                }
            }
            let n = left.min(self.conn.buf.len());
            if keep {
                chunk.extend_from_slice(&self.conn.buf[..n]);
            }
            self.conn.buf.drain(..n);
            left -= n;
        }
        if let Some(p) = problem {
            // no transaction: the chunk is gone, and so is any partial message
            self.bdat = None;
            return self.error(p);
        }
        match self.bdat.get_or_insert_with(|| Ok(Vec::new())) {
            Ok(body) if keep => body.extend_from_slice(&chunk),
            state => {
                if state.is_ok() {
                    *state = Err("552 5.3.4 Message size exceeds fixed maximum message size");
                }
            }
        }
        if !last {
            return match &self.bdat {
                Some(Ok(b)) => self.ok(&format!("250 2.0.0 {} octets received", b.len())),
                Some(Err(e)) => {
                    let e = *e;
                    self.error(e)
                }
                None => self.ok("250 2.0.0 OK"),
            };
        }
        let binary = self.binarymime;
        let flow = match self.bdat.take().map(|r| {
            // BINARYMIME: binary parts become base64 first; the result then meets the rules of
            // any other message (crate::binarymime)
            r.and_then(|body| match binary {
                true => crate::binarymime::downgrade(&body).map_err(|e| match e {
                    crate::binarymime::BinaryProblem::Header => {
                        "554 5.6.0 Message refused: binary octets in the header section"
                    }
                    crate::binarymime::BinaryProblem::Structure => {
                        "554 5.6.0 Message refused: binary octets outside a binary MIME part"
                    }
                }),
                false => Ok(body),
            })
        }) {
            Some(Ok(mut body)) => match crate::data::check_chunked(&body) {
                Err(DataProblem::Nul) => {
                    self.error("550 5.6.0 Message refused: NUL characters are not allowed")
                }
                Err(_) => self.error(
                    "550 5.6.0 Message refused: bare CR or LF found; lines must end with CRLF",
                ),
                Ok(()) => {
                    if !body.is_empty() && !body.ends_with(b"\r\n") {
                        body.extend_from_slice(b"\r\n");
                    }
                    self.accept(body).await
                }
            },
            Some(Err(e)) => self.error(e),
            None => self.error("503 5.5.1 Need MAIL command first"),
        };
        self.reset_transaction();
        flow
    }

    /// The end of a session whose message body (DATA or BDAT) stopped arriving.
    fn body_read_failed(&mut self, e: ReadError) -> Flow {
        match e {
            ReadError::Timeout => {
                let h = self.host().to_owned();
                self.conn
                    .reply(&format!("421 4.4.2 {h} Timeout, closing connection"));
                Flow::Close(Close::Timeout)
            }
            ReadError::Eof => Flow::Close(Close::Eof),
            ReadError::Io(_) => Flow::Close(Close::IoError),
        }
    }

    async fn data(&mut self) -> Flow {
        if self.bdat.is_some() {
            return self.error("503 5.5.1 DATA in the middle of a BDAT transaction");
        }
        if self.binarymime {
            // RFC 3030 3: a BINARYMIME message can only be sent with BDAT
            return self.error("503 5.5.1 BODY=BINARYMIME requires BDAT");
        }
        if self.mail_from.is_none() {
            return self.error("503 5.5.1 Need MAIL command first");
        }
        if self.rcpts.is_empty() {
            return self.error("554 5.5.1 No valid recipients");
        }
        self.conn
            .reply("354 Start mail input; end with <CRLF>.<CRLF>");
        let mut reader = DataReader::new(self.srv.config.max_message_size);
        let timeout = Duration::from_secs(self.srv.config.data_timeout_secs);
        // Past the cap the rest is read and dropped, so that the sender gets its 552 after the
        // final dot (a permanent failure it can bounce) - but only up to twice the cap: a client
        // that goes on and on (1 GB against 50 MB) is answered and cut off there.
        let cap = self.srv.config.max_message_size;
        let hard_stop = cap.saturating_mul(2).max(cap.saturating_add(1024 * 1024));
        loop {
            let (used, done) = reader.feed(&self.conn.buf);
            self.conn.buf.drain(..used);
            if done {
                break;
            }
            if reader.size() > hard_stop {
                return Flow::Close(self.cut_off(
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                    "Message far too big",
                ));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            if let Err(e) = self.conn.fill(deadline).await {
                return self.body_read_failed(e);
            }
        }
        let result = reader.finish();
        let flow = match result {
            Err(DataProblem::TooBig) => {
                self.error("552 5.3.4 Message size exceeds fixed maximum message size")
            }
            Err(DataProblem::BareLineEnding) => self
                .error("550 5.6.0 Message refused: bare CR or LF found; lines must end with CRLF"),
            Err(DataProblem::Nul) => {
                self.error("550 5.6.0 Message refused: NUL characters are not allowed")
            }
            Ok(body) => self.accept(body).await,
        };
        self.reset_transaction();
        flow
    }

    /// Checks the headers of a submitted message against the authenticated account.
    async fn check_submission_headers(
        &mut self,
        body: &[u8],
        principal: &Principal,
    ) -> Result<(), Flow> {
        let Some(msg) = mail_parser::MessageParser::new().parse_headers(body) else {
            return Err(self.error("550 5.6.0 Message refused: headers cannot be parsed"));
        };
        let count =
            |name: mail_parser::HeaderName| msg.headers().iter().filter(|h| h.name == name).count();
        if count(mail_parser::HeaderName::From) != 1 || count(mail_parser::HeaderName::Sender) > 1 {
            return Err(
                self.error("550 5.6.0 Message refused: exactly one From header is required")
            );
        }
        let mut claimed: Vec<String> = Vec::new();
        for addr in [msg.from(), msg.sender()].into_iter().flatten() {
            for a in addr.iter() {
                match a.address().map(EmailAddress::parse) {
                    Some(Ok(a)) => claimed.push(a.as_str().to_owned()),
                    _ => return Err(self.error("550 5.7.1 From header has an address that is not owned by the authenticated user")),
                }
            }
        }
        if claimed.is_empty() {
            return Err(self.error("550 5.6.0 Message refused: the From header has no address"));
        }
        let owned = match self.srv.backend.allowed_senders(principal).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "owned addresses look-up failed");
                return Err(self.error("451 4.3.0 Temporary failure, please try again later"));
            }
        };
        if claimed
            .iter()
            .all(|c| postern_types::sender_allowed(&owned, c))
        {
            Ok(())
        } else {
            Err(self.error("550 5.7.1 From header address not owned by the authenticated user"))
        }
    }

    async fn received_header(&self, msg_id: &str) -> String {
        let details = match &self.principal {
            Some(p) => self.srv.backend.received_details(p).await.unwrap_or(false),
            None => self.srv.config.received_tls_details,
        };
        // RFC 3848 "with" keywords.
        let with = match (self.esmtp, self.tls.is_some(), self.principal.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, _) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, true, true) => "ESMTPSA",
        };
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Postern) with {with} id {msg_id}",
            self.peer.ip(),
            self.srv.hostname
        );
        if details {
            if let Some(t) = self.tls {
                h.push_str(&format!(
                    "\r\n\t(using {} with cipher {})",
                    t.version, t.cipher
                ));
            }
            if let Some(p) = &self.principal {
                h.push_str(&format!("\r\n\t(authenticated as {})", p.address));
            }
        }
        if let [only] = self.rcpts.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.address));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", chrono::Utc::now().to_rfc2822()));
        h
    }

    async fn accept(&mut self, body: Vec<u8>) -> Flow {
        // end of DATA: the time until the 250 (checks, durable store) is `postern_accept_seconds`
        let started = std::time::Instant::now();
        if let Some(p) = self.principal.clone() {
            if let Err(f) = self.check_submission_headers(&body, &p).await {
                return f;
            }
        }
        let msg_id = new_id();
        let mut received = self.received_header(&msg_id).await;
        let sender = self.mail_from.clone().unwrap_or_default();
        let mut quarantine = false;
        let mut authenticated_domain = None;
        let mut body = body;
        if let (Some(inbound), Some(checks)) = (self.inbound(), self.sender_checks.as_deref()) {
            let verdict = inbound
                .check_message(
                    self.peer.ip(),
                    &self.srv.hostname,
                    &sender,
                    checks,
                    body,
                    self.srv.backend.as_ref(),
                )
                .await;
            match verdict {
                Verdict::Accept {
                    message,
                    header,
                    quarantine: q,
                    authenticated_domain: a,
                    summary,
                } => {
                    if q {
                        tracing::info!(event = "inbound_quarantined", session = %self.id, id = %msg_id, ip = %self.peer.ip(), from = %sender, reason = %summary, "DMARC quarantine: delivered to the junk mailbox");
                    }
                    body = message;
                    received.push_str(&header);
                    quarantine = q;
                    authenticated_domain = a;
                }
                Verdict::Reject(reply, why) => {
                    postern_metrics::message_received(self.kind.protocol.name(), "rejected");
                    tracing::info!(event = "inbound_refused", session = %self.id, ip = %self.peer.ip(), from = %sender, reason = %why, "message refused");
                    return self.error(&reply);
                }
                Verdict::Defer(reply, why) => {
                    postern_metrics::message_received(self.kind.protocol.name(), "deferred");
                    tracing::info!(event = "inbound_deferred", session = %self.id, ip = %self.peer.ip(), from = %sender, reason = %why, "message deferred");
                    return self.error(&reply);
                }
            }
        }
        let mut local: Vec<i64> = self.rcpts.iter().filter_map(|r| r.local).collect();
        local.sort_unstable();
        local.dedup();
        let remote: Vec<String> = self
            .rcpts
            .iter()
            .filter(|r| r.local.is_none())
            .map(|r| r.address.clone())
            .collect();
        let size = body.len();
        let delivery = Delivery {
            sender: sender.clone(),
            account_id: self
                .principal
                .as_ref()
                .filter(|p| !p.is_application())
                .map(|p| p.account_id),
            authenticated: self.principal.is_some(),
            local,
            remote,
            received,
            body,
            quarantine,
            client_ip: self.peer.ip(),
            listener: self.kind.protocol.name(),
            login: self.principal.as_ref().map(|p| p.address.to_string()),
            message_id: msg_id.to_string(),
        };
        let rcpts = self.rcpts.len();
        let account = self.principal.as_ref().map(|p| (p.kind, p.account_id));
        match self.srv.backend.deliver(delivery).await {
            Ok(()) => {
                self.accepted += 1;
                postern_metrics::message_received(
                    self.kind.protocol.name(),
                    if quarantine {
                        "quarantined"
                    } else {
                        "accepted"
                    },
                );
                if let Some(d) = authenticated_domain.filter(|_| self.srv.greylist) {
                    if let Err(e) = self.srv.backend.sender_authenticated(&d).await {
                        tracing::warn!(session = %self.id, error = %e, "greylist auto-allow not recorded");
                    }
                }
                if let Some(a) = account {
                    self.srv.send_limiter.record(a, rcpts as u32).await;
                }
                tracing::info!(
                    event = "message",
                    session = %self.id,
                    id = %msg_id,
                    ip = %self.peer.ip(),
                    from = %sender,
                    recipients = rcpts,
                    size,
                    user = self.principal.as_ref().map(|p| p.address.as_str()),
                    "message accepted"
                );
                postern_metrics::accept_seconds(
                    self.kind.protocol.name(),
                    started.elapsed().as_secs_f64(),
                );
                self.ok(&format!("250 2.0.0 Message accepted as {msg_id}"))
            }
            Err(e) if e.storage_full => {
                tracing::error!(session = %self.id, id = %msg_id, error = %e, "storage full: message refused for now");
                self.error("452 4.3.1 Insufficient system storage, try again later")
            }
            Err(e) => {
                tracing::error!(session = %self.id, id = %msg_id, error = %e, "storing a message failed");
                self.error("451 4.3.0 Temporary failure, please try again later")
            }
        }
    }
}

/// One SASL round trip in SMTP's framing (RFC 4954 4: `334 base64`, answered by a line). A
/// reply the session had to give instead (a line too long, a timeout) is kept in `flow`.
struct Challenger<'a> {
    session: &'a mut Session,
    flow: Option<Flow>,
}

#[async_trait::async_trait]
impl sasl::Challenger for Challenger<'_> {
    async fn challenge(
        &mut self,
        challenge: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, sasl::SaslError> {
        self.session.conn.reply(&format!("334 {challenge}"));
        match self.session.read_auth_line().await {
            Ok(line) => sasl::decode_response(&line),
            Err(flow) => {
                self.flow = Some(flow);
                Err(sasl::SaslError::Closed)
            }
        }
    }
}
