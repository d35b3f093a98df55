//! Sessions of the self-service web portal: a cookie token (stored as its SHA-256 digest) for a
//! mail account, with the CSRF token of its forms. A session ends at its expiry, at logout, when
//! the account is disabled, or when an incident lock revokes the account's sessions.

use sqlx::Row;

use crate::{now, Result, Store};

/// A live portal session.
#[derive(Clone)]
pub struct WebSession {
    pub account_id: i64,
    pub address: String,
    /// The CSRF token its forms carry (not a secret from the user; from other sites).
    pub csrf: String,
    pub expires_at: i64,
}

/// The CSRF token is redacted: it must not reach a log line.
impl std::fmt::Debug for WebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSession")
            .field("account_id", &self.account_id)
            .field("address", &self.address)
            .field("csrf", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Store {
    pub async fn create_web_session(
        &self,
        digest: &[u8; 32],
        account_id: i64,
        csrf: &str,
        expires_at: i64,
        ip: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO web_sessions (digest, account_id, csrf, created_at, expires_at, ip)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hex::encode(digest))
        .bind(account_id)
        .bind(csrf)
        .bind(now())
        .bind(expires_at)
        .bind(ip)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The session of this token, if it is live: not expired, account enabled, not revoked by
    /// an incident lock since it began.
    pub async fn web_session(&self, digest: &[u8; 32]) -> Result<Option<WebSession>> {
        let row = sqlx::query(
            "SELECT s.account_id, a.address, s.csrf, s.expires_at
             FROM web_sessions s JOIN accounts a ON a.id = s.account_id
             WHERE s.digest = $1 AND s.expires_at > $2 AND a.disabled = 0
               AND s.created_at >= a.sessions_revoked_at",
        )
        .bind(hex::encode(digest))
        .bind(now())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(WebSession {
                account_id: r.try_get(0)?,
                address: r.try_get(1)?,
                csrf: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Ends one session (logout), and sweeps expired ones.
    pub async fn end_web_session(&self, digest: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE digest = $1 OR expires_at <= $2")
            .bind(hex::encode(digest))
            .bind(now())
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
