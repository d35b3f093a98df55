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
pub mod guard;
use guard::Clock as _;
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
    /// If not empty, logins are accepted only from these networks.
    pub allowed_networks: Vec<guard::Cidr>,
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
    /// The source is banned (now or by this very failure): answer with a temporary failure and
    /// disconnect. No password was hashed for it.
    Refused,
}

/// Why an attempt failed; for the audit log only, never for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    UnknownUser,
    BadPassword,
    Disabled,
    Busy,
    StoreError,
    /// The source is banned.
    Banned,
    /// The account is locked for unknown clients.
    Locked,
    /// The password was right but the source is outside the account's allowed networks.
    NetworkNotAllowed,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UnknownUser => "unknown_user",
            FailureReason::BadPassword => "bad_password",
            FailureReason::Disabled => "disabled",
            FailureReason::Busy => "busy",
            FailureReason::StoreError => "store_error",
            FailureReason::Banned => "banned",
            FailureReason::Locked => "locked",
            FailureReason::NetworkNotAllowed => "network_not_allowed",
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
    /// Other security events: bans, lockouts. Default: the log only.
    fn note(&self, event: &'static str, ip: Option<IpAddr>, username: Option<&str>, detail: &str) {
        tracing::warn!(target: "postern::audit", event, ip = ?ip, user = ?username, detail, "security event");
    }
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
    cache: VerifiedCache,
    guard: Arc<guard::Guard>,
}

/// Recently verified credentials, so that clients that reconnect often (IMAP clients, apps that
/// send mail) do not pay an argon2 verification each time. An entry holds only a keyed hash
/// (HMAC-SHA-256 with a random per-process key) of login and password, never the password or an
/// unkeyed hash of it, plus the PHC string it was verified against: a password change (new PHC),
/// a disabled account (checked on every attempt) or the TTL ends its use.
struct VerifiedCache {
    key: zeroize::Zeroizing<[u8; 32]>,
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    mac: [u8; 32],
    phc: String,
    expires: std::time::Instant,
}

/// Upper bound on cached entries (about 150 bytes each).
const CACHE_MAX: usize = 100_000;

impl VerifiedCache {
    fn new(ttl: std::time::Duration) -> Self {
        VerifiedCache {
            key: zeroize::Zeroizing::new(rand::random()),
            ttl,
            entries: Default::default(),
        }
    }

