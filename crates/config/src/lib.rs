//! Typed configuration: the `postern.toml` file, its defaults, and validation that fails closed.
//!
//! Every section has defaults, so a file only needs what differs. Unknown keys are refused (a typo in a
//! security setting must not be silently ignored). Relative paths are resolved against the directory
//! that holds the config file.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}{}", read_hint(error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn read_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        "\nhint: create a data directory with `postern init --dir DIR --domain DOMAIN`, then \
         name it with `--dir DIR` (or the file with `--config FILE` / $POSTERN_CONFIG)"
    } else {
        ""
    }
}

/// `IP:PORT`, with a message that says what is wrong (a port past 65535 is "out of range", not
/// "invalid socket address syntax").
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not IP:PORT (for example 0.0.0.0:25 or [::]:25)"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("{s:?}: {ip:?} is not an IP address"));
    }
    match port.parse::<u64>() {
        Ok(p) if p > 65535 => Err(format!("{s:?}: port {p} is out of range (1-65535)")),
        _ => Err(format!("{s:?}: {port:?} is not a port number (1-65535)")),
    }
}

fn de_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    socket_addr(&s).map_err(serde::de::Error::custom)
}

fn de_opt_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => socket_addr(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

pub use postern_types::Protocol;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub password_policy: PasswordPolicyConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub defence: DefenceConfig,
    #[serde(default)]
    pub imap: ImapConfig,
    #[serde(default)]
    pub pop3: Pop3Config,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Smarthost routes for outbound mail.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub greylist: GreylistConfig,
    #[serde(default)]
    pub mta_sts: MtaStsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub acme: AcmeConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    /// OpenID Connect providers whose access tokens log in with OAUTHBEARER and XOAUTH2.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// A directory (LDAP) that checks the passwords of its users.
    #[serde(default, rename = "directory")]
    pub directories: Vec<DirectoryConfig>,
    /// Directory of the config file; relative paths are resolved against it. Not part of the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself (re-read after a master key rotation). Not part of the file.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The host name announced in greetings and written in Received headers.
    pub hostname: String,
    /// Seconds that sessions in flight get to finish after SIGTERM before they are cut.
    #[serde(default = "d_grace")]
    pub shutdown_grace_secs: u64,
    /// The user Postern runs as when started as root (default `postern`): it drops root at
    /// once, keeping only the capability to bind ports below 1024. `"root"` keeps root (not
    /// recommended; `postern audit` reports it).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    #[serde(default = "d_cert")]
    pub cert: PathBuf,
    /// PEM private key (must not be readable by group or others).
    #[serde(default = "d_key")]
    pub key: PathBuf,
    /// Mail listeners ask clients for a certificate (never require one), for SASL EXTERNAL
    /// with certificates registered to accounts (`postern user cert add`).
    #[serde(default = "d_true")]
    pub request_client_certificates: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: d_cert(),
            key: d_key(),
            request_client_certificates: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub protocol: Protocol,
    #[serde(deserialize_with = "de_addr")]
    pub address: SocketAddr,
    /// If not empty, only these networks (CIDR) may connect to this listener.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These networks (CIDR) may not connect to this listener (checked after `allow`).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Trusted proxies (CIDR). If set, the listener sits behind a load balancer: only these
    /// addresses may connect, each connection must start with a PROXY protocol v1/v2 header,
    /// and limits, bans, access lists and logs use the client address it announces.
    #[serde(default)]
    pub proxy_from: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Where the master key comes from: `file:PATH` (base64, mode 0600; `postern init` makes
    /// one), `env:NAME` (base64 of 32 bytes), `vault:MOUNT/PATH#FIELD` (a KV v2 field) or
    /// `transit:KEY` (data keys wrapped by Vault/OpenBao Transit; the key never leaves it).
    #[serde(default = "d_master_key")]
    pub master_key: String,
    /// Vault/OpenBao address, e.g. `https://vault.example.net:8200` (http only on loopback).
    #[serde(default)]
    pub vault_addr: Option<String>,
    /// CA certificate (PEM) that signed the Vault server's certificate (required for https).
    #[serde(default)]
    pub vault_ca_file: Option<PathBuf>,
    /// Reference to the Vault token: `env:NAME` or `file:PATH`.
    #[serde(default)]
    pub vault_token: Option<String>,
    /// AppRole login instead of a token: the role id, and a reference to the secret id.
    #[serde(default)]
    pub vault_role_id: Option<String>,
    #[serde(default)]
    pub vault_secret_id: Option<String>,
    /// Mount of the Transit engine.
    #[serde(default = "d_transit")]
    pub transit_mount: String,
    /// Accept a secret written in clear in this file (e.g. a relay password). Off: refused.
    #[serde(default)]
    pub allow_plaintext_secrets: bool,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            master_key: d_master_key(),
            vault_addr: None,
            vault_ca_file: None,
            vault_token: None,
            vault_role_id: None,
            vault_secret_id: None,
            transit_mount: d_transit(),
            allow_plaintext_secrets: false,
        }
    }
}

fn d_transit() -> String {
    "transit".into()
}

fn d_master_key() -> String {
    "file:master.key".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run the delivery workers (off: messages stay queued).
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Delivery attempts running at once.
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// Attempts at once to one destination (a relay, or a recipient domain).
    #[serde(default = "d_per_dest")]
    pub per_destination: usize,
    /// Seconds to wait before each retry; the last one repeats (RFC 5321 4.5.4.1: at least 30
    /// minutes between retries is usual; the default starts faster).
    #[serde(default = "d_schedule")]
    pub retry_schedule_secs: Vec<u64>,
    /// Give up and bounce after this many seconds in the queue (default 5 days).
    #[serde(default = "d_give_up")]
    pub give_up_after_secs: u64,
    /// Send one delay warning after this many seconds (0: never).
    #[serde(default = "d_warn_after")]
    pub warn_after_secs: u64,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Per-command timeout (RFC 5321 4.5.3.2 suggests minutes).
    #[serde(default = "d_command_timeout")]
    pub command_timeout_secs: u64,
    /// One DNS server to ask (`IP:PORT`) instead of the system's resolvers.
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
    /// Port of remote MX hosts (25; tests use a high port).
    #[serde(default = "d_mx_port")]
    pub mx_port: u16,
    /// Domains whose MX hosts must offer STARTTLS with a valid certificate.
    #[serde(default)]
    pub require_tls: Vec<String>,
    /// CA file for `require_tls` checks and MTA-STS (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Honour the MTA-STS policies of recipient domains (RFC 8461).
    #[serde(default = "d_true")]
    pub mta_sts: bool,
    /// Port of `mta-sts.DOMAIN` for policy fetches (443; tests use a high port).
    #[serde(default = "d_https_port")]
    pub mta_sts_port: u16,
    /// Send daily TLS reports (RFC 8460) to recipient domains that publish `_smtp._tls`.
    #[serde(default = "d_true")]
    pub tls_reports: bool,
    /// Honour DNSSEC-secure TLSA records of MX hosts (DANE, RFC 7672); needs a validating
    /// resolver as `[dns] server` (its AD bit is trusted).
    #[serde(default = "d_true")]
    pub dane: bool,
}

fn d_https_port() -> u16 {
    443
}

fn d_workers() -> usize {
    16
}
fn d_per_dest() -> usize {
    4
}
fn d_schedule() -> Vec<u64> {
    vec![60, 300, 900, 1800, 3600, 7200, 14400]
}
fn d_give_up() -> u64 {
    5 * 86400
}
fn d_warn_after() -> u64 {
    4 * 3600
}
fn d_connect_timeout() -> u64 {
    30
}
fn d_command_timeout() -> u64 {
    300
}
fn d_mx_port() -> u16 {
    25
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            workers: d_workers(),
            per_destination: d_per_dest(),
            retry_schedule_secs: d_schedule(),
            give_up_after_secs: d_give_up(),
            warn_after_secs: d_warn_after(),
            connect_timeout_secs: d_connect_timeout(),
            command_timeout_secs: d_command_timeout(),
            dns_server: None,
            mx_port: d_mx_port(),
            require_tls: Vec::new(),
            ca_file: None,
            mta_sts: true,
            mta_sts_port: d_https_port(),
            tls_reports: true,
            dane: true,
        }
    }
}

/// The one DNS resolver (MX, SPF, DKIM, DMARC, ARC, PTR, DNSBL look-ups).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// One DNS server to ask (`IP:PORT`) instead of the system's resolvers (`/etc/resolv.conf`).
    /// `[delivery] dns_server` is an older name for it.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub server: Option<SocketAddr>,
    /// Time allowed for one query, in milliseconds.
    #[serde(default = "d_dns_timeout")]
    pub timeout_ms: u64,
    /// Tries per query before it counts as a temporary failure.
    #[serde(default = "d_dns_attempts")]
    pub attempts: usize,
    /// Answers kept in the cache (each for its TTL).
    #[serde(default = "d_dns_cache")]
    pub cache_size: u64,
}

fn d_dns_timeout() -> u64 {
    5000
}
fn d_dns_attempts() -> usize {
    2
}
fn d_dns_cache() -> u64 {
    4096
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            server: None,
            timeout_ms: d_dns_timeout(),
            attempts: d_dns_attempts(),
            cache_size: d_dns_cache(),
        }
    }
}

