//! Group commit of new messages (local deliveries, IMAP APPEND, outbound queue entries): messages
//! that arrive together share their durability work instead of paying it one by one.
//!
//! The committer takes every job waiting at that moment (at most [`MAX_BATCH`]). With `[storage]
//! batch_sync` (the default) it writes the batch's bodies without fsync on one blocking thread and
//! makes them durable with one `syncfs(2)`; without it each body was already written and fsynced
//! (file and directory) by its own caller. Then it writes the rows of the whole batch in one
//! transaction and a handful of statements (one UID reservation per mailbox, multi-row inserts);
//! if that fails (e.g. an account removed meanwhile) the batch is written again job by job, so
//! only that one fails. Only after the commit is each caller answered: a `250` still means
//! "fsynced". Batching adapts to load without a timer: a lone message is committed at once;
//! under load, the jobs that arrive while a batch is written form the next batch.

use std::sync::Arc;

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::mailbox::ChangeBus;
use crate::{Result, StoreError};

/// Deliveries written per transaction at most.
pub const MAX_BATCH: usize = 256;

pub(crate) struct Job {
    pub blob: String,
    /// The body, when the committer writes it (`[storage] batch_sync`): the bodies of a batch are
    /// written without fsync, one after the other on one blocking thread, then made durable by one
    /// `syncfs`. `None`: the blob is already written and fsynced.
    pub body: Option<Vec<Vec<u8>>>,
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
    /// IMAP STORE: flags of messages of one mailbox changed (no body).
    Flags {
        account: i64,
        mailbox: i64,
        uids: Vec<u32>,
        op: crate::mailbox::FlagOp,
        flags: Vec<String>,
        /// CONDSTORE (RFC 7162 3.1.3): messages changed after this MODSEQ are left alone.
        unchanged_since: Option<u64>,
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
    /// What the STORE did (see [`crate::mailbox::Flagged`]).
    Flagged(crate::mailbox::Flagged),
}

impl Done {
    /// Whether sessions have something to learn (a STORE that changed no flag has not).
    fn changed(&self) -> bool {
        match self {
            Done::Flagged(f) => f.messages.iter().any(|m| m.changed),
            _ => true,
        }
    }
}

impl Job {
    /// The accounts whose sessions learn of the new message once it is committed.
    fn notified(&self) -> &[i64] {
        match &self.kind {
            Kind::Deliver { accounts, .. } => accounts,
            Kind::Append { account, .. } => std::slice::from_ref(account),
            Kind::Flags { account, .. } => std::slice::from_ref(account),
            Kind::Enqueue { .. } => &[],
        }
    }
}

/// Starts the committer on `write` (the store's single writing connection).
pub(crate) fn start(
    write: AnyPool,
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
            // the bodies first: written on one blocking thread, then one syncfs for all (in the
            // database, they are rows of the batch's transaction instead)
            let bodies: Vec<(usize, String, Vec<Vec<u8>>)> = if blobs.is_database() {
                Vec::new()
            } else {
                batch
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, j)| j.body.take().map(|b| (i, j.blob.clone(), b)))
                    .collect()
            };
            let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
            if !bodies.is_empty() {
                let b = blobs.clone();
                let with_body: Vec<usize> = bodies.iter().map(|(i, _, _)| *i).collect();
                let written = tokio::task::spawn_blocking(move || write_bodies(&b, bodies))
                    .await
                    .unwrap_or_else(|e| {
                        // the blocking task itself failed: no body of the batch is known durable
                        let e = std::io::Error::other(e.to_string());
                        with_body
                            .iter()
                            .map(|&i| (i, Err(std::io::Error::new(e.kind(), e.to_string()))))
                            .collect()
                    });
                for (i, res) in written {
                    if let Err(e) = res {
                        failed[i] = Some(io_error(&e));
                    }
                }
            }
            let ok: Vec<usize> = (0..batch.len()).filter(|&i| failed[i].is_none()).collect();
            let committed = if ok.is_empty() {
                Vec::new()
            } else {
                let jobs: Vec<&Job> = ok.iter().map(|&i| &batch[i]).collect();
                commit(&write, &jobs).await
            };
            let mut committed = committed.into_iter();
            let results: Vec<Result<Done>> = failed
                .into_iter()
                .map(|f| match f {
                    Some(e) => Err(e),
                    None => committed.next().expect("one result per committed job"),
                })
                .collect();
            for (job, res) in batch.drain(..).zip(results) {
                if res.as_ref().is_ok_and(Done::changed) {
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

/// One transaction for the batch; one result per job. The fast path ([`write_batch`]) writes the
/// whole batch in a handful of statements (every statement is a round trip to SQLite's connection
/// thread); if anything fails, the transaction is rolled back and each job is written in a
/// transaction of its own (the same [`write_batch`] on one job), so that only the failing one fails.
async fn commit(write: &AnyPool, jobs: &[&Job]) -> Vec<Result<Done>> {
    let all = async {
        let mut tx = write.begin().await?;
        insert_bodies(&mut tx, jobs).await?;
        let done = write_batch(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(done)
    }
    .await;
    match all {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) if e.is_storage_full() || jobs.len() == 1 => {
            jobs.iter().map(|_| Err(shared(&e))).collect()
        }
        Err(_) => {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let one = async {
                    let mut tx = write.begin().await?;
                    insert_bodies(&mut tx, &[*job]).await?;
                    let done = write_batch(&mut tx, &[*job]).await?.remove(0);
                    tx.commit().await?;
                    Ok::<_, StoreError>(done)
                }
                .await;
                out.push(one);
            }
            out
        }
    }
}

/// The bodies the jobs still carry (bodies kept in the database: files were written before),
/// as rows of the batch's transaction: a body is committed exactly when its message is.
async fn insert_bodies(tx: &mut sqlx::Transaction<'_, sqlx::Any>, jobs: &[&Job]) -> Result<()> {
    for job in jobs {
        if let Some(parts) = &job.body {
            sqlx::query("INSERT INTO bodies (id, data, created_at) VALUES ($1, $2, $3)")
                .bind(&job.blob)
                .bind(parts.concat())
                .bind(crate::now())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// The mailbox a message goes to, before its id is known.
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
enum Target<'a> {
    /// The INBOX (or, with a quarantine name, the junk mailbox) of an account.
    Inbox(i64, Option<&'a str>),
    /// A mailbox by id, of this account.
    Mailbox(i64, i64),
}

/// The rows of one message in the batch: its job, and where it goes.
struct Slot<'a> {
    job: usize,
    target: Target<'a>,
    uid: i64,
    modseq: i64,
    mailbox: i64,
    uidvalidity: i64,
}

/// The whole batch in few statements: one `UPDATE mailboxes` per mailbox that receives messages
/// (reserving that many UIDs and MODSEQs at once), multi-row `INSERT INTO messages`, and the queue
/// entries. Messages of one mailbox get consecutive UIDs in the order they arrived. Any failure
/// (a missing account or mailbox) fails the whole batch, which [`commit`] then redoes job by job.
async fn write_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    jobs: &[&Job],
) -> Result<Vec<Done>> {
    let mut slots: Vec<Slot> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let targets: Vec<Target> = match &job.kind {
            Kind::Deliver {
                accounts,
                quarantine,
            } => accounts
                .iter()
                .map(|&a| Target::Inbox(a, quarantine.as_deref()))
                .collect(),
            Kind::Append {
                account, mailbox, ..
            } => vec![Target::Mailbox(*account, *mailbox)],
            Kind::Enqueue { .. } | Kind::Flags { .. } => Vec::new(),
        };
        slots.extend(targets.into_iter().map(|target| Slot {
            job: i,
            target,
            uid: 0,
            modseq: 0,
            mailbox: 0,
            uidvalidity: 0,
        }));
    }
    // reserve UIDs per mailbox, in the order the mailboxes first appear
    let mut order: Vec<Target> = Vec::new();
    let mut counts: std::collections::HashMap<Target, i64> = std::collections::HashMap::new();
    for s in &slots {
        let n = counts.entry(s.target).or_insert(0);
        if *n == 0 {
            order.push(s.target);
        }
        *n += 1;
    }
    let mut next: std::collections::HashMap<Target, (i64, i64, i64, i64)> =
        std::collections::HashMap::new();
    for t in order {
        let k = counts[&t];
        // one statement for both kinds of target: ?4 names the mailbox, or (NULL) the INBOX or
        // junk mailbox of account ?1 is looked up
        let (account, quarantine, mailbox) = match t {
            Target::Inbox(account, quarantine) => (account, quarantine, None),
            Target::Mailbox(account, mailbox) => (account, None, Some(mailbox)),
        };
        let row = sqlx::query(
            "UPDATE mailboxes SET uidnext = uidnext + $3, highest_modseq = highest_modseq + $3
             WHERE account_id = $1 AND id = COALESCE($4,
                 (SELECT id FROM mailboxes WHERE account_id = $1 AND
                  (name = 'INBOX' OR ($2 IS NOT NULL AND (special_use = '\\Junk' OR name = $2)))
                  ORDER BY CASE WHEN name = 'INBOX' THEN 2 WHEN special_use = '\\Junk' THEN 0 ELSE 1 END
                  LIMIT 1))
             RETURNING id, uidvalidity, uidnext - $3 AS uid, highest_modseq - $3 + 1 AS modseq",
        )
        .bind(account)
        .bind(quarantine)
        .bind(k)
        .bind(mailbox)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| match mailbox {
            Some(m) => StoreError::NotFound(format!("mailbox #{m}")),
            None => StoreError::NotFound(format!("INBOX of account #{account}")),
        })?;
        next.insert(
            t,
            (
                row.try_get("id")?,
                row.try_get("uidvalidity")?,
                row.try_get("uid")?,
                row.try_get("modseq")?,
            ),
        );
    }
    for s in &mut slots {
        let n = next.get_mut(&s.target).expect("every target reserved");
        (s.mailbox, s.uidvalidity, s.uid, s.modseq) = *n;
        n.2 += 1;
        n.3 += 1;
    }
    // the message rows, in chunks of power-of-two sizes (few distinct prepared statements)
    let mut rest: &[Slot] = &slots;
    while !rest.is_empty() {
        let n = chunk_len(rest.len());
        let (chunk, tail) = rest.split_at(n);
        let mut q = sqlx::query(insert_sql(n));
        for s in chunk {
            let job = &jobs[s.job];
            let flags = match &job.kind {
                Kind::Append { flags, .. } => flags.as_str(),
                _ => "",
            };
            q = q
                .bind(s.mailbox)
                .bind(s.uid)
                .bind(&job.blob)
                .bind(job.size)
                .bind(job.internal_date)
                .bind(flags)
                .bind(s.modseq);
        }
        q.execute(&mut **tx).await?;
        rest = tail;
    }
    let mut done = Vec::with_capacity(jobs.len());
    let mut at = 0;
    for (i, job) in jobs.iter().enumerate() {
        let mine_from = at;
        while at < slots.len() && slots[at].job == i {
            at += 1;
        }
        let mine = &slots[mine_from..at];
        done.push(match &job.kind {
            Kind::Deliver { .. } => Done::Delivered(mine.iter().map(|s| s.uid).collect()),
            Kind::Append { .. } => Done::Appended(mine[0].uidvalidity as u32, mine[0].uid as u32),
            Kind::Enqueue { .. } | Kind::Flags { .. } => write_other(tx, job).await?,
        });
    }
    Ok(done)
}

