//! `postern audit`: checks a live installation against the practices of `docs/security.md` and
//! explains each finding (what was found, why it matters, how to fix it, the setting).
//!
//! Three kinds of check:
//! - **from the outside**, as a client would see it: every listener is connected to (TLS
//!   versions and suites negotiated, a TLS 1.0 and a weak-suite-only hello that must be refused,
//!   AUTH or LOGIN offered before TLS, an open-relay attempt on the MX port that stops at RCPT);
//! - **published DNS** through the configured resolver against what `postern dns` says to publish
//!   (MX, SPF, DKIM, DMARC and its policy, MTA-STS, TLS-RPT, forward-confirmed PTR);
//! - **the installation**: certificate, accounts without a second factor, stale or endless app
//!   passwords, administrators without TOTP, API keys near expiry, password policy, POP3, secrets
//!   in clear, master key placement and permissions, data directory permissions, audit chain,
//!   backups, and the age of this build.
//!
//! Severity: high (fix now: exposed credentials or mail, or a broken promise such as the audit
//! chain), medium (weakens a defence), low (hardening), info. The exit status is 1 when any high
//! finding exists, so the command fits a cron job or a CI check.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use postern_config::Config;
use postern_store::Store;
use postern_types::Protocol;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use postern_dns::hickory_resolver::proto::rr::RData;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier (for automation and for silencing in scripts).
    pub id: String,
    pub severity: Severity,
    pub title: String,
    /// What was found.
    pub what: String,
    /// Why it matters.
    pub why: String,
    /// How to fix it.
    pub fix: String,
    /// The setting or command that governs it.
    pub setting: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Checks that ran and found nothing to report.
    pub passed: Vec<String>,
}

impl Report {
    // Every finding has all seven parts; positional arguments keep the ~60 call sites readable
    // as the sentences they are.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        id: &str,
        severity: Severity,
        title: &str,
        what: String,
        why: &str,
        fix: &str,
        setting: &str,
    ) {
        self.findings.push(Finding {
            id: id.to_owned(),
            severity,
            title: title.to_owned(),
            what,
            why: why.to_owned(),
            fix: fix.to_owned(),
            setting: setting.to_owned(),
        });
    }

    fn ok(&mut self, what: impl Into<String>) {
        self.passed.push(what.into());
    }

    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// The text form: for a person who is not a mail expert.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut f = self.findings.clone();
        f.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        for x in &f {
            out.push_str(&format!(
                "[{}] {}\n    found:   {}\n    why:     {}\n    fix:     {}\n    setting: {}\n\n",
                x.severity.label(),
                x.title,
                x.what,
                x.why,
                x.fix,
                x.setting
            ));
        }
        let count = |s| f.iter().filter(|x| x.severity == s).count();
        out.push_str(&format!(
            "{} checks passed; findings: {} high, {} medium, {} low, {} info\n",
            self.passed.len(),
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low),
            count(Severity::Info)
        ));
        out
    }
}

pub struct Options {
    /// Skip the listener probes (no connection is made).
    pub no_connect: bool,
    /// Skip the DNS checks.
    pub no_dns: bool,
}

pub async fn run(cfg: &Config, store: &Store, opts: &Options) -> Result<Report> {
    let mut r = Report::default();
    certificate(cfg, &mut r);
    settings(cfg, &mut r);
    cluster_links(cfg, &mut r);
    files(cfg, &mut r);
    credentials(store, &mut r).await?;
    audit_chain(cfg, store, &mut r).await;
    backups(cfg, store, &mut r).await?;
    version(&mut r);
    if !opts.no_connect {
        listeners(cfg, &mut r).await;
    }
    if !opts.no_dns {
        dns(cfg, store, &mut r).await?;
    }
    Ok(r)
}

// ---------------------------------------------------------------- the certificate

fn certificate(cfg: &Config, r: &mut Report) {
    let path = cfg.path(&cfg.tls.cert);
    let facts = match postern_net::tls::certificate_facts(&path) {
        Ok(f) => f,
        Err(e) => {
            r.add("tls.certificate_unreadable", Severity::High, "The server certificate cannot be read",
                format!("{e}"), "Without a certificate no client can connect over TLS, and no credential can be sent.",
                "Point [tls] cert at the PEM chain of the server's certificate.", "[tls] cert");
            return;
        }
    };
    let now = postern_store::now();
    let days = (facts.not_after - now) / 86400;
    if facts.not_after < now {
        r.add("tls.certificate_expired", Severity::High, "The server certificate has expired",
            format!("it expired {} days ago", -days),
            "Clients refuse an expired certificate, or users learn to click through warnings, which is how credentials get phished.",
            "Renew it and send SIGHUP to the server (or let [acme] do it).", "[acme], [tls] cert, key");
    } else if days < 14 {
        r.add(
            "tls.certificate_expiring",
            Severity::Medium,
            "The server certificate expires soon",
            format!("it expires in {days} days"),
            "When it expires every client connection fails or warns.",
            "Renew it now; automate renewal.",
            "[tls] cert, key",
        );
    } else {
        r.ok(format!("certificate valid for {days} more days"));
    }
    if facts.self_signed {
        r.add("tls.self_signed", Severity::Medium, "The server certificate is self-signed",
            format!("issuer = subject = {}", facts.issuer),
            "Mail clients cannot tell your server from an impostor; users who accept the warning once accept it from an attacker too. \
             Senders with MTA-STS or DANE toward you need a certificate they can verify.",
            "Let Postern get one from Let's Encrypt ([acme] directory), or install a CA certificate and `kill -HUP` the server; or publish a DANE TLSA record in a DNSSEC-signed zone.",
            "[acme], [tls] cert, key");
    } else {
        r.ok("certificate issued by a CA");
    }
    let host = &cfg.server.hostname;
    if facts
        .names
        .iter()
        .any(|n| postern_net::tls::name_matches(n, host))
    {
        r.ok(format!("certificate names {host}"));
    } else {
        r.add("tls.name_mismatch", Severity::High, "The certificate does not name this server",
            format!("host name {host}; certificate names: {}", facts.names.join(", ")),
            "Clients that verify (as they should) refuse to connect; the rest cannot detect an impostor.",
            "Get a certificate for the host name, or set [server] hostname to the name it covers.", "[server] hostname, [tls] cert");
    }
}

