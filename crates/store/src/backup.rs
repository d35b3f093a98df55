//! What a backup needs from the store: a consistent copy of the database taken while the server
//! runs (SQLite's `VACUUM INTO`, which reads one snapshot of the WAL database and writes a
//! compact copy without blocking writers), and the bodies that copy references.
//!
//! The caller holds the blob directory's [`crate::blob::BackupGuard`] from before the snapshot
//! until every body is copied, so no body the snapshot lists can be removed in between.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row};

use crate::{Result, Store, StoreError, SCHEMA_VERSION};

/// What a database copy holds, for a backup's manifest and a restore's report.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub schema_version: i64,
    pub accounts: i64,
    pub messages: i64,
    pub queued: i64,
    pub audit_rows: i64,
    /// Every body the copy references (messages and queue), sorted, without duplicates.
    pub blobs: Vec<String>,
}

impl Store {
    /// Writes a consistent copy of the database to `dest` (which must not exist).
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let dest = dest
            .to_str()
            .ok_or_else(|| StoreError::Conflict("the snapshot path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(dest)
            .execute(&self.read)
            .await?;
        Ok(())
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> i64 {
        SCHEMA_VERSION
    }
}

/// Reads what a database copy holds (opened read-only; the copy is never migrated here).
pub async fn snapshot_info(db: &Path) -> Result<SnapshotInfo> {
    let mut c = SqliteConnectOptions::from_str("sqlite:")?
        .filename(db)
        .read_only(true)
        .connect()
        .await?;
    let mut one = async |sql: &'static str| -> Result<i64> {
        Ok(sqlx::query(sql).fetch_one(&mut c).await?.try_get(0)?)
    };
    let schema_version = one("PRAGMA user_version").await?;
    let accounts = one("SELECT COUNT(*) FROM accounts").await?;
    let messages = one("SELECT COUNT(*) FROM messages").await?;
    let queued = one("SELECT COUNT(*) FROM queue").await?;
    let audit_rows = one("SELECT COUNT(*) FROM audit_log").await?;
    let blobs =
        sqlx::query("SELECT blob_id FROM messages UNION SELECT blob_id FROM queue ORDER BY 1")
            .fetch_all(&mut c)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(SnapshotInfo {
        schema_version,
        accounts,
        messages,
        queued,
        audit_rows,
        blobs,
    })
}
