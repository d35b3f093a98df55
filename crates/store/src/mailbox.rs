//! Mailbox operations for IMAP and POP3: listing, create/delete/rename, append, flags, expunge,
//! copy/move, and change polling. Knows no protocol: names, UIDs, flags and byte counts only.
//!
//! Invariants (RFC 3501 2.3.1.1): within a mailbox, UIDs are handed out from `uidnext` inside the
//! same write transaction that inserts the row, so they are strictly ascending and never reused
//! while `uidvalidity` stays the same. Every change to a mailbox's messages (new message, flag
//! change, expunge) bumps its `highest_modseq`, which is what sessions poll to notice changes made
//! by other sessions and by SMTP delivery.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::Row;
use tokio::sync::watch;

use crate::{now, Result, Store, StoreError};

/// Hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: i64,
    pub name: String,
    pub special_use: Option<String>,
    pub subscribed: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
}

/// What a session needs to know about one message without reading its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    pub size: u64,
    pub internal_date: i64,
    pub blob_id: String,
}

impl MessageMeta {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// The counters of a mailbox that SELECT reports beside its message list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxState {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: u64,
}

/// Counters for STATUS and cheap change polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxCounts {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    pub size: u64,
    pub uidnext: u32,
    pub uidvalidity: u32,
    pub highest_modseq: u64,
}

/// What QRESYNC learns of expunges since a MODSEQ (see [`Store::vanished_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vanished {
    pub uids: Vec<u32>,
    pub complete: bool,
}

/// One message a STORE reached: its flags and MODSEQ now, and whether this STORE changed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    pub changed: bool,
}

/// What a STORE did: the messages that still exist and were not held back, and (CONDSTORE
/// UNCHANGEDSINCE) the UIDs left alone because they changed after the client's MODSEQ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flagged {
    pub messages: Vec<FlagChange>,
    pub modified: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    Replace,
}

/// Per-account change signals: a session in IDLE waits on its account's channel instead of
/// polling the database in a loop. Nodes of a cluster pass them on through Redis (`[cluster]
/// redis`, see `postern::cluster`), so a delivery on one node wakes IDLE on another.
#[derive(Default)]
pub struct ChangeBus {
    accounts: Mutex<HashMap<i64, watch::Sender<u64>>>,
    /// Where changes are also announced to other nodes on the same database (`[cluster]
    /// redis`), when set.
    relay: std::sync::OnceLock<Box<dyn Fn(i64) + Send + Sync>>,
}

impl ChangeBus {
    /// Announces every change made here to other nodes too (called once, by the cluster).
    pub fn relay_to(&self, f: Box<dyn Fn(i64) + Send + Sync>) {
        let _ = self.relay.set(f);
    }