// ---------------------------------------------------------------- settings

fn settings(cfg: &Config, r: &mut Report) {
    if cfg.server.user.as_deref() == Some("root") {
        r.add("server.root", Severity::High, "The server runs as root",
            "[server] user = \"root\"".into(),
            "A flaw in any protocol parser would then give an attacker the whole machine.",
            "Create a service user (useradd --system postern; chown -R postern: DATA_DIR) and set [server] user to it, or run the shipped systemd unit.",
            "[server] user");
    } else {
        r.ok("the server does not run as root");
    }
    if cfg.secrets.allow_plaintext_secrets {
        r.add("secrets.plaintext_allowed", Severity::High, "Secrets in clear are allowed in the configuration",
            "[secrets] allow_plaintext_secrets = true".into(),
            "A configuration file is copied, backed up and pasted into tickets; a password in it leaks with it.",
            "Move each secret to `postern secret set NAME --stdin` (then secret:NAME), env:, file: or vault:, and remove the setting.",
            "[secrets] allow_plaintext_secrets");
    } else {
        r.ok("no secret in clear in the configuration");
    }
    let p = &cfg.password_policy;
    let d = postern_config::PasswordPolicyConfig::default();
    let mut weaker = Vec::new();
    if p.min_length < d.min_length {
        weaker.push(format!(
            "min_length {} (default {})",
            p.min_length, d.min_length
        ));
    }
    if p.min_score < d.min_score {
        weaker.push(format!(
            "min_score {} (default {})",
            p.min_score, d.min_score
        ));
    }
    if p.history < d.history {
        weaker.push(format!("history {} (default {})", p.history, d.history));
    }
    if weaker.is_empty() {
        r.ok("password policy at least the default");
    } else {
        r.add("password_policy.weaker", Severity::Medium, "The password policy is weaker than the default",
            weaker.join(", "),
            "Short or guessable passwords fall to the brute force and password spraying every mail server sees daily.",
            "Restore the defaults (remove the settings) or raise them.", "[password_policy]");
    }
    match &p.breached_passwords_file {
        None => r.add("password_policy.no_breached_list", Severity::Low, "No breached-password list",
            "[password_policy] breached_passwords_file is not set".into(),
            "Passwords from earlier breaches are the first ones attackers try; the built-in list holds only the most common ones.",
            "Download the Have I Been Pwned Pwned Passwords file (SHA-1, ordered by hash) and set its path.",
            "[password_policy] breached_passwords_file"),
        Some(f) if !cfg.path(f).exists() => r.add("password_policy.breached_list_missing", Severity::Medium,
            "The breached-password list is missing", format!("{} does not exist", cfg.path(f).display()),
            "Breached passwords are accepted while the file is missing.", "Restore the file or fix the path.",
            "[password_policy] breached_passwords_file"),
        Some(_) => r.ok("breached-password list configured"),
    }
    let pop3 = cfg
        .listeners
        .iter()
        .any(|l| matches!(l.protocol, Protocol::Pop3 | Protocol::Pop3s));
    if cfg.pop3.enabled && pop3 {
        r.add("pop3.enabled", Severity::Low, "POP3 is enabled",
            "a POP3 listener is configured and [pop3] enabled = true".into(),
            "POP3 has no second session state and invites clients to download and delete; IMAP is the better default. One protocol less is one attack surface less.",
            "If no client needs it, set [pop3] enabled = false (or per account: `postern user pop3 ADDRESS off`).",
            "[pop3] enabled");
    } else {
        r.ok("POP3 off");
    }
    if !cfg.inbound.checks {
        r.add("inbound.checks_off", Severity::High, "Inbound SPF/DKIM/DMARC checks are off",
            "[inbound] checks = false".into(),
            "Anyone on the internet can send mail that claims to be from your own domain or your bank to your users.",
            "Remove the setting (checks are on by default).", "[inbound] checks");
    } else {
        r.ok("inbound authentication checks on");
    }
    if cfg.admin.listen.is_some_and(|a| !a.ip().is_loopback()) && cfg.admin.allow.is_empty() {
        r.add("admin.open", Severity::Medium, "The admin API listens on a public address without an allow list",
            format!("[admin] listen = {}", cfg.admin.listen.map(|a| a.to_string()).unwrap_or_default()),
            "The admin login is then open to the whole internet's password guessing (throttled and banned, but reachable).",
            "Set [admin] allow to the networks administrators use, or keep it on loopback behind a VPN/SSH tunnel.",
            "[admin] listen, allow");
    }
}

/// Whether a URL's host is this machine (a link that never leaves it needs no TLS).
fn local_host(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        // postgres:// and redis:// are not "special" schemes to the URL standard: their
        // hosts, addresses included, come as text.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        None => true,
    }
}

/// The links of a node to PostgreSQL and Redis: encrypted and verified when they leave the machine.
fn cluster_links(cfg: &Config, r: &mut Report) {
    if let Some(db) = cfg
        .storage
        .postgres_url()
        .and_then(|u| url::Url::parse(u).ok())
    {
        let mode = db
            .query_pairs()
            .find(|(k, _)| k == "sslmode")
            .map(|(_, v)| v.into_owned());
        let verified = matches!(mode.as_deref(), Some("verify-full" | "verify-ca"));
        if !verified && !local_host(&db) {
            r.add("storage.database_tls", Severity::High, "The database link is not verified TLS",
                format!("[storage] database on {} with sslmode={}", db.host_str().unwrap_or(""), mode.as_deref().unwrap_or("(default: prefer)")),
                "Password hashes, sealed secrets and every message body cross this link; without a verified certificate anyone on the path can read them or pose as the database.",
                "Append ?sslmode=verify-full&sslrootcert=/path/to/ca.pem to the URL and allow only hostssl connections in pg_hba.conf.",
                "[storage] database");
        } else {
            r.ok("the database link is local or verified TLS");
        }
    }
    if let Some(redis) = cfg
        .cluster
        .redis
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
    {
        if redis.scheme() == "redis" && !local_host(&redis) {
            r.add("cluster.redis_tls", Severity::Medium, "Redis is reached in clear",
                format!("[cluster] redis = {redis}"),
                "The Redis password crosses the network in clear, and whoever can change what the nodes read there can lift bans and reset failure counts.",
                "Serve Redis on TLS and use rediss:// (with [cluster] redis_ca for a private CA).",
                "[cluster] redis, redis_ca");
        } else {
            r.ok("the Redis link is local or TLS");
        }
        if cfg.cluster.redis_password.is_none() {
            r.add("cluster.redis_no_password", Severity::Medium, "Redis takes no password",
                "[cluster] redis_password is not set".into(),
                "Any process that reaches Redis can lift bans, clear failure counts and send false change notifications to every node.",
                "Set requirepass (or an ACL user) in Redis and [cluster] redis_password = \"env:NAME\" (or file:, secret:, vault:).",
                "[cluster] redis_password");
        }
    }
}

