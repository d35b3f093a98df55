//! Bans (shared by the server and the CLI) and the append-only audit log.
//!
//! Every audit row carries `hash = HMAC-SHA-256(key, prev_hash | fields)`, where `prev_hash` is
//! the hash of the row before it and the key is sealed under the master key (never in the
//! database in clear). Whoever can write the database but has no key cannot edit, delete or
//! re-chain rows without `postern audit-log verify` finding it:
//! * an edited row fails its MAC; a deleted row breaks the link of the row after it;
//! * deleting the oldest rows is told from retention: pruning first appends a keyed
//!   `audit_pruned` row that names the last row removed and its hash, which the first remaining
//!   row must follow;
//! * deleting the newest rows leaves a shorter, valid chain: signed checkpoints (row id, head
//!   hash, time) written outside the database (the log, and `audit.checkpoint_file` on another
//!   volume) show the rows that are missing ([`Store::verify_checkpoints`]).
//!
//! Databases from before the key: their rows stay SHA-256 chained (`keyed = 0`); the first keyed
//! row is an `audit_keyed` marker chained to the last of them, so re-chaining the old rows breaks
//! the link to a row the key protects. Rows are appended by one writer task in batches (see
//! [`AuditWriter`]), so logging an attempt never waits for the disk.

use postern_auth::guard::{Ban, BanStore, Cidr};
use postern_auth::{AuditSink, AuthEvent};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub ts: i64,
    pub event: String,
    pub protocol: Option<String>,
    pub ip: Option<String>,
    pub username: Option<String>,
    pub account_id: Option<i64>,
    pub mechanism: Option<String>,
    pub tls: Option<String>,
    pub result: String,
    pub reason: Option<String>,
    /// Who made an administrative change: `cli:USER`, `api:ADMIN`, `apikey:NAME`, `server:WHAT`.
    pub actor: Option<String>,
}

/// One event to append (no id, no hashes yet).
#[derive(Debug, Clone, Default)]
pub struct NewAudit {
    pub ts: i64,
    pub event: String,
    pub protocol: Option<String>,
    pub ip: Option<String>,
    pub username: Option<String>,
    pub account_id: Option<i64>,
    pub mechanism: Option<String>,
    pub tls: Option<String>,
    pub result: String,
    pub reason: Option<String>,
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub account: Option<String>,
    pub ip: Option<String>,
    pub since: Option<i64>,
    pub failed_only: bool,
    pub success_only: bool,
    pub limit: i64,
}

impl From<&AuditRow> for NewAudit {
    fn from(a: &AuditRow) -> NewAudit {
        NewAudit {
            ts: a.ts,
            event: a.event.clone(),
            protocol: a.protocol.clone(),
            ip: a.ip.clone(),
            username: a.username.clone(),
            account_id: a.account_id,
            mechanism: a.mechanism.clone(),
            tls: a.tls.clone(),
            result: a.result.clone(),
            reason: a.reason.clone(),
            actor: a.actor.clone(),
        }
    }
}

/// The audit chain's HMAC key (32 bytes, zeroed when dropped).
pub struct AuditKey(zeroize::Zeroizing<[u8; 32]>);

impl AuditKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        AuditKey(zeroize::Zeroizing::new(bytes))
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..])
            .expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

/// A signed statement, kept outside the database, that the chain had `rows` rows ending at row
/// `id` with hash `head` at time `time`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub id: i64,
    pub head: String,
    pub time: i64,
    pub sig: String,
}

impl Checkpoint {
    fn signature(key: &AuditKey, id: i64, head: &str, time: i64) -> String {
        key.mac(&[
            b"postern-audit-checkpoint",
            id.to_string().as_bytes(),
            head.as_bytes(),
            time.to_string().as_bytes(),
        ])
    }
}

