//! Bans (shared by the server and the CLI) and the append-only audit log.
//!
//! Every audit row carries `hash = SHA-256(prev_hash | fields)`, where `prev_hash` is the hash of
//! the row before it, so `postern audit-log verify` finds a row that was edited or deleted (a
//! deletion breaks the link of the row after it). Rows are appended by one writer task in batches
//! (see [`AuditWriter`]), so logging an attempt never waits for the disk.

use postern_auth::guard::{Ban, BanStore, Cidr};
use postern_auth::{AuditSink, AuthEvent};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::{now, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}

fn chain(prev: &str, e: &NewAudit) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    for f in [
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
    ] {
        // length-prefixed so that moving bytes between fields changes the hash
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

fn row(r: &sqlx::sqlite::SqliteRow) -> Result<AuditRow> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        ts: r.try_get("ts")?,
        event: r.try_get("event")?,
        protocol: r.try_get("protocol")?,
        ip: r.try_get("ip")?,
        username: r.try_get("username")?,
        account_id: r.try_get("account_id")?,
        mechanism: r.try_get("mechanism")?,
        tls: r.try_get("tls")?,
        result: r.try_get("result")?,
        reason: r.try_get("reason")?,
    })
}

impl Store {
    /// Appends events in one transaction, chaining each to the previous row.
    pub async fn append_audit(&self, events: &[NewAudit]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut suppressed: std::collections::BTreeMap<String, u64> = Default::default();
        let mut tx = self.write.begin().await?;
        let mut prev: String = sqlx::query("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or_default();
        for e in events {
            // An attack must not fill the disk: failed attempts per login name are capped per
            // day; what goes over is counted in one summary row per batch.
            if self.audit_failure_cap > 0 && e.event == "auth" && e.result != "ok" {
                if let Some(u) = &e.username {
                    let n: i64 = sqlx::query(
                        "SELECT COUNT(*) FROM audit_log WHERE username = ? AND result = 'failed' AND ts > ?",
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
            let hash = chain(&prev, e);
            sqlx::query(
                "INSERT INTO audit_log (ts, event, protocol, ip, username, account_id, mechanism, tls, result, reason, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            prev = hash;
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
            let hash = chain(&prev, &e);
            sqlx::query(
                "INSERT INTO audit_log (ts, event, protocol, ip, username, account_id, mechanism, tls, result, reason, prev_hash, hash)
                 VALUES (?, ?, NULL, NULL, ?, NULL, NULL, NULL, ?, ?, ?, ?)",
            )
            .bind(e.ts)
            .bind(&e.event)
            .bind(&e.username)
            .bind(&e.result)
            .bind(&e.reason)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            prev = hash;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Walks the whole chain. Ok(rows checked) or Err(description of the first broken row).
    /// Rows removed by retention leave the chain starting at the first kept row.
    pub async fn verify_audit(&self) -> Result<std::result::Result<u64, String>> {
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id")
            .fetch_all(&self.read)
            .await?;
        let mut prev: Option<String> = None;
        let mut prev_id = 0i64;
        for r in &rows {
            let a = row(r)?;
            let stored_prev: String = r.try_get("prev_hash")?;
            let stored: String = r.try_get("hash")?;
            if let Some(p) = &prev {
                if *p != stored_prev {
                    return Ok(Err(format!(
                        "row {} does not follow row {prev_id}: a row between them was deleted or row {prev_id} was edited",
                        a.id
                    )));
                }
            }
            let e = NewAudit::from(&a);
            if chain(&stored_prev, &e) != stored {
                return Ok(Err(format!(
                    "row {} was edited (its hash does not match its fields)",
                    a.id
                )));
            }
            prev = Some(stored);
            prev_id = a.id;
        }
        Ok(Ok(rows.len() as u64))
    }

    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let mut sql = String::from("SELECT * FROM audit_log WHERE 1=1");
        if q.account.is_some() {
            sql.push_str(" AND username = ?");
        }
        if q.ip.is_some() {
            sql.push_str(" AND ip = ?");
        }
        if q.since.is_some() {
            sql.push_str(" AND ts >= ?");
        }
        if q.failed_only {
            sql.push_str(" AND result <> 'ok'");
        }
        if q.success_only {
            sql.push_str(" AND result = 'ok'");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
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

    /// Deletes audit rows older than `days` (0 keeps everything). The chain restarts at the
    /// first kept row, which `verify_audit` accepts.
    pub async fn prune_audit(&self, days: u64) -> Result<u64> {
        if days == 0 {
            return Ok(0);
        }
        let cut = now() - (days as i64) * 86400;
        Ok(sqlx::query("DELETE FROM audit_log WHERE ts < ?")
            .bind(cut)
            .execute(&self.write)
            .await?
            .rows_affected())
    }

    // ---- bans ----

    pub async fn list_bans(&self) -> Result<Vec<Ban>> {
        let rows = sqlx::query(
            "SELECT target, until, reason, offences FROM bans WHERE until > ? ORDER BY until",
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

    pub async fn put_ban(&self, ban: &Ban) -> Result<()> {
        sqlx::query(
            "INSERT INTO bans (target, until, reason, offences, created_at) VALUES (?, ?, ?, ?, ?)
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

    pub async fn remove_ban(&self, target: &Cidr) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM bans WHERE target = ?")
            .bind(target.to_string())
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    pub async fn clear_bans(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM bans")
            .execute(&self.write)
            .await?
            .rows_affected())
    }
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
        });
    }
}