// ---------------------------------------------------------------- files and permissions

fn mode(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

fn files(cfg: &Config, r: &mut Report) {
    let data_dir = cfg.data_dir();
    match mode(&data_dir) {
        Some(m) if m & 0o077 != 0 => r.add(
            "files.data_dir_open",
            Severity::High,
            "The data directory can be read by other users",
            format!("{} has mode {m:o}", data_dir.display()),
            "It holds every message, the database of credentials and (by default) the master key.",
            &format!("chmod 700 {}", data_dir.display()),
            "the data directory",
        ),
        Some(_) => r.ok("data directory private (0700)"),
        None => {}
    }
    // Files inside a private (0700) directory are out of other users' reach whatever their own
    // mode; the TLS key and the master key file are refused at start when group or others can
    // read them.
    let mk = &cfg.secrets.master_key;
    if let Some(f) = mk.strip_prefix("file:") {
        let p = cfg.path(Path::new(f));
        if let Some(m) = mode(&p) {
            if m & 0o077 != 0 {
                r.add("secrets.master_key_open", Severity::High, "The master key file can be read by other users",
                    format!("{} has mode {m:o}", p.display()),
                    "Whoever reads it opens every sealed secret (relay passwords, TOTP seeds, DKIM keys).",
                    &format!("chmod 600 {}", p.display()), "[secrets] master_key");
            }
        }
        let beside = p
            .canonicalize()
            .ok()
            .zip(data_dir.canonicalize().ok())
            .is_some_and(|(k, d)| k.starts_with(&d));
        if beside {
            r.add("secrets.master_key_beside_data", Severity::Medium, "The master key lives in the data directory",
                format!("{mk} is inside {}", data_dir.display()),
                "A copy of the data directory (a stolen disk, a careless backup) then carries the key that opens its sealed secrets.",
                "Move the key elsewhere (another disk, an env var from the service manager, or OpenBao/Vault): `postern secret rotate-master-key --to REF`.",
                "[secrets] master_key");
        } else {
            r.ok("master key outside the data directory");
        }
    } else {
        r.ok(format!(
            "master key from {}",
            mk.split(':').next().unwrap_or("")
        ));
    }
}

// ---------------------------------------------------------------- credentials

async fn credentials(store: &Store, r: &mut Report) -> Result<()> {
    let now = postern_store::now();
    let accounts = store.list_accounts().await?;
    let mut no_2fa = Vec::new();
    let mut stale = Vec::new();
    let mut endless = Vec::new();
    for a in accounts.iter().filter(|a| !a.disabled) {
        if !store
            .second_factor_confirmed(&postern_store::totp::account_owner(a.id))
            .await?
        {
            no_2fa.push(a.address.clone());
        }
        for p in store.list_app_passwords(a.id).await? {
            let last = p.last_used_at.unwrap_or(p.created_at);
            if now - last > 90 * 86400 {
                stale.push(format!("{}/{}", a.address, p.name));
            }
            if p.expires_at.is_none() {
                endless.push(format!("{}/{}", a.address, p.name));
            }
        }
    }
    let list = |v: &[String]| {
        let mut s = v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 10 {
            s.push_str(&format!(" and {} more", v.len() - 10));
        }
        s
    };
    if accounts.iter().all(|a| a.disabled) {
        r.ok("no active account yet");
    } else if no_2fa.is_empty() {
        r.ok("every active account has a second factor");
    } else {
        r.add("accounts.no_2fa", Severity::Low, "Accounts without a second factor",
            format!("{} of {} active accounts: {}", no_2fa.len(), accounts.iter().filter(|a| !a.disabled).count(), list(&no_2fa)),
            "With TOTP on, a phished or reused password alone no longer opens the mailbox: mail clients need app passwords, which cannot be phished for the web login.",
            "Ask the users to enrol (`postern user 2fa enroll ADDRESS`).", "postern user 2fa");
    }
    if !stale.is_empty() {
        r.add("app_passwords.unused", Severity::Medium, "App passwords unused for 90 days",
            list(&stale),
            "A credential nobody uses is one nobody would miss, or notice being used by someone else.",
            "Revoke them (`postern app-password revoke ADDRESS NAME`).", "postern app-password");
    } else {
        r.ok("no app password unused for 90 days");
    }
    if !endless.is_empty() {
        r.add("app_passwords.never_expire", Severity::Low, "App passwords that never expire",
            list(&endless),
            "A password copied to a device lives as long as the device, or its backups; an expiry bounds the damage of a lost phone.",
            "Create them with --expires (e.g. 1y) and revoke the endless ones.", "postern app-password create --expires");
    }
    for a in store.list_admins().await?.iter().filter(|a| !a.disabled) {
        if !store
            .second_factor_confirmed(&postern_store::totp::admin_owner(a.id))
            .await?
        {
            r.add("admins.no_totp", Severity::High, "An administrator without TOTP",
                format!("{} ({}) has not enrolled a second factor", a.name, a.role),
                "An administrator's password alone can then create accounts, read the audit log or issue credentials.",
                &format!("Log in to the admin API as {} (enrolment is forced at the first login) or `postern admin reset-2fa {}`.", a.name, a.name),
                "postern admin");
        }
    }
    for k in store.list_api_keys().await? {
        match k.expires_at {
            Some(t) if t < now => {}
            Some(t) if t - now < 14 * 86400 => r.add(
                "api_keys.expiring",
                Severity::Low,
                "An API key expires soon",
                format!(
                    "{} ({}) expires in {} days",
                    k.name,
                    k.role,
                    (t - now) / 86400
                ),
                "The automation using it stops when it expires.",
                "Create a new key and switch the automation to it, then revoke the old one.",
                "POST /api/v1/api-keys",
            ),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- audit chain, backups, version

async fn audit_chain(cfg: &Config, store: &Store, r: &mut Report) {
    let res = async {
        let keys = crate::keys::Keys::load(cfg, store).await?;
        keys.load_audit_key().await?;
        store.verify_audit().await.map_err(anyhow::Error::from)
    }
    .await;
    match res {
        Ok(Ok(n)) => r.ok(format!("audit chain verified ({n} rows)")),
        Ok(Err(e)) => r.add("audit.chain_broken", Severity::High, "The audit log's hash chain is broken",
            e, "Rows were edited or deleted outside Postern: the log can no longer prove what happened (someone may be covering tracks).",
            "Investigate at once: `postern audit-log verify` names the first bad row; compare with the checkpoints (`audit-log verify --checkpoint FILE`) and backups.",
            "postern audit-log verify"),
        Err(e) => r.add("audit.unverifiable", Severity::High, "The audit chain cannot be checked",
            format!("{e:#}"), "Without the master key the chain's HMAC key cannot be opened, and nothing new can be recorded.",
            "Make the master key reachable ([secrets] master_key).", "[secrets] master_key"),
    }
}

async fn backups(cfg: &Config, store: &Store, r: &mut Report) -> Result<()> {
    let now = postern_store::now();
    let last = store.last_audit_event("backup_created").await?;
    let max = cfg.backup.max_age_days as i64;
    match last {
        None => r.add("backup.none", Severity::Medium, "No backup was ever made",
            "no backup_created event in the audit log".into(),
            "A disk failure, a mistaken command or ransomware then loses every mailbox for good.",
            "Make one now (`postern backup create --to FILE --key REF`) and schedule them ([backup] dir, key).",
            "[backup], postern backup"),
        Some(t) if now - t > max * 86400 => r.add("backup.old", Severity::Medium, "The newest backup is old",
            format!("the last backup was made {} days ago (limit {max})", (now - t) / 86400),
            "Everything received since would be lost with the disk.",
            "Check the scheduled backups (log, `backup_failed` audit events) or make one now.", "[backup] interval_hours, max_age_days"),
        Some(t) => r.ok(format!("newest backup {} hours old", (now - t) / 3600)),
    }
    if cfg.backup.dir.is_none() {
        r.add("backup.not_scheduled", Severity::Low, "Backups are not scheduled",
            "[backup] dir and key are not set".into(), "Backups made by hand stop being made.",
            "Set [backup] dir (another disk) and key (an age recipient from `postern backup keygen`).", "[backup]");
    }
    Ok(())
}

fn version(r: &mut Report) {
    let built: i64 = env!("POSTERN_COMMIT_TIME").parse().unwrap_or(0);
    if built == 0 {
        return;
    }
    let days = (postern_store::now() - built) / 86400;
    if days > 180 {
        r.add(
            "version.old",
            Severity::Medium,
            "This build is old",
            format!(
                "postern {} (commit {}) is {days} days old",
                env!("CARGO_PKG_VERSION"),
                env!("POSTERN_COMMIT")
            ),
            "Security fixes since then are missing.",
            "Update Postern.",
            "—",
        );
    } else {
        r.ok(format!("build {days} days old"));
    }
}

// ---------------------------------------------------------------- the listeners, from outside

/// A TLS client that accepts any certificate: the audit examines the certificate itself above,
/// and here only asks what the listener negotiates.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector(version: &'static rustls::SupportedProtocolVersion) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

const TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    async fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.io.read_line(&mut s)).await??;
        if n == 0 {
            anyhow::bail!("connection closed");
        }
        Ok(s.trim_end().to_owned())
    }
    /// An SMTP reply, all its lines.
    async fn reply(&mut self) -> Result<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l.get(4..).unwrap_or("").to_owned());
            if !more {
                return Ok((code, lines));
            }
        }
    }
    async fn send(&mut self, s: &str) -> Result<()> {
        let w = self.io.get_mut();
        tokio::time::timeout(TIMEOUT, async {
            w.write_all(s.as_bytes()).await?;
            w.write_all(b"\r\n").await?;
            w.flush().await
        })
        .await??;
        Ok(())
    }
    /// Lines until one starting with `tag`.
    async fn until(&mut self, tag: &str) -> Result<Vec<String>> {
        let mut v = Vec::new();
        loop {
            let l = self.line().await?;
            let done = l.starts_with(tag);
            v.push(l);
            if done {
                return Ok(v);
            }
        }
    }
    fn into_inner(self) -> Box<dyn Io> {
        self.io.into_inner()
    }
}

