//! One POP3 session: AUTHORIZATION, TRANSACTION and UPDATE states (RFC 1939 3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_auth::{Answer, LoginAttempt, Principal, Wording};

/// POP3's words for login outcomes (RFC 2449 / RFC 3206 response codes).
const WORDING: Wording = Wording {
    failed: "-ERR [AUTH] Authentication failed",
    expired: "-ERR [AUTH] Password expired; change it, or use an app password",
    app_password_required:
        "-ERR [AUTH] Two-factor authentication is on: an app password is required",
    temporary: "-ERR [SYS/TEMP] Temporary authentication failure, try again later",
    refused: "-ERR [SYS/TEMP] Too many failed logins from your address; try again later",
};
use postern_config::Protocol;
use postern_net::{ConnPermit, LineConn, MailStream, Refusal, TlsAcceptor, TlsInfo};
use secrecy::SecretString;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::maildrop::{Maildrop, Step};
use crate::parse::{parse, Command, ParseError};
use crate::{MaildropLock, Pop3Server};

/// RFC 2449 4: command lines are at most 255 octets; allow some slack for long AUTH responses.
const MAX_LINE: usize = 2048;

enum Line {
    Text(Vec<u8>),
    TooLong,
    Timeout,
    Closed,
}

/// The shared line-protocol connection (`postern-net`), read in 4 KiB steps.
struct Conn(LineConn);

/// One SASL round trip in POP3's framing (RFC 5034 4).
struct Challenger<'a> {
    conn: &'a mut Conn,
    idle: Duration,
}

#[async_trait::async_trait]
impl postern_auth::sasl::Challenger for Challenger<'_> {
    async fn challenge(
        &mut self,
        challenge: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, postern_auth::sasl::SaslError> {
        use postern_auth::sasl::SaslError;
        self.conn.send(&format!("+ {challenge}"));
        if self.conn.flush().await.is_err() {
            return Err(SaslError::Closed);
        }
        match self.conn.read_line(self.idle).await {
            Line::Text(l) => postern_auth::sasl::decode_response(&l),
            _ => Err(SaslError::Closed),
        }
    }
}

impl Conn {
    fn send(&mut self, s: &str) {
        self.0.line(s);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }

    /// One command line of at most [`MAX_LINE`] octets, all of it within `idle`.
    async fn read_line(&mut self, idle: Duration) -> Line {
        match self.0.read_line(MAX_LINE, idle).await {
            Ok(postern_net::Line::Ok(l)) => Line::Text(l),
            Ok(postern_net::Line::TooLong | postern_net::Line::Endless) => Line::TooLong,
            Err(postern_net::ReadError::Timeout) => Line::Timeout,
            Err(_) => Line::Closed,
        }
    }

