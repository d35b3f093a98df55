//! Aliases, and who receives mail for an address.

use postern_types::EmailAddress;
use sqlx::Row;

use crate::{now, Result, Store, StoreError};

impl Store {
    pub async fn add_alias(&self, alias: &EmailAddress, target: &EmailAddress) -> Result<()> {
        let mut tx = self.write.begin().await?;
        if sqlx::query("SELECT 1 FROM domains WHERE name = $1")
            .bind(alias.domain())
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("domain {}", alias.domain())));
        }
        let id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(target.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {target}")))?
            .try_get(0)?;
        if sqlx::query("SELECT 1 FROM accounts WHERE address = $1 UNION ALL SELECT 1 FROM aliases WHERE address = $1")
            .bind(alias.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Exists(format!("account or alias {alias}")));
        }
        sqlx::query("INSERT INTO aliases (address, account_id, created_at) VALUES ($1, $2, $3)")
            .bind(alias.as_str())
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_alias(&self, alias: &EmailAddress) -> Result<()> {
        let r = sqlx::query("DELETE FROM aliases WHERE address = $1")
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
}
