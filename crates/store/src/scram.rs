//! SCRAM verifiers (see `postern_auth::scram`): each account gets one salt and iteration count
//! when its first verifier is made, and every verifier of the account (its password's, its app
//! passwords') is derived under them. A verifier is stored only where it may be used: an app
//! password's always, the account password's only while `[auth] scram_for_account_passwords`
//! is on, and it is dropped whenever the password changes.

use postern_auth::scram::Verifier;
use postern_auth::{ScramTarget, StoredCredential};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Row;

use crate::{Result, Store};

impl Store {
    /// The account's SCRAM salt and iteration count, given a new salt if it has none yet.
    pub async fn scram_params(&self, account_id: i64) -> Result<(Vec<u8>, u32)> {
        let fresh: [u8; 16] = rand::random();
        let iterations = self
            .scram_iterations
            .load(std::sync::atomic::Ordering::Relaxed);
        let r = sqlx::query(
            "UPDATE accounts SET scram_salt = COALESCE(scram_salt, $1),
                                 scram_iterations = COALESCE(scram_iterations, $2)
             WHERE id = $3 RETURNING scram_salt, scram_iterations",
        )
        .bind(&fresh[..])
        .bind(iterations as i64)
        .bind(account_id)
        .fetch_one(&self.write)
        .await?;
        Ok((
            r.try_get("scram_salt")?,
            r.try_get::<i64, _>("scram_iterations")?
                .clamp(1, u32::MAX as i64) as u32,
        ))
    }

    /// The verifier of `password` under the account's salt (PBKDF2 on a blocking thread). None
    /// if the password is not a SASLprep string.
    pub async fn scram_verifier_for(
        &self,
        account_id: i64,
        password: &SecretString,
    ) -> Result<Option<Verifier>> {
        let (salt, iterations) = self.scram_params(account_id).await?;
        let password = password.clone();
        Ok(tokio::task::spawn_blocking(move || {
            postern_auth::scram::derive(password.expose_secret(), &salt, iterations)
        })
        .await
        .unwrap_or(None))
    }

    /// Makes and stores the verifier of a password that was just verified some other way.
    /// The account password's is kept only if the password is still the one verified.
    pub async fn make_scram_verifier(
        &self,
        cred: &StoredCredential,
        target: ScramTarget,
        password: &SecretString,
    ) -> Result<()> {
        let Some(v) = self.scram_verifier_for(cred.account_id, password).await? else {
            return Ok(());
        };
        let bytes = v.to_bytes().to_vec();
        match target {
            ScramTarget::Account => {
                sqlx::query(
                    "UPDATE accounts SET scram_verifier = $1 WHERE id = $2 AND password_hash = $3",
                )
                .bind(bytes)
                .bind(cred.account_id)
                .bind(&cred.password_hash)
                .execute(&self.write)
                .await?;
            }
            ScramTarget::AppPassword(id) => {
                sqlx::query(
                    "UPDATE app_passwords SET scram_verifier = $1 WHERE id = $2 AND account_id = $3",
                )
                .bind(bytes)
                .bind(id)
                .bind(cred.account_id)
                .execute(&self.write)
                .await?;
            }
        }
        Ok(())
    }

    /// Drops every account password's verifier (`scram_for_account_passwords` turned off): a
    /// weaker hash of a password that cannot be used is only a liability. App passwords keep
    /// theirs. Returns how many were dropped.
    pub async fn drop_account_scram_verifiers(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE accounts SET scram_verifier = NULL WHERE scram_verifier IS NOT NULL",
        )
        .execute(&self.write)
        .await?
        .rows_affected())
    }
}