    async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> std::io::Result<()> {
        self.0
            .start_tls(acceptor, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    async fn linger(&mut self) {
        self.0.linger().await;
    }

    async fn shutdown(&mut self) {
        self.0.shutdown().await;
    }
}

struct Session {
    srv: Arc<Pop3Server>,
    protocol: Protocol,
    peer: SocketAddr,
    conn: Conn,
    tls: Option<TlsInfo>,
    user: Option<String>,
    principal: Option<Principal>,
    drop: Option<Maildrop>,
    /// RFC 1939 4: the maildrop is locked for the session's life once it is opened.
    _lock: Option<MaildropLock>,
    shutdown: CancellationToken,
    auth_failures: u32,
    errors: u32,
    /// Cut off while the client may still be sending (input abuse): linger before closing so the
    /// final reply is not destroyed by a reset (see `MailStream::linger`).
    linger: bool,
}

enum Flow {
    Continue,
    Close,
}

pub async fn handle_connection(
    srv: Arc<Pop3Server>,
    protocol: Protocol,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Result<ConnPermit, Refusal>,
    shutdown: CancellationToken,
) {
    let implicit = protocol == Protocol::Pop3s;
    let Some((_permit, stream)) = postern_net::open_session(
        tcp,
        peer,
        admission,
        protocol.name(),
        implicit.then_some((&srv.tls, Duration::from_secs(10))),
        "-ERR [SYS/TEMP] Too many connections, try again later",
    )
    .await
    else {
        return;
    };
    serve_stream(srv, protocol, stream, peer, shutdown).await;
}

/// Runs one POP3 session on an admitted stream (TLS already up on the implicit-TLS listener).
/// The listener's accept path calls it; so do tests and fuzz targets, over an in-process stream.
pub async fn serve_stream(
    srv: Arc<Pop3Server>,
    protocol: Protocol,
    stream: MailStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let implicit = protocol == Protocol::Pop3s;
    let early = !implicit
        && stream
            .talks_before(Duration::from_millis(srv.config.greeting_delay_ms))
            .await;
    let tls = stream.tls_info();
    let mut s = Session {
        srv,
        protocol,
        peer,
        conn: Conn(LineConn::new(stream, 4096)),
        tls,
        user: None,
        principal: None,
        drop: None,
        _lock: None,
        shutdown,
        auth_failures: 0,
        errors: 0,
        linger: false,
    };
    if early {
        s.conn.send("-ERR Command received before greeting");
        s.conn.shutdown().await;
        s.conn.linger().await;
        return;
    }
    s.conn
        .send(&format!("+OK {} Postern POP3 ready", s.srv.hostname));
    s.run().await;
    s.conn.shutdown().await;
    if s.linger {
        s.conn.linger().await;
    }
    tracing::info!(
        event = "connection",
        protocol = protocol.name(),
        ip = %peer.ip(),
        tls = s.tls.map_or("none", |t| t.version),
        user = s.principal.as_ref().map(|p| p.address.as_str()),
        errors = s.errors,
        duration_ms = started.elapsed().as_millis() as u64,
        "session closed"
    );
}

/// Writes `data` with CRLF line ends (a message stored with bare LF would otherwise end in
/// `\n.\r\n`, and a client waiting for CRLF.CRLF would wait forever), dot-stuffed (RFC 1939 3),
/// ending with the terminating ".".
fn multiline(out: &mut Vec<u8>, data: &[u8]) {
    let data = postern_types::crlf(data);
    let data: &[u8] = &data;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// TOP: the header, the blank line, and the first `n` lines of the body.
fn top(data: &[u8], n: u32) -> Vec<u8> {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(data.len());
    let mut out = data[..split].to_vec();
    for line in data[split..]
        .split_inclusive(|&b| b == b'\n')
        .take(n as usize)
    {
        out.extend_from_slice(line);
    }
    out
}

impl Session {
    fn idle(&self) -> Duration {
        if self.principal.is_some() {
            Duration::from_secs(self.srv.config.idle_timeout_secs)
        } else {
            Duration::from_secs(self.srv.config.login_timeout_secs)
        }
    }

    fn err(&mut self, text: &str) -> Flow {
        self.conn.send(&format!("-ERR {text}"));
        self.errors += 1;
        if self.errors >= self.srv.config.max_errors {
            self.conn.send("-ERR Too many errors, closing");
            self.linger = true;
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn run(&mut self) {
        loop {
            if self.conn.flush().await.is_err() {
                return;
            }
            let idle = self.idle();
            let line = tokio::select! {
                l = self.conn.read_line(idle) => l,
                _ = self.shutdown.cancelled() => {
                    self.conn.send("-ERR [SYS/TEMP] Server shutting down");
                    return;
                }
            };
            let line = match line {
                Line::Text(l) => l,
                Line::TooLong => {
                    self.conn.send("-ERR Line too long");
                    self.linger = true;
                    return;
                }
                Line::Timeout => {
                    self.conn.send("-ERR Autologout; idle for too long");
                    return;
                }
                Line::Closed => return,
            };
            let flow = match parse(&line) {
                Ok(cmd) => self.command(cmd).await,
                Err(ParseError::Unknown) => self.err("Unknown command"),
                Err(ParseError::Syntax) => self.err("Syntax error"),
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// The SASL mechanisms offered here, strongest first (LOGIN is not: USER/PASS is POP3's).
    fn sasl_mechanisms(&self) -> Vec<&'static str> {
        let offer = postern_auth::sasl::Offer {
            can_bind: self.conn.0.channel_bindings().is_some(),
            client_cert: self.conn.0.client_cert().is_some(),
            oauth: self.srv.auth.accepts_tokens(),
        };
        postern_auth::sasl::Mechanism::advertised(offer)
            .into_iter()
            .filter(|m| *m != postern_auth::sasl::Mechanism::Login)
            .map(|m| m.name())
            .collect()
    }

    fn capa(&mut self) {
        let sasl = format!("SASL {}", self.sasl_mechanisms().join(" "));
        let mut lines = vec![
            "+OK Capability list follows",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
        ];
        if self.tls.is_none() {
            lines.push("STLS");
        } else if self.principal.is_none() {
            lines.push("USER");
            lines.push(&sasl);
        }
        lines.push("EXPIRE NEVER");
        lines.push("IMPLEMENTATION Postern");
        lines.push(".");
        for l in lines {
            self.conn.send(l);
        }
    }

    /// Marks the messages another session expunged since the last look as gone (one cheap
    /// HIGHESTMODSEQ read when nothing changed).
    async fn sync_gone(&mut self) {
        let Some(d) = self.drop.as_mut() else { return };
        let Ok(now) = self.srv.store.mailbox_modseq(d.mailbox_id).await else {
            return;
        };
        if now.is_some() && now == d.modseq {
            return;
        }
        let exists = match now {
            None => Vec::new(),
            Some(_) => match self.srv.store.existing_uids(d.mailbox_id).await {
                Ok(u) => u,
                Err(_) => return,
            },
        };
        d.mark_gone(&exists);
        d.modseq = now;
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        if self.drop.is_none() {
            return self.authorization(cmd).await;
        }
        if !matches!(cmd, Command::Capa | Command::Noop | Command::Quit) {
            self.sync_gone().await;
        }
        if matches!(cmd, Command::Capa) {
            self.capa();
            return Flow::Continue;
        }
        let Some(d) = self.drop.as_mut() else {
            return self.authorization(cmd).await;
        };
        match d.command(&cmd) {
            Step::Reply(lines) => {
                for l in lines {
                    self.conn.send(&l);
                }
                Flow::Continue
            }
            Step::Error(why) => self.err(why),
            Step::Retrieve { index, top: lines } => self.retrieve(index, lines).await,
            Step::Update { uids } => {
                let (id, acct) = (
                    d.mailbox_id,
                    self.principal.as_ref().map_or(0, |p| p.account_id),
                );
                if !uids.is_empty() {
                    if let Err(e) = self.srv.store.expunge(acct, id, Some(&uids), true).await {
                        tracing::error!(error = %e, "POP3 UPDATE failed");
                        self.conn
                            .send("-ERR [SYS/TEMP] Some deleted messages not removed");
                        return Flow::Close;
                    }
                }
                self.conn.send(&format!(
                    "+OK {} POP3 server signing off",
                    self.srv.hostname
                ));
                Flow::Close
            }
            Step::NotHere => self.err("Command not valid in this state"),
        }
    }

    /// RETR and TOP: the body (or its header and first lines), CRLF line ends, dot-stuffed.
    async fn retrieve(&mut self, index: usize, top_lines: Option<u32>) -> Flow {
        let Some(d) = self.drop.as_ref() else {
            return self.err("Command not valid in this state");
        };
        let m = d.message(index).clone();
        let data = match self.srv.store.body(&m.blob_id).await {
            Ok(b) => b,
            Err(e) => {
                // Expunged by another session between the check and the read: gone for good,
                // not a temporary fault.
                self.sync_gone().await;
                if self.drop.as_ref().is_some_and(|d| d.is_gone(index)) {
                    return self.err("Message was deleted");
                }
                tracing::error!(blob = %m.blob_id, error = %e, "message blob unreadable");
                self.conn
                    .send("-ERR [SYS/TEMP] Message temporarily unavailable");
                return Flow::Continue;
            }
        };
        let size = postern_types::crlf(&data).len();
        let body = match top_lines {
            Some(lines) => top(&data, lines),
            None => data,
        };
        self.conn.send(&format!("+OK {size} octets"));
        multiline(self.conn.0.out(), &body);
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn authorization(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Capa => {
                self.capa();
                Flow::Continue
            }
            Command::Quit => {
                self.conn.send(&format!(
                    "+OK {} POP3 server signing off",
                    self.srv.hostname
                ));
                Flow::Close
            }
            Command::Noop => {
                self.conn.send("+OK");
                Flow::Continue
            }
            Command::Stls => {
                if self.tls.is_some() || self.protocol != Protocol::Pop3 {
                    return self.err("TLS is already active");
                }
                self.conn.send("+OK Begin TLS negotiation");
                match self.conn.start_tls(&self.srv.tls).await {
                    Ok(()) => {
                        self.tls = self.conn.0.tls_info();
                        self.user = None;
                        Flow::Continue
                    }
                    Err(_) => Flow::Close,
                }
            }
            Command::Apop => {
                self.err("APOP is not supported; use USER/PASS or AUTH PLAIN over TLS")
            }
            Command::User(_) | Command::Pass(_) | Command::Auth(..) if self.tls.is_none() => {
                self.err("[AUTH] Authentication requires TLS; use STLS first")
            }
            Command::User(u) => {
                self.user = Some(u);
                self.conn.send("+OK send PASS");
                Flow::Continue
            }
            Command::Pass(p) => {
                let Some(user) = self.user.take() else {
                    return self.err("USER first");
                };
                let pass = SecretString::from(p);
                self.login(&user, &pass, "USER").await
            }
            Command::Auth(None, _) => {
                // Not in RFC 5034, but widely used by clients to probe mechanisms.
                self.conn.send("+OK");
                for m in self.sasl_mechanisms() {
                    self.conn.send(m);
                }
                self.conn.send(".");
                Flow::Continue
            }
            Command::Auth(Some(mech), ir) => {
                use postern_auth::sasl::Mechanism;
                match Mechanism::parse(&mech) {
                    Some(Mechanism::Plain) => {}
                    Some(m) if m.is_multistep() => return self.authenticate_sasl(m, ir).await,
                    _ => return self.err("Unsupported mechanism"),
                }
                // The SASL exchange shared with SMTP and IMAP, framed as `+ challenge` (RFC 5034).
                use postern_auth::sasl::{Exchange, SaslError, Step};
                let fail = |s: &mut Self, e: SaslError| match e {
                    SaslError::Cancelled => s.err("Authentication cancelled"),
                    SaslError::Base64 => s.err("Invalid base64"),
                    SaslError::Malformed => s.err("Malformed PLAIN response"),
                    SaslError::Closed => Flow::Close,
                };
                let initial = ir.map(String::into_bytes);
                let (mut ex, mut step) = match Exchange::start(Mechanism::Plain, initial.as_deref())
                {
                    Ok(x) => x,
                    Err(e) => return fail(self, e),
                };
                let creds = loop {
                    match step {
                        Step::Done(c) => break c,
                        Step::Challenge(ch) => {
                            self.conn.send(&format!("+ {ch}"));
                            if self.conn.flush().await.is_err() {
                                return Flow::Close;
                            }
                            let line = match self.conn.read_line(self.idle()).await {
                                Line::Text(l) => l,
                                _ => return Flow::Close,
                            };
                            step = match ex.step(&line) {
                                Ok(s) => s,
                                Err(e) => return fail(self, e),
                            };
                        }
                    }
                };
                let user = creds.username.clone();
                self.login(&user, &creds.password, "PLAIN").await
            }
            _ => self.err("Command not valid before login"),
        }
    }

    /// AUTH SCRAM-SHA-256(-PLUS), EXTERNAL, OAUTHBEARER and XOAUTH2 (RFC 5034 framing: `+ base64` challenges;
    /// SCRAM's server signature is a last challenge, answered with an empty line).
    async fn authenticate_sasl(
        &mut self,
        mechanism: postern_auth::sasl::Mechanism,
        ir: Option<String>,
    ) -> Flow {
        use postern_auth::sasl::SaslError;
        let initial = match ir.map(|r| postern_auth::sasl::decode_response(r.as_bytes())) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(SaslError::Cancelled)) => return self.err("Authentication cancelled"),
            Some(Err(_)) => return self.err("Invalid base64"),
        };
        let bindings = self.conn.0.channel_bindings().unwrap_or_default();
        let cb = postern_auth::scram::Bindings {
            exporter: bindings.exporter.as_ref().map(|e| &e[..]),
            end_point: bindings.end_point.as_deref(),
        };
        let auth = self.srv.auth.clone();
        let idle = self.idle();
        let (ip, tls) = (self.peer.ip(), self.tls.map(|t| t.version));
        let mut io = Challenger {
            conn: &mut self.conn,
            idle,
        };
        let peer = postern_auth::Peer {
            protocol: Protocol::Pop3,
            remote_ip: ip,
            tls,
        };
        let initial = initial.as_deref().map(|v| &v[..]);
        let cert = io.conn.0.client_cert();
        let end = if mechanism == postern_auth::sasl::Mechanism::External {
            auth.external_exchange(&mut io, initial, cert.as_ref(), peer)
                .await
        } else if mechanism.is_oauth() {
            auth.oauth_exchange(&mut io, mechanism, initial, peer).await
        } else {
            auth.scram_exchange(&mut io, mechanism, initial, cb, peer)
                .await
        };
        match end {
            postern_auth::SaslEnd::Decided(outcome) => self.logged_in(outcome).await,
            postern_auth::SaslEnd::Aborted(SaslError::Closed) => Flow::Close,
            postern_auth::SaslEnd::Aborted(SaslError::Cancelled) => {
                self.err("Authentication cancelled")
            }
            postern_auth::SaslEnd::Aborted(_) => self.err("Malformed SCRAM message"),
        }
    }

    async fn login(&mut self, user: &str, pass: &SecretString, mech: &'static str) -> Flow {
        let outcome = self
            .srv
            .auth
            .authenticate(LoginAttempt {
                username: user,
                password: pass,
                protocol: Protocol::Pop3,
                mechanism: mech,
                remote_ip: self.peer.ip(),
                tls: self.tls.map(|t| t.version),
            })
            .await;
        self.logged_in(outcome).await
    }

    /// What follows a decided login, whatever the mechanism: the reply, and on success the
    /// maildrop lock and listing.
    async fn logged_in(&mut self, outcome: postern_auth::AuthOutcome) -> Flow {
        let p = match outcome.answer(&WORDING) {
            Answer::LoggedIn(p) => p,
            Answer::Retry(text) => {
                self.conn.send(text);
                return Flow::Continue;
            }
            Answer::Close(text) => {
                self.conn.send(text);
                return Flow::Close;
            }
            Answer::Failed(text) => {
                self.auth_failures += 1;
                self.conn.send(text);
                if self.auth_failures >= self.srv.config.max_auth_failures {
                    self.conn.send("-ERR Too many failed logins, closing");
                    return Flow::Close;
                }
                return Flow::Continue;
            }
        };
        match self.srv.store.pop3_enabled(p.account_id).await {
            Ok(true) => {}
            Ok(false) => {
                self.conn
                    .send("-ERR [AUTH] POP3 is disabled for this account; use IMAP");
                return Flow::Close;
            }
            Err(e) => {
                tracing::error!(error = %e, "store error at POP3 login");
                self.conn
                    .send("-ERR [SYS/TEMP] Temporary failure, try again later");
                return Flow::Close;
            }
        }
        let Some(lock) = self.srv.locks.try_lock(p.account_id).await else {
            self.conn
                .send("-ERR [IN-USE] Maildrop is locked by another POP3 session");
            return Flow::Close;
        };
        let inbox = match self.srv.store.get_mailbox(p.account_id, "INBOX").await {
            Ok(Some(b)) => b,
            other => {
                if let Err(e) = other {
                    tracing::error!(error = %e, "store error at POP3 login");
                }
                self.conn.send("-ERR [SYS/TEMP] Maildrop unavailable");
                return Flow::Close;
            }
        };
        let msgs = match self.srv.store.message_list(inbox.id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "store error at POP3 login");
                self.conn.send("-ERR [SYS/TEMP] Maildrop unavailable");
                return Flow::Close;
            }
        };
        let n = msgs.len();
        let size: u64 = msgs.iter().map(|m| m.size).sum();
        self._lock = Some(lock);
        self.drop = Some(Maildrop::new(
            inbox.id,
            inbox.uidvalidity,
            msgs,
            Some(inbox.highest_modseq),
        ));
        let warning = p
            .expiry_warning()
            .map(|w| format!("; {w}"))
            .unwrap_or_default();
        // incident response can end this session from now on
        self.shutdown = self.srv.revocations.token_for(p.account_id, &self.shutdown);
        self.principal = Some(p);
        self.conn.send(&format!(
            "+OK maildrop locked and ready, {n} messages ({size} octets){warning}"
        ));
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_top() {
        let mut out = Vec::new();
        multiline(&mut out, b"a\r\n.b\r\n..\r\nend");
        assert_eq!(out, b"a\r\n..b\r\n...\r\nend\r\n.\r\n");
        let mut bare = Vec::new();
        multiline(&mut bare, b"Subject: t\n\nline1\n.\nafter\n");
        assert_eq!(bare, b"Subject: t\r\n\r\nline1\r\n..\r\nafter\r\n.\r\n");
        let m = b"H: 1\r\nI: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top(m, 0), b"H: 1\r\nI: 2\r\n\r\n");
        assert_eq!(top(m, 2), b"H: 1\r\nI: 2\r\n\r\nl1\r\nl2\r\n");
    }
}