/// Checks on mail arriving on port 25 from unauthenticated senders.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// SPF, iprev, DKIM, ARC and DMARC on port 25, an Authentication-Results header on every
    /// message, DMARC policies enforced and our own domains protected from outside spoofing.
    #[serde(default = "d_true")]
    pub checks: bool,
    /// Networks whose mail skips the checks and greylisting (a forwarder, a backup MX, a
    /// scanner in front of Postern). Nothing is trusted by default, loopback included.
    #[serde(default)]
    pub trusted_networks: Vec<String>,
    /// Sender domains (From or envelope) for which DMARC and own-domain enforcement is skipped;
    /// results are still checked and recorded in Authentication-Results.
    #[serde(default)]
    pub skip_checks_for: Vec<String>,
    /// DNS block lists (zones such as `zen.spamhaus.org`); a listed client gets 554. Off by default.
    #[serde(default)]
    pub dnsbl: Vec<String>,
    /// Mailbox (by special use `\Junk`, else by this name) that receives mail DMARC quarantines.
    #[serde(default = "d_junk")]
    pub quarantine_mailbox: String,
    /// Send DMARC aggregate reports (RFC 7489 7.2) to the domains that ask for them (`rua`).
    #[serde(default = "d_true")]
    pub dmarc_reports: bool,
    /// The sender of the reports (default `postmaster@` the server's host name).
    #[serde(default)]
    pub reports_from: Option<String>,
}

fn d_junk() -> String {
    "Junk".into()
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            checks: true,
            trusted_networks: Vec::new(),
            skip_checks_for: Vec::new(),
            dnsbl: Vec::new(),
            quarantine_mailbox: d_junk(),
            dmarc_reports: true,
            reports_from: None,
        }
    }
}

/// Prometheus metrics over plain HTTP (the admin listener also serves them, over HTTPS, to an
/// API key or session allowed to read the audit log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` of a plain-HTTP `/metrics` for a scraper on the same host or a private network
    /// (off by default). Anyone who reaches it reads the metrics: keep it on loopback or behind
    /// a firewall.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
}

/// Certificates from an ACME CA (RFC 8555; Let's Encrypt and others): ordered when the
/// certificate is missing, self-signed, does not cover `domains`, or has less than a third of its
/// lifetime left; written to `[tls] cert` and `key` and served by every listener at once (no
/// restart, open sessions keep theirs). Off unless `directory` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    #[serde(default)]
    pub directory: Option<String>,
    /// Contact addresses for the CA (`mailto:…`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names on the certificate (default: `[server] hostname`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// `tls-alpn-01` (RFC 8737, on port 443) or `http-01` (port 80).
    #[serde(default = "d_acme_challenge")]
    pub challenge: String,
    /// Where the challenge responder listens (default 0.0.0.0:443 for tls-alpn-01, 0.0.0.0:80
    /// for http-01). The CA connects to that port of each name.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
    /// CA (PEM) of the ACME server's own HTTPS certificate, for a private CA (default: system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds between checks of the certificate.
    #[serde(default = "d_acme_check")]
    pub check_secs: u64,
    /// Keep the private key across renewals, so a DANE `3 1 1` TLSA record stays true.
    #[serde(default = "d_true")]
    pub reuse_key: bool,
}

fn d_acme_challenge() -> String {
    "tls-alpn-01".into()
}
fn d_acme_check() -> u64 {
    43200
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: None,
            contact: Vec::new(),
            domains: Vec::new(),
            challenge: d_acme_challenge(),
            listen: None,
            ca_file: None,
            check_secs: d_acme_check(),
            reuse_key: true,
        }
    }
}

impl AcmeConfig {
    /// The challenge responder's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = if self.challenge == "http-01" { 80 } else { 443 };
            SocketAddr::from(([0, 0, 0, 0], port))
        })
    }
}

/// `[[directory]]`: an LDAP directory that checks passwords (bind as the user); accounts it
/// vouches for are created here at their first login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Only "ldap".
    pub kind: String,
    /// `ldaps://HOST:PORT`, or `ldap://HOST:PORT` with `starttls = true` (never in clear).
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// A CA to trust for the directory's certificate (PEM); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The service account that searches for users.
    pub bind_dn: String,
    /// Its password: a reference (`env:NAME`, `file:PATH`, `secret:NAME`, `vault:…`).
    pub bind_password: String,
    pub base_dn: String,
    /// Finds the user; `{login}` (the address), `{user}` (its local part) and `{domain}` are
    /// replaced, escaped (RFC 4515), so a login name cannot change the filter.
    #[serde(default = "d_ldap_user_filter")]
    pub user_filter: String,
    /// If set, the user must match it to log in (`{dn}` is the user's DN, escaped), e.g.
    /// `(&(objectClass=groupOfNames)(cn=mail-users)(member={dn}))`.
    #[serde(default)]
    pub group_filter: Option<String>,
    /// The domains whose logins the directory decides; none: every local domain.
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default = "d_ldap_timeout")]
    pub timeout_secs: u64,
    /// Administrators of the admin API from the directory: finds one by the name given at
    /// login (`{login}`, escaped); none: administrators are local only.
    #[serde(default)]
    pub admin_user_filter: Option<String>,
    /// Role → group filter (`{dn}` is the user's DN): the first that matches, in the order
    /// superadmin, domain-admin, helpdesk, auditor, gives the administrator's role at each
    /// login (a domain-admin manages the directory's `domains`). No match: no access.
    #[serde(default)]
    pub admin_groups: std::collections::BTreeMap<String, String>,
}

fn d_ldap_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(mail={login}))".into()
}

fn d_ldap_timeout() -> u64 {
    5
}

/// `[[oidc]]`: an OpenID Connect provider (Keycloak, Authentik, …) whose access tokens (JWTs)
/// log in to mail with SASL OAUTHBEARER (RFC 7628) and XOAUTH2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (https); `/.well-known/openid-configuration` under it gives the keys.
    pub issuer: String,
    /// The `aud` a token must carry (the client id or resource the provider issues for mail).
    pub audience: String,
    /// A scope the token must have (in `scope` or `scp`); none: any.
    #[serde(default)]
    pub scope: Option<String>,
    /// The claim that names the account (its address).
    #[serde(default = "d_oidc_claim")]
    pub claim: String,
    /// Signature algorithms accepted; asymmetric only (never `none`, never HS*).
    #[serde(default = "d_oidc_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "d_oidc_leeway")]
    pub leeway_secs: u64,
    /// A CA to trust for the provider's HTTPS (PEM); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Opaque (non-JWT) tokens are checked at the provider's introspection endpoint (RFC 7662,
    /// from the discovery document) with this client's credentials; none: opaque tokens are
    /// refused.
    #[serde(default)]
    pub introspection_client_id: Option<String>,
    /// That client's secret: a reference (`env:`, `file:`, `secret:`, `vault:`).
    #[serde(default)]
    pub introspection_client_secret: Option<String>,
}

fn d_oidc_claim() -> String {
    "email".into()
}

fn d_oidc_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

fn d_oidc_leeway() -> u64 {
    60
}

/// Algorithms an `[[oidc]]` provider may be allowed: asymmetric signatures only.
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `[notify]`: messages to users about their own account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A successful login from a source network (/24, /64) and client (protocol and
    /// mechanism) the account has not used within `known_days` puts a notice in its INBOX
    /// (when, from where, how, and what to do if it was not them) and is audited as
    /// `new_signin`. Never for `[defence] allowlist` networks.
    #[serde(default = "d_true")]
    pub new_signin: bool,
    #[serde(default = "d_known_days")]
    pub known_days: u64,
    /// At most this many notices per account per day (the rest are audited only).
    #[serde(default = "d_notices_per_day")]
    pub max_per_day: u32,
}

fn d_known_days() -> u64 {
    30
}

fn d_notices_per_day() -> u32 {
    5
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            new_signin: true,
            known_days: d_known_days(),
            max_per_day: d_notices_per_day(),
        }
    }
}