fn probe_addr(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, a.port())
}

async fn connect(a: SocketAddr) -> Result<TcpStream> {
    Ok(tokio::time::timeout(TIMEOUT, TcpStream::connect(probe_addr(a))).await??)
}

async fn tls(
    io: Box<dyn Io>,
    version: &'static rustls::SupportedProtocolVersion,
    host: &str,
) -> Result<(Conn, String)> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let s = tokio::time::timeout(TIMEOUT, connector(version).connect(name, io)).await??;
    let suite = s
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    Ok((
        Conn {
            io: BufReader::new(Box::new(s)),
        },
        suite,
    ))
}

/// Up to the point where TLS starts: for implicit TLS at once, for STARTTLS after the greeting
/// and the command. Returns what was offered before TLS (EHLO lines, CAPABILITY, CAPA).
async fn before_tls(p: Protocol, a: SocketAddr) -> Result<(Box<dyn Io>, Vec<String>)> {
    opening(p, a, true).await
}

/// What a listener offers before TLS, without starting it.
async fn offered_in_clear(p: Protocol, a: SocketAddr) -> Result<Vec<String>> {
    Ok(opening(p, a, false).await?.1)
}

async fn opening(p: Protocol, a: SocketAddr, starttls: bool) -> Result<(Box<dyn Io>, Vec<String>)> {
    let tcp: Box<dyn Io> = Box::new(connect(a).await?);
    let mut c = Conn {
        io: BufReader::new(tcp),
    };
    let offered = match p {
        Protocol::Submissions | Protocol::Imaps | Protocol::Pop3s => {
            return Ok((c.into_inner(), Vec::new()))
        }
        Protocol::Web => anyhow::bail!("the web portal is not a mail listener"),
        Protocol::Smtp | Protocol::Submission => {
            c.reply().await?;
            c.send("EHLO audit.postern.invalid").await?;
            let (_, lines) = c.reply().await?;
            if !starttls {
                let _ = c.send("QUIT").await;
                return Ok((c.into_inner(), lines));
            }
            c.send("STARTTLS").await?;
            let (code, _) = c.reply().await?;
            anyhow::ensure!(code == 220, "STARTTLS refused ({code})");
            lines
        }
        Protocol::Imap => {
            c.line().await?;
            c.send("a CAPABILITY").await?;
            let caps = c.until("a ").await?;
            if !starttls {
                let _ = c.send("z LOGOUT").await;
                return Ok((c.into_inner(), caps));
            }
            c.send("b STARTTLS").await?;
            let done = c.until("b ").await?;
            anyhow::ensure!(
                done.last().is_some_and(|l| l.starts_with("b OK")),
                "STARTTLS refused"
            );
            caps
        }
        Protocol::Pop3 => {
            c.line().await?;
            c.send("CAPA").await?;
            let caps = c.until(".").await.unwrap_or_default();
            if !starttls {
                let _ = c.send("QUIT").await;
                return Ok((c.into_inner(), caps));
            }
            c.send("STLS").await?;
            let l = c.line().await?;
            anyhow::ensure!(l.starts_with("+OK"), "STLS refused");
            caps
        }
    };
    Ok((c.into_inner(), offered))
}

