//! The command line's definition (clap): every command, its arguments and its help. Passwords are never accepted as arguments: only on standard input
//! (`--password-stdin`) or at a prompt without echo.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use postern_config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "postern",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("POSTERN_COMMIT"), ")"),
    about = "A self-hosted mail server with secure defaults"
)]
pub struct Cli {
    /// Configuration file (default: $POSTERN_CONFIG, else ./postern.toml).
    #[arg(long, global = true, env = "POSTERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory made by `postern init`; shorthand for --config DIR/postern.toml.
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a data directory: postern.toml, the database and a self-signed certificate.
    /// Creates no account and no password.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The first mail domain.
        #[arg(long)]
        domain: String,
        /// Host name of this server (default: mail.DOMAIN).
        #[arg(long)]
        hostname: Option<String>,
        /// Address every listener binds to.
        #[arg(long, default_value = "0.0.0.0")]
        listen_ip: IpAddr,
        /// Added to every standard port (25, 587, 465) so the server can run unprivileged.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// The user the server runs as when started as root: the directory is given to it
        /// (run init as root) and `[server] user` names it.
        #[arg(long)]
        user: Option<String>,
        /// A PostgreSQL database instead of the SQLite file: `postgres://USER@HOST:PORT/DB`
        /// (several nodes share it; a node whose database is already set up joins it).
        #[arg(long)]
        database: Option<String>,
        /// With --database: a reference to its password (`env:NAME`, `file:PATH`,
        /// `vault:MOUNT/PATH#FIELD`), never the password itself.
        #[arg(long, requires = "database")]
        database_password: Option<String>,
    },
    /// Run every configured listener until SIGTERM or SIGINT.
    Serve,
    /// Copy a SQLite installation (its database, message bodies and audit chain) into an empty
    /// PostgreSQL database, then check row counts and the audit chain there. The server of
    /// DIR must be stopped.
    Migrate {
        /// The data directory of the SQLite installation.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database: `postgres://USER@HOST:PORT/DB`.
        #[arg(long)]
        to: String,
        /// A reference to its password (`env:NAME`, `file:PATH`, `vault:MOUNT/PATH#FIELD`).
        #[arg(long)]
        to_password: Option<String>,
    },
    /// A first look: a throw-away server on 127.0.0.1 for the domain example.test, with one user
    /// whose generated password is printed once. Ports: SMTP 10025, submission 10587,
    /// submissions 10465, IMAP 10143, IMAPS 10993, POP3 10110, POP3S 10995, admin API (HTTPS)
    /// 18080. Its data directory is removed when it stops (unless given with --dir).
    Demo,
    /// Mail domains served by this server.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Mail accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Additional addresses delivered to (and usable as sender by) an account.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// The outbound queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// App passwords for mail clients: generated, shown once, scoped (protocols, networks, expiry).
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCmd),
    /// DKIM signing keys (sealed in the secret store) and their rotation.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// The DNS records to publish for a domain: MX, SPF, DKIM, DMARC, client autoconfiguration.
    Dns {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// The internal secret store (relay passwords, keys), sealed under the master key.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Administrators of the admin API (there is none until `admin bootstrap`).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Application credentials: programs that may only submit mail, as listed senders.
    #[command(subcommand)]
    App(AppCmd),
    /// Bans of source addresses and networks; works while the server runs.
    #[command(subcommand)]
    Ban(BanCmd),
    /// Incident response for a compromised account: lock it (sessions end within a second),
    /// read its timeline, unlock it with a new password.
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// DMARC aggregate reports to the domains that ask for them (`rua`); the server sends those
    /// of finished days once an hour.
    #[command(subcommand)]
    Reports(ReportsCmd),
    /// Check this installation against the practices of docs/security.md: certificate, every
    /// listener from outside (TLS, login before TLS, open relay), published DNS, credentials,
    /// files, audit chain, backups. Each finding says what, why, how to fix and the setting.
    /// Exit status 1 when any finding is high.
    Audit {
        #[arg(long)]
        json: bool,
        /// Do not connect to the listeners.
        #[arg(long)]
        no_connect: bool,
        /// Do not look up DNS records.
        #[arg(long)]
        no_dns: bool,
    },
    /// Encrypted backups (age) of a running server, their check, and restore into a new data
    /// directory. The master key is never in a backup: keep it separately.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The append-only, hash-chained audit log of authentication events.
    #[command(subcommand, name = "audit-log")]
    AuditLog(AuditLogCmd),
    /// Load everything `serve` loads (configuration, certificate and key, database, master key,
    /// secret references) without binding a port, then print a summary.
    CheckConfig,
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Register a certificate's public key (PEM file) to the account.
    Add {
        address: String,
        file: std::path::PathBuf,
        /// Default: `cert-` and the first 12 hex digits of the key's SHA-256.
        #[arg(long)]
        name: Option<String>,
    },
    /// Registered certificates: name, key fingerprint, expiry, last use.
    List { address: String },
    /// Remove a registration (the next EXTERNAL login with it fails).
    Remove { address: String, name: String },
}

