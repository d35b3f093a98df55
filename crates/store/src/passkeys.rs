//! Passkeys (WebAuthn credentials) of an owner (`account:ID` or `admin:ID`): stored as the
//! relying-party library's own encodings (credential id, static state with the public key,
//! dynamic state with the signature counter and flags), nothing secret. The user handle that
//! authenticators keep is random and one per owner.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

/// A registered passkey.
#[derive(Debug, Clone)]
pub struct Passkey {
    pub owner: String,
    pub credential_id: Vec<u8>,
    pub name: String,
    pub static_state: Vec<u8>,
    pub dynamic_state: Vec<u8>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

fn row(r: &sqlx::any::AnyRow) -> Result<Passkey> {
    Ok(Passkey {
        owner: r.try_get("owner")?,
        credential_id: r.try_get("credential_id")?,
        name: r.try_get("name")?,
        static_state: r.try_get("static_state")?,
        dynamic_state: r.try_get("dynamic_state")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

const COLUMNS: &str =
    "owner, credential_id, name, static_state, dynamic_state, created_at, last_used_at";

impl Store {
    /// The owner's user handle, made (from `fresh`) on first use.
    pub async fn passkey_user_handle(&self, owner: &str, fresh: &[u8]) -> Result<Vec<u8>> {
        sqlx::query("INSERT INTO passkey_users (owner, user_handle) VALUES ($1, $2) ON CONFLICT (owner) DO NOTHING")
            .bind(owner)
            .bind(fresh)
            .execute(&self.write)
            .await?;
        Ok(
            sqlx::query("SELECT user_handle FROM passkey_users WHERE owner = $1")
                .bind(owner)
                .fetch_one(&self.write)
                .await?
                .try_get(0)?,
        )
    }

    /// The owner of a user handle, if any.
    pub async fn passkey_owner(&self, user_handle: &[u8]) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT owner FROM passkey_users WHERE user_handle = $1")
                .bind(user_handle)
                .fetch_optional(&self.read)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    pub async fn add_passkey(&self, p: &Passkey) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO passkeys (owner, credential_id, name, static_state, dynamic_state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.owner)
        .bind(&p.credential_id)
        .bind(&p.name)
        .bind(&p.static_state)
        .bind(&p.dynamic_state)
        .bind(now())
        .execute(&self.write)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Exists(format!("passkey {:?}", p.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn passkeys(&self, owner: &str) -> Result<Vec<Passkey>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM passkeys WHERE owner = $1 ORDER BY created_at, id"
        )))
        .bind(owner)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(row)
        .collect()
    }

    pub async fn passkey_by_credential(&self, credential_id: &[u8]) -> Result<Option<Passkey>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM passkeys WHERE credential_id = $1"
        )))
        .bind(credential_id)
        .fetch_optional(&self.write)
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    /// Records a use (and the new dynamic state: signature counter, flags).
    pub async fn passkey_used(&self, credential_id: &[u8], dynamic_state: &[u8]) -> Result<()> {
        sqlx::query(
            "UPDATE passkeys SET dynamic_state = $1, last_used_at = $2 WHERE credential_id = $3",
        )
        .bind(dynamic_state)
        .bind(now())
        .bind(credential_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn remove_passkey(&self, owner: &str, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM passkeys WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("passkey {name:?}")));
        }
        Ok(())
    }
}