/// Built-in alerts, for installations without Prometheus (the same conditions as
/// `contrib/prometheus/postern.rules.yml`): a mail to the postmaster of each local domain and/or
/// a signed webhook. Each condition alerts when it starts, reminds while it lasts, and says when
/// it ends; every notice is also an audit event and a `postern::alert` log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Mail each notice to the postmaster (RFC 2142) of every local domain.
    #[serde(default = "d_true")]
    pub mail: bool,
    /// More addresses to mail notices to (local or remote).
    #[serde(default)]
    pub mail_to: Vec<String>,
    /// URL to POST each notice to as JSON (https; http only to a loopback address).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Reference (`env:`, `file:`, `vault:`, `secret:`) to the key of the body's HMAC-SHA256
    /// signature (`X-Postern-Signature`); required with `webhook`.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// CA (PEM) for the webhook's certificate (default: the system's roots).
    #[serde(default)]
    pub webhook_ca_file: Option<PathBuf>,
    /// Seconds between evaluations of the conditions.
    #[serde(default = "d_alert_check")]
    pub check_secs: u64,
    /// While a condition lasts, a reminder after this many minutes.
    #[serde(default = "d_alert_repeat")]
    pub repeat_mins: u64,
    /// At most this many notices per hour in all (the rest only logged).
    #[serde(default = "d_alert_max")]
    pub max_per_hour: u32,
    /// Failed logins within 5 minutes that count as a brute-force wave.
    #[serde(default = "d_alert_brute")]
    pub brute_force_failures: u64,
    /// New bans within 10 minutes that count as a ban storm.
    #[serde(default = "d_alert_bans")]
    pub ban_storm: i64,
    /// Logins refused for a saturated hash pool within 5 minutes.
    #[serde(default = "d_alert_pool")]
    pub pool_saturated: u64,
    /// Messages waiting in the outbound queue.
    #[serde(default = "d_alert_queue")]
    pub queue_backlog: i64,
    /// Share (percent) of delivery attempts deferred or failed within 15 minutes (with at least 20).
    #[serde(default = "d_alert_delivery")]
    pub delivery_failure_percent: u64,
    /// Days before the certificate expires.
    #[serde(default = "d_alert_cert")]
    pub cert_days: i64,
    /// Minutes between checks of the audit chain (`postern_audit_chain_ok`).
    #[serde(default = "d_alert_chain")]
    pub audit_chain_check_mins: u64,
}

fn d_alert_check() -> u64 {
    30
}
fn d_alert_repeat() -> u64 {
    240
}
fn d_alert_max() -> u32 {
    20
}
fn d_alert_brute() -> u64 {
    100
}
fn d_alert_bans() -> i64 {
    20
}
fn d_alert_pool() -> u64 {
    10
}
fn d_alert_queue() -> i64 {
    1000
}
fn d_alert_delivery() -> u64 {
    50
}
fn d_alert_cert() -> i64 {
    14
}
fn d_alert_chain() -> u64 {
    60
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            mail: true,
            mail_to: Vec::new(),
            webhook: None,
            webhook_secret: None,
            webhook_ca_file: None,
            check_secs: d_alert_check(),
            repeat_mins: d_alert_repeat(),
            max_per_hour: d_alert_max(),
            brute_force_failures: d_alert_brute(),
            ban_storm: d_alert_bans(),
            pool_saturated: d_alert_pool(),
            queue_backlog: d_alert_queue(),
            delivery_failure_percent: d_alert_delivery(),
            cert_days: d_alert_cert(),
            audit_chain_check_mins: d_alert_chain(),
        }
    }
}

/// Scheduled encrypted backups made by the running server (`postern backup create` makes one by
/// hand). Off unless `dir` and `key` are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where scheduled backups go (relative paths against the config file's directory). Best on
    /// another disk or a mounted remote, never only beside the data.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The backup key: a reference (`env:`, `file:`, `vault:`) to an age recipient (`age1…`, which
    /// can make backups but not read them: the identity that reads them can stay off the server),
    /// an age identity (`AGE-SECRET-KEY-1…`) or a passphrase. Never the master key.
    #[serde(default)]
    pub key: Option<String>,
    /// Hours between scheduled backups.
    #[serde(default = "d_backup_interval")]
    pub interval_hours: u64,
    /// Scheduled backups kept; older ones are removed after a new one is complete.
    #[serde(default = "d_backup_keep")]
    pub keep: usize,
    /// `postern audit` reports a finding when the newest backup is older than this.
    #[serde(default = "d_backup_max_age")]
    pub max_age_days: u64,
}

fn d_backup_interval() -> u64 {
    24
}
fn d_backup_keep() -> usize {
    7
}
fn d_backup_max_age() -> u64 {
    7
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            key: None,
            interval_hours: d_backup_interval(),
            keep: d_backup_keep(),
            max_age_days: d_backup_max_age(),
        }
    }
}

/// The MTA-STS policy this server publishes for its domains (RFC 8461), served over HTTPS as
/// `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    /// HTTPS listener for the policy (off by default). Publicly it must be reachable on port 443
    /// as mta-sts.DOMAIN, with a certificate valid for that name.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
    /// `testing` (senders report but deliver anyway), `enforce` or `none`.
    #[serde(default = "d_sts_mode")]
    pub mode: String,
    /// MX host names (or `*.domain` patterns) senders may use; default: `server.hostname`.
    #[serde(default)]
    pub mx: Vec<String>,
    /// How long senders cache the policy.
    #[serde(default = "d_sts_age")]
    pub max_age_days: u64,
}

fn d_sts_mode() -> String {
    "testing".into()
}
fn d_sts_age() -> u64 {
    7
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            listen: None,
            mode: d_sts_mode(),
            mx: Vec::new(),
            max_age_days: d_sts_age(),
        }
    }
}

impl MtaStsConfig {
    /// The policy body (RFC 8461 3.2) for a server named `hostname`.
    pub fn policy(&self, hostname: &str) -> String {
        let mut out = format!("version: STSv1\r\nmode: {}\r\n", self.mode);
        if self.mx.is_empty() {
            out.push_str(&format!("mx: {hostname}\r\n"));
        }
        for m in &self.mx {
            out.push_str(&format!("mx: {m}\r\n"));
        }
        out.push_str(&format!(
            "max_age: {}\r\n",
            self.max_age_days.saturating_mul(86400)
        ));
        out
    }
}

/// Greylisting on port 25 (first attempt of an unknown triplet deferred).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreylistConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Seconds a new (network, sender, recipient) triplet must wait before a retry is accepted.
    #[serde(default = "d_grey_delay")]
    pub delay_secs: u64,
    /// Hours a deferred triplet waits for its retry before it is forgotten.
    #[serde(default = "d_grey_window")]
    pub retry_window_hours: u64,
    /// Days a passed triplet, an auto-allowed network or sender domain is remembered after its
    /// last use.
    #[serde(default = "d_grey_expire")]
    pub expire_days: u64,
    /// Triplets a network must have retried correctly before all its mail passes at once.
    #[serde(default = "d_grey_auto")]
    pub auto_allow_after: u32,
}

fn d_grey_delay() -> u64 {
    300
}
fn d_grey_window() -> u64 {
    48
}
fn d_grey_expire() -> u64 {
    35
}
fn d_grey_auto() -> u32 {
    3
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: true,
            delay_secs: d_grey_delay(),
            retry_window_hours: d_grey_window(),
            expire_days: d_grey_expire(),
            auto_allow_after: d_grey_auto(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// TLS from the first byte (port 465).
    Implicit,
    /// STARTTLS, required (port 587).
    Starttls,
}

/// A smarthost route: mail for `domains` (or "*" for everything not local) goes through it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub domains: Vec<String>,
    pub host: String,
    pub port: u16,
    pub tls: RelayTls,
    /// The name the certificate must carry (default: `host`).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// CA (PEM) to trust for this relay instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    /// A secret reference: `secret:NAME`, `env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin HTTP API (HTTPS, same certificate as the mail listeners). Empty: no API.
    /// Loopback by default; put it elsewhere only behind `allow`.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
    /// If not empty, only these networks (CIDR) may connect to the API.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Lifetime of a login session token, in seconds.
    #[serde(default = "d_session_secs")]
    pub session_secs: u64,
    /// Largest request body, in bytes.
    #[serde(default = "d_admin_body")]
    pub max_body_bytes: usize,
}

/// Several nodes sharing state. Today: bans, kept in Redis and announced to every node at once
/// (pub/sub), so that a ban made on one node is refused by all. Off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]` (or `rediss://` for TLS). Empty: no cluster.
    #[serde(default)]
    pub redis: Option<String>,
    /// The Redis password, a secret reference (`env:NAME`, `file:PATH`, `secret:NAME`,
    /// `vault:…`), never written here in clear.
    #[serde(default)]
    pub redis_password: Option<String>,
    /// This node's name in shared state and logs (default: `[server] hostname`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// With `rediss://`: the CA certificate (PEM) Redis's certificate must chain to, for a
    /// private CA; absent, the system's trust store. The certificate is always verified.
    #[serde(default)]
    pub redis_ca: Option<PathBuf>,
}

impl Config {
    /// The data directory: the SQLite database's, or (on PostgreSQL, where this node keeps only
    /// its certificate, keys and lock) the blob directory's parent.
    pub fn data_dir(&self) -> PathBuf {
        let anchor = match self.storage.postgres_url() {
            Some(_) => self.path(&self.storage.blobs),
            None => self.path(&self.storage.database),
        };
        anchor
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.base_dir.clone())
    }

    /// This node's name in a cluster: `[cluster] node_name`, else `[server] hostname`.
    pub fn node_name(&self) -> String {
        self.cluster
            .node_name
            .clone()
            .unwrap_or_else(|| self.server.hostname.clone())
    }
}

/// A listener for mail users only: the self-service portal (`/account`), its JSON API
/// (`/api/v1/me/…`) and client autoconfiguration, over HTTPS with the mail listeners'
/// certificate. The administrators' console and API are not served there, so `[admin] listen`
/// can stay on loopback or a private network while users reach the portal from anywhere.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Empty (the default): the portal is served by the admin listener only.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub listen: Option<SocketAddr>,
    /// If not empty, only these networks (CIDR) may connect.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The WebAuthn relying party id of passkeys: the host name users reach the portal at (its
    /// origin must be `https://` this name, any port). Default: `[server] hostname`. Passkeys
    /// are bound to it: changing it makes the registered ones unusable.
    #[serde(default)]
    pub passkey_rp_id: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            allow: Vec::new(),
            session_secs: d_session_secs(),
            max_body_bytes: d_admin_body(),
        }
    }
}