    /// A change another node made: wakes this node's sessions of the account only.
    pub fn notify_local(&self, account_id: i64) {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&account_id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn subscribe(&self, account_id: i64) -> watch::Receiver<u64> {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(account_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A change made on this node: wakes its sessions of the account, and other nodes'.
    pub fn notify(&self, account_id: i64) {
        self.notify_local(account_id);
        if let Some(relay) = self.relay.get() {
            relay(account_id);
        }
    }
}

pub(crate) fn parse_flags(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn join_flags(flags: &[String]) -> String {
    flags.join(" ")
}

pub(crate) fn apply_flags(current: &[String], op: FlagOp, flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = match op {
        FlagOp::Replace => Vec::new(),
        _ => current.to_vec(),
    };
    match op {
        FlagOp::Add | FlagOp::Replace => {
            for f in flags {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
                    out.push(f.clone());
                }
            }
        }
        FlagOp::Remove => out.retain(|o| !flags.iter().any(|f| f.eq_ignore_ascii_case(o))),
    }
    out
}

fn mailbox_from_row(r: &sqlx::any::AnyRow) -> Result<Mailbox> {
    Ok(Mailbox {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        special_use: r.try_get("special_use")?,
        subscribed: r.try_get::<i64, _>("subscribed")? != 0,
        uidvalidity: r.try_get::<i64, _>("uidvalidity")? as u32,
        uidnext: r.try_get::<i64, _>("uidnext")? as u32,
        highest_modseq: r.try_get::<i64, _>("highest_modseq")? as u64,
    })
}

fn meta_from_row(r: &sqlx::any::AnyRow) -> Result<MessageMeta> {
    Ok(MessageMeta {
        uid: r.try_get::<i64, _>("uid")? as u32,
        flags: parse_flags(&r.try_get::<String, _>("flags")?),
        modseq: r.try_get::<i64, _>("modseq")? as u64,
        size: r.try_get::<i64, _>("size")? as u64,
        internal_date: r.try_get("internal_date")?,
        blob_id: r.try_get("blob_id")?,
    })
}

/// A fresh UIDVALIDITY: seconds since the epoch, so a mailbox deleted and created again in a later
/// second gets a larger value. Kept in u32 range.
fn new_uidvalidity() -> i64 {
    (now() & 0x7fff_ffff).max(1)
}

/// The UIDVALIDITY of a new mailbox of account ?1, given ?3 = [`new_uidvalidity`]: larger than
/// that of every mailbox the account has (a renamed one keeps its own) or deleted, so that a name
/// used again never gets a UIDVALIDITY it had before, even within the same second.
macro_rules! uidvalidity_sql {
    () => {
        "(SELECT MAX(v) FROM (SELECT $3 AS v
             UNION ALL SELECT uidvalidity_floor + 1 FROM accounts WHERE id = $1
             UNION ALL SELECT MAX(uidvalidity) + 1 FROM mailboxes WHERE account_id = $1) AS candidates)"
    };
}

// Column lists as macros so that queries stay `&'static str` (sqlx refuses built strings).
macro_rules! mailbox_cols {
    () => {
        "id, name, special_use, subscribed, uidvalidity, uidnext, highest_modseq"
    };
}
macro_rules! meta_cols {
    () => {
        "uid, flags, modseq, size, internal_date, blob_id"
    };
}

impl Store {
    pub fn changes(&self) -> &ChangeBus {
        &self.changes
    }