    fn mac(&self, login: &str, password: &SecretString) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key[..])
            .expect("HMAC takes any key length");
        m.update(login.as_bytes());
        m.update(&[0]);
        m.update(secrecy::ExposeSecret::expose_secret(password).as_bytes());
        m.finalize().into_bytes().into()
    }

    fn hit(&self, login: &str, password: &SecretString, phc: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mac = self.mac(login, password);
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(login) {
            Some(e) if e.expires <= std::time::Instant::now() || e.phc != phc => {
                map.remove(login);
                false
            }
            Some(e) => subtle::ConstantTimeEq::ct_eq(&e.mac[..], &mac[..]).into(),
            None => false,
        }
    }

    fn insert(&self, login: &str, password: &SecretString, phc: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let mac = self.mac(login, password);
        let now = std::time::Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.retain(|_, e| e.expires > now);
            if map.len() >= CACHE_MAX {
                return;
            }
        }
        map.insert(
            login.to_owned(),
            CacheEntry {
                mac,
                phc: phc.to_owned(),
                expires: now + self.ttl,
            },
        );
    }
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
            cache: VerifiedCache::new(std::time::Duration::from_secs(300)),
            guard: Arc::new(guard::Guard::new(
                guard::GuardConfig::default(),
                Arc::new(guard::SystemClock),
                None,
            )),
        })
    }

    /// Uses this throttling/ban guard instead of the default one.
    pub fn with_guard(mut self, guard: Arc<guard::Guard>) -> Self {
        self.guard = guard;
        self
    }

    pub fn guard(&self) -> &Arc<guard::Guard> {
        &self.guard
    }

    /// Records a security event other than a login (send limit hit, ...) in the audit log.
    pub fn note(
        &self,
        event: &'static str,
        ip: Option<IpAddr>,
        username: Option<&str>,
        detail: &str,
    ) {
        self.audit.note(event, ip, username, detail);
    }

    fn guard_now(&self) -> u64 {
        guard::SystemClock.now()
    }

    /// Sets how long a verified password is remembered (0 turns the cache off).
    pub fn with_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.cache = VerifiedCache::new(ttl);
        self
    }

    pub fn pool(&self) -> &HashPool {
        &self.pool
    }

    /// Decides one login attempt and records it in the audit log.
    pub async fn authenticate(&self, attempt: LoginAttempt<'_>) -> AuthOutcome {
        let login = attempt.username.trim().to_lowercase();
        let ip = attempt.remote_ip;
        // The guard decides before any hashing: a banned source or a locked account (for an
        // unknown source) costs no argon2 work.
        let (mut outcome, account_id, result) = match self.guard.check(ip, &login) {
            guard::Verdict::Banned => (AuthOutcome::Refused, None, Err(FailureReason::Banned)),
            guard::Verdict::Locked => (AuthOutcome::Failure, None, Err(FailureReason::Locked)),
            guard::Verdict::Allow => self.decide(&login, attempt.password, ip).await,
        };
        match (&outcome, result) {
            (AuthOutcome::Success(_), _) => self.guard.success(ip, &login),
            (AuthOutcome::Failure, Err(r)) if r != FailureReason::Locked => {
                let effect = self.guard.failure(ip, &login, attempt.password).await;
                if let Some(ban) = &effect.banned {
                    self.audit.note(
                        "ban",
                        Some(ip),
                        Some(&loggable_username(&login)),
                        &format!(
                            "{} banned for {} s (offence {}): {}",
                            ban.target,
                            ban.until.saturating_sub(self.guard_now()),
                            ban.offences,
                            ban.reason
                        ),
                    );
                    outcome = AuthOutcome::Refused;
                }
                if effect.locked {
                    self.audit.note(
                        "lockout",
                        Some(ip),
                        Some(&loggable_username(&login)),
                        "account locked for unknown clients",
                    );
                }
                if effect.delay_ms > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(effect.delay_ms)).await;
                }
            }
            (AuthOutcome::Failure, _) => {
                let d = self.guard.config().failure_delay_max_ms;
                tokio::time::sleep(std::time::Duration::from_millis(d)).await;
            }
            _ => {}
        }
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
        ip: IpAddr,
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
        let outside = |c: &StoredCredential| {
            !c.allowed_networks.is_empty() && !c.allowed_networks.iter().any(|n| n.contains(ip))
        };
        if let Some(c) = &cred {
            if !c.disabled && !outside(c) && self.cache.hit(login, password, &c.password_hash) {
                return (
                    AuthOutcome::Success(Principal {
                        account_id: c.account_id,
                        address: c.address.clone(),
                    }),
                    Some(c.account_id),
                    Ok(()),
                );
            }
        }
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
            // Checked after the hash so that the reply and its timing are those of a wrong
            // password: an outsider learns nothing about the restriction.
            Some(c) if outside(&c) => (
                AuthOutcome::Failure,
                Some(c.account_id),
                Err(FailureReason::NetworkNotAllowed),
            ),
            Some(c) => {
                self.cache.insert(login, password, &c.password_hash);
                (
                    AuthOutcome::Success(Principal {
                        account_id: c.account_id,
                        address: c.address,
                    }),
                    Some(c.account_id),
                    Ok(()),
                )
            }
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
                allowed_networks: vec![],
            },
            StoredCredential {
                account_id: 2,
                address: "d@x.test".into(),
                password_hash: phc,
                disabled: true,
                allowed_networks: vec![],
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

    /// A store whose credential can be changed between attempts.
    struct MutStore(Mutex<StoredCredential>);
    #[async_trait::async_trait]
    impl CredentialStore for MutStore {
        async fn credential(
            &self,
            login: &str,
        ) -> Result<Option<StoredCredential>, CredentialStoreError> {
            let c = self.0.lock().unwrap().clone();
            Ok((c.address == login).then_some(c))
        }
    }

    /// Counts verifications, to see the cache at work.
    struct Counting(Argon2Hasher, std::sync::atomic::AtomicUsize);
    impl PasswordHasher for Counting {
        fn hash(&self, pw: &[u8]) -> Result<String, HashError> {
            self.0.hash(pw)
        }
        fn verify(&self, pw: &[u8], phc: &str) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.verify(pw, phc)
        }
    }

    #[tokio::test]
    async fn cache_skips_argon2_and_is_void_after_change_or_disable() {
        let hasher = Arc::new(Counting(
            Argon2Hasher::new(64, 1, 1).unwrap(),
            Default::default(),
        ));
        let old = hasher.hash(b"old password").unwrap();
        let store = Arc::new(MutStore(Mutex::new(StoredCredential {
            account_id: 1,
            address: "a@x.test".into(),
            password_hash: old,
            disabled: false,
            allowed_networks: vec![],
        })));
        let auth = Authenticator::new(
            store.clone(),
            HashPool::new(hasher.clone(), 2, Duration::from_secs(1)),
            Arc::new(TracingAudit),
        )
        .unwrap()
        .with_cache_ttl(Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let login = |pw: &'static str| {
            let auth = &auth;
            async move {
                let pw = SecretString::from(pw);
                auth.authenticate(LoginAttempt {
                    username: "a@x.test",
                    password: &pw,
                    protocol: "imap",
                    mechanism: "PLAIN",
                    remote_ip: ip,
                    tls: Some("TLSv1.3"),
                })
                .await
            }
        };
        let count = || hasher.1.load(std::sync::atomic::Ordering::SeqCst);
        let base = count();
        assert!(matches!(
            login("old password").await,
            AuthOutcome::Success(_)
        ));
        assert_eq!(count(), base + 1);
        assert!(matches!(
            login("old password").await,
            AuthOutcome::Success(_)
        ));
        assert_eq!(count(), base + 1, "second login must come from the cache");
        // a wrong password is never answered from the cache
        assert_eq!(login("other password").await, AuthOutcome::Failure);
        assert_eq!(count(), base + 2);
        // disabled: refused although cached
        store.0.lock().unwrap().disabled = true;
        assert_eq!(login("old password").await, AuthOutcome::Failure);
        store.0.lock().unwrap().disabled = false;
        // password changed: the old one no longer works, cache or not
        store.0.lock().unwrap().password_hash = hasher.hash(b"new password").unwrap();
        assert_eq!(login("old password").await, AuthOutcome::Failure);
        assert!(matches!(
            login("new password").await,
            AuthOutcome::Success(_)
        ));
    }

    #[test]
    fn usernames_are_cleaned_for_logs() {
        assert_eq!(loggable_username("a\r\nb\x1b[31m"), "ab[31m");
        assert_eq!(loggable_username(&"x".repeat(500)).len(), 128);
    }
}
