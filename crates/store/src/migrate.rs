//! `postern migrate`: copies a SQLite installation (every table, and the bodies from the blob
//! directory) into an empty PostgreSQL database of the same schema version, then checks that
//! every table holds as many rows on both sides.
//!
//! Rows are copied as they are, ids included (so the audit chain, whose rows name their ids, and
//! every reference between tables stay valid), table by table in the order of the schema's
//! references, in one transaction: a failed copy leaves the destination empty. PostgreSQL's
//! identity sequences are then moved past the copied ids.

use sqlx::any::AnyTypeInfoKind;
use sqlx::{Column, Row};

use crate::{Backend, Result, Store, StoreError};

/// Rows per table, on both sides, after a copy.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// (table, rows copied)
    pub tables: Vec<(String, u64)>,
    /// Bodies copied from the blob directory into the database.
    pub bodies: u64,
}

/// The tables of the schema in an order where every table comes after those it references.
async fn tables_in_order(src: &Store) -> Result<Vec<String>> {
    let names: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&src.write)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>(0))
    .collect::<std::result::Result<_, _>>()?;
    let mut refs: std::collections::HashMap<String, Vec<String>> = Default::default();
    for t in &names {
        let parents: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT \"table\" FROM pragma_foreign_key_list('{t}')"
        )))
        .fetch_all(&src.write)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()?;
        refs.insert(t.clone(), parents);
    }
    let mut out: Vec<String> = Vec::new();
    while out.len() < names.len() {
        let before = out.len();
        for t in &names {
            if !out.contains(t)
                && refs[t]
                    .iter()
                    .all(|p| p == t || out.contains(p) || !names.contains(p))
            {
                out.push(t.clone());
            }
        }
        if out.len() == before {
            return Err(StoreError::Conflict(
                "the schema's references form a cycle".into(),
            ));
        }
    }
    Ok(out)
}

impl Store {
    /// Copies this SQLite store into `dst`, an empty PostgreSQL store of the same schema.
    pub async fn copy_to(&self, dst: &Store) -> Result<CopyReport> {
        if self.backend != Backend::Sqlite || dst.backend != Backend::Postgres {
            return Err(StoreError::Conflict(
                "a copy goes from SQLite to PostgreSQL".into(),
            ));
        }
        let used: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM accounts) + (SELECT COUNT(*) FROM audit_log) + (SELECT COUNT(*) FROM admins)",
        )
        .fetch_one(&dst.write)
        .await?
        .try_get(0)?;
        if used > 0 {
            return Err(StoreError::Conflict(
                "the destination database is not empty (it has accounts, administrators or audit rows)".into(),
            ));
        }
        // `bodies` is empty on SQLite (bodies are files there): it is filled from the files
        let tables: Vec<String> = tables_in_order(self)
            .await?
            .into_iter()
            .filter(|t| t != "bodies")
            .collect();
        let mut report = CopyReport::default();
        let mut tx = dst.write.begin().await?;
        // what the empty schema already holds (the domains of `init`, periodic jobs) goes: the
        // copy is the installation
        for t in tables
            .iter()
            .rev()
            .chain(std::iter::once(&"bodies".to_owned()))
        {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {t}")))
                .execute(&mut *tx)
                .await?;
        }
        for t in &tables {
            let order = if t == "password_history" {
                "rowid"
            } else {
                "1"
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT * FROM {t} ORDER BY {order}"
            )))
            .fetch_all(&self.read)
            .await?;
            for r in &rows {
                let cols: Vec<&str> = r.columns().iter().map(|c| c.name()).collect();
                let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {t} ({}) VALUES ({})",
                    cols.join(", "),
                    params.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (i, c) in r.columns().iter().enumerate() {
                    let kind = c.type_info().kind();
                    // SQLite's declared types: INTEGER, TEXT, BLOB (a NULL reads as Null)
                    q = match kind {
                        AnyTypeInfoKind::BigInt
                        | AnyTypeInfoKind::Integer
                        | AnyTypeInfoKind::SmallInt => q.bind(r.try_get::<Option<i64>, _>(i)?),
                        AnyTypeInfoKind::Blob => q.bind(r.try_get::<Option<Vec<u8>>, _>(i)?),
                        AnyTypeInfoKind::Null => {
                            // a NULL of a column whose type the row does not tell: typed by
                            // the destination's column
                            q.bind(None::<String>)
                        }
                        _ => q.bind(r.try_get::<Option<String>, _>(i)?),
                    };
                }
                q.execute(&mut *tx).await?;
            }
            report.tables.push((t.clone(), rows.len() as u64));
        }
        // the bodies, from the blob directory into the database
        if dst.blobs.is_database() {
            let ids: Vec<String> = sqlx::query(
                "SELECT blob_id FROM messages UNION SELECT blob_id FROM queue ORDER BY 1",
            )
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
            for id in ids {
                let data = self.blobs.get(&id)?;
                sqlx::query("INSERT INTO bodies (id, data, created_at) VALUES ($1, $2, $3)")
                    .bind(&id)
                    .bind(data)
                    .bind(crate::now())
                    .execute(&mut *tx)
                    .await?;
                report.bodies += 1;
            }
        }
        // identity columns continue after the copied ids
        for t in &tables {
            let has_id: i64 = sqlx::query(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema()
                 AND table_name = $1 AND column_name = 'id' AND is_identity = 'YES'",
            )
            .bind(t)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            if has_id > 0 {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE((SELECT MAX(id) FROM {t}), 0) + 1, false)"
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        // counted again on both sides
        let bodies: i64 = sqlx::query("SELECT COUNT(*) FROM bodies")
            .fetch_one(&dst.read)
            .await?
            .try_get(0)?;
        if bodies as u64 != report.bodies {
            return Err(StoreError::Conflict(format!(
                "{} bodies copied, {bodies} in PostgreSQL",
                report.bodies
            )));
        }
        for (t, n) in &report.tables {
            let count = |s: &Store| {
                let sql = format!("SELECT COUNT(*) FROM {t}");
                let pool = s.read.clone();
                async move {
                    Ok::<i64, StoreError>(
                        sqlx::query(sqlx::AssertSqlSafe(sql))
                            .fetch_one(&pool)
                            .await?
                            .try_get(0)?,
                    )
                }
            };
            let (a, b) = (count(self).await?, count(dst).await?);
            if a != b || a as u64 != *n {
                return Err(StoreError::Conflict(format!(
                    "{t}: {a} rows in SQLite, {b} in PostgreSQL after the copy"
                )));
            }
        }
        Ok(report)
    }
}
