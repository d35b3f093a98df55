//! Mail accounts: creation with default mailboxes, passwords and their history, status, login
//! restrictions, send limits, removal with their mail.

use postern_types::EmailAddress;
use sqlx::Row;

use crate::{
    now, AccountInfo, MailboxInfo, Result, Store, StoreError, StoredMessage, DEFAULT_MAILBOXES,
};

impl Store {
    /// Creates an account with its default mailboxes. The domain must exist; the address must not
    /// already be an account or an alias.
    pub async fn add_account(&self, address: &EmailAddress, password_hash: &str) -> Result<i64> {
        let mut tx = self.write.begin().await?;
        let domain_id: i64 = sqlx::query("SELECT id FROM domains WHERE name = $1")
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
        if sqlx::query("SELECT 1 FROM accounts WHERE address = $1 UNION ALL SELECT 1 FROM aliases WHERE address = $1")
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
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
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
            sqlx::query("INSERT INTO mailboxes (account_id, name, special_use, uidvalidity) VALUES ($1, $2, $3, $4)")
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
        let row = sqlx::query("SELECT id, password_hash FROM accounts WHERE address = $1")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        let (id, old): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
        if keep > 0 {
            sqlx::query(
                "INSERT INTO password_history (account_id, hash, replaced_at) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(&old)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM password_history WHERE account_id = $1 AND rowid NOT IN
             (SELECT rowid FROM password_history WHERE account_id = $1 ORDER BY replaced_at DESC, rowid DESC LIMIT $2)",
        )
        .bind(id)
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            // The SCRAM verifier of the old password goes with it.
            "UPDATE accounts SET password_hash = $1, password_changed_at = $2, must_change_password = 0,
                                 scram_verifier = NULL WHERE id = $3",
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
                sqlx::query("SELECT password_hash FROM accounts WHERE id = $1")
                    .bind(id)
                    .fetch_one(&self.read)
                    .await?
                    .try_get(0)?,
            ];
        let rows = sqlx::query(
            "SELECT hash FROM password_history WHERE account_id = $1 ORDER BY replaced_at DESC, rowid DESC LIMIT $2",
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
        let v: i64 = sqlx::query("SELECT must_change_password FROM accounts WHERE id = $1")
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
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
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
            sqlx::query("UPDATE accounts SET must_change_password = 1 WHERE address = $1"),
        )
        .await
    }

    pub async fn set_disabled(&self, address: &EmailAddress, disabled: bool) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET disabled = $1 WHERE address = $2")
                .bind(i64::from(disabled)),
        )
        .await
    }

    pub async fn set_received_details(&self, address: &EmailAddress, on: bool) -> Result<()> {
        self.update_account(
            address,
            sqlx::query("UPDATE accounts SET received_details = $1 WHERE address = $2")
                .bind(i64::from(on)),
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
            sqlx::query("UPDATE accounts SET allowed_networks = $1 WHERE address = $2")
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
        self.update_account(address, sqlx::query("UPDATE accounts SET send_messages_per_hour = $1, send_recipients_per_hour = $2 WHERE address = $3")
            .bind(messages.map(i64::from))
            .bind(recipients.map(i64::from)))
            .await
    }

    /// Per-account overrides of the hourly send limits (messages, recipients).
    pub async fn send_limits(&self, account_id: i64) -> Result<(Option<u32>, Option<u32>)> {
        let r = sqlx::query(
            "SELECT send_messages_per_hour, send_recipients_per_hour FROM accounts WHERE id = $1",
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
        let v: String = sqlx::query("SELECT allowed_networks FROM accounts WHERE id = $1")
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
            sqlx::query("UPDATE accounts SET pop3_enabled = $1 WHERE address = $2")
                .bind(i64::from(on)),
        )
        .await
    }

    /// Removes an account, its aliases, mailboxes and messages, and the bodies no longer referenced.
    pub async fn remove_account(&self, address: &EmailAddress) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?
            .try_get(0)?;
        let blobs: Vec<String> = sqlx::query(
            "SELECT DISTINCT m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        sqlx::query("DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM vanished WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mailboxes WHERE account_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aliases WHERE account_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // its second factors (keyed by owner, no foreign key): a later account with a reused id
        // must not inherit them
        let owner = crate::totp::account_owner(id);
        for table in [
            "second_factors",
            "recovery_codes",
            "passkeys",
            "passkey_users",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE owner = $1"
            )))
            .bind(&owner)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut orphans = Vec::new();
        for b in blobs {
            let used = sqlx::query("SELECT 1 FROM messages WHERE blob_id = $1 UNION ALL SELECT 1 FROM queue WHERE blob_id = $1 LIMIT 1")
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

    fn account_from_row(r: &sqlx::any::AnyRow) -> Result<AccountInfo> {
        Ok(sqlx::FromRow::from_row(r)?)
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        let rows = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts ORDER BY address")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(Self::account_from_row).collect()
    }

    pub async fn account(&self, address: &EmailAddress) -> Result<AccountInfo> {
        let row = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts WHERE address = $1")
            .bind(address.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?;
        Self::account_from_row(&row)
    }

    pub async fn account_by_id(&self, id: i64) -> Result<AccountInfo> {
        let row = sqlx::query("SELECT id, address, disabled, received_details, created_at, password_changed_at FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account #{id}")))?;
        Self::account_from_row(&row)
    }

    pub async fn mailboxes(&self, account_id: i64) -> Result<Vec<MailboxInfo>> {
        let rows = sqlx::query(
            "SELECT b.name, b.special_use, b.uidvalidity, b.uidnext,
                    COUNT(m.id) AS n, CAST(COALESCE(SUM(m.size), 0) AS BIGINT) AS bytes
             FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id
             WHERE b.account_id = $1 GROUP BY b.id ORDER BY b.id",
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
             JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = $1 AND b.name = $2 ORDER BY m.uid",
        )
        .bind(account_id)
        .bind(mailbox)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok(sqlx::FromRow::from_row(r)?))
            .collect()
    }
}
