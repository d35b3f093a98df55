//! Second factors: sealed TOTP seeds (the store never sees them in clear), the last accepted time
//! step (no code is accepted twice), and one-time recovery codes kept as keyed digests.
//! An owner is `account:ID` or `admin:ID`.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

pub fn account_owner(id: i64) -> String {
    format!("account:{id}")
}

pub fn admin_owner(id: i64) -> String {
    format!("admin:{id}")
}

/// A stored second factor.
pub struct SecondFactor {
    pub sealed_secret: Vec<u8>,
    pub confirmed: bool,
    pub last_step: i64,
}

impl Store {
    /// Starts an enrolment (replacing an unconfirmed one). Refused if a confirmed one exists.
    pub async fn begin_second_factor(&self, owner: &str, sealed: &[u8]) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let confirmed: Option<i64> =
            sqlx::query("SELECT confirmed FROM second_factors WHERE owner = $1")
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("confirmed"))
                .transpose()?;
        if confirmed == Some(1) {
            return Err(StoreError::Exists("a second factor".into()));
        }
        sqlx::query(
            "INSERT INTO second_factors (owner, sealed_secret, confirmed, last_step, created_at)
             VALUES ($1, $2, 0, 0, $3)
             ON CONFLICT (owner) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                 confirmed = 0, last_step = 0, created_at = excluded.created_at",
        )
        .bind(owner)
        .bind(sealed)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn second_factor(&self, owner: &str) -> Result<Option<SecondFactor>> {
        let row = sqlx::query(
            "SELECT sealed_secret, confirmed, last_step FROM second_factors WHERE owner = $1",
        )
        .bind(owner)
        .fetch_optional(&self.write)
        .await?;
        Ok(match row {
            Some(r) => Some(SecondFactor {
                sealed_secret: r.try_get("sealed_secret")?,
                confirmed: r.try_get::<i64, _>("confirmed")? != 0,
                last_step: r.try_get("last_step")?,
            }),
            None => None,
        })
    }

    pub async fn second_factor_confirmed(&self, owner: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM second_factors WHERE owner = $1 AND confirmed = 1")
                .bind(owner)
                .fetch_optional(&self.read)
                .await?
                .is_some(),
        )
    }

    /// Records that the code of time step `step` was accepted; false if that step or a later one
    /// was already used (a replay), so each code works once.
    pub async fn accept_totp_step(&self, owner: &str, step: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE second_factors SET last_step = $1 WHERE owner = $2 AND last_step < $3",
        )
        .bind(step)
        .bind(owner)
        .bind(step)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    /// Marks the enrolment confirmed and stores its recovery codes (digests), in one transaction.
    pub async fn confirm_second_factor(&self, owner: &str, recovery: &[String]) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query("UPDATE second_factors SET confirmed = 1 WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound("a pending second factor".into()));
        }
        sqlx::query("DELETE FROM recovery_codes WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        for d in recovery {
            sqlx::query("INSERT INTO recovery_codes (owner, digest) VALUES ($1, $2)")
                .bind(owner)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Uses a recovery code (by digest); false if unknown or already used.
    pub async fn use_recovery_code(&self, owner: &str, digest: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE owner = $2 AND digest = $3 AND used_at IS NULL",
        )
        .bind(now())
        .bind(owner)
        .bind(digest)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    pub async fn recovery_codes_left(&self, owner: &str) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE owner = $1 AND used_at IS NULL",
        )
        .bind(owner)
        .fetch_one(&self.read)
        .await?
        .try_get("n")?)
    }

    /// Removes the second factor and its recovery codes; false if there was none.
    pub async fn remove_second_factor(&self, owner: &str) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query("DELETE FROM second_factors WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM recovery_codes WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        // passkeys are a second factor beside it: they go with it
        sqlx::query("DELETE FROM passkeys WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }
}