/// A TLS 1.0 ClientHello, or a TLS 1.2 one offering only weak suites (RC4, 3DES, CBC with
/// SHA-1, export), written by hand since no TLS library will send them. The listener must
/// answer with an alert or close, never a ServerHello.
fn legacy_hello(tls10: bool) -> Vec<u8> {
    let suites: &[u16] = if tls10 {
        // AES-CBC-SHA with RSA, ECDHE-RSA and ECDHE-ECDSA key exchange; 3DES
        &[0xc009, 0xc00a, 0xc013, 0xc014, 0x002f, 0x0035, 0x000a]
    } else {
        // RC4, 3DES, CBC-SHA1 (all key exchanges), export
        &[
            0xc007, 0xc011, 0x0005, 0x0004, 0xc008, 0xc012, 0x000a, 0xc009, 0xc00a, 0xc013, 0xc014,
            0x002f, 0x0035, 0x0003, 0x0008,
        ]
    };
    let mut body = Vec::new();
    body.extend_from_slice(if tls10 { &[3, 1] } else { &[3, 3] });
    body.extend_from_slice(&rand::random::<[u8; 32]>());
    body.push(0); // no session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
                                     // extensions a real client of that era sends, so that a server that would accept the
                                     // suites is not refused for a missing curve or signature list
    let ext: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00,
        0x1d, // supported_groups: P-256, X25519
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x0a, 0x00, 0x08, 0x04, 0x03, 0x04, 0x01, 0x02, 0x03, 0x02,
        0x01, // signature_algorithms
    ];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Whether the listener accepted a legacy hello (answered with a ServerHello).
async fn accepts_legacy(p: Protocol, a: SocketAddr, tls10: bool) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let (mut io, _) = before_tls(p, a).await?;
    io.write_all(&legacy_hello(tls10)).await?;
    io.flush().await?;
    let mut head = [0u8; 6];
    match tokio::time::timeout(TIMEOUT, io.read_exact(&mut head)).await {
        Ok(Ok(_)) => Ok(head[0] == 0x16 && head[5] == 2),
        _ => Ok(false),
    }
}

