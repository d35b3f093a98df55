//! DKIM key metadata: which selectors a domain publishes and which one signs. The private keys
//! are sealed secrets (`dkim:DOMAIN:SELECTOR`) or keys of the secret manager (`transit_key`),
//! never stored here.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct DkimKeyInfo {
    pub domain: String,
    pub selector: String,
    /// "ed25519" or "rsa".
    pub algorithm: String,
    /// Base64 for the DNS record's p= tag.
    pub public_key: String,
    /// Signs new mail (one per domain); the others stay published until retired.
    pub active: bool,
    pub created_at: i64,
    /// The OpenBao/Vault Transit key that holds the private key; None when it is sealed here.
    pub transit_key: Option<String>,
}

fn info(r: &sqlx::any::AnyRow) -> std::result::Result<DkimKeyInfo, sqlx::Error> {
    Ok(DkimKeyInfo {
        domain: r.try_get("domain")?,
        selector: r.try_get("selector")?,
        algorithm: r.try_get("algorithm")?,
        public_key: r.try_get("public_key")?,
        active: r.try_get::<i64, _>("active")? != 0,
        created_at: r.try_get("created_at")?,
        transit_key: r.try_get("transit_key")?,
    })
}

impl Store {
    /// Adds a key and makes it the domain's signing key (the previous one stays published).
    pub async fn add_dkim_key(
        &self,
        domain: &str,
        selector: &str,
        algorithm: &str,
        public_key: &str,
        transit_key: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE dkim_keys SET active = 0 WHERE domain = $1")
            .bind(domain)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, public_key, active, created_at, transit_key)
             VALUES ($1, $2, $3, $4, 1, $5, $6)",
        )
        .bind(domain)
        .bind(selector)
        .bind(algorithm)
        .bind(public_key)
        .bind(now())
        .bind(transit_key)
        .execute(&mut *tx)
        .await;
        crate::inserted(r, format!("DKIM selector {selector:?} of {domain}"))?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn dkim_keys(&self, domain: Option<&str>) -> Result<Vec<DkimKeyInfo>> {
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, public_key, active, created_at, transit_key FROM dkim_keys
             WHERE $1 IS NULL OR domain = $1 ORDER BY domain, created_at, selector",
        )
        .bind(domain)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(info)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub async fn active_dkim_key(&self, domain: &str) -> Result<Option<DkimKeyInfo>> {
        let row = sqlx::query(
            "SELECT domain, selector, algorithm, public_key, active, created_at, transit_key FROM dkim_keys
             WHERE domain = $1 AND active = 1",
        )
        .bind(domain)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(info).transpose()?)
    }

    /// Stops publishing a selector that no longer signs.
    pub async fn retire_dkim_key(&self, domain: &str, selector: &str) -> Result<()> {
        let row = sqlx::query("SELECT active FROM dkim_keys WHERE domain = $1 AND selector = $2")
            .bind(domain)
            .bind(selector)
            .fetch_optional(&self.write)
            .await?;
        match row {
            None => Err(StoreError::NotFound(format!(
                "DKIM selector {selector:?} of {domain}"
            ))),
            Some(r) if r.try_get::<i64, _>("active")? != 0 => Err(StoreError::Conflict(
                "this selector signs new mail; generate a new key first".into(),
            )),
            Some(_) => {
                sqlx::query("DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2")
                    .bind(domain)
                    .bind(selector)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }
        }
    }
}