/// The fields of a row as the chain covers them, with `prev` in front.
fn fields(prev: &str, e: &NewAudit) -> Vec<String> {
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    vec![
        prev.to_owned(),
        e.ts.to_string(),
        e.event.clone(),
        opt(&e.protocol),
        opt(&e.ip),
        opt(&e.username),
        e.account_id.map(|a| a.to_string()).unwrap_or_default(),
        opt(&e.mechanism),
        opt(&e.tls),
        e.result.clone(),
        opt(&e.reason),
    ]
}

/// A keyed row's hash (its fields and who made it).
fn keyed_chain(key: &AuditKey, prev: &str, e: &NewAudit) -> String {
    let mut f = fields(prev, e);
    f.push(e.actor.clone().unwrap_or_default());
    let parts: Vec<&[u8]> = f.iter().map(|x| x.as_bytes()).collect();
    key.mac(&parts)
}

/// A row's hash from before the key (SHA-256, no secret: verifiable, not tamper-proof alone):
/// the previous hash as is, then each field length-prefixed, so that moving bytes between fields
/// changes the hash.
fn chain(prev: &str, e: &NewAudit) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for f in &fields(prev, e)[1..] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// "retention: rows up to N removed; head H" -> (N, H).
fn parse_pruned(text: &str) -> Option<(i64, String)> {
    let rest = text.strip_prefix("retention: rows up to ")?;
    let (n, rest) = rest.split_once(" removed; head ")?;
    Some((n.parse().ok()?, rest.trim().to_owned()))
}

