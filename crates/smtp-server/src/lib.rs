//! SMTP server: inbound MX (port 25), submission with STARTTLS (587) and implicit TLS (465).
//!
//! Commands are parsed by `smtp-proto`; DATA by the smuggling-safe [`data::DataReader`]; message
//! headers by `mail-parser`. Storage is reached through the [`MailBackend`] trait and logins through
//! the auth core, so this crate knows neither the database nor how passwords are checked. Port 25
//! checks (SPF, DKIM, ARC, DMARC, own domains, greylisting, DNS block lists) are [`inbound`].
#![forbid(unsafe_code)]

pub mod binarymime;
pub mod conn;
pub mod data;
pub mod inbound;
pub mod limits;
pub mod session;

use std::sync::Arc;

use postern_auth::{Authenticator, Principal};
use postern_config::{Protocol, SmtpConfig};
use postern_net::TlsAcceptor;
use postern_types::EmailAddress;

pub use session::{handle_connection, serve_stream};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub message: String,
    /// Storage is full: the reply is 452 4.3.1 (RFC 3463 "mail system full").
    pub storage_full: bool,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> BackendError {
        BackendError {
            message: message.into(),
            storage_full: false,
        }
    }
}

/// A message accepted by a session, ready to be stored durably.
pub struct Delivery {
    /// Envelope sender ("" for the null reverse-path).
    pub sender: String,
    /// The authenticated account that submitted it, if any.
    pub account_id: Option<i64>,
    /// Submitted by an authenticated principal (an account or an application): DKIM-signed.
    pub authenticated: bool,
    /// Local accounts to deliver to (deduplicated).
    pub local: Vec<i64>,
    /// Remote recipients to queue.
    pub remote: Vec<String>,
    /// The Received header this server adds (with CRLF).
    pub received: String,
    /// The message as received (CRLF line endings, dot-stuffing removed).
    pub body: Vec<u8>,
    /// DMARC quarantined it: local recipients get it in their junk mailbox.
    pub quarantine: bool,
    /// Who sent it, for the audit log's record of submitted mail: the client's address, the
    /// listener, the login (account address or application name) and our message id.
    pub client_ip: std::net::IpAddr,
    pub listener: &'static str,
    pub login: Option<String>,
    pub message_id: String,
}

/// The greylisting decision for one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreyCheck {
    /// Let through; the reason is for the log.
    Pass(&'static str),
    /// Deferred; a retry may pass in this many seconds.
    Defer(u64),
}

/// The storage side of the SMTP server.
#[async_trait::async_trait]
pub trait MailBackend: Send + Sync {
    async fn is_local_domain(&self, domain: &str) -> Result<bool, BackendError>;
    /// The account that receives mail for `address` (account address or alias).
    async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Option<i64>, BackendError>;
    /// Whether the account's mailbox is full (at or over its storage quota).
    async fn mailbox_full(&self, _account_id: i64) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// What the principal may use as envelope sender and in From: addresses, or "@domain" for
    /// every address of a domain (see [`postern_types::sender_allowed`]).
    async fn allowed_senders(&self, principal: &Principal) -> Result<Vec<String>, BackendError>;
    /// Whether the account opted in to TLS and login details in Received headers.
    async fn received_details(&self, principal: &Principal) -> Result<bool, BackendError>;
    /// Stores the message durably (local mailboxes and/or the outbound queue). When this returns
    /// Ok, the message must survive a crash.
    async fn deliver(&self, delivery: Delivery) -> Result<(), BackendError>;
    /// Greylisting state (`network` is the client's /24 or /64; `authenticated_domain` the
    /// sender's domain when SPF passed for it in this session).
    async fn greylist(
        &self,
        _network: &str,
        _sender: &str,
        _recipient: &str,
        _authenticated_domain: Option<&str>,
    ) -> Result<GreyCheck, BackendError> {
        Ok(GreyCheck::Pass("greylisting not kept by this backend"))
    }
    /// Mail from `domain` authenticated (SPF or aligned DKIM pass): greylisting lets its later
    /// mail through whenever SPF passes for it.
    async fn sender_authenticated(&self, _domain: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// One DMARC evaluation of inbound mail, for the aggregate report to `domain`'s `rua`
    /// (RFC 7489 7.2): `policy` and `record` are mail-auth's report types as JSON.
    async fn dmarc_evaluated(
        &self,
        _domain: &str,
        _rua: &[String],
        _policy: &str,
        _record: &str,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// Per-principal overrides of the hourly send limits (messages, recipients); None = default.
    async fn send_limits(
        &self,
        _principal: &Principal,
    ) -> Result<(Option<u32>, Option<u32>), BackendError> {
        Ok((None, None))
    }
}

/// Everything a session needs, shared by all sessions of all SMTP listeners.
pub struct SmtpServer {
    pub hostname: String,
    pub config: SmtpConfig,
    pub backend: Arc<dyn MailBackend>,
    pub auth: Arc<Authenticator>,
    pub tls: TlsAcceptor,
    pub send_limiter: limits::SendLimiter,
    /// Checks on port 25 (None: `[inbound] checks = false`, nothing checked, no
    /// Authentication-Results header).
    pub inbound: Option<inbound::Inbound>,
    /// Greylisting on port 25.
    pub greylist: bool,
    /// Trusted networks (skip checks and greylisting), also when checks are off.
    pub trusted_networks: Vec<postern_types::Cidr>,
    /// Live sessions by account, for incident response (shared with IMAP and POP3).
    pub revocations: Arc<postern_net::Revocations>,
}

/// The policy of one listener, derived from its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerKind {
    pub protocol: Protocol,
}

impl ListenerKind {
    pub fn is_submission(self) -> bool {
        matches!(self.protocol, Protocol::Submission | Protocol::Submissions)
    }
    pub fn implicit_tls(self) -> bool {
        self.protocol == Protocol::Submissions
    }
}
