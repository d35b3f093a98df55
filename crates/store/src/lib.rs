//! Storage: domains, accounts, aliases, mailboxes, messages and the outbound queue in SQLite (one
//! node, the default) or PostgreSQL (several nodes, see [`Store::open_postgres`]), message bodies
//! in a [`BlobStore`] (files, or rows of the database). Knows no protocol. One file per concern:
//! `domains`, `accounts`, `aliases`, `delivery` (local delivery and queueing), `mailbox`
//! (IMAP/POP3 operations), `queue` (with leases, so that nodes never attempt one entry twice),
//! `audit` (bans and the keyed audit chain), `apps`, `apppw`, `admins`, `totp`, `secrets`,
//! `dkim`, `greylist`, `dmarc` (report counts and cached MTA-STS policies), `incident`; `lock`
//! (one server per data directory), `views` (bodies kept for session views), `commit` (group
//! commit of new messages and flag changes: local deliveries, IMAP APPEND and STORE, queue
//! entries), `backup` (the consistent copy a backup takes) and `migrate` (SQLite to PostgreSQL).
//! Migrations are the numbered files in `crates/store/migrations/`, written for SQLite and typed
//! for PostgreSQL by `postgres_ddl`. Every query is written once for both engines (sqlx's `Any`
//! driver, numbered parameters, the SQL both speak).
//!
//! Writes go through a one-connection pool so that they are serialised without SQLITE_BUSY
//! retries; reads use a separate pool. SQLite runs in WAL mode with `synchronous = FULL`: a
//! committed transaction is on disk when the commit returns, which is what lets the SMTP server say
//! 250 only after [`Store::deliver_local`] or [`Store::enqueue`] returned. PostgreSQL commits
//! durably by default; several nodes serialise what must be one line (schema steps, the audit
//! chain) with advisory locks.
#![forbid(unsafe_code)]

mod accounts;
pub mod admins;
mod aliases;
pub mod apppw;
pub mod apps;
pub mod audit;
pub mod backup;
pub mod blob;
pub mod certs;
mod commit;
mod delivery;
pub mod dkim;
pub mod dmarc;
mod domains;
pub mod greylist;
pub mod incident;
pub mod lock;
pub mod mailbox;
pub mod migrate;
pub mod passkeys;
pub mod queue;
pub mod scram;
pub mod secrets;
pub mod totp;
pub mod views;
pub mod web;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Row;

use postern_auth::{CredentialStore, CredentialStoreError, StoredCredential};
#[cfg(test)]
use postern_types::{Domain, EmailAddress};

pub use blob::BlobStore;
pub use mailbox::{
    ChangeBus, FlagChange, FlagOp, Flagged, Mailbox, MailboxCounts, MailboxState, MessageMeta,
    Vanished, DELIMITER,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("blob store error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Conflict(String),
    /// Messages named by the caller were expunged (by another session) before the operation.
    #[error("{0} message(s) no longer exist")]
    Expunged(usize),
}

impl StoreError {
    /// The disk (or quota) is full: a temporary condition the client should retry later.
    pub fn is_storage_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let io_full = |e: &std::io::Error| matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT));
        match self {
            StoreError::Io(e) => io_full(e),
            StoreError::Db(sqlx::Error::Io(e)) => io_full(e),
            // SQLITE_FULL (13) and its extended codes
            StoreError::Db(sqlx::Error::Database(d)) => d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 13),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The result of an INSERT whose UNIQUE constraint names an existing `what`.
pub(crate) fn inserted<T>(r: std::result::Result<T, sqlx::Error>, what: String) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Exists(what)),
        Err(e) => Err(e.into()),
    }
}

/// The mailboxes every account gets, with their RFC 6154 special-use attributes.
pub const DEFAULT_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

/// The newest schema step: the number of [`MIGRATIONS`], never kept by hand.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DomainInfo {
    pub name: String,
    #[sqlx(rename = "n")]
    pub accounts: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountInfo {
    pub id: i64,
    pub address: String,
    #[sqlx(try_from = "Flag")]
    pub disabled: bool,
    #[sqlx(try_from = "Flag")]
    pub received_details: bool,
    pub created_at: i64,
    pub password_changed_at: i64,
}

#[derive(Debug, Clone)]
pub struct MailboxInfo {
    pub name: String,
    pub special_use: Option<String>,
    pub messages: i64,
    pub bytes: i64,
    pub uidvalidity: i64,
    pub uidnext: i64,
}

#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub id: i64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub size: i64,
    pub created_at: i64,
    pub status: String,
    pub attempts: i64,
}

/// A message stored in a mailbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub uid: i64,
    pub blob_id: String,
    pub size: i64,
    pub internal_date: i64,
}

#[derive(Clone)]
pub struct Store {
    /// Where bans are shared with other nodes (`[cluster] redis`), when set (see [`audit`]).
    shared_bans: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn audit::SharedBans>>>,
    /// Where revoked sessions are announced to the other nodes (`[cluster] redis`), when set
    /// (see [`incident`]).
    revocation_bus:
        std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn incident::RevocationBus>>>,
    /// Which engine holds the data.
    backend: Backend,
    read: AnyPool,
    write: AnyPool,
    blobs: BlobStore,
    changes: std::sync::Arc<ChangeBus>,
    /// Failed auth rows kept per login name per day (0: no cap).
    audit_failure_cap: u64,
    /// The data directory's lock, when this process holds it (see [`lock`]).
    lock: Option<std::sync::Arc<lock::DataLock>>,
    /// Bodies of expunged messages that open views may still read (see [`views`]).
    trash: std::sync::Arc<views::Trash>,
    /// The key of the audit chain's HMAC, set once the master key is open (see [`audit`]).
    audit_key: std::sync::Arc<std::sync::OnceLock<audit::AuditKey>>,
    /// The group committer of local deliveries, started on first use (see [`commit`]).
    committer: std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<commit::Job>>>,
    /// Local deliveries sync their bodies per batch (one syncfs) instead of per message.
    batch_sync: bool,
    /// The storage quota of accounts without their own, in bytes (0: none).
    default_quota: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The PBKDF2 iteration count of an account's first SCRAM verifier (see [`scram`]).
    scram_iterations: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Recent answers of `is_local_domain` (see `domains.rs`).
    domain_cache: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
    >,
}