/// Inserts one row chained to `prev` (keyed when a key is given); returns its hash.
async fn insert_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: Option<&AuditKey>,
    prev: &str,
    e: &NewAudit,
) -> Result<String> {
    let hash = match key {
        Some(k) => keyed_chain(k, prev, e),
        None => chain(prev, e),
    };
    sqlx::query(
        "INSERT INTO audit_log (ts, event, protocol, ip, username, account_id, mechanism, tls, result, reason, prev_hash, hash, keyed, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(e.ts)
    .bind(&e.event)
    .bind(&e.protocol)
    .bind(&e.ip)
    .bind(&e.username)
    .bind(e.account_id)
    .bind(&e.mechanism)
    .bind(&e.tls)
    .bind(&e.result)
    .bind(&e.reason)
    .bind(prev)
    .bind(&hash)
    .bind(key.is_some() as i64)
    .bind(&e.actor)
    .execute(&mut **tx)
    .await?;
    Ok(hash)
}

fn row(r: &sqlx::any::AnyRow) -> Result<AuditRow> {
    Ok(sqlx::FromRow::from_row(r)?)
}

/// The PostgreSQL advisory lock key under which audit rows are appended ("audit" in ASCII).
const AUDIT_CHAIN_LOCK: i64 = 0x0061_7564_6974;

impl Store {
    /// Appends events in one transaction, chaining each to the previous row.
    pub async fn append_audit(&self, events: &[NewAudit]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut suppressed: std::collections::BTreeMap<String, u64> = Default::default();
        let key = self.audit_key.get();
        // IMMEDIATE: the write lock first, then the read of the chain's head. The server and a
        // CLI command append from two processes; a deferred transaction would read a head the
        // other process then moves, and fail to upgrade (SQLITE_BUSY_SNAPSHOT) instead of
        // waiting its turn.
        // On PostgreSQL several nodes append: an advisory lock held until the commit serialises
        // them, so that the chain stays one line whichever node writes.
        let mut tx = match self.backend {
            crate::Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            crate::Backend::Postgres => {
                let mut tx = self.write.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(AUDIT_CHAIN_LOCK)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        };
        let last = sqlx::query("SELECT hash, keyed FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (mut prev, last_keyed): (String, bool) = match &last {
            Some(r) => (r.try_get(0)?, r.try_get::<i64, _>(1)? != 0),
            None => (String::new(), false),
        };
        if key.is_none() && last_keyed {
            return Err(StoreError::Conflict(
                "the audit log is keyed and its key is not loaded (the master key could not be opened)"
                    .into(),
            ));
        }
        if let (Some(k), Some(_), false) = (key, &last, last_keyed) {
            // The first keyed row after unkeyed ones: a marker that binds the old chain's head.
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM audit_log")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let marker = NewAudit {
                ts: now(),
                event: "audit_keyed".into(),
                result: "ok".into(),
                reason: Some(format!(
                    "from here on rows are HMAC-chained; {n} earlier SHA-256-chained row(s), head {prev}"
                )),
                ..Default::default()
            };
            prev = insert_row(&mut tx, Some(k), &prev, &marker).await?;
        }
        for e in events {
            // An attack must not fill the disk: failed attempts per login name are capped per
            // day; what goes over is counted in one summary row per batch.
            if self.audit_failure_cap > 0 && e.event == "auth" && e.result != "ok" {
                if let Some(u) = &e.username {
                    let n: i64 = sqlx::query(
                        "SELECT COUNT(*) FROM audit_log WHERE username = $1 AND result = 'failed' AND ts > $2",
                    )
                    .bind(u)
                    .bind(e.ts - 86400)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                    if n >= self.audit_failure_cap as i64 {
                        *suppressed.entry(u.clone()).or_insert(0u64) += 1;
                        continue;
                    }
                }
            }
            prev = insert_row(&mut tx, key, &prev, e).await?;
        }
        for (user, n) in suppressed {
            let e = NewAudit {
                ts: now(),
                event: "suppressed".into(),
                username: Some(user),
                result: "capped".into(),
                reason: Some(format!(
                    "{n} failed attempt(s) over the daily cap not recorded"
                )),
                ..Default::default()
            };
            prev = insert_row(&mut tx, key, &prev, &e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The audit chain's key, once the master key is open. Set once per process; every clone of
    /// this store shares it.
    pub fn set_audit_key(&self, key: AuditKey) {
        let _ = self.audit_key.set(key);
    }

    pub fn has_audit_key(&self) -> bool {
        self.audit_key.get().is_some()
    }

    /// A signed checkpoint of the chain's head now (None while the log is empty or unkeyed).
    pub async fn audit_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(key) = self.audit_key.get() else {
            return Ok(None);
        };
        let Some(r) = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let (id, head): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
        let time = now();
        Ok(Some(Checkpoint {
            sig: Checkpoint::signature(key, id, &head, time),
            id,
            head,
            time,
        }))
    }

    /// Checks checkpoints kept outside the database against the chain: each must be signed with
    /// the key, and the row it names must still be there with the same hash, unless retention
    /// pruned it. Ok(number checked) or Err(what was changed).
    pub async fn verify_checkpoints(
        &self,
        checkpoints: &[Checkpoint],
    ) -> Result<std::result::Result<usize, String>> {
        let Some(key) = self.audit_key.get() else {
            return Err(StoreError::Conflict(
                "checkpoints need the audit key (the master key could not be opened)".into(),
            ));
        };
        let pruned_upto = self.pruned_upto().await?.map_or(0, |(d, _)| d);
        let last: Option<i64> = sqlx::query("SELECT MAX(id) FROM audit_log")
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        let last = last.unwrap_or(0);
        let mut n = 0;
        for c in checkpoints {
            if Checkpoint::signature(key, c.id, &c.head, c.time) != c.sig {
                return Ok(Err(format!(
                    "the checkpoint of row {} (time {}) is not signed with this installation's key",
                    c.id, c.time
                )));
            }
            n += 1;
            if c.id <= pruned_upto {
                continue;
            }
            let row = sqlx::query("SELECT hash FROM audit_log WHERE id = $1")
                .bind(c.id)
                .fetch_optional(&self.read)
                .await?;
            match row {
                None if c.id > last => {
                    return Ok(Err(format!(
                        "the log ends at row {last}, but a checkpoint at time {} recorded row {}: rows {}..={} were deleted (the tail was truncated)",
                        c.time,
                        c.id,
                        last + 1,
                        c.id
                    )))
                }
                None => {
                    return Ok(Err(format!(
                        "row {} named by the checkpoint at time {} is missing",
                        c.id, c.time
                    )))
                }
                Some(r) => {
                    let h: String = r.try_get(0)?;
                    if h != c.head {
                        return Ok(Err(format!(
                            "row {} differs from the checkpoint at time {}: the rows from there on were deleted (the tail was truncated) and new ones written, or the chain was rewritten",
                            c.id, c.time
                        )));
                    }
                }
            }
        }
        Ok(Ok(n))
    }

    /// The latest retention marker: (last row removed, its hash).
    async fn pruned_upto(&self) -> Result<Option<(i64, String)>> {
        let r = sqlx::query(
            "SELECT reason FROM audit_log WHERE event = 'audit_pruned' AND keyed = 1 ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.read)
        .await?;
        Ok(
            r.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten())
                .and_then(|t| parse_pruned(&t)),
        )
    }

    /// Walks the whole chain. Ok(rows checked) or Err(description of the first broken row or the
    /// missing range). Keyed rows need the key ([`Store::set_audit_key`]).
    pub async fn verify_audit(&self) -> Result<std::result::Result<u64, String>> {
        let key = self.audit_key.get();
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id")
            .fetch_all(&self.read)
            .await?;
        let pruned = self.pruned_upto().await?;
        let mut prev: Option<(i64, String)> = None;
        let mut seen_keyed = false;
        for r in &rows {
            let a = row(r)?;
            let stored_prev: String = r.try_get("prev_hash")?;
            let stored: String = r.try_get("hash")?;
            let keyed = r.try_get::<i64, _>("keyed")? != 0;
            match &prev {
                None if !stored_prev.is_empty() => {
                    // The oldest rows are gone: only retention may have removed them, and it
                    // says so first in a keyed marker.
                    let ok = pruned
                        .as_ref()
                        .is_some_and(|(d, h)| a.id == d + 1 && *h == stored_prev);
                    if !ok {
                        return Ok(Err(format!(
                            "the log starts at row {}: the rows before it were deleted without a retention checkpoint",
                            a.id
                        )));
                    }
                }
                Some((pid, ph)) if *ph != stored_prev => {
                    return Ok(Err(format!(
                        "row {} does not follow row {pid}: rows {}..{} were deleted, or row {pid} was edited",
                        a.id,
                        pid + 1,
                        a.id
                    )));
                }
                _ => {}
            }
            let e = NewAudit::from(&a);
            if keyed {
                let Some(k) = key else {
                    return Err(StoreError::Conflict(
                        "the audit log is keyed: verifying it needs the master key".into(),
                    ));
                };
                if keyed_chain(k, &stored_prev, &e) != stored {
                    return Ok(Err(format!(
                        "row {} was edited, forged or re-chained (its MAC does not match; the chain needs the key)",
                        a.id
                    )));
                }
                seen_keyed = true;
            } else {
                if seen_keyed {
                    return Ok(Err(format!(
                        "row {} is not keyed although keyed rows come before it: it was forged or re-chained",
                        a.id
                    )));
                }
                if chain(&stored_prev, &e) != stored {
                    return Ok(Err(format!(
                        "row {} was edited (its hash does not match its fields)",
                        a.id
                    )));
                }
            }
            prev = Some((a.id, stored));
        }
        if key.is_some() && !rows.is_empty() && !seen_keyed {
            return Ok(Err(
                "no row of the log is keyed although this installation has an audit key: the chain was rewritten".into(),
            ));
        }
        Ok(Ok(rows.len() as u64))
    }

    /// When the newest event of a kind was recorded (e.g. `backup_created`).
    pub async fn last_audit_event(&self, event: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query("SELECT MAX(ts) FROM audit_log WHERE event = $1")
                .bind(event)
                .fetch_one(&self.read)
                .await?
                .try_get(0)?,
        )
    }

    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let mut sql = String::from("SELECT * FROM audit_log WHERE 1=1");
        let mut n = 0;
        let mut param = |sql: &mut String, cond: &str| {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
        };
        if q.account.is_some() {
            param(&mut sql, "username =");
        }
        if q.ip.is_some() {
            param(&mut sql, "ip =");
        }
        if q.since.is_some() {
            param(&mut sql, "ts >=");
        }
        if q.failed_only {
            sql.push_str(" AND result <> 'ok'");
        }
        if q.success_only {
            sql.push_str(" AND result = 'ok'");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        // The SQL is assembled from fixed fragments only; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(a) = &q.account {
            query = query.bind(a.to_lowercase());
        }
        if let Some(ip) = &q.ip {
            query = query.bind(ip);
        }
        if let Some(s) = q.since {
            query = query.bind(s);
        }
        let limit = if q.limit <= 0 { 1000 } else { q.limit };
        let rows = query.bind(limit).fetch_all(&self.read).await?;
        let mut out: Vec<AuditRow> = rows.iter().map(row).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// Deletes audit rows older than `days` (0 keeps everything). First appends a keyed
    /// `audit_pruned` row naming the last row removed and its hash, which `verify_audit` then
    /// requires of the first row left, so that retention is told from deletion.
    pub async fn prune_audit(&self, days: u64) -> Result<u64> {
        if days == 0 {
            return Ok(0);
        }
        let cut = now() - (days as i64) * 86400;
        let upto: Option<i64> = sqlx::query("SELECT MAX(id) FROM audit_log WHERE ts < $1")
            .bind(cut)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        let Some(upto) = upto else { return Ok(0) };
        let head: String = sqlx::query("SELECT hash FROM audit_log WHERE id = $1")
            .bind(upto)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        if self.audit_key.get().is_some() {
            self.append_audit(&[NewAudit {
                ts: now(),
                event: "audit_pruned".into(),
                result: "ok".into(),
                reason: Some(format!("retention: rows up to {upto} removed; head {head}")),
                ..Default::default()
            }])
            .await?;
        }
        Ok(sqlx::query("DELETE FROM audit_log WHERE id <= $1")
            .bind(upto)
            .execute(&self.write)
            .await?
            .rows_affected())
    }

    // ---- bans ----

    /// Shares bans with other nodes from now on (cluster mode): bans are kept there, and only
    /// while it cannot be reached in this database (and pushed there when it is back).
    pub fn share_bans(&self, shared: std::sync::Arc<dyn SharedBans>) {
        let _ = self.shared_bans.set(shared);
    }

    /// The active bans: this database's, and the shared ones in cluster mode. Bans made here
    /// while the shared store was unreachable are moved there once it answers again.
    pub async fn list_bans(&self) -> Result<Vec<Ban>> {
        let mut local = self.local_bans().await?;
        let Some(shared) = self.shared_bans.get() else {
            return Ok(local);
        };
        let mut all = match shared.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "shared bans unreachable: this node's own bans apply");
                return Ok(local);
            }
        };
        for b in local.drain(..) {
            if shared.put(&b).await.is_ok() {
                self.remove_local_ban(&b.target).await?;
            }
            all.retain(|x| x.target != b.target);
            all.push(b);
        }
        Ok(all)
    }

    async fn local_bans(&self) -> Result<Vec<Ban>> {
        let rows = sqlx::query(
            "SELECT target, until, reason, offences FROM bans WHERE until > $1 ORDER BY until",
        )
        .bind(now())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let t: String = r.try_get("target")?;
                Ok(Ban {
                    target: Cidr::parse(&t).map_err(StoreError::Conflict)?,
                    until: r.try_get::<i64, _>("until")? as u64,
                    reason: r.try_get("reason")?,
                    offences: r.try_get::<i64, _>("offences")? as u32,
                })
            })
            .collect()
    }

    /// Records a ban: in the shared store in cluster mode (every node applies it), else (or
    /// while that store cannot be reached) in this database.
    pub async fn put_ban(&self, ban: &Ban) -> Result<()> {
        if let Some(shared) = self.shared_bans.get() {
            match shared.put(ban).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, target = %ban.target, "shared bans unreachable: the ban is kept on this node until they answer")
                }
            }
        }
        sqlx::query(
            "INSERT INTO bans (target, until, reason, offences, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(target) DO UPDATE SET until = excluded.until, reason = excluded.reason, offences = excluded.offences",
        )
        .bind(ban.target.to_string())
        .bind(ban.until as i64)
        .bind(&ban.reason)
        .bind(ban.offences as i64)
        .bind(now())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn remove_local_ban(&self, target: &Cidr) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM bans WHERE target = $1")
            .bind(target.to_string())
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    /// Lifts a ban here and, in cluster mode, on every node.
    pub async fn remove_ban(&self, target: &Cidr) -> Result<bool> {
        let mut found = self.remove_local_ban(target).await?;
        if let Some(shared) = self.shared_bans.get() {
            match shared.remove(target).await {
                Ok(f) => found |= f,
                Err(e) => {
                    return Err(StoreError::Conflict(format!(
                        "the shared bans cannot be reached, so the ban cannot be lifted on the other nodes: {e}"
                    )))
                }
            }
        }
        Ok(found)
    }

    pub async fn clear_bans(&self) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM bans")
            .execute(&self.write)
            .await?
            .rows_affected();
        if let Some(shared) = self.shared_bans.get() {
            n += shared.clear().await.map_err(|e| {
                StoreError::Conflict(format!("the shared bans cannot be reached: {e}"))
            })?;
        }
        Ok(n)
    }
}

