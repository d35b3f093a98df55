//! The auth core: every login of every protocol is decided here, by [`Authenticator::authenticate`].
//!
//! It knows no database and no protocol: credentials come through the [`CredentialStore`] trait,
//! events leave through the [`AuditSink`] trait, and hashing runs on an injected [`PasswordHasher`].
//! Failures are uniform: unknown user, wrong password and disabled account all return
//! [`AuthOutcome::Failure`] after the same argon2 work (a dummy verification for unknown users), so
//! neither the reply nor its timing reveals whether an account exists. The reason is kept for the
//! audit log only.
#![forbid(unsafe_code)]

pub mod breached;
pub mod hasher;
pub mod policy;
pub mod sasl;

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::SecretString;

pub use breached::BreachedList;
pub use hasher::{Argon2Hasher, HashError, HashPool, PasswordHasher};
pub use policy::{PasswordPolicy, PolicyViolation};

/// What the store holds about a login name.
#[derive(Clone)]
pub struct StoredCredential {
    pub account_id: i64,
    pub address: String,
    /// PHC string.
    pub password_hash: String,
    pub disabled: bool,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("account_id", &self.account_id)
            .field("address", &self.address)
            .field("password_hash", &"[REDACTED]")
            .field("disabled", &self.disabled)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("credential store error: {0}")]
pub struct CredentialStoreError(pub String);

/// Where credentials live. Implemented by the store crate's backends.
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync {
    /// The credential for a normalised (lower-case) login name, if any.
    async fn credential(
        &self,
        login: &str,
    ) -> Result<Option<StoredCredential>, CredentialStoreError>;
}

/// The authenticated identity of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account_id: i64,
    pub address: String,
}

/// One login attempt, as the protocol session saw it.
pub struct LoginAttempt<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
    /// "smtp", "submission", "submissions", later "imap", "pop3".
    pub protocol: &'static str,
    /// "PLAIN", "LOGIN", ...
    pub mechanism: &'static str,
    pub remote_ip: IpAddr,
    /// TLS version, if the connection is encrypted.
    pub tls: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Success(Principal),
    /// Wrong password, unknown user or disabled account: the client is told nothing more.
    Failure,
    /// The server could not decide now (verification slots busy, store unavailable).
    TemporaryFailure,
}

/// Why an attempt failed; for the audit log only, never for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    UnknownUser,
    BadPassword,
    Disabled,
    Busy,
    StoreError,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UnknownUser => "unknown_user",
            FailureReason::BadPassword => "bad_password",
            FailureReason::Disabled => "disabled",
            FailureReason::Busy => "busy",
            FailureReason::StoreError => "store_error",
        }
    }
}

/// An auth event for the audit log. Carries no secret.
#[derive(Debug, Clone)]
pub struct AuthEvent {
    pub protocol: &'static str,
    pub mechanism: &'static str,
    /// The login name as given (control characters removed, at most 128 characters).
    pub username: String,
    pub account_id: Option<i64>,
    pub remote_ip: IpAddr,
    pub tls: Option<&'static str>,
    pub result: Result<(), FailureReason>,
}

/// Receives auth events. The default sink writes them to the structured log (target `postern::audit`).
pub trait AuditSink: Send + Sync {
    fn auth(&self, event: &AuthEvent);
}

/// Writes audit events as structured log lines.
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn auth(&self, e: &AuthEvent) {
        match e.result {
            Ok(()) => tracing::info!(
                target: "postern::audit",
                event = "auth",
                result = "ok",
                protocol = e.protocol,
                mechanism = e.mechanism,
                user = %e.username,
                account_id = e.account_id,
                ip = %e.remote_ip,
                tls = e.tls.unwrap_or("none"),
            ),
            Err(reason) => tracing::warn!(
                target: "postern::audit",
                event = "auth",
                result = "failed",
                reason = reason.as_str(),
                protocol = e.protocol,
                mechanism = e.mechanism,
                user = %e.username,
                account_id = e.account_id,
                ip = %e.remote_ip,
                tls = e.tls.unwrap_or("none"),
            ),
        }
    }
}

/// A login name cleaned for logs: no control characters (no log injection), bounded length.
pub fn loggable_username(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(128).collect()
}

pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    pool: HashPool,
    audit: Arc<dyn AuditSink>,
    /// A PHC string of a random password, verified against for unknown users.
    dummy_hash: String,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn CredentialStore>,
        pool: HashPool,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self, HashError> {
        let random: [u8; 32] = rand::random();
        let dummy_hash = pool.hasher().hash(&random)?;
        Ok(Authenticator {
            store,
            pool,
            audit,
            dummy_hash,
        })
    }

    pub fn pool(&self) -> &HashPool {
        &self.pool
    }

    /// Decides one login attempt and records it in the audit log.
    pub async fn authenticate(&self, attempt: LoginAttempt<'_>) -> AuthOutcome {
        let login = attempt.username.trim().to_lowercase();
        let (outcome, account_id, result) = self.decide(&login, attempt.password).await;
        self.audit.auth(&AuthEvent {
            protocol: attempt.protocol,
            mechanism: attempt.mechanism,
            username: loggable_username(attempt.username),
            account_id,
            remote_ip: attempt.remote_ip,
            tls: attempt.tls,
            result,
        });
        outcome
    }

    async fn decide(
        &self,
        login: &str,
        password: &SecretString,
    ) -> (AuthOutcome, Option<i64>, Result<(), FailureReason>) {
        let cred = match self.store.credential(login).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "credential look-up failed");
                return (
                    AuthOutcome::TemporaryFailure,
                    None,
                    Err(FailureReason::StoreError),
                );
            }
        };
        let (phc, account) = match &cred {
            Some(c) => (c.password_hash.clone(), Some(c.account_id)),
            None => (self.dummy_hash.clone(), None),
        };
        // The hash is verified even for disabled accounts so that timing reveals nothing.
        let matched = match self.pool.verify(password, phc).await {
            Ok(m) => m,
            Err(_) => {
                return (
                    AuthOutcome::TemporaryFailure,
                    account,
                    Err(FailureReason::Busy),
                )
            }
        };
        match cred {
            None => (AuthOutcome::Failure, None, Err(FailureReason::UnknownUser)),
            Some(c) if !matched => (
                AuthOutcome::Failure,
                Some(c.account_id),
                Err(FailureReason::BadPassword),
            ),
            Some(c) if c.disabled => (
                AuthOutcome::Failure,
                Some(c.account_id),
                Err(FailureReason::Disabled),
            ),
            Some(c) => (
                AuthOutcome::Success(Principal {
                    account_id: c.account_id,
                    address: c.address,
                }),
                Some(c.account_id),
                Ok(()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    struct MemStore(Vec<StoredCredential>);
    #[async_trait::async_trait]
    impl CredentialStore for MemStore {
        async fn credential(
            &self,
            login: &str,
        ) -> Result<Option<StoredCredential>, CredentialStoreError> {
            Ok(self.0.iter().find(|c| c.address == login).cloned())
        }
    }
    #[derive(Default)]
    struct Events(Mutex<Vec<AuthEvent>>);
    impl AuditSink for Events {
        fn auth(&self, e: &AuthEvent) {
            self.0.lock().unwrap().push(e.clone());
        }
    }

    #[tokio::test]
    async fn uniform_failures_and_audit_reasons() {
        let hasher = Arc::new(Argon2Hasher::new(64, 1, 1).unwrap());
        let phc = hasher.hash(b"right password").unwrap();
        let store = MemStore(vec![
            StoredCredential {
                account_id: 1,
                address: "a@x.test".into(),
                password_hash: phc.clone(),
                disabled: false,
            },
            StoredCredential {
                account_id: 2,
                address: "d@x.test".into(),
                password_hash: phc,
                disabled: true,
            },
        ]);
        let events = Arc::new(Events::default());
        let auth = Authenticator::new(
            Arc::new(store),
            HashPool::new(hasher, 2, Duration::from_secs(1)),
            events.clone(),
        )
        .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let try_login = |user: &'static str, pw: &'static str| {
            let auth = &auth;
            async move {
                let pw = SecretString::from(pw);
                auth.authenticate(LoginAttempt {
                    username: user,
                    password: &pw,
                    protocol: "submission",
                    mechanism: "PLAIN",
                    remote_ip: ip,
                    tls: Some("TLSv1.3"),
                })
                .await
            }
        };
        assert_eq!(
            try_login("A@X.test", "right password").await,
            AuthOutcome::Success(Principal {
                account_id: 1,
                address: "a@x.test".into()
            })
        );
        assert_eq!(try_login("a@x.test", "wrong").await, AuthOutcome::Failure);
        assert_eq!(
            try_login("nobody@x.test", "right password").await,
            AuthOutcome::Failure
        );
        assert_eq!(
            try_login("d@x.test", "right password").await,
            AuthOutcome::Failure
        );
        let reasons: Vec<_> = events.0.lock().unwrap().iter().map(|e| e.result).collect();
        assert_eq!(
            reasons,
            vec![
                Ok(()),
                Err(FailureReason::BadPassword),
                Err(FailureReason::UnknownUser),
                Err(FailureReason::Disabled)
            ]
        );
    }

    #[test]
    fn usernames_are_cleaned_for_logs() {
        assert_eq!(loggable_username("a\r\nb\x1b[31m"), "ab[31m");
        assert_eq!(loggable_username(&"x".repeat(500)).len(), 128);
    }
}
