//! Mail flow: durable local delivery and queueing (the body made durable, then the row committed,
//! both through the group committer of `commit.rs`, which IMAP APPEND and STORE use too), and the
//! start-up sweep of blobs a crash left without a row.

use sqlx::Row;

use postern_types::EmailAddress;

use crate::{now, QueueEntry, Result, Store, StoreError};

/// How long a body in the database outlives its last message (see [`Store::sweep_bodies`]).
pub const BODY_GRACE: i64 = 3600;

impl Store {
    /// The account that receives mail for `address` (an account address or an alias), if any.
    /// Disabled accounts still receive mail (disabling stops logins, not delivery).
    pub async fn resolve_recipient(&self, address: &EmailAddress) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT id FROM accounts WHERE address = $1 UNION ALL SELECT account_id FROM aliases WHERE address = $1 LIMIT 1",
        )
        .bind(address.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// The addresses an account may send as: its own and its aliases.
    pub async fn owned_addresses(&self, account_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT address FROM accounts WHERE id = $1 UNION ALL SELECT address FROM aliases WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Writes `parts` (concatenated) as one blob on a blocking thread.
    pub(crate) async fn put_blob(&self, parts: Vec<Vec<u8>>) -> Result<String> {
        let blobs = self.blobs.clone();
        let id = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            blobs.put(&refs)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        Ok(id)
    }

    /// Durably stores one message into the INBOX of each account in `accounts` and returns the UIDs.
    /// When this returns Ok the message is on disk (blob fsynced, transaction committed).
    pub async fn deliver_local(
        &self,
        message: Vec<Vec<u8>>,
        accounts: &[i64],
        internal_date: i64,
    ) -> Result<Vec<i64>> {
        self.deliver_local_to(message, accounts, internal_date, None)
            .await
    }

    /// [`Store::deliver_local`], into each account's junk mailbox when `quarantine` names one: the
    /// mailbox with the special use `\Junk`, else the one of that name, else INBOX (an account
    /// that deleted its junk mailbox still gets the message; its Authentication-Results say why).
    pub async fn deliver_local_to(
        &self,
        message: Vec<Vec<u8>>,
        accounts: &[i64],
        internal_date: i64,
        quarantine: Option<&str>,
    ) -> Result<Vec<i64>> {
        let kind = crate::commit::Kind::Deliver {
            accounts: accounts.to_vec(),
            quarantine: quarantine.map(str::to_owned),
        };
        match self.commit_with_body(message, internal_date, kind).await? {
            crate::commit::Done::Delivered(uids) => Ok(uids),
            other => Err(StoreError::Conflict(format!(
                "unexpected commit result {other:?}"
            ))),
        }
    }

    /// A job without a body through the group committer (e.g. a STORE): answered once committed.
    pub(crate) async fn commit_job(
        &self,
        kind: crate::commit::Kind,
    ) -> Result<crate::commit::Done> {
        self.send_job(String::new(), None, 0, now(), kind).await
    }

    /// Hands one job to the committer and waits for its answer.
    async fn send_job(
        &self,
        blob: String,
        body: Option<Vec<Vec<u8>>>,
        size: i64,
        internal_date: i64,
        kind: crate::commit::Kind,
    ) -> Result<crate::commit::Done> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = crate::commit::Job {
            blob,
            body,
            size,
            internal_date,
            kind,
            reply,
        };
        match self.committer().send(job).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Conflict("the committer stopped".into()))),
            Err(_) => Err(StoreError::Conflict("the committer stopped".into())),
        }
    }

    /// Writes the body as a blob, then hands its rows to the group committer (see `commit.rs`);
    /// returns once the transaction that holds them is committed, so the message is durable. With
    /// `[storage] batch_sync` the blob is written without fsync and the batch syncs the filesystem
    /// once before its commit. On failure the blob is removed.
    pub(crate) async fn commit_with_body(
        &self,
        message: Vec<Vec<u8>>,
        internal_date: i64,
        kind: crate::commit::Kind,
    ) -> Result<crate::commit::Done> {
        let size: usize = message.iter().map(Vec::len).sum();
        // with batch_sync the committer writes the body with the rest of its batch; without, it
        // is written and fsynced here, in parallel with other deliveries
        let (blob, body) = if self.batch_sync || self.blobs.is_database() {
            (crate::blob::BlobStore::new_id(), Some(message))
        } else {
            (self.put_blob(message).await?, None)
        };
        let res = self
            .send_job(blob.clone(), body, size as i64, internal_date, kind)
            .await;
        if res.is_err() {
            let _ = self.blobs.remove(&blob);
        }
        res
    }

    /// Removes blob files that no message and no queue entry points at and that were written
    /// before `before` (the start of this process): what a crash between "blob written" and
    /// "row committed" leaves behind. Returns how many were removed.
    ///
    /// Only the holder of the data directory's lock may sweep: beside another process, a blob that
    /// process wrote and fsynced but has not yet committed would look orphaned, and removing it
    /// would lose a message that is acknowledged a moment later.
    pub async fn sweep_orphan_blobs(&self, before: std::time::SystemTime) -> Result<usize> {
        if self.blobs.is_database() {
            return self.sweep_bodies().await;
        }
        if !self.holds_lock() {
            return Err(StoreError::Conflict(
                "the orphan-blob sweep needs the data directory's lock".into(),
            ));
        }
        let blobs = self.blobs.clone();
        let ids = tokio::task::spawn_blocking(move || blobs.list_before(before))
            .await
            .map_err(|e| StoreError::Conflict(e.to_string()))??;
        let mut removed = 0;
        for id in ids {
            let used = sqlx::query(
                "SELECT 1 FROM messages WHERE blob_id = $1 UNION ALL SELECT 1 FROM queue WHERE blob_id = $1 LIMIT 1",
            )
            .bind(&id)
            .fetch_optional(&self.write)
            .await?
            .is_some();
            if !used {
                self.blobs.remove(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bodies in the database that nothing uses: those marked unused (by an expunge, a delivered
    /// queue entry) more than [`BODY_GRACE`] ago, so that a session on another node that still
    /// shows the message can read it meanwhile, and unmarked ones older than a day (a mark that
    /// failed). A body a message or queue entry uses again is kept.
    pub async fn sweep_bodies(&self) -> Result<usize> {
        let now = now();
        let n = sqlx::query(
            "DELETE FROM bodies WHERE (orphaned_at < $1 OR (orphaned_at IS NULL AND created_at < $2))
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob_id = bodies.id)
               AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.blob_id = bodies.id)",
        )
        .bind(now - BODY_GRACE)
        .bind(now - 86400)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n as usize)
    }

    /// Durably queues one message for remote delivery. Returns the queue id.
    pub async fn enqueue(
        &self,
        message: Vec<Vec<u8>>,
        sender: &str,
        account_id: Option<i64>,
        recipients: &[String],
    ) -> Result<i64> {
        let kind = crate::commit::Kind::Enqueue {
            sender: sender.to_owned(),
            account: account_id,
            recipients: recipients.to_vec(),
        };
        match self.commit_with_body(message, now(), kind).await? {
            crate::commit::Done::Queued(id) => Ok(id),
            other => Err(StoreError::Conflict(format!(
                "unexpected commit result {other:?}"
            ))),
        }
    }

    pub async fn queue_list(&self) -> Result<Vec<QueueEntry>> {
        let rows = sqlx::query(
            "SELECT q.id, q.sender, q.size, q.created_at, q.status, q.attempts,
                    (SELECT string_agg(address, ' ') FROM queue_recipients r WHERE r.queue_id = q.id) AS rcpts
             FROM queue q ORDER BY q.id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let rcpts: Option<String> = r.try_get("rcpts")?;
                Ok(QueueEntry {
                    id: r.try_get("id")?,
                    sender: r.try_get("sender")?,
                    recipients: rcpts
                        .unwrap_or_default()
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    size: r.try_get("size")?,
                    created_at: r.try_get("created_at")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }
}