/// Bans shared between the nodes of a cluster (Redis, `[cluster] redis`; implemented by the
/// server, which owns the connection). Every method may fail when the shared store cannot be
/// reached; the store then falls back to this node's database.
#[async_trait::async_trait]
pub trait SharedBans: Send + Sync {
    async fn put(&self, ban: &Ban) -> std::result::Result<(), String>;
    async fn remove(&self, target: &Cidr) -> std::result::Result<bool, String>;
    async fn clear(&self) -> std::result::Result<u64, String>;
    /// The active bans.
    async fn list(&self) -> std::result::Result<Vec<Ban>, String>;
}

#[async_trait::async_trait]
impl BanStore for Store {
    async fn save_ban(&self, ban: &Ban) -> std::result::Result<(), String> {
        self.put_ban(ban).await.map_err(|e| e.to_string())
    }
    async fn load_bans(&self, _now: u64) -> std::result::Result<Vec<Ban>, String> {
        self.list_bans().await.map_err(|e| e.to_string())
    }
}

/// The audit sink the server uses: events go to the log (target `postern::audit`) at once and
/// into the database through a bounded channel, written in batches by one task. If the channel is
/// full (the disk cannot keep up with an attack), the event is still in the log and a counter of
/// dropped rows is logged; the server never blocks on auditing.
pub struct AuditWriter {
    tx: mpsc::Sender<NewAudit>,
    dropped: std::sync::atomic::AtomicU64,
}