    pub async fn list_mailboxes(&self, account_id: i64) -> Result<Vec<Mailbox>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            mailbox_cols!(),
            " FROM mailboxes WHERE account_id = $1 ORDER BY name = 'INBOX' DESC, name"
        ))
        .bind(account_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(mailbox_from_row).collect()
    }

    pub async fn get_mailbox(&self, account_id: i64, name: &str) -> Result<Option<Mailbox>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            mailbox_cols!(),
            " FROM mailboxes WHERE account_id = $1 AND name = $2"
        ))
        .bind(account_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(mailbox_from_row).transpose()
    }

    pub async fn create_mailbox(&self, account_id: i64, name: &str) -> Result<()> {
        let res = sqlx::query(concat!(
            "INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES ($1, $2, ",
            uidvalidity_sql!(),
            ")"
        ))
        .bind(account_id)
        .bind(name)
        .bind(new_uidvalidity())
        .execute(&self.write)
        .await;
        crate::inserted(res, format!("mailbox {name}"))
    }

    /// Deletes a mailbox and its messages (blobs no longer referenced are removed).
    pub async fn delete_mailbox(&self, account_id: i64, name: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let id: i64 = sqlx::query("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {name}")))?
            .try_get(0)?;
        let blobs: Vec<String> =
            sqlx::query("SELECT DISTINCT blob_id FROM messages WHERE mailbox_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
        sqlx::query("DELETE FROM messages WHERE mailbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM vanished WHERE mailbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // the name may come back: its next UIDVALIDITY must be larger than this one's
        sqlx::query(
            "UPDATE accounts SET uidvalidity_floor = (SELECT MAX(v) FROM (SELECT uidvalidity_floor AS v
                 UNION ALL SELECT uidvalidity FROM mailboxes WHERE id = $1) AS candidates) WHERE id = $2",
        )
        .bind(id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM mailboxes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let orphans = orphaned_blobs(&mut tx, blobs).await?;
        tx.commit().await?;
        self.remove_blobs(&orphans);
        self.changes.notify(account_id);
        Ok(())
    }

    /// Renames a mailbox and its children (`from/...` become `to/...`). Renaming INBOX moves its
    /// messages into a new mailbox and leaves INBOX empty (RFC 3501 6.3.5).
    pub async fn rename_mailbox(&self, account_id: i64, from: &str, to: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let exists = |name: String| {
            sqlx::query("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
        };
        let src: i64 = exists(from.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {from}")))?
            .try_get(0)?;
        if exists(to.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Exists(format!("mailbox {to}")));
        }
        if from == "INBOX" {
            let row = sqlx::query(concat!(
                "INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES ($1, $2, ",
                uidvalidity_sql!(),
                ") RETURNING id"
            ))
            .bind(account_id)
            .bind(to)
            .bind(new_uidvalidity())
            .fetch_one(&mut *tx)
            .await?;
            let dst: i64 = row.try_get(0)?;
            // Renumber from 1 in the new mailbox, keeping order.
            let uids: Vec<i64> =
                sqlx::query("SELECT uid FROM messages WHERE mailbox_id = $1 ORDER BY uid")
                    .bind(src)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
            for (i, uid) in uids.iter().enumerate() {
                sqlx::query(
                    "UPDATE messages SET mailbox_id = $1, uid = $2 WHERE mailbox_id = $3 AND uid = $4",
                )
                .bind(dst)
                .bind(i as i64 + 1)
                .bind(src)
                .bind(uid)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE mailboxes SET uidnext = $1 WHERE id = $2")
                .bind(uids.len() as i64 + 1)
                .bind(dst)
                .execute(&mut *tx)
                .await?;
            // INBOX stays, emptied: its messages vanished from it
            let moved: Vec<u32> = uids.iter().map(|&u| u as u32).collect();
            if moved.is_empty() {
                sqlx::query(
                    "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1",
                )
                .bind(src)
                .execute(&mut *tx)
                .await?;
            }
            record_vanished(&mut tx, src, &moved).await?;
        } else {
            let children = sqlx::query("SELECT id, name FROM mailboxes WHERE account_id = $1 AND (name = $2 OR substr(name, 1, CAST($3 AS INTEGER)) = $4)")
                .bind(account_id)
                .bind(from)
                .bind(from.len() as i64 + 1)
                .bind(format!("{from}{DELIMITER}"))
                .fetch_all(&mut *tx)
                .await?;
            for c in &children {
                let id: i64 = c.try_get("id")?;
                let name: String = c.try_get("name")?;
                let new = format!("{to}{}", &name[from.len()..]);
                if exists(new.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some()
                    && name != from
                {
                    return Err(StoreError::Exists(format!("mailbox {new}")));
                }
                sqlx::query("UPDATE mailboxes SET name = $1 WHERE id = $2")
                    .bind(new)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.changes.notify(account_id);
        Ok(())
    }

    pub async fn set_subscribed(&self, account_id: i64, name: &str, on: bool) -> Result<()> {
        let n =
            sqlx::query("UPDATE mailboxes SET subscribed = $1 WHERE account_id = $2 AND name = $3")
                .bind(on as i64)
                .bind(account_id)
                .bind(name)
                .execute(&self.write)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("mailbox {name}")));
        }
        Ok(())
    }

    pub async fn mailbox_counts(&self, mailbox_id: i64) -> Result<MailboxCounts> {
        let r = sqlx::query(
            "SELECT b.uidnext, b.uidvalidity, b.highest_modseq, COUNT(m.id) AS n,
                    CAST(COALESCE(SUM(m.size), 0) AS BIGINT) AS bytes,
                    CAST(COALESCE(SUM(CASE WHEN m.id IS NULL OR (' ' || m.flags || ' ') LIKE '% \\Seen %' ESCAPE '!' THEN 0 ELSE 1 END), 0) AS BIGINT) AS unseen,
                    CAST(COALESCE(SUM(CASE WHEN (' ' || m.flags || ' ') LIKE '% \\Deleted %' ESCAPE '!' THEN 1 ELSE 0 END), 0) AS BIGINT) AS deleted
             FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.id = $1 GROUP BY b.id",
        )
        .bind(mailbox_id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("mailbox #{mailbox_id}")))?;
        Ok(MailboxCounts {
            messages: r.try_get::<i64, _>("n")? as u32,
            unseen: r.try_get::<i64, _>("unseen")? as u32,
            deleted: r.try_get::<i64, _>("deleted")? as u32,
            size: r.try_get::<i64, _>("bytes")? as u64,
            uidnext: r.try_get::<i64, _>("uidnext")? as u32,
            uidvalidity: r.try_get::<i64, _>("uidvalidity")? as u32,
            highest_modseq: r.try_get::<i64, _>("highest_modseq")? as u64,
        })
    }

    /// \Recent (RFC 3501 2.3.2) for a read-write session that now knows the mailbox up to
    /// `up_to` (a UID): the messages above the mailbox's mark become this session's recent
    /// ones, and no other session's. Returns the mark before (UIDs above it, up to `up_to`,
    /// are recent for the caller).
    pub async fn claim_recent(&self, mailbox_id: i64, up_to: u32) -> Result<u32> {
        // Most SELECTs find nothing new to claim: a read, no write transaction.
        let mark = self.recent_mark(mailbox_id).await?;
        if mark >= up_to {
            return Ok(mark);
        }
        let mut tx = self.write.begin().await?;
        let before: i64 = sqlx::query("SELECT recent_uid FROM mailboxes WHERE id = $1")
            .bind(mailbox_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0))
            .unwrap_or(i64::from(up_to));
        if before < i64::from(up_to) {
            sqlx::query("UPDATE mailboxes SET recent_uid = $1 WHERE id = $2")
                .bind(i64::from(up_to))
                .bind(mailbox_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(before.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// How many messages no read-write session has been told about yet (STATUS RECENT).
    pub async fn count_recent(&self, mailbox_id: i64) -> Result<u32> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
             WHERE b.id = $1 AND m.uid > b.recent_uid",
        )
        .bind(mailbox_id)
        .fetch_one(&self.read)
        .await?
        .get::<i64, _>(0)
        .clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// The mailbox's \Recent mark (read-only sessions and STATUS look without claiming).
    pub async fn recent_mark(&self, mailbox_id: i64) -> Result<u32> {
        Ok(
            sqlx::query("SELECT recent_uid FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(&self.read)
                .await?
                .map_or(0, |r| {
                    r.get::<i64, _>(0).clamp(0, i64::from(u32::MAX)) as u32
                }),
        )
    }

    /// The mailbox's current HIGHESTMODSEQ (one indexed row: the cheap "anything new?" poll).
    /// None if the mailbox is gone.
    pub async fn mailbox_modseq(&self, mailbox_id: i64) -> Result<Option<u64>> {
        Ok(
            sqlx::query("SELECT highest_modseq FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(&self.read)
                .await?
                .map(|r| r.try_get::<i64, _>(0))
                .transpose()?
                .map(|v| v as u64),
        )
    }

    /// Every message of a mailbox in UID order.
    pub async fn message_list(&self, mailbox_id: i64) -> Result<Vec<MessageMeta>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            meta_cols!(),
            " FROM messages WHERE mailbox_id = $1 ORDER BY uid"
        ))
        .bind(mailbox_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(meta_from_row).collect()
    }

    /// The message list of a mailbox with its UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, read in one
    /// statement (one snapshot: the counters match the list, and one round trip for SELECT).
    /// `NotFound` if the mailbox is gone.
    pub async fn mailbox_snapshot(
        &self,
        mailbox_id: i64,
    ) -> Result<(Vec<MessageMeta>, MailboxState)> {
        let rows = sqlx::query(
            "SELECT b.uidvalidity AS b_validity, b.uidnext AS b_next, b.highest_modseq AS b_modseq,
                    m.uid, m.flags, m.modseq, m.size, m.internal_date, m.blob_id
             FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id
             WHERE b.id = $1 ORDER BY m.uid",
        )
        .bind(mailbox_id)
        .fetch_all(&self.read)
        .await?;
        let first = rows
            .first()
            .ok_or_else(|| StoreError::NotFound(format!("mailbox #{mailbox_id}")))?;
        let state = MailboxState {
            uidvalidity: first.try_get::<i64, _>("b_validity")? as u32,
            uidnext: first.try_get::<i64, _>("b_next")? as u32,
            highest_modseq: first.try_get::<i64, _>("b_modseq")? as u64,
        };
        let mut msgs = Vec::with_capacity(rows.len());
        for r in &rows {
            // an empty mailbox is one row without a message
            if r.try_get::<Option<i64>, _>("uid")?.is_some() {
                msgs.push(meta_from_row(r)?);
            }
        }
        Ok((msgs, state))
    }

    /// Appends a message to a mailbox; returns (UIDVALIDITY, UID). Durable when it returns.
    pub async fn append(
        &self,
        account_id: i64,
        mailbox_id: i64,
        message: &[u8],
        flags: &[String],
        internal_date: i64,
    ) -> Result<(u32, u32)> {
        let kind = crate::commit::Kind::Append {
            account: account_id,
            mailbox: mailbox_id,
            flags: join_flags(flags),
        };
        match self
            .commit_with_body(vec![message.to_vec()], internal_date, kind)
            .await?
        {
            crate::commit::Done::Appended(validity, uid) => Ok((validity, uid)),
            other => Err(StoreError::Conflict(format!(
                "unexpected commit result {other:?}"
            ))),
        }
    }

    /// Changes flags of the given UIDs; returns the flags and MODSEQ of each message that still
    /// exists, and with `unchanged_since` (CONDSTORE) those it held back. Goes through the group
    /// committer (see `commit.rs`): STOREs of many sessions, appends and deliveries that arrive
    /// together share one transaction and its fsync.
    pub async fn store_flags(
        &self,
        account_id: i64,
        mailbox_id: i64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Flagged> {
        let kind = crate::commit::Kind::Flags {
            account: account_id,
            mailbox: mailbox_id,
            uids: uids.to_vec(),
            op,
            flags: flags.to_vec(),
            unchanged_since,
        };
        match self.commit_job(kind).await? {
            crate::commit::Done::Flagged(out) => Ok(out),
            other => Err(StoreError::Conflict(format!(
                "unexpected commit result {other:?}"
            ))),
        }
    }

    /// Removes messages: those with \Deleted (restricted to `only` if given) or, with
    /// `force`, exactly the UIDs in `only`. Returns the removed UIDs in ascending order.
    pub async fn expunge(
        &self,
        account_id: i64,
        mailbox_id: i64,
        only: Option<&[u32]>,
        force: bool,
    ) -> Result<Vec<u32>> {
        let mut tx = self.write.begin().await?;
        let rows = sqlx::query(
            "SELECT uid, flags, blob_id FROM messages WHERE mailbox_id = $1 ORDER BY uid",
        )
        .bind(mailbox_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut gone = Vec::new();
        let mut blobs = Vec::new();
        for r in &rows {
            let uid = r.try_get::<i64, _>("uid")? as u32;
            let deleted = parse_flags(&r.try_get::<String, _>("flags")?)
                .iter()
                .any(|f| f.eq_ignore_ascii_case("\\Deleted"));
            let selected = only.is_none_or(|o| o.binary_search(&uid).is_ok());
            if selected && (deleted || force) {
                gone.push(uid);
                blobs.push(r.try_get::<String, _>("blob_id")?);
            }
        }
        for &uid in &gone {
            sqlx::query("DELETE FROM messages WHERE mailbox_id = $1 AND uid = $2")
                .bind(mailbox_id)
                .bind(uid as i64)
                .execute(&mut *tx)
                .await?;
        }
        record_vanished(&mut tx, mailbox_id, &gone).await?;
        let orphans = orphaned_blobs(&mut tx, blobs).await?;
        tx.commit().await?;
        self.remove_blobs(&orphans);
        if !gone.is_empty() {
            self.changes.notify(account_id);
        }
        Ok(gone)
    }

    /// Copies (or moves) messages to another mailbox of the same account, sharing their blobs.
    /// Returns the destination's UIDVALIDITY and (source UID, destination UID) pairs. All or
    /// nothing: if a message was expunged meanwhile (by another session), nothing is copied and
    /// the answer is [`StoreError::Expunged`] (RFC 2180 4.4.1: the client must not believe a
    /// copy exists).
    pub async fn copy_messages(
        &self,
        account_id: i64,
        src: i64,
        uids: &[u32],
        dst: i64,
        move_: bool,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        let mut tx = self.write.begin().await?;
        let uidvalidity: i64 =
            sqlx::query("SELECT uidvalidity FROM mailboxes WHERE id = $1 AND account_id = $2")
                .bind(dst)
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("mailbox #{dst}")))?
                .try_get(0)?;
        let mut pairs = Vec::new();
        let mut missing = 0usize;
        for &uid in uids {
            let Some(r) = sqlx::query(concat!(
                "SELECT ",
                meta_cols!(),
                " FROM messages WHERE mailbox_id = $1 AND uid = $2"
            ))
            .bind(src)
            .bind(uid as i64)
            .fetch_optional(&mut *tx)
            .await?
            else {
                missing += 1;
                continue;
            };
            if missing > 0 {
                continue;
            }
            let m = meta_from_row(&r)?;
            let row = sqlx::query(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1
                 WHERE id = $1 RETURNING uidnext - 1 AS uid, highest_modseq",
            )
            .bind(dst)
            .fetch_one(&mut *tx)
            .await?;
            let (new_uid, modseq): (i64, i64) =
                (row.try_get("uid")?, row.try_get("highest_modseq")?);
            sqlx::query("INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(dst)
                .bind(new_uid)
                .bind(&m.blob_id)
                .bind(m.size as i64)
                .bind(m.internal_date)
                .bind(join_flags(&m.flags))
                .bind(modseq)
                .execute(&mut *tx)
                .await?;
            if move_ {
                sqlx::query("DELETE FROM messages WHERE mailbox_id = $1 AND uid = $2")
                    .bind(src)
                    .bind(uid as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            pairs.push((uid, new_uid as u32));
        }
        if missing > 0 {
            // dropped without commit: rolled back
            return Err(StoreError::Expunged(missing));
        }
        if move_ {
            let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            record_vanished(&mut tx, src, &moved).await?;
        }
        tx.commit().await?;
        if !pairs.is_empty() {
            self.changes.notify(account_id);
        }
        Ok((uidvalidity as u32, pairs))
    }

    /// The UIDs expunged from a mailbox after MODSEQ `since` (QRESYNC), ascending. `complete`
    /// is false when `since` is older than the record (expunges before it was kept): the caller
    /// must then treat every UID it cannot find as vanished (RFC 7162 3.2.5.2 allows reporting
    /// UIDs that never existed).
    pub async fn vanished_since(&self, mailbox_id: i64, since: u64) -> Result<Vanished> {
        let floor: i64 = sqlx::query("SELECT vanished_floor FROM mailboxes WHERE id = $1")
            .bind(mailbox_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("mailbox #{mailbox_id}")))?
            .try_get(0)?;
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT uid FROM vanished WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
        )
        .bind(mailbox_id)
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        let uids = rows
            .iter()
            .map(|r| Ok(r.try_get::<i64, _>(0)? as u32))
            .collect::<Result<Vec<u32>>>()?;
        Ok(Vanished {
            uids,
            complete: since >= floor,
        })
    }

    /// Keeps the expunge record (QRESYNC's VANISHED) from growing without end: of each mailbox
    /// with more than `keep` records, the oldest go (whole expunges: the records of one share its
    /// MODSEQ), and the mailbox's `vanished_floor` rises to below the oldest MODSEQ kept, so that a client resynchronising from before it is told every
    /// known UID that no longer exists (RFC 7162 3.2.5.2) instead of a partial list. Returns
    /// the number of records removed.
    pub async fn prune_vanished(&self, keep: u64) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let over =
            sqlx::query("SELECT mailbox_id FROM vanished GROUP BY mailbox_id HAVING COUNT(*) > $1")
                .bind(keep)
                .fetch_all(&self.read)
                .await?;
        let mut removed = 0;
        for row in over {
            let id: i64 = row.try_get(0)?;
            let mut tx = self.write.begin().await?;
            let cutoff: Option<i64> = sqlx::query(
                "SELECT modseq FROM vanished WHERE mailbox_id = $1 ORDER BY modseq DESC LIMIT 1 OFFSET $2",
            )
            .bind(id)
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            let Some(cutoff) = cutoff else { continue };
            // records of one expunge share its MODSEQ: the group at the cut stays whole
            removed += sqlx::query("DELETE FROM vanished WHERE mailbox_id = $1 AND modseq < $2")
                .bind(id)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "UPDATE mailboxes SET vanished_floor = CASE WHEN vanished_floor > $1 THEN vanished_floor ELSE $1 END WHERE id = $2",
            )
            .bind(cutoff - 1)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(removed)
    }

    /// Whether POP3 is allowed for this account (the "prefer IMAP" switch).
    pub async fn pop3_enabled(&self, account_id: i64) -> Result<bool> {
        let v: i64 = sqlx::query("SELECT pop3_enabled FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account #{account_id}")))?
            .try_get(0)?;
        Ok(v != 0)
    }

    /// Bodies no row references any more: removed once no open session view lists them.
    pub(crate) fn remove_blobs(&self, ids: &[String]) {
        self.trash.defer(&self.blobs, ids);
    }

    /// The UIDs a mailbox holds now (POP3 checks its maildrop against it).
    pub async fn existing_uids(&self, mailbox_id: i64) -> Result<Vec<u32>> {
        let rows = sqlx::query("SELECT uid FROM messages WHERE mailbox_id = $1 ORDER BY uid")
            .bind(mailbox_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64, _>(0)? as u32))
            .collect()
    }

    /// Used by tests and `postern` maintenance: the current time, for APPEND without a date.
    pub fn now(&self) -> i64 {
        now()
    }
}