#[derive(Subcommand, Debug)]
pub enum AppPasswordCmd {
    /// Generate an app password and print it once.
    Create {
        address: String,
        #[arg(long)]
        name: String,
        /// Comma-separated: smtp, imap, pop3.
        #[arg(long, default_value = "smtp,imap,pop3")]
        protocols: String,
        /// Lifetime: 30d, 12h, 1y ...
        #[arg(long)]
        expires: Option<String>,
        /// Usable only from this network (CIDR); repeatable.
        #[arg(long = "from")]
        from: Vec<String>,
        /// Print a JSON object with a `secret` field.
        #[arg(long)]
        json: bool,
    },
    /// List app passwords (never their secrets).
    List { address: String },
    /// Revoke an app password.
    Revoke { address: String, name: String },
}

#[derive(Subcommand, Debug)]
pub enum DkimCmd {
    /// A new key (the domain's signing key from now on; the previous selector stays published).
    Generate {
        domain: String,
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "rsa"])]
        algorithm: String,
        /// Default: pstYYYYMMDD.
        #[arg(long)]
        selector: Option<String>,
        /// Keep the key in OpenBao/Vault Transit under this name (made if missing): the private
        /// key never leaves the secret manager, which signs each message ([secrets] vault_addr).
        #[arg(long)]
        transit: Option<String>,
    },
    List {
        domain: Option<String>,
    },
    /// Stop publishing an old selector (its key is destroyed).
    Retire {
        domain: String,
        selector: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store a secret read from standard input (all of it, without the final newline).
    Set {
        name: String,
        /// Must be given: secrets are never accepted on the command line.
        #[arg(long, required = true)]
        stdin: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Names and metadata (never values).
    List,
    /// One secret's metadata (never its value).
    Show {
        name: String,
    },
    /// Print a secret's value (host administrator only; audited).
    Reveal {
        name: String,
    },
    Remove {
        name: String,
    },
    /// Re-wrap every sealed secret under a new master key and point the configuration at it.
    /// The running server picks the new key up by itself; the old key then opens nothing.
    RotateMasterKey {
        /// The new key's reference (file:, env:, vault:, transit:).
        #[arg(long, conflicts_with = "generate")]
        to: Option<String>,
        /// Generate a new key file at this path (mode 0600) and use it.
        #[arg(long)]
        generate: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Create the first administrator (a superadmin) with a generated password, shown once.
    /// Refused if any administrator exists. TOTP enrolment is required at its first API login.
    Bootstrap {
        #[arg(long, default_value = "admin")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Create an administrator with a generated password (shown once).
    Add {
        name: String,
        /// superadmin, domain-admin, helpdesk or auditor.
        #[arg(long)]
        role: String,
        /// A domain a domain-admin manages; repeatable.
        #[arg(long = "domain")]
        domains: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    List,
    /// Remove an administrator; its sessions end at once.
    Remove {
        name: String,
    },
    /// Forget an administrator's TOTP (lost device): the next login enrols again.
    #[command(name = "reset-2fa", alias = "reset2fa")]
    Reset2fa {
        name: String,
    },
    /// Give an administrator a new generated password (shown once); its sessions end.
    Passwd {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop an administrator's logins (its sessions end at once).
    Disable {
        name: String,
    },
    /// Let a disabled administrator log in again.
    Enable {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppCmd {
    /// Create an application credential and print its secret once.
    Create {
        /// The login name: lower-case letters, digits, '.', '_', '-' (no '@').
        name: String,
        /// A sender address or @domain it may use (local domains only); repeatable.
        #[arg(long = "allow-from", required = true)]
        allow_from: Vec<String>,
        /// Usable only from this network (CIDR); repeatable.
        #[arg(long = "from")]
        from: Vec<String>,
        /// Lifetime: 90d, 1y ...
        #[arg(long)]
        expires: Option<String>,
        /// Messages per hour (default: [smtp] max_messages_per_hour).
        #[arg(long)]
        messages_per_hour: Option<u32>,
        /// Recipients per hour (default: [smtp] max_recipients_per_hour).
        #[arg(long)]
        recipients_per_hour: Option<u32>,
        /// Print a JSON object with a `secret` field.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret; the old one keeps working for the grace period, then stops.
    Rotate {
        name: String,
        /// How long the old secret keeps working: 24h, 7d, 0s ...
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
    /// List applications (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one application.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop an application's logins (its secret is kept).
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Delete an application and its secrets.
    Remove {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BanCmd {
    /// Active bans.
    List,
    /// Ban an address or CIDR network.
    Add {
        target: String,
        /// Duration: 90s, 10m, 2h, 7d.
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        #[arg(long, default_value = "banned by the administrator")]
        reason: String,
        /// Needed to ban a network wider than /16 (IPv4) or /48 (IPv6).
        #[arg(long)]
        force: bool,
    },
    /// Lift a ban (an admin who banned themselves recovers from the host's shell).
    Remove { target: String },
    /// Lift every ban.
    Clear,
}

#[derive(Subcommand, Debug)]
pub enum AuditLogCmd {
    /// Check the keyed hash chain: names the first edited, forged or re-chained row, or the
    /// range of deleted ones; with checkpoints (the file given, else `audit.checkpoint_file`),
    /// also a truncated tail.
    Verify {
        /// A file of signed checkpoints written by the server (one JSON object per line).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write a signed checkpoint of the chain's head now (to the log, and to
    /// `audit.checkpoint_file` when configured) and print it.
    Checkpoint,
    /// Search the audit log.
    Query {
        /// Login name as typed (normalised to lower case).
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        /// Unix time, or a duration back from now (30m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only failed attempts.
        #[arg(long, value_parser = ["failed", "ok"])]
        result: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    Add {
        domain: String,
    },
    List,
    /// Remove a domain that has no accounts.
    Remove {
        domain: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account; the password is read from stdin or a prompt and must pass the policy.
    Add {
        address: String,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an account's password (same policy).
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every account and whether it is active or disabled.
    List,
    /// One account: status, password age, login restrictions, aliases and mailboxes.
    Show { address: String },
    /// Stop the account from logging in (mail is still delivered).
    Disable { address: String },
    /// Let a disabled account log in again.
    Enable { address: String },
    /// Delete the account with its mailboxes and messages.
    Remove { address: String },
    /// Opt in or out of TLS and login details in the Received headers of submitted mail.
    ReceivedDetails {
        address: String,
        #[arg(action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        on: bool,
    },
    /// Restrict where the account may log in from (CIDR networks); no network: anywhere.
    Networks {
        address: String,
        networks: Vec<String>,
    },
    /// Hourly send limits of this account (submission); without options: back to the defaults.
    SendLimits {
        address: String,
        #[arg(long)]
        messages_per_hour: Option<u32>,
        #[arg(long)]
        recipients_per_hour: Option<u32>,
    },
    /// Force a password change: the current password stops working for logins (app passwords
    /// keep working) until `user passwd` sets a new one.
    ExpirePassword { address: String },
    /// Recent successful logins: when, from where, through which door.
    Logins {
        address: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Allow or refuse POP3 for this account ("prefer IMAP"; IMAP is unaffected).
    Pop3 {
        address: String,
        #[arg(action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        on: bool,
    },
    /// Two-factor authentication (TOTP). Once on, the password alone no longer opens SMTP,
    /// IMAP or POP3: mail clients need app passwords.
    #[command(subcommand, name = "2fa")]
    TwoFa(TwoFaCmd),
    /// TLS client certificates that log in with SASL EXTERNAL (IMAP, submission, POP3).
    #[command(subcommand)]
    Cert(CertCmd),
    /// The networks and clients the account has signed in from (new-sign-in notices).
    Signins { address: String },
    /// Storage used and the quota; with SIZE (500M, 2G, none, default), sets the quota.
    Quota {
        address: String,
        size: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TwoFaCmd {
    /// Print an otpauth:// URI and QR code, then read a code from the app on stdin to confirm;
    /// prints the recovery codes once.
    Enroll {
        address: String,
        /// Print the URI and secret as one JSON line instead of the QR code.
        #[arg(long)]
        json: bool,
    },
    /// Finish a pending enrolment: reads a code from stdin.
    Confirm { address: String },
    /// Whether 2FA is on, and how many recovery codes are left.
    Status { address: String },
    /// Turn 2FA off: reads a current code (or a recovery code) from stdin, or, for the host's
    /// administrator, --admin-override with a --reason (audited).
    Disable {
        address: String,
        #[arg(long)]
        admin_override: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// New recovery codes (the old ones stop working): reads a current code from stdin.
    RecoveryCodes { address: String },
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    Add { alias: String, account: String },
    List,
    Remove { alias: String },
}

#[derive(Subcommand, Debug)]
pub enum IncidentCmd {
    /// At once: logins off, password to be replaced, every app password and the second factor
    /// removed, queued outbound mail held, every live SMTP/IMAP/POP3 session ended.
    Lock {
        address: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// What the audit log knows about the account: logins with source and client, failures,
    /// credential and administrative changes, oldest first.
    Timeline {
        address: String,
        /// How far back (e.g. 7d, 24h); default: everything kept.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Logins back on with a new password (policy-checked; from stdin or a no-echo prompt).
    /// Held mail stays held: review it with `postern queue`.
    Unlock {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// A consistent backup while the server runs: database copy, every message body, the
    /// configuration and TLS files, with a manifest of SHA-256 hashes; encrypted to the key.
    Create {
        /// The backup file to write (must not exist).
        #[arg(long)]
        to: PathBuf,
        /// The backup key: env:NAME, file:PATH or vault:MOUNT/PATH#FIELD holding an age
        /// recipient (age1…), an age identity (AGE-SECRET-KEY-1…) or a passphrase.
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Decrypts a backup and checks every entry against its manifest; changes nothing.
    Verify {
        path: PathBuf,
        /// The identity or passphrase reference (a recipient cannot read a backup).
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Restores a backup into a new data directory, given with --dir (absent or empty). Fails
    /// closed, removing what it wrote, when the backup is damaged or the master key is missing.
    Restore {
        path: PathBuf,
        #[arg(long)]
        key: String,
        /// Where the master key is (e.g. file:/safe/master.key); a file key is copied into the
        /// new directory. Default: the restored configuration's own reference.
        #[arg(long)]
        master_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Makes a new age identity in FILE (mode 0600) and prints its recipient (age1…): put the
    /// recipient in [backup] key so the server makes backups it cannot read, and keep FILE
    /// away from the server.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The scheduled backups in [backup] dir, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportsCmd {
    /// The DMARC and TLS results waiting for their report: kind, day, domain, rows, messages.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Send the reports of finished days now (and today's so far with --include-today).
    Send {
        #[arg(long)]
        include_today: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    List,
    /// One message: sender, recipients with their state and last reply, next attempt.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Attempt delivery now (the running server picks it up within seconds).
    Retry {
        id: i64,
    },
    /// Delete a message from the queue without a bounce.
    Remove {
        id: i64,
    },
    /// Stop delivery attempts for a message until `release`.
    Hold {
        id: i64,
    },
    Release {
        id: i64,
    },
}

impl Cli {
    pub fn config_path(&self) -> PathBuf {
        if let Some(c) = &self.config {
            return c.clone();
        }
        if let Some(d) = &self.dir {
            return d.join("postern.toml");
        }
        PathBuf::from("postern.toml")
    }

    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        Config::load(&path).map_err(anyhow::Error::from)
    }
}
