//! Mail-authentication state about other domains: DMARC results of inbound mail kept for the
//! daily aggregate reports (RFC 7489 7.2: one row per UTC day, policy domain and distinct report
//! row, with a count, removed once the report is handed to delivery), the cached MTA-STS
//! policies of recipient domains (RFC 8461), and the TLS outcomes with their MX hosts for the
//! daily TLS reports (RFC 8460).

use sqlx::Row;

use crate::{Result, Store};

/// The two kinds of daily report about other domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// DMARC aggregate reports (RFC 7489 7.2).
    Dmarc,
    /// TLS reports (RFC 8460).
    Tls,
}

/// The rows of one (day, domain) report.
#[derive(Debug, Clone)]
pub struct DmarcRows {
    /// The report addresses (`mailto:` URIs) the domain published last.
    pub rua: Vec<String>,
    /// The published policy (JSON) as last seen.
    pub policy: String,
    /// (row JSON, count)
    pub records: Vec<(String, i64)>,
}

impl Store {
    /// Counts one evaluation.
    pub async fn dmarc_record(
        &self,
        day: i64,
        domain: &str,
        rua: &[String],
        policy: &str,
        record: &str,
    ) -> Result<()> {
        let rua = serde_json::to_string(rua).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO dmarc_results (day, domain, rua, policy, record, count) VALUES ($1, $2, $3, $4, $5, 1)
             ON CONFLICT (day, domain, record) DO UPDATE SET count = dmarc_results.count + 1, rua = excluded.rua, policy = excluded.policy",
        )
        .bind(day)
        .bind(domain.to_ascii_lowercase())
        .bind(rua)
        .bind(policy)
        .bind(record)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The (day, domain) pairs with results of `kind` from before `until_day`, oldest first.
    pub async fn reports_pending(
        &self,
        kind: ReportKind,
        until_day: i64,
    ) -> Result<Vec<(i64, String)>> {
        let sql = match kind {
            ReportKind::Dmarc => {
                "SELECT DISTINCT day, domain FROM dmarc_results WHERE day < $1 ORDER BY day, domain"
            }
            ReportKind::Tls => {
                "SELECT DISTINCT day, domain FROM tlsrpt_results WHERE day < $1 ORDER BY day, domain"
            }
        };
        let rows = sqlx::query(sql)
            .bind(until_day)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Forgets the rows of one report of `kind` (sent, or nobody to send it to).
    pub async fn report_done(&self, kind: ReportKind, day: i64, domain: &str) -> Result<()> {
        let sql = match kind {
            ReportKind::Dmarc => "DELETE FROM dmarc_results WHERE day = $1 AND domain = $2",
            ReportKind::Tls => "DELETE FROM tlsrpt_results WHERE day = $1 AND domain = $2",
        };
        sqlx::query(sql)
            .bind(day)
            .bind(domain)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The rows of one report.
    pub async fn dmarc_rows(&self, day: i64, domain: &str) -> Result<DmarcRows> {
        let rows = sqlx::query(
            "SELECT rua, policy, record, count FROM dmarc_results WHERE day = $1 AND domain = $2 ORDER BY record",
        )
        .bind(day)
        .bind(domain)
        .fetch_all(&self.read)
        .await?;
        let mut out = DmarcRows {
            rua: Vec::new(),
            policy: String::new(),
            records: Vec::with_capacity(rows.len()),
        };
        for r in &rows {
            let rua: String = r.try_get(0)?;
            out.rua = serde_json::from_str(&rua).unwrap_or_default();
            out.policy = r.try_get(1)?;
            out.records.push((r.try_get(2)?, r.try_get(3)?));
        }
        Ok(out)
    }
}

/// A cached MTA-STS policy (RFC 8461 5.1).
#[derive(Debug, Clone)]
pub struct CachedPolicy {
    pub id: String,
    pub policy: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

impl Store {
    /// The cached MTA-STS policy of a recipient domain, expired or not.
    pub async fn mta_sts_cached(&self, domain: &str) -> Result<Option<CachedPolicy>> {
        let row = sqlx::query(
            "SELECT id, policy, fetched_at, expires_at FROM mta_sts_policies WHERE domain = $1",
        )
        .bind(domain.to_ascii_lowercase())
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => Some(CachedPolicy {
                id: r.try_get(0)?,
                policy: r.try_get(1)?,
                fetched_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            }),
            None => None,
        })
    }

    /// Caches a freshly fetched policy.
    pub async fn mta_sts_store(
        &self,
        domain: &str,
        id: &str,
        policy: &str,
        fetched_at: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mta_sts_policies (domain, id, policy, fetched_at, expires_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (domain) DO UPDATE SET id = excluded.id, policy = excluded.policy,
             fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
        )
        .bind(domain.to_ascii_lowercase())
        .bind(id)
        .bind(policy)
        .bind(fetched_at)
        .bind(expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

/// One counted TLS outcome (RFC 8460): a policy, an MX host and a result (`success` or an
/// RFC 8460 4.3 result type).
#[derive(Debug, Clone)]
pub struct TlsResult {
    pub policy_type: String,
    /// The policy's lines as JSON.
    pub policy: String,
    pub mx: String,
    pub result: String,
    pub count: i64,
}

impl Store {
    /// Counts one TLS outcome with a recipient domain's MX host.
    pub async fn tlsrpt_record(
        &self,
        day: i64,
        domain: &str,
        policy_type: &str,
        policy: &str,
        mx: &str,
        result: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tlsrpt_results (day, domain, policy_type, policy, mx, result, count) VALUES ($1, $2, $3, $4, $5, $6, 1)
             ON CONFLICT (day, domain, policy_type, mx, result) DO UPDATE SET count = tlsrpt_results.count + 1, policy = excluded.policy",
        )
        .bind(day)
        .bind(domain.to_ascii_lowercase())
        .bind(policy_type)
        .bind(policy)
        .bind(mx.to_ascii_lowercase())
        .bind(result)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn tlsrpt_rows(&self, day: i64, domain: &str) -> Result<Vec<TlsResult>> {
        let rows = sqlx::query(
            "SELECT policy_type, policy, mx, result, count FROM tlsrpt_results WHERE day = $1 AND domain = $2
             ORDER BY policy_type, mx, result",
        )
        .bind(day)
        .bind(domain)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TlsResult {
                    policy_type: r.try_get(0)?,
                    policy: r.try_get(1)?,
                    mx: r.try_get(2)?,
                    result: r.try_get(3)?,
                    count: r.try_get(4)?,
                })
            })
            .collect()
    }
}