/// Raises the mailbox's MODSEQ once for messages just removed from it (expunged, moved away)
/// and records each UID with that MODSEQ for QRESYNC.
async fn record_vanished(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mailbox_id: i64,
    uids: &[u32],
) -> Result<()> {
    if uids.is_empty() {
        return Ok(());
    }
    let modseq: i64 = sqlx::query(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
    )
    .bind(mailbox_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    for &uid in uids {
        sqlx::query(
            "INSERT INTO vanished (mailbox_id, uid, modseq) VALUES ($1, $2, $3)
             ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
        )
        .bind(mailbox_id)
        .bind(i64::from(uid))
        .bind(modseq)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Of `candidates`, the blobs no message and no queue entry references any more.
async fn orphaned_blobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mut candidates: Vec<String>,
) -> Result<Vec<String>> {
    candidates.sort();
    candidates.dedup();
    let mut out = Vec::new();
    for b in candidates {
        let used = sqlx::query(
            "SELECT 1 FROM messages WHERE blob_id = $1 UNION ALL SELECT 1 FROM queue WHERE blob_id = $1 LIMIT 1",
        )
        .bind(&b)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        if !used {
            out.push(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_ops() {
        let cur = vec!["\\Seen".to_owned(), "$Label".to_owned()];
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            apply_flags(&cur, FlagOp::Add, &f(&["\\seen", "\\Flagged"])),
            f(&["\\Seen", "$Label", "\\Flagged"])
        );
        assert_eq!(
            apply_flags(&cur, FlagOp::Remove, &f(&["\\SEEN"])),
            f(&["$Label"])
        );
        assert_eq!(
            apply_flags(&cur, FlagOp::Replace, &f(&["\\Draft"])),
            f(&["\\Draft"])
        );
        assert_eq!(parse_flags(" a  b "), f(&["a", "b"]));
    }
}
