//! Group commit of local deliveries: messages that arrive together share one SQLite transaction
//! (one WAL fsync) instead of one each.
//!
//! Each delivery writes its own blob first (in parallel, on blocking threads) and hands its rows
//! to the committer. With `[storage] batch_sync` (the default) the blob is written without an
//! fsync and the committer makes the whole batch's bodies durable with one `syncfs(2)` before the
//! transaction; without it each blob is fsynced (file and directory) by its own delivery. The committer takes every delivery waiting at that
//! moment (at most [`MAX_BATCH`]), writes them in one transaction (if one fails, e.g. an account
//! removed meanwhile, the batch is written again job by job, so only that one fails), commits,
//! and only then answers each: a `250` still means "fsynced". Batching adapts to load without a timer: a
//! lone message is committed at once; under load, the deliveries that arrive while a commit runs
//! form the next batch.

use std::sync::Arc;

use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::mailbox::ChangeBus;
use crate::{Result, StoreError};

/// Deliveries written per transaction at most.
pub const MAX_BATCH: usize = 256;

pub(crate) struct Job {
    pub blob: String,
    /// The blob was written without fsync: the batch syncs the filesystem before its commit.
    pub unsynced: bool,
    pub size: i64,
    pub internal_date: i64,
    pub kind: Kind,
    pub reply: oneshot::Sender<Result<Done>>,
}

/// What a job writes.
pub(crate) enum Kind {
    /// A local delivery into the INBOX (or the junk mailbox) of each account.
    Deliver {
        accounts: Vec<i64>,
        quarantine: Option<String>,
    },
    /// IMAP APPEND into one mailbox of one account.
    Append {
        account: i64,
        mailbox: i64,
        flags: String,
    },
    /// An entry of the outbound queue.
    Enqueue {
        sender: String,
        account: Option<i64>,
        recipients: Vec<String>,
    },
}

/// What a committed job produced.
#[derive(Debug)]
pub(crate) enum Done {
    /// The UID in each account's mailbox, in the order of `accounts`.
    Delivered(Vec<i64>),
    /// (UIDVALIDITY, UID) of the appended message.
    Appended(u32, u32),
    /// The queue id.
    Queued(i64),
}

impl Job {
    /// The accounts whose sessions learn of the new message once it is committed.
    fn notified(&self) -> &[i64] {
        match &self.kind {
            Kind::Deliver { accounts, .. } => accounts,
            Kind::Append { account, .. } => std::slice::from_ref(account),
            Kind::Enqueue { .. } => &[],
        }
    }
}

/// Starts the committer on `write` (the store's single writing connection).
pub(crate) fn start(
    write: SqlitePool,
    changes: Arc<ChangeBus>,
    blobs: crate::blob::BlobStore,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            // the bodies first: one syncfs for every unsynced blob of the batch
            let synced = if batch.iter().any(|j| j.unsynced) {
                let b = blobs.clone();
                tokio::task::spawn_blocking(move || b.sync_filesystem())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            } else {
                Ok(())
            };
            let results = match synced {
                Ok(()) => commit(&write, &batch).await,
                Err(e) => {
                    tracing::error!(error = %e, "syncing the message bodies failed");
                    let full = matches!(e.raw_os_error(), Some(28 | 122));
                    batch
                        .iter()
                        .map(|_| {
                            Err(if full {
                                StoreError::Io(std::io::Error::from_raw_os_error(28))
                            } else {
                                StoreError::Io(std::io::Error::other(format!("syncfs: {e}")))
                            })
                        })
                        .collect()
                }
            };
            for (job, res) in batch.drain(..).zip(results) {
                if res.is_ok() {
                    for &a in job.notified() {
                        changes.notify(a);
                    }
                }
                let _ = job.reply.send(res);
            }
        }
    });
    tx
}

