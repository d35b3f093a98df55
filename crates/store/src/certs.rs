//! TLS client certificates registered to accounts, for SASL EXTERNAL (only the public key's
//! fingerprint is kept: the registration is the trust, no CA is consulted); and the sources
//! accounts sign in from, for new-sign-in notices.

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ClientCertInfo {
    pub name: String,
    pub fingerprint: String,
    pub not_after: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

impl Store {
    pub async fn add_client_cert(
        &self,
        account_id: i64,
        name: &str,
        fingerprint: &str,
        not_after: i64,
    ) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO client_certs (account_id, name, fingerprint, not_after, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account_id)
        .bind(name)
        .bind(fingerprint)
        .bind(not_after)
        .bind(now())
        .execute(&self.write)
        .await;
        crate::inserted(
            r,
            format!("client certificate {name:?} (or one with the same key)"),
        )
    }

    pub async fn list_client_certs(&self, account_id: i64) -> Result<Vec<ClientCertInfo>> {
        let rows = sqlx::query(
            "SELECT name, fingerprint, not_after, created_at, last_used_at, last_used_ip
             FROM client_certs WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClientCertInfo {
                    name: r.try_get("name")?,
                    fingerprint: r.try_get("fingerprint")?,
                    not_after: r.try_get("not_after")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    last_used_ip: r.try_get("last_used_ip")?,
                })
            })
            .collect()
    }

    pub async fn remove_client_cert(&self, account_id: i64, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM client_certs WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("client certificate {name:?}")));
        }
        Ok(())
    }

    /// The registration id and account address a public-key fingerprint belongs to.
    pub async fn cert_owner(&self, fingerprint: &str) -> Result<Option<(i64, String)>> {
        Ok(sqlx::query(
            "SELECT c.id, a.address FROM client_certs c JOIN accounts a ON a.id = c.account_id
             WHERE c.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.read)
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }
}

impl Store {
    /// Records a sign-in of `account_id` from (`network`, `client`) at `now` and returns when
    /// that pair was last seen before, if ever (for new-sign-in notices).
    pub async fn signin_seen(
        &self,
        account_id: i64,
        network: &str,
        client: &str,
        now: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.write.begin().await?;
        let prev: Option<i64> = sqlx::query(
            "SELECT last_seen FROM signin_sources WHERE account_id = $1 AND network = $2 AND client = $3",
        )
        .bind(account_id)
        .bind(network)
        .bind(client)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        sqlx::query(
            "INSERT INTO signin_sources (account_id, network, client, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (account_id, network, client) DO UPDATE SET last_seen = $4",
        )
        .bind(account_id)
        .bind(network)
        .bind(client)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(prev)
    }

    /// Where the account has signed in from, most recent first: (network, client, first seen,
    /// last seen).
    pub async fn signin_sources(&self, account_id: i64) -> Result<Vec<(String, String, i64, i64)>> {
        Ok(sqlx::query(
            "SELECT network, client, first_seen, last_seen FROM signin_sources
             WHERE account_id = $1 ORDER BY last_seen DESC LIMIT 500",
        )
        .bind(account_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
    }

    /// How many `event` rows with result `result` the audit log has for the account since `since`.
    pub async fn count_account_events(
        &self,
        account_id: i64,
        event: &str,
        result: &str,
        since: i64,
    ) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM audit_log WHERE account_id = $1 AND event = $2 AND result = $3 AND ts >= $4",
        )
        .bind(account_id)
        .bind(event)
        .bind(result)
        .bind(since)
        .fetch_one(&self.read)
        .await?
        .get(0))
    }
}
