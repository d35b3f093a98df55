//! Storage: domains, accounts, aliases, mailboxes, messages and the outbound queue in SQLite, message
//! bodies in a [`BlobStore`]. Knows no protocol.
//!
//! Writes go through a one-connection pool so that they are serialised without SQLITE_BUSY
//! retries; reads use a separate pool. The database runs in WAL mode with `synchronous = FULL`: a
//! committed transaction is on disk when the commit returns, which is what lets the SMTP server say
//! 250 only after [`Store::deliver_local`] or [`Store::enqueue`] returned.
#![forbid(unsafe_code)]

pub mod admins;
pub mod apppw;
pub mod apps;
pub mod audit;
pub mod blob;
pub mod dkim;
pub mod lock;
pub mod mailbox;
pub mod queue;
pub mod secrets;
pub mod totp;
pub mod views;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use postern_auth::{CredentialStore, CredentialStoreError, StoredCredential};
use postern_types::{Domain, EmailAddress};

pub use blob::BlobStore;
pub use mailbox::{ChangeBus, FlagOp, Mailbox, MailboxCounts, MessageMeta, DELIMITER};

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

#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub name: String,
    pub accounts: i64,
}

#[derive(Debug, Clone)]
pub struct AccountInfo {
    pub id: i64,
    pub address: String,
    pub disabled: bool,
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
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub uid: i64,
    pub blob_id: String,
    pub size: i64,
    pub internal_date: i64,
}