impl AuditWriter {
    pub fn start(store: Store) -> std::sync::Arc<AuditWriter> {
        let (tx, mut rx) = mpsc::channel::<NewAudit>(10_000);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                if let Err(e) = store.append_audit(&batch).await {
                    tracing::error!(error = %e, rows = batch.len(), "could not write audit rows");
                }
                batch.clear();
            }
        });
        std::sync::Arc::new(AuditWriter {
            tx,
            dropped: Default::default(),
        })
    }

    pub fn record(&self, e: NewAudit) {
        if self.tx.try_send(e).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::error!(
                    dropped = n,
                    "audit rows dropped: the database cannot keep up"
                );
            }
        }
    }
}

impl AuditSink for AuditWriter {
    fn note(
        &self,
        event: &'static str,
        ip: Option<std::net::IpAddr>,
        username: Option<&str>,
        detail: &str,
    ) {
        tracing::warn!(target: "postern::audit", event, ip = ?ip, user = ?username, detail, "security event");
        self.record(NewAudit {
            ts: now(),
            event: event.into(),
            ip: ip.map(|i| i.to_string()),
            username: username.map(str::to_lowercase),
            result: "enforced".into(),
            reason: Some(detail.into()),
            ..Default::default()
        });
    }

    fn auth(&self, e: &AuthEvent) {
        postern_auth::TracingAudit.auth(e);
        self.record(NewAudit {
            ts: now(),
            event: "auth".into(),
            protocol: Some(e.protocol.into()),
            ip: Some(e.remote_ip.to_string()),
            username: Some(e.username.to_lowercase()),
            account_id: e.account_id,
            mechanism: Some(e.mechanism.into()),
            tls: e.tls.map(str::to_owned),
            result: if e.result.is_ok() {
                "ok".into()
            } else {
                "failed".into()
            },
            reason: e.result.err().map(|r| r.as_str().to_owned()),
            actor: None,
        });
    }
}