async fn listeners(cfg: &Config, r: &mut Report) {
    let host = cfg.server.hostname.clone();
    let mut unreachable = Vec::new();
    for l in &cfg.listeners {
        let (p, a) = (l.protocol, l.address);
        let name = format!("{} {}", p.name(), a);
        // what is offered before TLS
        let offered = match offered_in_clear(p, a).await {
            Ok(x) => x,
            Err(e) => {
                unreachable.push(format!("{name} ({e:#})"));
                continue;
            }
        };
        let up: Vec<String> = offered.iter().map(|s| s.to_ascii_uppercase()).collect();
        let auth_in_clear = match p {
            Protocol::Smtp | Protocol::Submission => up.iter().any(|l| l.starts_with("AUTH")),
            Protocol::Imap => {
                up.iter().any(|l| l.contains("AUTH="))
                    || !up.iter().any(|l| l.contains("LOGINDISABLED"))
            }
            Protocol::Pop3 => up.iter().any(|l| l == "USER" || l.starts_with("SASL")),
            _ => false,
        };
        if auth_in_clear {
            r.add("listener.auth_before_tls", Severity::High, "Login offered before TLS",
                format!("{name} offers authentication in clear: {}", offered.join(" | ")),
                "A password sent before TLS can be read by anyone on the path.",
                "This should never happen with Postern's listeners: report it as a bug, and put the listener behind TLS only.",
                "[[listener]]");
        }
        let t13 = match before_tls(p, a).await {
            Ok((io, _)) => tls(io, &rustls::version::TLS13, &host).await,
            Err(e) => Err(e),
        };
        let t12 = match before_tls(p, a).await {
            Ok((io, _)) => tls(io, &rustls::version::TLS12, &host).await,
            Err(e) => Err(e),
        };
        if p == Protocol::Smtp {
            // the MX port: AUTH must not be offered even after TLS
            if let Ok((io, _)) = before_tls(p, a).await {
                if let Ok((mut c, _)) = tls(io, &rustls::version::TLS13, &host).await {
                    let after = async {
                        c.send("EHLO audit.postern.invalid").await?;
                        c.reply().await
                    }
                    .await;
                    if let Ok((_, lines)) = after {
                        if lines
                            .iter()
                            .any(|l| l.to_ascii_uppercase().starts_with("AUTH"))
                        {
                            r.add("listener.auth_on_mx", Severity::Medium, "The MX port offers AUTH",
                                format!("{name} offers AUTH after STARTTLS"),
                                "Port 25 faces every bot on the internet: password guessing belongs on the submission ports only.",
                                "Use the submission listeners for clients.", "[[listener]] protocol");
                        }
                    }
                }
            }
        }
        match (&t13, &t12) {
            (Err(e), Err(_)) => r.add(
                "listener.no_tls",
                Severity::High,
                "TLS fails on a listener",
                format!("{name}: {e:#}"),
                "Clients cannot connect securely; some will fall back to no TLS at all.",
                "Check the certificate and key ([tls]) and the server's log.",
                "[tls]",
            ),
            (Ok((_, s13)), Ok((_, s12))) => {
                r.ok(format!("{name}: TLS 1.3 ({s13}) and 1.2 ({s12})"))
            }
            (Ok((_, s13)), Err(_)) => r.ok(format!("{name}: TLS 1.3 ({s13}) only")),
            (Err(_), Ok((_, s12))) => r.add(
                "listener.no_tls13",
                Severity::Low,
                "No TLS 1.3",
                format!("{name} negotiates only TLS 1.2 ({s12})"),
                "TLS 1.3 hides more of the handshake and removes old options.",
                "Update the TLS stack.",
                "[tls]",
            ),
        }
        for (tls10, what) in [
            (true, "TLS 1.0"),
            (false, "weak cipher suites only (RC4, 3DES, CBC-SHA1)"),
        ] {
            match accepts_legacy(p, a, tls10).await {
                Ok(true) => r.add(if tls10 { "listener.tls10" } else { "listener.weak_ciphers" }, Severity::High,
                    &format!("{what} accepted"), format!("{name} answered a hello offering {what}"),
                    "Old protocol versions and suites have practical attacks (BEAST, POODLE, Sweet32, RC4 biases).",
                    "Postern's rustls never offers them: something else answers on this port.", "[[listener]]"),
                Ok(false) => r.ok(format!("{name}: {what} refused")),
                Err(_) => {}
            }
        }
        if p == Protocol::Smtp {
            open_relay(a, &name, r).await;
        }
    }
    if let Some(a) = cfg.admin.listen {
        match connect(a).await {
            Ok(tcp) => match tls(Box::new(tcp), &rustls::version::TLS13, &host).await {
                Ok((_, s)) => r.ok(format!("admin {a}: TLS 1.3 ({s})")),
                Err(e) => r.add(
                    "admin.no_tls",
                    Severity::High,
                    "The admin API does not speak TLS",
                    format!("admin {a}: {e:#}"),
                    "Administrator passwords and session tokens would cross the network in clear.",
                    "Check the certificate and key ([tls]).",
                    "[admin] listen",
                ),
            },
            Err(e) => unreachable.push(format!("admin {a} ({e:#})")),
        }
    }
    if !unreachable.is_empty() {
        r.add("listener.unreachable", Severity::Medium, "Listeners that could not be checked",
            unreachable.join("; "),
            "The audit connects to each listener as a client would; these did not answer (is the server running? an allow list?).",
            "Run `postern audit` on the server's host while it runs, or with --no-connect to skip these checks.", "[[listener]]");
    }
}

/// The nmap `smtp-open-relay` attempts that matter: a foreign sender to a foreign recipient,
/// written in the ways relays were fooled (percent hack, bang path, quoted local part, source
/// route, our own address as sender). Stops at RCPT; never sends DATA.
async fn open_relay(a: SocketAddr, name: &str, r: &mut Report) {
    let attempts = [
        (
            "<audit@relay-test.invalid>",
            "<victim@relay-target.invalid>",
        ),
        ("<>", "<victim@relay-target.invalid>"),
        (
            "<audit@relay-test.invalid>",
            "<victim%relay-target.invalid@[127.0.0.1]>",
        ),
        (
            "<audit@relay-test.invalid>",
            "<relay-target.invalid!victim>",
        ),
        (
            "<audit@relay-test.invalid>",
            "<\"victim@relay-target.invalid\">",
        ),
        (
            "<audit@relay-test.invalid>",
            "<@relay-hop.invalid:victim@relay-target.invalid>",
        ),
    ];
    let res = async {
        let tcp: Box<dyn Io> = Box::new(connect(a).await?);
        let mut c = Conn {
            io: BufReader::new(tcp),
        };
        c.reply().await?;
        c.send("EHLO audit.postern.invalid").await?;
        c.reply().await?;
        let mut accepted = Vec::new();
        for (from, to) in attempts {
            c.send(&format!("MAIL FROM:{from}")).await?;
            let (m, _) = c.reply().await?;
            if m / 100 == 2 {
                c.send(&format!("RCPT TO:{to}")).await?;
                let (code, _) = c.reply().await?;
                if code / 100 == 2 {
                    accepted.push(format!("{from} → {to}"));
                }
            }
            c.send("RSET").await?;
            c.reply().await?;
        }
        let _ = c.send("QUIT").await;
        anyhow::Ok(accepted)
    }
    .await;
    match res {
        Ok(a) if a.is_empty() => r.ok(format!("{name}: no open relay ({} attempts refused)", attempts.len())),
        Ok(a) => r.add("smtp.open_relay", Severity::High, "Open relay",
            format!("{name} accepted foreign recipients: {}", a.join("; ")),
            "Spammers find open relays within hours; your IP lands on every block list and your mail stops being delivered.",
            "Only local recipients may be accepted without AUTH: report this as a bug.", "[[listener]] protocol = \"smtp\""),
        Err(e) => r.add("smtp.relay_test_failed", Severity::Low, "The open-relay test could not finish",
            format!("{name}: {e:#}"), "The MX port could not be tested.", "Check that the server runs and accepts connections from this host.", "[[listener]]"),
    }
}

// ---------------------------------------------------------------- DNS as published

