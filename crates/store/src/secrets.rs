//! The internal secret store: named secrets (relay passwords, DKIM keys, ...) kept sealed by the
//! secrets crate (envelope encryption under the master key). The store sees only sealed bytes.
//! Also lists every sealed blob (secrets and TOTP seeds) for master key rotation.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// What it is for ("relay password", "dkim key", ...), free text, never the value.
    pub description: String,
    /// The master key it is sealed under (public id).
    pub key_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One sealed blob anywhere in the database, for rotation: (table, row key, purpose, sealed).
pub struct SealedRow {
    pub table: &'static str,
    pub key: String,
    pub purpose: String,
    pub sealed: Vec<u8>,
}

impl Store {
    pub async fn put_secret(
        &self,
        name: &str,
        description: &str,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<()> {
        let t = now();
        sqlx::query(
            "INSERT INTO secrets (name, description, key_id, sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT(name) DO UPDATE SET description = excluded.description,
                 key_id = excluded.key_id, sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(description)
        .bind(key_id)
        .bind(sealed)
        .bind(t)
        .bind(t)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The sealed value of a secret.
    pub async fn sealed_secret(&self, name: &str) -> Result<Vec<u8>> {
        let row = sqlx::query("SELECT sealed FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(r) => Ok(r.try_get("sealed")?),
            None => Err(StoreError::NotFound(format!("secret {name:?}"))),
        }
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(
            "SELECT name, description, key_id, created_at, updated_at FROM secrets ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretInfo {
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    key_id: r.try_get("key_id")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn secret_info(&self, name: &str) -> Result<SecretInfo> {
        self.list_secrets()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StoreError::NotFound(format!("secret {name:?}")))
    }

    pub async fn remove_secret(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("secret {name:?}")));
        }
        Ok(())
    }

    /// Every sealed blob: named secrets (purpose `secret:NAME`) and TOTP seeds (`totp:OWNER`).
    pub async fn sealed_rows(&self) -> Result<Vec<SealedRow>> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT name, sealed FROM secrets")
            .fetch_all(&self.write)
            .await?
        {
            let name: String = r.try_get("name")?;
            out.push(SealedRow {
                table: "secrets",
                purpose: format!("secret:{name}"),
                key: name,
                sealed: r.try_get("sealed")?,
            });
        }
        for r in sqlx::query("SELECT owner, sealed_secret FROM second_factors")
            .fetch_all(&self.write)
            .await?
        {
            let owner: String = r.try_get("owner")?;
            out.push(SealedRow {
                table: "second_factors",
                purpose: format!("totp:{owner}"),
                key: owner,
                sealed: r.try_get("sealed_secret")?,
            });
        }
        Ok(out)
    }

    /// Replaces sealed blobs after a rotation, all in one transaction (all or nothing).
    pub async fn replace_sealed(&self, rows: &[SealedRow], key_id: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        for r in rows {
            let q = match r.table {
                "secrets" => sqlx::query(
                    "UPDATE secrets SET sealed = $1, key_id = $2, updated_at = $3 WHERE name = $4",
                )
                .bind(&r.sealed)
                .bind(key_id)
                .bind(now())
                .bind(&r.key),
                _ => sqlx::query("UPDATE second_factors SET sealed_secret = $1 WHERE owner = $2")
                    .bind(&r.sealed)
                    .bind(&r.key),
            };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