/// Rows per multi-row INSERT: the largest power of two up to 64 that fits.
fn chunk_len(n: usize) -> usize {
    let mut c = 64;
    while c > n {
        c /= 2;
    }
    c
}

/// `INSERT INTO messages … VALUES (…), (…)` with `n` rows of bind parameters (n a power of two up
/// to 64, built once each).
fn insert_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=6)
            .map(|p| {
                let rows = (0..1usize << p)
                    .map(|r| {
                        let k = r * 7;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                            k + 1, k + 2, k + 3, k + 4, k + 5, k + 6, k + 7
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq) VALUES {rows}")
            })
            .collect()
    });
    &all[n.trailing_zeros() as usize]
}

/// Writes the bodies of a batch (blocking), then makes them durable with one `syncfs`. One result
/// per body, by its index in the batch; if the sync fails, every body fails (and is removed).
fn write_bodies(
    blobs: &crate::blob::BlobStore,
    bodies: Vec<(usize, String, Vec<Vec<u8>>)>,
) -> Vec<(usize, std::io::Result<()>)> {
    let mut out: Vec<(usize, std::io::Result<()>)> = Vec::with_capacity(bodies.len());
    let mut written = Vec::with_capacity(bodies.len());
    for (i, id, parts) in bodies {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let res = blobs.put_unsynced(&id, &refs);
        if res.is_ok() {
            written.push((i, id));
        }
        out.push((i, res));
    }
    if written.is_empty() {
        return out;
    }
    if let Err(e) = blobs.sync_filesystem() {
        tracing::error!(error = %e, "syncing the message bodies failed");
        for (i, id) in written {
            let _ = blobs.remove(&id);
            if let Some(o) = out.iter_mut().find(|(k, _)| *k == i) {
                // the OS error is kept (disk full stays disk full)
                o.1 = Err(match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(e.kind(), format!("syncfs: {e}")),
                });
            }
        }
    }
    out
}