fn d_session_secs() -> u64 {
    900
}
fn d_admin_body() -> usize {
    65536
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The database: a SQLite file (the default, one node), or a PostgreSQL URL
    /// `postgres://USER@HOST:PORT/DB` that several nodes share (its password in
    /// `database_password`, never in the URL).
    #[serde(default = "d_db")]
    pub database: PathBuf,
    /// The PostgreSQL password: a reference (`env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_password: Option<String>,
    /// PostgreSQL: connections this node keeps for reads (writes use one more).
    #[serde(default = "d_pool_size")]
    pub pool_size: u32,
    /// Where message bodies are kept: `"files"` (the `blobs` directory, the SQLite default) or
    /// `"database"` (rows of the PostgreSQL database, its default: every node reads every body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies: Option<BodiesIn>,
    /// Directory of message bodies.
    #[serde(default = "d_blobs")]
    pub blobs: PathBuf,
    /// Group commit of local deliveries: the bodies of a batch are made durable by one
    /// `syncfs(2)` of the blob directory's filesystem instead of an fsync per file. Turn off when
    /// that filesystem is shared with heavy writers (a syncfs flushes their data too).
    #[serde(default = "d_true")]
    pub batch_sync: bool,
    /// The storage quota of accounts without their own (`postern user quota`), in MiB; 0: none.
    /// Over it, deliveries get `452 4.2.2` at RCPT and IMAP APPEND/COPY `NO [OVERQUOTA]`.
    #[serde(default)]
    pub default_quota_mb: u64,
}

fn d_pool_size() -> u32 {
    8
}

/// `[storage] bodies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodiesIn {
    Files,
    Database,
}

impl StorageConfig {
    /// Whether message bodies are rows of the database (the default on PostgreSQL).
    pub fn bodies_in_database(&self) -> bool {
        match self.bodies {
            Some(b) => b == BodiesIn::Database,
            None => self.postgres_url().is_some(),
        }
    }

