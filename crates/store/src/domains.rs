//! Mail domains served here.

use postern_types::Domain;
use sqlx::Row;

use crate::{now, DomainInfo, Result, Store, StoreError};

impl Store {
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
            .map(|r| Ok(sqlx::FromRow::from_row(r)?))
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
}
