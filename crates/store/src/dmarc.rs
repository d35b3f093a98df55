//! DMARC results of inbound mail kept for the daily aggregate reports (RFC 7489 7.2): one row per
//! (UTC day, policy domain, distinct report row) with a count. Rows are removed once their report
//! is handed to delivery.

use sqlx::Row;

use crate::{Result, Store};

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
            "INSERT INTO dmarc_results (day, domain, rua, policy, record, count) VALUES (?, ?, ?, ?, ?, 1)
             ON CONFLICT (day, domain, record) DO UPDATE SET count = count + 1, rua = excluded.rua, policy = excluded.policy",
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

    /// The (day, domain) pairs with results from before `until_day`, oldest first.
    pub async fn dmarc_pending(&self, until_day: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT day, domain FROM dmarc_results WHERE day < ? ORDER BY day, domain",
        )
        .bind(until_day)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The rows of one report.
    pub async fn dmarc_rows(&self, day: i64, domain: &str) -> Result<DmarcRows> {
        let rows = sqlx::query(
            "SELECT rua, policy, record, count FROM dmarc_results WHERE day = ? AND domain = ? ORDER BY record",
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

    /// Forgets the rows of one report (sent, or undeliverable).
    pub async fn dmarc_done(&self, day: i64, domain: &str) -> Result<()> {
        sqlx::query("DELETE FROM dmarc_results WHERE day = ? AND domain = ?")
            .bind(day)
            .bind(domain)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