#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    write: SqlitePool,
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
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
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
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        let blobs = BlobStore::open(blob_dir)?;
        Ok(Store {
            read,
            write,
            blobs,
            changes: Default::default(),
            audit_failure_cap: 1000,
            lock: None,
            trash: Default::default(),
            audit_key: Default::default(),
        })
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

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
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

    // ---- domains ----

    pub async fn add_domain(&self, domain: &Domain) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO domains (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(domain.as_str())
        .bind(now())
        .execute(&self.write)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Exists(format!("domain {domain}")));
        }
        Ok(())
    }

    pub async fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let rows = sqlx::query(
            "SELECT d.name, (SELECT COUNT(*) FROM accounts a WHERE a.domain_id = d.id) AS n
             FROM domains d ORDER BY d.name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainInfo {
                    name: r.try_get("name")?,
                    accounts: r.try_get("n")?,
                })
            })
            .collect()
    }

    /// Removes a domain that has no accounts left (refuses otherwise: mail would be lost silently).
    pub async fn remove_domain(&self, domain: &Domain) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("SELECT id, (SELECT COUNT(*) FROM accounts a WHERE a.domain_id = d.id) AS n FROM domains d WHERE name = ?")
            .bind(domain.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("domain {domain}")))?;
        let n: i64 = row.try_get("n")?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "domain {domain} still has {n} account(s); remove them first"
            )));
        }
        let id: i64 = row.try_get("id")?;
        sqlx::query("DELETE FROM aliases WHERE address LIKE '%@' || ?")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM domains WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM domains WHERE name = ?")
            .bind(domain)
            .fetch_optional(&self.read)
            .await?
            .is_some())
    }

    // ---- accounts ----

    /// Creates an account with its default mailboxes. The domain must exist; the address must not
    /// already be an account or an alias.
    pub async fn add_account(&self, address: &EmailAddress, password_hash: &str) -> Result<i64> {
        let mut tx = self.write.begin().await?;
        let domain_id: i64 = sqlx::query("SELECT id FROM domains WHERE name = ?")
            .bind(address.domain())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "domain {} (add it with `postern domain add`)",
                    address.domain()
                ))
            })?
            .try_get(0)?;
        if sqlx::query("SELECT 1 FROM accounts WHERE address = ?1 UNION ALL SELECT 1 FROM aliases WHERE address = ?1")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Exists(format!("account or alias {address}")));
        }
        let t = now();
        let id: i64 = sqlx::query(
            "INSERT INTO accounts (address, domain_id, password_hash, created_at, password_changed_at)
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(address.as_str())
        .bind(domain_id)
        .bind(password_hash)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
            // UIDVALIDITY: creation time plus an offset, unique per mailbox of the account.
            sqlx::query("INSERT INTO mailboxes (account_id, name, special_use, uidvalidity) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(*name)
                .bind(*special)
                .bind((t & 0x7fff_ffff) + i as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Sets a new password hash; the old one goes into the history, which keeps the last `keep`.
    pub async fn set_password(&self, address: &EmailAddress, password_hash: &str) -> Result<()> {
        self.set_password_keeping(address, password_hash, 5).await
    }

    pub async fn set_password_keeping(
        &self,
        address: &EmailAddress,
        password_hash: &str,
        keep: u32,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("SELECT id, password_hash FROM accounts WHERE address = ?")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        let (id, old): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
        if keep > 0 {
            sqlx::query(
                "INSERT INTO password_history (account_id, hash, replaced_at) VALUES (?, ?, ?)",
            )
            .bind(id)
            .bind(&old)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM password_history WHERE account_id = ?1 AND rowid NOT IN
             (SELECT rowid FROM password_history WHERE account_id = ?1 ORDER BY replaced_at DESC, rowid DESC LIMIT ?2)",
        )
        .bind(id)
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE accounts SET password_hash = ?, password_changed_at = ?, must_change_password = 0 WHERE id = ?",
        )
        .bind(password_hash)
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The current hash and up to `n` previous ones, newest first (for the no-reuse check).
    pub async fn recent_password_hashes(
        &self,
        address: &EmailAddress,
        n: u32,
    ) -> Result<Vec<String>> {
        let id = self.account(address).await?.id;
        let mut out: Vec<String> =
            vec![
                sqlx::query("SELECT password_hash FROM accounts WHERE id = ?")
                    .bind(id)
                    .fetch_one(&self.read)
                    .await?
                    .try_get(0)?,
            ];
        let rows = sqlx::query(
            "SELECT hash FROM password_history WHERE account_id = ? ORDER BY replaced_at DESC, rowid DESC LIMIT ?",
        )
        .bind(id)
        .bind(n as i64)
        .fetch_all(&self.read)
        .await?;
        for r in rows {
            out.push(r.try_get(0)?);
        }
        Ok(out)
    }

    pub async fn must_change_password(&self, account_id: i64) -> Result<bool> {
        let v: i64 = sqlx::query("SELECT must_change_password FROM accounts WHERE id = ?")
            .bind(account_id)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        Ok(v != 0)
    }

    /// Runs an `UPDATE accounts ... WHERE address = ?` whose other parameters are bound; the
    /// address is bound last. An address that names no account is NotFound.
    async fn update_account<'q>(
        &self,
        address: &'q EmailAddress,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<()> {
        let r = q.bind(address.as_str()).execute(&self.write).await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    /// Forces a password change at the next login (`postern user expire-password`).
    pub async fn expire_password(&self, address: &EmailAddress) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET must_change_password = 1 WHERE address = ?"),
        )
        .await
    }

    pub async fn set_disabled(&self, address: &EmailAddress, disabled: bool) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET disabled = ? WHERE address = ?").bind(disabled),
        )
        .await
    }

    pub async fn set_received_details(&self, address: &EmailAddress, on: bool) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET received_details = ? WHERE address = ?").bind(on),
        )
        .await
    }

    /// Networks the account may log in from (empty: anywhere).
    pub async fn set_allowed_networks(
        &self,
        address: &EmailAddress,
        nets: &[String],
    ) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET allowed_networks = ? WHERE address = ?")
                .bind(nets.join(",")),
        )
        .await
    }

    pub async fn set_send_limits(
        &self,
        address: &EmailAddress,
        messages: Option<u32>,
        recipients: Option<u32>,
    ) -> Result<()> {
        self.update_account(address, sqlx::query("UPDATE accounts SET send_messages_per_hour = ?, send_recipients_per_hour = ? WHERE address = ?")
            .bind(messages.map(i64::from))
            .bind(recipients.map(i64::from)))
            .await
    }

    /// Per-account overrides of the hourly send limits (messages, recipients).
    pub async fn send_limits(&self, account_id: i64) -> Result<(Option<u32>, Option<u32>)> {
        let r = sqlx::query(
            "SELECT send_messages_per_hour, send_recipients_per_hour FROM accounts WHERE id = ?",
        )
        .bind(account_id)
        .fetch_one(&self.read)
        .await?;
        Ok((
            r.try_get::<Option<i64>, _>(0)?.map(|v| v as u32),
            r.try_get::<Option<i64>, _>(1)?.map(|v| v as u32),
        ))
    }

    pub async fn allowed_networks(&self, account_id: i64) -> Result<Vec<String>> {
        let v: String = sqlx::query("SELECT allowed_networks FROM accounts WHERE id = ?")
            .bind(account_id)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        Ok(v.split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect())
    }

    pub async fn set_pop3_enabled(&self, address: &EmailAddress, on: bool) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET pop3_enabled = ? WHERE address = ?").bind(on),
        )
        .await
    }

    /// Removes an account, its aliases, mailboxes and messages, and the bodies no longer referenced.
    pub async fn remove_account(&self, address: &EmailAddress) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = ?")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?
            .try_get(0)?;
        let blobs: Vec<String> = sqlx::query(
            "SELECT DISTINCT m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = ?",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        sqlx::query("DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mailboxes WHERE account_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aliases WHERE account_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM accounts WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut orphans = Vec::new();
        for b in blobs {
            let used = sqlx::query("SELECT 1 FROM messages WHERE blob_id = ?1 UNION ALL SELECT 1 FROM queue WHERE blob_id = ?1 LIMIT 1")
                .bind(&b)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !used {
                orphans.push(b);
            }
        }
        tx.commit().await?;
        self.remove_blobs(&orphans);
        Ok(())
    }

    fn account_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<AccountInfo> {
        Ok(AccountInfo {
            id: r.try_get("id")?,
            address: r.try_get("address")?,
            disabled: r.try_get("disabled")?,
            received_details: r.try_get("received_details")?,
            created_at: r.try_get("created_at")?,
            password_changed_at: r.try_get("password_changed_at")?,
        })
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        let rows = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts ORDER BY address")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(Self::account_from_row).collect()
    }

    pub async fn account(&self, address: &EmailAddress) -> Result<AccountInfo> {
        let row = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts WHERE address = ?")
            .bind(address.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        Self::account_from_row(&row)
    }

    pub async fn account_by_id(&self, id: i64) -> Result<AccountInfo> {
        let row = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account #{id}")))?;
        Self::account_from_row(&row)
    }

    pub async fn mailboxes(&self, account_id: i64) -> Result<Vec<MailboxInfo>> {
        let rows = sqlx::query(
            "SELECT b.name, b.special_use, b.uidvalidity, b.uidnext,
                    COUNT(m.id) AS n, COALESCE(SUM(m.size), 0) AS bytes
             FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id
             WHERE b.account_id = ? GROUP BY b.id ORDER BY b.id",
        )
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MailboxInfo {
                    name: r.try_get("name")?,
                    special_use: r.try_get("special_use")?,
                    messages: r.try_get("n")?,
                    bytes: r.try_get("bytes")?,
                    uidvalidity: r.try_get("uidvalidity")?,
                    uidnext: r.try_get("uidnext")?,
                })
            })
            .collect()
    }

    /// Messages of one mailbox in UID order.
    pub async fn messages(&self, account_id: i64, mailbox: &str) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT m.uid, m.blob_id, m.size, m.internal_date FROM messages m
             JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = ? AND b.name = ? ORDER BY m.uid",
        )
        .bind(account_id)
        .bind(mailbox)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredMessage {
                    uid: r.try_get("uid")?,
                    blob_id: r.try_get("blob_id")?,
                    size: r.try_get("size")?,
                    internal_date: r.try_get("internal_date")?,
                })
            })
            .collect()
    }

    // ---- aliases ----

    pub async fn add_alias(&self, alias: &EmailAddress, target: &EmailAddress) -> Result<()> {
        let mut tx = self.write.begin().await?;
        if sqlx::query("SELECT 1 FROM domains WHERE name = ?")
            .bind(alias.domain())
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("domain {}", alias.domain())));
        }
        let id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = ?")
            .bind(target.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {target}")))?
            .try_get(0)?;
        if sqlx::query("SELECT 1 FROM accounts WHERE address = ?1 UNION ALL SELECT 1 FROM aliases WHERE address = ?1")
            .bind(alias.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Exists(format!("account or alias {alias}")));
        }
        sqlx::query("INSERT INTO aliases (address, account_id, created_at) VALUES (?, ?, ?)")
            .bind(alias.as_str())
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_alias(&self, alias: &EmailAddress) -> Result<()> {
        let r = sqlx::query("DELETE FROM aliases WHERE address = ?")
            .bind(alias.as_str())
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("alias {alias}")));
        }
        Ok(())
    }

    /// (alias, target account address) pairs.
    pub async fn list_aliases(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT l.address, a.address AS target FROM aliases l JOIN accounts a ON a.id = l.account_id ORDER BY l.address")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("address")?, r.try_get("target")?)))
            .collect()
    }

    // ---- mail flow ----

    /// The account that receives mail for `address` (an account address or an alias), if any.
    /// Disabled accounts still receive mail (disabling stops logins, not delivery).
    pub async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT id FROM accounts WHERE address = ?1 UNION ALL SELECT account_id FROM aliases WHERE address = ?1 LIMIT 1",
        )
        .bind(address.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// The addresses an account may send as: its own and its aliases.
    pub async fn owned_addresses(&self, account_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT address FROM accounts WHERE id = ?1 UNION ALL SELECT address FROM aliases WHERE account_id = ?1")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Writes `parts` (concatenated) as one blob on a blocking thread.
    async fn put_blob(&self, parts: Vec<Vec<u8>>) -> Result<String> {
        let blobs = self.blobs.clone();
        let id = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            blobs.put(&refs)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        Ok(id)
    }

    /// Durably stores one message into the INBOX of each account in `accounts` and returns the UIDs.
    /// When this returns Ok the message is on disk (blob fsynced, transaction committed).
    pub async fn deliver_local(
        &self,
        message: Vec<Vec<u8>>,
        accounts: &[i64],
        internal_date: i64,
    ) -> Result<Vec<i64>> {
        let size: usize = message.iter().map(Vec::len).sum();
        let blob = self.put_blob(message).await?;
        let res = async {
            let mut tx = self.write.begin().await?;
            let mut uids = Vec::with_capacity(accounts.len());
            for &account in accounts {
                let row = sqlx::query(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1
                     WHERE account_id = ? AND name = 'INBOX' RETURNING id, uidnext - 1 AS uid, highest_modseq",
                )
                .bind(account)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("INBOX of account #{account}")))?;
                let (mailbox, uid, modseq): (i64, i64, i64) =
                    (row.try_get("id")?, row.try_get("uid")?, row.try_get("highest_modseq")?);
                sqlx::query("INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, modseq) VALUES (?, ?, ?, ?, ?, ?)")
                    .bind(mailbox)
                    .bind(uid)
                    .bind(&blob)
                    .bind(size as i64)
                    .bind(internal_date)
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
                uids.push(uid);
            }
            tx.commit().await?;
            Ok::<_, StoreError>(uids)
        }
        .await;
        if res.is_err() {
            let _ = self.blobs.remove(&blob);
        } else {
            for &a in accounts {
                self.changes.notify(a);
            }
        }
        res
    }

    /// Removes blob files that no message and no queue entry points at and that were written
    /// before `before` (the start of this process): what a crash between "blob written" and
    /// "row committed" leaves behind. Returns how many were removed.
    ///
    /// Only the holder of the data directory's lock may sweep: beside another process, a blob that
    /// process wrote and fsynced but has not yet committed would look orphaned, and removing it
    /// would lose a message that is acknowledged a moment later.
    pub async fn sweep_orphan_blobs(&self, before: std::time::SystemTime) -> Result<usize> {
        if !self.holds_lock() {
            return Err(StoreError::Conflict(
                "the orphan-blob sweep needs the data directory's lock".into(),
            ));
        }
        let blobs = self.blobs.clone();
        let ids = tokio::task::spawn_blocking(move || blobs.list_before(before))
            .await
            .map_err(|e| StoreError::Conflict(e.to_string()))??;
        let mut removed = 0;
        for id in ids {
            let used = sqlx::query(
                "SELECT 1 FROM messages WHERE blob_id = ?1 UNION ALL SELECT 1 FROM queue WHERE blob_id = ?1 LIMIT 1",
            )
            .bind(&id)
            .fetch_optional(&self.write)
            .await?
            .is_some();
            if !used {
                self.blobs.remove(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Durably queues one message for remote delivery. Returns the queue id.
    pub async fn enqueue(
        &self,
        message: Vec<Vec<u8>>,
        sender: &str,
        account_id: Option<i64>,
        recipients: &[String],
    ) -> Result<i64> {
        let size: usize = message.iter().map(Vec::len).sum();
        let blob = self.put_blob(message).await?;
        let res = async {
            let mut tx = self.write.begin().await?;
            let t = now();
            let id: i64 = sqlx::query(
                "INSERT INTO queue (blob_id, size, sender, account_id, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&blob)
            .bind(size as i64)
            .bind(sender)
            .bind(account_id)
            .bind(t)
            .bind(t)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            for r in recipients {
                sqlx::query("INSERT OR IGNORE INTO queue_recipients (queue_id, address) VALUES (?, ?)")
                    .bind(id)
                    .bind(r)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(id)
        }
        .await;
        if res.is_err() {
            let _ = self.blobs.remove(&blob);
        }
        res
    }

    pub async fn queue_list(&self) -> Result<Vec<QueueEntry>> {
        let rows = sqlx::query(
            "SELECT q.id, q.sender, q.size, q.created_at, q.status, q.attempts,
                    (SELECT group_concat(address, ' ') FROM queue_recipients r WHERE r.queue_id = q.id) AS rcpts
             FROM queue q ORDER BY q.id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let rcpts: Option<String> = r.try_get("rcpts")?;
                Ok(QueueEntry {
                    id: r.try_get("id")?,
                    sender: r.try_get("sender")?,
                    recipients: rcpts
                        .unwrap_or_default()
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    size: r.try_get("size")?,
                    created_at: r.try_get("created_at")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
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
];

async fn schema_version(pool: &SqlitePool) -> Result<i64> {
    Ok(sqlx::query("PRAGMA user_version")
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
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
            "SELECT id, address, password_hash, disabled, allowed_networks, password_changed_at, must_change_password
             FROM accounts WHERE address = ?",
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
                disabled: r.try_get("disabled")?,
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
                ..StoredCredential::account(0, "", "")
            })
        };
        get()
            .map(Some)
            .map_err(|e| CredentialStoreError(e.to_string()))
    }

    async fn app_password_used(&self, id: i64, ip: std::net::IpAddr) {
        let r =
            sqlx::query("UPDATE app_passwords SET last_used_at = ?, last_used_ip = ? WHERE id = ?")
                .bind(now())
                .bind(ip.to_string())
                .bind(id)
                .execute(&self.write)
                .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record app password use");
        }
    }

    async fn application_used(&self, id: i64, ip: std::net::IpAddr) {
        let r =
            sqlx::query("UPDATE applications SET last_used_at = ?, last_used_ip = ? WHERE id = ?")
                .bind(now())
                .bind(ip.to_string())
                .bind(id)
                .execute(&self.write)
                .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record application use");
        }
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
            let pool = SqlitePool::connect_with(opts).await.unwrap();
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