    /// The PostgreSQL URL when `database` is one (`postgres://` or `postgresql://`).
    pub fn postgres_url(&self) -> Option<&str> {
        self.database
            .to_str()
            .filter(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"))
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            database: d_db(),
            database_password: None,
            pool_size: d_pool_size(),
            bodies: None,
            blobs: d_blobs(),
            batch_sync: true,
            default_quota_mb: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// argon2id memory cost in KiB (OWASP 2023 minimum: 19456).
    #[serde(default = "d_m")]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[serde(default = "d_t")]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[serde(default = "d_p")]
    pub argon2_parallelism: u32,
    /// Concurrent hash verifications; 0 means one per CPU core.
    #[serde(default)]
    pub max_concurrent_verifications: usize,
    /// How long an attempt waits for a free verification slot before a temporary failure.
    #[serde(default = "d_verify_wait")]
    pub verification_queue_ms: u64,
    /// How long a successfully verified password is remembered (as a keyed hash) so that
    /// reconnecting clients skip argon2; 0 turns the cache off.
    #[serde(default = "d_cache")]
    pub credential_cache_secs: u64,
    /// Account passwords may log in with SCRAM-SHA-256(-PLUS). Off by default: a SCRAM verifier
    /// is PBKDF2, a weaker KDF than argon2id, so keeping one for a password people choose makes
    /// a stolen database easier to crack. App passwords (≈146 random bits) always have one.
    /// Turning it off drops the stored account verifiers at the next start.
    #[serde(default)]
    pub scram_for_account_passwords: bool,
    /// PBKDF2 iterations of an account's SCRAM verifiers, fixed per account when its first
    /// verifier is made (minimum 4096, RFC 7677).
    #[serde(default = "d_scram_iterations")]
    pub scram_iterations: u32,
}

fn d_cache() -> u64 {
    300
}

fn d_scram_iterations() -> u32 {
    10_000
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            argon2_memory_kib: d_m(),
            argon2_iterations: d_t(),
            argon2_parallelism: d_p(),
            max_concurrent_verifications: 0,
            verification_queue_ms: d_verify_wait(),
            credential_cache_secs: d_cache(),
            scram_for_account_passwords: false,
            scram_iterations: d_scram_iterations(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicyConfig {
    #[serde(default = "d_min_len")]
    pub min_length: usize,
    /// Minimum zxcvbn score, 0..=4.
    #[serde(default = "d_min_score")]
    pub min_score: u8,
    /// Have I Been Pwned "Pwned Passwords" file (SHA-1, sorted by hash, `HASH:COUNT` lines).
    #[serde(default)]
    pub breached_passwords_file: Option<PathBuf>,
    /// Maximum password age in days; 0 = passwords do not expire (recommended: 365).
    #[serde(default)]
    pub max_age_days: u64,
    /// Days before expiry during which a successful login carries a warning (IMAP `[ALERT]`,
    /// SMTP 235 text, POP3 +OK text). Only with `max_age_days`.
    #[serde(default = "d_warn_days")]
    pub warn_days: u64,
    /// A new password may not be any of the last N (0 = no history).
    #[serde(default = "d_history")]
    pub history: u32,
}

fn d_history() -> u32 {
    5
}
fn d_warn_days() -> u64 {
    14
}

impl Default for PasswordPolicyConfig {
    fn default() -> Self {
        PasswordPolicyConfig {
            min_length: d_min_len(),
            min_score: d_min_score(),
            breached_passwords_file: None,
            max_age_days: 0,
            warn_days: d_warn_days(),
            history: d_history(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Largest message accepted, in octets (advertised in SIZE).
    #[serde(default = "d_msg_size")]
    pub max_message_size: usize,
    /// Longest command line including CRLF (RFC 5321 4.5.3.1.4: 512; we allow the text-line 1000).
    #[serde(default = "d_line")]
    pub max_line_length: usize,
    /// Recipients per message (RFC 5321 4.5.3.1.8 asks for at least 100).
    #[serde(default = "d_rcpt")]
    pub max_recipients: usize,
    /// Error replies in one session before it is closed.
    #[serde(default = "d_errors")]
    pub max_errors: u32,
    /// Commands outside a mail transaction (EHLO, NOOP, RSET, ...) before the session is closed.
    #[serde(default = "d_cmds")]
    pub max_commands_before_mail: u32,
    /// Failed AUTH attempts in one session before it is closed.
    #[serde(default = "d_auth_fail")]
    pub max_auth_failures: u32,
    /// Seconds to wait for a command (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(default = "d_cmd_to")]
    pub command_timeout_secs: u64,
    /// Seconds to wait for a command before authentication or a mail transaction began.
    #[serde(default = "d_pre_to")]
    pub idle_timeout_secs: u64,
    /// Seconds to wait for each block of DATA (RFC 5321 4.5.3.2.6: 3 minutes).
    #[serde(default = "d_data_to")]
    pub data_timeout_secs: u64,
    /// Seconds for a TLS handshake.
    #[serde(default = "d_tls_to")]
    pub tls_handshake_timeout_secs: u64,
    /// Milliseconds the server waits before its greeting; a client that talks first is disconnected.
    #[serde(default)]
    pub greeting_delay_ms: u64,
    /// Open connections in total across the SMTP listeners.
    #[serde(default = "d_conns")]
    pub max_connections: usize,
    /// Open connections from one IP address.
    #[serde(default = "d_conns_ip")]
    pub max_connections_per_ip: usize,
    /// Write the TLS version and cipher of inbound (port 25) connections into Received headers.
    #[serde(default)]
    pub received_tls_details: bool,
    /// Messages an authenticated account may submit per hour (per-account override:
    /// `postern user send-limits`). Beyond it: 451 4.7.1, the client keeps the message.
    #[serde(default = "d_msgs_hour")]
    pub max_messages_per_hour: u32,
    /// Recipients an authenticated account may submit to per hour.
    #[serde(default = "d_rcpts_hour")]
    pub max_recipients_per_hour: u32,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_message_size: d_msg_size(),
            max_line_length: d_line(),
            max_recipients: d_rcpt(),
            max_errors: d_errors(),
            max_commands_before_mail: d_cmds(),
            max_auth_failures: d_auth_fail(),
            command_timeout_secs: d_cmd_to(),
            idle_timeout_secs: d_pre_to(),
            data_timeout_secs: d_data_to(),
            tls_handshake_timeout_secs: d_tls_to(),
            greeting_delay_ms: 0,
            max_connections: d_conns(),
            max_connections_per_ip: d_conns_ip(),
            received_tls_details: false,
            max_messages_per_hour: d_msgs_hour(),
            max_recipients_per_hour: d_rcpts_hour(),
        }
    }
}

fn d_msgs_hour() -> u32 {
    200
}
fn d_rcpts_hour() -> u32 {
    1000
}

/// Throttling, bans and lockout (one mechanism for SMTP, IMAP and POP3), checked before any
/// password hashing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefenceConfig {
    /// Window of the per-IP, per-network and short per-account failure counters.
    #[serde(default = "d_def_window")]
    pub window_secs: u64,
    /// Failures from one IP address within the window before it is banned.
    #[serde(default = "d_def_ip")]
    pub ip_max_failures: u32,
    /// Failures from one network (IPv4 /24, IPv6 /64) within the window before it is banned.
    #[serde(default = "d_def_net")]
    pub network_max_failures: u32,
    /// Failures against one account from unknown clients within the window before the account
    /// is locked for unknown clients.
    #[serde(default = "d_def_ip")]
    pub account_max_failures: u32,
    /// The long window that catches slow attacks on one account, and its limit.
    #[serde(default = "d_def_long")]
    pub account_long_window_secs: u64,
    #[serde(default = "d_def_long_max")]
    pub account_long_max_failures: u32,
    /// How long an account stays locked for unknown clients.
    #[serde(default = "d_def_window")]
    pub account_lockout_secs: u64,
    /// First ban; each repeat offence within `offender_memory_secs` doubles it, up to the cap.
    #[serde(default = "d_def_ban")]
    pub ban_secs: u64,
    #[serde(default = "d_def_long")]
    pub ban_max_secs: u64,
    #[serde(default = "d_def_offender")]
    pub offender_memory_secs: u64,
    /// A source that logged in to an account within this period is a known client of it and is
    /// not locked out by attacks on the account from elsewhere.
    #[serde(default = "d_def_known")]
    pub known_client_days: u64,
    /// The same wrong password from the same source within this period counts once.
    #[serde(default = "d_def_same")]
    pub same_password_secs: u64,
    /// Delay before answering a failed login: base doubling per failure of the source, capped.
    #[serde(default = "d_def_delay")]
    pub failure_delay_ms: u64,
    #[serde(default = "d_def_delay_max")]
    pub failure_delay_max_ms: u64,
    /// Networks (CIDR) never throttled or banned, e.g. the admins' office.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// Wrong second-factor codes (TOTP or recovery code) for one account, from sources that are
    /// not its known clients, within `code_window_secs`, that lock its second factor for those
    /// sources (for `account_lockout_secs`, doubling with each repeat). Every wrong code also
    /// counts toward its source's ban.
    #[serde(default = "d_code_max")]
    pub code_max_failures: u32,
    #[serde(default = "d_code_window")]
    pub code_window_secs: u64,
    /// Audit log rows older than this are deleted (0 keeps everything).
    #[serde(default = "d_def_retention")]
    pub audit_retention_days: u64,
    /// Failed-login rows kept per login name per day; the rest is counted in a summary row, so
    /// an attack cannot fill the disk (0: no cap).
    #[serde(default = "d_def_audit_cap")]
    pub audit_max_failures_per_account_day: u64,
}

fn d_def_audit_cap() -> u64 {
    1000
}

fn d_def_retention() -> u64 {
    365
}

fn d_def_window() -> u64 {
    900
}
fn d_def_ip() -> u32 {
    10
}
fn d_def_net() -> u32 {
    30
}
fn d_def_long() -> u64 {
    86400
}
fn d_def_long_max() -> u32 {
    50
}
fn d_def_ban() -> u64 {
    600
}
fn d_def_offender() -> u64 {
    7 * 86400
}
fn d_def_known() -> u64 {
    30
}
fn d_def_same() -> u64 {
    3600
}
fn d_def_delay() -> u64 {
    250
}
fn d_def_delay_max() -> u64 {
    4000
}

impl Default for DefenceConfig {
    fn default() -> Self {
        DefenceConfig {
            window_secs: d_def_window(),
            ip_max_failures: d_def_ip(),
            network_max_failures: d_def_net(),
            account_max_failures: d_def_ip(),
            account_long_window_secs: d_def_long(),
            account_long_max_failures: d_def_long_max(),
            account_lockout_secs: d_def_window(),
            ban_secs: d_def_ban(),
            ban_max_secs: d_def_long(),
            offender_memory_secs: d_def_offender(),
            known_client_days: d_def_known(),
            same_password_secs: d_def_same(),
            failure_delay_ms: d_def_delay(),
            failure_delay_max_ms: d_def_delay_max(),
            allowlist: Vec::new(),
            code_max_failures: d_code_max(),
            code_window_secs: d_code_window(),
            audit_retention_days: d_def_retention(),
            audit_max_failures_per_account_day: d_def_audit_cap(),
        }
    }
}

/// IMAP limits (RFC 3501, RFC 9051). Connection caps are shared by IMAP and POP3 listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Largest message APPEND accepts, in octets (announced as APPENDLIMIT).
    #[serde(default = "d_msg_size")]
    pub max_append_size: usize,
    /// Largest command line (and non-APPEND literal), in octets.
    #[serde(default = "d_imap_cmd")]
    pub max_command_size: usize,
    /// Idle timeout once logged in; RFC 3501 5.4 asks for at least 30 minutes.
    #[serde(default = "d_imap_idle")]
    pub idle_timeout_secs: u64,
    /// Idle timeout before login.
    #[serde(default = "d_pre_to")]
    pub login_timeout_secs: u64,
    /// On the STARTTLS port: how long the server watches for a client that talks before the
    /// greeting (it gets BYE and is disconnected); a real client waits this long for it.
    #[serde(default = "d_greet")]
    pub greeting_delay_ms: u64,
    /// Failed logins in one session before the server says BYE.
    #[serde(default = "d_auth_fail")]
    pub max_auth_failures: u32,
    /// Open IMAP and POP3 connections, in total and from one IP address.
    #[serde(default = "d_mbx_conns")]
    pub max_connections: usize,
    #[serde(default = "d_conns_ip")]
    pub max_connections_per_ip: usize,
    /// Concurrent IMAP sessions of one account.
    #[serde(default = "d_conns_ip")]
    pub max_sessions_per_account: usize,
    /// Invalid commands in one session before the server says BYE.
    #[serde(default = "d_errors")]
    pub max_errors: u32,
    /// Sessions that may have COMPRESS=DEFLATE on at once (each holds about 300 KiB of
    /// compression state); beyond it COMPRESS gets `NO [LIMIT]` and the session goes on
    /// uncompressed. 0 turns COMPRESS off (not advertised).
    #[serde(default = "d_compressed")]
    pub max_compressed_sessions: usize,
    /// QRESYNC's expunge record kept per mailbox (entries); older ones are pruned hourly, and
    /// a client resynchronising from before them is told every known UID that is gone.
    #[serde(default = "d_vanished_keep")]
    pub vanished_records_per_mailbox: u64,
}

fn d_vanished_keep() -> u64 {
    100_000
}

fn d_compressed() -> usize {
    1000
}
fn d_imap_cmd() -> usize {
    65536
}
fn d_imap_idle() -> u64 {
    1800
}
fn d_mbx_conns() -> usize {
    10000
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_append_size: d_msg_size(),
            max_command_size: d_imap_cmd(),
            idle_timeout_secs: d_imap_idle(),
            login_timeout_secs: d_pre_to(),
            greeting_delay_ms: d_greet(),
            max_auth_failures: d_auth_fail(),
            max_connections: d_mbx_conns(),
            max_connections_per_ip: d_conns_ip(),
            max_sessions_per_account: d_conns_ip(),
            max_errors: d_errors(),
            max_compressed_sessions: d_compressed(),
            vanished_records_per_mailbox: d_vanished_keep(),
        }
    }
}

/// POP3 settings. "Prefer IMAP over POP3": `enabled = false` switches POP3 off server-wide even if
/// listeners are configured; `postern user pop3 ADDRESS off` does it per account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop3Config {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Idle timeout; RFC 1939 asks for at least 10 minutes once logged in.
    #[serde(default = "d_pop_idle")]
    pub idle_timeout_secs: u64,
    #[serde(default = "d_pre_to")]
    pub login_timeout_secs: u64,
    /// On the STLS port: how long the server watches for a client that talks before the
    /// greeting (it gets -ERR and is disconnected).
    #[serde(default = "d_greet")]
    pub greeting_delay_ms: u64,
    #[serde(default = "d_auth_fail")]
    pub max_auth_failures: u32,
    #[serde(default = "d_errors")]
    pub max_errors: u32,
}

fn d_code_max() -> u32 {
    5
}
fn d_code_window() -> u64 {
    900
}

fn d_greet() -> u64 {
    50
}

fn d_true() -> bool {
    true
}
fn d_pop_idle() -> u64 {
    600
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            enabled: true,
            idle_timeout_secs: d_pop_idle(),
            login_timeout_secs: d_pre_to(),
            greeting_delay_ms: d_greet(),
            max_auth_failures: d_auth_fail(),
            max_errors: d_errors(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Anchors of the audit chain outside the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file (best on another volume, or a file the database's writer cannot change) to which
    /// signed checkpoints of the audit chain are appended, one JSON object per line.
    /// `postern audit-log verify --checkpoint FILE` proves the chain against them. Checkpoints
    /// always go to the log too (target `postern::audit::checkpoint`).
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// How often a checkpoint is written (and at every shutdown).
    #[serde(default = "d_checkpoint_secs")]
    pub checkpoint_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_file: None,
            checkpoint_secs: d_checkpoint_secs(),
        }
    }
}