/// One transaction for the batch; one result per job. The fast path writes every job in one
/// transaction without savepoints (two statements per recipient: every statement is a round trip
/// to SQLite's connection thread); if one job fails, the transaction is rolled back and each job
/// is written in a transaction of its own, so that only the failing one fails.
async fn commit(write: &SqlitePool, jobs: &[Job]) -> Vec<Result<Done>> {
    let all = async {
        let mut tx = write.begin().await?;
        let mut uids = Vec::with_capacity(jobs.len());
        for job in jobs {
            uids.push(insert(&mut tx, job).await?);
        }
        tx.commit().await?;
        Ok::<_, StoreError>(uids)
    }
    .await;
    match all {
        Ok(uids) => uids.into_iter().map(Ok).collect(),
        Err(e) if e.is_storage_full() || jobs.len() == 1 => {
            jobs.iter().map(|_| Err(shared(&e))).collect()
        }
        Err(_) => {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let one = async {
                    let mut tx = write.begin().await?;
                    let uids = insert(&mut tx, job).await?;
                    tx.commit().await?;
                    Ok::<_, StoreError>(uids)
                }
                .await;
                out.push(one);
            }
            out
        }
    }
}

/// The error of a whole batch, for each of its jobs.
fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(what) => StoreError::NotFound(what.clone()),
        e if e.is_storage_full() => StoreError::Io(std::io::Error::from_raw_os_error(28)),
        e => StoreError::Conflict(format!("the delivery could not be committed: {e}")),
    }
}

async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, job: &Job) -> Result<Done> {
    match &job.kind {
        Kind::Deliver {
            accounts,
            quarantine,
        } => {
            let mut uids = Vec::with_capacity(accounts.len());
            for &account in accounts {
                let row = sqlx::query(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1
                     WHERE id = (SELECT id FROM mailboxes WHERE account_id = ?1 AND
                                 (name = 'INBOX' OR (?2 IS NOT NULL AND (special_use = '\\Junk' OR name = ?2)))
                                 ORDER BY CASE WHEN name = 'INBOX' THEN 2 WHEN special_use = '\\Junk' THEN 0 ELSE 1 END
                                 LIMIT 1)
                     RETURNING id, uidnext - 1 AS uid, highest_modseq",
                )
                .bind(account)
                .bind(quarantine.as_deref())
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("INBOX of account #{account}")))?;
                let (mailbox, uid, modseq): (i64, i64, i64) = (
                    row.try_get("id")?,
                    row.try_get("uid")?,
                    row.try_get("highest_modseq")?,
                );
                insert_message(tx, job, mailbox, uid, modseq, "").await?;
                uids.push(uid);
            }
            Ok(Done::Delivered(uids))
        }
        Kind::Append {
            account,
            mailbox,
            flags,
        } => {
            let row = sqlx::query(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1
                 WHERE id = ? AND account_id = ? RETURNING uidvalidity, uidnext - 1 AS uid, highest_modseq",
            )
            .bind(mailbox)
            .bind(account)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("mailbox #{mailbox}")))?;
            let (uidvalidity, uid, modseq): (i64, i64, i64) = (
                row.try_get("uidvalidity")?,
                row.try_get("uid")?,
                row.try_get("highest_modseq")?,
            );
            insert_message(tx, job, *mailbox, uid, modseq, flags).await?;
            Ok(Done::Appended(uidvalidity as u32, uid as u32))
        }
        Kind::Enqueue {
            sender,
            account,
            recipients,
        } => {
            let id: i64 = sqlx::query(
                "INSERT INTO queue (blob_id, size, sender, account_id, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&job.blob)
            .bind(job.size)
            .bind(sender)
            .bind(account)
            .bind(job.internal_date)
            .bind(job.internal_date)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            for r in recipients {
                sqlx::query(
                    "INSERT OR IGNORE INTO queue_recipients (queue_id, address) VALUES (?, ?)",
                )
                .bind(id)
                .bind(r)
                .execute(&mut **tx)
                .await?;
            }
            Ok(Done::Queued(id))
        }
    }
}

async fn insert_message(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: &Job,
    mailbox: i64,
    uid: i64,
    modseq: i64,
    flags: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(mailbox)
        .bind(uid)
        .bind(&job.blob)
        .bind(job.size)
        .bind(job.internal_date)
        .bind(flags)
        .bind(modseq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