/// What the administrators' dashboard shows of logins since a time.
#[derive(Debug, Clone, Default)]
pub struct AuthSummary {
    /// (hour start, result "ok" or "failed", count), oldest first.
    pub per_hour: Vec<(i64, String, i64)>,
    /// (protocol, result, count)
    pub per_protocol: Vec<(String, String, i64)>,
    /// (user name, failed logins), most first.
    pub most_failed: Vec<(String, i64)>,
    /// (hour start, event, count) of bans, lockouts and messages sent by accounts and
    /// applications (`ban`, `lockout`, `mail_sent`), oldest first.
    pub events_per_hour: Vec<(i64, String, i64)>,
}

impl Store {
    /// Login outcomes since `since` from the audit log: per hour, per protocol, and the accounts
    /// with the most failures (the dashboard's charts).
    pub async fn auth_summary(&self, since: i64) -> Result<AuthSummary> {
        let mut out = AuthSummary::default();
        let rows = sqlx::query(
            "SELECT (ts / 3600) * 3600 AS h, CASE WHEN result = 'ok' THEN 'ok' ELSE 'failed' END AS r,
                    COUNT(*) FROM audit_log WHERE event = 'auth' AND ts >= $1 GROUP BY h, r ORDER BY h",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        for r in rows {
            out.per_hour
                .push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        let rows = sqlx::query(
            "SELECT COALESCE(protocol, ''), CASE WHEN result = 'ok' THEN 'ok' ELSE 'failed' END AS r,
                    COUNT(*) FROM audit_log WHERE event = 'auth' AND ts >= $1
             GROUP BY 1, r ORDER BY 1, r",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        for r in rows {
            out.per_protocol
                .push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        let rows = sqlx::query(
            "SELECT COALESCE(username, ''), COUNT(*) AS n FROM audit_log
             WHERE event = 'auth' AND result != 'ok' AND ts >= $1 GROUP BY 1 ORDER BY n DESC LIMIT 8",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        for r in rows {
            out.most_failed.push((r.try_get(0)?, r.try_get(1)?));
        }
        let rows = sqlx::query(
            "SELECT (ts / 3600) * 3600 AS h, event, COUNT(*) FROM audit_log
             WHERE event IN ('ban', 'lockout', 'mail_sent') AND ts >= $1 GROUP BY h, event ORDER BY h",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        for r in rows {
            out.events_per_hour
                .push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }
}
