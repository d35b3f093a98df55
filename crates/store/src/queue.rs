//! The outbound queue as the delivery workers see it: due messages, per-recipient outcomes,
//! rescheduling with backoff, holding and releasing, and removal once every recipient has an
//! outcome (the message blob is removed with it).

use sqlx::Row;

use crate::{now, Result, Store, StoreError};

/// One recipient of a queued message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueuedRecipient {
    pub address: String,
    /// pending, delivered, failed (permanent), expired (gave up).
    pub status: String,
    pub last_error: Option<String>,
    pub updated_at: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueuedMessage {
    pub id: i64,
    pub blob_id: String,
    pub size: i64,
    pub sender: String,
    pub account_id: Option<i64>,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub attempts: i64,
    /// queued or held.
    pub status: String,
    pub last_error: Option<String>,
    /// A delay warning (DSN "delayed") was sent.
    pub warned: bool,
    pub recipients: Vec<QueuedRecipient>,
}

/// How long a leased queue entry waits before another attempt may take it (see
/// [`Store::lease_due`]): longer than one attempt lasts (its connections time out sooner).
pub const QUEUE_LEASE: i64 = 600;

impl Store {
    /// Leases queued (not held) messages whose next attempt is due, oldest first, and returns
    /// their ids: their next attempt moves [`QUEUE_LEASE`] seconds on, so that no other node
    /// (nor this one's next look) takes them while this attempt runs. The attempt then sets the
    /// real next attempt, or removes the message; if this node dies, the lease runs out and
    /// another node attempts it.
    ///
    /// On PostgreSQL the rows are taken with `FOR UPDATE SKIP LOCKED`: nodes leasing at the same
    /// moment get disjoint sets, and a row another node has just leased is no longer due.
    pub async fn lease_due(&self, at: i64, limit: i64) -> Result<Vec<i64>> {
        let sql = match self.backend {
            crate::Backend::Sqlite => {
                "UPDATE queue SET next_attempt_at = $1 + $3 WHERE id IN
                   (SELECT id FROM queue WHERE status = 'queued' AND next_attempt_at <= $1
                    ORDER BY next_attempt_at, id LIMIT $2)
                 RETURNING id"
            }
            crate::Backend::Postgres => {
                "UPDATE queue SET next_attempt_at = $1 + $3 WHERE id IN
                   (SELECT id FROM queue WHERE status = 'queued' AND next_attempt_at <= $1
                    ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id"
            }
        };
        let rows = sqlx::query(sql)
            .bind(at)
            .bind(limit)
            .bind(QUEUE_LEASE)
            .fetch_all(&self.write)
            .await?;
        let mut ids: Vec<i64> = rows.iter().filter_map(|r| r.try_get("id").ok()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Gives leased entries back (a stopping node had not started them): due at `at` again.
    pub async fn release_leases(&self, ids: &[i64], at: i64) -> Result<()> {
        for &id in ids {
            sqlx::query(
                "UPDATE queue SET next_attempt_at = $1 WHERE id = $2 AND status = 'queued' AND next_attempt_at > $1",
            )
            .bind(at)
            .bind(id)
            .execute(&self.write)
            .await?;
        }
        Ok(())
    }

    /// The earliest next attempt of a queued message (for the scheduler's sleep).
    pub async fn next_due(&self) -> Result<Option<i64>> {
        Ok(
            sqlx::query("SELECT MIN(next_attempt_at) AS t FROM queue WHERE status = 'queued'")
                .fetch_one(&self.read)
                .await?
                .try_get("t")?,
        )
    }

    pub async fn queued_message(&self, id: i64) -> Result<QueuedMessage> {
        let r = sqlx::query(
            "SELECT id, blob_id, size, sender, account_id, created_at, next_attempt_at, attempts,
                    status, last_error, warned FROM queue WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.write)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("queued message {id}")))?;
        let rcpts = sqlx::query(
            "SELECT address, status, last_error, updated_at FROM queue_recipients
             WHERE queue_id = $1 ORDER BY address",
        )
        .bind(id)
        .fetch_all(&self.write)
        .await?;
        Ok(QueuedMessage {
            id: r.try_get("id")?,
            blob_id: r.try_get("blob_id")?,
            size: r.try_get("size")?,
            sender: r.try_get("sender")?,
            account_id: r.try_get("account_id")?,
            created_at: r.try_get("created_at")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            attempts: r.try_get("attempts")?,
            status: r.try_get("status")?,
            last_error: r.try_get("last_error")?,
            warned: r.try_get::<i64, _>("warned")? != 0,
            recipients: rcpts
                .iter()
                .map(|x| {
                    Ok(QueuedRecipient {
                        address: x.try_get("address")?,
                        status: x.try_get("status")?,
                        last_error: x.try_get("last_error")?,
                        updated_at: x.try_get("updated_at")?,
                    })
                })
                .collect::<std::result::Result<_, sqlx::Error>>()?,
        })
    }

    /// The message bytes of a queued message.
    pub async fn queued_body(&self, blob_id: &str) -> Result<Vec<u8>> {
        if self.blobs.is_database() {
            return Ok(self.blobs.read(blob_id).await?);
        }
        let blobs = self.blobs.clone();
        let id = blob_id.to_owned();
        Ok(tokio::task::spawn_blocking(move || blobs.get(&id))
            .await
            .map_err(|e| StoreError::Conflict(e.to_string()))??)
    }

    /// Records one recipient's outcome: delivered, failed or expired (with the reply).
    pub async fn set_recipient_status(
        &self,
        id: i64,
        address: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE queue_recipients SET status = $1, last_error = $2, updated_at = $3
             WHERE queue_id = $4 AND address = $5",
        )
        .bind(status)
        .bind(error)
        .bind(now())
        .bind(id)
        .bind(address)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Counts an attempt and sets the next one.
    pub async fn reschedule(&self, id: i64, next: i64, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE queue SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3",
        )
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn mark_warned(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE queue SET warned = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Removes a message from the queue and its blob.
    pub async fn remove_queued(&self, id: i64) -> Result<()> {
        let blob: Option<String> = sqlx::query("DELETE FROM queue WHERE id = $1 RETURNING blob_id")
            .bind(id)
            .fetch_optional(&self.write)
            .await?
            .map(|r| r.try_get("blob_id"))
            .transpose()?;
        let Some(blob) = blob else {
            return Err(StoreError::NotFound(format!("queued message {id}")));
        };
        let blobs = self.blobs.clone();
        let _ = tokio::task::spawn_blocking(move || blobs.remove(&blob)).await;
        Ok(())
    }

    /// Holds (no delivery attempts) or releases a message.
    pub async fn set_queue_held(&self, id: i64, held: bool) -> Result<()> {
        let (from, to) = if held {
            ("queued", "held")
        } else {
            ("held", "queued")
        };
        let n = sqlx::query("UPDATE queue SET status = $1 WHERE id = $2 AND status = $3")
            .bind(to)
            .bind(id)
            .bind(from)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("{from} message {id}")));
        }
        Ok(())
    }

    /// Makes a message due now.
    pub async fn retry_now(&self, id: i64) -> Result<()> {
        let n = sqlx::query("UPDATE queue SET next_attempt_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.write)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("queued message {id}")));
        }
        Ok(())
    }
}

impl crate::Store {
    /// Queued messages by status (`queued`, `held`, …), for the metrics gauge.
    pub async fn queue_counts(&self) -> crate::Result<Vec<(String, i64)>> {
        use sqlx::Row;
        let rows = sqlx::query("SELECT status, COUNT(*) FROM queue GROUP BY status")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