/// A body that could not be written or synced, as the store error of its job (disk full is kept,
/// so that the client gets 452).
fn io_error(e: &std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(28 | 122) => StoreError::Io(std::io::Error::from_raw_os_error(28)),
        Some(code) => StoreError::Io(std::io::Error::from_raw_os_error(code)),
        None => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
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

/// A job without message rows (a STORE, a queue entry), inside the batch's transaction.
async fn write_other(tx: &mut sqlx::Transaction<'_, sqlx::Any>, job: &Job) -> Result<Done> {
    match &job.kind {
        Kind::Deliver { .. } | Kind::Append { .. } => Err(StoreError::Conflict(
            "a message job is written by write_batch".into(),
        )),
        Kind::Flags {
            mailbox,
            uids,
            op,
            flags,
            unchanged_since,
            ..
        } => store_flags(tx, *mailbox, uids, *op, flags, *unchanged_since).await,
        Kind::Enqueue {
            sender,
            account,
            recipients,
        } => {
            let id: i64 = sqlx::query(
                "INSERT INTO queue (blob_id, size, sender, account_id, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
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
                    "INSERT INTO queue_recipients (queue_id, address) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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

/// STORE inside the batch's transaction: the messages' flags are read in one statement, the
/// mailbox's MODSEQ is raised once if anything changes, and each changed message is written.
/// With `unchanged_since`, a message whose MODSEQ is above it is not touched but reported as
/// modified: the check and the write are in one transaction, so no other change slips between.
async fn store_flags(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mailbox: i64,
    uids: &[u32],
    op: crate::mailbox::FlagOp,
    flags: &[String],
    unchanged_since: Option<u64>,
) -> Result<Done> {
    use crate::mailbox::{apply_flags, join_flags, parse_flags, FlagChange, Flagged};
    let mut out = Flagged::default();
    let (Some(&lo), Some(&hi)) = (uids.iter().min(), uids.iter().max()) else {
        return Ok(Done::Flagged(out));
    };
    let rows = sqlx::query(
        "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3 ORDER BY uid",
    )
    .bind(mailbox)
    .bind(lo as i64)
    .bind(hi as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut current = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        current.insert(
            r.try_get::<i64, _>(0)? as u32,
            (r.try_get::<String, _>(1)?, r.try_get::<i64, _>(2)? as u64),
        );
    }
    out.messages.reserve(uids.len());
    let mut modseq: Option<i64> = None;
    for &uid in uids {
        let Some((now, old_modseq)) = current.get(&uid) else {
            continue;
        };
        if unchanged_since.is_some_and(|u| *old_modseq > u) {
            out.modified.push(uid);
            continue;
        }
        let now = parse_flags(now);
        let new = apply_flags(&now, op, flags);
        if new == now {
            out.messages.push(FlagChange {
                uid,
                flags: new,
                modseq: *old_modseq,
                changed: false,
            });
            continue;
        }
        let m = match modseq {
            Some(m) => m,
            None => {
                let m: i64 = sqlx::query("UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq")
                    .bind(mailbox)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
                modseq = Some(m);
                m
            }
        };
        sqlx::query(
            "UPDATE messages SET flags = $1, modseq = $2 WHERE mailbox_id = $3 AND uid = $4",
        )
        .bind(join_flags(&new))
        .bind(m)
        .bind(mailbox)
        .bind(uid as i64)
        .execute(&mut **tx)
        .await?;
        out.messages.push(FlagChange {
            uid,
            flags: new,
            modseq: m as u64,
            changed: true,
        });
    }
    Ok(Done::Flagged(out))
}