async fn dns(cfg: &Config, store: &Store, r: &mut Report) -> Result<()> {
    let dns = match postern_dns::Dns::new(&cfg.dns) {
        Ok(d) => d,
        Err(e) => {
            r.add("dns.unavailable", Severity::Medium, "DNS checks could not run", format!("{e}"),
                "What the world sees of your domains (MX, SPF, DKIM, DMARC) decides whether your mail is trusted.",
                "Check [dns] server, or run with --no-dns.", "[dns]");
            return Ok(());
        }
    };
    let res = dns.resolver();
    let host = cfg
        .server
        .hostname
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let txts = async |name: &str| -> std::result::Result<Vec<String>, String> {
        match res.txt_lookup(name).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|d| String::from_utf8_lossy(d).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    };
    let mut dns_errors = Vec::new();
    for d in store.list_domains().await? {
        let domain = d.name.trim_end_matches('.').to_ascii_lowercase();
        // MX
        match res.mx_lookup(format!("{domain}.")).await {
            Ok(mx) => {
                let hosts: Vec<String> = mx
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some(
                            m.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        ),
                        _ => None,
                    })
                    .collect();
                if hosts.contains(&host) {
                    r.ok(format!("{domain}: MX {host}"));
                } else {
                    r.add(
                        "dns.mx",
                        Severity::High,
                        "The domain's MX does not point here",
                        format!("{domain}: MX {} (expected {host})", hosts.join(", ")),
                        "Mail for the domain goes elsewhere (or nowhere).",
                        &format!("Publish `{domain}. MX 10 {host}.` (see `postern dns {domain}`)."),
                        "postern dns",
                    );
                }
            }
            Err(e) if e.is_no_records_found() => r.add(
                "dns.mx",
                Severity::High,
                "The domain has no MX record",
                format!("{domain}: no MX"),
                "Senders fall back to the domain's A record, or give up.",
                &format!("Publish `{domain}. MX 10 {host}.` (see `postern dns {domain}`)."),
                "postern dns",
            ),
            Err(e) => dns_errors.push(format!("{domain} MX: {e}")),
        }
        // SPF
        match txts(&format!("{domain}.")).await {
            Ok(t) => {
                let spf: Vec<&String> = t
                    .iter()
                    .filter(|s| s.to_ascii_lowercase().starts_with("v=spf1"))
                    .collect();
                match spf.as_slice() {
                    [] => r.add("dns.spf_missing", Severity::Medium, "No SPF record", format!("{domain}: no v=spf1 TXT record"),
                        "Receivers cannot tell mail from your server from a forgery; DMARC then rests on DKIM alone.",
                        &format!("Publish `{domain}. TXT \"v=spf1 mx -all\"`."), "postern dns"),
                    [one] => {
                        let l = one.to_ascii_lowercase();
                        if l.contains("+all") || l.ends_with(" all") {
                            r.add("dns.spf_pass_all", Severity::High, "SPF allows every sender", format!("{domain}: {one}"),
                                "`+all` lets anyone send as your domain with an SPF pass.", "End the record with -all.", "postern dns");
                        } else if l.contains("?all") {
                            r.add("dns.spf_neutral", Severity::Low, "SPF ends with ?all", format!("{domain}: {one}"),
                                "A neutral result protects nothing.", "End the record with -all (or ~all while testing).", "postern dns");
                        } else {
                            r.ok(format!("{domain}: SPF {one}"));
                        }
                    }
                    _ => r.add("dns.spf_multiple", Severity::Medium, "Several SPF records", format!("{domain}: {} v=spf1 records", spf.len()),
                        "Two SPF records are a permanent error (RFC 7208 4.5): receivers treat it as no SPF.", "Merge them into one.", "postern dns"),
                }
            }
            Err(e) => dns_errors.push(format!("{domain} TXT: {e}")),
        }
        // DKIM: each key of ours must be published as it is
        for k in store.dkim_keys(Some(&domain)).await? {
            let name = format!("{}._domainkey.{domain}.", k.selector);
            match txts(&name).await {
                Ok(t) if t.iter().any(|s| s.replace(' ', "").contains(&format!("p={}", k.public_key))) => {
                    r.ok(format!("{domain}: DKIM {} published", k.selector))
                }
                Ok(_) => r.add("dns.dkim", Severity::Medium, "A DKIM key is not published (or differs)",
                    format!("{name} does not hold the key of selector {}", k.selector),
                    "Signatures made with it fail; with DMARC, your mail may be refused or filed as spam.",
                    &format!("Publish the record `postern dns {domain}` prints."), "postern dkim, postern dns"),
                Err(e) => dns_errors.push(format!("{name}: {e}")),
            }
        }
        // DMARC
        match txts(&format!("_dmarc.{domain}.")).await {
            Ok(t) => match t.iter().find(|s| s.to_ascii_lowercase().starts_with("v=dmarc1")) {
                None => r.add("dns.dmarc_missing", Severity::Medium, "No DMARC record", format!("_dmarc.{domain}: none"),
                    "Without DMARC, receivers have no policy for mail that forges your domain in the From header.",
                    &format!("Publish the _dmarc record `postern dns {domain}` prints (p=quarantine or reject)."), "postern dns"),
                Some(rec) => {
                    let p = rec
                        .split(';')
                        .filter_map(|kv| kv.trim().split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("p"))
                        .map(|(_, v)| v.trim().to_ascii_lowercase())
                        .unwrap_or_default();
                    if p == "none" || p.is_empty() {
                        r.add("dns.dmarc_none", Severity::Medium, "DMARC policy is p=none", format!("_dmarc.{domain}: {rec}"),
                            "p=none only observes: forged mail in your domain's name is still delivered.",
                            "Move to p=quarantine, then p=reject, once reports show your own mail passes.", "postern dns, postern reports");
                    } else {
                        r.ok(format!("{domain}: DMARC p={p}"));
                    }
                }
            },
            Err(e) => dns_errors.push(format!("_dmarc.{domain}: {e}")),
        }
        // MTA-STS and TLS-RPT
        if cfg.mta_sts.listen.is_some() {
            match txts(&format!("_mta-sts.{domain}.")).await {
                Ok(t) if t.iter().any(|s| s.starts_with("v=STSv1")) => r.ok(format!("{domain}: MTA-STS record")),
                Ok(_) => r.add("dns.mta_sts", Severity::Low, "The MTA-STS record is not published", format!("_mta-sts.{domain}: none"),
                    "The policy this server serves is not found by senders, so they may still deliver without TLS.", "Publish the _mta-sts record `postern dns` prints.", "[mta_sts]"),
                Err(e) => dns_errors.push(format!("_mta-sts.{domain}: {e}")),
            }
        } else {
            r.add("dns.no_mta_sts", Severity::Low, "No MTA-STS policy", format!("{domain}: [mta_sts] listen is not set"),
                "Without MTA-STS (or DANE), a man in the middle can strip STARTTLS from mail sent to you.",
                "Set [mta_sts] listen and publish the records `postern dns` prints.", "[mta_sts]");
        }
        match txts(&format!("_smtp._tls.{domain}.")).await {
            Ok(t) if t.iter().any(|s| s.starts_with("v=TLSRPTv1")) => {
                r.ok(format!("{domain}: TLS-RPT record"))
            }
            Ok(_) => r.add(
                "dns.tls_rpt",
                Severity::Info,
                "No TLS-RPT record",
                format!("_smtp._tls.{domain}: none"),
                "Senders cannot tell you when TLS to your server fails.",
                "Publish the _smtp._tls record `postern dns` prints.",
                "postern dns",
            ),
            Err(e) => dns_errors.push(format!("_smtp._tls.{domain}: {e}")),
        }
    }
    // forward-confirmed reverse DNS of the host name
    match res.lookup_ip(format!("{host}.")).await {
        Ok(ips) => {
            for ip in ips.iter() {
                if ip.is_loopback() || ip.is_unspecified() {
                    r.add(
                        "dns.host_loopback",
                        Severity::Medium,
                        "The host name resolves to a loopback address",
                        format!("{host} → {ip}"),
                        "Senders elsewhere cannot reach this server under its name.",
                        "Publish the server's public address for the host name.",
                        "[server] hostname",
                    );
                    continue;
                }
                let ptrs = res.reverse_lookup(ip).await.map(|l| {
                    l.answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::PTR(p) => Some(p.0.to_ascii()),
                            _ => None,
                        })
                        .collect::<Vec<String>>()
                });
                match ptrs {
                    Ok(names) if names.iter().any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(&host)) => {
                        r.ok(format!("PTR of {ip} is {host}"))
                    }
                    Ok(names) => r.add("dns.ptr", Severity::Medium, "Reverse DNS does not name this server",
                        format!("PTR of {ip}: {}", names.join(", ")),
                        "Many receivers refuse or down-rank mail from addresses whose PTR does not match the HELO name.",
                        &format!("Ask the provider of {ip} to set its PTR to {host}."), "[server] hostname"),
                    Err(e) if e.is_no_records_found() => r.add("dns.ptr", Severity::Medium, "No reverse DNS", format!("{ip} has no PTR"),
                        "Many receivers refuse mail from addresses without reverse DNS.", &format!("Ask the provider of {ip} to set its PTR to {host}."), "[server] hostname"),
                    Err(e) => dns_errors.push(format!("PTR {ip}: {e}")),
                }
            }
        }
        Err(e) if e.is_no_records_found() => r.add(
            "dns.host",
            Severity::High,
            "The host name does not resolve",
            format!("{host}: no A/AAAA"),
            "Senders cannot reach the MX host.",
            "Publish A (and AAAA) records for the host name.",
            "[server] hostname",
        ),
        Err(e) => dns_errors.push(format!("{host}: {e}")),
    }
    if !dns_errors.is_empty() {
        r.add(
            "dns.errors",
            Severity::Medium,
            "DNS look-ups failed",
            dns_errors.join("; "),
            "Part of what receivers see could not be checked; failing DNS also delays mail.",
            "Check the resolver ([dns] server).",
            "[dns]",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_hellos_are_well_formed() {
        for tls10 in [true, false] {
            let h = legacy_hello(tls10);
            assert_eq!(h[0], 0x16);
            let rec_len = u16::from_be_bytes([h[3], h[4]]) as usize;
            assert_eq!(h.len(), 5 + rec_len);
            assert_eq!(h[5], 1, "ClientHello");
            let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
            assert_eq!(hs_len + 4, rec_len);
            assert_eq!(&h[9..11], if tls10 { &[3, 1] } else { &[3, 3] });
        }
    }

    #[test]
    fn text_orders_by_severity_and_counts() {
        let mut r = Report::default();
        r.add("a", Severity::Low, "low one", "x".into(), "y", "z", "s");
        r.add("b", Severity::High, "high one", "x".into(), "y", "z", "s");
        r.ok("fine");
        let t = r.text();
        assert!(t.find("high one").unwrap() < t.find("low one").unwrap());
        assert!(t.contains("1 checks passed; findings: 1 high, 0 medium, 1 low, 0 info"));
        assert_eq!(r.worst(), Some(Severity::High));
    }

    #[test]
    fn cluster_links_leaving_the_machine_must_be_verified_tls() {
        let ids = |extra: &str| {
            let cfg = Config::parse(&format!("[server]\nhostname='a.test'\n{extra}")).unwrap();
            let mut r = Report::default();
            cluster_links(&cfg, &mut r);
            r.findings.into_iter().map(|f| f.id).collect::<Vec<_>>()
        };
        let db = "[storage]\ndatabase_password='env:P'\ndatabase=";
        assert_eq!(
            ids(&format!("{db}'postgres://m@db.internal:5432/mail'\n")),
            ["storage.database_tls"]
        );
        assert_eq!(
            ids(&format!(
                "{db}'postgres://m@db.internal/mail?sslmode=require'\n"
            )),
            ["storage.database_tls"]
        );
        assert!(ids(&format!(
            "{db}'postgres://m@db.internal/mail?sslmode=verify-full&sslrootcert=/ca.pem'\n"
        ))
        .is_empty());
        assert!(ids(&format!("{db}'postgres://m@127.0.0.1:5432/mail'\n")).is_empty());
        assert_eq!(
            ids("[cluster]\nredis='redis://10.0.0.5:6379'\n"),
            ["cluster.redis_tls", "cluster.redis_no_password"]
        );
        assert!(
            ids("[cluster]\nredis='rediss://r.internal:6380'\nredis_password='env:R'\n").is_empty()
        );
        assert!(
            ids("[cluster]\nredis='redis://127.0.0.1:6379'\nredis_password='env:R'\n").is_empty()
        );
    }
}