impl Store {
    /// Opens (creating if needed) the database and blob directory, and brings the schema up to date.
    /// The caller should hold the data directory's [`lock::DataLock`] (see [`Store::with_lock`]).
    pub async fn open(db: &Path, blob_dir: &Path) -> Result<Store> {
        Store::open_mode(db, blob_dir, true).await
    }

    /// Opens the database of a running server (whose process holds the data directory's lock):
    /// never migrates, and refuses a schema other than this binary's.
    pub async fn open_beside_server(db: &Path, blob_dir: &Path) -> Result<Store> {
        Store::open_mode(db, blob_dir, false).await
    }

    async fn open_mode(db: &Path, blob_dir: &Path, may_migrate: bool) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = sqlite_url(db)?;
        // The pragmas sqlx's URL form cannot carry are set on every new connection: WAL, and
        // `synchronous = FULL` so that a commit is on disk when it returns.
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .execute(c)
                    .await?;
                    Ok(())
                })
            })
            .connect(&format!("{url}?mode=rwc"))
            .await?;
        if may_migrate {
            migrate(&write).await?;
        } else {
            let version = schema_version(&write).await?;
            if version != SCHEMA_VERSION {
                write.close().await;
                return Err(StoreError::Conflict(format!(
                    "the database has schema version {version} and this postern needs {SCHEMA_VERSION}; \
                     stop the running server first, so that the schema can be brought up to date"
                )));
            }
        }
        let read = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::raw_sql("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                        .execute(c)
                        .await?;
                    Ok(())
                })
            })
            .connect(&format!("{url}?mode=ro"))
            .await?;
        let blobs = BlobStore::open(blob_dir)?;
        Ok(Store::from_pools(Backend::Sqlite, read, write, blobs))
    }

    fn from_pools(backend: Backend, read: AnyPool, write: AnyPool, blobs: BlobStore) -> Store {
        Store {
            backend,
            shared_bans: Default::default(),
            revocation_bus: Default::default(),
            read,
            write,
            blobs,
            changes: Default::default(),
            audit_failure_cap: 1000,
            lock: None,
            trash: Default::default(),
            audit_key: Default::default(),
            committer: Default::default(),
            batch_sync: true,
            scram_iterations: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(10_000)),
            default_quota: Default::default(),
            domain_cache: Default::default(),
        }
    }

    /// Opens a PostgreSQL database (`[storage] database = "postgres://USER@HOST:PORT/DB"`), creating
    /// the schema or bringing it up to date when `may_migrate` (several nodes starting at once
    /// take turns: the steps run under an advisory lock). `password` comes from the
    /// configuration's secret reference, never from the URL. Bodies stay in `blob_dir`.
    ///
    /// Writes go through one connection per node, as with SQLite, so that the store's
    /// read-then-write transactions keep their meaning on one node.
    pub async fn open_postgres(
        url: &str,
        password: Option<&str>,
        pool_size: u32,
        blob_dir: &Path,
        bodies_in_database: bool,
        may_migrate: bool,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let mut database_url = url::Url::parse(url)
            .map_err(|e| StoreError::Conflict(format!("the database URL is not valid: {e}")))?;
        if let Some(pw) = password {
            database_url
                .set_password(Some(pw))
                .map_err(|()| StoreError::Conflict("the database URL takes no password".into()))?;
        }
        let opts: sqlx::any::AnyConnectOptions = database_url.as_str().parse()?;
        // While PostgreSQL is away, a caller waits this long for a connection and then fails
        // (a 451 to an SMTP client, a NO to IMAP) instead of hanging; the pool reconnects by
        // itself once the database answers again.
        let wait = std::time::Duration::from_secs(3);
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(wait)
            .connect_with(opts.clone())
            .await?;
        if may_migrate {
            migrate_postgres(&write).await?;
        } else {
            let version = schema_version_postgres(&write).await?;
            if version != SCHEMA_VERSION {
                write.close().await;
                return Err(StoreError::Conflict(format!(
                    "the database has schema version {version} and this postern needs {SCHEMA_VERSION}"
                )));
            }
        }
        let read = AnyPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(wait)
            .connect_with(opts)
            .await?;
        let mut blobs = BlobStore::open(blob_dir)?;
        if bodies_in_database {
            blobs = blobs.in_database(read.clone());
        }
        let mut store = Store::from_pools(Backend::Postgres, read, write, blobs);
        // bodies and rows are on different systems: each body is synced on its own
        store.batch_sync = false;
        Ok(store)
    }

    fn committer(&self) -> &tokio::sync::mpsc::Sender<commit::Job> {
        self.committer.get_or_init(|| {
            commit::start(self.write.clone(), self.changes.clone(), self.blobs.clone())
        })
    }

    /// Stamps a credential's last use (time and source); a failure is only logged, since the
    /// login it follows has succeeded.
    async fn record_use(
        &self,
        sql: &'static str,
        id: i64,
        ip: std::net::IpAddr,
        what: &'static str,
    ) {
        let r = sqlx::query(sql)
            .bind(now())
            .bind(ip.to_string())
            .bind(id)
            .execute(&self.write)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, what, "could not record a credential's use");
        }
    }

    /// `[storage] default_quota_mb`: the quota of accounts without their own (0: none).
    pub fn with_default_quota(self, bytes: u64) -> Self {
        self.default_quota
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// An account's storage: (bytes used, its limit if any).
    pub async fn quota(&self, account_id: i64) -> Result<(u64, Option<u64>)> {
        let r = sqlx::query(
            "SELECT a.quota_bytes,
                    (SELECT CAST(COALESCE(SUM(m.size), 0) AS BIGINT) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
                     WHERE b.account_id = a.id) AS used
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("account #{account_id}")))?;
        let own: Option<i64> = r.try_get("quota_bytes")?;
        let limit = match own {
            None => self
                .default_quota
                .load(std::sync::atomic::Ordering::Relaxed),
            Some(n) => n.max(0) as u64,
        };
        let used = r.try_get::<i64, _>("used")?.max(0) as u64;
        Ok((used, (limit > 0).then_some(limit)))
    }

    /// Whether `extra` more bytes would put the account over its quota.
    pub async fn over_quota(&self, account_id: i64, extra: u64) -> Result<bool> {
        let (used, limit) = self.quota(account_id).await?;
        Ok(limit.is_some_and(|l| used.saturating_add(extra) > l))
    }

    /// Sets an account's own quota: None = the default, Some(0) = none, Some(n) = n bytes.
    pub async fn set_quota(&self, account_id: i64, bytes: Option<u64>) -> Result<()> {
        sqlx::query("UPDATE accounts SET quota_bytes = $1 WHERE id = $2")
            .bind(bytes.map(|b| b.min(i64::MAX as u64) as i64))
            .bind(account_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// `[auth] scram_iterations`: the iteration count given to an account's SCRAM salt when its
    /// first verifier is made (later verifiers share the account's).
    pub fn with_scram_iterations(self, n: u32) -> Self {
        self.scram_iterations
            .store(n.max(4096), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// `[storage] batch_sync`: one syncfs per batch of local deliveries (true), or an fsync per
    /// message body (false).
    pub fn with_batch_sync(mut self, on: bool) -> Self {
        self.batch_sync = on;
        self
    }

    /// Keeps the data directory's lock for as long as this store (or a clone) lives.
    pub fn with_lock(mut self, lock: lock::DataLock) -> Self {
        self.lock = Some(std::sync::Arc::new(lock));
        self
    }

    /// A session's view of a mailbox: bodies of messages it lists stay readable until it syncs.
    pub fn pin_view(&self) -> views::ViewPin {
        views::ViewPin::new(self.trash.clone(), self.blobs.clone())
    }

    /// Bodies of expunged messages kept for views that have not synced yet.
    pub fn trashed_bodies(&self) -> usize {
        self.trash.pending()
    }

    /// Whether this process holds the data directory's lock (false beside a running server).
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// Sets the daily cap of failed-attempt rows per login name in the audit log (0: none).
    pub fn with_audit_failure_cap(mut self, cap: u64) -> Self {
        self.audit_failure_cap = cap;
        self
    }

    /// Whether the database answers (a trivial read, then a trivial write transaction), for
    /// health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.read).await?;
        let mut tx = self.write.begin().await?;
        sqlx::query("SELECT 1").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// A message body by its id, from its file or (bodies in the database) its row.
    pub async fn body(&self, blob_id: &str) -> std::io::Result<Vec<u8>> {
        self.blobs.read(blob_id).await
    }

    /// Claims the periodic job `name` for this period of `period` seconds: true for exactly one
    /// caller per period among every node on the database (the one whose update moved the
    /// job's last run), false for the others and for a job already run in this period.
    pub async fn claim_job(&self, name: &str, period: i64, node: &str) -> Result<bool> {
        let now = now();
        sqlx::query(
            "INSERT INTO periodic_jobs (name, last_run, node) VALUES ($1, 0, '') ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .execute(&self.write)
        .await?;
        // a little early is still this period: ticks of different nodes drift
        let claimed = sqlx::query(
            "UPDATE periodic_jobs SET last_run = $1, node = $2 WHERE name = $3 AND last_run <= $4",
        )
        .bind(now)
        .bind(node)
        .bind(name)
        .bind(now - period + period / 10)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// `PRAGMA integrity_check` result: "ok" when the database is sound.
    pub async fn integrity_check(&self) -> Result<String> {
        let row = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&self.write)
            .await?;
        Ok(row.try_get::<String, _>(0)?)
    }
}

/// Schema steps, applied in order in one transaction each; step N leaves `user_version = N`.
/// One numbered file each in `crates/store/migrations/`; a new step is a new file added here.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_schema.sql"),
    include_str!("../migrations/0002_pop3_switch.sql"),
    include_str!("../migrations/0003_defences.sql"),
    include_str!("../migrations/0004_networks_send_limits.sql"),
    include_str!("../migrations/0005_app_passwords.sql"),
    include_str!("../migrations/0006_password_history.sql"),
    include_str!("../migrations/0007_credentials_admins.sql"),
    include_str!("../migrations/0008_secrets.sql"),
    include_str!("../migrations/0009_delivery_state.sql"),
    include_str!("../migrations/0010_dkim_keys.sql"),
    include_str!("../migrations/0011_keyed_audit.sql"),
    include_str!("../migrations/0012_greylist.sql"),
    include_str!("../migrations/0013_dmarc_results.sql"),
    include_str!("../migrations/0014_mta_sts.sql"),
    include_str!("../migrations/0015_dkim_transit.sql"),
    include_str!("../migrations/0016_tlsrpt_results.sql"),
    include_str!("../migrations/0017_incidents.sql"),
    include_str!("../migrations/0018_uidvalidity_floor.sql"),
    include_str!("../migrations/0019_scram.sql"),
    include_str!("../migrations/0020_client_certs.sql"),
    include_str!("../migrations/0021_signin_sources.sql"),
    include_str!("../migrations/0022_directory_accounts.sql"),
    include_str!("../migrations/0023_directory_admins.sql"),
    include_str!("../migrations/0024_recent.sql"),
    include_str!("../migrations/0025_quota.sql"),
    include_str!("../migrations/0026_vanished.sql"),
    include_str!("../migrations/0027_web_sessions.sql"),
    include_str!("../migrations/0028_passkeys.sql"),
    include_str!("../migrations/0029_bodies_jobs.sql"),
];

/// A `sqlite://` URL naming the file `db` (made absolute; every byte outside a small safe set
/// percent-encoded, which sqlx decodes, so that `?`, `#` or `%` in a path stay part of it).
fn sqlite_url(db: &Path) -> Result<String> {
    let abs = std::path::absolute(db)?;
    let path = abs
        .to_str()
        .ok_or_else(|| StoreError::Conflict("the database path is not UTF-8".into()))?;
    let mut url = String::from("sqlite://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(url)
}

/// The engine that holds a [`Store`]'s data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file beside the blob directory (the default): one node.
    Sqlite,
    /// A PostgreSQL database that several nodes share.
    Postgres,
}

/// A boolean column: SQLite keeps 0/1 in an INTEGER and PostgreSQL a `boolean` or an integer; the
/// `Any` driver decodes neither as the other, so every boolean is read through this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl sqlx::Type<sqlx::Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }
    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
            || <bool as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Flag {
    fn decode(
        value: sqlx::any::AnyValueRef<'r>,
    ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef;
        if <bool as sqlx::Type<sqlx::Any>>::compatible(&value.type_info()) {
            return Ok(Flag(<bool as sqlx::Decode<sqlx::Any>>::decode(value)?));
        }
        Ok(Flag(<i64 as sqlx::Decode<sqlx::Any>>::decode(value)? != 0))
    }
}

impl Store {
    /// The engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// A SQLite migration step in PostgreSQL's dialect. The steps are written once, for SQLite, in
/// the small common subset of DDL both engines read; what differs is typed here: 64-bit
/// integers, `bytea`, identity keys for SQLite's `INTEGER PRIMARY KEY`, and a `rowid` column
/// where a query orders by SQLite's implicit one.
fn postgres_ddl(sql: &str) -> String {
    /// Tables whose queries use SQLite's implicit `rowid`.
    const ROWID_TABLES: &[&str] = &["password_history"];
    let mut out = sql
        .replace(
            "INTEGER PRIMARY KEY",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace(" WITHOUT ROWID", "");
    for (from, to) in [("INTEGER", "BIGINT"), ("BLOB", "BYTEA")] {
        out = replace_word(&out, from, to);
    }
    for t in ROWID_TABLES {
        out = out.replace(
            &format!("CREATE TABLE {t} ("),
            &format!("CREATE TABLE {t} (\n    rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,"),
        );
    }
    out
}

/// `s` with every `from` that stands as a whole word replaced by `to`.
fn replace_word(s: &str, from: &str, to: &str) -> String {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + from.len()..].chars().next();
        out.push_str(&rest[..i]);
        if ident(before) || ident(after) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The advisory lock key under which nodes take turns to migrate ("postern" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6f73_7465_726e;

async fn schema_version_postgres(pool: &AnyPool) -> Result<i64> {
    let exists: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'postern_schema'
         AND table_schema = current_schema()",
    )
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    if exists == 0 {
        return Ok(0);
    }
    Ok(sqlx::query("SELECT version FROM postern_schema")
        .fetch_optional(pool)
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .unwrap_or(0))
}

async fn migrate_postgres(pool: &AnyPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS postern_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let version: i64 = sqlx::query("SELECT version FROM postern_schema")
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Conflict(format!(
            "the database has schema version {version}, newer than this postern ({SCHEMA_VERSION}); upgrade postern"
        )));
    }
    for (_, sql) in (1i64..)
        .zip(MIGRATIONS.iter())
        .filter(|(v, _)| *v > version)
    {
        sqlx::raw_sql(sqlx::AssertSqlSafe(postgres_ddl(sql)))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::raw_sql("DELETE FROM postern_schema")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO postern_schema (version) VALUES ($1)")
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn schema_version(pool: &AnyPool) -> Result<i64> {
    Ok(sqlx::query("PRAGMA user_version")
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

async fn migrate(pool: &AnyPool) -> Result<()> {
    let version = schema_version(pool).await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Conflict(format!(
            "the database has schema version {version}, newer than this postern ({SCHEMA_VERSION}); upgrade postern"
        )));
    }
    for (step, sql) in (1i64..)
        .zip(MIGRATIONS.iter())
        .filter(|(v, _)| *v > version)
    {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {step}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl CredentialStore for Store {
    async fn credential(
        &self,
        login: &str,
    ) -> std::result::Result<Option<StoredCredential>, CredentialStoreError> {
        if !login.contains('@') {
            // Application names have no '@', account addresses always do.
            return self
                .application_credential(login)
                .await
                .map_err(|e| CredentialStoreError(e.to_string()));
        }
        let row = sqlx::query(
            "SELECT id, address, password_hash, disabled, allowed_networks, password_changed_at, must_change_password,
                    scram_salt, scram_iterations, scram_verifier, directory
             FROM accounts WHERE address = $1",
        )
        .bind(login)
        .fetch_optional(&self.read)
        .await
        .map_err(|e| CredentialStoreError(e.to_string()))?;
        let Some(r) = row else { return Ok(None) };
        let id: i64 = r
            .try_get("id")
            .map_err(|e| CredentialStoreError(e.to_string()))?;
        let app_passwords = self
            .app_password_creds(id)
            .await
            .map_err(|e| CredentialStoreError(e.to_string()))?;
        let second_factor = self
            .second_factor_confirmed(&crate::totp::account_owner(id))
            .await
            .map_err(|e| CredentialStoreError(e.to_string()))?;
        let get = || -> std::result::Result<StoredCredential, sqlx::Error> {
            Ok(StoredCredential {
                account_id: r.try_get("id")?,
                address: r.try_get("address")?,
                password_hash: r.try_get("password_hash")?,
                disabled: r.try_get::<Flag, _>("disabled")?.0,
                allowed_networks: r
                    .try_get::<String, _>("allowed_networks")?
                    .split(',')
                    .filter(|n| !n.trim().is_empty())
                    .filter_map(|n| postern_auth::guard::Cidr::parse(n).ok())
                    .collect(),
                app_passwords: app_passwords.clone(),
                password_changed_at: r.try_get("password_changed_at")?,
                must_change_password: r.try_get::<i64, _>("must_change_password")? != 0,
                second_factor,
                scram: match (
                    r.try_get::<Option<Vec<u8>>, _>("scram_salt")?,
                    r.try_get::<Option<i64>, _>("scram_iterations")?,
                ) {
                    (Some(salt), Some(i)) => Some(postern_auth::ScramCred {
                        salt,
                        iterations: i.clamp(1, u32::MAX as i64) as u32,
                        account: r
                            .try_get::<Option<Vec<u8>>, _>("scram_verifier")?
                            .and_then(|v| postern_auth::scram::Verifier::from_bytes(&v)),
                    }),
                    _ => None,
                },
                directory: r.try_get::<Option<String>, _>("directory")?.is_some(),
                ..StoredCredential::account(0, "", "")
            })
        };
        get()
            .map(Some)
            .map_err(|e| CredentialStoreError(e.to_string()))
    }

    async fn app_password_used(&self, id: i64, ip: std::net::IpAddr) {
        self.record_use(
            "UPDATE app_passwords SET last_used_at = $1, last_used_ip = $2 WHERE id = $3",
            id,
            ip,
            "app password",
        )
        .await;
    }

    async fn cert_credential(
        &self,
        fingerprint: &str,
    ) -> std::result::Result<Option<(StoredCredential, i64)>, CredentialStoreError> {
        let e = |e: StoreError| CredentialStoreError(e.to_string());
        let Some((id, address)) = self.cert_owner(fingerprint).await.map_err(e)? else {
            return Ok(None);
        };
        Ok(self.credential(&address).await?.map(|c| (c, id)))
    }

    async fn provision(
        &self,
        login: &str,
        unusable_phc: &str,
    ) -> std::result::Result<Option<StoredCredential>, CredentialStoreError> {
        let e = |e: StoreError| CredentialStoreError(e.to_string());
        let Ok(address) = postern_types::EmailAddress::parse(login) else {
            return Ok(None);
        };
        // only in a domain served here, and never over an alias of the same name
        if !self.is_local_domain(address.domain()).await.map_err(e)?
            || self.resolve_recipient(&address).await.map_err(e)?.is_some()
        {
            return Ok(None);
        }
        self.add_account(&address, unusable_phc).await.map_err(e)?;
        sqlx::query("UPDATE accounts SET directory = 'ldap' WHERE address = $1")
            .bind(address.as_str())
            .execute(&self.write)
            .await
            .map_err(|x| CredentialStoreError(x.to_string()))?;
        self.credential(address.as_str()).await
    }

    async fn client_cert_used(&self, id: i64, ip: std::net::IpAddr) {
        self.record_use(
            "UPDATE client_certs SET last_used_at = $1, last_used_ip = $2 WHERE id = $3",
            id,
            ip,
            "client certificate",
        )
        .await;
    }

    async fn scram_missing(
        &self,
        cred: &StoredCredential,
        target: postern_auth::ScramTarget,
        password: &secrecy::SecretString,
    ) {
        // Made in the background: the login that found it missing does not wait for PBKDF2.
        let (store, cred, password) = (self.clone(), cred.clone(), password.clone());
        tokio::spawn(async move {
            if let Err(e) = store.make_scram_verifier(&cred, target, &password).await {
                tracing::warn!(error = %e, "could not make a SCRAM verifier");
            }
        });
    }

    async fn application_used(&self, id: i64, ip: std::net::IpAddr) {
        self.record_use(
            "UPDATE applications SET last_used_at = $1, last_used_ip = $2 WHERE id = $3",
            id,
            ip,
            "application",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("db"), &d.path().join("blobs"))
            .await
            .unwrap();
        (d, s)
    }

    #[test]
    fn postgres_ddl_types_and_rowid() {
        let t = postgres_ddl(
            "CREATE TABLE password_history (\n    account_id INTEGER NOT NULL,\n    hash TEXT\n);\n\
             CREATE TABLE x (id INTEGER PRIMARY KEY, data BLOB, big_integer_count INTEGER) WITHOUT ROWID;",
        );
        assert!(
            t.contains("rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,"),
            "{t}"
        );
        assert!(t.contains("account_id BIGINT NOT NULL"), "{t}");
        assert!(
            t.contains("id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
            "{t}"
        );
        assert!(t.contains("data BYTEA"), "{t}");
        // only whole words
        assert!(t.contains("big_integer_count BIGINT)"), "{t}");
        assert!(!t.contains("WITHOUT ROWID"), "{t}");
        // every step translates to something without SQLite-only words
        for m in MIGRATIONS {
            let t = postgres_ddl(m);
            for w in ["WITHOUT ROWID", " BLOB", "INTEGER PRIMARY KEY"] {
                assert!(!t.contains(w), "{w} left in {t}");
            }
        }
    }

    #[tokio::test]
    async fn periodic_jobs_are_claimed_once_per_period() {
        let (_d, s) = store().await;
        assert!(s.claim_job("hourly", 3600, "a").await.unwrap());
        assert!(!s.claim_job("hourly", 3600, "b").await.unwrap());
        assert!(!s.claim_job("hourly", 3600, "a").await.unwrap());
        // another job has its own period
        assert!(s.claim_job("daily", 86400, "b").await.unwrap());
        // once the period is (nearly) over, the next claim wins
        sqlx::query("UPDATE periodic_jobs SET last_run = last_run - 3300 WHERE name = 'hourly'")
            .execute(&s.write)
            .await
            .unwrap();
        assert!(s.claim_job("hourly", 3600, "b").await.unwrap());
    }

    #[tokio::test]
    async fn leased_queue_entries_are_taken_once() {
        let (_d, s) = store().await;
        for i in 0..3 {
            let body = format!("Subject: {i}\r\n\r\nx").into_bytes();
            s.enqueue(vec![body], "a@a.test", None, &["b@remote.test".into()])
                .await
                .unwrap();
        }
        let t = now();
        let first = s.lease_due(t, 2).await.unwrap();
        assert_eq!(first.len(), 2);
        let second = s.lease_due(t, 10).await.unwrap();
        assert_eq!(second.len(), 1, "only the one not leased yet");
        assert!(first.iter().all(|id| !second.contains(id)));
        assert!(s.lease_due(t, 10).await.unwrap().is_empty());
        // given back: due again at once
        s.release_leases(&first, t).await.unwrap();
        let again = s.lease_due(t, 10).await.unwrap();
        assert_eq!(again, first);
        // a lease that ran out (its node died) is taken again
        assert_eq!(
            s.lease_due(t + queue::QUEUE_LEASE, 10).await.unwrap().len(),
            3
        );
    }

    /// A store with the domain example.test and the account a@example.test (its id).
    async fn store_with_account() -> (tempfile::TempDir, Store, i64) {
        let (d, s) = store().await;
        s.add_domain(&postern_types::Domain::parse("example.test").unwrap())
            .await
            .unwrap();
        let a = EmailAddress::parse("a@example.test").unwrap();
        let id = s.add_account(&a, "h").await.unwrap();
        (d, s, id)
    }

    /// QRESYNC's record: every way a message leaves a mailbox (EXPUNGE, MOVE, RENAME INBOX)
    /// records its UID with the MODSEQ of the removal, which is above what the client knew.
    /// UNCHANGEDSINCE holds back exactly the messages changed after the given MODSEQ.
    #[tokio::test]
    async fn vanished_and_unchanged_since() {
        let (_d, s, id) = store_with_account().await;
        let inbox = s.get_mailbox(id, "INBOX").await.unwrap().unwrap().id;
        for i in 0..6 {
            s.append(
                id,
                inbox,
                format!("Subject: {i}\r\n\r\nx").as_bytes(),
                &[],
                now(),
            )
            .await
            .unwrap();
        }
        s.create_mailbox(id, "Other").await.unwrap();
        let other = s.get_mailbox(id, "Other").await.unwrap().unwrap().id;
        // an empty mailbox has nothing unseen (its LEFT JOIN row has no message)
        let c = s.mailbox_counts(other).await.unwrap();
        assert_eq!((c.messages, c.unseen, c.deleted, c.size), (0, 0, 0, 0));
        let known = s.mailbox_modseq(inbox).await.unwrap().unwrap();
        let v = s.vanished_since(inbox, known).await.unwrap();
        assert!(v.complete && v.uids.is_empty());
        // 2 is flagged after `known`: UNCHANGEDSINCE known holds it back, changes 1
        let flag = |u: &[u32], since| {
            let s = s.clone();
            let u = u.to_vec();
            async move {
                s.store_flags(id, inbox, &u, FlagOp::Add, &["\\Deleted".into()], since)
                    .await
                    .unwrap()
            }
        };
        flag(&[2], None).await;
        let f = flag(&[1, 2], Some(known)).await;
        assert_eq!(f.modified, vec![2]);
        assert_eq!(f.messages.len(), 1);
        assert!(f.messages[0].changed && f.messages[0].uid == 1 && f.messages[0].modseq > known);
        // a STORE that changes nothing keeps the message's MODSEQ
        let again = flag(&[1], None).await;
        assert!(!again.messages[0].changed);
        assert_eq!(again.messages[0].modseq, f.messages[0].modseq);
        assert_eq!(s.expunge(id, inbox, None, false).await.unwrap(), vec![1, 2]);
        s.copy_messages(id, inbox, &[4], other, true).await.unwrap();
        let v = s.vanished_since(inbox, known).await.unwrap();
        assert_eq!(v.uids, vec![1, 2, 4]);
        let after_expunge = s.mailbox_modseq(inbox).await.unwrap().unwrap() - 1;
        assert_eq!(
            s.vanished_since(inbox, after_expunge).await.unwrap().uids,
            vec![4]
        );
        s.rename_mailbox(id, "INBOX", "Old").await.unwrap();
        assert_eq!(
            s.vanished_since(inbox, known).await.unwrap().uids,
            vec![1, 2, 3, 4, 5, 6]
        );
        // pruning to 3 records drops the oldest expunge (1, 2) whole; a client from before
        // what is kept is told the record is incomplete, one after it gets the exact list
        assert_eq!(s.prune_vanished(3).await.unwrap(), 2);
        assert!(!s.vanished_since(inbox, known).await.unwrap().complete);
        let v = s.vanished_since(inbox, after_expunge).await.unwrap();
        assert!(v.complete);
        assert_eq!(v.uids, vec![3, 4, 5, 6]);
        assert_eq!(s.prune_vanished(3).await.unwrap(), 0);
        // a mailbox deleted takes its record with it
        s.delete_mailbox(id, "Old").await.unwrap();
        s.delete_mailbox(id, "Other").await.unwrap();
        let left: i64 = sqlx::query("SELECT COUNT(*) FROM vanished WHERE mailbox_id != $1")
            .bind(inbox)
            .fetch_one(&s.read)
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_deliveries_share_commits_and_fail_alone() {
        let (_d, s, id) = store_with_account().await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            // every tenth names an account that does not exist: it alone fails
            let to = if i % 10 == 0 { id + 1000 } else { id };
            tasks.push(tokio::spawn(async move {
                s.deliver_local(
                    vec![format!("Subject: {i}\r\n\r\nx").into_bytes()],
                    &[to],
                    now(),
                )
                .await
            }));
        }
        let mut uids = Vec::new();
        let mut failed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(u) => uids.extend(u),
                Err(StoreError::NotFound(_)) => failed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(failed, 20);
        uids.sort_unstable();
        assert_eq!(
            uids,
            (1..=180).collect::<Vec<i64>>(),
            "UIDs unique and dense"
        );
        let msgs = s.messages(id, "INBOX").await.unwrap();
        assert_eq!(msgs.len(), 180);
        for m in &msgs {
            assert!(s.blobs().get(&m.blob_id).is_ok());
        }
        // the failed ones left no blob behind
        let on_disk = s
            .blobs()
            .list_before(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(on_disk.len(), 180);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_queue_entries_and_deliveries_share_commits() {
        let (_d, s, id) = store_with_account().await;
        let inbox = s.get_mailbox(id, "INBOX").await.unwrap().unwrap().id;
        let mut tasks = Vec::new();
        for i in 0..150i64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("Subject: {i}\r\n\r\nx").into_bytes();
                match i % 3 {
                    0 => s
                        .deliver_local(vec![body], &[id], now())
                        .await
                        .map(|u| ("deliver", u[0])),
                    1 => {
                        // every fifth append names a mailbox that does not exist: it alone fails
                        let mb = if i % 5 == 1 { inbox + 1000 } else { inbox };
                        s.append(id, mb, &body, &["\\Seen".to_string()], now())
                            .await
                            .map(|(_, uid)| ("append", uid as i64))
                    }
                    _ => s
                        .enqueue(
                            vec![body],
                            "a@example.test",
                            Some(id),
                            &["x@remote.test".into()],
                        )
                        .await
                        .map(|q| ("enqueue", q)),
                }
            }));
        }
        let (mut uids, mut queued, mut failed) = (Vec::new(), 0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(("enqueue", _)) => queued += 1,
                Ok((_, uid)) => uids.push(uid),
                Err(StoreError::NotFound(_)) => failed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((queued, failed), (50, 10));
        uids.sort_unstable();
        assert_eq!(
            uids,
            (1..=90).collect::<Vec<i64>>(),
            "UIDs unique and dense"
        );
        let msgs = s.message_list(inbox).await.unwrap();
        assert_eq!(msgs.len(), 90);
        assert_eq!(msgs.iter().filter(|m| m.has_flag("\\Seen")).count(), 40);
        let q = s.queue_list().await.unwrap();
        assert_eq!(q.len(), 50);
        assert!(q.iter().all(|e| e.recipients == ["x@remote.test"]));
        let on_disk = s
            .blobs()
            .list_before(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(on_disk.len(), 140, "the failed appends left no blob behind");
    }

    #[tokio::test]
    async fn a_name_used_again_gets_a_larger_uidvalidity() {
        let (_d, s, id) = store_with_account().await;
        let mut last = 0;
        // several times within one second: each new "X" has a larger UIDVALIDITY than the last
        for _ in 0..3 {
            s.create_mailbox(id, "X").await.unwrap();
            let v = s.get_mailbox(id, "X").await.unwrap().unwrap().uidvalidity;
            assert!(v > last, "{v} after {last}");
            last = v;
            s.delete_mailbox(id, "X").await.unwrap();
        }
        // a mailbox renamed away keeps its value; the freed name gets a larger one
        s.create_mailbox(id, "Y").await.unwrap();
        let y = s.get_mailbox(id, "Y").await.unwrap().unwrap().uidvalidity;
        s.rename_mailbox(id, "Y", "Z").await.unwrap();
        s.create_mailbox(id, "Y").await.unwrap();
        assert!(s.get_mailbox(id, "Y").await.unwrap().unwrap().uidvalidity > y);
    }

    #[tokio::test]
    async fn upgrade_from_an_older_schema_keeps_data() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
        // the files are numbered 0001, 0002 … in the order they are applied
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let head = format!("-- v{}", i + 1);
            assert!(
                sql.starts_with(&head)
                    && !sql[head.len()..].starts_with(|c: char| c.is_ascii_digit()),
                "migration {} does not start with `{head}`",
                i + 1
            );
        }
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db");
        {
            // a database as the v6 release left it
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            for (step, sql) in (1i64..).zip(MIGRATIONS.iter()).filter(|(v, _)| *v <= 6) {
                sqlx::raw_sql(*sql).execute(&pool).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {step}")))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            sqlx::raw_sql(
                "INSERT INTO domains (id, name, created_at) VALUES (1, 'a.test', 0);
                 INSERT INTO accounts (address, domain_id, password_hash, created_at, password_changed_at)
                 VALUES ('x@a.test', 1, '$argon2id$x', 0, 0);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let a = EmailAddress::parse("x@a.test").unwrap();
        let s = Store::open(&path, &d.path().join("blobs")).await.unwrap();
        assert_eq!(s.account(&a).await.unwrap().address, "x@a.test");
        s.close().await;
        // reopening is a no-op and the data is still there
        let s = Store::open(&path, &d.path().join("blobs")).await.unwrap();
        assert_eq!(s.account(&a).await.unwrap().address, "x@a.test");
        assert!(s.list_secrets().await.unwrap().is_empty());
        assert!(s.dkim_keys(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn accounts_aliases_and_delivery() {
        let (_d, s) = store().await;
        let dom = Domain::parse("example.test").unwrap();
        s.add_domain(&dom).await.unwrap();
        assert!(matches!(
            s.add_domain(&dom).await,
            Err(StoreError::Exists(_))
        ));
        let a = EmailAddress::parse("alice@example.test").unwrap();
        let id = s.add_account(&a, "$argon2id$x").await.unwrap();
        assert!(matches!(
            s.add_account(&a, "h").await,
            Err(StoreError::Exists(_))
        ));
        let other = EmailAddress::parse("x@other.test").unwrap();
        assert!(matches!(
            s.add_account(&other, "h").await,
            Err(StoreError::NotFound(_))
        ));
        let alias = EmailAddress::parse("postmaster@example.test").unwrap();
        s.add_alias(&alias, &a).await.unwrap();
        assert_eq!(s.resolve_recipient(&alias).await.unwrap(), Some(id));
        assert_eq!(s.resolve_recipient(&other).await.unwrap(), None);
        let mut owned = s.owned_addresses(id).await.unwrap();
        owned.sort();
        assert_eq!(owned, vec!["alice@example.test", "postmaster@example.test"]);

        let uids1 = s
            .deliver_local(vec![b"Subject: 1\r\n\r\nx\r\n".to_vec()], &[id], now())
            .await
            .unwrap();
        let uids2 = s
            .deliver_local(vec![b"Subject: 2\r\n\r\ny\r\n".to_vec()], &[id], now())
            .await
            .unwrap();
        assert_eq!((uids1, uids2), (vec![1], vec![2]));
        let msgs = s.messages(id, "INBOX").await.unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            s.blobs().get(&msgs[1].blob_id).unwrap(),
            b"Subject: 2\r\n\r\ny\r\n"
        );
        let boxes = s.mailboxes(id).await.unwrap();
        assert_eq!(boxes.len(), DEFAULT_MAILBOXES.len());
        assert_eq!(boxes[0].messages, 2);
        assert_eq!(boxes[0].uidnext, 3);

        assert!(matches!(
            s.remove_domain(&dom).await,
            Err(StoreError::Conflict(_))
        ));
        s.remove_account(&a).await.unwrap();
        assert!(
            s.blobs().get(&msgs[0].blob_id).is_err(),
            "orphaned blobs are removed"
        );
        assert_eq!(s.resolve_recipient(&alias).await.unwrap(), None);
        s.remove_domain(&dom).await.unwrap();
        assert_eq!(s.integrity_check().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn audit_chain_and_failure_cap() {
        let (_d, s) = store().await;
        let s = s.with_audit_failure_cap(3);
        let ev = |r: &str| crate::audit::NewAudit {
            ts: now(),
            event: "auth".into(),
            username: Some("x@example.test".into()),
            ip: Some("192.0.2.1".into()),
            result: r.into(),
            ..Default::default()
        };
        let batch: Vec<_> = (0..10).map(|_| ev("failed")).collect();
        s.append_audit(&batch).await.unwrap();
        s.append_audit(&[ev("ok")]).await.unwrap();
        let rows = s
            .query_audit(&crate::audit::AuditQuery::default())
            .await
            .unwrap();
        // 3 failures kept, one summary row for the 7 others, the success
        assert_eq!(rows.len(), 5, "{rows:?}");
        assert_eq!(rows[3].event, "suppressed");
        assert!(rows[3].reason.as_deref().unwrap().starts_with("7 "));
        assert_eq!(s.verify_audit().await.unwrap(), Ok(5));
    }

    #[tokio::test]
    async fn keyed_audit_chain_upgrade_and_tampering() {
        let (d, s) = store().await;
        let ev = |e: &str| crate::audit::NewAudit {
            ts: now(),
            event: e.into(),
            result: "ok".into(),
            ..Default::default()
        };
        // rows from before the key, then the key: a keyed marker binds the old head
        s.append_audit(&[ev("a"), ev("b")]).await.unwrap();
        s.set_audit_key(crate::audit::AuditKey::new([7; 32]));
        s.append_audit(&[ev("c")]).await.unwrap();
        let rows = s
            .query_audit(&crate::audit::AuditQuery::default())
            .await
            .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(),
            ["a", "b", "audit_keyed", "c"]
        );
        assert_eq!(s.verify_audit().await.unwrap(), Ok(4));
        let cp = s.audit_checkpoint().await.unwrap().unwrap();
        assert_eq!(
            s.verify_checkpoints(std::slice::from_ref(&cp))
                .await
                .unwrap(),
            Ok(1)
        );
        // without the key, no keyed row can be appended
        let raw = Store::open(&d.path().join("db"), &d.path().join("blobs"))
            .await
            .unwrap();
        assert!(raw.append_audit(&[ev("x")]).await.is_err());
        // an edited keyed row is caught, even with a recomputed unkeyed hash
        sqlx::query("UPDATE audit_log SET event = 'z', keyed = 0 WHERE event = 'c'")
            .execute(&s.write)
            .await
            .unwrap();
        assert!(s.verify_audit().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn queue_and_credentials() {
        let (_d, s) = store().await;
        s.add_domain(&Domain::parse("example.test").unwrap())
            .await
            .unwrap();
        let a = EmailAddress::parse("bob@example.test").unwrap();
        s.add_account(&a, "phc").await.unwrap();
        s.set_disabled(&a, true).await.unwrap();
        let c = s.credential("bob@example.test").await.unwrap().unwrap();
        assert!(c.disabled);
        assert_eq!(c.password_hash, "phc");
        assert!(s.credential("nobody@example.test").await.unwrap().is_none());
        let q = s
            .enqueue(
                vec![b"m".to_vec()],
                "bob@example.test",
                Some(c.account_id),
                &["r@remote.test".into(), "s@remote.test".into()],
            )
            .await
            .unwrap();
        let list = s.queue_list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, q);
        assert_eq!(list[0].recipients, vec!["r@remote.test", "s@remote.test"]);
    }
}