fn d_checkpoint_secs() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "info,postern_smtp=debug".
    #[serde(default = "d_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: d_level(),
        }
    }
}

fn d_grace() -> u64 {
    30
}
fn d_cert() -> PathBuf {
    "tls/cert.pem".into()
}
fn d_key() -> PathBuf {
    "tls/key.pem".into()
}
fn d_db() -> PathBuf {
    "postern.db".into()
}
fn d_blobs() -> PathBuf {
    "blobs".into()
}
fn d_m() -> u32 {
    19_456
}
fn d_t() -> u32 {
    2
}
fn d_p() -> u32 {
    1
}
fn d_verify_wait() -> u64 {
    2_000
}
fn d_min_len() -> usize {
    12
}
fn d_min_score() -> u8 {
    3
}
fn d_msg_size() -> usize {
    50 * 1024 * 1024
}
fn d_line() -> usize {
    1000
}
fn d_rcpt() -> usize {
    100
}
fn d_errors() -> u32 {
    20
}
fn d_cmds() -> u32 {
    25
}
fn d_auth_fail() -> u32 {
    3
}
fn d_cmd_to() -> u64 {
    300
}
fn d_pre_to() -> u64 {
    60
}
fn d_data_to() -> u64 {
    180
}
fn d_tls_to() -> u64 {
    10
}
fn d_conns() -> usize {
    1000
}
fn d_conns_ip() -> usize {
    20
}
fn d_level() -> String {
    "info".into()
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut cfg = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        cfg.base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_owned();
        cfg.file = path.to_owned();
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Parses TOML text (no validation, no base directory).
    pub fn parse(text: &str) -> Result<Config, String> {
        // toml's message is several lines: where, the line with a caret under the fault, and
        // what is wrong. Kept as it is, starting on a line of its own.
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| format!("\n{}", e.to_string().trim_end()))?;
        // `[delivery] dns_server` came first; it stays an alias of `[dns] server`.
        match (cfg.dns.server, cfg.delivery.dns_server) {
            (Some(a), Some(b)) if a != b => {
                return Err("dns.server and delivery.dns_server (its older name) disagree; keep dns.server only".into())
            }
            (None, Some(b)) => cfg.dns.server = Some(b),
            _ => {}
        }
        Ok(cfg)
    }

    /// Checks values that parse but make no sense; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.directories.len() > 1 {
            return Err("only one [[directory]] is supported".into());
        }
        for d in &self.directories {
            if d.kind != "ldap" {
                return Err(format!("directory.kind {:?}: only \"ldap\"", d.kind));
            }
            let tls = d.url.starts_with("ldaps://") || (d.url.starts_with("ldap://") && d.starttls);
            if !tls {
                return Err(format!(
                    "directory.url {:?}: use ldaps://, or ldap:// with starttls = true (passwords never go to the directory in clear)",
                    d.url
                ));
            }
            if let Some(r) = d.admin_groups.keys().find(|r| {
                !["superadmin", "domain-admin", "helpdesk", "auditor"].contains(&r.as_str())
            }) {
                return Err(format!("directory.admin_groups: unknown role {r:?}"));
            }
            if d.admin_groups.contains_key("domain-admin") && d.domains.is_empty() {
                return Err("directory.admin_groups.domain-admin needs directory.domains (the domains it manages)".into());
            }
            if d.admin_user_filter.is_some() == d.admin_groups.is_empty() {
                return Err(
                    "directory.admin_user_filter and directory.admin_groups go together".into(),
                );
            }
            if !d.user_filter.contains('{') || d.timeout_secs == 0 {
                return Err("directory.user_filter must use {login}, {user} or {domain}; timeout_secs at least 1".into());
            }
        }
        for o in &self.oidc {
            if !o.issuer.starts_with("https://") {
                return Err(format!(
                    "oidc.issuer {:?} must be an https:// URL",
                    o.issuer
                ));
            }
            if o.audience.is_empty() || o.claim.is_empty() {
                return Err("oidc.audience and oidc.claim must not be empty".into());
            }
            if o.algorithms.is_empty() {
                return Err("oidc.algorithms must name at least one algorithm".into());
            }
            if let Some(a) = o
                .algorithms
                .iter()
                .find(|a| !OIDC_ALGORITHMS.contains(&a.as_str()))
            {
                return Err(format!(
                    "oidc.algorithms: {a:?} is not allowed (asymmetric signatures only: {}; never none or HS*)",
                    OIDC_ALGORITHMS.join(", ")
                ));
            }
            if o.introspection_client_id.is_some() != o.introspection_client_secret.is_some() {
                return Err(
                    "oidc.introspection_client_id and introspection_client_secret go together"
                        .into(),
                );
            }
            if o.leeway_secs > 300 {
                return Err("oidc.leeway_secs must be at most 300".into());
            }
        }
        if postern_types::Domain::parse(&self.server.hostname).is_err() {
            return Err(format!(
                "server.hostname {:?} is not a fully qualified host name",
                self.server.hostname
            ));
        }
        let acme = &self.acme;
        if let Some(dir) = &acme.directory {
            if !dir.starts_with("https://") {
                return Err("acme.directory must be an https:// URL".into());
            }
            if !["tls-alpn-01", "http-01"].contains(&acme.challenge.as_str()) {
                return Err("acme.challenge must be \"tls-alpn-01\" or \"http-01\"".into());
            }
            if acme.contact.iter().any(|c| !c.starts_with("mailto:")) {
                return Err("acme.contact entries are mailto: URLs".into());
            }
            if self.mta_sts.listen == Some(acme.listen_addr()) {
                return Err("acme.listen and mta_sts.listen are the same address: use challenge = \"http-01\" (port 80) when the MTA-STS host has port 443".into());
            }
            if acme.check_secs == 0 {
                return Err("acme.check_secs must be at least 1".into());
            }
        }
        let a = &self.alerts;
        if let Some(url) = &a.webhook {
            let ok = url.starts_with("https://")
                || ["http://127.", "http://[::1]", "http://localhost"]
                    .iter()
                    .any(|p| url.starts_with(p));
            if !ok {
                return Err(
                    "alerts.webhook must be https:// (http only to a loopback address)".into(),
                );
            }
            if a.webhook_secret.is_none() {
                return Err(
                    "alerts.webhook needs alerts.webhook_secret (a reference to the signing key)"
                        .into(),
                );
            }
        }
        if a.check_secs == 0 || a.repeat_mins == 0 || a.audit_chain_check_mins == 0 {
            return Err(
                "alerts.check_secs, repeat_mins and audit_chain_check_mins must be at least 1"
                    .into(),
            );
        }
        let b = &self.backup;
        if b.dir.is_some() && self.storage.postgres_url().is_some() {
            return Err(
                "backup.dir: scheduled backups copy a SQLite installation; on PostgreSQL use its own tools (pg_dump, continuous archiving)"
                    .into(),
            );
        }
        if b.dir.is_some() != b.key.is_some() {
            return Err(
                "backup.dir and backup.key go together: scheduled backups need both".into(),
            );
        }
        if let Some(k) = &b.key {
            if !["env:", "file:", "vault:"].iter().any(|p| k.starts_with(p)) {
                return Err(
                    "backup.key must be a reference: env:NAME, file:PATH or vault:MOUNT/PATH#FIELD"
                        .into(),
                );
            }
        }
        if b.interval_hours == 0 || b.keep == 0 {
            return Err("backup.interval_hours and backup.keep must be at least 1".into());
        }
        let s = &self.smtp;
        if s.max_line_length < 512 {
            return Err("smtp.max_line_length must be at least 512 (RFC 5321 4.5.3.1.4)".into());
        }
        if s.max_recipients == 0 || s.max_message_size < 1024 || s.max_connections == 0 {
            return Err("smtp.max_recipients, smtp.max_message_size and smtp.max_connections must be positive (max_message_size at least 1024)".into());
        }
        if s.max_connections_per_ip == 0 || s.max_auth_failures == 0 || s.max_errors == 0 {
            return Err("smtp.max_connections_per_ip, smtp.max_auth_failures and smtp.max_errors must be at least 1".into());
        }
        let d = &self.defence;
        if d.window_secs == 0
            || d.ip_max_failures == 0
            || d.network_max_failures == 0
            || d.account_max_failures == 0
            || d.account_long_max_failures == 0
            || d.code_max_failures == 0
            || d.code_window_secs == 0
            || d.ban_secs == 0
            || d.ban_max_secs < d.ban_secs
        {
            return Err("defence: windows, limits and ban_secs must be at least 1, and ban_max_secs at least ban_secs".into());
        }
        for l in &self.listeners {
            for a in l.allow.iter().chain(&l.deny).chain(&l.proxy_from) {
                if !valid_cidr(a) {
                    return Err(format!(
                        "listener {}: {a:?} is not an IP address or CIDR network",
                        l.address
                    ));
                }
            }
        }
        for a in &self.inbound.trusted_networks {
            if !valid_cidr(a) {
                return Err(format!(
                    "inbound.trusted_networks: {a:?} is not an IP address or CIDR network"
                ));
            }
        }
        for z in self
            .inbound
            .dnsbl
            .iter()
            .chain(&self.inbound.skip_checks_for)
        {
            if postern_types::Domain::parse(z).is_err() {
                return Err(format!(
                    "inbound.dnsbl and inbound.skip_checks_for take domain names; {z:?} is not one"
                ));
            }
        }
        if let Some(f) = &self.inbound.reports_from {
            if postern_types::EmailAddress::parse(f).is_err() {
                return Err(format!(
                    "inbound.reports_from {f:?} is not an email address"
                ));
            }
        }
        if !["testing", "enforce", "none"].contains(&self.mta_sts.mode.as_str()) {
            return Err("mta_sts.mode must be testing, enforce or none".into());
        }
        if self.mta_sts.max_age_days == 0 || self.mta_sts.max_age_days > 365 {
            return Err("mta_sts.max_age_days must be between 1 and 365".into());
        }
        if self.dns.timeout_ms == 0 || self.dns.attempts == 0 {
            return Err("dns.timeout_ms and dns.attempts must be at least 1".into());
        }
        let g = &self.greylist;
        if g.retry_window_hours * 3600 <= g.delay_secs || g.expire_days == 0 {
            return Err("greylist.retry_window_hours must be longer than greylist.delay_secs, and greylist.expire_days at least 1".into());
        }
        for a in &d.allowlist {
            if !valid_cidr(a) {
                return Err(format!(
                    "defence.allowlist: {a:?} is not an IP address or CIDR network"
                ));
            }
        }
        let i = &self.imap;
        if i.max_command_size < 8192 || i.max_append_size < 1024 {
            return Err("imap.max_command_size must be at least 8192 and imap.max_append_size at least 1024".into());
        }
        if i.idle_timeout_secs < 60
            || i.max_connections == 0
            || i.max_connections_per_ip == 0
            || i.max_sessions_per_account == 0
            || i.max_auth_failures == 0
            || i.max_errors == 0
        {
            return Err(
                "imap.idle_timeout_secs must be at least 60 and the imap.max_* limits at least 1"
                    .into(),
            );
        }
        if self.pop3.max_auth_failures == 0 || self.pop3.max_errors == 0 {
            return Err("pop3.max_auth_failures and pop3.max_errors must be at least 1".into());
        }
        if self.password_policy.min_score > 4 {
            return Err("password_policy.min_score must be between 0 and 4".into());
        }
        if self.password_policy.min_length < 8 {
            return Err("password_policy.min_length must be at least 8".into());
        }
        if self.auth.argon2_memory_kib < 8 * self.auth.argon2_parallelism.max(1)
            || self.auth.argon2_iterations == 0
            || self.auth.argon2_parallelism == 0
        {
            return Err("auth.argon2_* parameters are out of range".into());
        }
        let m = &self.secrets.master_key;
        let ok = ["file:", "env:", "vault:", "transit:"]
            .iter()
            .any(|p| m.strip_prefix(p).is_some_and(|r| !r.is_empty()));
        if !ok {
            return Err(format!(
                "secrets.master_key {m:?} must be file:PATH, env:NAME, vault:MOUNT/PATH#FIELD or transit:KEY"
            ));
        }
        if (m.starts_with("vault:") || m.starts_with("transit:"))
            && self.secrets.vault_addr.is_none()
        {
            return Err(format!("secrets.master_key {m:?} needs secrets.vault_addr"));
        }
        if let Some(u) = self.storage.postgres_url() {
            let rest = &u[u.find("://").map_or(0, |i| i + 3)..];
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if authority
                .split('@')
                .next()
                .is_some_and(|userinfo| authority.contains('@') && userinfo.contains(':'))
            {
                return Err(
                    "storage.database must not carry a password: use storage.database_password = \"env:NAME\" (or file:, vault:)"
                        .into(),
                );
            }
        }
        if self.storage.bodies == Some(BodiesIn::Database) && self.storage.postgres_url().is_none()
        {
            return Err("storage.bodies = \"database\" needs a postgres:// database".into());
        }
        if let Some(p) = &self.storage.database_password {
            if self.storage.postgres_url().is_none() {
                return Err("storage.database_password is for a postgres:// database".into());
            }
            if !["env:", "file:", "vault:"].iter().any(|k| p.starts_with(k)) {
                return Err(
                    "storage.database_password must be a reference (env:NAME, file:PATH, vault:…), not the password"
                        .into(),
                );
            }
        }
        if let Some(r) = &self.cluster.redis {
            if !(r.starts_with("redis://") || r.starts_with("rediss://")) {
                return Err(format!(
                    "cluster.redis {r:?} must be a redis:// or rediss:// URL"
                ));
            }
            if r.contains('@') {
                return Err(
                    "cluster.redis must not carry a password: use cluster.redis_password = \"env:NAME\" (or file:, secret:, vault:)"
                        .into(),
                );
            }
            if r.contains("#insecure") {
                return Err(
                    "cluster.redis: #insecure (no certificate verification) is refused; give the CA with cluster.redis_ca"
                        .into(),
                );
            }
        }
        if self.cluster.redis_ca.is_some()
            && !self
                .cluster
                .redis
                .as_deref()
                .is_some_and(|r| r.starts_with("rediss://"))
        {
            return Err(
                "cluster.redis_ca is for TLS: cluster.redis must be a rediss:// URL".into(),
            );
        }
        if let Some(p) = &self.cluster.redis_password {
            if !["env:", "file:", "secret:", "vault:"]
                .iter()
                .any(|k| p.starts_with(k))
            {
                return Err(
                    "cluster.redis_password must be a reference (env:NAME, file:PATH, secret:NAME, vault:…), not the password"
                        .into(),
                );
            }
        }
        for (what, list) in [
            ("admin.allow", &self.admin.allow),
            ("web.allow", &self.web.allow),
        ] {
            for a in list {
                if !valid_cidr(a) {
                    return Err(format!(
                        "{what}: {a:?} is not an IP address or CIDR network"
                    ));
                }
            }
        }
        if self.audit.checkpoint_secs < 10 {
            return Err("audit.checkpoint_secs must be at least 10".into());
        }
        if self.admin.session_secs < 60 || self.admin.session_secs > 86400 {
            return Err("admin.session_secs must be between 60 and 86400".into());
        }
        let dl = &self.delivery;
        if dl.retry_schedule_secs.is_empty() || dl.retry_schedule_secs.contains(&0) {
            return Err(
                "delivery.retry_schedule_secs needs at least one value, none of them 0".into(),
            );
        }
        if dl.workers == 0 || dl.per_destination == 0 || dl.give_up_after_secs == 0 {
            return Err(
                "delivery.workers, per_destination and give_up_after_secs must be at least 1"
                    .into(),
            );
        }
        for r in &self.relays {
            if r.domains.is_empty() || r.host.is_empty() || r.port == 0 {
                return Err(format!(
                    "relay {}: domains, host and port are required",
                    r.host
                ));
            }
            if r.username.is_some() != r.password.is_some() {
                return Err(format!(
                    "relay {}: username and password go together",
                    r.host
                ));
            }
            if let Some(p) = &r.password {
                let is_ref = ["secret:", "env:", "file:", "vault:"]
                    .iter()
                    .any(|x| p.starts_with(x));
                if !is_ref && !self.secrets.allow_plaintext_secrets {
                    return Err(format!(
                        "relay {}: the password is written in clear; store it with `postern secret set NAME --stdin` and write password = \"secret:NAME\" (or env:, file:, vault:)",
                        r.host
                    ));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(a) = self.admin.listen {
            seen.insert(a);
        }
        if let Some(w) = self.web.listen {
            if !seen.insert(w) {
                return Err(format!(
                    "[web] listen {w} is the admin listener's address: leave it out to serve the portal there"
                ));
            }
        }

        for l in &self.listeners {
            if l.protocol == Protocol::Web {
                return Err(format!(
                    "listener {}: \"web\" is not a listener protocol (the portal is served by the [admin] listener)",
                    l.address
                ));
            }
            if !seen.insert(l.address) {
                return Err(format!("two listeners use the address {}", l.address));
            }
        }
        Ok(())
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// The file `postern init` writes: every listener on `ip` at its standard port plus `port_offset`.
fn valid_cidr(s: &str) -> bool {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    match a.trim().parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            p.is_none_or(|p| p.trim().parse::<u8>().is_ok_and(|p| p <= max))
        }
        Err(_) => false,
    }
}

pub fn initial_config_text(hostname: &str, ip: std::net::IpAddr, port_offset: u16) -> String {
    let mut out = format!(
        "# Postern configuration. Every key and its default is described in docs/configuration.md.\n\
         # Relative paths are resolved against the directory of this file.\n\n\
         [server]\nhostname = \"{hostname}\"\nshutdown_grace_secs = 30\n\n\
         [tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\n\
         [storage]\ndatabase = \"postern.db\"\nblobs = \"blobs\"\n\n"
    );
    for proto in [
        Protocol::Smtp,
        Protocol::Submission,
        Protocol::Submissions,
        Protocol::Imap,
        Protocol::Imaps,
        Protocol::Pop3,
        Protocol::Pop3s,
    ] {
        let port = proto.standard_port().saturating_add(port_offset);
        let addr = SocketAddr::new(ip, port);
        out.push_str(&format!(
            "[[listener]]\nprotocol = \"{}\"\naddress = \"{addr}\"\n\n",
            proto.name()
        ));
    }
    out.push_str(
        "[password_policy]\nmin_length = 12\nmin_score = 3\n\
         # breached_passwords_file = \"/var/lib/postern/pwned-passwords-sha1-ordered-by-hash.txt\"\n\n\
         [smtp]\nmax_message_size = 52428800\nmax_recipients = 100\n\n\
         [imap]\nmax_append_size = 52428800\n\n\
         # Set enabled = false to switch POP3 off everywhere (prefer IMAP).\n\
         [pop3]\nenabled = true\n\n\
         # The master key seals TOTP seeds, relay passwords, DKIM keys and the audit chain's key.\n\
         # Choose it before the first account; to change it later: postern secret rotate-master-key.\n\
         [secrets]\nmaster_key = \"file:master.key\"\n\n\
         # Port 25 checks SPF, DKIM, ARC and DMARC on every message (our own domains cannot be spoofed\n\
         # from outside) and greylists unknown senders; see [inbound], [greylist] and [dns] in\n\
         # docs/configuration.md. A forwarder or backup MX that relays to this server goes in\n\
         # [inbound] trusted_networks; block lists in [inbound] dnsbl.\n\n\
         # Prometheus metrics over plain HTTP for a scraper on this host (also served over HTTPS by\n\
         # the admin API at /metrics to an auditor's API key):\n\
         # [metrics]\n\
         # listen = \"127.0.0.1:9587\"\n\n\
         # Alerts (brute force, bans, queue, certificate, audit chain …) are mailed to postmaster@ each\n\
         # domain; a signed webhook can get them too:\n\
         # [alerts]\n\
         # webhook = \"https://hooks.example.net/postern\"\n\
         # webhook_secret = \"file:/etc/postern/webhook.key\"\n\n\
         # A certificate from Let's Encrypt, renewed and reloaded without a restart:\n\
         # [acme]\n\
         # directory = \"https://acme-v02.api.letsencrypt.org/directory\"\n\
         # contact = [\"mailto:postmaster@example.com\"]\n\n\
         # Encrypted backups every day, seven kept (make the key with `postern backup keygen --out FILE`\n\
         # and keep FILE off this server; the recipient it prints goes here). The master key is never in\n\
         # a backup: keep it separately.\n\
         # [backup]\n\
         # dir = \"/srv/backup/postern\"\n\
         # key = \"file:/etc/postern/backup.recipient\"\n\n\
         # A login from a network or mail program an account has not used for 30 days puts a notice\n\
         # in its INBOX (on by default; never for networks on the defence allowlist):\n\
         # [notify]\n\
         # new_signin = true\n\
         # known_days = 30\n\n",
    );
    let admin_port = 8080u16.saturating_add(port_offset);
    // The admin API stays on loopback even if the mail listeners face the world.
    let ip = if ip.is_loopback() {
        ip
    } else {
        std::net::IpAddr::from([127, 0, 0, 1])
    };
    out.push_str(&format!(
        "# The admin HTTP API (HTTPS). Create the first administrator with `postern admin bootstrap`.\n\
         [admin]\nlisten = \"{}\"\n",
        SocketAddr::new(ip, admin_port)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_text_parses_and_validates() {
        let text = initial_config_text("mail.example.test", "127.0.0.1".parse().unwrap(), 10000);
        let cfg = Config::parse(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.listeners.len(), 7);
        assert_eq!(cfg.listeners[3].address.port(), 10143);
        assert_eq!(cfg.listeners[6].address.port(), 10995);
        assert_eq!(cfg.listeners[0].address.port(), 10025);
        assert_eq!(cfg.listeners[1].address.port(), 10587);
        assert_eq!(cfg.listeners[2].address.port(), 10465);
        assert_eq!(cfg.smtp.max_line_length, 1000);
    }

    #[test]
    fn addresses_say_what_is_wrong() {
        let listener = |a: &str| {
            Config::parse(&format!(
                "[server]\nhostname='a.test'\n[[listener]]\nprotocol='smtp'\naddress='{a}'\n"
            ))
        };
        assert!(listener("127.0.0.1:99999")
            .unwrap_err()
            .contains("port 99999 is out of range"));
        assert!(listener("localhost:25")
            .unwrap_err()
            .contains("is not an IP address"));
        let e = listener("127.0.0.1:x").unwrap_err();
        assert!(e.contains("not a port number"), "{e}");
        // the caret diagram keeps its lines
        assert!(e.lines().count() >= 3, "{e}");
        assert_eq!(
            listener("[::1]:25").unwrap().listeners[0].address.port(),
            25
        );
        let err = Config::load(Path::new("/nonexistent/postern.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("postern init"), "{text}");
        assert!(
            std::error::Error::source(&err).is_none(),
            "printed once, not twice"
        );
    }

    #[test]
    fn cluster_and_web_settings_are_checked() {
        let c = |extra: &str| {
            Config::parse(&format!("[server]\nhostname='a.test'\n{extra}"))
                .unwrap()
                .validate()
        };
        c("[storage]\ndatabase='postgres://mail@127.0.0.1:5432/mail'\ndatabase_password='env:P'\n")
            .unwrap();
        let e = c("[storage]\ndatabase='postgres://mail:pw@127.0.0.1/mail'\n").unwrap_err();
        assert!(e.contains("must not carry a password"), "{e}");
        let e = c("[storage]\ndatabase='postgres://mail@h/mail'\ndatabase_password='pw'\n")
            .unwrap_err();
        assert!(e.contains("must be a reference"), "{e}");
        let e = c("[storage]\ndatabase_password='env:P'\n").unwrap_err();
        assert!(e.contains("postgres://"), "{e}");
        c("[cluster]\nredis='redis://127.0.0.1:6379'\nredis_password='env:R'\n").unwrap();
        let e = c("[cluster]\nredis='redis://:pw@127.0.0.1:6379'\n").unwrap_err();
        assert!(e.contains("must not carry a password"), "{e}");
        let e = c("[cluster]\nredis='127.0.0.1:6379'\n").unwrap_err();
        assert!(e.contains("redis://"), "{e}");
        let e = c("[cluster]\nredis='redis://h:1'\nredis_password='hunter2'\n").unwrap_err();
        assert!(e.contains("reference") && !e.contains("hunter2"), "{e}");
        c("[cluster]\nredis='rediss://h:6380'\nredis_ca='/etc/ca.pem'\n").unwrap();
        let e = c("[cluster]\nredis='redis://h:6379'\nredis_ca='/etc/ca.pem'\n").unwrap_err();
        assert!(e.contains("rediss://"), "{e}");
        let e = c("[cluster]\nredis='rediss://h:6380/#insecure'\n").unwrap_err();
        assert!(e.contains("redis_ca"), "{e}");
        let e =
            c("[admin]\nlisten='127.0.0.1:8080'\n[web]\nlisten='127.0.0.1:8080'\n").unwrap_err();
        assert!(e.contains("[web] listen"), "{e}");
        let e = c("[web]\nallow=['not a net']\n").unwrap_err();
        assert!(e.contains("web.allow"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[server]\nhostname='a.test'\nhostnme='x'\n").unwrap_err();
        assert!(err.contains("hostnme"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let mut cfg = Config::parse("[server]\nhostname='a.test'\n").unwrap();
        cfg.smtp.max_line_length = 100;
        assert!(cfg.validate().unwrap_err().contains("max_line_length"));
        cfg.smtp.max_line_length = 1000;
        cfg.server.hostname = "not a host".into();
        assert!(cfg.validate().unwrap_err().contains("hostname"));
    }

    #[test]
    fn dns_server_alias_and_inbound_settings() {
        let c = |extra: &str| Config::parse(&format!("[server]\nhostname='a.test'\n{extra}"));
        // the older name still works
        let cfg = c("[delivery]\ndns_server='127.0.0.1:5353'\n").unwrap();
        assert_eq!(cfg.dns.server, Some("127.0.0.1:5353".parse().unwrap()));
        // both, the same: fine; both, different: refused
        assert!(c("[dns]\nserver='127.0.0.1:53'\n[delivery]\ndns_server='127.0.0.1:53'\n").is_ok());
        let e =
            c("[dns]\nserver='127.0.0.1:53'\n[delivery]\ndns_server='127.0.0.1:54'\n").unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        // greylisting and checks are on by default
        let cfg = c("").unwrap();
        assert!(
            cfg.inbound.checks && cfg.greylist.enabled && cfg.inbound.trusted_networks.is_empty()
        );
        let mut cfg =
            c("[inbound]\ntrusted_networks=['192.0.2.0/24']\ndnsbl=['zen.example']\n").unwrap();
        assert!(cfg.validate().is_ok());
        cfg.inbound.trusted_networks.push("nonsense".into());
        assert!(cfg.validate().unwrap_err().contains("trusted_networks"));
        let mut cfg = c("[inbound]\ndnsbl=['not a zone']\n").unwrap();
        assert!(cfg.validate().unwrap_err().contains("dnsbl"));
        cfg.inbound.dnsbl.clear();
        cfg.greylist.delay_secs = 10 * 86400;
        assert!(cfg.validate().unwrap_err().contains("retry_window_hours"));
    }
}
