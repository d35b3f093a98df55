//! Incident response on an account: one transaction locks it (logins off, password to be
//! changed, app passwords, client certificates and second factor gone, queued mail held, live sessions revoked), and
//! the running server learns which accounts' sessions to end from `sessions_revoked_at`.
//!
//! Several nodes: every node reads `sessions_revoked_at` twice a second, and a lock is also
//! announced at once through the cluster's bus ([`RevocationBus`], Redis pub/sub), so the
//! sessions on every node end within moments. The database stays the record: an announcement
//! lost while Redis is down is made good by the next read.

use sqlx::Row;

use crate::{Result, Store, StoreError};

/// Announces revoked sessions to the other nodes of a cluster (implemented by the server,
/// which owns the Redis connection). Failing is not an error of the lock: the nodes then learn
/// it from the database.
#[async_trait::async_trait]
pub trait RevocationBus: Send + Sync {
    /// The sessions of `account_id` opened before `at` are revoked.
    async fn sessions_revoked(&self, account_id: i64, at: i64) -> std::result::Result<(), String>;
}

/// What a lock did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LockEffect {
    pub app_passwords_revoked: u64,
    /// TLS client certificates (SASL EXTERNAL) no longer registered.
    pub client_certs_removed: u64,
    pub second_factor_removed: bool,
    pub queued_messages_held: u64,
}

impl Store {
    /// Locks an account at `now` (see the module).
    pub async fn incident_lock(&self, account_id: i64, now: i64) -> Result<LockEffect> {
        let mut tx = self.write.begin().await?;
        let r = sqlx::query(
            "UPDATE accounts SET disabled = 1, must_change_password = 1, incident_locked_at = $1,
             sessions_revoked_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("account #{account_id}")));
        }
        let app_passwords_revoked = sqlx::query("DELETE FROM app_passwords WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let client_certs_removed = sqlx::query("DELETE FROM client_certs WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let owner = crate::totp::account_owner(account_id);
        let second_factor_removed = sqlx::query("DELETE FROM second_factors WHERE owner = $1")
            .bind(&owner)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        sqlx::query("DELETE FROM recovery_codes WHERE owner = $1")
            .bind(&owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM passkeys WHERE owner = $1")
            .bind(&owner)
            .execute(&mut *tx)
            .await?;
        let queued_messages_held = sqlx::query(
            "UPDATE queue SET status = 'held' WHERE account_id = $1 AND status = 'queued'",
        )
        .bind(account_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if let Some(bus) = self.revocation_bus.get() {
            if let Err(e) = bus.sessions_revoked(account_id, now).await {
                tracing::warn!(error = %e, account_id,
                    "the revocation could not be announced to the other nodes: they end the sessions at their next read of the database");
            }
        }
        Ok(LockEffect {
            app_passwords_revoked,
            client_certs_removed,
            second_factor_removed,
            queued_messages_held,
        })
    }

    /// Announces revoked sessions through `bus` from now on (cluster mode).
    pub fn share_revocations(&self, bus: std::sync::Arc<dyn RevocationBus>) {
        let _ = self.revocation_bus.set(bus);
    }

    /// Lifts an incident lock: logins allowed again (the caller sets a new password first).
    /// Held mail stays held: an administrator decides what of it to release.
    pub async fn incident_unlock(&self, account_id: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE accounts SET disabled = 0, incident_locked_at = NULL
             WHERE id = $1 AND incident_locked_at IS NOT NULL",
        )
        .bind(account_id)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// When the account was locked, if it is.
    pub async fn incident_locked_at(&self, account_id: i64) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT incident_locked_at FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// Accounts whose sessions were revoked after `since`, with the time.
    pub async fn sessions_revoked_since(&self, since: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT id, sessions_revoked_at FROM accounts WHERE sessions_revoked_at > $1",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
