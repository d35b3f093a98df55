//! Mail domains served here.

use postern_types::Domain;
use sqlx::Row;

use crate::{now, DomainInfo, Result, Store, StoreError};

impl Store {
    pub async fn add_domain(&self, domain: &Domain) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO domains (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(domain.as_str())
        .bind(now())
        .execute(&self.write)
        .await?;
        self.forget_domains();
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
        let row = sqlx::query("SELECT id, (SELECT COUNT(*) FROM accounts a WHERE a.domain_id = d.id) AS n FROM domains d WHERE name = $1")
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
        sqlx::query("DELETE FROM aliases WHERE address LIKE '%@' || $1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget_domains();
        Ok(())
    }

    /// Whether a domain is ours. Answers are remembered for a second: the port-25 path asks
    /// several times per message (RCPT, own-domain protection for From and MAIL FROM), and each
    /// query is a round trip to SQLite's connection thread. A change made in this process is seen
    /// at once; one made by another (the CLI beside the server) within a second.
    pub async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        const TTL: std::time::Duration = std::time::Duration::from_secs(1);
        let now = std::time::Instant::now();
        {
            let cache = self.domain_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((local, at)) = cache.get(domain) {
                if now.duration_since(*at) < TTL {
                    return Ok(*local);
                }
            }
        }
        let local = sqlx::query("SELECT 1 FROM domains WHERE name = $1")
            .bind(domain)
            .fetch_optional(&self.read)
            .await?
            .is_some();
        let mut cache = self.domain_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 4096 {
            // bounded: names from the internet (MAIL FROM, From) must not grow it without end
            cache.clear();
        }
        cache.insert(domain.to_owned(), (local, now));
        Ok(local)
    }

    fn forget_domains(&self) {
        self.domain_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
